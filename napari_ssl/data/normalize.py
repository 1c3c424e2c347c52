"""Intensity normalisation to [0, 1], chosen per modality and recorded in model.json.

CT is in Hounsfield units, comparable across scanners, so a fixed window is used.
MR intensities are arbitrary per scan, so each volume is scaled by its own percentiles.
The spec is a plain dict so it can travel in model.json and be reused by every later step.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

CT_WINDOW = (-1000.0, 1000.0)
MR_PERCENTILES = (0.5, 99.5)


def default_spec(modality: str | None) -> dict[str, Any]:
    if (modality or "").upper() == "CT":
        return {"mode": "window", "window": list(CT_WINDOW)}
    return {"mode": "percentile", "percentiles": list(MR_PERCENTILES)}


def normalize(array: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """float32 array in [0, 1] according to `spec` (see :func:`default_spec`)."""
    a = np.asarray(array, dtype=np.float32)
    mode = spec.get("mode")
    if mode == "window":
        lo, hi = (float(v) for v in spec["window"])
    elif mode == "percentile":
        p_lo, p_hi = spec.get("percentiles", MR_PERCENTILES)
        lo, hi = (float(v) for v in np.percentile(a, [p_lo, p_hi]))
    elif mode == "none":
        return a
    else:
        raise ValueError(f"unknown normalisation mode {mode!r}")
    if hi <= lo:
        return np.zeros_like(a)
    out = (a - lo) / (hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def resolve_normalization(norm_meta: Optional[dict], modality: str) -> dict:
    """The spec to use for a volume of `modality`: a single spec, a per-modality dict, or the default."""
    if not norm_meta:
        return default_spec(modality)
    if "mode" in norm_meta:
        return dict(norm_meta)
    key = (modality or "").upper()
    for k in (key, key.lower(), "default", "" if not key else None):
        if k is not None and k in norm_meta and isinstance(norm_meta[k], dict):
            return dict(norm_meta[k])
    if len(norm_meta) == 1:
        only = next(iter(norm_meta.values()))
        if isinstance(only, dict) and "mode" in only:
            return dict(only)
    return default_spec(modality)
