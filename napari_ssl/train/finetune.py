"""Few-shot fine-tuning of an smp U-Net on sparsely annotated slices.

``run_finetuning(config, events, stop_event)`` is what the CLI, the Python API and the
viewer's training process call. The events are the plain dicts of the pretraining
contract (started / progress / loss / preview / checkpoint / done / error).

The output folder holds ``model.safetensors`` (the whole U-Net) and ``model.json``
(encoder, channels, image size, classes with names, normalisation, which slices were
used -- volume and slice indices only, never file names or patient identifiers --,
metrics and the pretrained source).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..data.labelled_slices import AugmentConfig, LabelledSliceDataset, LabelledVolume
from ..data.normalize import default_spec, normalize, resolve_normalization  # noqa: F401 (resolve_normalization: re-exported)
from ..data.sparse_labels import annotated_slices, check_class_names
from ..data.training_labels import load_labels, load_labels_and_names  # noqa: F401 (load_labels: re-exported)
from ..errors import NapariSSLError
from ..io import load_image  # noqa: F401 (re-exported: callers load images through fine-tuning's module)
from ..models.metadata import SEGMENTATION, ModelMeta, now_text
from .initial_model import build_initial_model
from .loop import train_unet

log = logging.getLogger(__name__)

EventSink = Optional[Callable[[dict], None]]
DEFAULT_STEPS = 500


@dataclass
class FinetuneConfig:
    images: list  # paths, or Volume objects (already on the canonical grid)
    labels: list  # paths, Volume objects or (z, y, x) arrays on the matching image's grid
    out: str
    encoder_weights: Optional[str] = None  # pretraining output folder or encoder .safetensors
    init_model: Optional[str] = None  # previous fine-tuned model folder (warm start)
    encoder: Optional[str] = None  # default: the pretrained/init model's, else the auto settings' (compact on a CPU), else resnet18
    in_channels: Optional[int] = None  # 1, or 3 for 2.5D; default: the pretrained/init model's, else 1
    classes: Optional[list] = None  # names of labels 1..N
    empty_slices: Optional[list] = None  # per image/label pair: slice indices annotated as empty
    rois: Optional[list] = None  # RTSTRUCT labels: ROI names to take, in order (later ones win where they overlap)
    epochs: Optional[int] = None
    steps: Optional[int] = None
    loss: str = "dice-ce"
    batch_size: int = 8
    image_size: Optional[int] = None  # default: the pretrained model's, else 64
    lr: float = 3e-3  # the rate every study-completion / label-efficiency benchmark trained with
    weight_decay: float = 1e-4
    encoder_lr_scale: float = 1.0
    freeze_encoder_steps: int = 0
    freeze_encoder_bn: bool = False  # keep the pretrained encoder's BatchNorm statistics (affine parameters still train)
    transfer_decoder: bool = False  # also load the pretrained decoder (in-painting / heatmap methods)
    augment: bool = True
    normalization: Optional[dict] = None  # override; default: the pretrained model's spec
    devices: str = "auto"
    precision: str = "32"
    seed: int = 0
    num_workers: int = 0
    preview_every_s: float = 5.0
    semi_supervised: bool = True  # unannotated slices (and `unlabelled` volumes) train through in-run pseudo-labels
    unlabelled: list = field(default_factory=list)  # paths or Volumes without labels (semi-supervised only)
    semi_options: Optional[dict] = None  # SemiSupervisedConfig overrides
    auto: bool = True  # crop, tile size, CT window and encoder chosen from the scan and the drawing (train/auto_config.py)


# ----------------------------------------------------------------------------- data

@dataclass
class PreparedData:
    volumes: list[LabelledVolume]
    class_names: list[str]
    normalization: dict
    modality: str
    shapes: list[list[int]] = field(default_factory=list)


def prepare_data(config: FinetuneConfig, norm_meta: Optional[dict], choose: Optional[Callable] = None) -> PreparedData:
    """`choose(i, image, labels, annotated) -> (AutoSettings, roi, z_range)`: data-driven settings (normalisation, in-plane
    crop, the slices the structure may occupy)."""
    if not config.images:
        raise NapariSSLError("no image given; pass --image PATH --labels PATH")
    if len(config.images) != len(config.labels):
        raise NapariSSLError(f"{len(config.images)} image(s) but {len(config.labels)} label volume(s); give one --labels per --image")
    empties = config.empty_slices or [[] for _ in config.images]
    if len(empties) != len(config.images):
        raise NapariSSLError("give --empty-slices once per --image/--labels pair (or not at all)")
    volumes, shapes, top = [], [], 0
    modality = ""
    norm_spec: Optional[dict] = None
    label_maps = []
    seg_names: dict[int, str] = {}  # segment labels of DICOM-SEG inputs: the class names unless --classes is given
    for i, (img_item, lab_item, empty) in enumerate(zip(config.images, config.labels, empties)):
        img = load_image(img_item)
        name = "labels" if len(config.images) == 1 else f"labels #{i + 1}"
        lab, names_here = load_labels_and_names(lab_item, img, name=name, rois=config.rois)
        for value, label in names_here.items():
            if seg_names.setdefault(value, label) != label:
                raise NapariSSLError(f"label value {value} is {seg_names[value]!r} in one DICOM-SEG and {label!r} in another; give --classes")
        modality = modality or img.modality
        spec = dict(config.normalization) if config.normalization else resolve_normalization(norm_meta, img.modality)
        norm_spec = norm_spec or spec
        mask = annotated_slices(lab, empty or [])
        roi = z_range = None
        if choose is not None:
            settings, roi, z_range = choose(i, img, lab, mask)
            if not config.normalization:
                spec = dict(settings.normalization)
                norm_spec = norm_spec if i else spec
        top = max(top, int(lab.max()) if lab.size else 0)
        label_maps.append(lab)
        from ..data.auto_config import crop_volume

        volumes.append(LabelledVolume(image=np.ascontiguousarray(crop_volume(normalize(img.array, spec), roi)),
                                      labels=np.ascontiguousarray(crop_volume(lab, roi)), annotated=mask,
                                      spacing=tuple(float(v) for v in img.spacing), z_range=z_range))
        shapes.append(list(img.shape))
    if not any(v.annotated.any() for v in volumes):
        raise NapariSSLError("no annotated slice: draw labels on at least one slice (or list slices annotated as empty with --empty-slices)")
    classes = config.classes
    if not classes and seg_names:
        classes = [seg_names.get(v, f"class {v}") for v in range(1, max(top, max(seg_names)) + 1)]
    names = check_class_names(np.array([top]), classes)
    return PreparedData(volumes=volumes, class_names=names, normalization=norm_spec or default_spec(modality), modality=modality, shapes=shapes)


def resolve_steps(config: FinetuneConfig, n_samples: int, default: Optional[int] = None) -> int:
    """--steps, else --epochs, else `default` (the data-driven settings' training budget), else DEFAULT_STEPS."""
    if config.steps is not None and config.epochs is not None:
        raise NapariSSLError("give either --epochs or --steps, not both")
    if config.steps is not None:
        if config.steps < 1:
            raise NapariSSLError("--steps must be at least 1")
        return int(config.steps)
    if config.epochs is not None:
        if config.epochs < 1:
            raise NapariSSLError("--epochs must be at least 1")
        return max(1, int(np.ceil(config.epochs * n_samples / config.batch_size)))
    return int(default or DEFAULT_STEPS)


@torch.no_grad()
def annotated_dice(unet: torch.nn.Module, dataset: LabelledSliceDataset, num_classes: int) -> list[float]:
    """Per-class Dice on the (un-augmented) training slices: a sanity metric stored in model.json."""
    unet.eval()
    dev = next(unet.parameters()).device
    pred = torch.cat([unet(dataset.images[i:i + 64].to(dev)).argmax(1).cpu() for i in range(0, len(dataset), 64)])
    out = []
    for c in range(1, num_classes):
        p, t = pred == c, dataset.targets == c
        denom = int(p.sum() + t.sum())
        out.append(float(2 * (p & t).sum() / denom) if denom else float("nan"))
    return out


def run_finetuning(config: FinetuneConfig, events: EventSink = None, stop_event=None) -> str:
    """Fine-tune, save model.safetensors + model.json into config.out, return the folder."""
    emit = events or (lambda e: None)
    try:
        return _finetune(config, emit, stop_event)
    except NapariSSLError as exc:
        emit({"type": "error", "message": str(exc)})
        raise
    except Exception as exc:  # report, then let the caller see the traceback
        emit({"type": "error", "message": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
        raise


def _check_options(config: FinetuneConfig) -> None:
    if config.loss not in ("dice-ce", "jaccard"):
        raise NapariSSLError(f"unknown loss {config.loss!r}; choose dice-ce or jaccard")
    _check_image_size(config.image_size)
    if config.semi_supervised and config.semi_options:  # before any data is read (a typo should not cost the preparation)
        from .semi_supervised import semi_supervised_config

        semi_supervised_config(config.semi_options)


def _check_image_size(size: Optional[int]) -> None:
    if size and int(size) % 32:
        raise NapariSSLError(f"--image-size must be a multiple of 32 (the U-Net downsamples 5 times); got {size}")


def _starting_meta(config: FinetuneConfig) -> dict:
    """model.json of the previous model or the pretraining folder: it decides normalisation, size and channels unless overridden."""
    from ..models.checkpoint import read_meta

    if config.init_model:
        return read_meta(config.init_model)
    if config.encoder_weights and os.path.isdir(config.encoder_weights):
        return read_meta(config.encoder_weights)
    return {}


class _AutoChooser:
    """prepare_data's `choose`: settings from the first scan and its drawing, crops for every scan (train/auto_config.py)."""

    def __init__(self, config: FinetuneConfig, model_meta: dict):
        self.config, self.model_meta = config, model_meta
        self.settings = None
        self.rois: list = []
        self.z_ranges: list = []

    def __call__(self, i, img, lab, mask):
        from ..data.auto_config import choose_settings, roi_for, z_range_for

        if self.settings is None:
            self.settings = choose_settings(img.array, img.spacing, img.modality, lab, mask, devices=self.config.devices,
                                            model_meta=self.model_meta, image_size=self.config.image_size)
            self.rois, self.z_ranges = [self.settings.roi], [self.settings.z_range]
        else:
            self.rois.append(roi_for(lab, mask, img.spacing, self.settings))
            self.z_ranges.append(z_range_for(lab, mask, img.spacing))
        return self.settings, self.rois[-1], self.z_ranges[-1]


@dataclass
class _Model:
    """The network about to train, as build_initial_model set it up."""
    unet: torch.nn.Module
    source: dict            # where its weights came from (model.json "source")
    encoder_name: str
    in_channels: int
    image_size: int


def _finetune(config: FinetuneConfig, emit: Callable[[dict], None], stop_event) -> str:
    from ..models.checkpoint import atomic_output_dir, save_weights

    _check_options(config)
    pre_meta = _starting_meta(config)
    if config.init_model and not config.classes and pre_meta.get("class_names"):
        config.classes = list(pre_meta["class_names"])
    emit({"type": "status", "message": "Preparing the annotated slices"})
    auto = _AutoChooser(config, pre_meta) if config.auto and not (config.init_model and not pre_meta.get("auto")) else None
    data = prepare_data(config, pre_meta.get("normalization"), auto)
    settings = auto.settings if auto is not None else None
    if settings is not None and not (config.encoder or config.encoder_weights or config.init_model):
        config.encoder = settings.encoder
    num_classes = len(data.class_names) + 1
    emit({"type": "status", "message": "Building the model (the first training steps follow)"})
    model = _build_model(config, num_classes, settings)
    dataset = LabelledSliceDataset(data.volumes, model.image_size, model.in_channels, AugmentConfig() if config.augment else None)
    steps = resolve_steps(config, len(dataset), _budget_steps(settings, model, config) if settings is not None else None)
    if settings is not None:
        settings.steps, settings.encoder, settings.image_size = steps, model.encoder_name, model.image_size
        emit({"type": "status", "message": "settings: " + settings.summary()})
    unet, info, semi_meta = _train(config, model, data, dataset, steps, pre_meta, emit, stop_event)
    unet = unet.cpu()
    emit({"type": "status", "message": "Saving the model"})
    meta = _model_meta(config, model, data, info, steps, semi_meta, annotated_dice(unet, dataset, num_classes))
    if settings is not None:  # what was chosen from the data, and why (crops: voxel boxes, nothing identifying)
        meta.extra["auto"] = {**settings.as_meta(), "encoder": model.encoder_name, "image_size": model.image_size, "rois": auto.rois,
                              "z_ranges": auto.z_ranges}
    if config.init_model:
        meta.extra["pretrained"] = pre_meta.get("pretrained")
    if semi_meta and semi_meta["planes_used"]:  # prediction averages the three sides (active/predict.py)
        meta.extra["planes"] = [0, 1, 2]
    with atomic_output_dir(config.out) as tmp:
        save_weights(tmp, unet.state_dict(), meta, name="model")
    emit({"type": "checkpoint", "path": os.path.abspath(config.out)})
    emit({"type": "done", "out": os.path.abspath(config.out), "stopped": info["stopped"]})
    return os.path.abspath(config.out)


def _budget_steps(settings, model: "_Model", config: FinetuneConfig) -> int:
    """The settings' training budget in steps for the network actually built (a pretrained encoder may differ)."""
    from ..data.auto_config import default_steps, device_kind

    if model.encoder_name == settings.encoder and model.image_size == settings.image_size and config.batch_size == 8:
        return int(settings.steps)
    return default_steps(model.encoder_name, model.image_size, device_kind(config.devices), config.batch_size)


def _build_model(config: FinetuneConfig, num_classes: int, settings) -> _Model:
    torch.manual_seed(int(config.seed))  # the decoder (and a random encoder) start the same under one seed
    unet, source = build_initial_model(config, num_classes)
    meta_src = source.pop("_meta", {})
    encoder_name, in_channels = source.pop("_encoder"), int(source.pop("_in_channels"))
    image_size = int(config.image_size or (settings.image_size if settings else 0) or meta_src.get("image_size") or 64)
    _check_image_size(image_size)
    return _Model(unet, source, encoder_name, in_channels, image_size)


def _train(config: FinetuneConfig, model: _Model, data: PreparedData, dataset: LabelledSliceDataset, steps: int, pre_meta: dict,
           emit: Callable[[dict], None], stop_event) -> tuple[torch.nn.Module, dict, Optional[dict]]:
    """(trained unet, loop info, the semi-supervised recipe's model.json entry or None)."""
    train_kw = dict(batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
                    loss=config.loss, encoder_lr_scale=config.encoder_lr_scale, freeze_encoder_steps=config.freeze_encoder_steps,
                    freeze_encoder_bn=config.freeze_encoder_bn,
                    devices=config.devices, precision=config.precision, num_workers=config.num_workers,
                    emit=emit, stop_event=stop_event, preview_every_s=config.preview_every_s)
    if not config.semi_supervised:
        if config.unlabelled:
            raise NapariSSLError("--unlabelled volumes are used by the semi-supervised recipe; drop --no-semi-supervised or --unlabelled")
        unet, info = train_unet(model.unet, dataset, steps=steps, seed=config.seed, **train_kw)
        return unet, info, None
    from .semi_supervised import load_unlabelled, semi_supervised_config, train_semi_supervised

    semi_cfg = semi_supervised_config(config.semi_options)
    unlabelled = load_unlabelled(config.unlabelled or [], lambda modality: dict(config.normalization) if config.normalization
                                 else resolve_normalization(pre_meta.get("normalization"), modality))
    unet, info = train_semi_supervised(model.unet, data.volumes, image_size=model.image_size, in_channels=model.in_channels, steps=steps,
                                       cfg=semi_cfg, unlabelled=unlabelled, augment=config.augment, seed=config.seed, **train_kw)
    # the recipe's choices as resolved for this run (None in the config: decided from the data)
    return unet, info, {**semi_cfg.as_meta(), "rounds": info["rounds"], "fill_between_prediction": info["fill_between_prediction"],
                        "planes_used": info["planes"], "carried_pseudo": info["carried_pseudo"],
                        "unlabelled_volumes": len(unlabelled), "pseudo_slices_per_phase": info["pseudo_slices"]}


def _model_meta(config: FinetuneConfig, model: _Model, data: PreparedData, info: dict, steps: int, semi_meta: Optional[dict],
                dice: list[float]) -> ModelMeta:
    """model.json of the fine-tuned model: volume and slice indices only, never file names or patient identifiers."""
    source = model.source
    return ModelMeta(
        kind=SEGMENTATION, encoder_name=model.encoder_name, in_channels=model.in_channels, image_size=model.image_size,
        num_classes=len(data.class_names) + 1, class_names=data.class_names,
        normalization={(data.modality or "default"): data.normalization}, created=now_text(),
        extra={
            "architecture": "smp.Unet",
            "classes": {str(i + 1): n for i, n in enumerate(data.class_names)},
            "training_slices": [{"volume": i, "shape": data.shapes[i], "slices": v.annotated_indices,
                                 "empty_slices": [z for z in v.annotated_indices if not v.labels[z].any()]} for i, v in enumerate(data.volumes)],
            "source": source,
            "pretrained": source if source.get("init") == "pretrained-encoder" else source.get("pretrained"),
            "training": {"steps": info["steps"], "requested_steps": steps, "batch_size": config.batch_size, "lr": config.lr,
                         "loss": config.loss, "encoder_lr_scale": config.encoder_lr_scale, "freeze_encoder_steps": config.freeze_encoder_steps,
                         "freeze_encoder_bn": config.freeze_encoder_bn,
                         "augment": config.augment, "seed": config.seed, "stopped": info["stopped"],
                         "semi_supervised": semi_meta},
            "metrics": {"final_loss": info["final_loss"], "train_dice": dict(zip(data.class_names, dice))},
        })
