"""Sparse annotations: which slices of a label volume carry label information.

A slice (along array axis 0, the canonical z axis) is *annotated* when it holds any
non-zero label, or when the user listed it as annotated-empty (the structure is truly
absent there). Every other slice is *unknown*: it is never used as background, because
the user simply has not looked at it.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..errors import NapariSSLError

GEOMETRY_TOLERANCE_MM = 1e-3


def parse_index_list(text: str | Sequence[int] | None, what: str = "--empty-slices") -> list[int]:
    """"3,17" (or a list of ints, or None) -> [3, 17]; ranges "3-5" are accepted."""
    if text is None or text == "":
        return []
    if not isinstance(text, str):
        return sorted({int(v) for v in text})
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.update(range(int(lo), int(hi) + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise NapariSSLError(f"{what}: {part!r} is not a slice index; give comma-separated integers such as 3,17") from None
    return sorted(out)


def parse_class_names(text: str | Sequence[str] | None) -> list[str] | None:
    """"anterior,posterior" -> ["anterior", "posterior"] (names of labels 1, 2, ...)."""
    if text is None or text == "":
        return None
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    if any(not n for n in names):
        raise NapariSSLError("--classes: empty class name; give names separated by commas, e.g. \"anterior,posterior\"")
    if len(set(names)) != len(names):
        raise NapariSSLError(f"--classes: duplicate class names in {','.join(names)}")
    return names


def as_label_array(labels: np.ndarray) -> np.ndarray:
    """Integer label map (float files holding integer values are accepted, fractions are not)."""
    a = np.asarray(labels)
    if a.dtype.kind == "f":
        r = np.rint(a)
        if not np.allclose(a, r, atol=1e-3):
            raise NapariSSLError("the labels volume holds non-integer values; give a label map (0 = background, 1..N = classes)")
        a = r
    if a.size and a.min() < 0:
        raise NapariSSLError("the labels volume holds negative values; labels must be 0 (background) or 1..N")
    return a.astype(np.int64, copy=False)


def labelled_slices(labels: np.ndarray) -> np.ndarray:
    """(z,) bool: the slices (along axis 0) holding any label."""
    lab = np.asarray(labels)
    return lab.reshape(lab.shape[0], -1).any(axis=1)


def annotated_slices(labels: np.ndarray, empty_slices: Iterable[int] = ()) -> np.ndarray:
    """Boolean mask over axis 0: slices holding a label, plus the listed annotated-empty slices."""
    mask = labelled_slices(labels)
    n = mask.shape[0]
    for i in empty_slices:
        if not 0 <= int(i) < n:
            raise NapariSSLError(f"annotated-empty slice {i} is outside the volume (it has {n} slices, 0..{n - 1})")
        mask[int(i)] = True
    return mask


def check_same_grid(image_shape, image_affine, labels_shape, labels_affine, name: str = "labels") -> None:
    """The label map must lie on exactly the image's voxel grid (shape and geometry)."""
    if tuple(image_shape) != tuple(labels_shape):
        raise NapariSSLError(f"{name} shape {list(labels_shape)} does not match the image shape {list(image_shape)}; "
                             "give the label map drawn on this image")
    a, b = np.asarray(image_affine, float), np.asarray(labels_affine, float)
    # tolerance scaled to the volume extent so that float rounding in headers is not an error
    extent = np.abs(a[:3, :3]).sum() + 1.0
    if not np.allclose(a, b, atol=max(GEOMETRY_TOLERANCE_MM, 1e-5 * extent)):
        raise NapariSSLError(f"{name} geometry (origin/spacing/direction) does not match the image; give the label map drawn on this image")


def check_class_names(labels: np.ndarray, class_names: Sequence[str] | None) -> list[str]:
    """Class names for labels 1..N; every label index present must have a name."""
    present = np.unique(labels)
    top = int(present.max()) if present.size else 0
    if class_names is None:
        return [f"class {i}" for i in range(1, max(top, 1) + 1)]
    names = list(class_names)
    if top > len(names):
        raise NapariSSLError(f"label index {top} has no class name (names given for 1..{len(names)}: {','.join(names)}); add a name to --classes")
    return names
