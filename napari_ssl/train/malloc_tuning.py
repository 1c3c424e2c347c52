"""glibc malloc settings for CPU training.

A training step frees and re-allocates the same large activation and gradient buffers every step.
With glibc's defaults, freed memory at the top of the heap is given back to the OS (trim threshold
128 KB, adjusted dynamically) and blocks above the mmap threshold get their own mapping, so the
next step page-faults the same megabytes in again, zero-filled by the kernel. Keeping freed memory
in the process (a high trim threshold) and serving blocks up to 32 MB from the heap removes that.
Measured on VICReg pretraining (resnet18, 48 px, batch 8, one CPU thread, 40 steps, 3 runs each):
0.77-1.1 M minor page faults -> 0.07-0.21 M, 16.6-19.2 -> 21.6-24.6 images/s. The cost: a training
process keeps up to ``trim_mb`` of freed memory instead of returning it to the OS.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit (HEAP_MAX_SIZE / 2)

_done = False


def keep_freed_memory(trim_mb: int = 1024) -> bool:
    """Apply the settings once per process (Linux/glibc only); returns whether they are in effect."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok = mallopt(M_TRIM_THRESHOLD, int(trim_mb) * 1024 * 1024) == 1 and ok
    _done = ok
    return ok
