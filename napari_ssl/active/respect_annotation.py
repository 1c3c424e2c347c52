"""The output respects the user: annotated slices come back exactly as drawn (annotated-empty slices
empty), whatever the model predicted there; optionally, predicted foreground that does not touch the
user's labels in 3-D is dropped (the structure the user drew is one connected thing).

Applied in the prediction path (:func:`napari_ssl.active.predict.predict_volume` with ``annotation``), so
``predict`` in the API, the CLI and the widgets all get it when the labels are known.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import NapariSSLError


def fill_inside(out: np.ndarray, labels: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """Between the outermost annotated slices that hold a class, that class comes from fill between slices
    (ITK morphological contour interpolation of the user's slices); beyond them, from the model."""
    from .fill_between import fill_between_slices

    classes = np.arange(1, int(labels.max(initial=0)) + 1)
    held = annotated[:, None] & (labels.reshape(labels.shape[0], -1)[:, None, :] == classes[None, :, None]).any(2)
    ranges = {c + 1: (int(np.flatnonzero(held[:, c])[0]), int(np.flatnonzero(held[:, c])[-1])) for c in range(held.shape[1]) if held[:, c].sum() >= 2}
    if not ranges:
        return out
    # interpolate only the block that can change: the annotated z-range and the labels' in-plane box (+ margin)
    za, zb = min(r[0] for r in ranges.values()), max(r[1] for r in ranges.values()) + 1
    fg = (np.where(annotated[za:zb, None, None], labels[za:zb], 0) > 0).any(0)
    ys, xs = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    y0, y1 = max(0, ys[0] - 4), min(fg.shape[0], ys[-1] + 5)
    x0, x1 = max(0, xs[0] - 4), min(fg.shape[1], xs[-1] + 5)
    filled = np.zeros(labels.shape, np.uint16)
    filled[za:zb, y0:y1, x0:x1] = fill_between_slices(np.where(annotated[za:zb, None, None], labels[za:zb, y0:y1, x0:x1], 0).astype(np.uint16),
                                                       annotated[za:zb])
    out = out.copy()
    for c, (z0, z1) in ranges.items():
        sl = slice(z0 + 1, z1)
        block, fb = out[sl], filled[sl]
        block[(block == c) & (fb != c)] = 0
        block[fb == c] = c
    return out


def _slice_disagreement(probabilities: np.ndarray, labels: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Per slice: sum of 1 - P(label) over its voxels (slices in chunks, so no full-size temporary)."""
    z = labels.shape[0]
    out = np.zeros(z, np.float64)
    k = probabilities.shape[0]
    for a in range(0, z, chunk):
        lab = np.clip(labels[a:a + chunk], 0, k - 1).astype(np.int64)
        agree = np.take_along_axis(probabilities[:, a:a + chunk], lab[None], axis=0)[0]
        out[a:a + chunk] = (1.0 - agree.astype(np.float64)).reshape(agree.shape[0], -1).sum(1)
    return out


def _checked(pred, labels: np.ndarray, annotated: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, annotated mask, number of classes), checked against the prediction."""
    lab = np.asarray(labels)
    ann = np.asarray(annotated, bool)
    if lab.shape != pred.labels.shape:
        raise NapariSSLError(f"the labels have shape {list(lab.shape)} but the prediction has {list(pred.labels.shape)}")
    if ann.shape != (lab.shape[0],):
        raise NapariSSLError(f"annotated-slice mask has {ann.size} entries for {lab.shape[0]} slices")
    k = pred.probabilities.shape[0]
    if ann.any() and int(lab[ann].max(initial=0)) >= k:
        raise NapariSSLError(f"label value {int(lab[ann].max())} has no class in the model (it predicts classes 1..{k - 1})")
    return lab, ann, k


def respect_annotation(pred, labels: np.ndarray, annotated: np.ndarray, keep_connected: bool = False, fill_between: bool = False):
    """`pred` (a Prediction, changed in place and returned) with the user's slices put back.

    ``labels``: the user's (z, y, x) label map; ``annotated``: bool per slice (annotated slices, the
    annotated-empty ones included). On those slices the labels are the user's, the probabilities one-hot
    and the uncertainty 0. With ``keep_connected`` and some annotated foreground, predicted foreground in
    3-D components (26-connected) holding no annotated foreground voxel becomes background. With ``fill_between``,
    each class between its outermost annotated slices is the interpolation of the user's slices (:func:`fill_inside`)."""
    lab, ann, k = _checked(pred, labels, annotated)
    out = pred.labels
    # per slice, the expected wrong voxels of the result under the model's probabilities as predicted (active.next_slice):
    # the model's own answer first, then corrected where the result changes it (no full-size copy: a CT's is 300 MB)
    err = _slice_disagreement(pred.probabilities, out)
    dropped, raw_dropped = None, None
    if keep_connected:
        from ..data.components import keep_touching

        seeds = np.where(ann[:, None, None], lab, 0)
        kept = keep_touching(np.where(ann[:, None, None], seeds, out), seeds)
        dropped = (out > 0) & (kept == 0)
        if dropped.any():
            raw_dropped = pred.probabilities[:, dropped]  # a copy: the model's own answer there
            was = np.take_along_axis(raw_dropped, out[dropped].astype(np.int64)[None], axis=0)[0]
            err += np.bincount(np.nonzero(dropped)[0], weights=was - raw_dropped[0], minlength=err.size)
            out = np.where(dropped, 0, out).astype(out.dtype)
            pred.probabilities[:, dropped] = 0.0
            pred.probabilities[0][dropped] = 1.0
    if fill_between and ann.any():
        fused = fill_inside(out, lab, ann)
        changed = fused != out
        if changed.any():
            pc = pred.probabilities[:, changed]
            if raw_dropped is not None:
                pc[:, dropped[changed]] = raw_dropped[:, changed[dropped]]  # same C order: the model's answer, not the dropping
            was = np.take_along_axis(pc, out[changed].astype(np.int64)[None], axis=0)[0]
            now = np.take_along_axis(pc, fused[changed].astype(np.int64)[None], axis=0)[0]
            err += np.bincount(np.nonzero(changed)[0], weights=was - now, minlength=err.size)
            onehot = (np.arange(k)[:, None] == fused[changed][None, :]).astype(pred.probabilities.dtype)
            pred.probabilities[:, changed] = onehot
            out = fused
    zs = np.flatnonzero(ann)
    if zs.size:
        user = lab[zs].astype(out.dtype)
        out = out.copy() if out is pred.labels else out
        out[zs] = user
        onehot = (np.arange(k)[:, None, None, None] == user[None]).astype(pred.probabilities.dtype)
        pred.probabilities[:, zs] = onehot
        pred.uncertainty[zs] = 0.0
    pred.labels = out
    z = pred.uncertainty.shape[0]
    err[zs] = 0.0
    pred.slice_error = err
    pred.slice_uncertainty = pred.uncertainty.reshape(z, -1).mean(1).astype(np.float32)
    return pred


def annotation_from(labels: Optional[np.ndarray], empty_slices=()) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(labels, annotated mask) for :func:`respect_annotation`, or None without labels."""
    if labels is None:
        return None
    from ..data.sparse_labels import annotated_slices

    lab = np.asarray(labels)
    return lab, annotated_slices(lab, list(empty_slices or []))
