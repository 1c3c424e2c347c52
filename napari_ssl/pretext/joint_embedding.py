"""Shared base of the joint-embedding methods (BYOL, SimCLR, MoCo, SimSiam, Barlow Twins, VICReg).

Every one of them embeds two views of a positive pair (:mod:`.pairs`) with the U-Net encoder,
global-average-pools its deepest feature map (``self.encoder(x)[-1]``) and puts a projection
head (from lightly) on top; the subclasses differ only in their heads and loss. The heads and any
momentum copies are thrown away after pretraining: only ``self.encoder`` is saved.

Options common to all six: ``pairs`` (augment | micle | position) and the augmentation strengths of
:class:`napari_ssl.data.augment.AugmentSpec` (crop_scale_min, crop_scale_max, hflip, vflip,
rotate_deg, brightness, contrast, gamma, noise_std, blur_sigma, ...).
"""
from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed

from ..data.augment import AugmentSpec, augment
from ..errors import NapariSSLError
from .base import PretextMethod
from .pairs import check_pairs, make_views

# lightly's losses gather across DDP ranks only when torch.distributed is initialised, so this is safe on one process
GATHER_DISTRIBUTED = torch.distributed.is_available()

COMMON_OPTIONS: dict[str, Any] = {"pairs": "augment", **AugmentSpec().as_dict()}
COMMON_HELP: dict[str, str] = {
    "pairs": "augment: two augmentations of one slice; micle: the slice and another slice of the same patient/study; "
             "position: slices at the same relative depth of two volumes",
    "crop_scale_min": "smallest area fraction of the random resized crop",
    "crop_scale_max": "largest area fraction of the random resized crop",
    "crop_ratio": "crop aspect ratio drawn in [1/r, r]",
    "hflip": "probability of a left-right flip",
    "vflip": "probability of an up-down flip",
    "rotate_deg": "largest in-plane rotation in degrees (0 = off)",
    "brightness": "largest additive intensity shift",
    "contrast": "largest relative contrast change",
    "gamma": "gamma drawn log-uniformly in [1/gamma, gamma]",
    "intensity_p": "probability of the brightness/contrast/gamma change",
    "noise_std": "largest Gaussian noise standard deviation",
    "noise_p": "probability of noise",
    "blur_sigma": "largest Gaussian blur sigma (pixels)",
    "blur_p": "probability of blur",
}
MOMENTUM_OPTIONS: dict[str, Any] = {"momentum_start": 0.99, "momentum_end": 1.0}
MOMENTUM_HELP: dict[str, str] = {
    "momentum_start": "EMA momentum of the target encoder at the first step (cosine schedule)",
    "momentum_end": "EMA momentum at the last step",
}


class JointEmbeddingMethod(PretextMethod):
    kind: ClassVar[str] = "joint-embedding"
    options: ClassVar[dict[str, Any]] = dict(COMMON_OPTIONS)
    option_help: ClassVar[dict[str, str]] = dict(COMMON_HELP)

    def __init__(self, encoder_name: str, in_channels: int, image_size: int, **options: Any):
        super().__init__(encoder_name, in_channels, image_size, **options)
        self.pairs = check_pairs(self.opts["pairs"])
        self.augment_spec = AugmentSpec.from_options(self.opts)
        # (online, target) module pairs updated by EMA in on_train_step_end (BYOL, MoCo)
        self._momentum_pairs: list[tuple[str, str]] = []
        self.build_heads(self.feature_dim)

    # --- to implement ----------------------------------------------------------------------
    def build_heads(self, feature_dim: int) -> None:
        raise NotImplementedError

    def pair_loss(self, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss dict ("loss" + logged scalars) for the two views of B positive pairs."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, D) vectors the loss compares (for diagnostics such as collapse checks)."""
        return self.projection_head(self.pooled_features(x))

    # --- shared machinery ------------------------------------------------------------------
    @classmethod
    def min_image_size(cls, in_channels: int, options: dict[str, Any]) -> int:
        return 32  # the encoders downsample 32x: at least one feature pixel

    def make_views(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        return make_views(batch, self.pairs, self._augment, generator)

    def _augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return augment(x, self.augment_spec, generator)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if batch["image"].shape[0] < 2:
            raise NapariSSLError(f"{self.name} needs at least 2 slices per batch: raise --batch-size")
        view1, view2 = self.make_views(batch)
        return self.pair_loss(view1, view2)

    @torch.no_grad()
    def previews(self, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The two views of the first pair (middle channel), to see what the augmentations do."""
        gen = torch.Generator().manual_seed(0)
        v1, v2 = self.make_views({k: v[:1] for k, v in batch.items() if torch.is_tensor(v)}, gen)
        mid = v1.shape[1] // 2
        return {"view1": v1[0, mid].float().cpu().numpy(), "view2": v2[0, mid].float().cpu().numpy()}

    # --- momentum (EMA) targets ------------------------------------------------------------
    def add_momentum_copy(self, online_name: str) -> torch.nn.Module:
        """A frozen copy of submodule ``online_name`` registered as ``<online_name>_momentum``."""
        from lightly.models.utils import deactivate_requires_grad

        target = copy.deepcopy(getattr(self, online_name))
        deactivate_requires_grad(target)
        setattr(self, f"{online_name}_momentum", target)
        self._momentum_pairs.append((online_name, f"{online_name}_momentum"))
        return target

    def momentum_at(self, step: int, total_steps: int) -> float:
        from lightly.utils.scheduler import cosine_schedule

        return cosine_schedule(min(step, max(total_steps, 1)), max(total_steps, 1),
                               float(self.opts["momentum_start"]), float(self.opts["momentum_end"]))

    @torch.no_grad()
    def on_train_step_end(self, step: int, total_steps: int) -> None:
        if not self._momentum_pairs:
            return
        from lightly.models.utils import update_momentum

        m = self.momentum_at(step, total_steps)
        for online, target in self._momentum_pairs:
            update_momentum(getattr(self, online), getattr(self, target), m=m)
