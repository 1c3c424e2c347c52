"""Results arriving in the viewer without freezing it, and readable at a glance.

Reading a full-size CT's prediction from disk takes a second or more, and creating a napari layer
costs 100-400 ms of event-loop time on a CPU with software OpenGL. So:

* arrays are read (or computed) in a worker thread, never in the event loop;
* layers are created or updated one per event-loop turn (:class:`StagedSteps`), so the viewer
  answers between them;
* new layers go *under* the annotations layer (the one the user paints on), without taking the
  selection from it (switching the layer controls alone cost 100-300 ms);
* the result layers are created ahead of time (:func:`prepare`), when the annotations layer is made:
  drawn once (for their shaders) then hidden, holding zeros (lazily allocated: no memory until read), under a "waiting" name, one per
  event-loop turn. napari builds a layer's controls and vispy visuals at once, 0.2-0.9 s on a CPU with
  software OpenGL, and the user expects that wait when asking for a labels layer, not when clicking
  Train or when a result arrives; a result only swaps its data into the hidden layer, renames it and
  shows it (:func:`claim`), each its own turn (tens of milliseconds).

And so the image stays readable under the results:

* the prediction is an outline (``contour``) in the class colours, not an opaque fill;
* the uncertainty leaves confident pixels fully transparent (:func:`uncertainty_colormap`), sits under
  the prediction, and arrives hidden (the widget says where it is);
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


def same_layer(a, b) -> bool:
    """`a is b` for layers, also when one of them comes through napari's plugin proxy (a different object)."""
    return a is not None and b is not None and getattr(a, "unique_id", a) == getattr(b, "unique_id", b)


def insert_below(viewer, layer, above) -> None:
    """Add `layer` just under `above` (the annotations) when it is in the viewer, else on top.

    With `above` there and active, it stays the active layer: napari would make the new layer active, then the
    widget would make the annotations active again, each switch rebuilding the layer controls panel. (napari's
    switch for that is private: napari_private.py; without it, the selection is put back afterwards.)"""
    layers = viewer.layers
    if above is None or above not in layers:
        layers.append(layer)
        return
    keep = same_layer(layers.selection.active, above)
    if keep:
        from ..napari_private import insert_keeping_selection

        insert_keeping_selection(layers, layers.index(above), layer)
    else:
        layers.insert(layers.index(above), layer)
    if keep and not same_layer(layers.selection.active, above):
        layers.selection.active = above


# ----------------------------------------------------------------------------- layers made ahead of time
PLACEHOLDER = "napari_ssl_placeholder"  # metadata key of a layer made ahead of time, not holding a result yet
WAITING_SUFFIX = " (waiting for results)"


def is_placeholder(layer) -> bool:
    return bool(getattr(layer, "metadata", {}).get(PLACEHOLDER))


def waiting_name(name: str) -> str:
    return name + WAITING_SUFFIX


def new_layer(kind: str, data, *, name: str, geo: dict, metadata: dict | None = None, colormap=None,
              visible: bool = True):
    """A result layer as the user sees it: "prediction" (class outlines), "uncertainty" (transparent where
    confident) or "fill between" (translucent fill). `colormap`: the class colours (labels kinds)."""
    import napari.layers

    if kind == "uncertainty":
        return napari.layers.Image(data, name=name, colormap=uncertainty_colormap(), blending="translucent", opacity=0.8,
                                   contrast_limits=(0, UNCERTAINTY_LEVELS), visible=visible,
                                   metadata={"napari_ssl_preview": True, "uncertainty_scale": 1.0 / UNCERTAINTY_LEVELS,
                                             **(metadata or {})}, **geo)
    if kind not in ("prediction", "fill between"):
        raise ValueError(kind)
    layer = napari.layers.Labels(data, name=name, opacity=1.0 if kind == "prediction" else 0.35, metadata=metadata or {},
                                 colormap=colormap, visible=visible, **geo)
    if kind == "prediction":
        layer.contour = outline_width(np.shape(data))
    return layer


def prepare(viewer, staged: StagedSteps, below, image, wanted: list[tuple[str, str, Any, dict]]) -> None:
    """Create, one per event-loop turn, a hidden placeholder for each result layer not in the viewer yet.

    `wanted`: (final name, kind, dtype, new_layer keywords) for each; the placeholders hold zeros of the image's
    shape and sit under `below` (the annotations)."""
    shape = tuple(np.shape(image.data))
    geo = {"scale": tuple(image.scale), "translate": tuple(image.translate)}
    executor().submit(int)  # its thread started now, not at Train (Thread.start waits for the thread to run)

    def make(name: str, kind: str, dtype, kw: dict) -> None:
        if name in viewer.layers or waiting_name(name) in viewer.layers or image not in viewer.layers:
            return
        meta = dict(kw.pop("metadata", None) or {})
        meta[PLACEHOLDER] = True
        # shown for its first draw (zeros: transparent), then hidden: vispy compiles a layer's shaders when it is
        # first drawn, 0.1-0.5 s with software OpenGL, which would otherwise come when the result is shown
        layer = new_layer(kind, np.zeros(shape, dtype), name=waiting_name(name), geo=geo, metadata=meta,
                          visible=True, **kw)
        insert_below(viewer, layer, below)
        QTimer.singleShot(HIDE_AFTER_MS, lambda: _hide_placeholder(layer))

    for name, kind, dtype, kw in wanted:
        if name not in viewer.layers and waiting_name(name) not in viewer.layers:
            staged.add(lambda a=(name, kind, dtype, dict(kw)): make(*a))


HIDE_AFTER_MS = 300  # a placeholder's first draw happens in this time (the canvas repaints at the next event-loop turns)


def _hide_placeholder(layer) -> None:
    if is_placeholder(layer):
        layer.visible = False


def claim(viewer, name: str, data):
    """Put a result into the layer named `name`, or into its placeholder (then renamed to `name`); returns
    the layer, or None when neither exists (the caller creates it). Visibility is left as it was: a
    placeholder stays hidden until the caller shows it (a separate event-loop turn)."""
    if name in viewer.layers:
        layer = viewer.layers[name]
    elif waiting_name(name) in viewer.layers:
        layer = viewer.layers[waiting_name(name)]
    else:
        return None
    layer.data = data if layer.data.dtype == data.dtype else data.astype(layer.data.dtype)
    if is_placeholder(layer):
        layer.metadata.pop(PLACEHOLDER, None)
        layer.name = name
    return layer


def read_prediction_arrays(labels_path: str, uncertainty_path: str, labels_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Both result arrays, uncertainty as uint8 (0..UNCERTAINTY_LEVELS), in the worker thread; the labels cast
    to `labels_dtype` there too (the layer's dtype: no conversion of the volume in the event loop)."""
    labels = load_npy(labels_path)
    if labels_dtype is not None and labels.dtype != np.dtype(labels_dtype):
        labels = labels.astype(labels_dtype)
    unc = load_npy(uncertainty_path)
    if unc.dtype != np.uint8:
        unc = np.clip(np.rint(unc * UNCERTAINTY_LEVELS), 0, UNCERTAINTY_LEVELS).astype(np.uint8)
    return labels, unc
