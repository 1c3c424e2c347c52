"""Training samples from the annotated slices of sparse label volumes.

Only annotated slices (see :mod:`napari_ssl.data.sparse_labels`) become samples, so an
unannotated slice can never reach the loss. With ``in_channels == 3`` (2.5D) the input is
the slice and its two neighbours (clamped at the volume ends); the target is the middle
slice's labels. Slices are padded to a square (centred, zeros) then resized to
``image_size`` -- :func:`fit_to_size` / :func:`unfit_from_size` are the exact inverse pair
that prediction uses to return to the source grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .sparse_labels import labelled_slices


@dataclass
class LabelledVolume:
    """One normalised image (z, y, x float32 in [0, 1]) with its label map and annotated-slice mask."""

    image: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray
    spacing: Optional[tuple] = None  # (z, y, x) mm; side planes are resampled to square pixels with it (data/planes.py)
    z_range: Optional[tuple] = None  # [z0, z1): the slices the structure may occupy (side planes span these)

    @property
    def annotated_indices(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.annotated)]

    @property
    def drawn_indices(self) -> np.ndarray:
        """Indices of the annotated slices holding labels (drawn on; not those marked empty), ascending."""
        return np.flatnonzero(self.annotated & labelled_slices(self.labels))


def slice_stack(image: np.ndarray, z: int, in_channels: int) -> np.ndarray:
    """(C, H, W): slice z alone, or z-1, z, z+1 (clamped) for 2.5D."""
    if in_channels == 1:
        return image[z][None]
    half = in_channels // 2
    idx = np.clip(np.arange(z - half, z - half + in_channels), 0, image.shape[0] - 1)
    return image[idx]


def _pad_square(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    h, w = x.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    pad = (left, side - w - left, top, side - h - top)
    return F.pad(x, pad), pad


def fit_to_size(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size): centred zero-pad to a square, then resize."""
    sq, _ = _pad_square(x)
    if sq.shape[-1] == size:
        return sq
    if mode == "nearest":
        return F.interpolate(sq, size=(size, size), mode="nearest")
    return F.interpolate(sq, size=(size, size), mode=mode, align_corners=False)


def unfit_from_size(y: torch.Tensor, shape: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Inverse of :func:`fit_to_size`: (N, C, size, size) -> (N, C, H, W) on the source grid."""
    h, w = shape
    side = max(h, w)
    if y.shape[-1] != side:
        y = (F.interpolate(y, size=(side, side), mode=mode, align_corners=False) if mode != "nearest"
             else F.interpolate(y, size=(side, side), mode="nearest"))
    top, left = (side - h) // 2, (side - w) // 2
    return y[..., top:top + h, left:left + w]


@dataclass
class AugmentConfig:
    """Augmentations for 1-channel scans. Flips default to left-right only: an anterior/posterior
    flip would swap the meaning of position-defined classes (e.g. anterior vs posterior hippocampus)."""

    flip_x: float = 0.5
    flip_y: float = 0.0
    affine: float = 0.7
    max_rotation_deg: float = 10.0
    max_scale: float = 0.1
    max_shift: float = 0.05
    intensity: float = 0.8
    max_gamma: float = 0.3
    max_contrast: float = 0.15
    max_brightness: float = 0.1
    noise_std: float = 0.03


def augment_pair(img: torch.Tensor, tgt: torch.Tensor, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, small affine (rotation/scale/shift) and intensity changes of one (C,S,S) image
    and its (S,S) target; uses torch's global RNG, so a fixed seed gives the same samples."""
    r = torch.rand(6)
    if r[0] < cfg.flip_x:
        img, tgt = img.flip(-1), tgt.flip(-1)
    if r[1] < cfg.flip_y:
        img, tgt = img.flip(-2), tgt.flip(-2)
    if r[2] < cfg.affine:
        u = torch.rand(4) * 2 - 1
        ang = math.radians(cfg.max_rotation_deg) * float(u[0])
        sc = 1.0 + cfg.max_scale * float(u[1])
        c, s = math.cos(ang) / sc, math.sin(ang) / sc
        theta = torch.tensor([[c, -s, 2 * cfg.max_shift * float(u[2])], [s, c, 2 * cfg.max_shift * float(u[3])]], dtype=img.dtype)[None]
        grid = F.affine_grid(theta, (1, img.shape[0], *img.shape[-2:]), align_corners=False)
        img = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        tgt = F.grid_sample(tgt[None, None].to(img.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0].round().long()
    if r[3] < cfg.intensity:
        u = torch.rand(4) * 2 - 1
        gamma = math.exp(cfg.max_gamma * float(u[0]))
        img = img.clamp(0, 1) ** gamma
        img = (img - 0.5) * (1 + cfg.max_contrast * float(u[1])) + 0.5 + cfg.max_brightness * float(u[2])
        if r[4] < 0.5:
            img = img + torch.randn_like(img) * cfg.noise_std * float(torch.rand(1))
    return img, tgt


class LabelledSliceDataset(torch.utils.data.Dataset):
    """(image (C,S,S) float32, target (S,S) int64) for every annotated slice of every volume."""

    def __init__(self, volumes: list[LabelledVolume], image_size: int, in_channels: int = 1, augment: AugmentConfig | None = None):
        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        self.augment = augment
        self.index: list[tuple[int, int]] = []
        images, targets = [], []
        for v_i, vol in enumerate(volumes):
            for z in vol.annotated_indices:
                self.index.append((v_i, z))
                x = torch.from_numpy(np.ascontiguousarray(slice_stack(vol.image, z, self.in_channels), dtype=np.float32))[None]
                t = torch.from_numpy(np.ascontiguousarray(vol.labels[z]).astype(np.float32))[None, None]
                images.append(fit_to_size(x, self.image_size)[0])
                targets.append(fit_to_size(t, self.image_size, mode="nearest")[0, 0].round().long())
        self.images = torch.stack(images) if images else torch.zeros(0, self.in_channels, self.image_size, self.image_size)
        self.targets = torch.stack(targets) if targets else torch.zeros(0, self.image_size, self.image_size, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img, tgt = self.images[i], self.targets[i]
        if self.augment is not None:
            img, tgt = augment_pair(img, tgt, self.augment)
        v_i, z = self.index[i]
        return {"image": img, "target": tgt, "volume_index": v_i, "slice_index": z}


class MixedSlices(torch.utils.data.Dataset):
    """The user's annotated slices and other samples (side planes, pseudo-labelled slices: dicts with a weight);
    a uniformly random index draws from the user's slices with probability `labelled_fraction` (so the step
    budget and loader of plain fine-tuning are kept)."""

    SPREAD = 1000

    def __init__(self, labelled, other, labelled_fraction: float):
        self.labelled, self.other = labelled, other
        self.cut = int(round(self.SPREAD * (labelled_fraction if len(other) else 1.0)))
        self.targets = labelled.targets  # class-balance weights come from the user's slices only

    def __len__(self) -> int:
        return self.SPREAD * max(len(self.labelled), len(self.other), 1)

    def __getitem__(self, i: int) -> dict:
        j, r = divmod(int(i), self.SPREAD)
        if r < self.cut:
            item = self.labelled[j % len(self.labelled)]
            return {"image": item["image"], "target": item["target"], "weight": torch.tensor(1.0)}
        return self.other[j % len(self.other)]


class WeightedSamples(torch.utils.data.Dataset):
    """Fitted samples as (image (C,S,S), target (S,S), weight) dicts, augmented on access; a target may hold
    IGNORE (data/planes.py) where no label decides. Outside the image (after augmentation) is background, as for
    the user's slices."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, weights: list[float], augment: AugmentConfig | None):
        self.images, self.targets, self.weights, self.augment = images, targets, [float(w) for w in weights], augment

    def __len__(self) -> int:
        return len(self.weights)

    def __getitem__(self, i: int) -> dict:
        img, tgt = self.images[i], self.targets[i]
        if self.augment is not None:
            img, tgt = augment_pair(img, tgt, self.augment)
        return {"image": img, "target": tgt, "weight": torch.tensor(self.weights[i])}
