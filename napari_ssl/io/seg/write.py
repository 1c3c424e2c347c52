"""Writing DICOM-SEG (highdicom) from a label map and its source DICOM series.

One segment per label value present, numbered 1..K in ascending label order (DICOM needs
contiguous segment numbers; with labels 1..K the numbers equal the labels). BINARY by
default (one 1-bit frame per slice and segment, empty frames omitted), LABELMAP on request
(one 8/16-bit frame per slice, the Label Map Segmentation SOP class).
"""
from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ...errors import NapariSSLError
from ..dicom.discovery import value
from ..label_grid import labels_on_source_grid, normalize_names, require_dicom_source
from ..geometry_tolerance import ORIENTATION_TOL, POSITION_TOL_MM, POSITION_TOL_REL, consensus_orientation
from ..volume import Volume

log = logging.getLogger(__name__)

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


def _clean_header(ds):
    """A copy of a source header that highdicom and validators accept (messy real files)."""
    ds = copy.deepcopy(ds)
    for kw, val in _TYPE2_DEFAULTS.items():
        if kw not in ds:
            setattr(ds, kw, val)
    if "PatientSex" in ds and str(ds.PatientSex) not in ("M", "F", "O", ""):
        ds.PatientSex = ""
    return ds


def _character_set(ds) -> Optional[str | list]:
    cs = ds.get("SpecificCharacterSet")
    if cs is None:
        return None
    if isinstance(cs, str):
        return cs.strip() or None
    vals = [str(v).strip() for v in cs]
    vals = [v for v in vals if v] if any(vals) else []
    return (vals if len(vals) > 1 else vals[0]) if vals else None


def _has_plane_geometry(dss) -> bool:
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


def _native_sources(source: Volume, n_slices: int) -> tuple[list, Optional[list]]:
    """Source headers for highdicom, and plane positions when frames do not map 1:1 onto slices."""
    import highdicom as hd

    dss = list(source.source_datasets)
    native = np.asarray(source.native_affine if source.native_affine is not None else source.affine, float)
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


def _header_copy(ds):
    """A copy of a header whose elements can be replaced without touching `ds` (the elements
    themselves are shared, not copied: highdicom only reads them). 300x cheaper than a deep copy."""
    out = copy.copy(ds)
    object.__setattr__(out, "_dict", dict(ds._dict))
    return out


def _shared_orientation(dss: list) -> list:
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
            c = _header_copy(ds)
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
    native = np.asarray(source.native_affine if source.native_affine is not None else source.affine, float)
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
    out = _header_copy(ds)
    new_shared = _header_copy(shared) if shared is not None else Dataset()
    new_shared.PlaneOrientationSequence = [copy.deepcopy(items[rep])]
    out.SharedFunctionalGroupsSequence = [new_shared]
    frames = []
    for it in per:
        c = _header_copy(it)
        del c.PlaneOrientationSequence
        frames.append(c)
    out.PerFrameFunctionalGroupsSequence = frames
    return out


def _plane_geometry(native: np.ndarray):
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
    single-frame sources directly (see :func:`_fast_segmentation`); ``False`` leaves it all to highdicom.
    """
    import highdicom as hd

    from .highdicom_fast.module_table import install

    require_dicom_source(source)
    install()   # highdicom's 22 MB attribute table parsed per module as needed, not whole (same values)
    native = np.asarray(source.native_affine if source.native_affine is not None else source.affine, float)
    arr = np.ascontiguousarray(labels_on_source_grid(labels, source, labels_affine))
    slice_max = arr.reshape(arr.shape[0], -1).max(axis=1) if arr.size else np.zeros(arr.shape[0], arr.dtype)
    values = _label_values(arr, slice_max)
    if not values:
        raise NapariSSLError("the mask is empty (no labelled voxel): nothing to export")
    names_by_value = normalize_names(names, values)
    numbers = {v: i + 1 for i, v in enumerate(values)}
    if values != list(range(1, len(values) + 1)):
        lut = np.zeros(int(max(values)) + 1, dtype=np.uint16 if len(values) > 255 else np.uint8)
        for v, n in numbers.items():
            lut[v] = n
        arr = lut[arr]
        log.info("label values %s written as segments %s", values, list(numbers.values()))
    elif arr.dtype != np.uint8 and len(values) < 256:
        arr = arr.astype(np.uint8)

    if algorithm_type is None:
        algorithm_type = "AUTOMATIC" if model else "SEMIAUTOMATIC"
    algorithm_type = algorithm_type.upper()
    if algorithm_type not in ("MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"):
        raise NapariSSLError(f"algorithm type {algorithm_type!r}: use MANUAL, SEMIAUTOMATIC or AUTOMATIC")
    descriptions = _segment_descriptions([(numbers[v], names_by_value[v]) for v in values], algorithm_type, model)

    if not _has_plane_geometry(source.source_datasets):
        raise NapariSSLError(
            "the source series' headers give no slice position/orientation, so a DICOM-SEG cannot be placed on it; export NIfTI instead"
        )
    if not source.source_datasets[0].get("FrameOfReferenceUID"):
        raise NapariSSLError("the source series has no Frame of Reference UID, so a DICOM-SEG cannot reference it; export NIfTI instead")
    dss, positions = _native_sources(source, arr.shape[0])
    dss = _shared_orientation(dss)
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
    first = _clean_header(dss[0])
    sources = [first] + dss[1:]
    kwargs: dict[str, Any] = {}
    if positions is not None:
        orientation, measures = _plane_geometry(native)
        kwargs.update(plane_positions=positions, plane_orientation=orientation, pixel_measures=measures)
    if labelmap:
        if not hasattr(hd.seg.SegmentationTypeValues, "LABELMAP"):
            raise NapariSSLError(f"LABELMAP SEGs need highdicom >= 0.24 (installed: {hd.__version__}); export BINARY instead")
        seg_type = hd.seg.SegmentationTypeValues.LABELMAP
    else:
        seg_type = hd.seg.SegmentationTypeValues.BINARY
    from ... import __version__

    common = dict(
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
        specific_character_set=_character_set(first),
        **kwargs,
    )
    one_per_slice = positions is None and len(all_dss) == len(source.source_datasets) and len(all_dss) > 1
    try:
        with warnings.catch_warnings():
            # highdicom quotes the patient's name in this warning: never let it reach a log
            warnings.filterwarnings("ignore", message=".*person name.*")
            built_fast = fast and one_per_slice and len(planes) > 2
            if built_fast:
                seg = _fast_segmentation(sources, planes, common)
            else:
                seg = hd.seg.Segmentation(source_images=sources, pixel_array=arr if keep is None else arr[keep], **common)
    except (ValueError, AttributeError, TypeError) as exc:
        raise NapariSSLError(f"cannot build the DICOM-SEG from this source series: {str(exc).splitlines()[0]}") from None
    if keep is not None or built_fast:
        _reference_whole_series(seg, all_dss, native)
    if built_fast:
        seg.invalidate_luts()  # highdicom's frame index: built from the final frames on the first read
    return seg, numbers, names_by_value


def _fast_segmentation(sources: list, planes: list[np.ndarray], common: dict):
    """The SEG highdicom builds from one single-frame source per slice, without its per-source cost.

    highdicom's constructor spends most of its time per source image and per frame (plane
    positions read back from every header, derivation references, one functional-groups item
    per frame built through pydicom's generic machinery): several seconds on a 300-slice CT.
    Here highdicom builds the SEG from the first and last slice only -- every module, code,
    description and shared functional group comes from it -- and the per-frame items, pixel
    data and frame count are then filled in for all slices exactly as its frame loop does
    (segment-major, planes in its sort order along the normal, empty frames omitted). The
    result equals highdicom's own (tests/test_seg_export.py compares them attribute by attribute).
    """
    import highdicom as hd
    from pydicom import config
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.tag import BaseTag
    from pydicom.valuerep import DS

    from .highdicom_fast.deferred_index import DeferredLutSegmentation

    n = len(planes)   # one 2-D label plane per source (views: the labelled slices are not copied)
    seg = DeferredLutSegmentation(source_images=[sources[0], sources[-1]], pixel_array=np.stack([planes[0], planes[-1]]), **common)
    template = seg.PerFrameFunctionalGroupsSequence[0]
    derivation_item = template.DerivationImageSequence[0]
    derivation_code = derivation_item.DerivationCodeSequence[0]
    src_item = derivation_item.SourceImageSequence[0]
    purpose_code = src_item.PurposeOfReferenceCodeSequence[0]
    preserved = src_item.SpatialLocationsPreserved
    per_frame_segment = "SegmentIdentificationSequence" in template
    labelmap = str(seg.SegmentationType) == "LABELMAP"

    # highdicom's plane order: ours or reversed (a regular stack is monotonic along the normal)
    first_pos = [float(v) for v in template.PlanePositionSequence[0].ImagePositionPatient]
    first_is_ours = np.allclose(first_pos, [float(v) for v in sources[0].ImagePositionPatient], atol=1e-4)
    dim = template.FrameContentSequence[0].DimensionIndexValues
    first_index = int(dim if isinstance(dim, int) else dim[-1])
    order = list(range(n)) if (first_is_ours == (first_index == 1)) else list(range(n - 1, -1, -1))
    position_index = {plane: k + 1 for k, plane in enumerate(order)}

    def elem(tag: int, vr: str, val: Any) -> DataElement:
        # values taken from validated headers or built here: skip pydicom's per-value validation
        return DataElement(tag, vr, val, validation_mode=config.IGNORE)

    def dataset(*elems: DataElement) -> Dataset:
        return Dataset({BaseTag(e.tag): e for e in elems})   # pydicom's dict constructor: no per-add bookkeeping

    # as hd.PlanePositionSequence(PATIENT, image_position=...) builds them
    plane_positions = [
        Sequence([dataset(elem(0x00200032, "DS", [DS(v, auto_format=True) for v in ds.ImagePositionPatient]))])
        for ds in sources
    ]

    # Items that do not change from frame to frame are built once and shared, as highdicom shares
    # its code items (the file encoder then encodes each shared item once).
    derivations = []
    for ds in sources:
        ref = dataset(
            elem(0x00081150, "UI", value(ds, "SOPClassUID")),         # ReferencedSOPClassUID
            elem(0x00081155, "UI", value(ds, "SOPInstanceUID")),      # ReferencedSOPInstanceUID
            elem(0x0040A170, "SQ", Sequence([purpose_code])),         # PurposeOfReferenceCodeSequence
            elem(0x0028135A, "CS", preserved),                        # SpatialLocationsPreserved
        )
        item = dataset(
            elem(0x00089215, "SQ", Sequence([derivation_code])),      # DerivationCodeSequence
            elem(0x00082112, "SQ", Sequence([ref])),                  # SourceImageSequence
        )
        derivations.append(Sequence([item]))
    identifications: dict[int, Sequence] = {}

    def frame_item(plane: int, dim: list[int], segment: Optional[int]) -> Dataset:
        elems = [
            elem(0x00209111, "SQ", Sequence([dataset(elem(0x00209157, "UL", dim))])),  # FrameContent: DimensionIndexValues
            elem(0x00209113, "SQ", plane_positions[plane]),                           # PlanePositionSequence
            elem(0x00089124, "SQ", derivations[plane]),                               # DerivationImageSequence
        ]
        if segment is not None:
            if segment not in identifications:
                identifications[segment] = Sequence([dataset(elem(0x0062000B, "US", int(segment)))])  # ReferencedSegmentNumber
            elems.append(elem(0x0062000A, "SQ", identifications[segment]))         # SegmentIdentificationSequence
        return dataset(*elems)

    items = []
    if labelmap:
        dtype = np.uint8 if int(seg.BitsAllocated) == 8 else np.dtype("<u2")
        stored_planes = [p for p in order if planes[p].any()]
        items = [frame_item(p, [position_index[p]], None) for p in stored_planes]
        pixel_data = b"".join(planes[p].astype(dtype, copy=False) for p in stored_planes)   # one copy, straight into the bytes
    else:
        numbers = [int(d.SegmentNumber) for d in seg.SegmentSequence]
        chunks = []
        byte_aligned = planes[0].size % 8 == 0
        # One reused mask buffer, packed at once when the frame is kept: a fresh 0.25 MB mask per
        # slice and segment, hundreds of them kept until the end, cost more in page faults than
        # the comparisons themselves.
        buf = np.empty(planes[0].shape, dtype=bool)
        for k, number in enumerate(numbers):
            for p in order:
                m = np.equal(planes[p], number, out=buf)
                if m.any():
                    items.append(frame_item(p, [k + 1, position_index[p]], number if per_frame_segment else None))
                    # frames ending on a byte are packed on their own; otherwise the bits run on across frames
                    chunks.append(np.packbits(m, axis=None, bitorder="little") if byte_aligned else m.copy())
        if byte_aligned:
            pixel_data = b"".join(chunks)
        else:
            pixel_data = np.packbits(np.stack(chunks).ravel(), bitorder="little").tobytes()
    if len(pixel_data) % 2:
        pixel_data += b"0"  # highdicom's padding byte
    seg.PerFrameFunctionalGroupsSequence = items
    seg.NumberOfFrames = len(items)
    seg.PixelData = pixel_data

    # Dimension Organization Type, decided as highdicom does: "3D" only without several segment
    # channels (LABELMAP, or a single segment) and when the stored planes are evenly spaced.
    stored = [p for p in range(n) if planes[p].any()]
    spacing = None
    if len(stored) > 1 and (labelmap or len(seg.SegmentSequence) == 1):
        spacing, _ = hd.spatial.get_volume_positions(
            image_positions=[[float(v) for v in sources[p].ImagePositionPatient] for p in stored],
            image_orientation=seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
            sort=False,
        )
    if spacing is not None and spacing > 0.0:
        seg.DimensionOrganizationType = "3D"
    elif "DimensionOrganizationType" in seg:
        del seg.DimensionOrganizationType
    return seg


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


def _reference_whole_series(seg, dss: list, native: np.ndarray) -> None:
    """After building from the labelled slices only: reference every source instance (as highdicom
    does when given them all) and keep the series' slice spacing for readers filling the gaps."""
    from pydicom import config
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    from pydicom.tag import BaseTag

    refs = []
    for ds in dss:
        refs.append(Dataset({
            BaseTag(0x00081150): DataElement(0x00081150, "UI", value(ds, "SOPClassUID"), validation_mode=config.IGNORE),  # ReferencedSOPClassUID
            BaseTag(0x00081155): DataElement(0x00081155, "UI", value(ds, "SOPInstanceUID"), validation_mode=config.IGNORE),  # ReferencedSOPInstanceUID
        }))
    seg.SourceImageSequence = refs
    series = seg.ReferencedSeriesSequence[0]
    series.ReferencedInstanceSequence = refs
    # highdicom infers the spacing from the positions it was given: none, or a made-up 1.0, when
    # the labelled slices are not evenly spaced or are a single slice. The series' own spacing
    # (its positions were checked to be regular by _native_sources) is the right one.
    from pydicom.valuerep import format_number_as_ds

    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.SpacingBetweenSlices = format_number_as_ds(float(np.linalg.norm(native[:3, 0])))


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection while the SEG is built and written.

    Building allocates hundreds of thousands of small acyclic objects (highdicom's DICOM-standard
    tables, the first time in a process: a 22 MB JSON; then the per-frame items), and each full
    collection walks them all again: about a third of the export time on a 300-slice series.
    Reference counting still frees everything; cycles are collected after, as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def write_dataset_atomic(ds, path: str) -> None:
    """Write a pydicom dataset to `path` via a temp file in the same folder, then rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise NapariSSLError(f"output folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".dcm")
    os.close(fd)
    try:
        from ..dicom.pydicom_fast import encode_file

        chunks = encode_file(ds)   # the bytes pydicom's writer gives, several times faster on large SEGs
        if chunks is None:
            ds.save_as(tmp, enforce_file_format=True)
        else:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
    path = None
    with _gc_paused():
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
