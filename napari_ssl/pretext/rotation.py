"""Rotation prediction (Gidaris et al. 2018): which of 0/90/180/270 degrees was a slice turned by.

Scans have a canonical orientation, so telling the rotation apart needs anatomy. Each sample
gets one random rotation (same compute as a plain forward pass); a linear head classifies
the encoder's pooled features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import PretextMethod


def rotate_batch(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate each (C, S, S) sample by k[i] * 90 degrees (square images)."""
    out = x.clone()
    for r in (1, 2, 3):
        sel = (k == r).nonzero(as_tuple=True)[0]
        if sel.numel():
            out[sel] = torch.rot90(x[sel], r, dims=(2, 3))
    return out


class RotationPrediction(PretextMethod):
    name = "rotation"
    summary = "predict which of 4 rotations (0/90/180/270 degrees) was applied to a slice, from the encoder's pooled features"
    options = {"hidden": 0}
    option_help = {"hidden": "width of a hidden layer in the head (0: linear head)"}

    def __init__(self, encoder_name: str, in_channels: int, image_size: int, **options):
        super().__init__(encoder_name, in_channels, image_size, **options)
        f, hdim = self.feature_dim, int(self.opts["hidden"])
        if hdim > 0:
            self.head = torch.nn.Sequential(torch.nn.Linear(f, hdim), torch.nn.BatchNorm1d(hdim), torch.nn.ReLU(inplace=True),
                                            torch.nn.Linear(hdim, 4))
        else:
            self.head = torch.nn.Linear(f, 4)

    def training_loss(self, batch):
        x = batch["image"]
        k = torch.randint(0, 4, (x.shape[0],), device=x.device)
        logits = self.head(self.pooled_features(rotate_batch(x, k)))
        loss = F.cross_entropy(logits, k)
        acc = (logits.detach().argmax(1) == k).float().mean()
        return {"loss": loss, "accuracy": acc}
