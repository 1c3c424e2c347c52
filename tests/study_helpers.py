"""Shared by the study-completion tests: where k slices are annotated, and the two-class hippocampus Dice."""
import numpy as np


def quantile_slices(lab, k):
    """k slices at the (i+1)/(k+1) quantiles of the structure's extent along axis 0 (the benchmark's placement)."""
    zs = np.flatnonzero(lab.reshape(lab.shape[0], -1).any(1))
    return sorted({int(round(zs[0] + (zs[-1] - zs[0]) * (i + 1) / (k + 1))) for i in range(k)})


def dice(pred, lab):
    """Mean of the anterior (1) and posterior (2) Dice; a class absent from both counts 1."""
    out = []
    for c in (1, 2):
        p, t = pred == c, lab == c
        den = p.sum() + t.sum()
        out.append(2 * (p & t).sum() / den if den else 1.0)
    return float(np.mean(out))
