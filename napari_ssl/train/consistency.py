"""Weak/strong consistency on unannotated slices (FixMatch-style, Sohn et al. 2020), an option of the
semi-supervised recipe (``SemiSupervisedConfig.consistency``).

Each training sample carries one unannotated slice (``u_image``: from the annotated studies' other slices and
the unlabelled volumes), geometrically augmented like the user's slices. The model's answer on it (no gradient)
becomes a target where its top probability reaches ``threshold``; the model then learns that target from a
strongly perturbed copy (intensity, noise, blur, a cut-out box), which keeps the pixel correspondence. The target
lives for one step: it is never stored, never written, never exported.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.labelled_slices import AugmentConfig, augment_pair, fit_to_size, slice_stack

# geometric only: intensity changes belong to the strong view
WEAK = AugmentConfig(intensity=0.0)


class UnlabelledSlices(torch.utils.data.Dataset):
    """Fitted unannotated slices (C, S, S), weakly augmented on access."""

    def __init__(self, sources: Sequence[tuple[np.ndarray, Sequence[int]]], image_size: int, in_channels: int,
                 augment: Optional[AugmentConfig] = WEAK, limit: int = 4096):
        pairs = [(img, int(z)) for img, zs in sources for z in zs]
        if len(pairs) > limit:  # bounded memory on a long series: an even subset
            pairs = [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, limit).round().astype(int)]
        imgs = [fit_to_size(torch.from_numpy(np.ascontiguousarray(slice_stack(img, z, in_channels), dtype=np.float32))[None],
                            image_size)[0] for img, z in pairs]
        self.images = torch.stack(imgs) if imgs else torch.zeros(0, in_channels, image_size, image_size)
        self.augment = augment
        self._dummy = torch.zeros(image_size, image_size, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.images[i]
        if self.augment is not None:
            img, _ = augment_pair(img, self._dummy, self.augment)
        return img


class WithUnlabelled(torch.utils.data.Dataset):
    """Each sample of `base` plus one random unannotated slice (``u_image``); torch's global RNG picks it, so a
    seeded run draws the same slices."""

    def __init__(self, base, unlabelled: UnlabelledSlices):
        self.base, self.unlabelled = base, unlabelled
        self.targets = getattr(base, "targets", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        item["u_image"] = self.unlabelled[int(torch.randint(len(self.unlabelled), (1,)))]
        return item


def strong_view(x: torch.Tensor) -> torch.Tensor:
    """A strongly perturbed copy of a batch (N, C, S, S) in [0, 1]: per-sample gamma, contrast, brightness, noise,
    blur, and one cut-out box (a quarter to a half of the side) filled with the image mean."""
    n, _, h, w = x.shape
    dev, dt = x.device, x.dtype
    u = torch.rand(n, 6, device=dev, dtype=dt)
    gamma = torch.exp((u[:, 0] * 2 - 1) * 0.5).view(n, 1, 1, 1)
    y = x.clamp(0, 1) ** gamma
    y = (y - 0.5) * (1 + (u[:, 1] * 2 - 1).view(n, 1, 1, 1) * 0.3) + 0.5 + (u[:, 2] * 2 - 1).view(n, 1, 1, 1) * 0.15
    y = y + torch.randn_like(y) * 0.05 * u[:, 3].view(n, 1, 1, 1)
    blur = u[:, 4] < 0.3
    if bool(blur.any()):
        k = torch.tensor([0.25, 0.5, 0.25], device=dev, dtype=dt)
        c = y.shape[1]
        yb = F.conv2d(F.pad(y[blur], (1, 1, 0, 0), mode="replicate"), k.view(1, 1, 1, 3).expand(c, 1, 1, 3), groups=c)
        yb = F.conv2d(F.pad(yb, (0, 0, 1, 1), mode="replicate"), k.view(1, 1, 3, 1).expand(c, 1, 3, 1), groups=c)
        y = y.clone()
        y[blur] = yb
    side = (0.25 + 0.25 * torch.rand(n, device=dev)) * min(h, w)
    cy = torch.rand(n, device=dev) * h
    cx = torch.rand(n, device=dev) * w
    yy = torch.arange(h, device=dev).view(1, h, 1)
    xx = torch.arange(w, device=dev).view(1, 1, w)
    box = ((yy - cy.view(n, 1, 1)).abs() < side.view(n, 1, 1) / 2) & ((xx - cx.view(n, 1, 1)).abs() < side.view(n, 1, 1) / 2)
    mean = y.mean((1, 2, 3), keepdim=True)
    return torch.where(box[:, None], mean.expand_as(y), y)


def consistency_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Cross-entropy to the teacher's argmax where its top probability reaches `threshold`, averaged over all
    pixels (so a mostly unconfident teacher weighs little)."""
    conf, target = teacher_probs.max(1)
    ce = F.cross_entropy(student_logits, target, reduction="none")
    return (ce * (conf >= threshold).to(ce.dtype)).mean()
