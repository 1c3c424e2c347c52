"""A DICOM-SEG placed on its source series' full grid, and finding that series beside the SEG.

A SEG cropped to the structure (fewer rows/columns or slices than the images, as 3D Slicer and dcmqi write
them) opens with the source's shape, voxel-exact: each frame on the single-frame image it references when
it can (exact also on a series with a gap or a gantry tilt), else by geometry (:func:`place_on_grid`).
"""
from __future__ import annotations

import os
import warnings as _warnings
from typing import Optional

import numpy as np

from ...errors import NapariSSLError
from ..dicom.pydicom_fast import value
from ..geometry_tolerance import GRID_SHIFT_VOXELS, POSITION_TOL_MM, POSITION_TOL_REL, VOXEL_SIZE_REL, same_orientation
from ..label_grid import native_affine
from ..orientation import axis_mapping, reorient_array, reoriented_affine
from ..volume import Volume
from .read import _label_volumes, _open_seg, _segment_masks


def _item(seq_owner, keyword: str):
    seq = seq_owner.get(keyword) if seq_owner is not None else None
    return seq[0] if seq else None


def _masks_by_reference(seg, source: Volume) -> Optional[tuple[np.ndarray, list[int]]]:
    """Boolean masks (z, y, x, n) on `source`'s native grid, each frame put on the source image it
    references (SourceImageSequence of its derivation), shifted in-plane by whole pixels (cropped
    frames). Exact whatever the series' slice positions (gaps, uneven steps, tilt). None when this
    does not apply: a multi-frame source, a frame without a reference into `source`, or a frame
    whose plane is not its image's plane (then the caller places the SEG by geometry)."""
    dss = source.source_datasets
    native = native_affine(source)
    shape = tuple(int(source.array.shape[i]) for i in axis_mapping(source.affine, native)[0])
    if len(dss) < 1 or len(dss) != shape[0] or any(int(value(ds, "NumberOfFrames", 1) or 1) > 1 for ds in dss):
        return None
    if "PerFrameFunctionalGroupsSequence" not in seg:
        return None
    seg_type = str(seg.SegmentationType)
    numbers = [int(n) for n in seg.segment_numbers if int(n) != 0]
    if not numbers:
        raise NapariSSLError("the SEG describes no segments")
    placements = _frame_placements(seg, dss, shape, native)
    if placements is None:
        return None
    return _paint_frames(seg, seg_type, placements, numbers, shape)


def _frame_placements(seg, dss: list, shape: tuple, native: np.ndarray) -> Optional[list[tuple[int, int, int, int, Optional[int]]]]:
    """(frame index, slice, row offset, column offset, segment number) of every frame, or None when a
    frame does not lie on the source image it references."""
    index = {str(value(ds, "SOPInstanceUID", "")): i for i, ds in enumerate(dss)}
    shared = _item(seg, "SharedFunctionalGroupsSequence")
    ori = _item(shared, "PlaneOrientationSequence")
    measures = _item(shared, "PixelMeasuresSequence")
    shared_segment = _item(shared, "SegmentIdentificationSequence")
    rows, cols = int(seg.Rows), int(seg.Columns)
    normal_tol = max(POSITION_TOL_MM, POSITION_TOL_REL * float(np.linalg.norm(native[:3, 0])))
    placements = []
    for k, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        src = _item(_item(frame, "DerivationImageSequence"), "SourceImageSequence")
        uid = str(src.get("ReferencedSOPInstanceUID", "")) if src is not None else ""
        z = index.get(uid)
        pos = _item(frame, "PlanePositionSequence")
        f_ori = _item(frame, "PlaneOrientationSequence") or ori
        f_meas = _item(frame, "PixelMeasuresSequence") or measures
        if z is None or pos is None or f_ori is None or f_meas is None:
            return None
        offset = _in_plane_offset(dss[z], pos, f_ori, f_meas, normal_tol)
        if offset is None:
            return None
        r0, c0 = offset
        if r0 < 0 or c0 < 0 or r0 + rows > shape[1] or c0 + cols > shape[2]:
            raise NapariSSLError("the SEG's frames reach outside the images they reference")
        seg_item = _item(frame, "SegmentIdentificationSequence") or shared_segment
        number = int(seg_item.ReferencedSegmentNumber) if seg_item is not None else None
        placements.append((k, z, r0, c0, number))
    return placements


def _in_plane_offset(ds, pos, f_ori, f_meas, normal_tol: float) -> Optional[tuple[int, int]]:
    """(rows, columns) a SEG frame at `pos` is shifted from the image `ds` by, when it lies on that image's
    plane, with its orientation and pixel spacing, by whole pixels; else None."""
    iop, ipp, ps = (value(ds, kw) for kw in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"))
    if iop is None or ipp is None or ps is None or not same_orientation(f_ori.ImageOrientationPatient, iop):
        return None
    seg_ps = [float(v) for v in f_meas.PixelSpacing]
    if not np.allclose(seg_ps, [float(v) for v in ps], rtol=VOXEL_SIZE_REL):
        return None
    iop = np.asarray(iop, float)
    d = np.asarray([float(v) for v in pos.ImagePositionPatient]) - np.asarray(ipp, float)
    normal = np.cross(iop[:3], iop[3:])
    if abs(float(d @ normal)) > normal_tol:
        return None   # not on its image's plane
    r = float(d @ iop[3:]) / float(ps[0])
    c = float(d @ iop[:3]) / float(ps[1])
    r0, c0 = int(round(r)), int(round(c))
    if abs(r - r0) > GRID_SHIFT_VOXELS or abs(c - c0) > GRID_SHIFT_VOXELS:
        return None
    return r0, c0


def _paint_frames(seg, seg_type: str, placements: list, numbers: list[int], shape: tuple) -> Optional[tuple[np.ndarray, list[int]]]:
    """The frames painted where :func:`_frame_placements` put them: masks (z, y, x, n) and their segment numbers."""
    rows, cols = int(seg.Rows), int(seg.Columns)
    masks = np.zeros((len(numbers),) + shape, dtype=bool)   # segment first: each segment's mask contiguous
    slot = {n: i for i, n in enumerate(numbers)}
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        frames = seg.get_stored_frames()
    if frames.ndim == 2:
        frames = frames[None]
    top = float(seg.get("MaximumFractionalValue", 1) or 1)
    for k, z, r0, c0, number in placements:
        frame = frames[k]
        window = (z, slice(r0, r0 + rows), slice(c0, c0 + cols))
        if seg_type == "LABELMAP":
            for n, i in slot.items():
                masks[(i,) + window] |= frame == n
        elif number is not None and number in slot:
            on = frame >= 0.5 * top if seg_type == "FRACTIONAL" else frame > 0
            masks[(slot[number],) + window] |= on
        else:
            return None
    return np.moveaxis(masks, 0, -1), numbers   # (z, y, x, n) as _segment_masks gives, a view


# Where to look for a SEG's source series when only the SEG file is opened: its folder, the
# folders inside it, and the folders beside it (3D Slicer / dcmqi layouts: seg/ next to image/).
MAX_FILES_SEARCHED = 5000


def referenced_series_uid(path: str | os.PathLike) -> Optional[str]:
    """SeriesInstanceUID of the series a SEG (or any DICOM object) references, from its header."""
    import pydicom

    try:
        ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True, specific_tags=["ReferencedSeriesSequence"])
        return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except Exception:
        return None


def _nearby_files(path: str) -> list[str]:
    folder = os.path.dirname(os.path.abspath(path))
    parent = os.path.dirname(folder)
    dirs = [folder]
    for base in (folder, parent):
        try:
            dirs += sorted(os.path.join(base, d) for d in os.listdir(base)
                           if not d.startswith(".") and os.path.isdir(os.path.join(base, d)))
        except OSError:
            pass
    files: list[str] = []
    for d in dict.fromkeys(dirs):
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for n in names:
            p = os.path.join(d, n)
            if not n.startswith(".") and os.path.isfile(p) and p != os.path.abspath(path):
                files.append(p)
                if len(files) >= MAX_FILES_SEARCHED:
                    return files
    return files


def find_source_series(seg_path: str | os.PathLike) -> Optional[Volume]:
    """The series a SEG references, when its files lie in the SEG's folder, a folder inside it or
    a folder beside it (headers only are read for the search); None when not found."""
    from ..dicom.discovery import looks_like_dicom
    from ..dicom.series import load_dicom_series

    seg_path = os.fspath(seg_path)
    uid = referenced_series_uid(seg_path)
    if not uid:
        return None
    import pydicom

    matches = []
    for f in _nearby_files(seg_path):
        try:
            with open(f, "rb") as fp:
                if looks_like_dicom(fp.read(132)) is not True:
                    continue
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:
            continue
        if str(ds.get("SeriesInstanceUID", "")) == uid:
            matches.append(f)
    return load_dicom_series(matches, uid) if matches else None


def check_references(path: str | os.PathLike, source: Volume) -> None:
    """One-line error when the SEG at `path` references another DICOM series than `source`."""
    ref = referenced_series_uid(path)
    if ref and source.series_instance_uid and ref != source.series_instance_uid:
        raise NapariSSLError(
            f"{os.path.basename(os.fspath(path))} references another DICOM series than the source given "
            "(a mask made on a different series cannot be placed on this one)"
        )


def read_on_source(path: str | os.PathLike, source: Volume) -> list[tuple[Volume, dict[int, str]]]:
    """:func:`read_segmentation`, each label map placed on `source`'s full grid (``source.array``
    order): a SEG cropped to the structure (fewer rows/columns or slices than the images, as
    3D Slicer and dcmqi write them) opens with the source's shape, voxel-exact.

    When every frame references a single-frame image of `source`, it is put on that image
    (:func:`_masks_by_reference`; exact also when the series has a gap or a gantry tilt);
    otherwise by geometry (:func:`place_on_grid`). A SEG that references another series than
    `source` is an error (one line)."""
    path = os.fspath(path)
    check_references(path, source)
    seg = _open_seg(path)
    by_reference = _masks_by_reference(seg, source)
    if by_reference is not None:
        # each frame on the image it references: exact also on a series with a gap or a tilt
        native = native_affine(source)
        masks, numbers = by_reference
        groups = [(np.ascontiguousarray(reorient_array(vol.array, native, source.affine)), names, vol.warnings)
                  for vol, names in _label_volumes(seg, path, masks, numbers, native, canonical=False)]
    else:
        masks, numbers, affine = _segment_masks(seg)
        groups = [(place_on_grid(vol, source), names, vol.warnings)
                  for vol, names in _label_volumes(seg, path, masks, numbers, affine, canonical=False)]
    out = []
    for arr, names, warnings in groups:
        placed = source.with_array(arr, modality="SEG", units="")
        placed.warnings = list(warnings)
        out.append((placed, names))
    return out


def read_single_on_source(path: str | os.PathLike, source: Volume) -> tuple[np.ndarray, dict[int, str]]:
    """:func:`read_on_source` for callers that need ONE label map (export, fine-tuning labels)."""
    groups = read_on_source(path, source)
    if len(groups) > 1:
        raise NapariSSLError(f"{os.path.basename(os.fspath(path))} has overlapping segments, which one label map cannot hold")
    vol, names = groups[0]
    return vol.array, names


def place_on_grid(labels: Volume, reference: Volume) -> np.ndarray:
    """`labels` (read from a SEG, covering only its stored slices) pasted onto the array grid
    of `reference` (e.g. the source series): same shape as ``reference.array``, zeros elsewhere.

    Only axis reordering and whole-voxel shifts are allowed; anything else is a NapariSSLError.
    """
    try:
        perm, flips = axis_mapping(labels.affine, reference.affine)
    except ValueError:
        raise NapariSSLError("the SEG's grid is rotated relative to the reference series") from None
    arr = reorient_array(labels.array, labels.affine, reference.affine)
    moved = reoriented_affine(labels.affine, labels.array.shape, perm, flips)
    if not np.allclose(moved[:3, :3], reference.affine[:3, :3], rtol=VOXEL_SIZE_REL, atol=1e-3):
        raise NapariSSLError("the SEG's voxel size differs from the reference series")
    offset = np.linalg.solve(reference.affine[:3, :3], moved[:3, 3] - reference.affine[:3, 3])
    start = np.round(offset).astype(int)
    if np.any(np.abs(offset - start) > GRID_SHIFT_VOXELS):
        raise NapariSSLError("the SEG's grid is shifted by a fraction of a voxel from the reference series")
    out = np.zeros(reference.array.shape, dtype=arr.dtype)
    stop = start + np.array(arr.shape)
    if np.any(start < 0) or np.any(stop > np.array(out.shape)):
        raise NapariSSLError("the SEG covers slices outside the reference series")
    out[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = arr
    return out
