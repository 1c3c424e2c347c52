"""3-D connected components of label maps: what the user drew is one connected structure.

Two rules, used at two places of the prediction path:
- `keep_touching` (respect_annotation, semi-supervised pseudo-labels): components of the prediction *joined with*
  the user's drawing (26-connectivity), so a prediction that misses the drawing is dropped;
- `keep_touched` (the data-driven defaults' `keep_connected`): components of the prediction alone (6-connectivity)
  that overlap the drawing; the prediction is left as it is when none overlaps (nothing to anchor on).
"""
from __future__ import annotations

import numpy as np


def _seeded(fg: np.ndarray, seed_fg: np.ndarray, labels: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """`labels` where `fg`'s connected components contain a voxel of `seed_fg`; 0 elsewhere. Components are
    labelled only inside the foreground's bounding box (a full CT is 77 M voxels)."""
    from scipy import ndimage

    box = ndimage.find_objects(fg.astype(np.uint8))[0]
    comp, _ = ndimage.label(fg[box], structure=structure)
    keep = np.unique(comp[seed_fg[box]])
    keep = keep[keep > 0]
    out = np.zeros_like(labels)
    out[box] = np.where(np.isin(comp, keep), labels[box], 0)
    return out


def keep_touching(labels: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Foreground of `labels` only in the 3-D connected components (26-connectivity) that contain a
    foreground voxel of `seeds`; everything else becomes 0. With no seed foreground, `labels` unchanged."""
    seed_fg = seeds > 0
    if not seed_fg.any():
        return labels
    return _seeded((labels > 0) | seed_fg, seed_fg, labels, np.ones((3, 3, 3), bool))


def keep_touched(pred: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """`pred` (z, y, x labels) with only the 3-D foreground components (6-connectivity) that overlap a
    foreground voxel of `seeds` (the user's drawing); unchanged when no component overlaps one."""
    from scipy import ndimage

    fg = pred > 0
    touched = (np.asarray(seeds) > 0) & fg
    if not touched.any():
        return pred
    return _seeded(fg, touched, pred, ndimage.generate_binary_structure(3, 1))
