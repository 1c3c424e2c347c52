"""Self-supervised pretraining of a U-Net encoder: ``run_pretraining(config, events, stop_event)``.

Order of work: everything the user can get wrong is checked (method, encoder, options, data,
--init weights, output folder) before the output folder is touched. Then a quiet Lightning
Trainer runs the method (single device, DDP over devices/nodes, or under torchrun).

The output folder (see the pretraining contract) only ever holds complete files: each file
is written to a temporary name and renamed. model.json's "status" says what state it is in:
"running" (periodic save of a run that is still going, or that crashed), "stopped" (cancelled;
``resume=True`` continues from last.ckpt) or "complete". Only rank 0 writes model files.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch

from ..errors import NapariSSLError
from .events import Emitter

log = logging.getLogger(__name__)

PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")


@dataclass
class PretrainConfig:
    method: str
    data: list[str]
    out: str
    encoder: str = "resnet18"
    in_channels: int = 1
    image_size: int = 128
    epochs: int = 10
    steps: Optional[int] = None
    batch_size: int = 32
    lr: float = 1e-3
    devices: str = "auto"  # "auto", "cpu", "cpu:N", "gpu", "gpu:N", or N
    strategy: str = "auto"  # "auto" or "ddp"
    num_nodes: int = 1
    precision: str = "32"  # or "16-mixed" / "bf16-mixed"
    init: Optional[str] = None  # model folder or .safetensors to start from (3 -> 1 channel by summing)
    pairs: str = "augment"  # or "micle" / "position" (joint-embedding methods)
    options: dict = field(default_factory=dict)  # method options (--opt key=value)
    resume: bool = False
    seed: int = 0
    preview_every_s: float = 5.0
    num_workers: int = 0
    cache_dir: Optional[str] = None  # also keep normalised volumes as .npy here
    weight_decay: float = 1e-4
    warmup_steps: Optional[int] = None  # default: 5% of the steps, at most 500
    checkpoint_every_s: float = 600.0  # periodic save while training (0: only at the end)
    log_every_n_steps: int = 10


# ----------------------------------------------------------------------------- helpers
def parse_devices(devices: Any) -> tuple[str, Any]:
    """(accelerator, devices) for Lightning from "auto" | "cpu" | "cpu:N" | "gpu" | "gpu:N" | N."""
    d = str(devices if devices is not None else "auto").strip().lower()
    if d in ("auto", ""):
        return "auto", "auto"
    if d.isdigit():
        return "auto", int(d)
    kind, _, n = d.partition(":")
    if kind in ("cpu", "gpu", "cuda", "mps") and (not n or n.isdigit()):
        return ("gpu" if kind == "cuda" else kind), (int(n) if n else ("auto" if kind != "cpu" else 1))
    raise NapariSSLError(f"--devices {devices!r}: use auto, cpu, cpu:N, gpu, gpu:N or a number of devices")


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg or "cannot allocate memory" in msg)


def oom_error(config: PretrainConfig) -> NapariSSLError:
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


def load_init_weights(encoder: torch.nn.Module, path: str, encoder_name: str, in_channels: int) -> dict:
    """Load --init weights into `encoder` (strict), adapting the first layer's channels; returns provenance."""
    from ..models.checkpoint import load_weights
    from ..models.unet import adapt_in_channels

    if not os.path.exists(path):
        raise NapariSSLError(f"--init {path}: no such file or folder")
    sd, meta = load_weights(path)
    if meta.get("encoder_name") and meta["encoder_name"] != encoder_name:
        raise NapariSSLError(f"--init weights are for encoder {meta['encoder_name']}, not {encoder_name}; use --encoder {meta['encoder_name']}")
    if sd and all(k.startswith("encoder.") for k in sd):
        sd = {k[len("encoder."):]: v for k, v in sd.items()}
    sd = adapt_in_channels(sd, in_channels)
    try:
        encoder.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise NapariSSLError(f"--init {path} does not fit encoder {encoder_name} ({first[:160]})") from None
    return {"method": meta.get("method"), "encoder_name": meta.get("encoder_name") or encoder_name, "in_channels": meta.get("in_channels")}


def _quiet_lightning(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(level)


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


# ----------------------------------------------------------------------------- the run
def run_pretraining(config: PretrainConfig, events: Optional[Callable[[dict], None]] = None, stop_event: Any = None) -> str:
    """Pretrain `config.method` on `config.data`; returns the output folder (see module docstring)."""
    from .malloc_tuning import keep_freed_memory

    keep_freed_memory()
    try:
        return _run(config, events, stop_event)
    except NapariSSLError as exc:
        Emitter(events)({"type": "error", "message": str(exc)})
        raise


def _resolve_method(config: PretrainConfig):
    from ..pretext import get_method

    cls = get_method(config.method)
    options = dict(config.options or {})
    if cls.kind == "joint-embedding":
        options.setdefault("pairs", config.pairs)
    elif config.pairs not in (None, "", "augment"):
        raise NapariSSLError(f"--pairs {config.pairs} applies to the joint-embedding methods only, not {config.method}")
    return cls, options


def _check_config(config: PretrainConfig) -> None:
    from ..models.unet import ENCODERS

    if not config.data:
        raise NapariSSLError("no --data given: pass DICOM folders, NIfTI files or folders of them")
    if int(config.in_channels) not in (1, 3):
        raise NapariSSLError(f"--in-channels must be 1 or 3 (3 adjacent slices), not {config.in_channels}")
    if config.batch_size < 1 or config.image_size < 1 or (config.steps is not None and config.steps < 1) or config.epochs < 1:
        raise NapariSSLError("--batch-size, --image-size, --epochs and --steps must be positive")
    if str(config.precision) not in PRECISIONS:
        raise NapariSSLError(f"--precision {config.precision!r}: use one of 32, 16-mixed, bf16-mixed")
    if config.strategy not in ("auto", "ddp", "ddp_find_unused_parameters_true", "ddp_spawn", "fsdp"):
        raise NapariSSLError(f"--strategy {config.strategy!r}: use auto or ddp")
    import segmentation_models_pytorch as smp

    if config.encoder not in smp.encoders.get_encoder_names() and config.encoder not in ENCODERS:
        raise NapariSSLError(f"unknown encoder {config.encoder!r}; try one of {', '.join(ENCODERS)}")


def _check_out(config: PretrainConfig) -> Optional[dict]:
    """The saved model.json when resuming; errors when the folder does not suit."""
    from ..models.checkpoint import read_meta

    out = config.out
    if config.resume:
        if not os.path.isfile(os.path.join(out, "last.ckpt")):
            raise NapariSSLError(f"nothing to resume in {out} (no last.ckpt); run without --resume")
        meta = read_meta(out)
        for key, have in (("method", config.method), ("encoder_name", config.encoder), ("in_channels", int(config.in_channels)), ("image_size", int(config.image_size))):
            if key in meta and meta[key] != have:
                flag = {"encoder_name": "encoder", "in_channels": "in-channels", "image_size": "image-size"}.get(key, key)
                raise NapariSSLError(f"{out} was pretrained with {key} {meta[key]!r}, not {have!r}; resume with --{flag} {meta[key]}")
        return meta
    if os.path.isfile(out):
        raise NapariSSLError(f"--out {out} is a file; give a folder")
    if os.path.isdir(out) and os.listdir(out):
        raise NapariSSLError(f"--out {out} already exists and is not empty; choose another folder (or pass --resume to continue a stopped run)")
    return None


def _run(config: PretrainConfig, events, stop_event) -> str:
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from ..data.cache import load_prepared, modality_key, normalization_specs
    from ..data.slices import ShardedBatchSampler, SliceDataset, describe_volumes
    from .callbacks import PretrainCallback, StopFlag
    from .lightning_module import PretrainModule

    t_created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _quiet_lightning(logging.getLogger().isEnabledFor(logging.INFO))
    config.devices = str(config.devices)
    _check_config(config)
    cls, options = _resolve_method(config)
    opts = cls.resolve_options(options)
    min_size = cls.min_image_size(int(config.in_channels), opts)
    if config.image_size < min_size:
        raise NapariSSLError(f"--image-size {config.image_size} is too small for {config.method}; use at least {min_size}")
    saved_meta = _check_out(config)
    accelerator, devices = parse_devices(config.devices)

    pl.seed_everything(int(config.seed), workers=True, verbose=False)
    method = cls(config.encoder, int(config.in_channels), int(config.image_size), **options)
    init_info = load_init_weights(method.encoder, config.init, config.encoder, int(config.in_channels)) if config.init else None

    # data: decoded and normalised once (memory, optionally a disk cache)
    specs = normalization_specs()
    volumes = load_prepared(list(config.data), specs, config.cache_dir)
    from ..pretext.pairs import PARTNER_KIND

    want_partner = PARTNER_KIND.get(method.opts.get("pairs")) if cls.kind == "joint-embedding" else False
    dataset = SliceDataset(volumes, config.image_size, int(config.in_channels), context=cls.context_request(config.image_size, int(config.in_channels), method.opts),
                           partner=want_partner, seed=int(config.seed))
    used_mods = sorted({modality_key(v.modality) for v in volumes})
    normalization = {k: specs.get(k, specs["default"]) for k in used_mods}
    data_summary = describe_volumes(volumes, dataset)

    def make_strategy():
        if config.strategy != "ddp":
            return config.strategy
        from pytorch_lightning.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=bool(method.find_unused_parameters))

    probe = PretrainModule(method, config.lr, config.weight_decay, 1)
    probe.configure_optimizers()
    n_opt = probe.num_optimizers
    out = os.path.abspath(config.out)
    with warnings.catch_warnings():
        _filter_warnings()
        try:
            trainer_kw = dict(
                accelerator=accelerator, devices=devices, num_nodes=int(config.num_nodes),
                precision=str(config.precision), max_epochs=-1, logger=CSVLogger(out, name="logs", version=""),
                enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                use_distributed_sampler=False, num_sanity_val_steps=0, log_every_n_steps=int(config.log_every_n_steps),
                deterministic=accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()),
            )
            probe_trainer = pl.Trainer(max_steps=1, strategy=make_strategy(), **{**trainer_kw, "logger": False})
        except Exception as exc:  # Lightning's MisconfigurationException and friends: bad devices/precision/strategy
            raise NapariSSLError(f"cannot set up training ({str(exc).splitlines()[0][:200]}); check --devices/--strategy/--precision") from None
    rank, world = probe_trainer.global_rank, probe_trainer.world_size
    del probe_trainer, probe
    emit = Emitter(events, rank)

    steps_per_epoch = max(1, len(dataset) // (config.batch_size * world))
    total_steps = int(config.steps) if config.steps else int(config.epochs) * steps_per_epoch
    warmup = config.warmup_steps if config.warmup_steps is not None else min(500, total_steps // 20)
    module = PretrainModule(method, config.lr, config.weight_decay, total_steps, warmup)
    sampler = ShardedBatchSampler(len(dataset), config.batch_size, rank, world, seed=int(config.seed))
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=int(config.num_workers),
                                         persistent_workers=config.num_workers > 0, pin_memory=torch.cuda.is_available() and accelerator != "cpu")

    created_dir = not os.path.isdir(out)
    resume_step = int(saved_meta.get("steps") or 0) if saved_meta else 0
    state = {"saved": False, "digest": None, "final_step": resume_step}

    def meta(status: str, step: int, cb: PretrainCallback) -> dict:
        return {
            "kind": "pretrained-encoder", "method": config.method, "method_kind": cls.kind, "encoder_name": config.encoder,
            "in_channels": int(config.in_channels), "image_size": int(config.image_size), "normalization": normalization,
            "data": data_summary, "steps": int(step), "total_steps": total_steps, "final_loss": cb.recent_loss(),
            "options": method.opts, "pairs": method.opts.get("pairs", "augment") if cls.kind == "joint-embedding" else None,
            "batch_size": config.batch_size, "lr": config.lr, "weight_decay": config.weight_decay, "precision": str(config.precision),
            "world_size": world, "seed": config.seed, "init": init_info, "status": status,
            "created": (saved_meta or {}).get("created", t_created), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(trainer, status: str) -> None:
        from ..io.atomic import atomic_write_bytes
        from ..models.checkpoint import save_weights

        cb.flush(trainer)
        step = module.step
        tmp_ckpt = os.path.join(out, f".last.ckpt.tmp-{os.getpid()}")
        trainer.save_checkpoint(tmp_ckpt, weights_only=False)  # every rank must call; rank 0 writes
        if rank == 0:
            os.replace(tmp_ckpt, os.path.join(out, "last.ckpt"))
            atomic_write_bytes(os.path.join(out, "losses.csv"), cb.losses_csv().encode())
            cb.write_previews()
            if getattr(method, "needs_unet", False) and isinstance(getattr(method, "unet", None), torch.nn.Module):
                from safetensors.torch import save as _st_save  # whole U-Net too (fine-tuning's --transfer-decoder)

                atomic_write_bytes(os.path.join(out, "unet.safetensors"), _st_save({k: v.detach().cpu().contiguous() for k, v in method.unet.state_dict().items()}))
            save_weights(out, method.encoder.state_dict(), meta(status, step, cb), name="encoder")
            emit({"type": "checkpoint", "path": out, "step": step})
        state["saved"] = True
        state["final_step"] = step

    preview_batch = dataset.fixed_batch(4) if rank == 0 else None
    preview_slice = dataset.fixed_slice() if rank == 0 else None
    stop = StopFlag(stop_event)
    cb = PretrainCallback(emit, stop, total_steps, config.batch_size, preview_batch, preview_slice, float(config.preview_every_s),
                          os.path.join(out, "previews"), save, float(config.checkpoint_every_s), rank == 0)
    if config.resume:
        cb.rows = _read_rows(os.path.join(out, "losses.csv"), resume_step)

    class _Finish(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            _sync_buffers(pl_module, trainer)
            if rank == 0 and cb.preview_every_s >= 0:  # 0: no periodic previews, but the final ones
                cb.make_previews(pl_module, pl_module.step)
            save(trainer, "stopped" if cb.stopped and pl_module.step < total_steps else "complete")
            state["digest"] = state_digest(pl_module.method)
            state["encoder_digest"] = state_digest(pl_module.method.encoder)

    if rank == 0:
        os.makedirs(out, exist_ok=True)
    stop.install()
    try:
        with warnings.catch_warnings():
            _filter_warnings()
            trainer = pl.Trainer(max_steps=total_steps * n_opt, strategy=make_strategy(), callbacks=[cb, _Finish()], **trainer_kw)
            trainer.fit(module, loader, ckpt_path=os.path.join(out, "last.ckpt") if config.resume else None, weights_only=True if config.resume else None)
    except BaseException as exc:
        err = oom_error(config) if is_oom(exc) else exc
        if rank == 0:
            if created_dir and not state["saved"]:
                shutil.rmtree(out, ignore_errors=True)
            else:
                _mark_failed(out, str(err))
        if err is not exc:
            raise err from None
        raise
    finally:
        stop.restore()
    emit({"type": "done", "out": out, "stopped": bool(cb.stopped and state["final_step"] < total_steps), "step": state["final_step"],
          "rank": rank, "world_size": world, "weights_sha256": state["digest"], "encoder_sha256": state.get("encoder_digest")}, all_ranks=True)
    return out


def _sync_buffers(pl_module, trainer) -> None:
    """BatchNorm running statistics are updated per rank; make every rank hold rank 0's (the saved ones)."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        for b in pl_module.buffers():
            torch.distributed.broadcast(b.data, src=0)


def _mark_failed(out: str, message: str) -> None:
    import json

    from ..io.atomic import atomic_write_bytes

    path = os.path.join(out, "model.json")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return
    meta["status"], meta["error"] = "failed", message.splitlines()[0][:300] if message else "failed"
    atomic_write_bytes(path, json.dumps(meta, indent=2, sort_keys=True, default=str).encode())


def _filter_warnings() -> None:
    for msg in (".*does not have many workers.*", ".*smaller than the logging interval.*", ".*GPU available but not used.*",
                ".*is not using a ddp.*", ".*Checkpoint directory .* exists and is not empty.*", ".*on_step.*", ".*The `srun` command is available.*",
                ".*Trying to infer the `batch_size`.*", ".*barebones.*", ".*torch.backends.cudnn.*"):
        warnings.filterwarnings("ignore", message=msg)
    try:
        from pytorch_lightning.utilities.warnings import PossibleUserWarning

        warnings.filterwarnings("ignore", category=PossibleUserWarning)
    except ImportError:
        pass


def config_dict(config: PretrainConfig) -> dict:
    return asdict(config)
