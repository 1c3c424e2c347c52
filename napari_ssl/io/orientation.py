"""Axis-aligned reorientation (permutations and flips only, never resampling).

napari shows arrays with ``scale`` only, so two files of the same scan stored in
different orders (DICOM slices ascending, NIfTI in RAS order, sagittal acquisitions...)
must be brought to one array order to look the same. The canonical order is the one
closest to LPS: array x runs to the patient's left, y to posterior, z to superior
(an axial stack shown the radiological way, patient's right on the image left).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .volume import Volume


def axis_mapping(from_affine: np.ndarray, to_affine: np.ndarray) -> tuple[list[int], list[bool]]:
    """For each target array axis, which source axis it comes from and whether it is flipped.

    Raises ValueError when the two grids are not related by a permutation and flips
    (an oblique difference needs resampling, which this never does silently).
    """
    a = np.asarray(from_affine, float)[:3, :3]
    b = np.asarray(to_affine, float)[:3, :3]
    an = a / np.linalg.norm(a, axis=0)
    bn = b / np.linalg.norm(b, axis=0)
    dots = bn.T @ an  # [target axis, source axis]
    perm, flips = [], []
    for t in range(3):
        s = int(np.argmax(np.abs(dots[t])))
        if abs(dots[t, s]) < 0.99 or s in perm:
            raise ValueError("the two grids differ by more than an axis permutation/flip (oblique)")
        perm.append(s)
        flips.append(bool(dots[t, s] < 0))
    return perm, flips


def reorient_array(array: np.ndarray, from_affine: np.ndarray, to_affine: np.ndarray) -> np.ndarray:
    """Reorder `array` (on grid `from_affine`) onto the axis order of grid `to_affine` (a view)."""
    perm, flips = axis_mapping(from_affine, to_affine)
    out = np.transpose(array, perm + list(range(3, array.ndim)))
    for ax, f in enumerate(flips):
        if f:
            out = np.flip(out, axis=ax)
    return out


def reoriented_affine(affine: np.ndarray, shape: tuple[int, ...], perm: list[int], flips: list[bool]) -> np.ndarray:
    """Affine of ``transpose(perm)`` then flips, applied to an array with `shape` on `affine`."""
    a = np.asarray(affine, float)
    new = np.eye(4)
    origin = a[:3, 3].copy()
    for t, (s, f) in enumerate(zip(perm, flips)):
        col = a[:3, s]
        if f:
            origin = origin + col * (shape[s] - 1)
            col = -col
        new[:3, t] = col
    new[:3, 3] = origin
    return new


def canonical_mapping(affine: np.ndarray) -> tuple[list[int], list[bool]]:
    """Permutation/flips that bring `affine` closest to the canonical LPS order (z->S, y->P, x->L)."""
    d = np.asarray(affine, float)[:3, :3]
    d = d / np.linalg.norm(d, axis=0)
    # target axis t wants LPS component: z axis -> S (2), y axis -> P (1), x axis -> L (0)
    want = [2, 1, 0]
    best = None
    import itertools

    for perm in itertools.permutations(range(3)):
        score = sum(abs(d[want[t], perm[t]]) for t in range(3))
        if best is None or score > best[0]:
            best = (score, list(perm))
    perm = best[1]
    flips = [bool(d[want[t], perm[t]] < 0) for t in range(3)]
    return perm, flips


def canonicalize(volume: Volume) -> Volume:
    """The same volume with its array reordered to the canonical LPS-like order (a view, no copy)."""
    perm, flips = canonical_mapping(volume.affine)
    if perm == [0, 1, 2] and not any(flips):
        return volume
    arr = np.transpose(volume.array, perm)
    for ax, f in enumerate(flips):
        if f:
            arr = np.flip(arr, axis=ax)
    new_aff = reoriented_affine(volume.affine, volume.array.shape, perm, flips)
    native = volume.native_affine if volume.native_affine is not None else volume.affine
    return replace(volume, array=arr, affine=new_aff, native_affine=native, warnings=list(volume.warnings))
