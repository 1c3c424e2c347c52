"""Label maps given for training or prediction, on their image's grid, with class names where the file has them.

Accepted: an array on the image's grid, a NIfTI/NRRD/MHA label map, a DICOM-SEG or an RTSTRUCT of the image's series.
(io.export.labels_with_affine is the exporter's reader: labels in the source series' native order, with their affine.)
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from ..errors import NapariSSLError
from ..io import load_image
from ..io.volume import Volume
from .sparse_labels import as_label_array, check_same_grid


def load_labels(item: Any, image: Volume, name: str = "labels") -> np.ndarray:
    """Integer label map on `image`'s grid; shape and geometry must match the image."""
    return load_labels_and_names(item, image, name)[0]


def load_labels_and_names(item: Any, image: Volume, name: str = "labels", rois: Optional[list] = None) -> tuple[np.ndarray, dict[int, str]]:
    """(label map on `image`'s grid, {label value: name}). Accepts an array, a NIfTI/NRRD/MHA label map
    (no names), a DICOM-SEG (segment labels as names; placed on the image's grid, which it must share:
    same voxel size and orientation, whole-voxel offset, e.g. a SEG that stores only the labelled slices)
    or an RTSTRUCT of the image's series (ROI names as names; `rois` picks ROIs and their order)."""
    if isinstance(item, np.ndarray):
        if item.shape != image.shape:
            raise NapariSSLError(f"{name} shape {list(item.shape)} does not match the image shape {list(image.shape)}; "
                                 "give the label map drawn on this image")
        return as_label_array(item), {}
    path = os.fspath(item) if not isinstance(item, Volume) else None
    if path is not None and os.path.isfile(path):
        from ..io.seg.read import is_segmentation_file

        if is_segmentation_file(path):
            return _labels_from_seg(path, image, name)
        from ..io.dicom.rtstruct import is_rtstruct_file, read_rtstruct_labels

        if is_rtstruct_file(path):
            try:
                vol, names, _colors = read_rtstruct_labels(path, source=image, rois=rois, canonical=False)
            except NapariSSLError as exc:
                raise NapariSSLError(f"{name}: {exc}") from None
            return as_label_array(vol.array), names
    lab = load_image(item)
    check_same_grid(image.shape, image.affine, lab.shape, lab.affine, name=name)
    return as_label_array(lab.array), {}


def _labels_from_seg(path: str, image: Volume, name: str) -> tuple[np.ndarray, dict[int, str]]:
    from ..io.seg.on_source import read_single_on_source

    try:   # on the image's full grid (cropped SEGs too); another series, overlaps, another grid: one line
        arr, names = read_single_on_source(path, image)
    except NapariSSLError as exc:
        raise NapariSSLError(f"{name}: {exc}") from None
    return as_label_array(arr), {int(k): str(v) for k, v in names.items()}
