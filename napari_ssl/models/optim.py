"""The optimiser every training loop builds: AdamW (or Adam) with PyTorch's fused kernel where it exists."""
from __future__ import annotations

from typing import Any

import torch


def adamw(params, lr: float, weight_decay: float, cls: type = torch.optim.AdamW, **kw: Any) -> torch.optim.Optimizer:
    """``cls`` (AdamW, or Adam) with PyTorch's fused kernel where the parameters' device supports it.

    Same update rule; on one CPU thread the fused step is ~4x faster than the default per-tensor loop
    (15 vs 60-85 ms per step for a resnet18 encoder + heads, ~15 % of a small-batch pretraining step).
    `params`: tensors or parameter groups.
    """
    params = list(params)
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # a device/dtype without a fused kernel
        return cls(params, lr=lr, weight_decay=weight_decay, **kw)
