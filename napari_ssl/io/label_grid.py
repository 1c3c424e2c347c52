"""A label map placed on its source series' grid (voxel-exact, within the documented geometry tolerance),
and the segment names that go with it: what every export (DICOM-SEG, NIfTI) starts from."""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import NapariSSLError
from .geometry_tolerance import GRID_SHIFT_VOXELS, VOXEL_SIZE_REL
from .orientation import axis_mapping, reorient_array, reoriented_affine
from .volume import Volume


def native_affine(volume: Volume) -> np.ndarray:
    return np.asarray(volume.native_affine if volume.native_affine is not None else volume.affine, float)


def require_dicom_source(source: Volume) -> None:
    if not source.is_dicom or not source.source_datasets:
        what = os.path.basename(source.path) if source.path else "the source"
        raise NapariSSLError(
            f"DICOM-SEG needs a DICOM source series; {what} is not DICOM (export NIfTI instead, or give the DICOM series the mask was drawn on)"
        )


def labels_on_source_grid(labels: np.ndarray, source: Volume, labels_affine: Optional[np.ndarray] = None) -> np.ndarray:
    """`labels` reordered onto the source's native storage order (a view when possible).

    ``labels_affine=None`` means `labels` has the same array order as ``source.array``.
    Raises NapariSSLError when the label grid is not the source grid up to axis order.
    """
    arr = np.asarray(labels)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise NapariSSLError(f"labels must be a 3-D array (z, y, x); got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise NapariSSLError("labels must be whole numbers (a label map), not probabilities; threshold them first")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise NapariSSLError(f"labels have data type {arr.dtype}; a label map of integers is needed")
    if arr.dtype.kind == "i":
        if arr.size and arr.min() < 0:
            raise NapariSSLError("labels contain negative values; label values must be 0 (background) or positive")
        arr = arr.astype(np.uint16 if arr.max(initial=0) > 255 else np.uint8) if arr.max(initial=0) < 65536 else arr.astype(np.uint32)

    target = native_affine(source)
    src_aff = np.asarray(source.affine if labels_affine is None else labels_affine, float)
    if src_aff.shape != (4, 4):
        raise NapariSSLError("the labels' affine must be a 4x4 matrix")
    try:
        perm, flips = axis_mapping(src_aff, target)
    except ValueError:
        raise NapariSSLError(
            "the labels' grid is rotated relative to the source series (oblique difference); draw or resample the mask on the source series first"
        ) from None
    out = reorient_array(arr, src_aff, target)
    want = tuple(source.array.shape[i] for i in axis_mapping(source.affine, target)[0])
    if out.shape != want:
        raise NapariSSLError(
            f"labels shape {tuple(arr.shape)} does not match the source series ({tuple(source.array.shape)}); "
            "export a mask drawn on this series"
        )
    moved = reoriented_affine(src_aff, arr.shape, perm, flips)
    spacing = np.linalg.norm(target[:3, :3], axis=0)
    col_err = np.linalg.norm(moved[:3, :3] - target[:3, :3], axis=0) / spacing
    if np.any(col_err > VOXEL_SIZE_REL):
        raise NapariSSLError(
            f"the labels' voxel size {np.round(np.linalg.norm(moved[:3, :3], axis=0), 4).tolist()} mm differs from the source's "
            f"{np.round(spacing, 4).tolist()} mm; export a mask drawn on this series"
        )
    shift = float(np.linalg.norm(moved[:3, 3] - target[:3, 3]))
    if shift > GRID_SHIFT_VOXELS * float(spacing.min()) + 1e-4:
        raise NapariSSLError(
            f"the labels' grid is shifted {shift:.3g} mm from the source series; export a mask drawn on this series"
        )
    return out


def normalize_names(names: Mapping[int, str] | Sequence[str] | str | None, values: Sequence[int]) -> dict[int, str]:
    """``{label value: name}`` for every value in `values`; an error names any label left unnamed.

    A sequence (or a comma-separated string) names labels 1, 2, 3, ... in order.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    if names is None:
        mapping: dict[int, str] = {}
    elif isinstance(names, Mapping):
        mapping = {int(k): str(v).strip() for k, v in names.items()}
    else:
        mapping = {i + 1: str(n).strip() for i, n in enumerate(names)}
    missing = [v for v in values if not mapping.get(v)]
    if missing:
        example = ",".join(mapping.get(v) or f"name{v}" for v in range(1, max(values) + 1))
        raise NapariSSLError(
            f"label{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} ha{'ve' if len(missing) > 1 else 's'} no name; "
            f"give one name per label value 1..{max(values)}, e.g. --names \"{example}\""
        )
    return {v: mapping[v] for v in values}
