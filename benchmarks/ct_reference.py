"""Reference masks for the time-to-mask benchmark: RTSTRUCT ROIs rasterised on the CT's canonical grid.

Self-contained (pydicom + skimage polygon fill, pixel centres inside the contour), so the benchmark does not
depend on the RTSTRUCT reader it may be used to check. Also: the k annotated slices at the (i+1)/(k+1)
quantiles of a structure's extent along the slice axis, the placement every few-slice benchmark uses.
"""
from __future__ import annotations

import numpy as np


def rasterise_roi(rtstruct_path: str, volume, roi_name: str) -> np.ndarray:
    """(z, y, x) bool mask of one ROI (by name, case-insensitive) on `volume`'s grid (canonical, LPS affine)."""
    import pydicom
    from skimage.draw import polygon

    ds = pydicom.dcmread(rtstruct_path)
    number = next(int(r.ROINumber) for r in ds.StructureSetROISequence if str(r.ROIName).lower() == roi_name.lower())
    roi = next(c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) == number)
    inv = np.linalg.inv(volume.affine)
    mask = np.zeros(volume.shape, bool)
    for contour in getattr(roi, "ContourSequence", []):
        pts = np.asarray(contour.ContourData, float).reshape(-1, 3)
        idx = (inv @ np.c_[pts, np.ones(len(pts))].T).T[:, :3]  # (z, y, x) voxel coordinates
        z = int(round(float(np.median(idx[:, 0]))))
        if not 0 <= z < volume.shape[0]:
            continue
        rr, cc = polygon(idx[:, 1], idx[:, 2], shape=volume.shape[1:])
        plane = np.zeros(volume.shape[1:], bool)
        plane[rr, cc] = True
        mask[z] ^= plane  # XOR: a contour inside another is a hole
    return mask


def quantile_slices(mask: np.ndarray, k: int) -> list[int]:
    """The k slices at the (i+1)/(k+1) quantiles of the structure's extent along axis 0."""
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(1))
    lo, hi = int(zs.min()), int(zs.max())
    return [int(round(lo + (hi - lo) * (i + 1) / (k + 1))) for i in range(k)]


def sparse_from(mask: np.ndarray, slices: list[int], value: int = 1) -> np.ndarray:
    """A label map holding `mask` only on `slices` (what a user would have drawn)."""
    out = np.zeros(mask.shape, np.uint8)
    for z in slices:
        out[z][mask[z]] = value
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0
