"""Which slices to annotate next: uncertain, unannotated, and spread out.

Greedy selection over candidate slices in order of decreasing uncertainty (the per-slice
mean of the normalised predictive entropy, see :mod:`napari_ssl.active.predict`):

* a slice is kept only if it lies at least ``min_distance`` slices from every slice already
  chosen and every slice already annotated *in the same volume* (neighbouring slices look
  alike, so five neighbours teach little more than one);
* over several volumes (:func:`rank_pool`: the active-learning pool is the union of their
  slices) a volume gives at most ``ceil(n / number of volumes)`` picks at first, so a batch
  of suggestions spreads over scans before it goes deeper into one; and picks of one batch
  in *different* volumes keep ``depth_spacing`` apart in relative depth (slice / depth), so
  a batch covers different anatomical levels instead of, say, the first slice of every
  scan (scans of one structure are roughly aligned along their slice axis). Without that
  rule the active-learning benchmark picked the same uncertain, structure-free end slices
  across scans at the start of the loop (benchmarks/bench_active_learning.py).

If the constraints leave fewer than ``n`` picks they are relaxed step by step (first the
per-volume cap and the depth spacing, then the slice spacing down to 0), so the answer always holds
min(n, number of unannotated slices) slices. Each pick reports the spacing it was accepted at.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..errors import NapariSSLError


def default_min_distance(num_slices: int, n: int) -> int:
    """Spread n picks over the volume: about half the spacing of n evenly placed slices, at least 2."""
    return max(2, int(num_slices) // (2 * max(1, int(n))))


def _check_entry(i: int, u, ann, multi: bool) -> tuple[np.ndarray, np.ndarray]:
    u = np.asarray(u, dtype=float)
    if u.ndim != 1:
        raise NapariSSLError("slice uncertainty must be one value per slice")
    z = u.shape[0]
    a = np.zeros(z, bool) if ann is None else np.asarray(ann, bool)
    if a.shape != (z,):
        where = f" of volume {i}" if multi else ""
        raise NapariSSLError(f"annotated-slice mask{where} has {a.shape[0] if a.ndim else 0} slices but the volume has {z}")
    return u, a


def default_depth_spacing(n: int) -> float:
    """Relative-depth spacing between picks of one batch in different volumes: half of an even spread."""
    return 0.5 / max(1, int(n))


def rank_pool(slice_uncertainties: Sequence[np.ndarray], annotated: Optional[Sequence[Optional[np.ndarray]]] = None, n: int = 5,
              min_distance: Optional[int] = None, max_per_volume: Optional[int] = None, depth_spacing: Optional[float] = None) -> list[dict]:
    """Rank the unannotated slices of several volumes together.

    Returns [{"rank", "volume", "slice", "uncertainty", "min_distance"}...], best first;
    ``volume`` indexes `slice_uncertainties`. ``min_distance`` defaults per volume to
    :func:`default_min_distance` (depth, n); ``max_per_volume`` to ceil(n / volumes);
    ``depth_spacing`` (between picks in different volumes, in slice / depth) to
    :func:`default_depth_spacing` (n); 0 turns that rule off."""
    if int(n) < 1:
        raise NapariSSLError("-n must be at least 1")
    n = int(n)
    us = list(slice_uncertainties)
    if not us:
        raise NapariSSLError("no volume to rank slices in")
    anns = list(annotated) if annotated is not None else [None] * len(us)
    if len(anns) != len(us):
        raise NapariSSLError(f"{len(us)} volume(s) but {len(anns)} annotated-slice mask(s)")
    entries = [_check_entry(i, u, a, len(us) > 1) for i, (u, a) in enumerate(zip(us, anns))]
    cands = [(float(u[z]), v, int(z)) for v, (u, a) in enumerate(entries) for z in np.flatnonzero(~a)]
    if not cands:
        return []
    # stable order: uncertainty desc, then volume, then slice
    cands.sort(key=lambda t: (-t[0], t[1], t[2]))
    want = min(n, len(cands))
    base = [default_min_distance(len(u), n) if min_distance is None else max(0, int(min_distance)) for u, _ in entries]
    cap0 = max(1, math.ceil(n / len(entries))) if max_per_volume is None else max(1, int(max_per_volume))
    dsp = default_depth_spacing(n) if depth_spacing is None else max(0.0, float(depth_spacing))
    depth = [max(1, len(u)) for u, _ in entries]
    # (per-volume cap, cross-volume depth spacing, how much the slice spacing is relaxed)
    levels = [(cap0, dsp, 0)] + [(None, 0.0, k) for k in range(0, max(base) + 1)]
    fixed = [list(np.flatnonzero(a)) for _, a in entries]
    chosen: list[tuple[int, int, int]] = []  # (volume, slice, spacing)
    taken: set[tuple[int, int]] = set()
    per_vol = [0] * len(entries)
    for cap, dsp_l, relax in levels:
        for _, v, z in cands:
            if len(chosen) >= want:
                break
            if (v, z) in taken or (cap is not None and per_vol[v] >= cap):
                continue
            d = max(0, base[v] - relax)
            others = fixed[v] + [c for cv, c, _ in chosen if cv == v]
            if dsp_l > 0 and any(cv != v and abs(z / depth[v] - c / depth[cv]) < dsp_l for cv, c, _ in chosen):
                continue
            if all(abs(z - o) >= d for o in others):
                chosen.append((v, z, d))
                taken.add((v, z))
                per_vol[v] += 1
        if len(chosen) >= want:
            break
    return [{"rank": r + 1, "volume": v, "slice": z, "uncertainty": float(entries[v][0][z]), "min_distance": d}
            for r, (v, z, d) in enumerate(chosen)]


def suggest_slices(slice_uncertainty: np.ndarray, annotated: Optional[np.ndarray] = None, n: int = 5,
                   min_distance: Optional[int] = None) -> list[dict]:
    """Ranked suggestions in one volume: [{"rank", "slice", "uncertainty", "min_distance"}...], best first."""
    picks = rank_pool([slice_uncertainty], None if annotated is None else [annotated], n=n, min_distance=min_distance)
    return [{k: v for k, v in p.items() if k != "volume"} for p in picks]
