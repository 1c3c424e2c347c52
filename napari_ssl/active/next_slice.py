"""Which slice of *this* study to annotate next, given the current completion (no ground truth).

The completion of a sparsely annotated study (the prediction path with the user's labels: each class
between its outermost drawn slices from fill-between interpolation, the model beyond them) is good between
close, similar contours and bad across long stretches and beyond the outermost drawn slices. Two rankings:

* ``gap`` — the middle of the largest unannotated stretch of the *predicted extent* (the slices where the
  completion shows the structure, plus the drawn ones). The stretch ends are the drawn slices holding the
  structure and the first empty slice beyond each end of the extent. Picked one after another, this places
  slices evenly over the structure: what an experienced annotator does by eye, without ground truth.
* ``expected-error`` — the expected number of wrong voxels of the completion under the model's own
  probabilities (sum over the slice of 1 - P(model agrees with the completion's label)), summed over a window
  of neighbouring slices (annotating one slice also fixes its neighbours through the interpolation).
  Needs the model's probabilities as predicted, before the user's slices and the interpolation were put in.

The default (``expected-error``, window 1, times the length of the undrawn stretch the slice lies in) was chosen on
validation volumes with benchmarks/bench_next_slice.py; on the test volumes it beats random picking by +0.08 Dice but
is only level with evenly spaced slices placed by eye from the true extent (+0.002; RESULTS.md "Next slice").
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import NapariSSLError

STRATEGIES = ("gap", "expected-error")
# benchmarks/bench_next_slice.py (RESULTS.md "Next slice"): the default is set from its run on record
DEFAULT_STRATEGY = "expected-error"
# what the widget's Next slice says about its ranking (the benchmark's reading, RESULTS.md "Next slice")
NEXT_SLICE_NOTE = ("Go to the slice where the completed outline (the model, your slices and the interpolation between them) "
                   "is most likely wrong. Tested on 60 hippocampus MR scans (2 to 5 drawn slices): better than picking slices at "
                   "random (+0.08 Dice), but only level with spacing your slices evenly over the structure (+0.00): "
                   "spacing them evenly by eye works as well.")


def _check(completion: np.ndarray, annotated: np.ndarray, labels: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    comp = np.asarray(completion)
    if comp.ndim != 3:
        raise NapariSSLError(f"next slice needs a (z, y, x) completion, got shape {list(comp.shape)}")
    ann = np.asarray(annotated, bool)
    if ann.shape != (comp.shape[0],):
        raise NapariSSLError(f"annotated-slice mask has {ann.size} entries for {comp.shape[0]} slices")
    lab = comp if labels is None else np.asarray(labels)
    if lab.shape != comp.shape:
        raise NapariSSLError(f"the labels have shape {list(lab.shape)} but the completion has {list(comp.shape)}")
    return comp, ann, lab


def predicted_extent(completion: np.ndarray, annotated: np.ndarray, labels: Optional[np.ndarray] = None) -> Optional[tuple[int, int]]:
    """(first, last) slice where the completion or the user's annotated slices show the structure; None if nowhere."""
    comp, ann, lab = _check(completion, annotated, labels)
    fg = comp.reshape(comp.shape[0], -1).any(1) | (ann & lab.reshape(lab.shape[0], -1).any(1))
    zs = np.flatnonzero(fg)
    return (int(zs[0]), int(zs[-1])) if zs.size else None


def stretches(completion: np.ndarray, annotated: np.ndarray, labels: Optional[np.ndarray] = None, end_weight: float = 1.0) -> list[dict]:
    """The unannotated stretches of the predicted extent, largest (weighted) first:
    [{"from", "to", "length", "weight", "end", "slice"}], ``from``/``to`` the bounding slices (drawn slices holding
    the structure, or the first empty slice beyond the extent: ``end`` True), ``slice`` the middle one.
    ``end_weight`` scales the length of the stretches beyond the outermost drawn slices."""
    comp, ann, lab = _check(completion, annotated, labels)
    z = comp.shape[0]
    ext = predicted_extent(comp, ann, lab)
    lo, hi = (-1, z) if ext is None else (ext[0] - 1, ext[1] + 1)
    drawn = [int(i) for i in np.flatnonzero(ann) if lo < i < hi]
    bounds = sorted({lo, hi, *drawn})
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        inner = [i for i in range(max(a + 1, 0), min(b, z)) if not ann[i]]
        if not inner:
            continue
        end = (a == lo and not (0 <= a < z and ann[a])) or (b == hi and not (0 <= b < z and ann[b]))
        mid = min(inner, key=lambda i: (abs(i - (a + b) / 2.0), i))
        out.append({"from": int(a), "to": int(b), "length": int(b - a), "weight": float((b - a) * (end_weight if end else 1.0)),
                    "end": bool(end), "slice": int(mid)})
    out.sort(key=lambda s: (-s["weight"], s["slice"]))
    return out


def expected_error(probabilities: np.ndarray, completion: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """Per slice: the expected number of voxels where the completion is wrong, under the model's probabilities
    ((K, z, y, x), as predicted); 0 on annotated slices."""
    p = np.asarray(probabilities)
    comp = np.asarray(completion)
    if p.ndim != 4 or p.shape[1:] != comp.shape:
        raise NapariSSLError(f"probabilities of shape {list(p.shape)} do not fit a completion of shape {list(comp.shape)}")
    idx = np.clip(comp.astype(np.int64), 0, p.shape[0] - 1)
    agree = np.take_along_axis(p, idx[None], axis=0)[0]
    e = (1.0 - agree).reshape(comp.shape[0], -1).sum(1)
    e[np.asarray(annotated, bool)] = 0.0
    return e.astype(np.float64)


def stretch_length(completion: np.ndarray, annotated: np.ndarray, labels: Optional[np.ndarray] = None) -> np.ndarray:
    """Per slice: the length of the unannotated stretch of the predicted extent it lies in (see :func:`stretches`);
    1 on annotated slices and outside the extent."""
    out = np.ones(np.asarray(annotated).shape[0])
    for s in stretches(completion, annotated, labels):
        out[max(0, s["from"] + 1):s["to"]] = s["length"]
    out[np.asarray(annotated, bool)] = 1.0
    return out


def bracket_gain(e: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """For each slice z: the error a drawing at z would remove, if the interpolation then fixes each slice between z
    and the nearest drawn slice (or the volume's end) on either side in proportion to its closeness to z."""
    ann = np.asarray(annotated, bool)
    n = e.shape[0]
    out = np.zeros(n)
    drawn = np.flatnonzero(ann)
    for z in np.flatnonzero(~ann):
        left = drawn[drawn < z]
        right = drawn[drawn > z]
        a = int(left[-1]) if left.size else -1
        b = int(right[0]) if right.size else n
        zl = np.arange(a + 1, z)
        zr = np.arange(z + 1, b)
        out[z] = e[z] + (e[zl] * (zl - a) / (z - a)).sum() + (e[zr] * (b - zr) / (b - z)).sum()
    return out


def rank_next_slices(completion: np.ndarray, annotated: np.ndarray, labels: Optional[np.ndarray] = None, *, n: int = 5,
                     strategy: Optional[str] = None, probabilities: Optional[np.ndarray] = None, window: int = 1,
                     end_weight: float = 1.0, gap_power: float = 1.0, slice_error: Optional[np.ndarray] = None) -> list[dict]:
    """The next slices to annotate in one study, best first: [{"rank", "slice", "score", "reason"}].

    ``completion``: the current whole-study result (z, y, x labels, the user's slices in it); ``annotated``: bool per
    slice; ``labels``: the user's label map (default: the completion). Picks are made one after another, each as if
    the previous ones were already drawn. ``score``: for ``gap`` the length in slices of the stretch the pick
    halves, for ``expected-error`` the expected wrong voxels in its window. Never an annotated slice."""
    strategy = strategy or DEFAULT_STRATEGY
    if strategy not in STRATEGIES:
        raise NapariSSLError(f"unknown next-slice strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if int(n) < 1:
        raise NapariSSLError("-n must be at least 1")
    comp, ann, lab = _check(completion, annotated, labels)
    ann = ann.copy()
    lab = np.where(ann[:, None, None], lab, comp)  # a pick counts as drawn with the completion's outline
    e = _slice_errors(comp, ann, probabilities, slice_error) if strategy == "expected-error" else None
    out: list[dict] = []
    while len(out) < int(n) and not ann.all():
        if strategy == "gap":
            z, score, reason = _gap_pick(comp, ann, lab, end_weight)
        else:
            z, score, reason = _error_pick(e, comp, ann, lab, window, gap_power)
        out.append({"rank": len(out) + 1, "slice": z, "score": score, "reason": reason, "strategy": strategy})
        ann[z] = True
    return out


def _slice_errors(comp: np.ndarray, ann: np.ndarray, probabilities: Optional[np.ndarray],
                  slice_error: Optional[np.ndarray]) -> np.ndarray:
    """Expected wrong voxels per slice (0 on annotated slices): given, or from the model's probabilities."""
    if slice_error is not None:
        e = np.asarray(slice_error, np.float64).copy()
        if e.shape != (comp.shape[0],):
            raise NapariSSLError(f"slice_error has {e.size} entries for {comp.shape[0]} slices")
        e[ann] = 0.0
        return e
    if probabilities is None:
        raise NapariSSLError("the expected-error ranking needs the model's probabilities")
    return expected_error(probabilities, comp, ann)


def _gap_pick(comp: np.ndarray, ann: np.ndarray, lab: np.ndarray, end_weight: float) -> tuple[int, float, str]:
    """The middle of the largest unannotated stretch of the predicted extent (or the nearest slice beyond it)."""
    st = stretches(comp, ann, lab, end_weight=end_weight)
    if not st:  # the extent is fully drawn: the nearest unannotated slices beyond it
        free = np.flatnonzero(~ann)
        ext = predicted_extent(comp, ann, lab) or (0, comp.shape[0] - 1)
        z = int(min(free, key=lambda i: (min(abs(i - ext[0]), abs(i - ext[1])), i)))
        s = {"slice": z, "length": 1, "end": True, "from": z, "to": z}
    else:
        s = st[0]
        z = s["slice"]
    where = ("the edge of the predicted structure" if s["end"] else f"drawn slices {s['from']} and {s['to']}")
    reason = f"middle of the largest unannotated stretch: {s['length'] - 1} slice(s) between {where}"
    return z, float(s["length"] - 1), reason


def _error_pick(e: np.ndarray, comp: np.ndarray, ann: np.ndarray, lab: np.ndarray, window: int,
                gap_power: float) -> tuple[int, float, str]:
    """The slice whose window holds the most expected error (times its stretch length); zeroes what it fixes in `e`."""
    if int(window) < 0:  # the share of each slice's error the pick would fix through the interpolation
        err = bracket_gain(e, ann)
    else:
        err = np.convolve(e, np.ones(2 * int(window) + 1), mode="same")
    length = stretch_length(comp, ann, lab)
    sm = err * length ** float(gap_power) if gap_power else err.copy()
    sm[ann] = -1.0
    z = int(np.argmax(sm))
    near = (f"within {int(window)} slice(s) of it " if int(window) > 0
            else ("here " if int(window) == 0 else "up to the nearest drawn slices "))
    reason = f"about {int(round(err[z]))} voxels of the completed outline {near}may be wrong"
    if gap_power and length[z] > 1:
        reason += f" ({int(length[z]) - 1} undrawn slices between its nearest drawn slices or the structure's end)"
    if int(window) >= 0:
        e[max(0, z - int(window)):z + int(window) + 1] = 0.0  # the pick fixes its window
    else:
        e[z] = 0.0
    return z, float(sm[z]), reason


def suggest_in_study(pred, annotated: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None, n: int = 5,
                     score: Optional[str] = None, min_distance: Optional[int] = None) -> list[dict]:
    """Suggestions for one study from its prediction (a :class:`~napari_ssl.active.predict.Prediction`, completed with the
    user's labels when there are any): [{"rank", "slice", "score", "reason", ...}], best first.

    ``score``: a ranking of :data:`STRATEGIES` (default :data:`DEFAULT_STRATEGY`) or an uncertainty score of
    ``active.predict.SLICE_SCORES`` (the earlier ranking: spaced uncertainty, ``active.suggest``)."""
    from .predict import SLICE_SCORES, slice_scores
    from .suggest import suggest_slices

    z = pred.labels.shape[0]
    ann = np.zeros(z, bool) if annotated is None else np.asarray(annotated, bool)
    score = score or DEFAULT_STRATEGY
    if score in SLICE_SCORES:
        return suggest_slices(slice_scores(pred, score), ann, n=n, min_distance=min_distance)
    if score not in STRATEGIES:
        raise NapariSSLError(f"unknown slice score {score!r}; choose one of {', '.join(STRATEGIES + tuple(SLICE_SCORES))}")
    err = pred.slice_error
    if score == "expected-error" and err is None:  # no drawing folded in: the model's own expected error
        err = expected_error(pred.probabilities, pred.labels, ann)
    return rank_next_slices(pred.labels, ann, labels, n=n, strategy=score, slice_error=err)
