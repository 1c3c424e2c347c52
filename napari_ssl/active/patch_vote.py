"""Labels of one slice voted by the image patches of its neighbour (patch-based label fusion, Coupe et al. 2011,
NeuroImage 54:940, with the optical flow as the registration).

Why: read through the flow alone, a carried mask keeps the drawn slice's area while the structure thins and ends
(benchmarks/RESULTS.md, "Session 23"). Voted slice by slice, each pixel takes the labels of the neighbour's pixels near
its flow match whose patches look like its own, so the mask follows the image: on 30 drawn slices of the hippocampus
validation volumes the carried labels' foreground Dice 6 slices away rose from .47 to .56 ("Session 24").
"""
from __future__ import annotations

import numpy as np

SEARCH = 2  # candidate matches within this many flow pixels of the flow's own match, each way
PATCH = 1  # patches of (2 PATCH + 1)^2 flow pixels
BETA = 25.0  # the weights' scale h^2 = BETA x the median best-match patch distance (scale-free: MR and CT alike)


def patch_vote(prev_img: np.ndarray, prev_lab: np.ndarray, cur_img: np.ndarray, coords: np.ndarray, step: int = 1,
               search: int = SEARCH, patch: int = PATCH, beta: float = BETA) -> np.ndarray:
    """Labels (y, x) of `cur_img` voted from `prev_lab` (its dtype): `coords` (2, y, x) is where each pixel of `cur_img` lies in
    `prev_img` (the flow); the candidates are the pixels `step` x (-search .. search) around it, each weighted by
    exp(-(d - d_min) / h^2), d the mean squared difference of the two (2 patch + 1) step-pixel patches."""
    from scipy.ndimage import map_coordinates, uniform_filter

    cur = np.asarray(cur_img, np.float32)
    # the neighbour read through the flow once; the candidates are its integer shifts (warp, then search)
    warped = map_coordinates(np.asarray(prev_img, np.float32), [coords[0], coords[1]], order=1, mode="nearest")
    wlab = map_coordinates(np.asarray(prev_lab), [coords[0], coords[1]], order=0, mode="constant", cval=0)
    r = search * step
    warped = np.pad(warped, r, mode="edge")
    wlab = np.pad(wlab, r, mode="constant")
    h, w = cur.shape
    offs = [(dy * step, dx * step) for dy in range(-search, search + 1) for dx in range(-search, search + 1)]
    dist = np.empty((len(offs),) + cur.shape, np.float32)
    labs = np.empty((len(offs),) + cur.shape, wlab.dtype)
    size = (2 * patch + 1) * step
    for i, (dy, dx) in enumerate(offs):
        dist[i] = uniform_filter((cur - warped[r + dy:r + dy + h, r + dx:r + dx + w]) ** 2, size, mode="nearest")
        labs[i] = wlab[r + dy:r + dy + h, r + dx:r + dx + w]
    best = dist.min(0)
    h2 = beta * max(float(np.median(best)), 1e-8)
    w = np.exp(-(dist - best) / h2)
    classes = np.unique(labs)
    if classes.size == 1:
        return np.full(cur.shape, classes[0], wlab.dtype)
    votes = np.stack([(w * (labs == c)).sum(0) for c in classes])
    return classes[votes.argmax(0)]
