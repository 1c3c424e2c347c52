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
    new_study: bool = False,
) -> list[Path]:
    """Write an oblique series into `out` from the real slices `sources` (cycled if fewer than `n_slices`).

    ``variant``: "rounding" (one geometry, per-file rounding noise: must read as one series),
    "two_orientations" (the last third rotated 5 degrees more), "gantry_tilt" (positions move
    0.4 mm in-plane per slice), "missing_slice" (the middle slice left out).
    ``new_study`` gives the series a study of its own (else it stays in the source files' study).
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
    series, frame_of_ref, study = generate_uid(), generate_uid(), generate_uid()
    written = []
    for i in range(n):
        ds = pydicom.dcmread(sources[i % len(sources)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series, frame_of_ref
        if new_study:
            ds.StudyInstanceUID = study
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


def cropped_seg(source_files: Sequence[Path], mask: np.ndarray, out: Path, pad: int = 2) -> tuple[int, int, int]:
    """A BINARY DICOM-SEG of `mask` (native slice order of the sorted `source_files`, shape
    (n, rows, cols)) whose frames are cropped to the mask's bounding box plus `pad` pixels, as
    3D Slicer and dcmqi write them (smaller Rows/Columns than the images). Written with
    highdicom directly (not the code under test). Returns the crop's (first slice, row, column).
    """
    import warnings

    import highdicom as hd
    from pydicom.sr.codedict import codes

    warnings.filterwarnings("ignore", message=".*person name.*")
    dss = [pydicom.dcmread(f) for f in source_files]
    dss.sort(key=lambda d: float(np.dot(np.asarray(d.ImagePositionPatient, float),
                                        np.cross(np.asarray(d.ImageOrientationPatient[:3], float),
                                                 np.asarray(d.ImageOrientationPatient[3:], float)))))
    zs, ys, xs = np.nonzero(mask)
    z0, z1 = zs.min(), zs.max() + 1
    r0, r1 = max(ys.min() - pad, 0), min(ys.max() + 1 + pad, mask.shape[1])
    c0, c1 = max(xs.min() - pad, 0), min(xs.max() + 1 + pad, mask.shape[2])
    iop = np.asarray(dss[0].ImageOrientationPatient, float)
    row_dir, col_dir = iop[:3], iop[3:]
    ps = [float(v) for v in dss[0].PixelSpacing]
    positions = []
    for z in range(z0, z1):
        ipp = np.asarray(dss[z].ImagePositionPatient, float) + r0 * ps[0] * col_dir + c0 * ps[1] * row_dir
        positions.append(hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, [float(v) for v in ipp]))
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Liver",
        segmented_property_category=codes.SCT.Organ, segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=dss[z0:z1],
        pixel_array=mask[z0:z1, r0:r1, c0:c1].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc],
        series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="0", device_serial_number="0",
        plane_positions=positions,
        plane_orientation=hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT, [float(v) for v in iop]),
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=ps, slice_thickness=float(dss[0].SliceThickness)),
        omit_empty_frames=False,
        specific_character_set="ISO_IR 100",   # the real files carry an empty value highdicom refuses
    )
    seg.save_as(out)
    return int(z0), int(r0), int(c0)
