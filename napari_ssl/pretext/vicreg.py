"""VICReg (Bardes et al. 2022): invariance between views plus variance and covariance regularisation of each view."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from .joint_embedding import COMMON_HELP, COMMON_OPTIONS, GATHER_DISTRIBUTED, JointEmbeddingMethod


class VICReg(JointEmbeddingMethod):
    name: ClassVar[str] = "vicreg"
    summary: ClassVar[str] = "VICReg: view invariance with variance and covariance regularisation"
    options: ClassVar[dict[str, Any]] = {
        **COMMON_OPTIONS,
        "proj_hidden_dim": 1024,
        "proj_dim": 1024,
        "lambda_param": 25.0,
        "mu_param": 25.0,
        "nu_param": 1.0,
    }
    option_help: ClassVar[dict[str, str]] = {
        **COMMON_HELP,
        "proj_hidden_dim": "hidden width of the 3-layer projection MLP",
        "proj_dim": "output size of the projection MLP",
        "lambda_param": "weight of the invariance (MSE) term",
        "mu_param": "weight of the variance (std hinge) term",
        "nu_param": "weight of the covariance (off-diagonal) term",
    }

    def build_heads(self, feature_dim: int) -> None:
        from lightly.loss import VICRegLoss
        from lightly.models.modules.heads import VICRegProjectionHead

        o = self.opts
        self.projection_head = VICRegProjectionHead(feature_dim, int(o["proj_hidden_dim"]), int(o["proj_dim"]))
        self.criterion = VICRegLoss(
            lambda_param=float(o["lambda_param"]),
            mu_param=float(o["mu_param"]),
            nu_param=float(o["nu_param"]),
            gather_distributed=GATHER_DISTRIBUTED,
        )

    def pair_loss(self, view1, view2):
        from lightly.loss.vicreg_loss import covariance_loss, invariance_loss, variance_loss

        z1, z2 = self.embed(view1), self.embed(view2)
        out = {"loss": self.criterion(z1, z2)}
        with torch.no_grad():  # the three terms, logged (this rank's batch only)
            out["invariance"] = invariance_loss(z1, z2)
            out["variance"] = 0.5 * (variance_loss(z1) + variance_loss(z2))
            out["covariance"] = covariance_loss(z1) + covariance_loss(z2)
        return out
