"""RTSTRUCT (radiotherapy structure set) read as a label map on its referenced image series.

An RTSTRUCT holds, per ROI, closed planar polygons in patient coordinates (mm, LPS), one or more per
image plane. They are placed on the referenced series' voxel grid through the series' affine (patient
position -> continuous voxel index) and filled by :func:`.polygon_fill.fill_polygons` (a voxel belongs to the ROI
when its centre lies inside the polygon). Several polygons of one ROI on one plane combine by the
even-odd rule, so a contour inside another is a hole (what treatment planning systems write).

Why not rt-utils: it decodes every image's pixel data to find the geometry, needs OpenCV, rounds the
vertices to whole pixels before filling and assigns contours to slices only through ContourImageSequence
(optional in the standard); the affine of the already-read series gives all of that here, sub-pixel.

Overlapping ROIs cannot share one label map: without an explicit choice that is one clear error
naming the overlapping pairs; ``rois=["Liver", "Bladder"]`` picks ROIs and their order (label values
1, 2, ... in that order; where two overlap the later one wins). The viewer instead splits overlapping
ROIs into several non-overlapping Labels layers, as it does for a DICOM-SEG.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ...errors import NapariSSLError
from ..volume import Volume
from .polygon_fill import fill_polygons

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
# a contour farther than this (in voxels along the plane normal) from the nearest slice is not on the grid
PLANE_TOLERANCE = 0.25


@dataclass
class ROI:
    number: int
    name: str
    color: Optional[tuple[int, int, int]]
    contours: list[np.ndarray] = field(default_factory=list)  # (N, 3) LPS mm, CLOSED_PLANAR only
    skipped: int = 0  # POINT / OPEN_PLANAR / fewer than 3 points: not areas


@dataclass
class StructureSet:
    path: str
    rois: list[ROI]
    series_instance_uid: Optional[str]
    frame_of_reference_uid: Optional[str]
    study_instance_uid: Optional[str]


def is_rtstruct_file(path: str | os.PathLike) -> bool:
    """True if `path` is a DICOM file of the RT Structure Set SOP class (header only)."""
    import pydicom

    try:
        ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:
        return False
    return str(ds.get("SOPClassUID", "")) == RTSTRUCT_SOP_CLASS or str(ds.get("Modality", "")) == "RTSTRUCT"


def read_structure_set(path: str | os.PathLike) -> StructureSet:
    """ROIs (names, colours, polygons) and the referenced series of an RTSTRUCT file."""
    import pydicom

    path = os.fspath(path)
    base = os.path.basename(path)
    if not os.path.isfile(path):
        raise NapariSSLError(f"no such file: {path}")
    try:
        ds = pydicom.dcmread(path)
        rois_seq = ds.StructureSetROISequence
        contours_seq = ds.get("ROIContourSequence") or []
    except Exception as exc:  # truncated / not DICOM / no structure set
        raise NapariSSLError(f"{base} is not a readable RTSTRUCT ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if str(ds.get("Modality", "")) != "RTSTRUCT" and str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS:
        raise NapariSSLError(f"{base} is not an RTSTRUCT (Modality {ds.get('Modality', '?')})")
    by_number: dict[int, ROI] = {}
    for item in rois_seq:
        n = int(item.ROINumber)
        by_number[n] = ROI(number=n, name=str(item.get("ROIName", "") or f"ROI {n}").strip(), color=None)
    try:
        for rc in contours_seq:
            roi = by_number.get(int(rc.ReferencedROINumber))
            if roi is None:
                continue
            col = rc.get("ROIDisplayColor")
            if col is not None and len(col) == 3:
                roi.color = tuple(int(c) for c in col)  # type: ignore[assignment]
            for c in rc.get("ContourSequence") or []:
                if str(c.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                    roi.skipped += 1
                    continue
                pts = _contour_points(c)
                if pts.size % 3 or pts.size == 0:
                    raise ValueError(f"ROI {roi.name!r} has a contour with {pts.size} coordinates")
                if pts.size < 9:  # one or two points: no area (automatic tools write these)
                    roi.skipped += 1
                    continue
                roi.contours.append(pts.reshape(-1, 3))
    except Exception as exc:
        raise NapariSSLError(f"{base}: corrupt contour data ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    series_uid = for_uid = study_uid = None
    for fr in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for_uid = for_uid or (str(fr.FrameOfReferenceUID) if fr.get("FrameOfReferenceUID") else None)
        for st in fr.get("RTReferencedStudySequence") or []:
            for se in st.get("RTReferencedSeriesSequence") or []:
                series_uid = series_uid or (str(se.SeriesInstanceUID) if se.get("SeriesInstanceUID") else None)
    study_uid = str(ds.get("StudyInstanceUID", "")) or None
    return StructureSet(path=path, rois=sorted(by_number.values(), key=lambda r: r.number),
                        series_instance_uid=series_uid, frame_of_reference_uid=for_uid, study_instance_uid=study_uid)


def _contour_points(item) -> np.ndarray:
    """ContourData as floats, parsed from the raw decimal strings (pydicom's DS objects take ~20x longer)."""
    raw = item.get_item(0x30060050)
    if raw is None:
        raise ValueError("a contour has no ContourData")
    value = raw.value
    if isinstance(value, (bytes, bytearray)):
        return np.array(bytes(value).strip(b" \x00").split(b"\\"), dtype=float)
    return np.asarray([float(v) for v in (value if hasattr(value, "__iter__") and not isinstance(value, str) else [value])], dtype=float)


# --- the referenced series ---------------------------------------------------------------------
def check_reference(ss: StructureSet, source: Volume) -> None:
    base = os.path.basename(ss.path)
    if ss.series_instance_uid and source.series_instance_uid and ss.series_instance_uid != source.series_instance_uid:
        raise NapariSSLError(f"{base} references another image series (SeriesInstanceUID ...{ss.series_instance_uid[-12:]}), "
                             f"not the given one (...{source.series_instance_uid[-12:]}); give the series it was drawn on")
    if ss.frame_of_reference_uid and source.frame_of_reference_uid and ss.frame_of_reference_uid != source.frame_of_reference_uid:
        raise NapariSSLError(f"{base} is in another frame of reference than the given series; give the series it was drawn on")


def _plans_under(folders: Sequence[str]) -> list:
    from .series import plan_dicom_series

    plans = []
    for folder in folders:
        if not os.path.exists(folder):
            raise NapariSSLError(f"no such file or folder: {folder}")
        plans.extend(plan_dicom_series(folder)[0])
    return plans


def _small_folder(folder: str, limit: int = 64) -> bool:
    """A study-like folder (a few series sub-folders), not a home or archive root worth a long walk."""
    try:
        with os.scandir(folder) as it:
            return sum(1 for _ in zip(range(limit + 1), it)) <= limit
    except OSError:
        return False


def _matching(ss: StructureSet, plans: list) -> list:
    if ss.series_instance_uid:
        return [p for p in plans if p.series_instance_uid == ss.series_instance_uid]
    # no series reference: the series in its frame of reference
    return [p for p in plans if ss.frame_of_reference_uid and str(p.ds.get("FrameOfReferenceUID", "")) == ss.frame_of_reference_uid]


def find_referenced_series(ss: StructureSet, search: Sequence[str | os.PathLike] = ()) -> Volume:
    """The image series the RTSTRUCT references, found (headers first, then one series' pixels) under
    `search` (default: the RTSTRUCT's own folder tree, else its parent's). Native storage order."""
    from .series import read_plan

    base = os.path.basename(ss.path)
    folders = [os.fspath(s) for s in search]
    if folders:
        candidates = _plans_under(folders)
        match = _matching(ss, candidates)
    else:  # beside it, else one level up (a study folder with one sub-folder per series)
        here = os.path.dirname(os.path.abspath(ss.path))
        up = os.path.dirname(here)
        tries = [here] + ([up] if up != here and _small_folder(up) else [])
        for folder in tries:
            folders = [folder]
            candidates = _plans_under(folders)
            match = _matching(ss, candidates)
            if match:
                break
    if not ss.series_instance_uid and len(match) > 1:
        raise NapariSSLError(f"{base} names no series and {len(match)} series share its frame of reference; give --source")
    if not match:
        where = ", ".join(folders)
        if candidates:
            raise NapariSSLError(f"{base} references another image series (SeriesInstanceUID ...{(ss.series_instance_uid or '?')[-12:]}) "
                                 f"than the {len(candidates)} series under {where}; give the series it was drawn on (--source)")
        raise NapariSSLError(f"the image series {base} references is not under {where}; give the series it was drawn on (--source)")
    vol = read_plan(match[0])
    if vol is None:
        raise NapariSSLError(f"the image series {base} references could not be decoded")
    return vol


# --- rasterisation ------------------------------------------------------------------------------
def _roi_planes(roi: ROI, affine: np.ndarray, shape: tuple[int, int, int], warnings: list[str]) -> dict[tuple[int, int], np.ndarray]:
    """One ROI on the grid (shape, affine): {(plane axis, index): 2-D mask of that plane}; contours must be
    parallel to a plane of the grid and lie on one of its planes."""
    inv = np.linalg.inv(np.asarray(affine, float))
    by_plane: dict[tuple[int, int], list[np.ndarray]] = {}
    partly_outside = 0
    for pts in roi.contours:
        idx = (inv[:3, :3] @ pts.T).T + inv[:3, 3]  # (N, 3) continuous voxel indices of the array axes
        spread = idx.max(axis=0) - idx.min(axis=0)
        axis = int(np.argmin(spread))
        if spread[axis] > 2 * PLANE_TOLERANCE:
            raise NapariSSLError(f"ROI {roi.name!r}: a contour is not parallel to the series' slices (spread {spread[axis]:.2f} voxels); "
                                 "this RTSTRUCT was not drawn on this series' grid")
        plane = float(np.mean(idx[:, axis]))
        k = int(round(plane))
        if not 0 <= k < shape[axis]:
            raise NapariSSLError(f"ROI {roi.name!r}: a contour lies outside the image (slice {plane:.1f}; the series has 0..{shape[axis] - 1}); "
                                 "corrupt RTSTRUCT or another series")
        if abs(plane - k) > PLANE_TOLERANCE:
            raise NapariSSLError(f"ROI {roi.name!r}: a contour lies between two slices (at {plane:.2f}); "
                                 "this RTSTRUCT was not drawn on this series' grid")
        a, b = [ax for ax in range(3) if ax != axis]
        lo, hi = idx[:, [a, b]].min(axis=0), idx[:, [a, b]].max(axis=0)
        if np.any(hi < -0.5) or lo[0] > shape[a] - 0.5 or lo[1] > shape[b] - 0.5:
            raise NapariSSLError(f"ROI {roi.name!r}: a contour lies outside the image; corrupt RTSTRUCT or another series")
        if np.any(lo < -1.5) or hi[0] > shape[a] + 0.5 or hi[1] > shape[b] + 0.5:
            partly_outside += 1
        by_plane.setdefault((axis, k), []).append(idx[:, [a, b]])
    if partly_outside:
        warnings.append(f"ROI {roi.name!r}: {partly_outside} contour(s) extend beyond the image; cut at its border")
    out = {}
    for (axis, k), polys in by_plane.items():
        a, b = [ax for ax in range(3) if ax != axis]
        out[(axis, k)] = fill_polygons(polys, (shape[a], shape[b]))
    return out


def paint(target: np.ndarray, planes: dict[tuple[int, int], np.ndarray], value) -> None:
    for (axis, k), m in planes.items():
        sl = [slice(None)] * 3
        sl[axis] = k
        target[tuple(sl)][m] = value


def pick_rois(ss: StructureSet, rois: Optional[Sequence[str]]) -> list[ROI]:
    if rois is None:
        return list(ss.rois)
    if isinstance(rois, str):
        rois = [r.strip() for r in rois.split(",") if r.strip()]
    by_name = {r.name.lower(): r for r in ss.rois}
    missing = [n for n in rois if n.lower() not in by_name]
    if missing:
        raise NapariSSLError(f"no ROI named {', '.join(map(repr, missing))} in {os.path.basename(ss.path)}; "
                             f"it has: {', '.join(r.name for r in ss.rois)}")
    if len({n.lower() for n in rois}) != len(rois):
        raise NapariSSLError("an ROI is listed twice in --rois")
    return [by_name[n.lower()] for n in rois]


def roi_planes(ss: StructureSet, grid: Volume, rois: Optional[Sequence[str]] = None) -> tuple[list[ROI], list[dict], list[str]]:
    """(picked ROIs, per ROI {(axis, index): 2-D plane mask} on `grid`'s array, warnings)."""
    picked = pick_rois(ss, rois)
    warnings: list[str] = []
    planes = [_roi_planes(r, grid.affine, grid.shape, warnings) for r in picked]
    skipped = [f"{r.name} {r.skipped}" for r in picked if r.skipped]
    if skipped:
        warnings.append(f"contours with no area (single points, open lines) left out: {', '.join(skipped)}")
    for r, p in zip(picked, planes):
        if not any(m.any() for m in p.values()):
            warnings.append(f"ROI {r.name!r} has no contour on this series (empty)")
    return picked, planes, warnings


def overlapping_pairs(rois: Sequence[ROI], planes: Sequence[dict]) -> list[tuple[str, str, int]]:
    """(name, name, voxels) for every pair of ROIs sharing voxels (planes of the same axis compared)."""
    out = []
    for i in range(len(planes)):
        for j in range(i + 1, len(planes)):
            n = sum(int(np.count_nonzero(m & planes[j][key])) for key, m in planes[i].items() if key in planes[j])
            if n:
                out.append((rois[i].name, rois[j].name, n))
    return out


def non_overlapping_groups(planes: Sequence[dict]) -> list[list[int]]:
    """Greedy grouping of ROI indices (in order) so that no two ROIs in a group share a voxel."""
    groups: list[list[int]] = []
    for i in range(len(planes)):
        for g in groups:
            if all(not np.any(m & planes[j][key]) for j in g for key, m in planes[i].items() if key in planes[j]):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def label_map(ss: StructureSet, grid: Volume, rois: Optional[Sequence[str]] = None) -> tuple[np.ndarray, dict[int, str], dict[int, tuple], list[str]]:
    """(label map on `grid`, {value: ROI name}, {value: RGB}, warnings). Values 1..n in ROI order (or the
    order of `rois`). Overlap: an error without `rois`; with `rois` the later ROI wins."""
    picked, planes, warnings = roi_planes(ss, grid, rois)
    if rois is None:
        pairs = overlapping_pairs(picked, planes)
        if pairs:
            shown = "; ".join(f"{a} & {b} ({n} voxels)" for a, b, n in pairs[:3]) + (f"; {len(pairs) - 3} more" if len(pairs) > 3 else "")
            raise NapariSSLError(f"{os.path.basename(ss.path)}: ROIs overlap ({shown}); one label map cannot hold them: "
                                 f"pick ROIs and their order with --rois \"A,B\" (later ones win where they overlap)")
    dtype = np.uint8 if len(picked) < 256 else np.uint16
    labels = np.zeros(grid.shape, dtype=dtype)
    for v, p in enumerate(planes, start=1):
        paint(labels, p, v)
    names = {v: r.name for v, r in enumerate(picked, start=1)}
    colors = {v: r.color for v, r in enumerate(picked, start=1) if r.color is not None}
    return labels, names, colors, warnings


def resolve_source(ss: StructureSet, source: Volume | str | os.PathLike | None) -> Volume:
    """The referenced series as a Volume: `source` (checked to be it) or found beside the RTSTRUCT."""
    if isinstance(source, Volume):
        check_reference(ss, source)
        return source
    vol = find_referenced_series(ss, [source] if source is not None else ())
    check_reference(ss, vol)
    return vol


def read_rtstruct_labels(path: str | os.PathLike, source: Volume | str | os.PathLike | None = None,
                         rois: Optional[Sequence[str] | str] = None, canonical: bool = True) -> tuple[Volume, dict[int, str], dict[int, tuple]]:
    """An RTSTRUCT as (labels Volume on its series' grid, {value: ROI name}, {value: ROI display RGB}).

    `source`: the referenced series (a Volume, or a folder to search); default: the RTSTRUCT's folder tree.
    The labels Volume carries the series' geometry and identity (UIDs, source datasets) like the image does,
    so it exports as a DICOM-SEG on that series. With ``canonical`` the array is in the canonical order.
    """
    from ..orientation import canonicalize

    ss = read_structure_set(path)
    src = resolve_source(ss, source)
    labels, names, colors, warnings = label_map(ss, src, rois)
    for w in warnings[:3]:
        log.warning("%s: %s", os.path.basename(ss.path), w)
    vol = src.with_array(labels, units="")
    vol.warnings = list(warnings)
    return (canonicalize(vol) if canonical else vol), names, colors
