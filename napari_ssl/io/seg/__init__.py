"""DICOM-SEG: read (:func:`read_segmentation`) and write (:func:`write_segmentation`).

* :mod:`.read` -- SEG -> labels Volumes, geometry from the SEG itself;
* :mod:`.on_source` -- a SEG placed on its source series' full grid (cropped SEGs, gaps, tilts), and finding that series;
* :mod:`.write` -- labels + source series -> SEG (highdicom), written atomically;
* :mod:`.source_headers` -- the source series' headers made acceptable to highdicom (one orientation, Type 2 defaults);
* :mod:`.codes` -- SNOMED CT category/type codes of common structures;
* :mod:`.highdicom_fast` -- every speed-up that reaches into highdicom's internals, what it replaces and how to re-check it.
"""
from __future__ import annotations

from .on_source import place_on_grid
from .read import SEG_SOP_CLASSES, is_segmentation_file, read_segmentation
from .write import build_segmentation, write_segmentation

__all__ = ["SEG_SOP_CLASSES", "is_segmentation_file", "read_segmentation", "place_on_grid", "write_segmentation", "build_segmentation"]
