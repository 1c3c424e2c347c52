"""MoCo v2 (He et al. 2020; Chen et al. 2020): contrast queries against momentum-encoder keys and a queue of past keys."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from .joint_embedding import (
    COMMON_HELP,
    COMMON_OPTIONS,
    GATHER_DISTRIBUTED,
    MOMENTUM_HELP,
    MOMENTUM_OPTIONS,
    JointEmbeddingMethod,
)


class MoCo(JointEmbeddingMethod):
    name: ClassVar[str] = "moco"
    summary: ClassVar[str] = "MoCo v2: contrast against a momentum encoder's keys and a memory bank of negatives"
    options: ClassVar[dict[str, Any]] = {
        **COMMON_OPTIONS,
        "proj_hidden_dim": 512,
        "proj_dim": 128,
        "temperature": 0.2,
        "memory_bank_size": 4096,
        **MOMENTUM_OPTIONS,
    }
    option_help: ClassVar[dict[str, str]] = {
        **COMMON_HELP,
        "proj_hidden_dim": "hidden width of the projection MLP",
        "proj_dim": "output size of the projection MLP",
        "temperature": "InfoNCE temperature",
        "memory_bank_size": "number of past keys used as negatives (0 = the batch's keys only)",
        **MOMENTUM_HELP,
    }

    def build_heads(self, feature_dim: int) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules.heads import MoCoProjectionHead

        o = self.opts
        size = int(o["memory_bank_size"])
        if size < 0:
            from ..errors import NapariSSLError

            raise NapariSSLError(f"memory_bank_size must be >= 0 (got {size})")
        self.projection_head = MoCoProjectionHead(feature_dim, int(o["proj_hidden_dim"]), int(o["proj_dim"]))
        self.add_momentum_copy("encoder")
        self.add_momentum_copy("projection_head")
        bank = (size, int(o["proj_dim"])) if size > 0 else 0
        self.criterion = NTXentLoss(
            temperature=float(o["temperature"]), memory_bank_size=bank, gather_distributed=GATHER_DISTRIBUTED
        )

    def key(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.projection_head_momentum(self.encoder_momentum(x)[-1].mean(dim=(2, 3))).detach()

    def pair_loss(self, view1, view2):
        # symmetrised in one call: queries of both views against the keys of the other view; the bank is
        # read before the 2B new keys are enqueued, so a sample's own keys never act as its negatives
        q = torch.cat([self.embed(view1), self.embed(view2)])
        k = torch.cat([self.key(view2), self.key(view1)])
        return {"loss": self.criterion(q, k)}
