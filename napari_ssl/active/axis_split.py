"""Split a carried structure of several classes by planes across its own axis.

Why: an annotated slice through a structure whose parts follow one another along its length (the head and the
body of the hippocampus, say) shows the parts side by side. Carried outward slice by slice
(:mod:`napari_ssl.active.propagate`), each part keeps its place in the slice, while the true boundary between the
parts crosses the slices at an angle: a few slices away the whole cross-section is one part. On validation
volumes (benchmarks/RESULTS.md, "Session 20") the foreground of the one-slice result was right far more often than
its classes (Dice .65 with the classes merged, .46 with them).

The boundary between consecutive parts of an elongated structure lies across its axis. The axis is fitted to the
centroids of the carried masks (in mm); where the seed slice's classes are separated along the axis's in-plane
direction (at least :data:`SEPARABLE` of their pixels on the right side of one threshold per pair) and touch each
other, and the axis leans from the slices' normal (:data:`MIN_TILT_DEG`), every carried voxel takes the class of its
side of the planes through those thresholds, across the axis. Other arrangements (one class, nested classes, two
structures side by side) are left as carried.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# chosen on 16 validation volumes of the hippocampus pool at k=1 (4, 8 and 12 slices gave the same Dice)
AXIS_SLICES = 8  # carried slices next to the seed whose centroids fit the axis
SEPARABLE = 0.9  # share of the seed's pixels a threshold along the axis must put on their class's side
# Guard, not tuned: a structure running (nearly) across the slices cannot show two of its parts side by side on one slice;
# two classes side by side there are two things next to each other (organs, left and right), and planes across such an
# axis would sweep a whole cross-section to one class within a slice or two. (The hippocampus: 24-65 degrees.)
MIN_TILT_DEG = 20.0  # the axis must lean at least this far from the slices' normal


def best_threshold(below: np.ndarray, above: np.ndarray) -> tuple[float, float]:
    """(accuracy, threshold) of the split of 1-D values that puts most of `below` under it and of `above` over it."""
    v = np.concatenate([below, above]).astype(np.float64)
    is_above = np.concatenate([np.zeros(below.size, bool), np.ones(above.size, bool)])
    order = np.argsort(v, kind="stable")
    v, is_above = v[order], is_above[order]
    # correct if cut after i values: the `below` values among the first i + the `above` values after them
    correct = np.concatenate([[0], np.cumsum(~is_above)]) + (above.size - np.concatenate([[0], np.cumsum(is_above)]))
    cuts = np.flatnonzero(np.diff(v) > 0) + 1  # between distinct values only
    if cuts.size == 0:
        return 0.0, float(v[0]) if v.size else 0.0
    i = int(cuts[np.argmax(correct[cuts])])
    return float(correct[i]) / v.size, float((v[i - 1] + v[i]) / 2)


def _touch(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two masks of one slice share an edge (4-neighbourhood)."""
    return bool((a[1:] & b[:-1]).any() or (a[:-1] & b[1:]).any() or (a[:, 1:] & b[:, :-1]).any() or (a[:, :-1] & b[:, 1:]).any())


def _axis(carried: np.ndarray, seed_z: int, seed_labels: np.ndarray, side: list[int], spacing: Sequence[float]):
    """Unit axis (z, y, x) in mm through the centroids of the seed's and the first carried slices' foreground, or None."""
    pts = []
    for z, sl in [(seed_z, seed_labels)] + [(z, carried[z]) for z in side[:AXIS_SLICES]]:
        ys, xs = np.nonzero(sl)
        if ys.size:
            pts.append(((z - seed_z) * spacing[0], ys.mean() * spacing[1], xs.mean() * spacing[2]))
    if len(pts) < 3:
        return None
    p = np.asarray(pts)
    a = np.array([1.0, np.polyfit(p[:, 0], p[:, 1], 1)[0], np.polyfit(p[:, 0], p[:, 2], 1)[0]])
    return a / np.linalg.norm(a)


def split_along_axis(carried: np.ndarray, side: list[int], seed_z: int, seed_labels: np.ndarray,
                     spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> bool:
    """Relabel the carried foreground of the slices `side` (one side of the seed slice `seed_z`, nearest first) by
    planes across the structure's axis where the seed's classes are separated along it; in place. True if done."""
    classes = [int(c) for c in np.unique(seed_labels) if c > 0]
    if len(classes) < 2 or not side:
        return False
    a = _axis(carried, seed_z, seed_labels, side, spacing)
    if a is None or np.degrees(np.arctan2(np.hypot(a[1], a[2]), a[0])) < MIN_TILT_DEG:
        return False
    sy, sx = a[1] * spacing[1], a[2] * spacing[2]
    ys, xs = np.nonzero(seed_labels)
    proj, cls = sy * ys + sx * xs, seed_labels[ys, xs]
    classes.sort(key=lambda c: float(np.median(proj[cls == c])))
    thresholds = []
    for c1, c2 in zip(classes[:-1], classes[1:]):
        acc, t = best_threshold(proj[cls == c1], proj[cls == c2])
        if acc < SEPARABLE or not _touch(seed_labels == c1, seed_labels == c2):  # parts of one structure meet
            return False
        thresholds.append(t)
    for z in side:
        ys, xs = np.nonzero(carried[z])
        if ys.size == 0:
            continue
        s = a[0] * (z - seed_z) * spacing[0] + sy * ys + sx * xs
        new = np.full(ys.size, classes[0], carried.dtype)
        for t, c in zip(thresholds, classes[1:]):
            new[s >= t] = c
        carried[z, ys, xs] = new
    return True
