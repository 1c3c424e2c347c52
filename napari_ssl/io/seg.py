"""DICOM-SEG: read (:func:`read_segmentation`) and write (:func:`write_segmentation`).

Implementation split: seg_read.py (SEG -> labels Volumes), seg_write.py (labels + source
series -> SEG), seg_codes.py (SNOMED CT codes of common structures).
"""
from __future__ import annotations

from .seg_read import SEG_SOP_CLASSES, is_segmentation_file, read_segmentation

__all__ = ["SEG_SOP_CLASSES", "is_segmentation_file", "read_segmentation"]
