"""ITK's morphological contour interpolation, run in a worker process of its own.

The ``itk`` wheels bundle an ITK of their own beside SimpleITK's; with both loaded in one process,
SimpleITK's exit handler unloads ITK libraries that ``itk`` still uses and the interpreter crashes on
exit (seen: segfault / abort after a few hundred interpolations). So ``itk`` is only imported here,
in ``python -m napari_ssl.active._mci_worker``, a child that never loads SimpleITK. It reads arrays
from stdin and writes the results to stdout, each as an 8-byte length and an .npy payload (no pickle).
"""
from __future__ import annotations

import io
import struct
import sys

import numpy as np


def write_array(stream, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def read_array(stream) -> np.ndarray | None:
    head = stream.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    return np.load(io.BytesIO(stream.read(n)), allow_pickle=False)


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
        write_array(out, interpolate(arr))


if __name__ == "__main__":
    main()
