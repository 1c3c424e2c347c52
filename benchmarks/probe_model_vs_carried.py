#!/usr/bin/env python
"""Probe (issue 11, session 23): on the labelled volumes themselves, which labels the carried slices deserve.

Labels scattered over studies (k slices at random, validation split of bench_label_efficiency.py): the default recipe
is trained (600 steps), then on each labelled volume's slices carried --radius slices each way from its drawn slice,
per-slice mean class Dice against the expert of: the carried labels (what the recipe trains on: pseudo_labels.carried_window
with the recipe's own ``carry_vote``), the trained model's
answer, and the two fused (active/propagate.fuse_with_prior, as prediction does within a study), by distance.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_model_vs_carried.py --k 5 --radius 10 --seeds 3

Writes benchmarks/results/probe_model_vs_carried.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
KINDS = ("carried", "model", "fused")


def dice_classes(p: np.ndarray, t: np.ndarray) -> float:
    out = [2 * float(((p == c) & (t == c)).sum()) / float((p == c).sum() + (t == c).sum()) for c in (1, 2) if (p == c).any() or (t == c).any()]
    return float(np.mean(out)) if out else float("nan")


def run(k: int, radius: int, seeds: int) -> list[dict]:
    import torch

    from napari_ssl.active.propagate import fuse_with_prior, label_box
    from napari_ssl.data.labelled_slices import LabelledVolume
    from napari_ssl.train.finetune import FinetuneConfig, build_initial_model
    from napari_ssl.train.pseudo_labels import carried_window, predict_slices
    from napari_ssl.train.semi_supervised import SemiSupervisedConfig, train_semi_supervised

    import bench_label_efficiency as b

    torch.set_num_threads(1)
    pool, _, cand, _ = b.load_split(64, 6, "val")
    cfg = SemiSupervisedConfig()
    rows = []
    for seed in range(seeds):
        vols, truths = [], []
        for v, z in b.pick_slices(cand, k, seed):
            img, lab = pool[v]
            m = np.zeros(lab.shape[0], bool)
            m[z] = True
            vols.append(LabelledVolume(image=img, labels=np.where(m[:, None, None], lab, 0).astype(lab.dtype), annotated=m))
            truths.append(lab)
        torch.manual_seed(seed)
        unet, _ = build_initial_model(FinetuneConfig(images=[], labels=[], out="", encoder="mobilenetv3-small-lite"), 3)
        t0 = time.time()
        unet, _ = train_semi_supervised(unet, vols, image_size=64, in_channels=1, steps=600, cfg=cfg, seed=seed,
                                        batch_size=8, lr=3e-3, loss="dice-ce", devices="cpu")
        for vol, lab in zip(vols, truths):
            z = int(vol.drawn_indices[0])
            carried, done = carried_window(vol, radius, cfg.carry_vote)
            box = label_box(vol.labels, vol.annotated, vol.labels.shape[1:])
            zs = [int(q) for q in np.flatnonzero(done)]
            probs = predict_slices(unet, vol.image, zs, 64, 1)
            full = np.zeros((probs.shape[1], *lab.shape), np.float32)
            full[0] = 1
            full[:, zs] = probs.transpose(1, 0, 2, 3)
            model = full.argmax(0)
            fused = fuse_with_prior(full.copy(), carried, done, box).argmax(0)
            for q in zs:
                rows.append({"seed": seed, "d": abs(q - z), "carried": dice_classes(carried[q], lab[q]),
                             "model": dice_classes(model[q], lab[q]), "fused": dice_classes(fused[q], lab[q])})
        print(f"seed {seed}: trained in {time.time() - t0:.0f} s", flush=True)
    return rows


def summarize(rows: list[dict], radius: int) -> dict:
    by_d = {d: {kind: float(np.nanmean([r[kind] for r in rows if r["d"] == d])) for kind in KINDS} for d in range(1, radius + 1)
            if any(r["d"] == d for r in rows)}
    return {"by_distance": by_d, "all": {kind: float(np.nanmean([r[kind] for r in rows])) for kind in KINDS}}


def plot(summary: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = sorted(int(d) for d in summary["by_distance"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in KINDS:
        ax.plot(ds, [summary["by_distance"][d][kind] for d in ds], marker="o", label=kind)
    ax.set_xlabel("slices from the drawn slice")
    ax.set_ylabel("per-slice mean class Dice")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--radius", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=os.path.join(HERE, "results", "probe_model_vs_carried.json"))
    args = p.parse_args(argv)
    t0 = time.time()
    rows = run(args.k, args.radius, args.seeds)
    summary = summarize(rows, args.radius)
    out = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_model_vs_carried.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "k": args.k, "radius": args.radius, "seeds": args.seeds, "wall_seconds": time.time() - t0, **summary, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    plot(summary, os.path.splitext(args.out)[0] + ".png", f"validation, k={args.k} across studies, {args.seeds} seeds: labels of the carried slices")
    for d, v in summary["by_distance"].items():
        print(d, "  ".join(f"{kind} {v[kind]:.3f}" for kind in KINDS))
    print("all", "  ".join(f"{kind} {summary['all'][kind]:.3f}" for kind in KINDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
