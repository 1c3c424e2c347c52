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
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..data.labelled_slices import AugmentConfig, LabelledSliceDataset, LabelledVolume
from ..data.normalize import default_spec, normalize, resolve_normalization  # noqa: F401 (resolve_normalization: re-exported)
from ..data.sparse_labels import annotated_slices, as_label_array, check_class_names, check_same_grid
from ..errors import NapariSSLError
from ..io import load_image  # noqa: F401 (re-exported: callers load images through fine-tuning's module)
from ..io.volume import Volume
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
    encoder: Optional[str] = None  # default: the pretrained/init model's, else resnet18
    in_channels: Optional[int] = None  # 1, or 3 for 2.5D; default: the pretrained/init model's, else 1
    classes: Optional[list] = None  # names of labels 1..N
    empty_slices: Optional[list] = None  # per image/label pair: slice indices annotated as empty
    rois: Optional[list] = None  # RTSTRUCT labels: ROI names to take, in order (later ones win where they overlap)
    epochs: Optional[int] = None
    steps: Optional[int] = None
    loss: str = "dice-ce"
    batch_size: int = 8
    image_size: Optional[int] = None  # default: the pretrained model's, else 64
    lr: float = 1e-3
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


# ----------------------------------------------------------------------------- inputs

def load_labels(item: Any, image: Volume, name: str = "labels") -> np.ndarray:
    """Integer label map on `image`'s grid; shape and geometry must match the image."""
    return load_labels_and_names(item, image, name)[0]


def load_labels_and_names(item: Any, image: Volume, name: str = "labels", rois: Optional[list] = None) -> tuple[np.ndarray, dict[int, str]]:
    """(label map on `image`'s grid, {label value: name}). Accepts an array, a NIfTI/NRRD/MHA label map
    (no names), a DICOM-SEG (segment labels as names; placed on the image's grid, which it must share:
    same voxel size and orientation, whole-voxel offset, e.g. a SEG that stores only the labelled slices)
    or an RTSTRUCT of the image's series (ROI names as names; `rois` picks ROIs and their order)."""
    if isinstance(item, np.ndarray):
        if item.shape != image.shape:
            raise NapariSSLError(f"{name} shape {list(item.shape)} does not match the image shape {list(image.shape)}; give the label map drawn on this image")
        return as_label_array(item), {}
    path = os.fspath(item) if not isinstance(item, Volume) else None
    if path is not None and os.path.isfile(path):
        from ..io.seg.read import is_segmentation_file

        if is_segmentation_file(path):
            return _labels_from_seg(path, image, name)
        from ..io.dicom.rtstruct import is_rtstruct_file, read_rtstruct_labels

        if is_rtstruct_file(path):
            try:
                vol, names, _colors = read_rtstruct_labels(path, source=image, rois=rois, canonical=False)
            except NapariSSLError as exc:
                raise NapariSSLError(f"{name}: {exc}") from None
            return as_label_array(vol.array), names
    lab = load_image(item)
    check_same_grid(image.shape, image.affine, lab.shape, lab.affine, name=name)
    return as_label_array(lab.array), {}


def _labels_from_seg(path: str, image: Volume, name: str) -> tuple[np.ndarray, dict[int, str]]:
    from ..io.seg.on_source import read_single_on_source

    try:   # on the image's full grid (cropped SEGs too); another series, overlaps, another grid: one line
        arr, names = read_single_on_source(path, image)
    except NapariSSLError as exc:
        raise NapariSSLError(f"{name}: {exc}") from None
    return as_label_array(arr), {int(k): str(v) for k, v in names.items()}


# ----------------------------------------------------------------------------- model set-up

def _load_pretrained_encoder(path: str) -> tuple[dict, dict]:
    from ..models.checkpoint import load_weights

    if not os.path.exists(path):
        raise NapariSSLError(f"--encoder-weights: no such file or folder: {path}")
    if os.path.isdir(path):
        from ..models.checkpoint import read_meta

        meta = read_meta(path)
        if os.path.isfile(os.path.join(path, "encoder.safetensors")):
            sd, meta = load_weights(path, name="encoder")
        elif os.path.isfile(os.path.join(path, "model.safetensors")) and meta.get("kind") == "segmentation":
            full, meta = load_weights(path, name="model")
            sd = {k[len("encoder."):]: v for k, v in full.items() if k.startswith("encoder.")}
        else:
            sd, meta = load_weights(path)
        return sd, meta
    return load_weights(path)


def _strict_load(module: torch.nn.Module, sd: dict, what: str, source: str) -> None:
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise NapariSSLError(f"{source}: {what} weights do not fit this model ({first[:160]}); check the encoder name and channels") from None


def build_initial_model(config: FinetuneConfig, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """The U-Net to train and a description of where its weights came from."""
    from ..models.checkpoint import load_weights, read_meta
    from ..models.unet import adapt_in_channels, build_unet

    if config.encoder_weights and config.init_model:
        raise NapariSSLError("give either --encoder-weights (pretrained encoder) or --init-model (previous fine-tuned model), not both")
    source: dict[str, Any] = {"init": "random"}
    if config.init_model:
        meta = read_meta(config.init_model)
        if meta.get("kind") != "segmentation":
            raise NapariSSLError(f"--init-model {config.init_model} is not a fine-tuned segmentation model (use --encoder-weights for a pretrained encoder)")
        enc, ch = meta["encoder_name"], int(meta["in_channels"])
        if config.encoder and config.encoder != enc:
            raise NapariSSLError(f"--init-model uses encoder {enc}, not {config.encoder}; drop --encoder or pick a matching model")
        if config.in_channels and int(config.in_channels) != ch:
            raise NapariSSLError(f"--init-model takes {ch} input channel(s), not {config.in_channels}")
        if int(meta["num_classes"]) != num_classes:
            raise NapariSSLError(f"--init-model predicts {int(meta['num_classes']) - 1} class(es) but the labels have {num_classes - 1}; give matching --classes")
        unet = build_unet(enc, in_channels=ch, classes=num_classes)
        sd, _ = load_weights(config.init_model, name="model")
        _strict_load(unet, sd, "model", "--init-model")
        source = {"init": "model", "model": os.path.basename(os.path.abspath(config.init_model)), "pretrained": meta.get("pretrained")}
        return unet, {**source, "_meta": meta, "_encoder": enc, "_in_channels": ch}
    enc_meta: dict = {}
    sd = None
    if config.encoder_weights:
        sd, enc_meta = _load_pretrained_encoder(config.encoder_weights)
        pre_enc = enc_meta.get("encoder_name") or enc_meta.get("encoder")
        if config.encoder and pre_enc and config.encoder != pre_enc:
            raise NapariSSLError(f"--encoder-weights hold a {pre_enc} encoder, not {config.encoder}; drop --encoder or pick matching weights")
    enc = config.encoder or enc_meta.get("encoder_name") or enc_meta.get("encoder") or "resnet18"
    ch = int(config.in_channels or enc_meta.get("in_channels") or 1)
    unet = build_unet(enc, in_channels=ch, classes=num_classes)
    if sd is not None:
        sd_ch = next((v.shape[1] for k, v in sd.items() if k.endswith("conv1.weight") and v.ndim == 4), ch)
        if config.in_channels and enc_meta.get("in_channels") and int(enc_meta["in_channels"]) != ch and sd_ch == int(enc_meta["in_channels"]) and sd_ch != 3:
            raise NapariSSLError(f"--encoder-weights were pretrained on {enc_meta['in_channels']} channel(s), not {ch}; use --in-channels {enc_meta['in_channels']}")
        sd = adapt_in_channels(sd, ch)
        _strict_load(unet.encoder, sd, "encoder", "--encoder-weights")
        source = {"init": "pretrained-encoder", "weights": os.path.basename(os.path.abspath(config.encoder_weights)),
                  "method": enc_meta.get("method"), "steps": enc_meta.get("steps"), "created": enc_meta.get("created") or enc_meta.get("saved_at")}
        if config.transfer_decoder:
            source["decoder"] = _transfer_decoder(unet, config.encoder_weights)
    return unet, {**source, "_meta": enc_meta, "_encoder": enc, "_in_channels": ch}


def _transfer_decoder(unet: torch.nn.Module, pretrain_dir: str) -> str:
    """Copy the pretrained U-Net's decoder (methods that train the whole U-Net) into `unet`."""
    from safetensors.torch import load_file

    path = os.path.join(pretrain_dir, "unet.safetensors") if os.path.isdir(pretrain_dir) else ""
    if not os.path.isfile(path):
        raise NapariSSLError(f"--transfer-decoder: {pretrain_dir} holds no unet.safetensors (only methods that train the whole U-Net save a decoder)")
    full = load_file(path)
    dec = {k[len("decoder."):]: v for k, v in full.items() if k.startswith("decoder.")}
    _strict_load(unet.decoder, dec, "decoder", "--transfer-decoder")
    return "transferred"


# ----------------------------------------------------------------------------- data

@dataclass
class PreparedData:
    volumes: list[LabelledVolume]
    class_names: list[str]
    normalization: dict
    modality: str
    shapes: list[list[int]] = field(default_factory=list)


def prepare_data(config: FinetuneConfig, norm_meta: Optional[dict], choose: Optional[Callable] = None) -> PreparedData:
    """`choose(i, image, labels, annotated) -> (AutoSettings, roi)`: data-driven settings (normalisation, in-plane crop)."""
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
        roi = None
        if choose is not None:
            settings, roi = choose(i, img, lab, mask)
            if not config.normalization:
                spec = dict(settings.normalization)
                norm_spec = norm_spec if i else spec
        top = max(top, int(lab.max()) if lab.size else 0)
        label_maps.append(lab)
        from ..data.auto_config import crop_volume

        volumes.append(LabelledVolume(image=np.ascontiguousarray(crop_volume(normalize(img.array, spec), roi)),
                                      labels=np.ascontiguousarray(crop_volume(lab, roi)), annotated=mask))
        shapes.append(list(img.shape))
    if not any(v.annotated.any() for v in volumes):
        raise NapariSSLError("no annotated slice: draw labels on at least one slice (or list slices annotated as empty with --empty-slices)")
    classes = config.classes
    if not classes and seg_names:
        classes = [seg_names.get(v, f"class {v}") for v in range(1, max(top, max(seg_names)) + 1)]
    names = check_class_names(np.array([top]), classes)
    return PreparedData(volumes=volumes, class_names=names, normalization=norm_spec or default_spec(modality), modality=modality, shapes=shapes)


def resolve_steps(config: FinetuneConfig, n_samples: int) -> int:
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
    return DEFAULT_STEPS


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
    from ..models.checkpoint import atomic_output_dir, save_weights

    emit = events or (lambda e: None)
    try:
        if config.loss not in ("dice-ce", "jaccard"):
            raise NapariSSLError(f"unknown loss {config.loss!r}; choose dice-ce or jaccard")
        if config.image_size and int(config.image_size) % 32:
            raise NapariSSLError(f"--image-size must be a multiple of 32 (the U-Net downsamples 5 times); got {config.image_size}")
        # the pretrained / previous model decides normalisation, size and channels unless overridden
        pre_meta: dict = {}
        if config.init_model:
            from ..models.checkpoint import read_meta

            pre_meta = read_meta(config.init_model)
        elif config.encoder_weights and os.path.isdir(config.encoder_weights):
            from ..models.checkpoint import read_meta

            pre_meta = read_meta(config.encoder_weights)
        if config.init_model and not config.classes and pre_meta.get("class_names"):
            config.classes = list(pre_meta["class_names"])
        emit({"type": "status", "message": "Preparing the annotated slices"})
        auto: dict = {}
        chooser = None
        if config.auto and not (config.init_model and not pre_meta.get("auto")):
            def chooser(i, img, lab, mask):
                from ..data.auto_config import choose_settings, roi_for, z_range_for

                if "settings" not in auto:
                    auto["settings"] = choose_settings(img.array, img.spacing, img.modality, lab, mask, devices=config.devices,
                                                       model_meta=pre_meta, image_size=config.image_size)
                    auto["rois"], auto["z_ranges"] = [auto["settings"].roi], [auto["settings"].z_range]
                else:
                    auto["rois"].append(roi_for(lab, mask, img.spacing, auto["settings"]))
                    auto["z_ranges"].append(z_range_for(lab, mask, img.spacing))
                return auto["settings"], auto["rois"][-1]
        data = prepare_data(config, pre_meta.get("normalization"), chooser)
        settings = auto.get("settings")
        if settings is not None:
            if not (config.encoder or config.encoder_weights or config.init_model):
                config.encoder = settings.encoder
        num_classes = len(data.class_names) + 1
        emit({"type": "status", "message": "Building the model (the first training steps follow)"})
        torch.manual_seed(int(config.seed))  # the decoder (and a random encoder) start the same under one seed
        unet, source = build_initial_model(config, num_classes)
        meta_src = source.pop("_meta", {})
        encoder_name, in_channels = source.pop("_encoder"), int(source.pop("_in_channels"))
        image_size = int(config.image_size or (settings.image_size if settings else 0) or meta_src.get("image_size") or 64)
        if image_size % 32:
            raise NapariSSLError(f"--image-size must be a multiple of 32 (the U-Net downsamples 5 times); got {image_size}")
        dataset = LabelledSliceDataset(data.volumes, image_size, in_channels, AugmentConfig() if config.augment else None)
        steps = resolve_steps(config, len(dataset))
        if settings is not None:
            settings.steps, settings.encoder, settings.image_size = steps, encoder_name, image_size
            emit({"type": "status", "message": "settings: " + settings.summary()})
        train_kw = dict(batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
                        loss=config.loss, encoder_lr_scale=config.encoder_lr_scale, freeze_encoder_steps=config.freeze_encoder_steps,
                        freeze_encoder_bn=config.freeze_encoder_bn,
                        devices=config.devices, precision=config.precision, num_workers=config.num_workers,
                        emit=emit, stop_event=stop_event, preview_every_s=config.preview_every_s)
        semi_meta = None
        if config.semi_supervised:
            from .semi_supervised import load_unlabelled, semi_supervised_config, train_semi_supervised

            semi_cfg = semi_supervised_config(config.semi_options)
            unlabelled = load_unlabelled(config.unlabelled or [], lambda modality: dict(config.normalization) if config.normalization
                                         else resolve_normalization(pre_meta.get("normalization"), modality))
            unet, info = train_semi_supervised(unet, data.volumes, image_size=image_size, in_channels=in_channels, steps=steps, cfg=semi_cfg,
                                               unlabelled=unlabelled, augment=config.augment, seed=config.seed, **train_kw)
            semi_meta = {**semi_cfg.as_meta(), "unlabelled_volumes": len(unlabelled), "pseudo_slices_per_phase": info["pseudo_slices"]}
        else:
            if config.unlabelled:
                raise NapariSSLError("--unlabelled volumes are used by the semi-supervised recipe; drop --no-semi-supervised or --unlabelled")
            unet, info = train_unet(unet, dataset, steps=steps, seed=config.seed, **train_kw)
        unet = unet.cpu()
        emit({"type": "status", "message": "Saving the model"})
        dice = annotated_dice(unet, dataset, num_classes)
        meta = {
            "kind": "segmentation",
            "architecture": "smp.Unet",
            "encoder_name": encoder_name,
            "in_channels": in_channels,
            "image_size": image_size,
            "num_classes": num_classes,
            "class_names": data.class_names,
            "classes": {str(i + 1): n for i, n in enumerate(data.class_names)},
            "normalization": {(data.modality or "default"): data.normalization},
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
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if settings is not None:  # what was chosen from the data, and why (crops: voxel boxes, nothing identifying)
            meta["auto"] = {**settings.as_meta(), "encoder": encoder_name, "image_size": image_size, "rois": auto["rois"], "z_ranges": auto["z_ranges"]}
        if config.init_model:
            meta["pretrained"] = pre_meta.get("pretrained")
        with atomic_output_dir(config.out) as tmp:
            save_weights(tmp, unet.state_dict(), meta, name="model")
        emit({"type": "checkpoint", "path": os.path.abspath(config.out)})
        emit({"type": "done", "out": os.path.abspath(config.out), "stopped": info["stopped"]})
        return os.path.abspath(config.out)
    except NapariSSLError as exc:
        emit({"type": "error", "message": str(exc)})
        raise
    except Exception as exc:  # report, then let the caller see the traceback
        emit({"type": "error", "message": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
        raise
