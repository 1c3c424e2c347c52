"""Series derived from real CT files with the header noise real archives show.

Pixels are the real CT slices (copied, never modified in place); the geometry is made oblique
(a 3.43 degree tilt about the patient's left-right axis, as an oblique MR acquisition has) and
written the way real scanners, PACS and anonymisers write it: the same direction cosine with a
different last digit in different files (``-0.059771`` in most, ``-0.0597709`` in others),
``1`` beside ``1.000000``, positions with 6, 4 or 2 decimals. Variants break the series on
purpose: a second orientation, a gantry tilt (positions drifting in-plane), a missing slice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.uid import generate_uid

SIN = 0.05977094   # written as -0.059771 with 6 decimals, -0.0597709 with 7
COS = float(np.sqrt(1 - SIN ** 2))   # 0.99821212...

# per-file spellings of the same orientation (all within 1e-6 of each other)
IOP_SPELLINGS = [
    ["1", "0", "0", "0", f"{COS:.6f}", f"{-SIN:.6f}"],
    ["1.000000", "0.000000", "0.000000", "0.000000", f"{COS:.7f}", f"{-SIN:.7f}"],
    ["0.99999999", "-1e-08", "0", "0", f"{COS:.8f}", f"{-SIN:.7f}"],
]
POSITION_FORMATS = ["{:.6f}", "{:.4f}", "{:.2f}"]


def _ds_strings(values: Sequence[float], fmt: str) -> list[str]:
    out = []
    for v in values:
        s = fmt.format(v)
        out.append("0" if float(s) == 0 else s)   # no "-0.00"
    return out


def oblique_series(
    sources: Sequence[Path],
    out: Path,
    n_slices: Optional[int] = None,
    step: float = 2.5,
    variant: str = "rounding",
    seed: int = 0,
) -> list[Path]:
    """Write an oblique series into `out` from the real slices `sources` (cycled if fewer than `n_slices`).

    ``variant``: "rounding" (one geometry, per-file rounding noise: must read as one series),
    "two_orientations" (the last third rotated 5 degrees more), "gantry_tilt" (positions move
    0.4 mm in-plane per slice), "missing_slice" (the middle slice left out).
    Returns the written files in slice order (before any is removed).
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    n = n_slices or len(sources)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, COS, -SIN])
    normal = np.cross(row, col)
    first = pydicom.dcmread(sources[0], stop_before_pixels=True)
    origin = np.array([float(v) for v in first.ImagePositionPatient])
    series, frame_of_ref = generate_uid(), generate_uid()
    written = []
    for i in range(n):
        ds = pydicom.dcmread(sources[i % len(sources)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series, frame_of_ref
        ds.InstanceNumber = i + 1
        ds.SliceThickness = f"{step:g}"
        iop = list(IOP_SPELLINGS[int(rng.integers(len(IOP_SPELLINGS)))])
        pos = origin + i * step * normal
        if variant == "two_orientations" and i >= 2 * n // 3:
            a = np.radians(5.0)
            col2 = np.array([0.0, np.cos(a) * COS + np.sin(a) * SIN, -(np.cos(a) * SIN - np.sin(a) * COS)])
            col2 /= np.linalg.norm(col2)
            iop = _ds_strings(list(row) + list(col2), "{:.6f}")
        if variant == "gantry_tilt":
            pos = pos + i * 0.4 * col
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = _ds_strings(pos, POSITION_FORMATS[int(rng.integers(len(POSITION_FORMATS)))])
        ds.SliceLocation = f"{float(pos @ normal):.3f}"
        path = out / f"IM{(i * 7919) % 100003:06d}.dcm"   # file names not in slice order
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    if variant == "missing_slice":
        written[n // 2].unlink()
    return written
