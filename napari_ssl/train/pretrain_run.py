"""One pretraining run once everything is checked (napari_ssl.train.pretrain): the Lightning Trainer,
the periodic and final saves, and what a failure leaves behind.

Every file in the output folder is complete or absent: each is written to a temporary name and renamed.
model.json's "status": "running" (periodic save of a run still going, or one that crashed), "stopped"
(cancelled; resume continues from last.ckpt), "complete", or "failed" (with "error"). Only rank 0 writes.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import NapariSSLError
from ..models.metadata import PRETRAINED, ModelMeta, now_text
from .events import Emitter
from .lightning_quiet import filter_lightning_warnings


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg or "cannot allocate memory" in msg)


def oom_error(config: Any) -> NapariSSLError:
    return NapariSSLError(f"out of memory at --batch-size {config.batch_size} --image-size {config.image_size}; lower --batch-size or --image-size")


def state_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (names, shapes, values): equal digests mean equal weights."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        t = v.detach().to("cpu").contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _read_rows(path: str, upto: int) -> list:
    rows = []
    try:
        with open(path) as f:
            header = f.readline().strip().split(",")
            for line in f:
                parts = line.strip().split(",")
                if len(parts) != len(header):
                    continue
                step, epoch = int(parts[0]), int(parts[1])
                if step <= upto:
                    rows.append((step, epoch, {k: float(v) for k, v in zip(header[2:], parts[2:]) if v != ""}))
    except (OSError, ValueError):
        return []
    return rows


@dataclass
class PretrainData:
    dataset: Any            # SliceDataset
    normalization: dict     # {modality: spec} of the modalities seen
    summary: dict           # counts and shapes for model.json (no identifiers)


@dataclass
class RunSetup:
    accelerator: str
    devices: Any
    saved_meta: Optional[dict]  # model.json of the run being resumed
    init_info: Optional[dict]   # where --init weights came from
    created: str


def _strategy(config: Any, method):
    if config.strategy != "ddp":
        return config.strategy
    from pytorch_lightning.strategies import DDPStrategy

    return DDPStrategy(find_unused_parameters=bool(method.find_unused_parameters))


def _trainer_kwargs(config: Any, setup: RunSetup, out: str) -> dict:
    """What every Trainer of the run shares."""
    from pytorch_lightning.loggers import CSVLogger

    accelerator = setup.accelerator
    return dict(
        accelerator=accelerator, devices=setup.devices, num_nodes=int(config.num_nodes),
        precision=str(config.precision), max_epochs=-1, logger=CSVLogger(out, name="logs", version=""),
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        use_distributed_sampler=False, num_sanity_val_steps=0, log_every_n_steps=int(config.log_every_n_steps),
        deterministic=accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()),
    )


def _rank_and_world(config: Any, method, trainer_kw: dict) -> tuple[int, int]:
    """(global rank, world size); a bad --devices/--strategy/--precision is one line.

    Lightning decides them (devices x nodes, or torchrun's environment) only when a Trainer is built;
    a throw-away one without a logger tells them before the sampler, the events and the output folder need them."""
    import pytorch_lightning as pl

    with warnings.catch_warnings():
        filter_lightning_warnings()
        try:
            probe = pl.Trainer(max_steps=1, strategy=_strategy(config, method), **{**trainer_kw, "logger": False})
        except Exception as exc:  # Lightning's MisconfigurationException and friends: bad devices/precision/strategy
            raise NapariSSLError(f"cannot set up training ({str(exc).splitlines()[0][:200]}); check --devices/--strategy/--precision") from None
    return probe.global_rank, probe.world_size


def _count_optimizers(config: Any, method) -> int:
    """Optimizers the method steps per batch (Lightning's max_steps counts each one)."""
    from .lightning_module import PretrainModule

    probe = PretrainModule(method, config.lr, config.weight_decay, 1)
    probe.configure_optimizers()
    return probe.num_optimizers


class PretrainRun:
    """One run once everything is checked: the Trainer, the periodic and final saves, failure handling."""

    def __init__(self, config: Any, cls, method, data: PretrainData, setup: RunSetup, events, stop_event):
        from .callbacks import PretrainCallback, StopFlag
        from .lightning_module import PretrainModule

        self.config, self.cls, self.method, self.data, self.setup = config, cls, method, data, setup
        self.out = os.path.abspath(config.out)
        self.n_opt = _count_optimizers(config, method)
        self.trainer_kw = _trainer_kwargs(config, setup, self.out)
        self.rank, self.world = _rank_and_world(config, method, self.trainer_kw)
        self.emit = Emitter(events, self.rank)
        steps_per_epoch = max(1, len(data.dataset) // (config.batch_size * self.world))
        self.total_steps = int(config.steps) if config.steps else int(config.epochs) * steps_per_epoch
        warmup = config.warmup_steps if config.warmup_steps is not None else min(500, self.total_steps // 20)
        self.module = PretrainModule(method, config.lr, config.weight_decay, self.total_steps, warmup)
        self.loader = self._loader()
        self.created_dir = not os.path.isdir(self.out)
        resume_step = int(setup.saved_meta.get("steps") or 0) if setup.saved_meta else 0
        self.saved, self.final_step, self.digests = False, resume_step, {}
        rank0 = self.rank == 0
        self.stop = StopFlag(stop_event)
        self.cb = PretrainCallback(self.emit, self.stop, self.total_steps, config.batch_size, data.dataset.fixed_batch(4) if rank0 else None,
                                   data.dataset.fixed_slice() if rank0 else None, float(config.preview_every_s),
                                   os.path.join(self.out, "previews"), self.save, float(config.checkpoint_every_s), rank0)
        if config.resume:
            self.cb.rows = _read_rows(os.path.join(self.out, "losses.csv"), resume_step)

    def _loader(self):
        from ..data.slices import ShardedBatchSampler

        c = self.config
        sampler = ShardedBatchSampler(len(self.data.dataset), c.batch_size, self.rank, self.world, seed=int(c.seed))
        return torch.utils.data.DataLoader(self.data.dataset, batch_size=None, sampler=sampler, num_workers=int(c.num_workers),
                                           persistent_workers=c.num_workers > 0,
                                           pin_memory=torch.cuda.is_available() and self.setup.accelerator != "cpu")

    def meta(self, status: str, step: int) -> ModelMeta:
        c, opts = self.config, self.method.opts
        return ModelMeta(
            kind=PRETRAINED, method=c.method, encoder_name=c.encoder, in_channels=int(c.in_channels), image_size=int(c.image_size),
            normalization=self.data.normalization, data=self.data.summary, created=(self.setup.saved_meta or {}).get("created", self.setup.created),
            extra={"method_kind": self.cls.kind, "steps": int(step), "total_steps": self.total_steps, "final_loss": self.cb.recent_loss(),
                   "options": opts, "pairs": opts.get("pairs", "augment") if self.cls.kind == "joint-embedding" else None,
                   "batch_size": c.batch_size, "lr": c.lr, "weight_decay": c.weight_decay, "precision": str(c.precision),
                   "world_size": self.world, "seed": c.seed, "init": self.setup.init_info, "status": status, "updated": now_text()})

    def save(self, trainer, status: str) -> None:
        """last.ckpt, losses.csv, previews, (the whole U-Net,) encoder.safetensors + model.json: each complete or absent."""
        from ..io.atomic import atomic_write_bytes
        from ..models.checkpoint import save_weights

        self.cb.flush(trainer)
        step, out, method = self.module.step, self.out, self.method
        # Lightning writes the checkpoint itself (every rank must call, rank 0 writes): renamed into place here
        tmp_ckpt = os.path.join(out, f".last.ckpt.tmp-{os.getpid()}")
        trainer.save_checkpoint(tmp_ckpt, weights_only=False)
        if self.rank == 0:
            os.replace(tmp_ckpt, os.path.join(out, "last.ckpt"))
            atomic_write_bytes(os.path.join(out, "losses.csv"), self.cb.losses_csv().encode())
            self.cb.write_previews()
            if getattr(method, "needs_unet", False) and isinstance(getattr(method, "unet", None), torch.nn.Module):
                from safetensors.torch import save as _st_save  # whole U-Net too (fine-tuning's --transfer-decoder)

                atomic_write_bytes(os.path.join(out, "unet.safetensors"),
                                   _st_save({k: v.detach().cpu().contiguous() for k, v in method.unet.state_dict().items()}))
            save_weights(out, method.encoder.state_dict(), self.meta(status, step), name="encoder")
            self.emit({"type": "checkpoint", "path": out, "step": step})
        self.saved, self.final_step = True, step

    def finish(self, trainer, pl_module) -> None:
        _sync_buffers(pl_module, trainer)
        if self.rank == 0 and self.cb.preview_every_s >= 0:  # 0: no periodic previews, but the final ones
            self.cb.make_previews(pl_module, pl_module.step)
        self.save(trainer, "stopped" if self.cb.stopped and pl_module.step < self.total_steps else "complete")
        self.digests = {"weights_sha256": state_digest(pl_module.method), "encoder_sha256": state_digest(pl_module.method.encoder)}

    def fit(self) -> str:
        import pytorch_lightning as pl

        from .callbacks import OnTrainEnd

        c, out = self.config, self.out
        if self.rank == 0:
            os.makedirs(out, exist_ok=True)
        self.stop.install()
        try:
            with warnings.catch_warnings():
                filter_lightning_warnings()
                trainer = pl.Trainer(max_steps=self.total_steps * self.n_opt, strategy=_strategy(c, self.method),
                                     callbacks=[self.cb, OnTrainEnd(self.finish)], **self.trainer_kw)
                trainer.fit(self.module, self.loader, ckpt_path=os.path.join(out, "last.ckpt") if c.resume else None,
                            weights_only=True if c.resume else None)
        except BaseException as exc:
            self._failed(exc)
        finally:
            self.stop.restore()
        self.emit({"type": "done", "out": out, "stopped": bool(self.cb.stopped and self.final_step < self.total_steps), "step": self.final_step,
                   "rank": self.rank, "world_size": self.world, "weights_sha256": self.digests.get("weights_sha256"),
                   "encoder_sha256": self.digests.get("encoder_sha256")}, all_ranks=True)
        return out

    def _failed(self, exc: BaseException) -> None:
        """Nothing half-made stays: a new folder without a save is removed, else model.json says "failed"; re-raises."""
        err = oom_error(self.config) if is_oom(exc) else exc
        if self.rank == 0:
            if self.created_dir and not self.saved:
                shutil.rmtree(self.out, ignore_errors=True)
            else:
                _mark_failed(self.out, str(err))
        if err is not exc:
            raise err from None
        raise exc


def _sync_buffers(pl_module, trainer) -> None:
    """BatchNorm running statistics are updated per rank; make every rank hold rank 0's (the saved ones)."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        for b in pl_module.buffers():
            torch.distributed.broadcast(b.data, src=0)


def _mark_failed(out: str, message: str) -> None:
    from ..models.metadata import read_model_meta, write_model_meta

    try:
        meta = read_model_meta(out)
    except (OSError, NapariSSLError):
        return
    meta.extra["status"], meta.extra["error"] = "failed", message.splitlines()[0][:300] if message else "failed"
    write_model_meta(out, meta)
