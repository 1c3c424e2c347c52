"""Pseudo-labels of the semi-supervised recipe (napari_ssl.train.semi_supervised): fill between slices, the user's slices
carried along the image's motion, and the model's confident answers on the unannotated slices of the annotated volumes and
on unlabelled volumes. They live in memory for one training run; pixels no pseudo-label decides are IGNORE. ``cfg`` is the
recipe's SemiSupervisedConfig (not imported here: that module imports this one)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..data.components import keep_touching
from ..data.labelled_slices import LabelledVolume, fit_to_size, slice_stack, unfit_from_size
from ..data.planes import IGNORE


def nearest_unannotated(annotated: np.ndarray, limit: int) -> list[int]:
    """Unannotated slice indices ordered by distance to the nearest annotated slice, at most `limit`."""
    ann = np.flatnonzero(annotated)
    cand = np.flatnonzero(~annotated)
    if ann.size == 0 or cand.size == 0 or limit <= 0:
        return []
    dist = np.abs(cand[:, None] - ann[None, :]).min(1)
    order = np.lexsort((cand, dist))
    return sorted(int(z) for z in cand[order[:limit]])


def _stride(shape: tuple, image_size: int) -> int:
    """In-plane subsampling that keeps at least `image_size` pixels on the longer side (pseudo-labels are
    resized to the training size anyway; a 512 x 512 CT interpolated at full size costs minutes)."""
    return max(1, int(max(shape) // max(1, image_size)))


def _upsample(a: np.ndarray, f: int, shape: tuple) -> np.ndarray:
    if f == 1:
        return a
    return np.repeat(np.repeat(a, f, axis=-2), f, axis=-1)[..., :shape[0], :shape[1]]


def fill_between_pseudo(vol: LabelledVolume, limit: int, image_size: int = 0) -> dict[int, np.ndarray]:
    """{slice: interpolated labels} for unannotated slices strictly between annotated slices holding labels."""
    from ..active.fill_between import fill_between_slices

    ann = vol.annotated
    held = vol.drawn_indices
    if held.size < 2:
        return {}
    inside = np.zeros_like(ann)
    inside[held[0]:held[-1] + 1] = True
    inside &= ~ann
    zs = [z for z in nearest_unannotated(ann, max(limit, 0) + int(ann.sum()) + ann.size) if inside[z]][:limit]
    if not zs:
        return {}
    # interpolate only the block that can change: the annotated z-range and the in-plane box of the labels (+ margin)
    z0, z1 = int(held[0]), int(held[-1]) + 1
    fg = vol.labels[z0:z1].any(0)
    ys, xs = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    m = 4
    y0, y1 = max(0, ys[0] - m), min(fg.shape[0], ys[-1] + 1 + m)
    x0, x1 = max(0, xs[0] - m), min(fg.shape[1], xs[-1] + 1 + m)
    f = _stride(vol.labels.shape[1:], image_size) if image_size else 1
    block = fill_between_slices(np.ascontiguousarray(vol.labels[z0:z1, y0:y1:f, x0:x1:f]), ann[z0:z1])
    out = {}
    for z in zs:
        t = np.zeros(vol.labels.shape[1:], vol.labels.dtype)
        t[y0:y1, x0:x1] = _upsample(block[z - z0], f, (y1 - y0, x1 - x0))
        out[z] = t
    return out


@torch.no_grad()
def predict_slices(unet: torch.nn.Module, image: np.ndarray, zs: Sequence[int], image_size: int, in_channels: int,
                   batch_size: int = 32) -> np.ndarray:
    """Class probabilities (len(zs), K, y, x) of the given slices of a normalised volume."""
    modes = [(m, m.training) for m in unet.modules()]
    unet.eval()
    dev = next(unet.parameters()).device
    h, w = image.shape[1:]
    out = []
    for i in range(0, len(zs), batch_size):
        x = torch.from_numpy(np.stack([slice_stack(image, z, in_channels) for z in zs[i:i + batch_size]]).astype(np.float32))
        pr = unet(fit_to_size(x, image_size).to(dev)).float().softmax(1).cpu()
        out.append(unfit_from_size(pr, (h, w)).numpy())
    for m, mode in modes:
        m.training = mode
    return np.concatenate(out) if out else np.zeros((0, 1, h, w), np.float32)


def user_slice_fit(unet, vol: LabelledVolume, image_size: int, in_channels: int) -> float:
    """Foreground Dice of the model's answer on the volume's annotated slices against the user's labels there
    (1.0 when they hold no foreground): does the model reproduce what the user drew?"""
    ann_z = [int(z) for z in np.flatnonzero(vol.annotated)]
    user = vol.labels[ann_z]
    if not (user > 0).any():
        return 1.0
    fit = predict_slices(unet, vol.image, ann_z, image_size, in_channels).argmax(1)
    return 2 * float(((fit > 0) & (user > 0)).sum()) / max(1.0, float((fit > 0).sum() + (user > 0).sum()))


def model_pseudo(unet, vol: LabelledVolume, zs: list[int], image_size: int, in_channels: int,
                 cfg) -> Optional[dict[int, np.ndarray]]:
    """Confident model pseudo-labels ({slice: labels with IGNORE}) for slices `zs` of an annotated volume;
    None when the model does not yet reproduce the volume's annotated slices (gate)."""
    if not zs:
        return {}
    # gate: the model's guesses are trusted only once it reproduces the user's own slices
    if user_slice_fit(unet, vol, image_size, in_channels) < cfg.min_fit_dice:
        return None
    probs = predict_slices(unet, vol.image, zs, image_size, in_channels)
    lab = probs.argmax(1).astype(np.uint8)
    conf = probs.max(1) >= cfg.confidence
    if cfg.connected_to_annotation:
        ann_z = np.flatnonzero(vol.annotated)
        z0, z1 = min(min(zs), int(ann_z.min())), max(max(zs), int(ann_z.max())) + 1  # the window the pseudo-labels span
        f = _stride(vol.labels.shape[1:], image_size)  # components at about the training resolution
        full = np.zeros((z1 - z0, *vol.labels[0, ::f, ::f].shape), np.uint8)
        full[np.asarray(zs) - z0] = lab[:, ::f, ::f]
        win_ann = vol.annotated[z0:z1]
        seeds = np.where(win_ann[:, None, None], vol.labels[z0:z1, ::f, ::f], 0).astype(np.uint8)
        full = np.where(win_ann[:, None, None], seeds, full)
        kept_small = keep_touching(full, seeds)[np.asarray(zs) - z0] > 0
        kept = np.where(_upsample(kept_small, f, lab.shape[1:]), lab, 0)
        conf |= (lab > 0) & (kept == 0)  # a detached blob is confidently not the user's structure
        lab = kept
    # a slice between annotated slices that show the structure cannot be empty: no pseudo-label rather than background
    held = vol.drawn_indices
    out = {}
    for i, z in enumerate(zs):
        if held.size and held[0] < z < held[-1] and not lab[i].any():
            continue
        out[z] = np.where(conf[i], lab[i], IGNORE).astype(np.uint8)
    return out


def unlabelled_pseudo(unet, image: np.ndarray, image_size: int, in_channels: int, cfg,
                      rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    n = image.shape[0]
    m = min(n, cfg.max_unlabelled_slices)
    if m <= 0:
        return []
    zs = sorted(int(z) for z in np.unique(np.linspace(0, n - 1, m).round().astype(int)))
    probs = predict_slices(unet, image, zs, image_size, in_channels)
    lab = probs.argmax(1).astype(np.uint8)
    conf = probs.max(1) >= cfg.confidence
    return [(z, np.where(conf[i], lab[i], IGNORE).astype(np.uint8)) for i, z in enumerate(zs)]


def carried_window(vol: LabelledVolume, radius: int, vote: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(carried labels (z, y, x), bool per slice: carried there) of the volume's outermost drawn slices carried `radius`
    slices each way along the image's motion (active/propagate.py, the volume's spacing; `vote`: each slice's labels voted
    by image patches, active/patch_vote.py); the volume must hold a drawn slice."""
    from ..active.propagate import propagate_labels

    held = vol.drawn_indices
    carried, done, _ = propagate_labels(vol.image, vol.labels, vol.annotated, (int(held[0]) - radius, int(held[-1]) + radius + 1),
                                        spacing=vol.spacing, vote=vote)
    return carried, done


def carried_pseudo(vol: LabelledVolume, carry: int, vote: bool = False) -> list[tuple[int, np.ndarray]]:
    """(slice, labels) of :func:`carried_window`, for the recipe's carried pseudo-labels (none when `carry` <= 0 or
    nothing is drawn)."""
    if carry <= 0 or vol.drawn_indices.size == 0:
        return []
    carried, done = carried_window(vol, carry, vote)
    return [(int(z), carried[z]) for z in np.flatnonzero(done)]
