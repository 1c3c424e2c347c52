#!/usr/bin/env python
"""Probe (issue 11, session 24): carried labels voted by image patches (active/patch_vote.py), not only read through the flow.

The flow (active/propagate.py) maps each pixel of a carried slice to a place in the drawn slice and reads the label
there, so the carried mask keeps the drawn slice's area while the structure thins and ends (RESULTS.md, "Session 23").
With ``vote``, each carried slice's labels are voted from the previous slice's by the pixels near the flow's match whose
image patches look like the pixel's own (patch-based label fusion, Coupe et al. 2011), slice by slice.

Drawn slices: bench_label_efficiency's validation picks (k=5, seeds 0-5: 30 slices of the hippocampus validation volumes),
each carried 6 slices each way. Foreground Dice, mean class Dice and carried / true area by distance, for the flow alone
and the vote at several search radii, patch sizes and weight scales. No training.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_patch_labels.py

Writes benchmarks/results/probe_patch_labels.json and .png.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
OUT = os.path.join(HERE, "results", "probe_patch_labels")
RADIUS = 6
# (search, patch, beta); the first is the default of active/patch_vote.py
SETTINGS = [(2, 1, 25.0), (1, 1, 25.0), (3, 1, 25.0), (2, 2, 25.0), (2, 1, 10.0), (2, 1, 50.0), (2, 0, 25.0)]


def score(pool, picks, vote: bool) -> dict:
    """The picks' drawn slices carried RADIUS slices each way (propagate_labels as it is when called): by distance, the
    foreground and mean class Dice, carried / true foreground area and the share of slices the structure has left.
    Shared with probe_flow_params.py."""
    from napari_ssl.active.propagate import propagate_labels

    from ct_reference import dice

    fg = {d: [] for d in range(1, RADIUS + 1)}
    cls = {d: [] for d in range(1, RADIUS + 1)}
    area = {d: [0, 0] for d in range(1, RADIUS + 1)}
    empty = {d: [] for d in range(1, RADIUS + 1)}
    for v, z in picks:
        img, lab = pool[v]
        m = np.zeros(lab.shape[0], bool)
        m[z] = True
        carried, done, _ = propagate_labels(img, np.where(m[:, None, None], lab, 0).astype(lab.dtype), m, (z - RADIUS, z + RADIUS + 1),
                                            vote=vote)
        for q in np.flatnonzero(done):
            d, c, t = abs(int(q) - z), carried[q], lab[q]
            fg[d].append(dice(c > 0, t > 0))
            cls[d].append(float(np.mean([dice(c == k, t == k) for k in (1, 2)])))
            area[d][0] += int((c > 0).sum())
            area[d][1] += int((t > 0).sum())
            empty[d].append(not t.any())
    return {"dice": {d: float(np.mean(x)) for d, x in fg.items()}, "class_dice": {d: float(np.mean(x)) for d, x in cls.items()},
            "area_ratio": {d: a / max(1, t) for d, (a, t) in area.items()},
            "share_of_slices_without_structure": {d: float(np.mean(x)) for d, x in empty.items()}}


def main() -> int:
    import napari_ssl.active.patch_vote as pv

    import bench_label_efficiency as b

    t0 = time.time()
    pool, _, cand, _ = b.load_split(64, 6, "val")
    picks = [p for seed in range(6) for p in b.pick_slices(cand, 5, seed)]
    real = pv.patch_vote
    table = {"flow only (before)": score(pool, picks, False)}
    try:
        for s, p, beta in SETTINGS:
            pv.patch_vote = functools.partial(real, search=s, patch=p, beta=beta)  # propagate imports it at call time
            table[f"vote search {s} patch {p} beta {beta:g}"] = score(pool, picks, True)
    finally:
        pv.patch_vote = real
    for name, row in table.items():
        print(f"{name:34s}", " ".join(f"d{d} {x:.3f}" for d, x in row["dice"].items()),
              "| class", " ".join(f"{x:.3f}" for x in row["class_dice"].values()),
              "| area", " ".join(f"{x:.2f}" for x in row["area_ratio"].values()), flush=True)
    with open(OUT + ".json", "w") as f:
        json.dump({"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_patch_labels.py", "drawn_slices": len(picks),
                   "radius": RADIUS, "wall_seconds": time.time() - t0, "table": table}, f, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, row in table.items():
        lw = 2.5 if name.startswith("flow") or name == f"vote search {SETTINGS[0][0]} patch {SETTINGS[0][1]} beta {SETTINGS[0][2]:g}" else 1
        for ax, key in zip(axes, ("dice", "class_dice")):
            ax.plot(list(row[key]), list(row[key].values()), marker="o", lw=lw, label=name)
    axes[0].set_ylabel("foreground Dice of the carried labels")
    axes[1].set_ylabel("mean class Dice (anterior, posterior)")
    for ax in axes:
        ax.set_xlabel("slices from the drawn slice")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"hippocampus validation volumes, {len(picks)} drawn slices", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT + ".png", dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
