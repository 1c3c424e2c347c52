"""ITK's morphological contour interpolation, run in a worker process of its own.

The ``itk`` wheels bundle an ITK of their own beside SimpleITK's; with both loaded in one process,
SimpleITK's exit handler unloads ITK libraries that ``itk`` still uses and the interpreter crashes on
exit (seen: segfault / abort after a few hundred interpolations). So ``itk`` is only imported here,
in ``python -m napari_ssl.active._mci_worker``, a child that never loads SimpleITK. It reads arrays
from stdin and writes the results to stdout, each as an 8-byte length and an .npy payload (no pickle).
"""
from __future__ import annotations

import io
import os
import struct
import sys

import numpy as np


def write_array(stream, arr: np.ndarray) -> None:
    """8-byte length, then an .npy header and the raw bytes, written straight from the array.

    No intermediate copies: in the viewer's process every copy of a full CT (77-155 MB) would hold the
    GIL for tens to hundreds of milliseconds, and the viewer would stall meanwhile."""
    arr = np.ascontiguousarray(arr)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(arr))
    h = head.getvalue()
    stream.write(struct.pack("<Q", len(h) + arr.nbytes))
    stream.write(h)
    stream.write(memoryview(arr.reshape(-1)).cast("B"))
    stream.flush()


def read_array(stream) -> np.ndarray | None:
    head = stream.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:  # readinto fills the buffer in place, with the GIL released while it waits
        k = stream.readinto(view[got:])
        if not k:
            raise ValueError(f"array stream ended after {got} of {n} bytes")
        got += k
    bio = io.BytesIO(view[: min(n, 65536)].tobytes())
    version = np.lib.format.read_magic(bio)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(bio)
    arr = np.frombuffer(buf, dtype=dtype, offset=bio.tell(), count=int(np.prod(shape)))
    return arr.reshape(shape, order="F" if fortran else "C")


def interpolate(src: np.ndarray) -> np.ndarray:
    """(z, y, x) uint16 labels on annotated slices, zeros elsewhere -> interpolated along axis 0."""
    import itk

    img = itk.image_from_array(np.ascontiguousarray(src, dtype=np.uint16))
    # axis 2 in ITK's (x, y, z) order is numpy axis 0: interpolate only along the slice axis
    filled = itk.morphological_contour_interpolator(img, axis=2, use_distance_transform=False)
    return np.array(itk.array_from_image(filled), dtype=np.uint16)


def main() -> None:
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    interpolate(np.zeros((2, 4, 4), np.uint16))  # load ITK's modules now (lazy, seconds): the first real call is then quick
    while (arr := read_array(inp)) is not None:
        res = interpolate(arr)
        # back in the input's dtype when it fits (uint8 for most label maps: half the bytes to move)
        write_array(out, res.astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) and res.max(initial=0) <= np.iinfo(arr.dtype).max else res)


if __name__ == "__main__":
    main()
    # skip the interpreter's teardown: ITK's at-exit clean-up after large interpolations sometimes aborted
    # ("malloc_consolidate(): unaligned fastbin chunk detected"); everything is written and flushed by now
    sys.stdout.flush()
    os._exit(0)
