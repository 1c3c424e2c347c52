"""The LightningModule that drives any :class:`~napari_ssl.pretext.base.PretextMethod`.

Manual optimisation: the method's ``optimize_step`` owns the update (one optimizer, or
alternating ones for adversarial in-painting); Lightning supplies mixed precision, DDP
gradient sync, checkpoint/resume and logging. The learning rate follows a linear warm-up
then a cosine decay, stepped once per batch.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from ..pretext.base import PretextMethod
from .schedules import per_step, warmup_cosine


class PretrainModule(pl.LightningModule):
    def __init__(self, method: PretextMethod, lr: float, weight_decay: float, total_steps: int, warmup_steps: int = 0, schedule: bool = True):
        super().__init__()
        self.automatic_optimization = False
        self.method = method
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.total_steps, self.warmup_steps, self.schedule = int(total_steps), int(warmup_steps), bool(schedule)
        self.num_optimizers = 1
        self.last_values: dict[str, torch.Tensor] = {}

    @property
    def step(self) -> int:
        """Batches trained so far (Lightning's global_step counts every optimizer step)."""
        return self.global_step // self.num_optimizers

    def configure_optimizers(self):
        opts = self.method.configure_optimizers(self.lr, self.weight_decay, self.total_steps)
        opts = list(opts) if isinstance(opts, (list, tuple)) else [opts]
        self.num_optimizers = len(opts)
        if not self.schedule:
            return opts
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, warmup_cosine(self.total_steps, self.warmup_steps, floor=0.01)) for o in opts]
        return opts, [per_step(s) for s in scheds]

    def training_step(self, batch, batch_idx):
        opts = self.optimizers()
        opts = list(opts) if isinstance(opts, (list, tuple)) else [opts]
        out = self.method.optimize_step(batch, opts, self.manual_backward)
        if self.schedule:
            scheds = self.lr_schedulers()
            for s in scheds if isinstance(scheds, (list, tuple)) else [scheds]:
                s.step()
        self.method.on_train_step_end(self.step, self.total_steps)
        self.last_values = {k: v.detach() for k, v in out.items()}
        self.log_dict({k: v.float() for k, v in self.last_values.items()}, on_step=True, on_epoch=False, batch_size=batch["image"].shape[0])
