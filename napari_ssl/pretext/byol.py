"""BYOL (Grill et al. 2020): predict a momentum (EMA) target network's projection of the other view."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from .joint_embedding import COMMON_HELP, COMMON_OPTIONS, MOMENTUM_HELP, MOMENTUM_OPTIONS, JointEmbeddingMethod


class BYOL(JointEmbeddingMethod):
    name: ClassVar[str] = "byol"
    summary: ClassVar[str] = "BYOL: predict a momentum encoder's projection of another view (no negatives)"
    options: ClassVar[dict[str, Any]] = {
        **COMMON_OPTIONS,
        "proj_hidden_dim": 1024,
        "proj_dim": 256,
        "pred_hidden_dim": 1024,
        **MOMENTUM_OPTIONS,
    }
    option_help: ClassVar[dict[str, str]] = {
        **COMMON_HELP,
        "proj_hidden_dim": "hidden width of the projection MLP",
        "proj_dim": "output size of the projection and prediction MLPs",
        "pred_hidden_dim": "hidden width of the prediction MLP",
        **MOMENTUM_HELP,
    }

    def build_heads(self, feature_dim: int) -> None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead

        o = self.opts
        self.projection_head = BYOLProjectionHead(feature_dim, int(o["proj_hidden_dim"]), int(o["proj_dim"]))
        self.prediction_head = BYOLPredictionHead(int(o["proj_dim"]), int(o["pred_hidden_dim"]), int(o["proj_dim"]))
        self.add_momentum_copy("encoder")
        self.add_momentum_copy("projection_head")
        self.criterion = NegativeCosineSimilarity()

    def target(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.projection_head_momentum(self.encoder_momentum(x)[-1].mean(dim=(2, 3))).detach()

    def symmetric_loss(self, p1, p2, z1, z2) -> torch.Tensor:
        """Online predictions p of each view against the target projections z of the other view."""
        return 0.5 * (self.criterion(p1, z2) + self.criterion(p2, z1))

    def pair_loss(self, view1, view2):
        p1 = self.prediction_head(self.embed(view1))
        p2 = self.prediction_head(self.embed(view2))
        loss = self.symmetric_loss(p1, p2, self.target(view1), self.target(view2))
        return {"loss": loss}
