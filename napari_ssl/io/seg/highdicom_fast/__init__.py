"""Every DICOM-SEG speed-up that reaches into highdicom's internals, in one place.

What each part replaces in highdicom, and why (a 320-slice 512x512 CT, 3-class mask; ``bench_seg_export``,
benchmarks/RESULTS.md "DICOM-SEG export": export / read of the same series 1.25x before the last three parts,
0.77x after, on a quiet machine; highdicom's own constructor alone took several seconds on such a series):

* :func:`fast_segmentation` (:mod:`.per_frame`) -- ``hd.seg.Segmentation(...)`` on one single-frame source per
  slice: highdicom builds the SEG from the first and last slice only, the per-frame functional groups, pixel
  data and frame count are filled in here as its frame loop does. Relies on highdicom's frame order (segment-
  major, planes sorted along the normal, empty frames omitted) and its item layout. ``fast=False`` in
  :func:`napari_ssl.io.seg.write.build_segmentation` leaves it all to highdicom.
* :func:`reference_whole_series` -- the references to every source instance highdicom writes when given them
  all, after building from the labelled slices only.
* :class:`DeferredLutSegmentation` (:mod:`.deferred_index`) -- overrides highdicom's private ``_build_luts``
  (its in-memory SQLite frame index, built at construction) so it is built on first read instead of twice per
  export (about 0.1 s of each export of a 300-slice series; the write and STOW paths never read).
* :func:`install_lazy_module_table` (:mod:`.module_table`) -- fills the cache of highdicom's private
  ``_standard_utils.get_module_attribute_map()`` with a mapping parsed one module at a time from the same
  22 MB JSON file (0.2-0.4 s less on the first SEG of each process); falls back to highdicom's own parse on any
  other layout or loader.
* :func:`gc_paused` -- no cyclic garbage collection while a SEG is built and written (about a third of the
  export time on a 300-slice series went to collections walking highdicom's tables and the frame items).

Re-check after a highdicom upgrade (each compares against highdicom's own result)::

    .venv/bin/python -m pytest tests/test_seg_export.py -q -k "fast_build or lazy_standard_table or frame_index or pydicoms_bytes"
    .venv/bin/python -m pytest tests/test_seg_export.py tests/test_seg_read.py tests/test_seg_real_series.py -q
    .venv/bin/python benchmarks/bench_seg_export.py --repeats 5     # the speed ratio, against reading the series

``test_fast_build_equals_highdicoms_own`` compares the fast SEG with ``fast=False`` attribute by attribute and
pixel for pixel; ``test_lazy_standard_table_equals_highdicoms_own`` the lazy table with highdicom's parse.
If one fails, set ``fast=False`` (or drop the part) until the part is adapted.

Callers import this package lazily (it imports highdicom, which is heavy).
"""
from .deferred_index import DeferredLutSegmentation
from .gc_pause import gc_paused
from .module_table import install as install_lazy_module_table
from .per_frame import fast_segmentation, reference_whole_series

__all__ = ["DeferredLutSegmentation", "fast_segmentation", "gc_paused", "install_lazy_module_table", "reference_whole_series"]
