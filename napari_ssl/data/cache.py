"""Normalised volumes for training, decoded once.

Each input path (DICOM folder, NIfTI file, folder tree) is read with
:func:`napari_ssl.io.load_volumes`, normalised per modality and kept in memory as float16
(half the memory of float32, ample precision for values in [0, 1]). With a cache folder the
normalised arrays are also written as ``.npy`` and memory-mapped on later runs, keyed by the
path, the size and mtime of every file under it and the normalisation, so a changed input is
re-read. Cache file names are hashes: nothing identifying a patient appears in them.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import NapariSSLError
from ..io.atomic import atomic_write_bytes
from .normalize import default_spec, normalize

CACHE_VERSION = 1


@dataclass
class PreparedVolume:
    """A normalised volume ready for slicing: float16 (z, y, x) in [0, 1] plus what pairing needs."""

    array: np.ndarray
    affine: np.ndarray
    modality: str
    group: str  # same value for series of the same study (hashed), else unique per volume
    spacing: tuple[float, float, float]


def modality_key(modality: str | None) -> str:
    return (modality or "").upper() or "default"


def normalization_specs(overrides: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Spec per modality key; unknown modalities fall back to "default" (MR-style percentiles)."""
    specs = {"CT": default_spec("CT"), "MR": default_spec("MR"), "default": default_spec(None)}
    specs.update(overrides or {})
    return specs


def spec_for(specs: dict[str, dict[str, Any]], modality: str | None) -> dict[str, Any]:
    key = modality_key(modality)
    return specs.get(key) or default_spec(modality)


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _fingerprint(path: str) -> list:
    path = os.path.abspath(path)
    if os.path.isfile(path):
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns]
    entries = [path]
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            full = os.path.join(root, f)
            try:
                st = os.stat(full)
            except OSError:
                continue
            entries.append([os.path.relpath(full, path), st.st_size, st.st_mtime_ns])
    return entries


def _atomic_save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getbuffer())


def _prepare(vol, specs) -> PreparedVolume:
    arr = normalize(vol.array, spec_for(specs, vol.modality)).astype(np.float16)
    study = vol.study_instance_uid
    group = _hash("study", study) if study else _hash("volume", vol.path, vol.series_instance_uid, id(vol))
    return PreparedVolume(arr, np.asarray(vol.affine, float), vol.modality or "", group, tuple(vol.spacing))


def load_prepared(paths: Sequence[str], specs: dict[str, dict[str, Any]], cache_dir: str | None = None) -> list[PreparedVolume]:
    """Every volume under `paths`, normalised; memory-mapped from `cache_dir` when already there."""
    from ..io import load_volumes

    out: list[PreparedVolume] = []
    for p in paths:
        if not os.path.exists(p):
            raise NapariSSLError(f"no such file or folder: {p}")
        entry = None
        if cache_dir:
            key = _hash(CACHE_VERSION, _fingerprint(p), specs)
            entry = os.path.join(cache_dir, key)
            manifest = os.path.join(entry, "manifest.json")
            if os.path.isfile(manifest):
                try:
                    with open(manifest) as f:
                        items = json.load(f)
                    out.extend(
                        PreparedVolume(np.load(os.path.join(entry, it["file"]), mmap_mode="r"), np.asarray(it["affine"]), it["modality"],
                                       it["group"], tuple(it["spacing"]))
                        for it in items
                    )
                    continue
                except (OSError, ValueError, KeyError):
                    pass  # unreadable cache entry: rebuild it
        prepared = [_prepare(v, specs) for v in load_volumes(p)]
        out.extend(prepared)
        if entry:
            _write_entry(entry, prepared)
    return out


def _write_entry(entry: str, prepared: list[PreparedVolume]) -> None:
    try:
        os.makedirs(entry, exist_ok=True)
        items = []
        for i, pv in enumerate(prepared):
            fname = f"{i:05d}.npy"
            _atomic_save_npy(os.path.join(entry, fname), np.ascontiguousarray(pv.array))
            items.append({"file": fname, "affine": pv.affine.tolist(), "modality": pv.modality, "group": pv.group, "spacing": list(pv.spacing)})
        atomic_write_bytes(os.path.join(entry, "manifest.json"), json.dumps(items).encode())  # written last: its presence means complete
    except OSError as exc:
        raise NapariSSLError(f"cannot write the volume cache in {entry}: {exc.strerror or exc}; pass another --cache-dir") from None
