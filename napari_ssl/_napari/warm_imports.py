"""Modules that the first "Create labels layer" would otherwise import inside the event loop.

napari's Labels layer pulls in pandas (its features table), scikit-image and scipy.linalg; the annotations'
autosave and fill between pull in SimpleITK. Imported there, they froze the viewer for 0.3-0.5 s of the click
(more on a loaded machine); imported in the results thread when the Annotate widget is made, they are ready."""
from __future__ import annotations

import gc
import importlib

MODULES = ("pandas", "SimpleITK", "scipy.linalg", "skimage.color", "skimage.color.colorconv", "skimage.exposure", "skimage.util",
           "napari_ssl.io.atomic", "napari_ssl.active.fill_between")


_FROZEN = False


def warm_imports() -> list[str]:
    """Import MODULES; returns those that failed (an optional one missing is not an error here)."""
    global _FROZEN
    failed = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a warm-up only: the real import reports it where it is needed
            failed.append(name)
    # The viewer's long-lived objects (napari, Qt, these modules) out of the cyclic collector's sight: its full
    # collections scanned them all, 34-306 ms with the GIL held (a frozen tick); now they scan only newer objects.
    # Once per process, at start-up: a later freeze would also pin whatever the session has made and dropped since
    # (a closed viewer's reference cycles), which the collector could then never free
    if not _FROZEN:
        gc.freeze()
        _FROZEN = True
    return failed
