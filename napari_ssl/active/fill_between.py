"""Fill between slices: the instant, training-free completion of a sparsely annotated study.

This is what 3D Slicer's "Fill between slices" does (ITK morphological contour interpolation,
Albu et al. 2008, PyPI ``itk-morphologicalcontourinterpolation``): each label is interpolated
along the slice axis between the annotated slices that hold it. It is the baseline every learned
completion is compared with, and the result the viewer shows at once while a model trains.

The user's annotation is respected: annotated slices come back exactly as drawn, annotated-empty
slices come back empty, and nothing is extrapolated beyond the outermost slices holding a label.
"""
from __future__ import annotations

import atexit
import subprocess
import sys
import threading
from typing import Optional, Sequence

import numpy as np

from ..errors import NapariSSLError

_WORKER: Optional[subprocess.Popen] = None
_LOCK = threading.Lock()


def _ensure_worker() -> subprocess.Popen:
    global _WORKER
    if _WORKER is None or _WORKER.poll() is not None:
        _WORKER = subprocess.Popen([sys.executable, "-m", "napari_ssl.active._mci_worker"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return _WORKER


def start_worker() -> None:
    """Start the worker now, without waiting (it imports ITK meanwhile: seconds, more on a loaded machine),
    so that the first fill between slices is instant. The viewer calls it when a labels layer is bound."""
    with _LOCK:
        _ensure_worker()


def _interpolate_in_worker(src: np.ndarray) -> np.ndarray:
    """Run _mci_worker.interpolate in one reused child process (ITK's first import costs seconds)."""
    from . import _mci_worker

    with _LOCK:
        _ensure_worker()
        try:
            _mci_worker.write_array(_WORKER.stdin, src)
            out = _mci_worker.read_array(_WORKER.stdout)
        except (OSError, ValueError) as exc:
            out, why = None, f"{type(exc).__name__}: {exc}"
        else:
            why = f"worker exit status {_WORKER.poll()}"
        if out is None:
            shutdown_worker()
            raise NapariSSLError(f"fill between slices failed ({why})")
        return out


def shutdown_worker() -> None:
    global _WORKER
    w, _WORKER = _WORKER, None
    if w is not None and w.poll() is None:
        w.stdin.close()
        try:
            w.wait(timeout=5)
        except subprocess.TimeoutExpired:
            w.kill()


atexit.register(shutdown_worker)  # once, not once per (re)started worker


def fill_between_slices(labels: np.ndarray, annotated: Optional[Sequence[bool] | np.ndarray] = None) -> np.ndarray:
    """Interpolate a (z, y, x) label map along axis 0 between its annotated slices.

    ``annotated``: bool per slice (default: slices holding any label). Slices not annotated are
    ignored as input (whatever they hold) and filled by interpolation; annotated slices are returned
    unchanged. Returns an array of the input's integer dtype."""
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise NapariSSLError(f"fill between slices needs a (z, y, x) label volume, got shape {list(lab.shape)}")
    if not np.issubdtype(lab.dtype, np.integer) and lab.dtype != bool:
        raise NapariSSLError(f"fill between slices needs integer labels, got {lab.dtype}")
    if annotated is None:
        mask = lab.reshape(lab.shape[0], -1).any(1)
    else:
        mask = np.asarray(annotated, dtype=bool)
        if mask.shape != (lab.shape[0],):
            raise NapariSSLError(f"annotated-slice mask has {mask.size} entries for {lab.shape[0]} slices")
    src = np.where(mask[:, None, None], lab, 0)
    if int(src.max(initial=0)) > 65535:
        raise NapariSSLError("fill between slices supports label values up to 65535")
    out = src.copy()
    if (src.reshape(src.shape[0], -1).any(1)).sum() >= 2:
        small = src.dtype if src.dtype in (np.uint8, np.uint16) else np.uint16  # uint8 travels at half the size
        out = _interpolate_in_worker(src.astype(small, copy=False)).astype(lab.dtype, copy=False)
        if not out.flags.writeable:
            out = out.copy()
    out[mask] = lab[mask]  # the user's slices exactly as drawn (annotated-empty stays empty)
    return out
