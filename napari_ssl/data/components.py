"""3-D connected components of label maps: what the user drew is one connected structure."""
from __future__ import annotations

import numpy as np


def keep_touching(labels: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Foreground of `labels` only in the 3-D connected components (26-connectivity) that contain a
    foreground voxel of `seeds`; everything else becomes 0. With no seed foreground, `labels` unchanged."""
    from scipy import ndimage

    seed_fg = seeds > 0
    if not seed_fg.any():
        return labels
    fg = (labels > 0) | seed_fg
    box = ndimage.find_objects(fg.astype(np.uint8))[0]  # label only inside the foreground's bounding box (a full CT is 77 M voxels)
    comp, n = ndimage.label(fg[box], structure=np.ones((3, 3, 3), bool))
    keep = np.unique(comp[seed_fg[box]])
    keep = keep[keep > 0]
    out = np.zeros_like(labels)
    out[box] = np.where(np.isin(comp, keep), labels[box], 0)
    return out
