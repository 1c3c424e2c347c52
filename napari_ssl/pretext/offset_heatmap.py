"""Offset heatmap regression (after Blendowski, Nickisch & Heinrich, MICCAI 2019).

Two 2.5D patches (stacks of adjacent slices) lie ``distance`` slices apart; the query is also
shifted in-plane by a random (dy, dx) of at most ``max_shift`` pixels. The network sees both
patches and regresses a Gaussian heatmap centred on the shift (MSE), so it must find the
same anatomy in the neighbouring stack.

Head (designed here): the shared encoder embeds reference and query; their deepest feature
maps are concatenated along channels, fused by two convolutions, pooled to 2 x 2 and mapped
by a linear layer to the heatmap (``heatmap_size`` x ``heatmap_size`` covering shifts in
[-max_shift, max_shift]). Reference and query come from batch["image"] and batch["context"]
(the stack ``distance`` slices away, cut with a ``max_shift`` margin).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import PretextMethod
from .relative_position import take_patches


def gaussian_heatmaps(shift: torch.Tensor, max_shift: int, size: int, sigma: float) -> torch.Tensor:
    """(B, size, size) Gaussians (peak 1) centred on shift (B, 2) pixels mapped onto the heatmap grid."""
    scale = (size - 1) / (2 * max_shift) if max_shift else 0.0
    centre = (shift.float() + max_shift) * scale  # (B, 2) in heatmap pixels
    r = torch.arange(size, device=shift.device, dtype=torch.float32)
    gy = torch.exp(-((r[None] - centre[:, :1]) ** 2) / (2 * sigma**2))
    gx = torch.exp(-((r[None] - centre[:, 1:]) ** 2) / (2 * sigma**2))
    return gy[:, :, None] * gx[:, None, :]


class OffsetHeatmap(PretextMethod):
    name = "offset-heatmap"
    summary = "Blendowski: regress a Gaussian heatmap of the in-plane shift between two slice stacks a set distance apart"
    options = {"distance": 2, "max_shift": 8, "heatmap_size": 17, "sigma": 1.0, "width": 256, "target_scale": 10.0}
    option_help = {
        "distance": "slices between the reference and the query stack",
        "max_shift": "largest in-plane shift of the query, in pixels",
        "heatmap_size": "side of the predicted heatmap (covers -max_shift..max_shift)",
        "sigma": "Gaussian width on the heatmap grid",
        "width": "channels of the fusion convolutions",
        "target_scale": "heatmaps are scaled by this (peak value) so MSE is not dominated by the empty background",
    }

    def __init__(self, encoder_name: str, in_channels: int, image_size: int, **options):
        super().__init__(encoder_name, in_channels, image_size, **options)
        f, w = self.feature_dim, int(self.opts["width"])
        self.hsize = int(self.opts["heatmap_size"])
        self.max_shift = int(self.opts["max_shift"])
        self.fuse = torch.nn.Sequential(
            torch.nn.Conv2d(2 * f, w, 1, bias=False), torch.nn.BatchNorm2d(w), torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(w, w, 3, padding=1, bias=False), torch.nn.BatchNorm2d(w), torch.nn.ReLU(inplace=True),
            torch.nn.AdaptiveAvgPool2d(2),
        )
        self.to_heatmap = torch.nn.Linear(4 * w, self.hsize * self.hsize)

    @classmethod
    def context_request(cls, image_size, in_channels, options):
        return (int(options.get("distance", cls.options["distance"])), int(options.get("max_shift", cls.options["max_shift"])))

    def _pairs(self, batch, generator=None):
        ctx = batch["context"]
        ref = batch["image"]
        b, s, m = ref.shape[0], ref.shape[-1], self.max_shift
        shift = torch.randint(-m, m + 1, (b, 2), device=ref.device, generator=generator)
        qry = take_patches(ctx, m + shift[:, 0], m + shift[:, 1], s)
        return ref, qry, shift

    def predict(self, ref, qry):
        b = ref.shape[0]
        f = self.features(torch.cat([ref, qry]))
        z = self.fuse(torch.cat([f[:b], f[b:]], 1)).flatten(1)
        return self.to_heatmap(z).view(b, self.hsize, self.hsize)

    def _target(self, shift):
        return float(self.opts["target_scale"]) * gaussian_heatmaps(shift, self.max_shift, self.hsize, float(self.opts["sigma"]))

    def training_loss(self, batch):
        ref, qry, shift = self._pairs(batch)
        pred = self.predict(ref, qry)
        loss = F.mse_loss(pred, self._target(shift))
        with torch.no_grad():
            flat = pred.detach().flatten(1).argmax(1)
            found = torch.stack([flat // self.hsize, flat % self.hsize], 1).float()
            scale = 2 * self.max_shift / max(self.hsize - 1, 1)
            err = ((found * scale - self.max_shift) - shift.float()).norm(dim=1).mean()
        return {"loss": loss, "offset_error_px": err}

    @torch.no_grad()
    def previews(self, batch):
        g = torch.Generator(device=batch["image"].device).manual_seed(0)
        one = {k: v[:1] for k, v in batch.items()}
        ref, qry, shift = self._pairs(one, generator=g)
        pred = self.predict(ref, qry)
        scale = float(self.opts["target_scale"])
        return {
            "heatmap_target": (self._target(shift)[0] / scale).float().cpu().numpy().astype(np.float32),
            "heatmap_predicted": (pred[0] / scale).float().cpu().numpy().astype(np.float32),
        }
