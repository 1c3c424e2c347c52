"""model.json: the one schema of a model folder's metadata, read and written only here.

Two kinds of folder carry it: a pretraining run (``kind`` "pretrained-encoder", weights in
``encoder.safetensors``) and a fine-tuned model (``kind`` "segmentation", ``model.safetensors``).
:class:`ModelMeta` names the fields every consumer relies on (pretraining, fine-tuning, prediction,
the viewer's runs list); each kind's other keys (training settings, metrics, the data-driven
settings, provenance...) travel in ``extra`` unchanged, so a file read and written back keeps them.

Schema versions (``format_version``):
  1  (and files without it) written before this module: the same keys, with older spellings that
     :meth:`ModelMeta.from_dict` still reads -- ``encoder`` for ``encoder_name``; ``saved_at``,
     ``created_at`` or ``finished_at`` (ISO text or epoch seconds) for ``created``; ``type`` for ``kind``
     and "finetune"/"fine-tune"/"model" for "segmentation"; ``data_summary`` or ``training_data`` for ``data``.
  2  written by :func:`write_model_meta`: ``kind``, ``encoder_name`` and ``created`` always present.
Nothing here names a patient: the writers put only volume indices, shapes and settings in it.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from ..errors import NapariSSLError

SCHEMA_VERSION = 2
META_FILE = "model.json"
PRETRAINED = "pretrained-encoder"
SEGMENTATION = "segmentation"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"

_SEGMENTATION_ALIASES = ("segmentation", "finetune", "fine-tune", "model")
_CREATED_ALIASES = ("created", "created_at", "saved_at", "finished_at")  # first present wins
_DATA_ALIASES = ("data", "data_summary", "training_data")


def now_text() -> str:
    """The local time as model.json writes it (ISO 8601 with the UTC offset)."""
    return time.strftime(TIME_FORMAT)


@dataclass
class ModelMeta:
    kind: str = PRETRAINED            # PRETRAINED or SEGMENTATION
    encoder_name: str = ""            # smp encoder name
    in_channels: Optional[int] = None  # 1, or 3 adjacent slices (2.5D)
    image_size: Optional[int] = None  # tile side in pixels the network was trained on
    normalization: Optional[dict] = None  # {modality: spec} (data/normalize.py)
    method: Optional[str] = None      # pretraining method (pretrained encoders)
    num_classes: Optional[int] = None  # background included (segmentation models)
    class_names: Optional[list] = None  # names of labels 1..N (segmentation models)
    data: Any = None                  # what the encoder was pretrained on (counts and shapes, no identifiers)
    weights_file: str = ""            # NAME.safetensors beside model.json
    created: str = ""                 # when the run started
    saved_at: str = ""                # when this file was written
    format_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)  # every other key, kept as it was

    @property
    def is_segmentation(self) -> bool:
        return self.kind == SEGMENTATION

    @classmethod
    def from_dict(cls, raw: dict, mtime: Optional[float] = None) -> "ModelMeta":
        """Any model.json this project ever wrote (see the module docstring); `mtime` dates a file without a date."""
        rest = dict(raw)
        known = {f.name for f in fields(cls)} - {"extra"}
        meta = cls(**{k: rest.pop(k) for k in list(rest) if k in known and rest[k] is not None})
        meta.format_version = int(raw.get("format_version") or 1)
        meta.kind = _kind(raw)
        if "kind" not in raw:
            rest.pop("type", None)  # the older spelling, now `kind`
        if not meta.encoder_name and isinstance(raw.get("encoder"), str) and raw["encoder"]:
            meta.encoder_name = rest.pop("encoder")
        meta.created = _created(raw, mtime)
        if raw.get("data") is None:
            alias = next((k for k in _DATA_ALIASES[1:] if raw.get(k) is not None), None)
            meta.data = rest.pop(alias) if alias else None
        meta.extra = rest
        return meta

    def to_dict(self) -> dict:
        """The JSON object: the named fields that are set, then the extra keys (which never override them)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None and v != ""}
        return {**self.extra, **out}

    def get(self, key: str, default: Any = None) -> Any:
        """A key of the JSON object, named field or extra (``meta.get("auto")``)."""
        return self.to_dict().get(key, default)


def _kind(raw: dict) -> str:
    k = str(raw.get("kind") or raw.get("type") or "").lower()
    if k:
        return SEGMENTATION if k in _SEGMENTATION_ALIASES else (raw.get("kind") or PRETRAINED)
    if raw.get("classes") or raw.get("weights_file") == "model.safetensors":
        return SEGMENTATION
    return PRETRAINED


def _created(raw: dict, mtime: Optional[float]) -> str:
    for key in _CREATED_ALIASES:
        v = raw.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return time.strftime(TIME_FORMAT, time.localtime(v))
        if isinstance(v, str) and v:
            return v
    return time.strftime(TIME_FORMAT, time.localtime(mtime)) if mtime is not None else ""


def meta_path(folder: str | os.PathLike) -> str:
    return os.path.join(os.fspath(folder), META_FILE)


def read_model_meta(folder: str | os.PathLike) -> ModelMeta:
    """The model.json of `folder`; a folder without one, or unreadable JSON, is a one-line error."""
    path = meta_path(folder)
    if not os.path.isfile(path):
        raise NapariSSLError(f"{os.fspath(folder)} is not a napari-ssl model folder (no model.json)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as exc:
        raise NapariSSLError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise NapariSSLError(f"{path} is not a model description (a JSON object)")
    return ModelMeta.from_dict(raw, mtime=os.path.getmtime(path))


def write_model_meta(folder: str | os.PathLike, meta: ModelMeta | dict) -> ModelMeta:
    """Write ``folder/model.json`` atomically in the current schema version; returns what was written."""
    from ..io.atomic import atomic_write_bytes

    meta = meta if isinstance(meta, ModelMeta) else ModelMeta.from_dict(meta)
    meta.format_version = SCHEMA_VERSION
    meta.saved_at = now_text()
    meta.created = meta.created or meta.saved_at
    atomic_write_bytes(meta_path(folder), json.dumps(meta.to_dict(), indent=2, sort_keys=True, default=str).encode())
    return meta
