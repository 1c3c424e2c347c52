"""Weights on disk: ``NAME.safetensors`` + ``model.json`` in one folder.

Loading never unpickles: safetensors holds tensors only, and the sidecar is JSON.
Writes go to a temporary folder that is renamed into place, so a crash never
leaves a half-written model folder.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import torch

from ..errors import NapariSSLError
from ..io.atomic import atomic_write_bytes
from .metadata import ModelMeta, read_model_meta, write_model_meta


def save_weights(folder: str, state_dict: dict[str, torch.Tensor], meta: ModelMeta | dict[str, Any], name: str = "encoder") -> None:
    """Write ``folder/NAME.safetensors`` and ``folder/model.json`` (each file atomically)."""
    from safetensors.torch import save

    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = meta if isinstance(meta, ModelMeta) else ModelMeta.from_dict(meta)
    meta.weights_file = meta.weights_file or f"{name}.safetensors"
    atomic_write_bytes(os.path.join(folder, f"{name}.safetensors"), save(tensors))
    write_model_meta(folder, meta)


def read_meta(folder: str) -> dict[str, Any]:
    """model.json as a plain dict, older spellings resolved (napari_ssl.models.metadata)."""
    return read_model_meta(folder).to_dict()


def load_weights(folder_or_file: str, name: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) from a model folder, or from a bare .safetensors file (meta = {})."""
    from safetensors.torch import load_file

    if os.path.isfile(folder_or_file):
        if not folder_or_file.endswith(".safetensors"):
            raise NapariSSLError(f"{folder_or_file}: weights must be a .safetensors file or a napari-ssl model folder "
                                 "(pickled checkpoints are not loaded)")
        return load_file(folder_or_file), {}
    meta = read_meta(folder_or_file)
    fname = f"{name}.safetensors" if name else meta.get("weights_file", "encoder.safetensors")
    path = os.path.join(folder_or_file, fname)
    if not os.path.isfile(path):
        raise NapariSSLError(f"{folder_or_file} has no {fname}")
    return load_file(path), meta


def atomic_output_dir(final: str):
    """Context manager: a temporary sibling folder that becomes `final` only on success."""
    return _AtomicDir(final)


class _AtomicDir:
    def __init__(self, final: str):
        self.final = os.path.abspath(final)

    def __enter__(self) -> str:
        parent = os.path.dirname(self.final)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(self.final)}.partial-")
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            if os.path.isdir(self.final):
                old = self.final + f".old-{os.getpid()}"
                os.replace(self.final, old)
                os.replace(self.tmp, self.final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, self.final)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False
