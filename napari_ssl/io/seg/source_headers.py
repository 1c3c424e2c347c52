"""The source series' headers made acceptable to highdicom, and where the SEG's frames go.

Real files are messy: Type 2 attributes missing, a PatientSex outside M/F/O, the same orientation spelled with
different last digits in different files (or per frame in an Enhanced object). highdicom refuses these; here they
are fixed in copies (the caller's datasets, and the files, are never changed), within the tolerances of
:mod:`napari_ssl.io.geometry_tolerance`.
"""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np

from ...errors import NapariSSLError
from ..dicom.pydicom_fast import header_copy, value
from ..geometry_tolerance import ORIENTATION_TOL, POSITION_TOL_MM, POSITION_TOL_REL, consensus_orientation
from ..label_grid import native_affine
from ..volume import Volume

# Type 2 attributes highdicom copies from the first source header; real files sometimes lack them.
_TYPE2_DEFAULTS = {
    "PatientName": "",
    "PatientID": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "AccessionNumber": "",
    "StudyID": "",
    "StudyDate": "",
    "StudyTime": "",
    "ReferringPhysicianName": "",
}



def require_placeable(source: Volume) -> None:
    """One-line error when a DICOM-SEG cannot be placed on `source` (no plane geometry, no Frame of Reference)."""
    if not has_plane_geometry(source.source_datasets):
        raise NapariSSLError(
            "the source series' headers give no slice position/orientation, so a DICOM-SEG cannot be placed on it; export NIfTI instead"
        )
    if not source.source_datasets[0].get("FrameOfReferenceUID"):
        raise NapariSSLError("the source series has no Frame of Reference UID, so a DICOM-SEG cannot reference it; export NIfTI instead")


def clean_header(ds):
    """A copy of a source header that highdicom and validators accept (messy real files)."""
    ds = copy.deepcopy(ds)
    for kw, val in _TYPE2_DEFAULTS.items():
        if kw not in ds:
            setattr(ds, kw, val)
    if "PatientSex" in ds and str(ds.PatientSex) not in ("M", "F", "O", ""):
        ds.PatientSex = ""
    return ds


def character_set(ds) -> Optional[str | list]:
    cs = ds.get("SpecificCharacterSet")
    if cs is None:
        return None
    if isinstance(cs, str):
        return cs.strip() or None
    vals = [str(v).strip() for v in cs]
    vals = [v for v in vals if v] if any(vals) else []
    return (vals if len(vals) > 1 else vals[0]) if vals else None


def has_plane_geometry(dss) -> bool:
    """Whether the source headers place every frame in space (position and orientation)."""
    if len(dss) == 1 and "PerFrameFunctionalGroupsSequence" in dss[0]:
        ds = dss[0]
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else {}
        for item in ds.PerFrameFunctionalGroupsSequence:
            if "PlanePositionSequence" not in item and "PlanePositionSequence" not in shared:
                return False
            if "PlaneOrientationSequence" not in item and "PlaneOrientationSequence" not in shared:
                return False
        return True
    return all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for ds in dss)


def native_sources(source: Volume, n_slices: int) -> tuple[list, Optional[list]]:
    """Source headers for highdicom, and plane positions when frames do not map 1:1 onto slices."""
    import highdicom as hd

    dss = list(source.source_datasets)
    native = native_affine(source)
    if len(dss) == 1 and int(dss[0].get("NumberOfFrames", 1) or 1) > 1:
        frames = list(source.source_frames) or list(range(1, n_slices + 1))
        if frames == list(range(1, int(dss[0].NumberOfFrames) + 1)) and len(frames) == n_slices:
            return dss, None
    elif len(dss) == n_slices and all(value(ds, "ImagePositionPatient") is not None for ds in dss):
        # One single-frame source per slice, in array order: each mask slice was drawn on that
        # image, so its frame goes where that image is -- also when the series has a gap or its
        # positions drift (gantry tilt); see off_grid_note for the warning.
        return dss, None
    # General case (Enhanced frames in another order, several frames per position...):
    # give highdicom the positions; it matches them to source frames itself.
    positions = [
        hd.PlanePositionSequence(
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            image_position=[float(v) for v in native[:3, :3] @ [i, 0, 0] + native[:3, 3]],
        )
        for i in range(n_slices)
    ]
    return dss, positions


def shared_orientation(dss: list) -> list:
    """The single-frame source headers with ONE ImageOrientationPatient, as highdicom requires.

    Real series spell the same orientation with different last digits in different files
    (-0.059771 / -0.0597709). Within ORIENTATION_TOL (see napari_ssl.io.geometry_tolerance) the value most
    files carry -- the one the series' affine was built from -- is given to every header, in
    copies: the caller's datasets (and the files) are never changed. Beyond it: one-line error.
    """
    if len(dss) == 1 and "PerFrameFunctionalGroupsSequence" in dss[0]:
        return [_enhanced_shared_orientation(dss[0])]
    if len(dss) < 2 or any(int(value(ds, "NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds for ds in dss):
        return dss
    iops = [value(ds, "ImageOrientationPatient") for ds in dss]
    rep, dev = consensus_orientation(iops)
    if dev == 0.0:
        return dss
    if dev > ORIENTATION_TOL:
        raise NapariSSLError(
            f"the source series mixes slice orientations (direction cosines differ by up to {dev:.2g}, more than the "
            f"{ORIENTATION_TOL:g} of rounding noise); a DICOM-SEG needs one orientation: give one stack of the series"
        )
    target = [float(v) for v in iops[rep]]
    spelled = dss[rep].ImageOrientationPatient
    out = []
    for ds, iop in zip(dss, iops):
        if iop is not None and [float(v) for v in iop] == target:
            out.append(ds)
        else:
            c = header_copy(ds)
            c.ImageOrientationPatient = copy.deepcopy(spelled)
            out.append(c)
    return out


def off_grid_note(source: Volume) -> Optional[str]:
    """A warning when the single-frame sources do not sit on the regular grid of the volume's
    affine (missing slice, uneven steps, gantry tilt): the SEG's frames then follow the images'
    own positions, which a reader rebuilding a regular volume will show with the same gap/shear."""
    dss = source.source_datasets
    if len(dss) != source.array.shape[0] or len(dss) < 2:
        return None
    native = native_affine(source)
    step = float(np.linalg.norm(native[:3, 0]))
    tol = max(POSITION_TOL_REL * step, POSITION_TOL_MM)
    worst = 0.0
    for i, ds in enumerate(dss):
        ipp = value(ds, "ImagePositionPatient")
        if ipp is None:
            return None
        worst = max(worst, float(np.linalg.norm(np.asarray(ipp, float) - (native[:3, 0] * i + native[:3, 3]))))
    if worst <= tol:
        return None
    return (f"the source images are up to {worst:.3g} mm off a regular grid (missing slice, uneven spacing or gantry tilt): "
            f"each SEG frame is placed on its own source image")


def _enhanced_shared_orientation(ds):
    """An Enhanced (multi-frame) source whose orientation is given per frame (as some scanners write
    it, each frame's value spelled its own way): a copy with the orientation most frames carry moved to
    the shared functional groups, where highdicom looks for it. Beyond ORIENTATION_TOL: one-line error."""
    from pydicom.dataset import Dataset

    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence) else None
    if shared is not None and "PlaneOrientationSequence" in shared:
        return ds
    per = ds.PerFrameFunctionalGroupsSequence
    items = [it.PlaneOrientationSequence[0] if "PlaneOrientationSequence" in it and len(it.PlaneOrientationSequence) else None for it in per]
    if not items or any(i is None or "ImageOrientationPatient" not in i for i in items):
        return ds   # no orientation to share: highdicom's own error (one line) follows
    rep, dev = consensus_orientation([i.ImageOrientationPatient for i in items])
    if dev > ORIENTATION_TOL:
        raise NapariSSLError(
            f"the source's frames mix slice orientations (direction cosines differ by up to {dev:.2g}, more than the "
            f"{ORIENTATION_TOL:g} of rounding noise); a DICOM-SEG needs one orientation"
        )
    out = header_copy(ds)
    new_shared = header_copy(shared) if shared is not None else Dataset()
    new_shared.PlaneOrientationSequence = [copy.deepcopy(items[rep])]
    out.SharedFunctionalGroupsSequence = [new_shared]
    frames = []
    for it in per:
        c = header_copy(it)
        del c.PlaneOrientationSequence
        frames.append(c)
    out.PerFrameFunctionalGroupsSequence = frames
    return out


def plane_geometry(native: np.ndarray):
    import highdicom as hd

    row_step = native[:3, 1]  # down the image (along a column)
    col_step = native[:3, 2]  # to the right (along a row)
    orientation = [float(v) for v in np.concatenate([col_step / np.linalg.norm(col_step), row_step / np.linalg.norm(row_step)])]
    spacing = [float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))]
    thickness = float(np.linalg.norm(native[:3, 0]))
    return (
        hd.PlaneOrientationSequence(coordinate_system=hd.CoordinateSystemNames.PATIENT, image_orientation=orientation),
        hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=thickness, spacing_between_slices=thickness),
    )
