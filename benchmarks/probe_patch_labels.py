#!/usr/bin/env python
"""Probe (issue 11, session 24): carried labels read through image patches, not only through the flow.

The flow (active/propagate.py) maps each pixel of a carried slice to a place in the drawn slice and reads the label
there, so the carried mask keeps the drawn slice's area while the structure thins and ends (RESULTS.md, "Session 23").
Patch-based label fusion (Coupe et al. 2011, NeuroImage 54:940, non-local means over an atlas) instead labels each pixel
by the labels of the drawn slice's pixels, within a small window around the flow's match, whose image patches look like
the pixel's own: where the structure has ended the pixel looks like the background around it, and takes its label.

Drawn slices: bench_label_efficiency's validation picks (k=5, seeds 0-5: 30 slices of the hippocampus validation volumes),
each carried --radius slices each way. Foreground Dice and carried / true area by distance. No training.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_patch_labels.py
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
OUT = os.path.join(HERE, "results", "probe_patch_labels")
RADIUS = 6
STATS: list = []


def patch_fuse(seed_img, seed_lab, cur, coords, search: int, patch: int, k: int, mode: str = "adaptive", h: float = 1.0):
    """Class probabilities (k, y, x) of `cur` from the seed slice's labels within `search` px of the flow's match, each
    weighted by exp(-SSD of the (2 patch + 1)^2 patches / h2)."""
    from scipy.ndimage import map_coordinates, uniform_filter

    offs = [(dy, dx) for dy in range(-search, search + 1) for dx in range(-search, search + 1)]
    ssd = np.empty((len(offs),) + cur.shape, np.float32)
    labs = np.empty((len(offs),) + cur.shape, np.uint8)
    for i, (dy, dx) in enumerate(offs):
        c = [coords[0] + dy, coords[1] + dx]
        s = map_coordinates(seed_img, c, order=1, mode="nearest")
        ssd[i] = uniform_filter((cur - s) ** 2, 2 * patch + 1, mode="nearest")
        labs[i] = map_coordinates(seed_lab, c, order=0, mode="constant", cval=0)
    if mode == "adaptive":
        h2 = ssd.min(0, keepdims=True) + 1e-3
    elif mode == "rel":  # h2 = h x the median best-match SSD (scale-free)
        h2 = np.float32(h * max(float(np.median(ssd.min(0))), 1e-6))
        STATS.append(float(np.median(ssd.min(0))))
    else:
        h2 = np.float32(h)
    w = np.exp(-(ssd - ssd.min(0, keepdims=True)) / h2)
    prob = np.stack([(w * (labs == c)).sum(0) for c in range(k)])
    return prob / prob.sum(0, keepdims=True)


def carry(img, lab, z, radius, relabel=None, chain=False):
    """The flow's carrying (propagate_labels, f=1) with an optional relabelling of each carried slice."""
    from scipy.ndimage import map_coordinates
    from skimage.registration import optical_flow_tvl1

    from napari_ssl.active.propagate import label_box

    ann = np.zeros(lab.shape[0], bool)
    ann[z] = True
    y0, y1, x0, x1 = label_box(lab, ann, lab.shape[1:])
    out = {}
    for step, end in ((-1, max(-1, z - radius - 1)), (1, min(lab.shape[0], z + radius + 1))):
        seed_img = img[z, y0:y1, x0:x1].astype(np.float32)
        seed = lab[z, y0:y1, x0:x1]
        prev = seed_img
        prev_lab = seed
        h, w = prev.shape
        pos = np.mgrid[0:h, 0:w].astype(np.float32)
        grid = pos.copy()
        for q in range(z + step, end, step):
            cur = img[q, y0:y1, x0:x1].astype(np.float32)
            v, u = optical_flow_tvl1(cur, prev)
            pos = np.stack([map_coordinates(pos[i], [grid[0] + v, grid[1] + u], order=1, mode="nearest") for i in range(2)])
            carried = map_coordinates(seed, [pos[0], pos[1]], order=0, mode="constant", cval=0)
            if relabel is not None and chain:
                carried = relabel(prev, prev_lab, cur, grid + np.stack([v, u]), carried)
            elif relabel is not None:
                carried = relabel(seed_img, seed, cur, pos, carried)
            prev_lab = carried
            full = np.zeros(lab.shape[1:], np.uint8)
            full[y0:y1, x0:x1] = carried
            out[q] = full
            prev = cur
    return out


def variants() -> dict:
    out = {"flow only (ours)": (None, False)}
    for s, p, mode, h, ch in [(2, 1, "fixed", 0.02, True), (2, 1, "fixed", 0.05, True), (2, 1, "fixed", 0.1, True), (3, 1, "fixed", 0.05, True),
                              (2, 2, "fixed", 0.05, True), (2, 1, "rel", 3, True), (2, 1, "rel", 10, True), (2, 1, "rel", 30, True)]:
        name = f"patch s{s} p{p} {mode}" + (f" h{h}" if mode == "fixed" else "") + (" chain" if ch else "")
        out[name] = ((lambda si, sl, cur, pos, carried, s=s, p=p, mode=mode, h=h:
                     patch_fuse(si, sl, cur, pos, s, p, 3, mode, h).argmax(0).astype(np.uint8)), ch)
    return out


def main() -> int:
    import bench_label_efficiency as b

    t0 = time.time()
    pool, _, cand, _ = b.load_split(64, 6, "val")
    picks = [p for seed in range(6) for p in b.pick_slices(cand, 5, seed)]
    table = {}
    for name, (fn, ch) in variants().items():
        dice = {d: [] for d in range(1, RADIUS + 1)}
        cdice = {d: [] for d in range(1, RADIUS + 1)}
        area = {d: [0, 0] for d in range(1, RADIUS + 1)}
        for v, z in picks:
            img, lab = pool[v]
            for q, c in carry(img, lab, z, RADIUS, fn, ch).items():
                d, t = abs(q - z), lab[q]
                cf, tf = c > 0, t > 0
                s = int(cf.sum() + tf.sum())
                dice[d].append(2 * float((cf & tf).sum()) / s if s else 1.0)
                per = []
                for k in (1, 2):
                    a, bb = c == k, t == k
                    sk = int(a.sum() + bb.sum())
                    per.append(2 * float((a & bb).sum()) / sk if sk else 1.0)
                cdice[d].append(float(np.mean(per)))
                area[d][0] += int(cf.sum())
                area[d][1] += int(tf.sum())
        table[name] = {"dice": {d: float(np.mean(x)) for d, x in dice.items()},
                       "class_dice": {d: float(np.mean(x)) for d, x in cdice.items()},
                       "area_ratio": {d: a / max(1, t) for d, (a, t) in area.items()}}
        print(f"{name:28s}", " ".join(f"d{d} {x:.3f}" for d, x in table[name]["dice"].items()),
              "| cls", " ".join(f"{x:.3f}" for x in table[name]["class_dice"].values()),
              "| area", " ".join(f"{x:.2f}" for x in table[name]["area_ratio"].values()), flush=True)
        if STATS:
            print("median best SSD", np.percentile(STATS, [10, 50, 90]))
            STATS.clear()
    with open(OUT + ".json", "w") as f:
        json.dump({"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_patch_labels.py", "drawn_slices": len(picks),
                   "radius": RADIUS, "wall_seconds": time.time() - t0, "table": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
