"""VICReg (Bardes et al. 2022): invariance between views plus variance and covariance regularisation of each view."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .joint_embedding import COMMON_HELP, COMMON_OPTIONS, GATHER_DISTRIBUTED, JointEmbeddingMethod


def covariance_loss(x: torch.Tensor) -> torch.Tensor:
    """lightly's / the paper's covariance term of (N, D) embeddings: sum of squared off-diagonal covariances / D.

    Computed without the D x D boolean mask and masked copy that lightly's ``covariance_loss`` builds (that was
    ~40 % of a VICReg step on a CPU): sum_{i != j} C_ij^2 = ||C||_F^2 - sum_i C_ii^2, and when N < D
    ||Xc^T Xc||_F = ||Xc Xc^T||_F, so an N x N Gram matrix replaces the D x D covariance. In float32 (or float64)
    with autocast off, since the off-diagonal part is a difference of two sums.
    """
    n, d = x.shape
    with torch.autocast(x.device.type, enabled=False):
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        xc = xf - xf.mean(dim=0)
        gram = xc @ xc.T if n < d else xc.T @ xc
        diag = xc.pow(2).sum(dim=0)  # (n - 1) * C_ii
        return (gram.pow(2).sum() - diag.pow(2).sum()) / ((n - 1) ** 2 * d)


def variance_loss(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Hinge on the per-dimension standard deviation (as lightly's ``variance_loss``)."""
    return F.relu(1.0 - torch.sqrt(x.var(dim=0) + eps)).mean()


class VICRegLoss(torch.nn.Module):
    """The VICReg loss, term for term as ``lightly.loss.VICRegLoss`` (gathers across DDP ranks for the
    variance and covariance terms likewise), but the three terms are computed once and returned for logging."""

    def __init__(self, lambda_param: float = 25.0, mu_param: float = 25.0, nu_param: float = 1.0, gather_distributed: bool = False,
                 eps: float = 1e-4):
        super().__init__()
        self.lambda_param, self.mu_param, self.nu_param = float(lambda_param), float(mu_param), float(nu_param)
        self.gather_distributed, self.eps = bool(gather_distributed), float(eps)

    def terms(self, z_a: torch.Tensor, z_b: torch.Tensor) -> dict[str, torch.Tensor]:
        if z_a.shape != z_b.shape or z_a.ndim != 2 or z_a.shape[0] < 2:
            raise ValueError(f"VICReg needs two (N, D) embeddings with N > 1, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
        inv = F.mse_loss(z_a, z_b)
        if (self.gather_distributed and torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            from lightly.utils.dist import gather

            z_a, z_b = torch.cat(gather(z_a), dim=0), torch.cat(gather(z_b), dim=0)
        var = 0.5 * (variance_loss(z_a, self.eps) + variance_loss(z_b, self.eps))
        cov = covariance_loss(z_a) + covariance_loss(z_b)
        loss = self.lambda_param * inv + self.mu_param * var + self.nu_param * cov
        return {"loss": loss, "invariance": inv, "variance": var, "covariance": cov}

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return self.terms(z_a, z_b)["loss"]


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
        out = self.criterion.terms(self.embed(view1), self.embed(view2))
        # the three terms are logged (detached; over all ranks' batches for variance/covariance, like the loss)
        return {k: (v if k == "loss" else v.detach()) for k, v in out.items()}
