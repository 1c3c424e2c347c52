"""Positive pairs for the joint-embedding methods.

"augment": two independent random augmentations of the same slice (SimCLR/BYOL style).
"micle":    Multi-Instance Contrastive Learning (Azizi et al. 2021, MICLe): the two positives are
            two *different* images of the same patient/study -- ``batch["image"]`` and
            ``batch["partner"]`` (a nearby slice of the same volume, or a slice of another series
            of the same study at the nearest position, chosen by the data pipeline) -- each
            augmented independently. The network then has to match anatomy, not just pixels.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import NapariSSLError

PAIR_MODES = ("augment", "micle")


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
    elif mode == "micle":
        source2 = batch.get("partner")
        if source2 is None:
            raise NapariSSLError("--pairs micle needs partner slices from the data pipeline; use --pairs augment")
        if source2.shape != image.shape:
            raise ValueError(f"partner shape {tuple(source2.shape)} differs from image shape {tuple(image.shape)}")
    else:
        check_pairs(mode)
        raise AssertionError("unreachable")
    return augment(image, generator=generator), augment(source2, generator=generator)
