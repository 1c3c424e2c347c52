"""Relative patch position (Doersch et al. 2015), in-plane and, for 2.5D input, through-plane.

A 3 x 3 grid of patches is laid over the crop, with a gap between cells and a random jitter
of each patch inside its cell so that edges and textures cannot simply be continued. The
centre patch is the reference; the query is one of its 8 neighbours. With 3-channel (2.5D)
input two more classes are added: the query is the centre patch of the slice stack
``distance`` slices above or below (taken from batch["context"]). The encoder embeds both
patches (one shared forward pass); a small MLP classifies their concatenated pooled features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import NapariSSLError
from .base import PretextMethod

# (row, col) of the 8 neighbours in the 3 x 3 grid, class index = position in this list
NEIGHBOURS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]


def grid_geometry(image_size: int, gap: float, jitter: float) -> tuple[int, int, int, int]:
    """(cell, patch, base offset, max jitter) in pixels."""
    cell = image_size // 3
    patch = int(cell * (1 - gap))
    slack = cell - patch
    jit = int(slack * jitter / 2)
    return cell, patch, (slack - 2 * jit) // 2 + jit, jit


def take_patches(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample (B, C, size, size) crops of x (B, C, H, W) at (top[b], left[b])."""
    r = torch.arange(size, device=x.device)
    rows = (top[:, None] + r[None])[:, :, None]  # (B, s, 1)
    cols = (left[:, None] + r[None])[:, None, :]  # (B, 1, s)
    b = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x[b, :, rows, cols].permute(0, 3, 1, 2)  # advanced dims first -> (B, s, s, C)


class RelativePosition(PretextMethod):
    name = "relative-position"
    summary = "Doersch: which of the 8 in-plane neighbours (2.5D: also the slice stack above/below) a query patch is, relative to a centre patch"
    options = {"gap": 0.25, "jitter": 0.5, "distance": 3, "hidden": 512}
    option_help = {
        "gap": "fraction of each grid cell left empty between patches",
        "jitter": "random shift of each patch inside its cell, as a fraction of the free space",
        "distance": "slices between the reference and the above/below query (2.5D only)",
        "hidden": "width of the classifier's hidden layer",
    }

    def __init__(self, encoder_name: str, in_channels: int, image_size: int, **options):
        super().__init__(encoder_name, in_channels, image_size, **options)
        self.through_plane = self.in_channels > 1 and int(self.opts["distance"]) > 0
        self.num_classes = 10 if self.through_plane else 8
        self.cell, self.patch, self.base, self.jit = grid_geometry(self.image_size, float(self.opts["gap"]), float(self.opts["jitter"]))
        if self.patch < 8:
            raise NapariSSLError(f"relative-position patches would be {self.patch} px; "
                                 f"use --image-size {self.min_image_size(self.in_channels, self.opts)} or more")
        f, h = self.feature_dim, int(self.opts["hidden"])
        self.head = torch.nn.Sequential(torch.nn.Linear(2 * f, h), torch.nn.BatchNorm1d(h), torch.nn.ReLU(inplace=True),
                                        torch.nn.Linear(h, self.num_classes))

    @classmethod
    def min_image_size(cls, in_channels, options):
        gap = float(options.get("gap", cls.options["gap"]))
        s = 16
        while int((s // 3) * (1 - gap)) < 8:
            s += 1
        return s

    @classmethod
    def context_request(cls, image_size, in_channels, options):
        d = int(options.get("distance", cls.options["distance"]))
        return (d, 0) if in_channels > 1 and d > 0 else None

    def _offsets(self, n, device):
        return torch.randint(-self.jit, self.jit + 1, (n, 2), device=device) if self.jit else torch.zeros(n, 2, dtype=torch.long, device=device)

    def make_pairs(self, batch):
        """(reference patches, query patches, labels)."""
        x = batch["image"]
        b, dev = x.shape[0], x.device
        grid = torch.tensor(NEIGHBOURS, device=dev)
        label = torch.randint(0, self.num_classes, (b,), device=dev)
        cell_rc = grid[label.clamp(max=7)]
        cell_rc[label >= 8] = 1  # through-plane: centre cell
        ref_pos = self.cell + self.base + self._offsets(b, dev)
        qry_pos = cell_rc * self.cell + self.base + self._offsets(b, dev)
        ref = take_patches(x, ref_pos[:, 0], ref_pos[:, 1], self.patch)
        qry = take_patches(x, qry_pos[:, 0], qry_pos[:, 1], self.patch)
        if self.through_plane:
            ctx = batch["context"]
            other = take_patches(ctx, qry_pos[:, 0], qry_pos[:, 1], self.patch)
            dz = batch["context_dz"].to(dev)
            # the context stack lies above (dz < 0: class 8) or below (dz > 0: class 9) the reference
            tp = label >= 8
            label = torch.where(tp, torch.where(dz < 0, 8, 9), label)
            qry = torch.where(tp[:, None, None, None], other, qry)
        return ref, qry, label

    def training_loss(self, batch):
        ref, qry, label = self.make_pairs(batch)
        b = ref.shape[0]
        f = self.pooled_features(torch.cat([ref, qry]))
        logits = self.head(torch.cat([f[:b], f[b:]], 1))
        loss = F.cross_entropy(logits, label)
        return {"loss": loss, "accuracy": (logits.detach().argmax(1) == label).float().mean()}
