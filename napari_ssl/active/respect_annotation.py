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


def respect_annotation(pred, labels: np.ndarray, annotated: np.ndarray, keep_connected: bool = False):
    """`pred` (a Prediction, changed in place and returned) with the user's slices put back.

    ``labels``: the user's (z, y, x) label map; ``annotated``: bool per slice (annotated slices, the
    annotated-empty ones included). On those slices the labels are the user's, the probabilities one-hot
    and the uncertainty 0. With ``keep_connected`` and some annotated foreground, predicted foreground in
    3-D components (26-connected) holding no annotated foreground voxel becomes background."""
    lab = np.asarray(labels)
    ann = np.asarray(annotated, bool)
    if lab.shape != pred.labels.shape:
        raise NapariSSLError(f"the labels have shape {list(lab.shape)} but the prediction has {list(pred.labels.shape)}")
    if ann.shape != (lab.shape[0],):
        raise NapariSSLError(f"annotated-slice mask has {ann.size} entries for {lab.shape[0]} slices")
    k = pred.probabilities.shape[0]
    if ann.any() and int(lab[ann].max(initial=0)) >= k:
        raise NapariSSLError(f"label value {int(lab[ann].max())} has no class in the model (it predicts classes 1..{k - 1})")
    out = pred.labels
    if keep_connected:
        from ..train.semi_supervised import keep_touching

        seeds = np.where(ann[:, None, None], lab, 0)
        kept = keep_touching(np.where(ann[:, None, None], seeds, out), seeds)
        dropped = (out > 0) & (kept == 0)
        if dropped.any():
            out = np.where(dropped, 0, out).astype(out.dtype)
            pred.probabilities[:, dropped] = 0.0
            pred.probabilities[0][dropped] = 1.0
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
    pred.slice_uncertainty = pred.uncertainty.reshape(z, -1).mean(1).astype(np.float32)
    return pred


def annotation_from(labels: Optional[np.ndarray], empty_slices=()) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(labels, annotated mask) for :func:`respect_annotation`, or None without labels."""
    if labels is None:
        return None
    from ..data.sparse_labels import annotated_slices

    lab = np.asarray(labels)
    return lab, annotated_slices(lab, list(empty_slices or []))
