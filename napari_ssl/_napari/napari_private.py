"""Every use of napari's private API, in one place.

napari marks these as private (a FutureWarning on access from a plugin) and may change them; each use here has a
fallback that keeps the plugin working, only less smoothly, when one disappears. When napari is upgraded, re-check
with tests/test_widgets_result_layers.py (layers inserted without taking the selection) and tests/test_widgets.py
(a running job named in the quit dialog, stopped when the window closes).

- ``LayerList._activate_on_insert``: off while a result layer is inserted under the annotations, so the
  annotations stay the active layer (each switch rebuilds the layer-controls panel: 100s of ms on a full CT).
  Without it the selection is put back after the insert.
- ``Window._register_task_status`` / ``_update_task_status``: napari's task registry, so the quit dialog names a
  running job and can stop it. Without it, quitting the app (aboutToQuit), the process exiting (atexit) and the
  child's watch of its parent still stop the job.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional


def insert_keeping_selection(layers, index: int, layer) -> None:
    """``layers.insert(index, layer)`` without making `layer` the active one (when napari lets us)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            activate = layers._activate_on_insert
            layers._activate_on_insert = False
        except (AttributeError, TypeError):
            activate = None
        try:
            layers.insert(index, layer)
        finally:
            if activate is not None:
                layers._activate_on_insert = activate


def register_task(window, label: str, cancel: Callable[[], bool]) -> Optional[object]:
    """Register a running job with napari's task registry; its id, or None where there is no registry."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            register = getattr(window, "_register_task_status", None)
            if register is None:
                return None
            from napari.utils.task_status import Status

            return register("napari-ssl", Status.BUSY, label, cancel_callback=cancel)
    except Exception:
        return None


def finish_task(window, task_id, ok: bool, label: str) -> None:
    """Mark a registered job completed (`ok`) or failed."""
    try:
        from napari.utils.task_status import Status

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            window._update_task_status(task_id, Status.COMPLETED if ok else Status.FAILED, label)
    except Exception:
        pass
