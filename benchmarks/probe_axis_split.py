"""The carried prior with and without the class split across the structure's axis, on saved validation predictions
(no training).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_axis_split.py --ks 1,2,3,5

Reads the model probabilities that bench_study_completion.py saves for each validation run (``--split val``;
predictions/val/semi-random/*.npz under its work dir: the model's own output, before the prediction path), applies
the carried prior (active/propagate.py) with ``split_classes`` on and off, or not at all, then the product's
post-processing (respect_annotation), and scores whole-volume Dice; also the Dice with the classes merged (what the
split cannot change). Validation volumes only. Writes benchmarks/results/probe_axis_split.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import bench_study_completion as b  # noqa: E402

from napari_ssl.active.entropy import normalised_entropy  # noqa: E402
from napari_ssl.active.predict import Prediction  # noqa: E402
from napari_ssl.active.propagate import apply_propagation  # noqa: E402
from napari_ssl.active.respect_annotation import respect_annotation  # noqa: E402

WAYS = ("none", "nosplit", "split")


def score(path: str, k: int) -> dict:
    name = os.path.basename(path).split(f"_k{k}_")[0] + ".nii.gz"
    img, lab = b.load(name)
    ann = np.zeros(lab.shape[0], bool)
    ann[b.quantile_slices(lab, k)] = True
    drawn = np.where(ann[:, None, None], lab, 0).astype(np.uint8)
    probs = np.load(path)["probabilities"].astype(np.float32)
    row = {"volume": name, "k": k, "seed_classes": int(len(set(np.unique(drawn[ann])) - {0}))}
    for way in WAYS:
        p = probs.copy()
        pred = Prediction(labels=p.argmax(0).astype(np.uint8), probabilities=p, uncertainty=normalised_entropy(p),
                          slice_uncertainty=np.zeros(p.shape[1], np.float32), class_names=[], passes=1, method="probe")
        if way != "none":
            apply_propagation(pred, img, drawn, ann, split_classes=way == "split")
        pred = respect_annotation(pred, drawn, ann, keep_connected=True, fill_between=k == 1)  # side planes from k=2
        row[way] = b.dice(pred.labels, lab)
        fg, gt = pred.labels > 0, lab > 0
        row[f"{way}_merged"] = float(2 * (fg & gt).sum() / (fg.sum() + gt.sum()))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", default="1,2,3,5")
    p.add_argument("--work-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "napari_ssl_bench", "study_completion"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "probe_axis_split.json"))
    a = p.parse_args(argv)
    pdir = os.path.join(a.work_dir, "predictions", "val", "semi-random")
    rows, summary = [], {}
    for k in [int(x) for x in a.ks.split(",")]:
        files = sorted(glob.glob(os.path.join(pdir, f"*_k{k}_s0.npz")))
        if not files:
            raise SystemExit(f"no saved validation predictions for k={k} under {pdir}: run bench_study_completion.py --split val "
                             f"--methods semi-random --work-dir {a.work_dir} first")
        got = [score(f, k) for f in files]
        rows += got
        summary[k] = {w: round(float(np.mean([r[w] for r in got])), 4) for w in WAYS + tuple(f"{w}_merged" for w in WAYS)}
        summary[k].update(volumes=len(got), split_better=sum(r["split"] > r["nosplit"] + 1e-4 for r in got),
                          split_worse=sum(r["split"] < r["nosplit"] - 1e-4 for r in got))
        print(f"k={k}: {summary[k]}", flush=True)
    with open(a.out, "w") as f:
        json.dump({"command": " ".join(sys.argv), "summary": summary, "rows": rows}, f, indent=1)
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
