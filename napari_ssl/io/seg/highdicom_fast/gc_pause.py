"""No cyclic garbage collection while a SEG is built and written."""
from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def gc_paused():
    """No cyclic garbage collection inside the block.

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
