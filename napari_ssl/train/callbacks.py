"""What the pretraining loop does between steps: losses, progress, previews, stop requests, periodic saves.

All per-step work is cheap (detached tensors appended to a list); conversions to Python
floats, events, previews and disk writes happen at most every few seconds.
"""
from __future__ import annotations

import io
import os
import signal
import threading
import time
from typing import Any, Callable, Optional

import numpy as np
import pytorch_lightning as pl
import torch

from ..pretext.pca_preview import feature_pca_rgb
from .events import Emitter

EVENT_EVERY_S = 0.5


class StopFlag:
    """Set by SIGINT/SIGTERM (installed while training) or by the caller's stop_event."""

    def __init__(self, stop_event: Any = None):
        self.stop_event = stop_event
        self.signalled = threading.Event()
        self._old: dict[int, Any] = {}

    def is_set(self) -> bool:
        return self.signalled.is_set() or bool(self.stop_event is not None and self.stop_event.is_set())

    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signalled.is_set():
            raise KeyboardInterrupt  # second Ctrl+C: stop without saving
        self.signalled.set()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self._handler)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, h in self._old.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)
        self._old = {}


def agree_any(flags: list[bool], trainer: pl.Trainer) -> list[bool]:
    """Element-wise OR of `flags` over DDP ranks (so every rank stops/saves at the same step)."""
    if trainer.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return flags
    t = torch.tensor([int(f) for f in flags], device=trainer.strategy.root_device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def png_bytes(img: np.ndarray, heat: bool = False) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    a = np.asarray(img, np.float32)
    if a.ndim == 2 and min(a.shape) < 64:  # small heatmaps: nearest-neighbour upscale so they stay readable
        k = int(np.ceil(64 / min(a.shape)))
        a = np.kron(a, np.ones((k, k), np.float32))
    buf = io.BytesIO()
    if a.ndim == 3:
        plt.imsave(buf, np.clip(a, 0, 1), format="png")
    else:
        lo, hi = (float(a.min()), float(a.max())) if heat else (0.0, 1.0)
        plt.imsave(buf, a, cmap="magma" if heat else "gray", vmin=lo, vmax=hi if hi > lo else lo + 1, format="png")
    return buf.getvalue()


class PretrainCallback(pl.Callback):
    def __init__(
        self,
        emit: Emitter,
        stop: StopFlag,
        total_steps: int,
        batch_size: int,
        preview_batch: Optional[dict],
        preview_slice: Optional[torch.Tensor],
        preview_every_s: float,
        preview_dir: Optional[str],
        save_fn: Callable[[pl.Trainer, str], None],
        checkpoint_every_s: float,
        is_rank0: bool,
    ):
        self.emit, self.stop = emit, stop
        self.total_steps, self.batch_size = total_steps, batch_size
        self.preview_batch, self.preview_slice = preview_batch, preview_slice
        self.preview_every_s, self.preview_dir = preview_every_s, preview_dir
        self.save_fn, self.checkpoint_every_s = save_fn, checkpoint_every_s
        self.is_rank0 = is_rank0
        self.pending: list[tuple[int, int, dict[str, torch.Tensor]]] = []
        self.rows: list[tuple[int, int, dict[str, float]]] = []  # (step, epoch, values) for losses.csv
        self.stopped = False
        self.last_preview_images: dict[str, np.ndarray] = {}
        self._t_event = self._t_preview = self._t_ckpt = 0.0
        self._t_rate, self._rate_step, self._rate = 0.0, 0, 0.0

    # --- hooks ------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        # Lightning installs its own SIGTERM handler (kill + exception); ours stops cleanly and saves
        self.stop.install()
        now = time.monotonic()
        self._t_event = self._t_ckpt = self._t_rate = now
        self._t_preview = now - 2 * self.preview_every_s  # first preview right after the first step
        self._rate_step = pl_module.step
        self.emit({"type": "started", "total_steps": self.total_steps, "step": pl_module.step})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = pl_module.step
        self.pending.append((step, trainer.current_epoch, pl_module.last_values))
        now = time.monotonic()
        want_ckpt = self.checkpoint_every_s > 0 and now - self._t_ckpt >= self.checkpoint_every_s
        stop, want_ckpt = agree_any([self.stop.is_set(), want_ckpt], trainer)
        if now - self._t_event >= EVENT_EVERY_S or stop or step >= self.total_steps:
            self.flush(trainer)
            self._t_event = now
        if self.is_rank0 and self.preview_every_s > 0 and now - self._t_preview >= self.preview_every_s:
            self.make_previews(pl_module, step)
            self._t_preview = time.monotonic()
        if stop:
            self.stopped = True
            trainer.should_stop = True
        elif want_ckpt and step < self.total_steps:
            self.save_fn(trainer, "running")
            self._t_ckpt = time.monotonic()

    # --- helpers -----------------------------------------------------------------------------
    def flush(self, trainer) -> None:
        if not self.pending:
            return
        keys = list(self.pending[-1][2])
        stacked = {k: torch.stack([p[2][k].float() for p in self.pending if k in p[2]]).cpu().numpy() for k in keys}
        for i, (step, epoch, vals) in enumerate(self.pending):
            self.rows.append((step, epoch, {k: float(stacked[k][i]) for k in keys if i < len(stacked[k])}))
        step, epoch = self.pending[-1][0], self.pending[-1][1]
        now = time.monotonic()
        if now > self._t_rate:
            self._rate = (step - self._rate_step) * self.batch_size * max(1, trainer.world_size) / (now - self._t_rate)
            self._t_rate, self._rate_step = now, step
        self.pending = []
        self.emit({"type": "loss", "step": step, "values": {k: float(np.mean(v)) for k, v in stacked.items()}})
        self.emit({"type": "progress", "step": step, "total_steps": self.total_steps, "epoch": epoch, "images_per_s": self._rate})

    def make_previews(self, pl_module, step: int) -> None:
        method = pl_module.method
        was_training = method.training
        method.eval()
        images: dict[str, np.ndarray] = {}
        try:
            with torch.no_grad():
                if self.preview_batch is not None:
                    batch = {k: v.to(pl_module.device) for k, v in self.preview_batch.items()}
                    images.update(method.previews(batch))
                if self.preview_slice is not None:
                    images["feature_pca"] = feature_pca_rgb(method.encoder, self.preview_slice.to(pl_module.device))
        finally:
            method.train(was_training)
        if not images:
            return
        self.last_preview_images = images
        self.emit({"type": "preview", "step": step, "images": images})
        self.write_previews()

    def write_previews(self) -> None:
        if not self.preview_dir or not self.last_preview_images:
            return
        from ..io.atomic import atomic_write_bytes

        os.makedirs(self.preview_dir, exist_ok=True)
        for name, img in self.last_preview_images.items():
            atomic_write_bytes(os.path.join(self.preview_dir, f"{name}.png"), png_bytes(img, heat="heat" in name))

    def losses_csv(self) -> str:
        keys: list[str] = []
        for _, _, vals in self.rows:
            for k in vals:
                if k not in keys:
                    keys.append(k)
        lines = [",".join(["step", "epoch", *keys])]
        for step, epoch, vals in self.rows:
            lines.append(",".join([str(step), str(epoch), *(f"{vals[k]:.6g}" if k in vals else "" for k in keys)]))
        return "\n".join(lines) + "\n"

    def recent_loss(self, n: int = 10) -> Optional[float]:
        vals = [v["loss"] for _, _, v in self.rows[-n:] if "loss" in v]
        return float(np.mean(vals)) if vals else None


class OnTrainEnd(pl.Callback):
    """Calls ``fn(trainer, pl_module)`` when training ends (every rank: the final save is collective)."""

    def __init__(self, fn: Callable[[pl.Trainer, Any], None]):
        self.fn = fn

    def on_train_end(self, trainer, pl_module):
        self.fn(trainer, pl_module)
