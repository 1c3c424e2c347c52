"""Orthogonal planes: the user's annotated slices seen from the side.

A user annotates slices along one axis (axis 0 of the canonical grid). Every plane along the two other axes
crosses those slices in one row each: a coronal or sagittal plane of the study is a 2-D image whose annotated
rows are known and whose other rows are unknown (``IGNORE``). Training the same 2-D U-Net on those planes as
well (loss on the known rows only) shows it the structure's extent and shape along the slice axis, which the
annotated slices alone never show; predicting the study along the three axes and fusing the probabilities
(their geometric mean, active/predict.py) gives each voxel three views (benchmarks/RESULTS.md, "Side planes,
chosen on validation volumes" and "Fusing the three sides", for the measurements that chose them).

Planes are resampled to square pixels and centred in the slices' own square before the usual resize
(``fit_plane``): with 2.5 mm slices and 0.94 mm pixels a side plane is stretched 2.7x along the slice axis, so the
network sees the same anatomy at the same scale in every orientation. ``unfit_plane`` is the inverse used at
prediction.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .labelled_slices import LabelledVolume, WeightedSamples, fit_to_size, slice_stack, unfit_from_size

IGNORE = 255  # target value of pixels no label decides (the loss skips them)
SIDE_AXES = (1, 2)


def slice_stretch(spacing: Optional[Sequence[float]]) -> float:
    """How much a side plane is stretched along the slice axis to get square pixels (slice spacing / pixel size)."""
    if spacing is None or len(spacing) < 3:
        return 1.0
    z, y, x = (float(s) for s in spacing[-3:])
    return z / min(y, x) if z > 0 and min(y, x) > 0 else 1.0


def _stretched_rows(n: int, stretch: float) -> int:
    return max(1, int(round(n * stretch)))


def _square_pad(h: int, w: int, side: int) -> tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) that centre an h x w plane in a square of max(h, w, side)."""
    sq = max(h, w, int(side))
    top, left = (sq - h) // 2, (sq - w) // 2
    return left, sq - w - left, top, sq - h - top


def fit_plane(x: torch.Tensor, size: int, stretch: float = 1.0, mode: str = "bilinear", side: int = 0) -> torch.Tensor:
    """(N, C, rows, cols) side planes (rows along the slice axis) -> (N, C, size, size): rows resampled to square
    pixels, centred in a square of at least `side` pixels (the slices' own square side, so every orientation is
    seen at the same scale), then resized to `size`."""
    rows = _stretched_rows(x.shape[-2], stretch)
    if rows != x.shape[-2]:
        x = F.interpolate(x, size=(rows, x.shape[-1]), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    x = F.pad(x, _square_pad(rows, x.shape[-1], side))
    return fit_to_size(x, size, mode=mode)


def unfit_plane(y: torch.Tensor, shape: tuple[int, int], stretch: float = 1.0, side: int = 0) -> torch.Tensor:
    """Inverse of :func:`fit_plane`: (N, K, size, size) -> (N, K, rows, cols) on the source grid."""
    rows, cols = _stretched_rows(shape[0], stretch), int(shape[1])
    left, _, top, bottom = _square_pad(rows, cols, side)
    sq = top + rows + bottom
    y = unfit_from_size(y, (sq, sq))[..., top:top + rows, left:left + cols]
    if rows != shape[0]:
        y = F.interpolate(y, size=tuple(shape), mode="bilinear", align_corners=False)
    return y


def side_view(array: np.ndarray, axis: int) -> np.ndarray:
    """The volume with `axis` first: its planes along that axis are ``view[i]`` of shape (slices, other)."""
    return np.moveaxis(array, axis, 0)


def side_planes(vol: LabelledVolume, axis: int, image_size: int, in_channels: int = 1,
                z_range: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, S, S), targets (N, S, S)) of every plane along `axis` (1 or 2) of the slices in `z_range`:
    the annotated slices' rows carry the user's labels, every other row is IGNORE. None (empty tensors) when no
    annotated slice lies in `z_range`."""
    z0, z1 = (int(z_range[0]), int(z_range[1])) if z_range is not None else (0, vol.image.shape[0])
    ann = vol.annotated[z0:z1]
    if not ann.any():
        return torch.zeros(0, in_channels, image_size, image_size), torch.zeros(0, image_size, image_size, dtype=torch.long)
    stretch = slice_stretch(vol.spacing)
    img = side_view(vol.image[z0:z1], axis)
    tgt = side_view(np.where(ann[:, None, None], vol.labels[z0:z1], IGNORE).astype(np.uint8), axis)
    x = torch.from_numpy(np.stack([slice_stack(img, i, in_channels) for i in range(img.shape[0])]).astype(np.float32))
    t = torch.from_numpy(np.ascontiguousarray(tgt, dtype=np.float32))[:, None]
    side = max(vol.image.shape[1:])  # the annotated slices' square: the same scale from every side
    # outside the plane (padding) is background, as for the user's slices
    return fit_plane(x, image_size, stretch, side=side), fit_plane(t, image_size, stretch, mode="nearest", side=side)[:, 0].round().long()


class SidePlanes(WeightedSamples):
    """The side planes of every volume as samples (image (C,S,S), target (S,S) known on the annotated rows only,
    weight 1: the user's own labels), augmented without flips."""

    def __init__(self, volumes: list[LabelledVolume], image_size: int, in_channels: int, augment):
        from .labelled_slices import AugmentConfig

        parts = [side_planes(v, a, image_size, in_channels, v.z_range) for v in volumes for a in SIDE_AXES]
        images = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, in_channels, image_size, image_size)
        targets = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, image_size, image_size, dtype=torch.long)
        # no flips on side planes: a flip along the slice axis or front-back would swap position-defined classes
        aug = None if augment is None else AugmentConfig(**{**augment.__dict__, "flip_x": 0.0, "flip_y": 0.0})
        super().__init__(images, targets, [1.0] * len(images), aug)


def volume_has_side_information(vol: LabelledVolume) -> bool:
    """Side planes say something about the slice axis only with two or more annotated slices holding labels in a
    volume (one slice gives each side plane a single row: on validation volumes that hurt at k=1)."""
    return vol.drawn_indices.size >= 2


def side_plane_volumes(volumes: list[LabelledVolume], axial_fraction: float,
                       min_share: float = 0.0) -> tuple[list[LabelledVolume], float]:
    """The volumes whose side planes train (those with side information) and the share of the user's samples
    that stays with the annotated slices.

    For one study (or several, each annotated on two or more slices) that share is `axial_fraction`. Where some
    volumes hold a single annotated slice (labels spread over many studies), the side planes get their volumes'
    share of the annotated slices only: otherwise the planes of one twice-annotated volume took two thirds of
    every batch from the slices of all the others (bench_label_efficiency: the posterior class collapsed at k=10).
    No side planes at all when those volumes hold less than `min_share` of the annotated slices."""
    with_side = [v for v in volumes if volume_has_side_information(v)]
    if not with_side:
        return [], 1.0
    share = sum(int(v.annotated.sum()) for v in with_side) / max(1, sum(int(v.annotated.sum()) for v in volumes))
    if share < min_share:
        return [], 1.0
    return with_side, 1.0 - (1.0 - float(axial_fraction)) * share
