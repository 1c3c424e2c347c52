"""SimSiam (Chen & He 2021): predict the other view's projection through a stop-gradient (no negatives, no momentum)."""
from __future__ import annotations

from typing import Any, ClassVar

from .joint_embedding import COMMON_HELP, COMMON_OPTIONS, JointEmbeddingMethod


class SimSiam(JointEmbeddingMethod):
    name: ClassVar[str] = "simsiam"
    summary: ClassVar[str] = "SimSiam: predict the other view's projection with a stop-gradient"
    options: ClassVar[dict[str, Any]] = {**COMMON_OPTIONS, "proj_hidden_dim": 512, "proj_dim": 512, "pred_hidden_dim": 128}
    option_help: ClassVar[dict[str, str]] = {
        **COMMON_HELP,
        "proj_hidden_dim": "hidden width of the projection MLP",
        "proj_dim": "output size of the projection and prediction MLPs",
        "pred_hidden_dim": "hidden width of the prediction MLP (a bottleneck, ~proj_dim/4)",
    }

    def build_heads(self, feature_dim: int) -> None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules.heads import SimSiamPredictionHead, SimSiamProjectionHead

        o = self.opts
        self.projection_head = SimSiamProjectionHead(feature_dim, int(o["proj_hidden_dim"]), int(o["proj_dim"]))
        self.prediction_head = SimSiamPredictionHead(int(o["proj_dim"]), int(o["pred_hidden_dim"]), int(o["proj_dim"]))
        self.criterion = NegativeCosineSimilarity()

    def symmetric_loss(self, p1, p2, z1, z2):
        """D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2 with D the negative cosine similarity."""
        return 0.5 * (self.criterion(p1, z2.detach()) + self.criterion(p2, z1.detach()))

    def pair_loss(self, view1, view2):
        z1, z2 = self.embed(view1), self.embed(view2)
        return {"loss": self.symmetric_loss(self.prediction_head(z1), self.prediction_head(z2), z1, z2)}
