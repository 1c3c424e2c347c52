"""Training defaults chosen from the scan and the user's annotation, not from the hippocampus crops.

What the user draws on a few slices says where the structure is and how large it is; the scan says
its modality, in-plane size and spacing. From those:

* **crop**: a square in-plane box around the annotated structure (its extent on the annotated slices,
  widened by a margin because the structure may be larger on slices nobody drew), used for training
  and for predicting this study. A slice that already fits in one tile at native resolution (a crop
  like the 35 x 50 hippocampus volumes) is used whole, as before.
* **tile size / resolution**: the crop is resampled to a tile of at most ``TILE_CAP`` pixels
  (a multiple of 32), i.e. native resolution when it fits, else the finest the device affords.
  ``spacing_mm`` (mm per tile pixel) goes into model.json so another scan is predicted at the same scale.
* **intensity window**: CT gets a window centred on the annotated structure's Hounsfield units
  (at least 400 HU wide, a soft-tissue window for soft tissue; wider for bone or lung); MR keeps the
  per-volume percentiles (MR intensities have no absolute meaning).
* **encoder and steps**: on a CPU the compact U-Net preset (a resnet18 costs about 4.5x per step); the number of
  steps is a training-time budget (about a minute on the device, :func:`default_steps`), so a small tile trains
  longer (up to ``MAX_STEPS``) and a large one still gives a first result in about a minute.
* **slice range**: the study is predicted from one mean gap between drawn slices below the lowest drawn
  slice to one gap above the highest (bounded by slices marked annotated-empty): the model never saw a
  slice without the structure, so beyond that it finds look-alikes (bowel above the bladder).
* **keep connected**: the structure is one continuous object, so prediction keeps only the 3-D
  components that touch voxels the user drew (what the model finds in the chest when the user drew the
  liver is discarded).

Every value carries a one-line reason, shown in the widget and written to model.json (``auto``).
A value the user (or a pretrained / previous model) sets explicitly is kept; :func:`slow_setting_warning`
says when such a setting will be slow on this machine.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from .sparse_labels import labelled_slices

TILE_CAP = {"cpu": 128, "gpu": 256}  # tile side (px) a device trains on in about a minute
MIN_TILE = 64
MARGIN_FRACTION = 0.25  # of the annotated box side, on each side
MARGIN_MM = 15.0  # at least this much on each side
CT_MIN_WIDTH_HU = 400.0
CT_MAX_WIDTH_HU = 2000.0
COMPACT_ENCODER = "mobilenetv3-small-lite"
DEFAULT_ENCODER = "resnet18"
DEFAULT_STEPS = 300  # the fewest steps the budget gives (a large tile); also the estimate for a slow-setting warning
MAX_STEPS = 600  # the most it gives (a small tile: the hippocampus crops' 64 px)
TRAIN_BUDGET_S = 60.0  # estimated seconds of training on an unloaded device
# Rough seconds per training step (batch 8) on an unloaded 2-core CPU at a 128 px tile; they scale with tile area.
CPU_SECONDS_PER_STEP_128 = {DEFAULT_ENCODER: 0.9, COMPACT_ENCODER: 0.2}


@dataclass
class AutoSettings:
    image_size: int  # tile side in pixels (multiple of 32)
    spacing_mm: float  # in-plane mm per tile pixel
    roi: Optional[list[int]]  # [y0, y1, x0, x1] on the annotated image, None = whole slice
    z_range: Optional[list[int]]  # [z0, z1) slices of this study the structure may occupy, None = all
    normalization: dict
    encoder: str
    steps: int
    keep_connected: bool = True
    reasons: dict = field(default_factory=dict)

    def as_meta(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for the widget / CLI."""
        crop = "whole slice" if self.roi is None else f"crop {self.roi[1] - self.roi[0]} x {self.roi[3] - self.roi[2]} px around the drawn structure"
        norm = self.normalization
        win = (f"window {norm['window'][0]:.0f}..{norm['window'][1]:.0f} HU" if norm.get("mode") == "window"
               else "intensities scaled per scan")
        zr = "" if self.z_range is None else f", slices {self.z_range[0]}-{self.z_range[1] - 1}"
        return (f"{self.image_size} px tiles at {self.spacing_mm:.2f} mm, {crop}{zr}, {win}, "
                f"{self.encoder}, {self.steps} steps")


def device_kind(devices: Optional[str]) -> str:
    """'gpu' when training will run on a GPU, else 'cpu'."""
    d = str(devices or "auto").lower()
    if d in ("cpu",):
        return "cpu"
    if d.startswith("cuda") or d.startswith("gpu") or d.isdigit() or d == "mps":
        return "gpu"
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover
        return "cpu"


def ceil32(n: float) -> int:
    return int(max(32, 32 * math.ceil(float(n) / 32.0)))


def annotated_box(labels: np.ndarray, annotated: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """In-plane (y0, y1, x0, x1) box of the labels on the annotated slices; None when they are all empty."""
    sel = labels[np.asarray(annotated, bool)] if np.asarray(annotated).any() else labels
    fg = sel > 0
    if not fg.any():
        return None
    ys = np.flatnonzero(fg.any(axis=(0, 2)))
    xs = np.flatnonzero(fg.any(axis=(0, 1)))
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def square_roi(box: tuple[int, int, int, int], side: int, shape: tuple[int, int]) -> list[int]:
    """A side x side box centred on `box`, shifted to stay inside `shape` (clipped when the slice is smaller)."""
    h, w = shape
    out = []
    for lo, hi, n in ((box[0], box[1], h), (box[2], box[3], w)):
        s = min(side, n)
        start = int(round((lo + hi) / 2 - s / 2))
        start = min(max(start, 0), n - s)
        out += [start, start + s]
    return out


def z_range_for(labels: np.ndarray, annotated: np.ndarray, spacing: Sequence[float]) -> Optional[list[int]]:
    """[z0, z1): the drawn slices' range widened by one mean gap between drawn slices on each side.

    A user spreads a few slices through a structure, so its ends lie within about one such gap of the
    outermost drawn slices; beyond that a model that never saw a slice without the structure finds look-alikes
    (bowel above the bladder, the chest above the liver). With one drawn slice the gap is taken as half the
    structure's in-plane extent. Slices annotated as empty bound the range too."""
    ann = np.asarray(annotated, bool)
    drawn = np.flatnonzero(ann & labelled_slices(labels))
    if drawn.size == 0:
        return None
    if drawn.size > 1:
        gap = float(np.mean(np.diff(drawn)))
    else:
        fg = labels[drawn[0]] > 0
        ys, xs = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
        extent_mm = max((ys[-1] - ys[0] + 1) * float(spacing[1]), (xs[-1] - xs[0] + 1) * float(spacing[2]))
        gap = 0.5 * extent_mm / float(spacing[0])
    lo, hi = int(np.ceil(drawn[0] - gap)), int(np.floor(drawn[-1] + gap)) + 1
    empty = np.flatnonzero(ann & ~labelled_slices(labels))
    below, above = empty[empty < drawn[0]], empty[empty > drawn[-1]]
    if below.size:
        lo = max(lo, int(below.max()) + 1)
    if above.size:
        hi = min(hi, int(above.min()))
    return [max(0, lo), min(int(labels.shape[0]), hi)]


def ct_window(values: np.ndarray) -> list[float]:
    """A window centred on the structure's median HU, 4 x its 5-95 % range wide, within [400, 2000] HU."""
    if values.size == 0:
        from .normalize import CT_WINDOW

        return [float(v) for v in CT_WINDOW]
    p5, med, p95 = np.percentile(values, [5, 50, 95])
    width = float(np.clip(4.0 * (p95 - p5), CT_MIN_WIDTH_HU, CT_MAX_WIDTH_HU))
    return [round(float(med) - width / 2), round(float(med) + width / 2)]


def estimated_seconds_per_step(encoder: str, image_size: int, batch_size: int = 8, kind: str = "cpu") -> float:
    """A rough CPU estimate (unloaded 2-core machine); GPUs are taken as 20x faster."""
    base = CPU_SECONDS_PER_STEP_128.get(encoder, CPU_SECONDS_PER_STEP_128[DEFAULT_ENCODER] * 2)
    sec = base * (image_size / 128.0) ** 2 * batch_size / 8.0
    return sec / 20.0 if kind == "gpu" else sec


def default_steps(encoder: str, image_size: int, kind: str = "cpu", batch_size: int = 8) -> int:
    """Steps that fill the training-time budget, in [DEFAULT_STEPS, MAX_STEPS], a multiple of 50.

    A budget, not a count: on the hippocampus crops (64 px) 600 steps beat 300 on every validation volume at k=5
    (benchmarks/RESULTS.md, session 15) and train in ~30 s; a 128 px CT crop costs 4x per step and keeps 300."""
    per_step = estimated_seconds_per_step(encoder, int(image_size), batch_size, kind)
    n = TRAIN_BUDGET_S / max(per_step, 1e-6)
    return int(min(MAX_STEPS, max(DEFAULT_STEPS, 50 * math.floor(n / 50))))


def choose_settings(image: np.ndarray, spacing: Sequence[float], modality: str, labels: np.ndarray, annotated: np.ndarray,
                    *, devices: Optional[str] = "auto", model_meta: Optional[dict] = None,
                    image_size: Optional[int] = None) -> AutoSettings:
    """Settings for fine-tuning on `labels` (sparse, on `image`'s (z, y, x) grid) and predicting this study.

    `model_meta`: the pretrained encoder's or previous model's model.json; a previous model's tile size,
    resolution, normalisation and encoder are kept (its weights were trained with them).
    `image_size`: a tile size the user typed (the crop is still chosen here).
    """
    kind = device_kind(devices)
    h, w = int(image.shape[1]), int(image.shape[2])
    reasons: dict[str, str] = {}
    meta = model_meta or {}
    previous = meta["auto"] if meta.get("kind") == "segmentation" and meta.get("auto") else None
    box = annotated_box(labels, annotated)
    side, size, spacing_mm = _tile(box, (h, w), min(float(spacing[1]), float(spacing[2])), kind, image_size, previous, reasons)
    roi = None
    if box is not None and side < max(h, w):
        roi = square_roi(box, side, (h, w))
        if roi == [0, h, 0, w]:
            roi = None
    norm = _normalization(image, modality, labels, annotated, box, meta, reasons)
    encoder = _encoder(meta, previous is not None, kind, size, reasons)
    z_range = z_range_for(labels, annotated, spacing) if box is not None else None
    if z_range is not None:
        reasons["z_range"] = "the structure is continuous: predicted up to one gap between drawn slices beyond the outermost ones"
        if z_range == [0, int(image.shape[0])]:
            z_range = None
    steps = default_steps(encoder, size, kind)
    reasons["steps"] = (f"about a minute of training: ~{estimated_seconds_per_step(encoder, size, kind=kind) * steps:.0f} s "
                        f"on an unloaded {kind.upper()} ({DEFAULT_STEPS}-{MAX_STEPS} steps)")
    return AutoSettings(image_size=int(size), spacing_mm=round(float(spacing_mm), 4), roi=roi, z_range=z_range, normalization=norm,
                        encoder=encoder, steps=int(steps), keep_connected=box is not None, reasons=reasons)


def _tile(box, hw: tuple[int, int], px_mm: float, kind: str, image_size: Optional[int], previous: Optional[dict],
          reasons: dict[str, str]) -> tuple[int, int, float]:
    """(crop side in pixels, tile size, mm per tile pixel): a previous model's resolution, else a crop around the drawing."""
    h, w = hw
    cap = TILE_CAP[kind]
    if previous is not None:
        size, spacing_mm = int(previous["image_size"]), float(previous["spacing_mm"])
        reasons["image_size"] = "kept from the model this one starts from"
        return int(round(size * spacing_mm / px_mm)), size, spacing_mm
    if box is None or max(h, w) <= cap:
        side = max(h, w)
        reasons["crop"] = ("the whole slice fits in one tile at native resolution" if max(h, w) <= cap
                           else "no structure drawn yet: the whole slice")
    else:
        extent = max(box[1] - box[0], box[3] - box[2])
        margin = max(MARGIN_FRACTION * extent, MARGIN_MM / px_mm)
        side = int(min(max(h, w), math.ceil(extent + 2 * margin)))
        reasons["crop"] = (f"the drawn structure spans {extent * px_mm:.0f} mm; crop {side * px_mm:.0f} mm "
                           f"around it (margin {margin * px_mm:.0f} mm each side)")
    size = int(image_size) if image_size else min(ceil32(max(side, MIN_TILE)), cap)
    spacing_mm = side * px_mm / size
    reasons["image_size"] = ("set by the user" if image_size else
                             f"native resolution ({px_mm:.2f} mm) fits in {size} px" if spacing_mm <= px_mm * 1.001
                             else f"{size} px is the largest tile that trains in about a minute on the {kind.upper()}; "
                                  f"{spacing_mm:.2f} mm per pixel")
    return side, size, spacing_mm


def _normalization(image: np.ndarray, modality: str, labels: np.ndarray, annotated: np.ndarray, box, meta: dict,
                   reasons: dict[str, str]) -> dict:
    """The model's own normalisation if it has one; for CT a window on the drawn structure's HU; else per-scan percentiles."""
    if meta.get("normalization"):
        from .normalize import resolve_normalization

        reasons["normalization"] = "kept from the model this one starts from (its features were learnt with it)"
        return resolve_normalization(meta["normalization"], modality)
    if (modality or "").upper() == "CT":
        vals = image[np.asarray(annotated, bool)][labels[np.asarray(annotated, bool)] > 0] if box is not None else np.zeros(0)
        win = ct_window(np.asarray(vals, np.float32))
        reasons["normalization"] = ("window centred on the drawn structure's Hounsfield units" if vals.size
                                    else "no structure drawn yet: the full CT window")
        return {"mode": "window", "window": win}
    from .normalize import default_spec

    reasons["normalization"] = "MR intensities are relative: each scan is scaled by its own percentiles"
    return default_spec(modality)


def _encoder(meta: dict, from_previous: bool, kind: str, size: int, reasons: dict[str, str]) -> str:
    """The previous model's or the pretrained encoder; else on a CPU the compact U-Net, on a GPU a resnet18."""
    if from_previous:
        reasons["encoder"] = "kept from the model this one starts from"
        return str(meta.get("encoder_name") or DEFAULT_ENCODER)
    if meta.get("encoder_name"):  # older spellings resolved by models/metadata.py
        reasons["encoder"] = "the pretrained encoder's"
        return str(meta["encoder_name"])
    if kind == "cpu":
        per = estimated_seconds_per_step(DEFAULT_ENCODER, size) / estimated_seconds_per_step(COMPACT_ENCODER, size)
        reasons["encoder"] = f"compact U-Net: a {DEFAULT_ENCODER} costs ~{per:.1f}x as much per step on this CPU"
        return COMPACT_ENCODER
    reasons["encoder"] = f"{DEFAULT_ENCODER} U-Net (GPU)"
    return DEFAULT_ENCODER


def slow_setting_warning(*, image_size: Optional[int], encoder: Optional[str], steps: Optional[int], devices: Optional[str],
                         batch_size: int = 8, budget_s: float = 180.0) -> Optional[str]:
    """A clear sentence when the chosen training settings will be slow on this machine, else None.
    `encoder` None: the one :func:`choose_settings` picks for this tile size on a CPU."""
    kind = device_kind(devices)
    if kind == "gpu" or not image_size:
        return None
    enc = encoder or COMPACT_ENCODER
    n = int(steps or default_steps(enc, int(image_size), kind, batch_size))
    est = estimated_seconds_per_step(enc, int(image_size), batch_size, kind) * n
    if est <= budget_s:
        return None
    return (f"Slow on this machine: {n} steps of a {enc} U-Net at {image_size} px on the CPU (no GPU) take about "
            f"{est / 60:.0f} min. Leave Image size on auto (a crop around the drawn structure) for about a minute.")


def roi_for(labels: np.ndarray, annotated: np.ndarray, spacing: Sequence[float], settings: AutoSettings) -> Optional[list[int]]:
    """The crop of another annotated volume at the settings' physical tile size (None: whole slice)."""
    if settings.roi is None:
        return None
    box = annotated_box(labels, annotated)
    h, w = labels.shape[1:]
    side = int(round(settings.image_size * settings.spacing_mm / min(float(spacing[1]), float(spacing[2]))))
    if box is None or side >= max(h, w):
        return None
    return square_roi(box, side, (h, w))


def prediction_tile(meta: dict, shape: Sequence[int], spacing: Sequence[float], roi: Optional[Sequence[int]] = None) -> int:
    """Tile side for predicting a (y, x) plane of `shape` (or its `roi`) at the resolution a model trained on crops
    worked at (model.json ``auto``); the model's own image size otherwise."""
    auto = meta.get("auto") or {}
    size = int(meta.get("image_size", 64))
    if roi is not None or not auto.get("spacing_mm") or not any(auto.get("rois") or [auto.get("roi")]):
        return size  # trained on whole slices, each resized to the tile: no fixed resolution to keep
    side_mm = max(int(shape[-2]), int(shape[-1])) * min(float(spacing[-2]), float(spacing[-1]))
    return ceil32(side_mm / float(auto["spacing_mm"]))


def crop_volume(array: np.ndarray, roi: Optional[Sequence[int]]) -> np.ndarray:
    """The in-plane `roi` ([y0, y1, x0, x1]) of a (..., y, x) array; the array itself when None."""
    if roi is None:
        return array
    y0, y1, x0, x1 = (int(v) for v in roi)
    return array[..., y0:y1, x0:x1]
