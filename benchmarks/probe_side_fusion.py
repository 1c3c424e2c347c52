"""How to fuse the three sides' probabilities, probed on saved validation predictions (no training).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_side_fusion.py --methods semi-random,semi-random-axial0.5

Reads the per-side class probabilities that bench_study_completion.py saves for each validation run
(``--split val``; predictions/val/<method>/*.npz under its work dir, ``probabilities_0/1/2``), fuses them in
several ways, applies the same post-processing as the product (respect_annotation, keep_connected) and scores
whole-volume Dice. The arithmetic mean (``mean3``, the fusion before) is the baseline in the same run.
Validation volumes only: refuses test predictions. Writes benchmarks/results/probe_side_fusion.json.
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

from napari_ssl.active.fill_between import fill_between_slices  # noqa: E402
from napari_ssl.active.predict import Prediction  # noqa: E402
from napari_ssl.active.respect_annotation import respect_annotation  # noqa: E402

EPS = 1e-6


def finish(p: np.ndarray, lab, ann, sparse) -> float:
    labels = p.argmax(0).astype(np.uint8)
    pred = Prediction(labels=labels, probabilities=p.astype(np.float32), uncertainty=np.zeros(labels.shape, np.float32),
                      slice_uncertainty=np.zeros(labels.shape[0], np.float32), class_names=["a", "b"], passes=1, method="probe")
    return b.dice(respect_annotation(pred, sparse, ann, keep_connected=True).labels, lab)


def geo(ps, w) -> np.ndarray:
    lg = sum(wi * np.log(p + EPS) for wi, p in zip(w, ps))
    e = np.exp(lg - lg.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def fusions(ps, sparse, ann) -> dict:
    p0, p1, p2 = ps
    out = {"mean3": (p0 + p1 + p2) / 3, "geo3": geo(ps, (1 / 3,) * 3)}
    for wa in (0.2, 0.5):
        out[f"mean-axial{wa}"] = wa * p0 + (1 - wa) / 2 * (p1 + p2)
        out[f"geo-axial{wa}"] = geo(ps, (wa, (1 - wa) / 2, (1 - wa) / 2))
    fb = fill_between_slices(sparse, ann)
    onehot = (np.arange(p0.shape[0])[:, None, None, None] == fb[None]).astype(np.float32)
    for w in (0.15, 0.25):
        out[f"geo3+fill-vote{w}"] = (1 - w) * out["geo3"] + w * onehot
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="semi-random")
    ap.add_argument("--work-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "napari_ssl_bench", "study_completion"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "probe_side_fusion.json"))
    args = ap.parse_args(argv)
    val = set(b.split_volumes("val", 200))
    res = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_side_fusion.py " + " ".join(argv or sys.argv[1:]),
           "models": {}}
    for method in args.methods.split(","):
        files = sorted(glob.glob(os.path.join(args.work_dir, "predictions", "val", method, "*.npz")))
        per: dict = {}
        for f in files:
            stem = os.path.basename(f)[:-4]
            vol, k = stem.rsplit("_k", 1)[0] + ".nii.gz", int(stem.rsplit("_k", 1)[1].split("_")[0])
            if vol not in val:
                raise SystemExit(f"{vol} is not a validation volume: this probe never looks at test volumes")
            z = np.load(f)
            if "probabilities_0" not in z:
                continue
            _, lab = b.load(vol)
            ann = np.zeros(lab.shape[0], bool)
            ann[b.quantile_slices(lab, k)] = True
            sparse = np.where(ann[:, None, None], lab, 0).astype(np.uint8)
            ps = [z[f"probabilities_{i}"].astype(np.float32) for i in range(3)]
            for name, p in fusions(ps, sparse, ann).items():
                per.setdefault(str(k), {}).setdefault(name, {})[vol] = finish(p, lab, ann, sparse)
        summary = {}
        for k, by in per.items():
            base = by["mean3"]
            summary[k] = {name: {"dice": float(np.mean(list(v.values()))),
                                 "minus_mean3": float(np.mean([v[x] - base[x] for x in v])),
                                 "better_than_mean3": int(sum(v[x] > base[x] for x in v)), "volumes": len(v)}
                          for name, v in by.items()}
            print(method, "k=" + k, {n: round(s["dice"], 3) for n, s in summary[k].items()}, flush=True)
        res["models"][method] = {"summary": summary, "per_volume": per}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
