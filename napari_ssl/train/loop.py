"""The supervised training loop shared by fine-tuning and the semi-supervised recipe: a Lightning Trainer
over annotated-slice batches, with the event contract (started / loss / progress / preview) and Stop."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..data.labelled_slices import LabelledSliceDataset
from .devices import lightning_devices
from .lightning_quiet import quiet_lightning


def make_loader(dataset: LabelledSliceDataset, batch_size: int, steps: int, seed: int, num_workers: int = 0):
    """Sample annotated slices with replacement: exactly `steps` batches, the order fixed by `seed`."""
    gen = torch.Generator().manual_seed(int(seed))
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=steps * batch_size, generator=gen)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True)



class _EventCallback:
    """Lightning callback turning training into contract events; honours stop_event."""

    def __new__(cls, *a, **k):  # subclass pl.Callback lazily (keep import cost inside run)
        import pytorch_lightning as pl

        class _Impl(pl.Callback):
            def __init__(self, emit, stop_event, total, preview_every_s):
                self.emit, self.stop_event, self.total = emit, stop_event, total
                self.preview_every_s, self.last_preview = preview_every_s, 0.0
                self.stopped = False

            def on_train_start(self, trainer, module):
                self.emit({"type": "started", "total_steps": self.total})

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if self.stop_event is not None and self.stop_event.is_set():
                    self.stopped = True
                    trainer.should_stop = True
                    return -1

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                step = int(trainer.global_step)
                self.emit({"type": "loss", "step": step, "values": {"loss": module.last_loss}})
                self.emit({"type": "progress", "step": step, "total_steps": self.total, "epoch": int(trainer.current_epoch)})
                now = time.monotonic()
                if self.preview_every_s and now - self.last_preview >= self.preview_every_s:
                    self.last_preview = now
                    modes = [(m, m.training) for m in module.unet.modules()]
                    module.unet.eval()
                    with torch.no_grad():
                        img = batch["image"][:1]
                        logits = module.unet(img)
                        pred = logits.argmax(1)[0].float() / max(1, logits.shape[1] - 1)
                    for m, mode in modes:
                        m.training = mode
                    mid = img.shape[1] // 2
                    self.emit({"type": "preview", "step": step, "images": {"image": img[0, mid].detach().cpu().numpy().astype(np.float32),
                                                                           "prediction": pred.cpu().numpy().astype(np.float32)}})
                if self.stop_event is not None and self.stop_event.is_set():
                    self.stopped = True
                    trainer.should_stop = True

        return _Impl(*a, **k)


def train_unet(unet: torch.nn.Module, dataset: LabelledSliceDataset, *, steps: int, batch_size: int = 8, lr: float = 1e-3,
               weight_decay: float = 1e-4, loss: str = "dice-ce", encoder_lr_scale: float = 1.0, freeze_encoder_steps: int = 0,
               freeze_encoder_bn: bool = False, seed: int = 0, devices: str = "auto", precision: str = "32", num_workers: int = 0,
               emit: Callable[[dict], None] = lambda e: None, stop_event=None, preview_every_s: float = 0.0,
               module_factory: Optional[Callable[..., Any]] = None) -> tuple[torch.nn.Module, dict]:
    """Train `unet` in place with a Lightning Trainer for `steps` optimiser steps; returns (unet, info).

    `module_factory`: the LightningModule class (default SegmentationModule), or a partial of it carrying
    options the loop does not set (the label-efficiency benchmark's head-only warm-up and class weights)."""
    import pytorch_lightning as pl

    from .malloc_tuning import keep_freed_memory

    keep_freed_memory()

    from .seg_module import SegmentationModule

    quiet_lightning()
    pl.seed_everything(int(seed), workers=True, verbose=False)
    module = (module_factory or SegmentationModule)(unet, loss=loss, lr=lr, weight_decay=weight_decay, total_steps=steps,
                                encoder_lr_scale=encoder_lr_scale, freeze_encoder_steps=freeze_encoder_steps, freeze_encoder_bn=freeze_encoder_bn)
    loader = make_loader(dataset, batch_size, steps, seed, num_workers)
    cb = _EventCallback(emit, stop_event, steps, preview_every_s)
    accelerator, dev = lightning_devices(devices)
    trainer = pl.Trainer(max_steps=steps, max_epochs=1, accelerator=accelerator, devices=dev, precision=precision,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[cb], deterministic=False, num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(module, train_dataloaders=loader)
    unet.eval()
    return unet, {"steps": int(trainer.global_step), "final_loss": module.last_loss, "stopped": bool(cb.stopped)}
