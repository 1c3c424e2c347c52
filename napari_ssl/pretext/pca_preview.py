"""3-component PCA of encoder features, shown as RGB: a method-independent picture of what the encoder learnt."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def feature_pca_rgb(encoder: torch.nn.Module, image: torch.Tensor, level: int | None = None) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] for one (1, C, H, W) image.

    Uses the deepest encoder level that still has at least 8 x 8 positions (more detail than
    the stride-32 map on small slices). Components are scaled by their 1st/99th percentiles and
    their signs fixed (largest loading positive) so consecutive previews are comparable.
    """
    feats = encoder(image)
    if level is None:
        level = len(feats) - 1
        while level > 1 and min(feats[level].shape[-2:]) < 8:
            level -= 1
    f = feats[level][0].float()  # (F, h, w)
    c, h, w = f.shape
    x = f.reshape(c, -1).T  # (h*w, F)
    x = x - x.mean(0, keepdim=True)
    k = min(3, x.shape[0], x.shape[1])
    if k == 0 or not torch.isfinite(x).all():
        return np.zeros((*image.shape[-2:], 3), np.float32)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    comps = v[:k]  # (k, F)
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    proj = x @ (comps * signs).T  # (h*w, k)
    if k < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - k)], 1)
    lo = torch.quantile(proj, 0.01, dim=0)
    hi = torch.quantile(proj, 0.99, dim=0)
    proj = ((proj - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    rgb = proj.T.reshape(1, 3, h, w)
    rgb = F.interpolate(rgb, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return rgb[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy().astype(np.float32)
