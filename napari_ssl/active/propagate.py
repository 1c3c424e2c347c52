"""Carry the user's outermost annotated slices outward, slice by slice, along the image's own motion (optical
flow between neighbouring slices, TV-L1), and use the carried labels as a spatial prior for the model beyond
the annotated range (Sli2Vol-style propagation, Yeung et al. 2021, without a learned flow).

Why: with one annotated slice the model knows what the structure looks like but not where it goes: on
validation volumes (benchmarks/RESULTS.md, "Session 19") its answers ten slices away lay beside the structure
(Dice ~0 with about the right area), while the carried labels still overlapped it (Dice ~0.6). The product of
the two foregrounds keeps the model's decision of where the structure ends and the flow's of where it is; the
carried masks, split across the structure's axis where the drawn slice shows its parts side by side
(:mod:`napari_ssl.active.axis_split`), decide how the foreground splits among classes ("Session 20").
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# chosen on 8 validation volumes of the hippocampus pool at k=1 (benchmarks/RESULTS.md, "Session 19")
PRIOR_SIGMA = 1.0  # in-plane blur of the carried masks (flow pixels)
PRIOR_FLOOR = 1e-3  # prior of a class where the carried mask does not put it
FLOW_SIDE = 96  # the flow is computed at most this many pixels across (a 512 px CT slice is subsampled)


def label_box(labels: np.ndarray, annotated: np.ndarray, shape: tuple) -> tuple[int, int, int, int]:
    """In-plane box of the annotated labels with a margin of half its size (at least 8 px): the structure drifts."""
    fg = (np.asarray(labels)[np.flatnonzero(annotated)] > 0).any(0)  # the annotated slices only (no full-size temporary)
    ys, xs = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    my = max(8, (ys[-1] - ys[0] + 1) // 2)
    mx = max(8, (xs[-1] - xs[0] + 1) // 2)
    return max(0, ys[0] - my), min(shape[0], ys[-1] + 1 + my), max(0, xs[0] - mx), min(shape[1], xs[-1] + 1 + mx)


def _small(sl: np.ndarray, f: int) -> np.ndarray:
    """Block mean by f (the flow's resolution)."""
    if f == 1:
        return sl.astype(np.float32)
    h, w = (sl.shape[0] // f) * f, (sl.shape[1] // f) * f
    return sl[:h, :w].reshape(h // f, f, w // f, f).mean((1, 3)).astype(np.float32)


def _full_resolution(pos: np.ndarray, grid: np.ndarray, f: int, shape: tuple) -> np.ndarray:
    """Where each full-resolution pixel lies in the seed slice: the flow's displacement upsampled (x f) and added."""
    if f == 1:
        return pos
    up = np.repeat(np.repeat((pos - grid) * f, f, 1), f, 2)
    up = np.pad(up, ((0, 0), (0, shape[0] - up.shape[1]), (0, shape[1] - up.shape[2])), mode="edge")
    return np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32) + up


def propagate_labels(image: np.ndarray, labels: np.ndarray, annotated: np.ndarray, z_limits: Optional[tuple[int, int]] = None,
                     image_is_box: bool = False, spacing: Optional[Sequence[float]] = None,
                     split_classes: bool = True, vote: bool = False) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """(carried labels (z, y, x) uint8, bool per slice: carried there, the in-plane box used).

    From the first and the last annotated slice holding labels, outward to `z_limits` ([z0, z1), default the
    volume): each slice's position map into the seed slice is the previous one composed with the flow between
    the two slices, and the seed's labels are read through it (nearest), so labels are resampled once, not once per
    slice. With `vote`, each slice's labels are instead voted from the previous slice's by image patches around the
    flow's match (:mod:`napari_ssl.active.patch_vote`), so the mask follows the image. Slices between annotated ones are
    left to the model and fill between. `image`: normalised (z, y, x), or only the in-plane box of :func:`label_box` with
    `image_is_box` (a full-size CT need not be normalised whole). With `split_classes`, a seed slice showing several
    classes side by side along the structure's axis has each side's carried classes split by planes across that axis
    (:mod:`napari_ssl.active.axis_split`; `spacing` in mm)."""
    from .axis_split import split_along_axis

    lab = np.asarray(labels)
    ann = np.asarray(annotated, bool)
    out = np.zeros(lab.shape, np.uint8)
    done = np.zeros(lab.shape[0], bool)
    ann_z = np.flatnonzero(ann)
    held = ann_z[(lab[ann_z].reshape(ann_z.size, -1) > 0).any(1)] if ann_z.size else ann_z
    if held.size == 0:
        return out, done, (0, lab.shape[1], 0, lab.shape[2])
    box = label_box(lab, ann, lab.shape[1:])
    y0, y1, x0, x1 = box

    def img(z):
        return image[z] if image_is_box else image[z, y0:y1, x0:x1]

    lo_z, hi_z = (0, lab.shape[0]) if z_limits is None else (max(0, int(z_limits[0])), min(lab.shape[0], int(z_limits[1])))
    for seed_z, step, end in ((int(held[0]), -1, lo_z - 1), (int(held[-1]), 1, hi_z)):
        side = _carry_side(img, lab[seed_z, y0:y1, x0:x1], ann, range(seed_z + step, end, step), seed_z, vote)
        for z, carried in side:
            out[z, y0:y1, x0:x1] = carried
            done[z] = True
        if split_classes:
            split_along_axis(out, [z for z, _ in side], seed_z, lab[seed_z], spacing or (1.0, 1.0, 1.0))
    return out, done, box


def _carry_side(img, seed: np.ndarray, ann: np.ndarray, zs, seed_z: int, vote: bool) -> list[tuple[int, np.ndarray]]:
    """(slice, carried labels of the box) outward over `zs` from the seed slice, up to the next annotated slice."""
    from scipy.ndimage import map_coordinates
    from skimage.registration import optical_flow_tvl1

    from .patch_vote import patch_vote

    f = max(1, int(np.ceil(max(seed.shape) / FLOW_SIDE)))
    prev_full, prev_lab = img(seed_z), seed
    prev = _small(prev_full, f)
    h, w = prev.shape
    pos = np.mgrid[0:h, 0:w].astype(np.float32)  # where each pixel of the current slice lies in the seed slice
    grid = pos.copy()
    side = []
    for z in zs:
        if ann[z]:
            break
        cur_full = img(z)
        cur = _small(cur_full, f)
        v, u = optical_flow_tvl1(cur, prev)  # cur(x) ~ prev(x + (v, u))
        if vote:
            coords = _full_resolution(grid + np.stack([v, u]), grid, f, seed.shape)
            carried = patch_vote(prev_full, prev_lab, cur_full, coords, step=f)
        else:
            pos = np.stack([map_coordinates(pos[i], [grid[0] + v, grid[1] + u], order=1, mode="nearest") for i in range(2)])
            coords = _full_resolution(pos, grid, f, seed.shape)
            carried = map_coordinates(seed, [coords[0], coords[1]], order=0, mode="constant", cval=0)
        side.append((z, carried))
        prev, prev_full, prev_lab = cur, cur_full, carried
    return side


def fuse_with_prior(probabilities: np.ndarray, carried: np.ndarray, done: np.ndarray, box: tuple[int, int, int, int],
                    sigma: float = PRIOR_SIGMA, floor: float = PRIOR_FLOOR) -> np.ndarray:
    """Probabilities (K, z, y, x) of each carried slice fused with the blurred carried masks; other slices unchanged;
    changed in place. Foreground is the model's times the carried one (product, renormalised); the split of the
    foreground among classes is the carried masks' where they hold one (the model's elsewhere): trained on a slice or
    two, the model tells the structure from its surroundings far better than its parts from each other (benchmarks/
    RESULTS.md, "Session 20"). Outside `box` the carried mask is background. With one class: the plain product."""
    from scipy.ndimage import gaussian_filter

    k = probabilities.shape[0]
    y0, y1, x0, x1 = box
    outside = np.ones(probabilities.shape[2:], bool)
    outside[y0:y1, x0:x1] = False
    any_outside = bool(outside.any())
    bg_only = np.full((k, 1), floor, np.float32)
    bg_only[0] = 1.0 + floor
    for z in np.flatnonzero(done):
        c_box = carried[z, y0:y1, x0:x1]
        q = np.stack([gaussian_filter((c_box == c).astype(np.float32), sigma) if sigma > 0 else (c_box == c).astype(np.float32)
                      for c in range(k)])
        pz = probabilities[:, z]
        pb = pz[:, y0:y1, x0:x1]
        fg_model = np.clip(1.0 - pb[0], 0.0, 1.0)
        share = q[1:] + floor * pb[1:] / np.clip(fg_model, 1e-12, None)  # the carried split; the model's where none
        share /= np.clip(share.sum(0, keepdims=True), 1e-12, None)
        fg = fg_model * (q[1:].sum(0) + floor)
        bg = pb[0] * (q[0] + floor)
        total = np.clip(fg + bg, 1e-12, None)
        pb[0] = bg / total
        pb[1:] = share * (fg / total)
        if any_outside:
            pz[:, outside] *= bg_only
            pz /= np.clip(pz.sum(0, keepdims=True), 1e-12, None)
    return probabilities


def apply_propagation(pred, image: np.ndarray, labels: np.ndarray, annotated: np.ndarray,
                      z_limits: Optional[tuple[int, int]] = None, image_is_box: bool = False,
                      spacing: Optional[Sequence[float]] = None, split_classes: bool = True) -> np.ndarray:
    """Fuse `pred` (a Prediction on the labels' grid, changed in place) with the user's outermost slices carried
    outward; its labels, uncertainty and slice uncertainty follow the fused probabilities. `image`: the normalised
    volume (or its :func:`label_box` with `image_is_box`). Returns the bool per slice: fused there."""
    carried, done, box = propagate_labels(image, labels, annotated, z_limits, image_is_box, spacing, split_classes)
    if not done.any():
        return done
    from .entropy import normalised_entropy

    fuse_with_prior(pred.probabilities, carried, done, box)
    for z in np.flatnonzero(done):
        p = pred.probabilities[:, z]
        pred.labels[z] = p.argmax(0)
        pred.uncertainty[z] = normalised_entropy(p)
    pred.slice_uncertainty = pred.uncertainty.reshape(pred.uncertainty.shape[0], -1).mean(1).astype(np.float32)
    return done


def propagate_on_volume(pred, volume, spec: dict, labels: np.ndarray, annotated: np.ndarray, z_limits: tuple[int, int]) -> np.ndarray:
    """:func:`apply_propagation` for a prediction of a whole :class:`~napari_ssl.io.Volume`: only the labels' box of the
    predicted slices is normalised (with the model's intensity `spec`), not the whole series."""
    from ..data.normalize import normalize

    lab, ann = np.asarray(labels), np.asarray(annotated, bool)
    if not (lab[np.flatnonzero(ann)] > 0).any():
        return np.zeros(lab.shape[0], bool)
    y0, y1, x0, x1 = label_box(lab, ann, volume.shape[1:])
    z0, z1 = int(z_limits[0]), int(z_limits[1])
    box = np.zeros((volume.shape[0], y1 - y0, x1 - x0), np.float32)  # pages never written cost no memory
    box[z0:z1] = normalize(np.asarray(volume.array[z0:z1, y0:y1, x0:x1]), spec)
    return apply_propagation(pred, box, lab, ann, z_limits=(z0, z1), image_is_box=True, spacing=volume.spacing)
