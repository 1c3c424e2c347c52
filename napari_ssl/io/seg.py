"""DICOM-SEG: read (:func:`read_segmentation`) and write (:func:`write_segmentation`).

Implementation split: seg_read.py (SEG -> labels Volumes, geometry from the SEG itself),
seg_write.py (labels + source series -> SEG with highdicom), seg_codes.py (SNOMED CT
category/type codes of common structures).
"""
from __future__ import annotations

from .seg_read import SEG_SOP_CLASSES, is_segmentation_file, place_on_grid, read_segmentation


def write_segmentation(*args, **kwargs):
    """See :func:`napari_ssl.io.seg_write.write_segmentation` (imported lazily: highdicom is heavy)."""
    from .seg_write import write_segmentation as _write

    return _write(*args, **kwargs)


def build_segmentation(*args, **kwargs):
    """See :func:`napari_ssl.io.seg_write.build_segmentation`."""
    from .seg_write import build_segmentation as _build

    return _build(*args, **kwargs)


__all__ = ["SEG_SOP_CLASSES", "is_segmentation_file", "read_segmentation", "place_on_grid", "write_segmentation", "build_segmentation"]
