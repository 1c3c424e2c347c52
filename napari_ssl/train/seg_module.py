"""Lightning module that fine-tunes an smp U-Net on annotated slices.

Knobs that decide whether a pretrained encoder helps with very few labels:
``encoder_lr_scale`` (a lower learning rate for the pretrained encoder than for the
freshly initialised decoder) and ``freeze_encoder_steps`` (a short decoder warm-up with
the encoder frozen, its BatchNorm statistics included, so that the random decoder's
first large gradients do not wash out the pretrained features). Two more the label-efficiency benchmark
probed (benchmarks/RESULTS.md), off by default because neither beat it there: ``head_warmup_steps`` (only the
segmentation head trains first; made one-class plateaus worse) and ``class_weights`` for the cross-entropy
(see :func:`balanced_class_weights`; removed the plateaus but helped a random init as much as a pretrained one).
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..models.optim import adamw
from .schedules import per_step, warmup_cosine

LOSSES = ("dice-ce", "jaccard")


def soft_overlap_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "dice", eps: float = 1.0) -> torch.Tensor:
    """Multiclass soft Dice (or Jaccard) loss over the foreground classes present in the batch
    (absent classes give no signal rather than a free zero loss)."""
    probs = logits.softmax(1)
    k = logits.shape[1]
    onehot = F.one_hot(target, k).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    card = probs.sum(dims) + onehot.sum(dims)
    if kind == "jaccard":
        score = (inter + eps) / (card - inter + eps)
    else:
        score = (2 * inter + eps) / (card + eps)
    present = onehot.sum(dims) > 0
    present[0] = False
    if not bool(present.any()):
        # annotated-empty slices only: the background term still teaches "nothing here"
        present = torch.zeros_like(present)
        present[0] = True
    return (1 - score)[present].mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "dice-ce",
                      class_weights: torch.Tensor | None = None) -> torch.Tensor:
    if kind == "jaccard":
        return soft_overlap_loss(logits, target, "jaccard")
    w = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
    return F.cross_entropy(logits, target, weight=w) + soft_overlap_loss(logits, target, "dice")


def balanced_class_weights(targets: torch.Tensor, num_classes: int, power: float = 0.5) -> torch.Tensor:
    """Cross-entropy weights from the annotated voxels: (frequency)^-power, normalised to mean 1 over the
    classes that occur (absent classes get the largest weight seen). With a few slices a small structure
    is 1-3 % of the pixels, and unweighted cross-entropy first drives every logit to background."""
    counts = torch.bincount(targets.reshape(-1).long(), minlength=num_classes).double()[:num_classes]
    freq = counts / counts.sum().clamp(min=1)
    w = torch.zeros(num_classes, dtype=torch.float64)
    seen = freq > 0
    if bool(seen.any()):
        w[seen] = freq[seen] ** -power
        w[~seen] = w[seen].max()
        w = w / w[seen].mean()
    else:
        w[:] = 1.0
    return w.float()


class SegmentationModule(pl.LightningModule):
    def __init__(self, unet: torch.nn.Module, loss: str = "dice-ce", lr: float = 1e-3, weight_decay: float = 1e-4,
                 total_steps: int = 500, encoder_lr_scale: float = 1.0, freeze_encoder_steps: int = 0, warmup_fraction: float = 0.05,
                 freeze_encoder_bn: bool = False, head_warmup_steps: int = 0, class_weights: torch.Tensor | None = None):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}")
        self.unet = unet
        self.loss_kind = loss
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.total_steps = max(1, int(total_steps))
        self.encoder_lr_scale = float(encoder_lr_scale)
        self.freeze_encoder_steps = int(freeze_encoder_steps)
        self.freeze_encoder_bn = bool(freeze_encoder_bn)  # keep the (pretrained) encoder's BatchNorm statistics for the whole run
        self.head_warmup_steps = int(head_warmup_steps)  # linear probe first: only the segmentation head trains
        self.warmup_steps = int(warmup_fraction * self.total_steps)
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.last_loss = float("nan")
        self._frozen_parts: dict[str, bool] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)

    def _set_frozen(self, part: str, frozen: bool) -> None:
        """Freeze or unfreeze ``self.unet.<part>`` ("encoder"; "decoder" for the head-only warm-up)."""
        if self._frozen_parts.get(part, False) == frozen:
            return
        for p in getattr(self.unet, part).parameters():
            p.requires_grad_(not frozen)
        self._frozen_parts[part] = frozen

    def on_train_start(self) -> None:
        self.unet.train()  # Lightning keeps the modes modules arrive in; a model evaluated before fit must still train with dropout/BatchNorm updates

    def on_train_batch_start(self, batch, batch_idx):
        body = self.global_step < self.head_warmup_steps
        self._set_frozen("decoder", body)
        self._set_frozen("encoder", body or self.global_step < self.freeze_encoder_steps)
        if body:
            self.unet.decoder.eval()
        else:
            self.unet.decoder.train()
        if self._frozen_parts.get("encoder", False):
            self.unet.encoder.eval()  # keep pretrained BatchNorm statistics during the warm-up
        else:
            self.unet.encoder.train()
            if self.freeze_encoder_bn:
                for m in self.unet.encoder.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.eval()

    def training_step(self, batch, batch_idx):
        logits = self.unet(batch["image"])
        loss = segmentation_loss(logits, batch["target"], self.loss_kind, self.class_weights)
        self.last_loss = float(loss.detach())
        self.log("loss", loss, prog_bar=False, on_step=True, batch_size=batch["image"].shape[0])
        return loss

    def on_train_end(self) -> None:
        self._set_frozen("encoder", False)
        self._set_frozen("decoder", False)

    def configure_optimizers(self):
        enc = list(self.unet.encoder.parameters())
        enc_ids = {id(p) for p in enc}
        rest = [p for p in self.unet.parameters() if id(p) not in enc_ids]
        groups = [{"params": enc, "lr": self.lr * self.encoder_lr_scale}, {"params": rest, "lr": self.lr}]
        opt = adamw(groups, lr=self.lr, weight_decay=self.weight_decay)
        # linear warm-up over warmup_steps + 1, then cosine to 5 %
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(self.total_steps, self.warmup_steps, floor=0.05, ramp_offset=1))
        return {"optimizer": opt, "lr_scheduler": per_step(sched)}
