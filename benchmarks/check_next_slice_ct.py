#!/usr/bin/env python
"""Next slice on the full-size CT (tcia_cervical_ct, 296 x 512 x 512): a check that the default ranking chosen on
hippocampus MR does not misbehave on a large CT structure. Not a benchmark: one study, one model per structure.

Per structure (RTSTRUCT liver, urinary bladder): round 0 = the middle slice of the true extent drawn; one model
trained with the widget's defaults on that slice (data-driven crop/tile/window, semi-supervised, 300 steps, CPU) and
predicted over its crop and slice range as the widget does; it stays fixed across rounds (the stand-in of
bench_next_slice.py). Each round adds one slice; the completion (fill between the drawn slices, the model beyond,
components touching the drawing) is scored by Dice against the RTSTRUCT mask. Strategies: random (3 seeds), even (the
(i+1)/(r+2) quantiles of the true extent), gap, and the default (expected-error).

  nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=$PWD .venv/bin/python benchmarks/check_next_slice_ct.py
"""
from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bench_time_to_mask import CT, RT  # noqa: E402

import ct_reference as ref  # noqa: E402


def main(argv=None) -> int:
    import torch

    from napari_ssl import api
    from napari_ssl.active.next_slice import rank_next_slices
    from napari_ssl.active.predict import predict_volume
    from napari_ssl.active.respect_annotation import respect_annotation
    from napari_ssl.train.jobs import _same_study_prediction

    torch.set_num_threads(1)
    rounds = 4
    volume = api.load_volume(CT)
    t0, load0 = time.time(), os.getloadavg()[0]
    out = {"command": "nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=$PWD .venv/bin/python benchmarks/check_next_slice_ct.py", "structures": {}}
    with tempfile.TemporaryDirectory(prefix="nsct-") as tmp:
        for roi in ("liver", "urinary_bladder"):
            truth = ref.rasterise_roi(RT, volume, roi)
            start = ref.quantile_slices(truth, 1)
            labels = ref.sparse_from(truth, start)
            ts = time.time()
            model = api.finetune([volume], [labels], os.path.join(tmp, roi), classes=[roi], empty_slices=[[]], steps=300, batch_size=8,
                                 semi_supervised=True, devices="cpu", preview_every_s=0.0, seed=0)
            same = _same_study_prediction({"labels": [labels]}, model)
            pred = predict_volume(model, volume, device="cpu", roi=same["roi"], z_range=same["z_range"])
            t_model = time.time() - ts
            res = {"extent": [int(v) for v in np.flatnonzero(truth.any((1, 2)))[[0, -1]]], "start": start, "model_seconds": round(t_model, 1),
                   "model_alone_dice": round(ref.dice(pred.labels > 0, truth), 4), "runs": {}}
            runs = [("even", 0), ("gap", 0), ("default", 0)] + [("random", s) for s in range(3)]
            for strat, seed in runs:
                rng = np.random.default_rng(seed)
                ann = np.zeros(volume.shape[0], bool)
                ann[start] = True
                dices, picks = [], list(start)
                done = None  # the completion of the previous round
                for r in range(rounds + 1):
                    if r and strat == "even":
                        ann[:] = False
                        ann[ref.quantile_slices(truth, r + 1)] = True
                        picks = [int(z) for z in np.flatnonzero(ann)]
                    elif r:
                        user = ref.sparse_from(truth, [int(z) for z in np.flatnonzero(ann)])
                        if strat == "random":
                            z = int(rng.choice(np.flatnonzero(~ann)))
                        else:
                            z = rank_next_slices(done.labels, ann, user, n=1, strategy="gap" if strat == "gap" else None,
                                                 slice_error=done.slice_error)[0]["slice"]
                        assert not ann[z]
                        ann[z] = True
                        picks.append(z)
                    user = ref.sparse_from(truth, [int(z) for z in np.flatnonzero(ann)])
                    done = respect_annotation(copy.deepcopy(pred), user, ann, keep_connected=True, fill_between=True)
                    dices.append(round(ref.dice(done.labels > 0, truth), 4))
                res["runs"][f"{strat}" + (f"-seed{seed}" if strat == "random" else "")] = {"dice": dices, "picks": picks}
                print(roi, strat, seed, dices, picks, flush=True)
            rnd = np.array([res["runs"][f"random-seed{s}"]["dice"] for s in range(3)])
            res["random_mean"] = rnd.mean(0).round(4).tolist()
            res["mean_rounds_1_4"] = {k: round(float(np.mean(v["dice"][1:])), 4) for k, v in res["runs"].items()}
            res["mean_rounds_1_4"]["random (mean of 3 seeds)"] = round(float(rnd[:, 1:].mean()), 4)
            out["structures"][roi] = res
    out.update({"seconds": round(time.time() - t0, 1), "load_average": {"start": load0, "end": os.getloadavg()[0]}})
    path = os.path.join(HERE, "results", "check_next_slice_ct.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(path + ".tmp", path)
    print(json.dumps({k: v["mean_rounds_1_4"] for k, v in out["structures"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
