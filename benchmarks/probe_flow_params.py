#!/usr/bin/env python
"""Probe (issue 11, session 23): does another optical flow carry a drawn slice's labels better (active/propagate.py)?

The drawn slices of bench_label_efficiency's validation picks (k=5, seeds 0-5: 30 slices of the hippocampus validation
volumes), each carried --radius slices each way with skimage's TV-L1 at several settings, Lucas-Kanade, and no flow at all;
foreground Dice of the carried labels against the expert's by distance, the carried / true foreground area, and the
share of carried slices where the structure has already ended.
No training.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_flow_params.py

Writes benchmarks/results/probe_flow_params.json and .png.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
OUT = os.path.join(HERE, "results", "probe_flow_params")


def flows() -> dict:
    import skimage.registration as sr

    tvl1 = sr.optical_flow_tvl1
    out = {"TV-L1 (ours: skimage defaults)": tvl1, "no flow": lambda a, b: (np.zeros_like(a), np.zeros_like(a))}
    for name, kw in [("attachment 5", {"attachment": 5}), ("attachment 30", {"attachment": 30}), ("tightness 0.1", {"tightness": 0.1}),
                     ("tightness 0.6", {"tightness": 0.6}), ("prefilter", {"prefilter": True}), ("30 iterations", {"num_iter": 30})]:
        out["TV-L1 " + name] = lambda a, b, kw=kw: tvl1(a, b, **kw)
    out["Lucas-Kanade r4"] = lambda a, b: sr.optical_flow_ilk(a, b, radius=4)
    out["Lucas-Kanade r7"] = lambda a, b: sr.optical_flow_ilk(a, b, radius=7)
    return out


def main() -> int:
    import skimage.registration as sr
    from probe_patch_labels import RADIUS, score

    import bench_label_efficiency as b

    t0 = time.time()
    pool, _, cand, _ = b.load_split(64, 6, "val")
    picks = [p for seed in range(6) for p in b.pick_slices(cand, 5, seed)]
    real = sr.optical_flow_tvl1
    table = {}
    try:
        for name, fn in flows().items():
            sr.optical_flow_tvl1 = fn  # propagate_labels imports it from skimage.registration at call time
            table[name] = score(pool, picks, vote=False)
            print(f"{name:32s}", " ".join(f"d{d} {x:.3f}" for d, x in table[name]["dice"].items()), flush=True)
    finally:
        sr.optical_flow_tvl1 = real
    with open(OUT + ".json", "w") as f:
        json.dump({"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_flow_params.py", "drawn_slices": len(picks),
                   "radius": RADIUS, "wall_seconds": time.time() - t0, "table": table}, f, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in table.items():
        ax.plot(list(row["dice"]), list(row["dice"].values()), marker="o", lw=2.5 if name.startswith("TV-L1 (ours") else 1, label=name)
    ax.set_xlabel("slices from the drawn slice")
    ax.set_ylabel("foreground Dice of the carried labels")
    ax.set_title(f"hippocampus validation volumes, {len(picks)} drawn slices", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT + ".png", dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
