"""The SEG highdicom builds from one single-frame source per slice, without its per-source cost.

highdicom's constructor spends most of its time per source image and per frame (plane positions read back
from every header, derivation references, one functional-groups item per frame built through pydicom's
generic machinery): several seconds on a 300-slice CT. Here highdicom builds the SEG from the first and last
slice only -- every module, code, description and shared functional group comes from it -- and the
per-frame items, pixel data and frame count are then filled in for all slices exactly as its frame loop
does (segment-major, planes in its sort order along the normal, empty frames omitted).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.valuerep import DS, format_number_as_ds

from ...dicom.pydicom_fast import dataset, element, value
from .deferred_index import DeferredLutSegmentation


def fast_segmentation(sources: list, planes: list[np.ndarray], common: dict):
    """highdicom's ``Segmentation(source_images=sources, pixel_array=stack(planes), **common)``, built from
    the first and last source, the per-frame part filled in here (see the module docstring). `planes`: one
    2-D label plane per source, views (the labelled slices are not copied)."""
    seg = DeferredLutSegmentation(source_images=[sources[0], sources[-1]], pixel_array=np.stack([planes[0], planes[-1]]), **common)
    template = seg.PerFrameFunctionalGroupsSequence[0]
    order = _plane_order(template, sources)
    frames = _FrameItems(template, sources, order)
    if str(seg.SegmentationType) == "LABELMAP":
        items, pixel_data = _labelmap_frames(seg, planes, order, frames)
    else:
        items, pixel_data = _binary_frames(seg, planes, order, frames)
    if len(pixel_data) % 2:
        pixel_data += b"0"  # highdicom's padding byte
    seg.PerFrameFunctionalGroupsSequence = items
    seg.NumberOfFrames = len(items)
    seg.PixelData = pixel_data
    _dimension_organization(seg, sources, planes)
    return seg


def _plane_order(template: Dataset, sources: list) -> list[int]:
    """highdicom's plane order: ours or reversed (a regular stack is monotonic along the normal)."""
    n = len(sources)
    first_pos = [float(v) for v in template.PlanePositionSequence[0].ImagePositionPatient]
    first_is_ours = np.allclose(first_pos, [float(v) for v in sources[0].ImagePositionPatient], atol=1e-4)
    dim = template.FrameContentSequence[0].DimensionIndexValues
    first_index = int(dim if isinstance(dim, int) else dim[-1])
    return list(range(n)) if (first_is_ours == (first_index == 1)) else list(range(n - 1, -1, -1))


class _FrameItems:
    """The per-frame functional-groups items as highdicom writes them. Items that do not change from frame
    to frame are built once and shared, as highdicom shares its code items (the file encoder then encodes
    each shared item once)."""

    def __init__(self, template: Dataset, sources: list, order: list[int]):
        derivation_item = template.DerivationImageSequence[0]
        derivation_code = derivation_item.DerivationCodeSequence[0]
        src_item = derivation_item.SourceImageSequence[0]
        purpose_code = src_item.PurposeOfReferenceCodeSequence[0]
        preserved = src_item.SpatialLocationsPreserved
        self.per_frame_segment = "SegmentIdentificationSequence" in template
        self.position_index = {plane: k + 1 for k, plane in enumerate(order)}
        # as hd.PlanePositionSequence(PATIENT, image_position=...) builds them
        self._positions = [
            Sequence([dataset(element(0x00200032, "DS", [DS(v, auto_format=True) for v in ds.ImagePositionPatient]))])
            for ds in sources
        ]
        self._derivations = [Sequence([_derivation(ds, derivation_code, purpose_code, preserved)]) for ds in sources]
        self._identifications: dict[int, Sequence] = {}

    def item(self, plane: int, dim: list[int], segment: Optional[int]) -> Dataset:
        elems = [
            element(0x00209111, "SQ", Sequence([dataset(element(0x00209157, "UL", dim))])),  # FrameContent: DimensionIndexValues
            element(0x00209113, "SQ", self._positions[plane]),                              # PlanePositionSequence
            element(0x00089124, "SQ", self._derivations[plane]),                            # DerivationImageSequence
        ]
        if segment is not None:
            if segment not in self._identifications:
                self._identifications[segment] = Sequence([dataset(element(0x0062000B, "US", int(segment)))])  # ReferencedSegmentNumber
            elems.append(element(0x0062000A, "SQ", self._identifications[segment]))      # SegmentIdentificationSequence
        return dataset(*elems)


def _derivation(ds, derivation_code: Dataset, purpose_code: Dataset, preserved) -> Dataset:
    """One DerivationImageSequence item referencing the source `ds`."""
    ref = dataset(
        element(0x00081150, "UI", value(ds, "SOPClassUID")),         # ReferencedSOPClassUID
        element(0x00081155, "UI", value(ds, "SOPInstanceUID")),      # ReferencedSOPInstanceUID
        element(0x0040A170, "SQ", Sequence([purpose_code])),         # PurposeOfReferenceCodeSequence
        element(0x0028135A, "CS", preserved),                        # SpatialLocationsPreserved
    )
    return dataset(
        element(0x00089215, "SQ", Sequence([derivation_code])),      # DerivationCodeSequence
        element(0x00082112, "SQ", Sequence([ref])),                  # SourceImageSequence
    )


def _labelmap_frames(seg, planes: list[np.ndarray], order: list[int], frames: _FrameItems) -> tuple[list[Dataset], bytes]:
    """LABELMAP: one frame per stored (non-empty) plane, 8 or 16 bits."""
    dtype = np.uint8 if int(seg.BitsAllocated) == 8 else np.dtype("<u2")
    stored_planes = [p for p in order if planes[p].any()]
    items = [frames.item(p, [frames.position_index[p]], None) for p in stored_planes]
    pixel_data = b"".join(planes[p].astype(dtype, copy=False) for p in stored_planes)   # one copy, straight into the bytes
    return items, pixel_data


def _binary_frames(seg, planes: list[np.ndarray], order: list[int], frames: _FrameItems) -> tuple[list[Dataset], bytes]:
    """BINARY: one 1-bit frame per segment and non-empty plane, segment-major."""
    numbers = [int(d.SegmentNumber) for d in seg.SegmentSequence]
    items, chunks = [], []
    byte_aligned = planes[0].size % 8 == 0
    # One reused mask buffer, packed at once when the frame is kept: a fresh 0.25 MB mask per
    # slice and segment, hundreds of them kept until the end, cost more in page faults than
    # the comparisons themselves.
    buf = np.empty(planes[0].shape, dtype=bool)
    for k, number in enumerate(numbers):
        for p in order:
            m = np.equal(planes[p], number, out=buf)
            if m.any():
                items.append(frames.item(p, [k + 1, frames.position_index[p]], number if frames.per_frame_segment else None))
                # frames ending on a byte are packed on their own; otherwise the bits run on across frames
                chunks.append(np.packbits(m, axis=None, bitorder="little") if byte_aligned else m.copy())
    if byte_aligned:
        return items, b"".join(chunks)
    return items, np.packbits(np.stack(chunks).ravel(), bitorder="little").tobytes()


def _dimension_organization(seg, sources: list, planes: list[np.ndarray]) -> None:
    """Dimension Organization Type, decided as highdicom does: "3D" only without several segment
    channels (LABELMAP, or a single segment) and when the stored planes are evenly spaced."""
    import highdicom as hd

    labelmap = str(seg.SegmentationType) == "LABELMAP"
    stored = [p for p in range(len(planes)) if planes[p].any()]
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


def reference_whole_series(seg, dss: list, native: np.ndarray) -> None:
    """After building from the labelled slices only: reference every source instance (as highdicom
    does when given them all) and keep the series' slice spacing for readers filling the gaps."""
    refs = [
        dataset(
            element(0x00081150, "UI", value(ds, "SOPClassUID")),     # ReferencedSOPClassUID
            element(0x00081155, "UI", value(ds, "SOPInstanceUID")),  # ReferencedSOPInstanceUID
        )
        for ds in dss
    ]
    seg.SourceImageSequence = refs
    series = seg.ReferencedSeriesSequence[0]
    series.ReferencedInstanceSequence = refs
    # highdicom infers the spacing from the positions it was given: none, or a made-up 1.0, when
    # the labelled slices are not evenly spaced or are a single slice. The series' own spacing
    # (its positions were checked to be regular by the caller) is the right one.
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.SpacingBetweenSlices = format_number_as_ds(float(np.linalg.norm(native[:3, 0])))
