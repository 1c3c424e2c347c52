"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation of the two views' projections the identity."""
from __future__ import annotations

from typing import Any, ClassVar

from .joint_embedding import COMMON_HELP, COMMON_OPTIONS, GATHER_DISTRIBUTED, JointEmbeddingMethod


class BarlowTwins(JointEmbeddingMethod):
    name: ClassVar[str] = "barlow-twins"
    summary: ClassVar[str] = "Barlow Twins: push the views' cross-correlation matrix toward the identity"
    options: ClassVar[dict[str, Any]] = {**COMMON_OPTIONS, "proj_hidden_dim": 1024, "proj_dim": 1024, "lambda_param": 5e-3}
    option_help: ClassVar[dict[str, str]] = {
        **COMMON_HELP,
        "proj_hidden_dim": "hidden width of the projection MLP",
        "proj_dim": "output size of the projection MLP (the cross-correlation is proj_dim x proj_dim)",
        "lambda_param": "weight of the off-diagonal (redundancy reduction) term",
    }

    def build_heads(self, feature_dim: int) -> None:
        from lightly.loss import BarlowTwinsLoss
        from lightly.models.modules.heads import BarlowTwinsProjectionHead

        o = self.opts
        self.projection_head = BarlowTwinsProjectionHead(feature_dim, int(o["proj_hidden_dim"]), int(o["proj_dim"]))
        self.criterion = BarlowTwinsLoss(lambda_param=float(o["lambda_param"]), gather_distributed=GATHER_DISTRIBUTED)

    def pair_loss(self, view1, view2):
        return {"loss": self.criterion(self.embed(view1), self.embed(view2))}
