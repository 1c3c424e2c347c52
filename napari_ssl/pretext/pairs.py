"""Positive pairs for the joint-embedding methods.

"augment": two independent random augmentations of the same slice (SimCLR/BYOL style).
"micle":    Multi-Instance Contrastive Learning (Azizi et al. 2021, MICLe): the two positives are
            two *different* images of the same patient/study -- ``batch["image"]`` and
            ``batch["partner"]`` (a nearby slice of the same volume, or a slice of another series
            of the same study at the nearest position, chosen by the data pipeline) -- each
            augmented independently. The network then has to match anatomy, not just pixels.
"position": the positives are slices at the same relative depth of two *different* volumes
            (``batch["partner"]``, chosen by the data pipeline), each augmented: the global
            strategy of Chaitanya et al. 2020 ("Contrastive learning of global and local features
            for medical image segmentation with limited annotations"), which pays off when the
            volumes cover the same anatomy in the same direction (cropped organs, brain MR, one
            protocol), so that depth means the same anatomy in each. The encoder learns where along
            the body axis a slice lies, which in-plane augmentations cannot teach.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import NapariSSLError

PAIR_MODES = ("augment", "micle", "position")
# the modes that need batch["partner"] from the data pipeline, and which kind of partner
PARTNER_KIND = {"micle": "nearby", "position": "same-depth"}


def check_pairs(mode: str) -> str:
    mode = str(mode).strip().lower()
    if mode not in PAIR_MODES:
        raise NapariSSLError(f"unknown --pairs {mode!r}; choose one of {', '.join(PAIR_MODES)}")
    return mode


def make_views(
    batch: dict[str, torch.Tensor],
    mode: str,
    augment: Callable[..., torch.Tensor],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views (B, C, S, S) of a positive pair; ``augment(x, generator=...)`` makes one view."""
    image = batch["image"]
    if mode == "augment":
        source2 = image
    elif mode in PARTNER_KIND:
        source2 = batch.get("partner")
        if source2 is None:
            raise NapariSSLError(f"--pairs {mode} needs partner slices from the data pipeline; use --pairs augment")
        if source2.shape != image.shape:
            raise ValueError(f"partner shape {tuple(source2.shape)} differs from image shape {tuple(image.shape)}")
    else:
        check_pairs(mode)
        raise AssertionError("unreachable")
    return augment(image, generator=generator), augment(source2, generator=generator)
