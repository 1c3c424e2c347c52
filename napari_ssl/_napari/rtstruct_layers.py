"""RTSTRUCT -> napari Labels layers on the referenced series (used by the reader).

The series is taken from the images opened in the same call, else from the viewer's open image layers,
else searched in the RTSTRUCT's folder tree (and then opened as an image layer too). ROI names become
segment names, ROI display colours the layer's colours. Overlapping ROIs are split into several
non-overlapping Labels layers (as for a DICOM-SEG), each with a warning.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..io.volume import Volume
from .layers import image_layer_data, labels_layer_data, open_image_volumes


def color_dict(colors: dict[int, tuple]) -> dict:
    """napari direct label colours: ROI colours (0-255 RGB), background transparent."""
    out: dict[Any, Any] = {None: np.array([0.6, 0.6, 0.6, 1.0]), 0: np.zeros(4)}
    for v, rgb in colors.items():
        out[int(v)] = np.array([*(c / 255.0 for c in rgb), 1.0])
    return out


def read_rtstruct_layers(rt_path: str, images: Sequence[Volume] = ()) -> list[tuple]:
    """Layer data for one RTSTRUCT: Labels layer(s), preceded by the image layer when the series was
    read from disk here (it was neither opened with it nor open in the viewer)."""
    from ..io.dicom import rtstruct as rt
    from ..io.orientation import canonicalize

    ss = rt.read_structure_set(rt_path)
    source = None
    for vol in list(images) + open_image_volumes():
        if ss.series_instance_uid and vol.series_instance_uid == ss.series_instance_uid:
            source = vol
            break
    layers: list[tuple] = []
    if source is None:
        source = canonicalize(rt.find_referenced_series(ss))
        layers.append(image_layer_data(source))
    rt.check_reference(ss, source)
    picked, planes, warnings = rt.roi_planes(ss, source)
    groups = rt.non_overlapping_groups(planes)
    base = os.path.basename(rt_path)
    for gi, members in enumerate(groups):
        labels = np.zeros(source.shape, dtype=np.uint8 if len(picked) < 256 else np.uint16)
        for i in members:
            rt.paint(labels, planes[i], i + 1)
        names = {i + 1: picked[i].name for i in members}
        colors = {i + 1: picked[i].color for i in members if picked[i].color is not None}
        vol = source.with_array(labels, units="")
        vol.warnings = list(warnings)
        if len(groups) > 1:
            vol.warnings.append(f"ROIs overlap: split into {len(groups)} non-overlapping label maps; this is group {gi + 1}")
        stem = os.path.splitext(base)[0]
        title = f"{stem}: {', '.join(names.values())}" if len(names) <= 3 else f"{stem} ({len(names)} ROIs)"
        data, kwargs, kind = labels_layer_data(vol, names, name=title)
        if colors:
            kwargs["colormap"] = color_dict(colors)
        meta = kwargs["metadata"]["napari_ssl"]
        meta["rtstruct_path"] = rt_path
        meta["roi_colors"] = {int(k): list(v) for k, v in colors.items()}
        layers.append((data, kwargs, kind))
    return layers
