"""One record per 2-D frame: classic single-frame files give one, Enhanced multi-frame objects one per frame.

Enhanced CT/MR keep per-frame geometry and rescale in functional groups: each attribute is
looked up in the frame's Per-frame Functional Groups item first, then in the Shared
Functional Groups, then in the top-level data set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .discovery import Header, is_enhanced
from .pydicom_fast import value


@dataclass
class Frame:
    header: Header
    index: int                          # 0-based frame number inside the file
    position: Optional[np.ndarray]      # ImagePositionPatient (LPS mm) or None
    orientation: Optional[np.ndarray]   # ImageOrientationPatient (6,) or None
    pixel_spacing: tuple[float, float]  # (row spacing = along y, column spacing = along x)
    rows: int
    cols: int
    slope: float = 1.0
    intercept: float = 0.0
    thickness: Optional[float] = None
    spacing_between: Optional[float] = None
    # Values that tell apart frames at the same position (echoes, time points, stacks...).
    split_keys: dict[str, Any] = field(default_factory=dict)
    order_hint: float = 0.0             # InstanceNumber / frame number: used only without positions
    spacing_missing: bool = False


def _floats(v: Any, n: int) -> Optional[np.ndarray]:
    if v is None:
        return None
    try:
        a = np.asarray([float(x) for x in v], dtype=float)
    except (TypeError, ValueError):
        return None
    return a if a.size == n and np.all(np.isfinite(a)) else None


def _float(v: Any, default: Optional[float] = None) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if np.isfinite(f) else default


def _first(seq: Any) -> Any:
    try:
        return seq[0] if seq is not None and len(seq) else None
    except (TypeError, IndexError):
        return None


def _group_item(groups: list[Any], seq_name: str) -> Any:
    """The first item of `seq_name` found in the functional-group items, in order."""
    for g in groups:
        if g is not None and seq_name in g:
            item = _first(g.get(seq_name))
            if item is not None:
                return item
    return None


def _pixel_spacing(ps: Optional[np.ndarray]) -> tuple[tuple[float, float], bool]:
    if ps is None or np.any(ps <= 0):
        return (1.0, 1.0), True
    return (float(ps[0]), float(ps[1])), False


def classic_frames(h: Header) -> list[Frame]:
    ds = h.ds
    ps = _floats(value(ds, "PixelSpacing") or value(ds, "ImagerPixelSpacing"), 2)
    spacing, missing = _pixel_spacing(ps)
    nframes = int(_float(value(ds, "NumberOfFrames"), 1) or 1)
    base = dict(
        position=_floats(value(ds, "ImagePositionPatient"), 3),
        orientation=_floats(value(ds, "ImageOrientationPatient"), 6),
        pixel_spacing=spacing,
        rows=int(value(ds, "Rows", 0)),
        cols=int(value(ds, "Columns", 0)),
        slope=_float(value(ds, "RescaleSlope"), 1.0) or 1.0,
        intercept=_float(value(ds, "RescaleIntercept"), 0.0) or 0.0,
        thickness=_float(value(ds, "SliceThickness")),
        spacing_between=_float(value(ds, "SpacingBetweenSlices")),
        spacing_missing=missing,
    )
    keys = {
        "echo": str(value(ds, "EchoNumbers", "")),
        "temporal": str(value(ds, "TemporalPositionIdentifier", "")),
        "trigger": str(value(ds, "TriggerTime", "")),
        "acquisition": str(value(ds, "AcquisitionNumber", "")),
        "diffusion_b": str(value(ds, "DiffusionBValue", "")),
    }
    inst = _float(value(ds, "InstanceNumber"), 0.0) or 0.0
    if nframes > 1:
        # A multi-frame object without functional groups (e.g. NM, US, secondary capture):
        # frames follow the slice vector or, without it, are stacked 1 mm apart.
        out = []
        for i in range(nframes):
            f = Frame(header=h, index=i, split_keys=dict(keys), order_hint=inst * 1e6 + i, **base)
            f.position = None
            out.append(f)
        return out
    return [Frame(header=h, index=0, split_keys=keys, order_hint=inst, **base)]


def enhanced_frames(h: Header) -> list[Frame]:
    ds = h.ds
    nframes = int(_float(ds.get("NumberOfFrames"), 1) or 1)
    shared = _first(ds.get("SharedFunctionalGroupsSequence"))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    frames = []
    for i in range(nframes):
        pf = per_frame[i] if i < len(per_frame) else None
        groups = [pf, shared]
        pos_item = _group_item(groups, "PlanePositionSequence")
        ori_item = _group_item(groups, "PlaneOrientationSequence")
        meas = _group_item(groups, "PixelMeasuresSequence")
        pvt = _group_item(groups, "PixelValueTransformationSequence")
        content = _group_item(groups, "FrameContentSequence")
        echo = _group_item(groups, "MREchoSequence")
        diff = _group_item(groups, "MRDiffusionSequence")
        position = _floats(pos_item.get("ImagePositionPatient") if pos_item is not None else ds.get("ImagePositionPatient"), 3)
        orientation = _floats(ori_item.get("ImageOrientationPatient") if ori_item is not None else ds.get("ImageOrientationPatient"), 6)
        ps = _floats(meas.get("PixelSpacing") if meas is not None else ds.get("PixelSpacing"), 2)
        spacing, missing = _pixel_spacing(ps)
        src = pvt if pvt is not None else ds
        keys = {
            "stack": str(content.get("StackID", "")) if content is not None else "",
            "temporal": str(content.get("TemporalPositionIndex", "")) if content is not None else "",
            "echo": str(echo.get("EffectiveEchoTime", "")) if echo is not None else "",
            "diffusion_b": str(diff.get("DiffusionBValue", "")) if diff is not None else "",
        }
        frames.append(Frame(
            header=h, index=i, position=position, orientation=orientation, pixel_spacing=spacing,
            rows=rows, cols=cols,
            slope=_float(src.get("RescaleSlope"), 1.0) or 1.0,
            intercept=_float(src.get("RescaleIntercept"), 0.0) or 0.0,
            thickness=_float(meas.get("SliceThickness")) if meas is not None else _float(ds.get("SliceThickness")),
            spacing_between=_float(meas.get("SpacingBetweenSlices")) if meas is not None else _float(ds.get("SpacingBetweenSlices")),
            split_keys=keys, order_hint=float(i), spacing_missing=missing,
        ))
    return frames


def frames_of(h: Header) -> list[Frame]:
    return enhanced_frames(h) if is_enhanced(h.ds) else classic_frames(h)
