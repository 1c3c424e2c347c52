"""DICOM series -> Volume: discovery, grouping, geometry and pixels.

``load_dicom_volumes(path)`` takes one file, a series folder or a tree of patients /
studies / series (the steps: see :mod:`napari_ssl.io.dicom`). ``plan_dicom_series`` stops
before the pixels (used by ``napari-ssl info``).
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ...errors import NoImageFound
from ..volume import Volume
from .discovery import Header, Scan, is_enhanced, scan_path
from .frames import Frame, frames_of
from .geometry import Stack, build_stack, split_stacks
from .pixels import float_target, read_raw, rescale, rescale_into, stored_dtype, widening_buffer
from .pydicom_fast import value

log = logging.getLogger(__name__)

__all__ = ["load_dicom_volumes", "plan_dicom_series", "SeriesPlan"]


@dataclass
class SeriesPlan:
    """A stack ready to be read: ordered frames, affine and what was noticed on the way."""

    stack: Stack
    path: str
    warnings: list[str] = field(default_factory=list)

    @property
    def ds(self) -> Any:
        return self.stack.frames[0].header.ds

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.stack.shape

    @property
    def num_files(self) -> int:
        return len({f.header.path for f in self.stack.frames})

    @property
    def modality(self) -> str:
        return str(self.ds.get("Modality", "") or "")

    @property
    def series_instance_uid(self) -> Optional[str]:
        uid = self.ds.get("SeriesInstanceUID")
        return str(uid) if uid else None


def _series_key(h: Header) -> tuple[str, str]:
    ds = h.ds
    uid = str(value(ds, "SeriesInstanceUID", "") or f"(no series UID) {os.path.dirname(h.path)}")
    # Each multi-frame object is its own volume: frames of two objects are never interleaved.
    multi = int(value(ds, "NumberOfFrames", 1) or 1) > 1 or is_enhanced(ds)
    inst = str(value(ds, "SOPInstanceUID", h.path)) if multi else ""
    return uid, inst


def _common_path(paths: list[str]) -> str:
    uniq = sorted(set(paths))
    if len(uniq) == 1:
        return uniq[0]
    try:
        return os.path.commonpath([os.path.dirname(p) for p in uniq])
    except ValueError:
        return os.path.dirname(uniq[0])


def _problem_notes(problems: list[tuple[str, str]], plans: list[SeriesPlan]) -> None:
    """Attach file problems to the volumes read from the same folder (all volumes if none)."""
    for bad, msg in problems:
        log.warning("%s", msg)
        folder = os.path.dirname(os.path.abspath(bad))
        near = [p for p in plans if any(os.path.dirname(os.path.abspath(f.header.path)) == folder for f in p.stack.frames)]
        for p in near or plans:
            if msg not in p.warnings:
                p.warnings.append(msg)


def _plans_from_scan(scan: Scan) -> list[SeriesPlan]:
    series: dict[tuple[str, str], list[Header]] = defaultdict(list)
    for h in scan.headers:
        series[_series_key(h)].append(h)
    plans: list[SeriesPlan] = []
    for key in sorted(series, key=lambda k: (min(h.path for h in series[k]))):
        headers = series[key]
        frames: list[Frame] = []
        notes: list[str] = []
        for h in headers:
            if int(value(h.ds, "SamplesPerPixel", 1) or 1) != 1:
                note = f"{h.path}: colour image (SamplesPerPixel {h.ds.get('SamplesPerPixel')}); only greyscale volumes are read"
                if note not in notes:
                    notes.append(note)
                continue
            try:
                stored_dtype(h.ds)
                frames.extend(frames_of(h))
            except Exception as exc:
                notes.append(f"{h.path}: cannot interpret the image header ({type(exc).__name__}); left out")
        for n in notes:
            log.warning("%s", n)
        if not frames:
            continue
        groups, split_notes = split_stacks(frames)
        for g in groups:
            stack = build_stack(g)
            path = _common_path([f.header.path for f in stack.frames])
            plans.append(SeriesPlan(stack=stack, path=path, warnings=notes + split_notes + stack.warnings))
    _problem_notes(scan.problems, plans)
    return plans


def plan_dicom_series(path: str | os.PathLike) -> tuple[list[SeriesPlan], Scan]:
    """Headers only: every image stack under `path`, ordered and with its geometry."""
    path = os.fspath(path)
    scan = scan_path(path)
    return _plans_from_scan(scan), scan


def _no_image_message(path: str, scan: Scan, undecodable: Optional[list[str]] = None) -> str:
    if undecodable:
        return f"no DICOM image could be read under {path}: {undecodable[0]}"
    bits = []
    if scan.non_image:
        bits.append(f"{scan.non_image} DICOM object(s) without an image (SEG, SR, RTSTRUCT, DICOMDIR, ...)")
    if scan.problems:
        bits.append(f"{len(scan.problems)} unreadable or truncated DICOM file(s), e.g. {os.path.basename(scan.problems[0][0])}")
    found = f"; found {' and '.join(bits)}" if bits else ""
    return f"no DICOM image found under {path}{found}"


def _units(ds: Any) -> str:
    if str(ds.get("Modality", "")).upper() == "CT":
        return "HU"
    rt = str(ds.get("RescaleType", "") or "")
    return "" if rt.upper() in ("", "US") else rt


def _header_only(ds: Any) -> Any:
    for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        if tag in ds:
            del ds[tag]
    return ds


def read_plan(plan: SeriesPlan, workers: Optional[int] = None, errors: Optional[list[str]] = None) -> Optional[Volume]:
    """Decode the pixels of a planned stack into a Volume (None if no slice could be decoded)."""
    stack = plan.stack
    warnings = list(plan.warnings)
    raw, widened, failed, messages = _read_stored(stack.frames, workers)
    if failed:
        for m in messages:
            log.warning("%s", m)
        keep = [f for i, f in enumerate(stack.frames) if i not in set(failed)]
        if not keep:
            if errors is not None:
                errors.extend(messages)
            return None
        raw = raw[np.setdiff1d(np.arange(len(stack.frames)), failed)]
        widened = None
        stack = build_stack(keep)  # geometry again, with the gap the failed slices leave
        warnings = [w for w in warnings if w not in plan.stack.warnings] + [m + "; left out" for m in messages] + stack.warnings
    slopes = np.array([f.slope for f in stack.frames])
    intercepts = np.array([f.intercept for f in stack.frames])
    if widened is not None:
        array = rescale_into(widened, raw, slopes, intercepts)
    else:
        array = rescale(raw, slopes, intercepts)
    return _volume(plan, stack, array, warnings)


def _read_stored(frames: list[Frame], workers: Optional[int]) -> tuple[np.ndarray, Optional[np.ndarray], list[int], list[str]]:
    """(stored values, the float volume they were read into the tail of or None, failed slices, messages)."""
    stored = stored_dtype(frames[0].header.ds)
    target = float_target(stored, np.array([f.slope for f in frames]), np.array([f.intercept for f in frames]))
    if target is not None and target.itemsize > stored.itemsize and target.itemsize % stored.itemsize == 0:
        # a float result (non-integer rescale): read into the tail of the float volume and convert
        # in place, instead of a stored-dtype volume plus its float copy
        widened, raw = widening_buffer((len(frames), frames[0].rows, frames[0].cols), stored, target)
        raw, failed, messages = read_raw(frames, workers=workers, out=raw)
        return raw, widened, failed, messages
    raw, failed, messages = read_raw(frames, workers=workers)
    return raw, None, failed, messages


def _volume(plan: SeriesPlan, stack: Stack, array: np.ndarray, warnings: list[str]) -> Volume:
    """The Volume of a decoded stack; the source headers lose their pixel data elements."""
    frames = stack.frames
    ds0 = frames[0].header.ds
    enhanced = is_enhanced(ds0) or int(ds0.get("NumberOfFrames", 1) or 1) > 1
    unique: dict[int, Header] = {}
    for f in frames:
        unique.setdefault(id(f.header), f.header)
    headers = list(unique.values())
    for h in headers:
        _header_only(h.ds)
    frame_uid = ds0.get("FrameOfReferenceUID")
    return Volume(
        array=array,
        affine=stack.affine.copy(),
        native_affine=stack.affine.copy(),
        modality=str(ds0.get("Modality", "") or ""),
        path=plan.path,
        patient_id=str(ds0.get("PatientID", "") or ""),
        study_instance_uid=str(ds0.get("StudyInstanceUID")) if ds0.get("StudyInstanceUID") else None,
        series_instance_uid=str(ds0.get("SeriesInstanceUID")) if ds0.get("SeriesInstanceUID") else "",
        frame_of_reference_uid=str(frame_uid) if frame_uid else None,
        series_description=str(ds0.get("SeriesDescription", "") or ""),
        num_files=len({f.header.path for f in frames}),
        warnings=warnings,
        source_paths=[h.path for h in headers],
        source_datasets=[h.ds for h in headers],
        source_frames=[f.index + 1 for f in frames] if enhanced else [],
        units=_units(ds0),
    )


def load_dicom_volumes(path: str | os.PathLike, workers: Optional[int] = None) -> list[Volume]:
    """Every DICOM image stack under `path` (a file, a series folder or a whole tree).

    Non-DICOM files are skipped quietly; unreadable or truncated DICOM files are named in
    the warnings of the volumes beside them; SEG/SR/RTSTRUCT and other non-image objects
    are skipped. Raises :class:`NoImageFound` when no DICOM image is there -- unless the
    path holds NIfTI/NRRD/MHA files, which :func:`napari_ssl.io.load_volumes` reads itself
    (then the result is an empty list).
    """
    path = os.fspath(path)
    plans, scan = plan_dicom_series(path)
    errors: list[str] = []
    volumes = [v for v in (read_plan(p, workers=workers, errors=errors) for p in plans) if v is not None]
    if not volumes and not scan.itk_files:
        raise NoImageFound(_no_image_message(path, scan, errors))
    return volumes


def load_dicom_series(files: list[str], series_instance_uid: str) -> Optional[Volume]:
    """The volume of one series (by its UID) among `files` (other files are skipped); None if absent.

    Used to find the source series of a DICOM-SEG beside it without loading everything else there.
    """
    from .discovery import read_header

    scan = Scan()
    for f in files:
        try:
            h = read_header(f)
        except Exception:
            continue
        if str(value(h.ds, "SeriesInstanceUID", "") or "") == series_instance_uid and h.has_pixels:
            scan.headers.append(h)
    plans = _plans_from_scan(scan)
    if not plans:
        return None
    plan = max(plans, key=lambda p: p.shape[0])   # a series split in stacks: the largest one
    return read_plan(plan)
