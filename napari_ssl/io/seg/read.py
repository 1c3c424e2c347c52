"""Reading DICOM-SEG files into labels Volumes (geometry from the SEG itself).

The SEG carries its own per-frame positions, so no source files are needed. BINARY,
FRACTIONAL (thresholded at 0.5) and LABELMAP segmentations are read the same way.

Overlapping segments cannot share one label map. They are split greedily, in segment
number order, into groups whose segments do not overlap (the grouping dcmqi uses); one
labels Volume is returned per group, each with a warning saying so. Label values are
always the SEG's segment numbers, so names stay attached to the same values in every group.
"""
from __future__ import annotations

import logging
import os
import warnings as _warnings

import numpy as np

from ...errors import NapariSSLError
from ..orientation import canonicalize
from ..volume import Volume

log = logging.getLogger(__name__)

SEG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
}


def is_segmentation_file(path: str) -> bool:
    """True if `path` is a DICOM file of a Segmentation SOP class (reads the header only)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:
        return False
    return str(ds.get("SOPClassUID", "")) in SEG_SOP_CLASSES


def _segment_masks(seg) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Stacked boolean masks (z, y, x, n), their segment numbers, and the volume affine."""
    numbers = [int(n) for n in seg.segment_numbers if int(n) != 0]  # LABELMAP may describe 0 = background
    if not numbers:
        raise NapariSSLError("the SEG describes no segments")
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            vol = seg.get_volume(segment_numbers=numbers, combine_segments=False, rescale_fractional=True, allow_missing_positions=True)
    except (RuntimeError, ValueError) as exc:
        raise NapariSSLError(f"the SEG's frames do not form a regular 3-D grid ({exc}); it cannot be shown as a labels volume") from None
    arr = np.asarray(vol.array)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.dtype.kind == "f":  # FRACTIONAL, rescaled to 0..1
        masks = arr >= 0.5
    else:
        masks = arr > 0
    return masks, numbers, np.asarray(vol.affine, dtype=float)


def _non_overlapping_groups(masks: np.ndarray) -> list[list[int]]:
    """Greedy grouping of channel indices so that no two channels in a group share a voxel."""
    groups: list[tuple[list[int], np.ndarray]] = []
    for i in range(masks.shape[-1]):
        m = masks[..., i]
        for members, union in groups:
            if not np.any(union & m):
                members.append(i)
                union |= m
                break
        else:
            groups.append(([i], m.copy()))
    return [members for members, _ in groups]


def _open_seg(path: str):
    import highdicom as hd

    from .highdicom_fast import install_lazy_module_table

    if not os.path.isfile(path):
        raise NapariSSLError(f"no such file: {path}")
    install_lazy_module_table()   # highdicom's attribute table parsed per module (0.2-0.4 s less on the first SEG of a process)
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            return hd.seg.segread(path)
    except Exception as exc:  # pydicom/highdicom raise many types for non-SEG input
        raise NapariSSLError(f"{os.path.basename(path)} is not a readable DICOM-SEG "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def read_segmentation(path: str | os.PathLike, canonical: bool = True) -> list[tuple[Volume, dict[int, str]]]:
    """Labels Volumes and ``{label value: segment name}`` from a DICOM-SEG file.

    Usually one item; several when segments overlap (see module docstring). The Volume's
    UIDs are those of the SEG's referenced source series, so it lines up with that series.
    With ``canonical`` the array is reordered like :func:`napari_ssl.io.load_volume` does.
    """
    path = os.fspath(path)
    seg = _open_seg(path)
    masks, numbers, affine = _segment_masks(seg)
    return _label_volumes(seg, path, masks, numbers, affine, canonical)


def _label_volumes(seg, path: str, masks: np.ndarray, numbers: list[int], affine: np.ndarray,
                   canonical: bool) -> list[tuple[Volume, dict[int, str]]]:
    names = {n: str(seg.get_segment_description(n).segment_label or f"Segment {n}") for n in numbers}
    groups = _non_overlapping_groups(masks)
    max_label = max(numbers)
    dtype = np.uint8 if max_label < 256 else np.uint16

    ref_series = None
    if "ReferencedSeriesSequence" in seg and len(seg.ReferencedSeriesSequence):
        ref_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    out: list[tuple[Volume, dict[int, str]]] = []
    for gi, members in enumerate(groups):
        labels = np.zeros(masks.shape[:3], dtype=dtype)
        for i in members:
            labels[masks[..., i]] = numbers[i]
        warn = []
        if len(groups) > 1:
            warn.append(
                f"segments overlap: split into {len(groups)} non-overlapping label maps; this is group {gi + 1} "
                f"(segments {', '.join(str(numbers[i]) for i in members)})"
            )
        vol = Volume(
            array=labels,
            affine=affine,
            modality="SEG",
            path=path,
            study_instance_uid=str(seg.StudyInstanceUID),
            series_instance_uid=ref_series,
            frame_of_reference_uid=str(seg.get("FrameOfReferenceUID", "")) or None,
            series_description=str(seg.get("SeriesDescription", "")),
            num_files=1,
            warnings=warn,
            native_affine=affine.copy(),
        )
        if canonical:
            vol = canonicalize(vol)
        out.append((vol, {numbers[i]: names[numbers[i]] for i in members}))
    for w in out[0][0].warnings[:1]:
        log.warning("%s: %s", os.path.basename(path), w.split(";")[0])
    return out


def read_single_label_map(path: str | os.PathLike, canonical: bool = True) -> tuple[Volume, dict[int, str]]:
    """:func:`read_segmentation` for callers that need ONE label map: overlapping segments are an error."""
    groups = read_segmentation(path, canonical=canonical)
    if len(groups) > 1:
        raise NapariSSLError(f"{os.path.basename(os.fspath(path))} has overlapping segments, which one label map cannot hold")
    return groups[0]
