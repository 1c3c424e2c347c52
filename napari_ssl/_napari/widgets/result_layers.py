"""Results arriving in the viewer without freezing it, and readable at a glance.

Reading a full-size CT's prediction from disk takes a second or more, and creating a napari layer
costs 100-400 ms of event-loop time on a CPU with software OpenGL. So:

* arrays are read (or computed) in a worker thread, never in the event loop;
* layers are created or updated one per event-loop turn (:class:`StagedSteps`), so the viewer
  answers between them;
* new layers go *under* the annotations layer (the one the user paints on).

And so the image stays readable under the results:

* the prediction is an outline (``contour``) in the class colours, not an opaque fill;
* the uncertainty leaves confident pixels fully transparent (:func:`uncertainty_colormap`) and
  sits under the prediction;
* "Fill between slices" (the instant, training-free completion) is a translucent fill.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
from qtpy.QtCore import QObject, QTimer

UNCERTAINTY_LEVELS = 255  # uncertainty travels and is shown as uint8: 0 = certain, 255 = maximal entropy
# normalised entropy below this is drawn fully transparent: a foreground probability above ~0.96 (2 classes)
CONFIDENT_BELOW = 0.25
_EXECUTOR: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """One background thread for reading results and running fill-between (the work is I/O or native code)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-ssl-results")
    return _EXECUTOR


def uncertainty_colormap():
    """Transparent where the model is confident, then orange to magenta, more opaque as doubt grows."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=[[1.0, 0.6, 0.0, 0.0], [1.0, 0.6, 0.0, 0.0], [1.0, 0.5, 0.0, 0.35], [1.0, 0.0, 1.0, 0.7]],
                    controls=[0.0, CONFIDENT_BELOW, CONFIDENT_BELOW + 0.15, 1.0], name="napari-ssl uncertainty")


def outline_width(shape) -> int:
    """Contour thickness in voxels: 1 on small crops, 2 on a 512 x 512 slice (visible when zoomed out)."""
    return max(1, int(round(max(shape[-2:]) / 256)))


def load_npy(path: str) -> np.ndarray:
    return np.load(path, allow_pickle=False)


class StagedSteps(QObject):
    """Run callables one per event-loop turn (a 0 ms single-shot timer between them)."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._steps: list[Callable[[], Any]] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._next)

    def add(self, *steps: Callable[[], Any]) -> None:
        self._steps.extend(steps)
        if not self._timer.isActive():
            self._timer.start()

    @property
    def busy(self) -> bool:
        return bool(self._steps) or self._timer.isActive()

    def _next(self) -> None:
        if not self._steps:
            return
        step = self._steps.pop(0)
        try:
            step()
        finally:
            if self._steps:
                self._timer.start()


class BackgroundCall(QObject):
    """Run ``fn(*args)`` in the results thread; call ``done(result)`` or ``failed(message)`` in the GUI thread.

    The future is polled by a timer (no cross-thread Qt signals needed)."""

    def __init__(self, fn: Callable, args: tuple, done: Callable[[Any], None], failed: Callable[[str], None],
                 parent: QObject | None = None, poll_ms: int = 25):
        super().__init__(parent)
        self._done, self._failed = done, failed
        self._running = True
        self.future: Future = executor().submit(fn, *args)
        self._timer = QTimer(self)
        self._timer.setInterval(poll_ms)
        self._timer.timeout.connect(self._poll)
        self._timer.start()

    @property
    def running(self) -> bool:
        """Until the result has been handed to ``done`` / ``failed``."""
        return self._running

    def _poll(self) -> None:
        if not self.future.done():
            return
        self._timer.stop()
        exc = self.future.exception()
        try:
            if exc is not None:
                self._failed(str(exc) or type(exc).__name__)
            else:
                self._done(self.future.result())
        finally:
            self._running = False


def insert_below(viewer, layer, above) -> None:
    """Add `layer` just under `above` (the annotations) when it is in the viewer, else on top."""
    if above is not None and above in viewer.layers:
        viewer.layers.insert(viewer.layers.index(above), layer)
    else:
        viewer.layers.append(layer)


def read_prediction_arrays(labels_path: str, uncertainty_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Both result arrays, uncertainty as uint8 (0..UNCERTAINTY_LEVELS), in the worker thread."""
    labels = load_npy(labels_path)
    unc = load_npy(uncertainty_path)
    if unc.dtype != np.uint8:
        unc = np.clip(np.rint(unc * UNCERTAINTY_LEVELS), 0, UNCERTAINTY_LEVELS).astype(np.uint8)
    return labels, unc
