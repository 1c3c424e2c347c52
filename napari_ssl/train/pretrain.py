"""Self-supervised pretraining of a U-Net encoder: ``run_pretraining(config, events, stop_event)``.

Order of work: everything the user can get wrong is checked (method, encoder, options, data,
--init weights, output folder) before the output folder is touched; then
:class:`~napari_ssl.train.pretrain_run.PretrainRun` runs the method in a quiet Lightning Trainer
(single device, DDP over devices/nodes, or under torchrun) and owns the saves: the output folder
(see the pretraining contract) only ever holds complete files, and model.json's "status" says
"running", "stopped" (``resume=True`` continues from last.ckpt), "complete" or "failed".
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..errors import NapariSSLError
from ..models.metadata import now_text
from .devices import lightning_devices
from .events import Emitter
from .lightning_quiet import quiet_lightning
from .pretrain_run import PretrainData, PretrainRun, RunSetup, is_oom, oom_error, state_digest  # noqa: F401 (is_oom, oom_error, state_digest: re-exported)

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
        for key, have in (("method", config.method), ("encoder_name", config.encoder), ("in_channels", int(config.in_channels)),
                          ("image_size", int(config.image_size))):
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

    t_created = now_text()
    quiet_lightning(logging.getLogger().isEnabledFor(logging.INFO))
    config.devices = str(config.devices)
    _check_config(config)
    cls, options = _resolve_method(config)
    opts = cls.resolve_options(options)
    min_size = cls.min_image_size(int(config.in_channels), opts)
    if config.image_size < min_size:
        raise NapariSSLError(f"--image-size {config.image_size} is too small for {config.method}; use at least {min_size}")
    saved_meta = _check_out(config)
    accelerator, devices = lightning_devices(config.devices)

    pl.seed_everything(int(config.seed), workers=True, verbose=False)
    method = cls(config.encoder, int(config.in_channels), int(config.image_size), **options)
    init_info = load_init_weights(method.encoder, config.init, config.encoder, int(config.in_channels)) if config.init else None
    data = _load_data(config, cls, method)
    run = PretrainRun(config, cls, method, data, RunSetup(accelerator, devices, saved_meta, init_info, t_created), events, stop_event)
    return run.fit()


def _load_data(config: PretrainConfig, cls, method) -> PretrainData:
    """Every volume decoded and normalised once (in memory, optionally a disk cache), as a slice dataset."""
    from ..data.cache import load_prepared, modality_key, normalization_specs
    from ..data.slices import SliceDataset, describe_volumes
    from ..pretext.pairs import PARTNER_KIND

    specs = normalization_specs()
    volumes = load_prepared(list(config.data), specs, config.cache_dir)
    want_partner = PARTNER_KIND.get(method.opts.get("pairs")) if cls.kind == "joint-embedding" else False
    dataset = SliceDataset(volumes, config.image_size, int(config.in_channels),
                           context=cls.context_request(config.image_size, int(config.in_channels), method.opts),
                           partner=want_partner, seed=int(config.seed))
    used_mods = sorted({modality_key(v.modality) for v in volumes})
    return PretrainData(dataset, {k: specs.get(k, specs["default"]) for k in used_mods}, describe_volumes(volumes, dataset))
