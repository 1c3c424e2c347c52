"""Whole-volume prediction with a fine-tuned model, with per-voxel and per-slice uncertainty.

Slices are predicted in batches on the canonical grid of the volume (the one napari
shows) and returned on that grid; :func:`write_prediction` maps them back to the
file's own storage order so the written NIfTI has exactly the input's geometry.

Uncertainty is the predictive entropy of the mean class probabilities, normalised to
[0, 1] by log(number of classes), over several stochastic passes: test-time
augmentation (left-right flip and gamma changes) and/or MC-dropout (channel dropout on
the deepest encoder features, kept active at test time). With a single pass it is the
entropy of that pass.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.labelled_slices import fit_to_size, slice_stack, unfit_from_size
from ..errors import NapariSSLError
from .entropy import normalised_entropy

MC_DROPOUT_P = 0.2
# (flip left-right, gamma): identity first
TTA_VARIANTS = ((False, 1.0), (True, 1.0), (False, 0.8), (True, 1.25))


@dataclass
class Prediction:
    labels: np.ndarray  # (z, y, x) uint8, 0 = background
    probabilities: np.ndarray  # (K, z, y, x) float32, K = classes incl. background
    uncertainty: np.ndarray  # (z, y, x) float32 in [0, 1], normalised predictive entropy
    slice_uncertainty: np.ndarray  # (z,) mean voxel uncertainty of each slice
    class_names: list[str]
    passes: int
    method: str
    # with the user's labels (respect_annotation): per slice, the expected number of voxels where the completed result
    # is wrong under the model's own probabilities (active.next_slice ranks slices by it); None otherwise
    slice_error: Optional[np.ndarray] = None


SLICE_SCORES = ("entropy", "foreground-entropy")
# The default since the active-learning benchmark (benchmarks/RESULTS.md, 3 seeds, 5 rounds): with plain entropy the
# early models' doubt sits on structure-free end slices and `suggest` ended 0.047 Dice below random picks;
# foreground-weighted entropy ended level with random (-0.002) and above plain entropy in rounds 2-5.
DEFAULT_SLICE_SCORE = "foreground-entropy"


def slice_scores(pred: "Prediction", score: Optional[str] = None) -> np.ndarray:
    """One usefulness score per slice (axis 0).

    ``entropy``: the slice mean of the normalised predictive entropy (``pred.slice_uncertainty``).
    ``foreground-entropy``: the slice mean of entropy x foreground probability (1 - P(background)):
    uncertainty where the model thinks the structure may be, so slices that hold more of a doubtful
    structure rank above structure-free ones. None: ``DEFAULT_SLICE_SCORE``."""
    score = score or DEFAULT_SLICE_SCORE
    if score == "entropy":
        return pred.slice_uncertainty
    if score == "foreground-entropy":
        z = pred.uncertainty.shape[0]
        return (pred.uncertainty * (1.0 - pred.probabilities[0])).reshape(z, -1).mean(1).astype(np.float32)
    raise NapariSSLError(f"unknown slice score {score!r}; choose one of {', '.join(SLICE_SCORES)}")


def load_segmentation_model_meta(model_dir: str) -> dict:
    """model.json of a fine-tuned model folder, checked for what prediction needs."""
    from ..models.metadata import read_model_meta

    if not os.path.isdir(model_dir):
        raise NapariSSLError(f"--model: no such model folder: {model_dir}")
    meta = read_model_meta(model_dir)
    if not meta.is_segmentation:
        raise NapariSSLError(f"{model_dir} is not a fine-tuned segmentation model (run napari-ssl finetune first)")
    try:
        complete = int(meta.in_channels) > 0 and int(meta.num_classes) > 0 and bool(meta.encoder_name)
    except (ValueError, TypeError):
        complete = False
    if not complete:
        raise NapariSSLError(f"{model_dir}/model.json lacks encoder_name / in_channels / num_classes")
    return meta.to_dict()


def load_segmentation_model(model_dir: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(U-Net in eval mode, model.json) from a fine-tuned model folder; safetensors only."""
    from ..models.checkpoint import load_weights
    from ..models.unet import build_unet

    meta = load_segmentation_model_meta(model_dir)
    enc, ch, k = meta["encoder_name"], int(meta["in_channels"]), int(meta["num_classes"])
    try:
        unet = build_unet(enc, in_channels=ch, classes=k)
    except NapariSSLError:
        raise
    except Exception as exc:  # an encoder name smp does not know
        why = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise NapariSSLError(f"{model_dir}: cannot build a U-Net with encoder {enc!r} ({why})") from None
    sd, _ = load_weights(model_dir, name="model")
    try:
        unet.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise NapariSSLError(f"{model_dir}: weights do not match the {enc} encoder with {ch} channel(s) and {k} classes named in "
                             f"model.json ({str(exc).strip().splitlines()[0][:120]})") from None
    return unet.to(device).eval(), meta


def _forward(unet: torch.nn.Module, x: torch.Tensor, dropout_p: float) -> torch.Tensor:
    if dropout_p <= 0:
        return unet(x)
    feats = unet.encoder(x)
    feats = list(feats[:-2]) + [F.dropout2d(f, dropout_p, training=True) for f in feats[-2:]]
    return unet.segmentation_head(unet.decoder(feats))


@torch.no_grad()
def _passes(unet, xf: torch.Tensor, passes) -> torch.Tensor:
    """Mean class probabilities of one batch of fitted tiles over the stochastic passes."""
    acc = 0
    for flip, gamma, p in passes:
        xi = xf.clamp(0, 1) ** gamma if gamma != 1.0 else xf
        if flip:
            xi = xi.flip(-1)
        pr = _forward(unet, xi, p).float().softmax(1)
        if flip:
            pr = pr.flip(-1)
        acc = acc + pr
    return acc / len(passes)


# Three sides are fused by the geometric mean of their class probabilities (the mean of their logs, then normalised):
# on the validation volumes of benchmarks/RESULTS.md ("Fusing the three sides") it scored above the arithmetic mean
# at every k with side planes; a voxel needs the sides to agree, so one side's spill stays out. LOG_EPS bounds a log.
LOG_EPS = 1e-6


def _predict_along(unet, image: np.ndarray, axis: int, out: list, *, image_size: int, in_channels: int, batch_size: int,
                   passes, stretch: float, tick, log: bool = False) -> None:
    """Add the class probabilities of every plane along `axis` (0: the slices; 1, 2: side planes, data/planes.py)
    of `image` to ``out[0]`` (K, z, y, x; made at the first batch, when K is known); with `log`, their logs."""
    from ..data.planes import fit_plane, side_view, unfit_plane

    dev = next(unet.parameters()).device
    view = side_view(image, axis)
    if axis:  # no left-right flips on side planes: one of them would flip front and back
        passes = [(False, g, p) for f, g, p in passes if not f] or [(False, 1.0, passes[0][2])]
    n, shape = view.shape[0], view.shape[1:]
    side = max(image.shape[1:])  # side planes at the slices' scale (data/planes.fit_plane)
    for i0 in range(0, n, batch_size):
        idx = range(i0, min(n, i0 + batch_size))
        x = torch.from_numpy(np.stack([slice_stack(view, i, in_channels) for i in idx]).astype(np.float32))
        xf = (fit_plane(x, image_size, stretch, side=side) if axis else fit_to_size(x, image_size)).to(dev)
        acc = _passes(unet, xf, passes).cpu()
        acc = (unfit_plane(acc, shape, stretch, side=side) if axis else unfit_from_size(acc, shape)).numpy()  # (n, K, a, b)
        if log:
            acc = np.log(np.clip(acc, 0.0, None) + LOG_EPS)
        if out[0] is None:
            out[0] = np.zeros((acc.shape[1], *image.shape), np.float32)
        side_view(np.moveaxis(out[0], 0, -1), axis)[i0:i0 + len(idx)] += np.moveaxis(acc, 1, -1)
        tick(len(idx))


def predict_array(unet: torch.nn.Module, image: np.ndarray, *, image_size: int, in_channels: int = 1, batch_size: int = 64,
                  tta: bool = False, mc_dropout: int = 0, class_names: Optional[list[str]] = None, seed: int = 0,
                  progress=None, planes: Sequence[int] = (0,), stretch: float = 1.0) -> Prediction:
    """Predict every slice of a normalised (z, y, x) float image in [0, 1]; with ``planes`` (0, 1, 2) also every
    side plane, the three sides' probabilities fused by their geometric mean (``stretch``: slice spacing / pixel size,
    data/planes.py).
    ``progress(planes_done, planes_total)`` is called after each batch when given."""
    if mc_dropout < 0:
        raise NapariSSLError("--mc-dropout must be 0 (off) or a number of passes")
    unet.eval()
    variants = TTA_VARIANTS[:2] if tta == "flip" else TTA_VARIANTS if tta else TTA_VARIANTS[:1]
    n_mc = int(mc_dropout)
    passes = ([(flip, gamma, 0.0) for flip, gamma in variants] if n_mc == 0
              else [(flip, gamma, MC_DROPOUT_P) for flip, gamma in variants for _ in range(n_mc)])
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    out: list = [None]
    total, done = sum(image.shape[a] for a in planes), [0]

    def tick(n):
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    fused = len(planes) > 1
    for axis in planes:
        _predict_along(unet, image, int(axis), out, image_size=image_size, in_channels=in_channels, batch_size=batch_size,
                       passes=passes, stretch=stretch, tick=tick, log=fused)
    torch.random.set_rng_state(gen_state)
    probs = out[0]
    if fused:  # the sum of the sides' logs -> their normalised geometric mean, in place (a CT's array is large)
        probs -= probs.max(0, keepdims=True)
        probs /= len(planes)
        np.exp(probs, out=probs)
    probs /= np.clip(probs.sum(0, keepdims=True), 1e-8, None)
    z, k = image.shape[0], probs.shape[0]
    ent = normalised_entropy(probs)
    labels = probs.argmax(0).astype(np.uint8)
    method = "+".join(m for m, on in (("tta-flip" if tta == "flip" else "tta", tta), (f"mc-dropout-{n_mc}", n_mc > 0)) if on) or "single"
    return Prediction(labels=labels, probabilities=probs, uncertainty=ent.astype(np.float32),
                      slice_uncertainty=ent.reshape(z, -1).mean(1).astype(np.float32),
                      class_names=list(class_names or [f"class {i}" for i in range(1, k)]), passes=len(passes), method=method)


def _to_volume_grid(pred: Prediction, shape: tuple, z0: int, z1: int, roi: Optional[list]) -> None:
    """`pred` of the crop [z0:z1, roi] placed on the whole volume's grid (background elsewhere), in place."""
    y0, y1, x0, x1 = (int(v) for v in roi) if roi is not None else (0, shape[1], 0, shape[2])
    k = pred.probabilities.shape[0]
    labels = np.zeros(shape, np.uint8)
    labels[z0:z1, y0:y1, x0:x1] = pred.labels
    probs = np.zeros((k,) + tuple(shape), np.float32)
    probs[0] = 1.0  # background where nothing was predicted
    probs[:, z0:z1, y0:y1, x0:x1] = pred.probabilities
    unc = np.zeros(shape, np.float32)
    unc[z0:z1, y0:y1, x0:x1] = pred.uncertainty
    pred.labels, pred.probabilities, pred.uncertainty = labels, probs, unc
    pred.slice_uncertainty = unc.reshape(shape[0], -1).mean(1).astype(np.float32)


def predict_volume(model_dir: str, volume, *, tta: bool = False, mc_dropout: int = 0, batch_size: int = 64,
                   device: Optional[str] = None, loaded: Optional[tuple[torch.nn.Module, dict]] = None,
                   annotation: Optional[tuple[np.ndarray, np.ndarray]] = None, keep_connected: bool = False,
                   fill_between: bool = False, progress=None, roi: Optional[list] = None, z_range: Optional[list] = None,
                   seeds: Optional[np.ndarray] = None, propagate: bool = False) -> Prediction:
    """Predict a :class:`~napari_ssl.io.Volume` (canonical grid) with the model in `model_dir`
    (or `loaded`, the (unet, meta) pair of :func:`load_segmentation_model`, to predict many volumes).

    ``annotation``: the user's (labels, annotated-slice mask) on this volume's grid: those slices come back
    exactly as drawn (see :mod:`napari_ssl.active.respect_annotation`); ``keep_connected`` also drops predicted
    foreground not touching the user's labels in 3-D; ``fill_between``: between annotated slices, each class
    comes from fill between slices (the interpolation of the user's slices); ``propagate``: beyond the outermost
    annotated slices, the model's probabilities are weighted by the user's slices carried outward along the image's
    motion (:mod:`napari_ssl.active.propagate`).

    Predicting the study the model was just trained on (train/auto_config.py): `roi` ([y0, y1, x0, x1]) and
    `z_range` ([z0, z1)) limit prediction to the crop and slices the structure can occupy (background
    elsewhere); `seeds` (the user's labels) keep only predicted 3-D components touching them. Without `roi`
    a model with ``auto`` settings sees the whole slice at its own resolution."""
    from ..data.normalize import normalize, resolve_normalization

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    unet, meta = loaded if loaded is not None else load_segmentation_model(model_dir, dev)
    if volume.array.ndim != 3:
        raise NapariSSLError(f"the image must be a 3-D volume; got shape {list(volume.array.shape)}")
    spec = resolve_normalization(meta.get("normalization"), volume.modality)
    from ..data.auto_config import crop_volume, prediction_tile
    from ..data.components import keep_touched as keep_seeded_components

    z0, z1 = (int(z_range[0]), int(z_range[1])) if z_range is not None else (0, volume.shape[0])
    # a fixed window does not depend on what lies outside the crop: normalise only the crop (memory)
    if spec.get("mode") == "window":
        img = normalize(crop_volume(volume.array[z0:z1], roi), spec)
    else:
        img = crop_volume(normalize(volume.array, spec)[z0:z1], roi)
    size = prediction_tile(meta, volume.shape, volume.spacing, roi)
    from ..data.planes import slice_stretch

    planes = [int(a) for a in (meta.get("planes") or [0])]  # a model trained on side planes too predicts from three sides
    pred = predict_array(unet, img, image_size=size, in_channels=int(meta["in_channels"]), batch_size=batch_size,
                         tta=tta, mc_dropout=mc_dropout, class_names=meta.get("class_names"), progress=progress,
                         planes=planes, stretch=slice_stretch(volume.spacing))
    if roi is not None or z_range is not None:
        _to_volume_grid(pred, tuple(volume.shape), z0, z1, roi)
    if annotation is not None and propagate:
        from .propagate import propagate_on_volume

        propagate_on_volume(pred, volume, spec, annotation[0], annotation[1], (z0, z1))
    if seeds is not None and (meta.get("auto") or {}).get("keep_connected", False):
        pred.labels = keep_seeded_components(pred.labels, seeds)
    if annotation is not None:
        from .respect_annotation import respect_annotation

        pred = respect_annotation(pred, annotation[0], annotation[1], keep_connected=keep_connected, fill_between=fill_between)
    return pred


def to_source_grid(array: np.ndarray, volume) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) in the file's own storage order (undoing canonical reorientation)."""
    from ..io.orientation import reorient_array

    native = getattr(volume, "native_affine", None)
    if native is None:
        return array, volume.affine
    return np.ascontiguousarray(reorient_array(array, volume.affine, native)), np.asarray(native, float)


def write_prediction(pred: Prediction, volume, out: str, probabilities: Optional[str] = None, uncertainty: Optional[str] = None) -> None:
    """Labels (and optionally probabilities, uncertainty) in the source geometry of `volume`.

    Probabilities: with one foreground class a 3-D map of its probability; with several, a
    multi-component image with one component per class *including background* (component 0 =
    background, then model.json's class_names in order), so the components sum to 1 per voxel."""
    from ..io import write_itk_volume

    for p in (out, probabilities, uncertainty):
        if p and os.path.dirname(os.path.abspath(p)) and not os.path.isdir(os.path.dirname(os.path.abspath(p))):
            raise NapariSSLError(f"output folder does not exist: {os.path.dirname(os.path.abspath(p))}")
    if pred.labels.shape != tuple(volume.shape):
        raise NapariSSLError(f"the prediction has shape {list(pred.labels.shape)} but the image has {list(volume.shape)}")
    lab, aff = to_source_grid(pred.labels, volume)
    write_itk_volume(lab.astype(np.uint8), aff, out)
    if uncertainty:
        u, aff = to_source_grid(pred.uncertainty, volume)
        write_itk_volume(u.astype(np.float32), aff, uncertainty)
    if probabilities:
        if pred.probabilities.shape[0] == 2:
            p, aff = to_source_grid(pred.probabilities[1], volume)
            write_itk_volume(p.astype(np.float32), aff, probabilities)
        else:
            p, aff = to_source_grid(np.moveaxis(pred.probabilities, 0, -1), volume)
            write_itk_volume(p.astype(np.float32), aff, probabilities, vector=True)
