"""Which slice to annotate next: uncertain, unannotated, and not next to one already chosen.

Greedy selection: take the unannotated slices in order of decreasing uncertainty and keep
one only if it lies at least ``min_distance`` slices from every slice already chosen and
every slice already annotated (neighbouring slices look alike, so five neighbours teach
little more than one). If that leaves fewer than ``n``, the spacing is relaxed step by
step, so the answer always holds min(n, number of unannotated slices) slices.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import NapariSSLError


def default_min_distance(num_slices: int, n: int) -> int:
    """Spread n picks over the volume: about half the spacing of n evenly placed slices, at least 2."""
    return max(2, int(num_slices) // (2 * max(1, int(n))))


def suggest_slices(slice_uncertainty: np.ndarray, annotated: Optional[np.ndarray] = None, n: int = 5,
                   min_distance: Optional[int] = None) -> list[dict]:
    """Ranked suggestions: [{"rank", "slice", "uncertainty", "min_distance"}...], best first."""
    u = np.asarray(slice_uncertainty, dtype=float)
    z = u.shape[0]
    if n < 1:
        raise NapariSSLError("-n must be at least 1")
    ann = np.zeros(z, bool) if annotated is None else np.asarray(annotated, bool)
    if ann.shape != (z,):
        raise NapariSSLError(f"annotated-slice mask has {ann.shape[0]} slices but the volume has {z}")
    candidates = [int(i) for i in np.argsort(-u, kind="stable") if not ann[i]]
    if not candidates:
        return []
    dist = default_min_distance(z, n) if min_distance is None else max(0, int(min_distance))
    fixed = list(np.flatnonzero(ann))
    chosen: list[tuple[int, int]] = []  # (slice, spacing it was accepted at)
    d = dist
    while len(chosen) < min(n, len(candidates)):
        taken = {c for c, _ in chosen}
        for c in candidates:
            if len(chosen) >= n:
                break
            if c in taken:
                continue
            others = fixed + [s for s, _ in chosen]
            if all(abs(c - o) >= d for o in others):
                chosen.append((c, d))
                taken.add(c)
        if d == 0:
            break
        d -= 1
    return [{"rank": r + 1, "slice": c, "uncertainty": float(u[c]), "min_distance": sd} for r, (c, sd) in enumerate(chosen)]
