"""SimCLR (Chen et al. 2020): NT-Xent contrastive loss, the other samples of the batch are negatives."""
from __future__ import annotations

from typing import Any, ClassVar

from .joint_embedding import COMMON_HELP, COMMON_OPTIONS, GATHER_DISTRIBUTED, JointEmbeddingMethod


class SimCLR(JointEmbeddingMethod):
    name: ClassVar[str] = "simclr"
    summary: ClassVar[str] = "SimCLR: contrast two views against the rest of the batch (NT-Xent)"
    options: ClassVar[dict[str, Any]] = {**COMMON_OPTIONS, "proj_hidden_dim": 512, "proj_dim": 128, "temperature": 0.2}
    option_help: ClassVar[dict[str, str]] = {
        **COMMON_HELP,
        "proj_hidden_dim": "hidden width of the projection MLP",
        "proj_dim": "output size of the projection MLP",
        "temperature": "NT-Xent temperature (lower = harder negatives; 0.1-0.5)",
    }

    def build_heads(self, feature_dim: int) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules.heads import SimCLRProjectionHead

        o = self.opts
        self.projection_head = SimCLRProjectionHead(feature_dim, int(o["proj_hidden_dim"]), int(o["proj_dim"]))
        self.criterion = NTXentLoss(temperature=float(o["temperature"]), gather_distributed=GATHER_DISTRIBUTED)

    def pair_loss(self, view1, view2):
        return {"loss": self.criterion(self.embed(view1), self.embed(view2))}
