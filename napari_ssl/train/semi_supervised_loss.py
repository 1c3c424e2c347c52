"""The semi-supervised recipe's loss (napari_ssl.train.semi_supervised): the plain loss on the user's slices, and
weighted cross-entropy + Dice on pseudo-labelled slices, where IGNORE marks pixels a pseudo-label does not decide."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..data.planes import IGNORE  # target value of pixels no label decides (pseudo-labels, side planes' unannotated rows)
from .seg_module import SegmentationModule, segmentation_loss


def masked_soft_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice over foreground classes present, on pixels whose target is not IGNORE."""
    valid = (target != IGNORE).unsqueeze(1).to(logits.dtype)
    probs = logits.softmax(1) * valid
    k = logits.shape[1]
    onehot = F.one_hot(target.clamp(max=k - 1) * (target != IGNORE), k).permute(0, 3, 1, 2).to(probs.dtype) * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    card = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    present[0] = False
    if not bool(present.any()):
        return logits.sum() * 0
    return (1 - (2 * inter + eps) / (card + eps))[present].mean()


def semi_supervised_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str = "dice-ce",
                         class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The plain loss on the user's dense slices (weight 1) + weight-scaled CE and masked Dice on the others
    (pseudo-labelled slices, and side planes whose unannotated rows are IGNORE)."""
    user = (weight >= 1.0) & (target != IGNORE).flatten(1).all(1)
    total = logits.sum() * 0
    if bool(user.any()):
        total = total + segmentation_loss(logits[user], target[user], kind, class_weights)
    pseudo = ~user
    if bool(pseudo.any()):
        lp, tp, wp = logits[pseudo], target[pseudo], weight[pseudo].to(logits.dtype)
        cw = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
        ce = F.cross_entropy(lp, tp, weight=cw, ignore_index=IGNORE, reduction="none")  # (n, H, W), 0 at ignored
        valid = (tp != IGNORE).to(logits.dtype)
        ce = (ce.sum((1, 2)) / valid.sum((1, 2)).clamp(min=1) * wp).mean()
        total = total + ce + wp.mean() * masked_soft_dice(lp, tp)
    return total


class SemiSupervisedModule(SegmentationModule):
    """Fine-tuning on the user's slices and weighted pseudo-labels; with ``consistency`` > 0 and batches carrying
    ``u_image`` (train/consistency.py), plus the weak/strong consistency term, ramped up linearly over the first
    ``consistency_ramp`` of the steps."""

    def __init__(self, unet: torch.nn.Module, *, consistency: float = 0.0, consistency_threshold: float = 0.95,
                 consistency_ramp: float = 0.2, **kw):
        super().__init__(unet, **kw)
        self.consistency = float(consistency)
        self.consistency_threshold = float(consistency_threshold)
        self.consistency_ramp = float(consistency_ramp)

    def training_step(self, batch, batch_idx):
        x = batch["image"]
        if self.consistency > 0 and "u_image" in batch:
            from .consistency import consistency_loss, strong_view

            u = batch["u_image"]
            with torch.no_grad():
                teacher = self.unet(u).float().softmax(1)
            logits_all = self.unet(torch.cat([x, strong_view(u)]))
            logits, lu = logits_all[:x.shape[0]], logits_all[x.shape[0]:]
            ramp = min(1.0, (self.global_step + 1) / max(1.0, self.consistency_ramp * self.total_steps))
            extra = self.consistency * ramp * consistency_loss(lu, teacher, self.consistency_threshold)
        else:
            logits = self.unet(x)
            extra = 0.0
        loss = semi_supervised_loss(logits, batch["target"], batch["weight"], self.loss_kind, self.class_weights) + extra
        self.last_loss = float(loss.detach())
        self.log("loss", loss, prog_bar=False, on_step=True, batch_size=x.shape[0])
        return loss
