"""Writing DICOM-SEG (highdicom) from a label map and its source DICOM series.

One segment per label value present, numbered 1..K in ascending label order (DICOM needs
contiguous segment numbers; with labels 1..K the numbers equal the labels). BINARY by
default (one 1-bit frame per slice and segment, empty frames omitted), LABELMAP on request
(one 8/16-bit frame per slice, the Label Map Segmentation SOP class). The speed work that
reaches into highdicom lives in :mod:`.highdicom_fast`; the source headers are prepared in
:mod:`.source_headers`.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ...errors import NapariSSLError
from ..label_grid import labels_on_source_grid, native_affine, normalize_names, require_dicom_source
from ..volume import Volume
from .source_headers import character_set, clean_header, native_sources, off_grid_note, plane_geometry, require_placeable, shared_orientation

log = logging.getLogger(__name__)


@dataclass
class SegExport:
    """What was written: where, and how label values became segments."""

    path: Optional[str]
    sop_instance_uid: str
    series_instance_uid: str
    segment_numbers: dict[int, int]  # label value -> segment number
    names: dict[int, str]  # label value -> name
    segmentation_type: str
    num_frames: int
    dataset: Any = field(default=None, repr=False)  # the highdicom Segmentation
    warnings: list[str] = field(default_factory=list)


def _segment_descriptions(names_by_segment: list[tuple[int, str]], algorithm_type: str, model: Optional[str]):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from ... import __version__
    from .codes import coded_concepts

    algo = None
    if algorithm_type != "MANUAL":
        params = {"model": str(model)[:64]} if model else None
        algo = hd.AlgorithmIdentificationSequence(
            name="napari-ssl",
            version=str(__version__),
            family=codes.cid7162.ArtificialIntelligence,
            source="napari-ssl",
            parameters=params,
        )
    out = []
    for number, name in names_by_segment:
        category, typ = coded_concepts(name)
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name[:64],
                segmented_property_category=category,
                segmented_property_type=typ,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues[algorithm_type],
                algorithm_identification=algo,
                tracking_uid=hd.UID(),
                tracking_id=name[:64],
            )
        )
    return out


def build_segmentation(
    labels: np.ndarray,
    source: Volume,
    labels_affine: Optional[np.ndarray] = None,
    names: Mapping[int, str] | Sequence[str] | None = None,
    labelmap: bool = False,
    model: Optional[str] = None,
    algorithm_type: Optional[str] = None,
    series_description: str = "napari-ssl segmentation",
    series_number: int = 1000,
    workers: int = 0,
    fast: bool = True,
):
    """The highdicom Segmentation for `labels` on `source` (not written anywhere).

    ``labels_affine`` is the grid of `labels` (index z,y,x -> LPS); ``None`` means the same
    array order as ``source.array``. ``names`` maps label values to names, or lists names of
    labels 1, 2, ... in order. ``algorithm_type`` defaults to SEMIAUTOMATIC (napari-ssl
    predictions edited by hand), AUTOMATIC when a model name is given; MANUAL omits the
    algorithm identification. ``fast`` (default) builds the per-frame part for a series of
    single-frame sources directly (see :mod:`.highdicom_fast`); ``False`` leaves it all to highdicom.
    """
    from .highdicom_fast import install_lazy_module_table, reference_whole_series

    require_dicom_source(source)
    install_lazy_module_table()   # highdicom's 22 MB attribute table parsed per module as needed, not whole (same values)
    arr, slice_max, values, numbers = _segment_array(labels, source, labels_affine)
    names_by_value = normalize_names(names, values)
    algorithm_type = _algorithm_type(algorithm_type, model)
    descriptions = _segment_descriptions([(numbers[v], names_by_value[v]) for v in values], algorithm_type, model)
    require_placeable(source)
    plan = _SourcePlan.of(source, arr, slice_max)
    common = _common_attributes(plan, descriptions, labelmap, series_description, series_number, workers)
    seg, built_fast = _construct(plan, arr, common, fast)
    if plan.keep is not None or built_fast:
        reference_whole_series(seg, plan.all_dss, plan.native)
    if built_fast:
        seg.invalidate_luts()  # highdicom's frame index: built from the final frames on the first read
    return seg, numbers, names_by_value


def _segment_array(labels, source: Volume, labels_affine: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[int], dict[int, int]]:
    """(label array on the source's native grid with values renumbered to segments 1..K, each slice's maximum,
    the label values present, {label value: segment number})."""
    arr = np.ascontiguousarray(labels_on_source_grid(labels, source, labels_affine))
    slice_max = arr.reshape(arr.shape[0], -1).max(axis=1) if arr.size else np.zeros(arr.shape[0], arr.dtype)
    values = _label_values(arr, slice_max)
    if not values:
        raise NapariSSLError("the mask is empty (no labelled voxel): nothing to export")
    numbers = {v: i + 1 for i, v in enumerate(values)}
    if values != list(range(1, len(values) + 1)):
        lut = np.zeros(int(max(values)) + 1, dtype=np.uint16 if len(values) > 255 else np.uint8)
        for v, n in numbers.items():
            lut[v] = n
        arr = lut[arr]
        log.info("label values %s written as segments %s", values, list(numbers.values()))
    elif arr.dtype != np.uint8 and len(values) < 256:
        arr = arr.astype(np.uint8)
    return arr, slice_max, values, numbers


def _algorithm_type(algorithm_type: Optional[str], model: Optional[str]) -> str:
    if algorithm_type is None:
        algorithm_type = "AUTOMATIC" if model else "SEMIAUTOMATIC"
    algorithm_type = algorithm_type.upper()
    if algorithm_type not in ("MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"):
        raise NapariSSLError(f"algorithm type {algorithm_type!r}: use MANUAL, SEMIAUTOMATIC or AUTOMATIC")
    return algorithm_type


@dataclass
class _SourcePlan:
    """What highdicom is given: source headers and the label plane of each."""

    sources: list                   # headers given to highdicom (the first one cleaned)
    planes: list                    # the label plane of each (views of the slices)
    all_dss: list                   # every source header (one orientation)
    keep: Optional[np.ndarray]      # the slices given when not all (labelled ones only)
    positions: Optional[list]       # plane positions when frames do not map 1:1 onto slices
    native: np.ndarray              # the series' affine in its own storage order

    @classmethod
    def of(cls, source: Volume, arr: np.ndarray, slice_max: np.ndarray) -> "_SourcePlan":
        dss, positions = native_sources(source, arr.shape[0])
        dss = shared_orientation(dss)
        all_dss = dss
        keep = None
        if positions is None and len(dss) == arr.shape[0] > 1:
            # One single-frame source per slice: leave the slices without any label out before
            # highdicom (their frames would be omitted anyway), so its per-source work (positions,
            # derivation references) scales with the labelled slices, not the whole series.
            nonempty = np.flatnonzero(slice_max > 0)
            if 0 < len(nonempty) < arr.shape[0]:
                keep = nonempty
                dss = [dss[i] for i in keep]
        planes = list(arr) if keep is None else [arr[i] for i in keep]   # views of the slices given to the SEG
        return cls(sources=[clean_header(dss[0])] + dss[1:], planes=planes, all_dss=all_dss, keep=keep, positions=positions,
                   native=native_affine(source))

    @property
    def one_per_slice(self) -> bool:
        """One single-frame source per slice of the series (what the fast build handles)."""
        return self.positions is None and len(self.all_dss) > 1


def _common_attributes(plan: _SourcePlan, descriptions: list, labelmap: bool, series_description: str,
                       series_number: int, workers: int) -> dict[str, Any]:
    """The keyword arguments of highdicom's Segmentation besides the sources and pixels."""
    import highdicom as hd

    from ... import __version__

    kwargs: dict[str, Any] = {}
    if plan.positions is not None:
        orientation, measures = plane_geometry(plan.native)
        kwargs.update(plane_positions=plan.positions, plane_orientation=orientation, pixel_measures=measures)
    if labelmap:
        if not hasattr(hd.seg.SegmentationTypeValues, "LABELMAP"):
            raise NapariSSLError(f"LABELMAP SEGs need highdicom >= 0.24 (installed: {hd.__version__}); export BINARY instead")
        seg_type = hd.seg.SegmentationTypeValues.LABELMAP
    else:
        seg_type = hd.seg.SegmentationTypeValues.BINARY
    return dict(
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-ssl",
        manufacturer_model_name="napari-ssl",
        software_versions=str(__version__),
        device_serial_number="0",
        series_description=series_description[:64],
        content_description=series_description[:64],
        content_label="SEGMENTATION",
        omit_empty_frames=True,
        workers=workers,
        specific_character_set=character_set(plan.sources[0]),
        **kwargs,
    )


def _construct(plan: _SourcePlan, arr: np.ndarray, common: dict[str, Any], fast: bool):
    """(the Segmentation, whether the fast per-frame build made it); highdicom's errors as one line."""
    import highdicom as hd

    from .highdicom_fast import fast_segmentation

    try:
        with warnings.catch_warnings():
            # highdicom quotes the patient's name in this warning: never let it reach a log
            warnings.filterwarnings("ignore", message=".*person name.*")
            built_fast = fast and plan.one_per_slice and len(plan.planes) > 2
            if built_fast:
                seg = fast_segmentation(plan.sources, plan.planes, common)
            else:
                seg = hd.seg.Segmentation(source_images=plan.sources, pixel_array=arr if plan.keep is None else arr[plan.keep], **common)
    except (ValueError, AttributeError, TypeError) as exc:
        raise NapariSSLError(f"cannot build the DICOM-SEG from this source series: {str(exc).splitlines()[0]}") from None
    return seg, built_fast


def _label_values(arr: np.ndarray, slice_max: np.ndarray) -> list[int]:
    """Sorted non-zero values present in a label map, given each slice's maximum.

    ``np.unique`` sorts or hashes every voxel (about a second on a 300-slice CT mask); a label
    map holds few values, so each candidate value is looked for in a few slices at a time, in
    the slices whose maximum allows it, stopping at the first hit.
    """
    top = int(slice_max.max(initial=0))
    if top == 0:
        return []
    if top > 64:
        return [int(v) for v in np.unique(arr[slice_max > 0]) if v != 0]
    values = []
    for v in range(1, top + 1):
        candidates = np.flatnonzero(slice_max >= v)
        for start in range(0, len(candidates), 8):
            if np.any(arr[candidates[start:start + 8]] == v):
                values.append(v)
                break
    return values


def write_dataset_atomic(ds, path: str) -> None:
    """Write a pydicom dataset to `path` via a temp file in the same folder, then rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise NapariSSLError(f"output folder does not exist: {folder}")
    from ..atomic import atomic_path
    from ..dicom.pydicom_fast import encode_file

    with atomic_path(path, suffix=".dcm") as tmp:
        chunks = encode_file(ds)   # the bytes pydicom's writer gives, several times faster on large SEGs
        if chunks is None:
            ds.save_as(tmp, enforce_file_format=True)
        else:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)


def write_segmentation(
    labels: np.ndarray,
    source: Volume,
    out_path: str | os.PathLike | None,
    labels_affine: Optional[np.ndarray] = None,
    names: Mapping[int, str] | Sequence[str] | None = None,
    labelmap: bool = False,
    model: Optional[str] = None,
    **kwargs: Any,
) -> SegExport:
    """Build the SEG (see :func:`build_segmentation`) and write it atomically to `out_path`."""
    from .highdicom_fast import gc_paused

    path = None
    with gc_paused():
        seg, numbers, names_by_value = build_segmentation(labels, source, labels_affine, names, labelmap=labelmap, model=model, **kwargs)
        if out_path is not None:
            path = os.fspath(out_path)
            write_dataset_atomic(seg, path)
    return SegExport(
        path=path,
        sop_instance_uid=str(seg.SOPInstanceUID),
        series_instance_uid=str(seg.SeriesInstanceUID),
        segment_numbers=numbers,
        names=names_by_value,
        segmentation_type=str(seg.SegmentationType),
        num_frames=int(seg.NumberOfFrames),
        dataset=seg,
        warnings=[w for w in [off_grid_note(source)] if w],
    )
