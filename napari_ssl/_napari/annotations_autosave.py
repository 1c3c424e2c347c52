"""Annotations saved to disk while the user paints, so a crash loses at most a few seconds.

Every paint or data change of the Labels layer (re)starts a short timer; when it fires, the labels are
copied (in the event loop, a fast memcpy) and written by a background thread as NIfTI in the image's
geometry (usable directly as ``napari-ssl finetune --labels``) plus ``annotations.json`` (class names,
colours, slices marked annotated-empty, the image it belongs to). Both writes are atomic (temp, then
rename), so the files on disk are always a complete earlier or later state, never a torn one.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer

LABELS_FILE = "labels.nii.gz"
META_FILE = "annotations.json"


def annotations_home() -> Path:
    from ..settings import annotations_dir

    return annotations_dir()


def autosave_folder(image_name: str, identity: str = "") -> Path:
    """One folder per image: its (safe) layer name plus a short hash of its series UID or path."""
    from .widgets.common import safe_name

    tag = hashlib.sha1((identity or image_name).encode()).hexdigest()[:8]
    return annotations_home() / f"{safe_name(image_name, 'image')}-{tag}"


def write_annotations(folder: str | os.PathLike, labels: np.ndarray, affine: np.ndarray, meta: dict[str, Any]) -> None:
    from ..io.atomic import atomic_write_bytes
    from ..io.nifti import write_itk_volume

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_itk_volume(np.asarray(labels), np.asarray(affine, dtype=float), str(folder / LABELS_FILE))
    atomic_write_bytes(folder / META_FILE, json.dumps({**meta, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                                      indent=2, default=str).encode())


def read_annotations(folder: str | os.PathLike) -> tuple[np.ndarray, dict] | None:
    """(labels array z,y,x, meta) from an autosave folder, or None when there is none."""
    folder = Path(folder)
    if not (folder / LABELS_FILE).is_file() or not (folder / META_FILE).is_file():
        return None
    from ..io.nifti import read_itk_volume
    from ..io.orientation import reorient_array

    vol = read_itk_volume(str(folder / LABELS_FILE))
    meta = json.loads((folder / META_FILE).read_text())
    arr = vol.array
    target = meta.get("affine")
    if target is not None:  # back onto the grid it was painted on (the reader may reorder axes)
        arr = reorient_array(arr, vol.affine, np.asarray(target, dtype=float))
    return np.ascontiguousarray(arr), meta


class AnnotationAutosave(QObject):
    """Debounced, atomic autosave of one Labels layer. ``meta_fn()`` returns the JSON sidecar's content."""

    def __init__(self, layer, folder: str | os.PathLike, affine: np.ndarray, meta_fn, debounce_ms: int = 1500,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.layer = layer
        self.folder = Path(folder)
        self.affine = np.asarray(affine, dtype=float)
        self.meta_fn = meta_fn
        self.saves = 0
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._again = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(debounce_ms)
        self._timer.timeout.connect(self.save_now)
        layer.events.paint.connect(self.schedule)
        layer.events.data.connect(self.schedule)

    def schedule(self, *args) -> None:
        self._timer.start()  # restarts: one save after the user pauses

    def save_now(self) -> None:
        self._timer.stop()
        if self._thread is not None and self._thread.is_alive():
            self._again = True  # one more save once the running one ends
            self._timer.start()
            return
        snapshot = np.array(self.layer.data, copy=True)
        meta = dict(self.meta_fn())
        meta["affine"] = self.affine.tolist()
        self._thread = threading.Thread(target=self._write, args=(snapshot, meta), daemon=False,
                                        name="napari-ssl-autosave")
        self._thread.start()

    def _write(self, snapshot: np.ndarray, meta: dict) -> None:
        try:
            write_annotations(self.folder, snapshot, self.affine, meta)
            self.saves += 1
            self.last_error = None
        except Exception as exc:  # noqa: BLE001 - reported by the widget, never raised in a thread
            self.last_error = f"{type(exc).__name__}: {exc}"

    def save_pending(self) -> None:
        """Start a pending save now, in the background; never waits (the GUI stays free)."""
        if self._timer.isActive() or self._again:
            self.save_now()

    def flush(self, timeout: float = 30.0) -> None:
        """Save now if a save is pending and wait for it (on close, before training)."""
        if self._timer.isActive() or self._again:
            self._again = False
            if self._thread is not None:
                self._thread.join(timeout)
            self.save_now()
        if self._thread is not None:
            self._thread.join(timeout)

    def disconnect_layer(self) -> None:
        for ev in (self.layer.events.paint, self.layer.events.data):
            try:
                ev.disconnect(self.schedule)
            except Exception:
                pass
