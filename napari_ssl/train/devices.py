"""The ``--devices`` text of the CLI, API and widgets, turned into what Lightning and the job processes need.

One dialect for pretraining and fine-tuning: "auto", "cpu", "cpu:N", "gpu", "gpu:N", "cuda", "cuda:N"
(N devices, as "gpu:N"), "mps", a number of devices N, or a list of GPU indices "0,1".
"""
from __future__ import annotations

import os
from typing import Any

from ..errors import NapariSSLError


def lightning_devices(devices: Any) -> tuple[str, Any]:
    """(accelerator, devices) for a Lightning Trainer."""
    d = str(devices if devices is not None else "auto").strip().lower()
    if d in ("auto", ""):
        return "auto", "auto"
    if d.isdigit():
        return "auto", int(d)
    if "," in d and all(v.strip().isdigit() for v in d.split(",") if v.strip()):
        return "auto", [int(v) for v in d.split(",") if v.strip()]
    kind, _, n = d.partition(":")
    if kind in ("cpu", "gpu", "cuda", "mps") and (not n or n.isdigit()):
        return ("gpu" if kind == "cuda" else kind), (int(n) if n else ("auto" if kind != "cpu" else 1))
    raise NapariSSLError(f"--devices {devices!r}: use auto, cpu, cpu:N, gpu, gpu:N or a number of devices")


# what each engine is asked for once the widget's "cuda:<index>" is the only visible GPU (or "mps" is chosen)
_ONE_GPU = {"pretrain": "gpu:1", "finetune": "1", "predict": "cuda"}
_MPS = {"pretrain": "mps", "finetune": "1", "predict": "mps"}


def job_devices(config: Any, kind: str) -> Any:
    """Turn the widget's device choice into what the engine expects, in this (child) process.

    The widgets offer "cpu" and one "cuda:<index>" per GPU. Lightning's ``devices=N`` counts GPUs rather
    than naming one, so a chosen GPU is made the only visible one (CUDA_VISIBLE_DEVICES, set before
    torch initialises CUDA in this process) and the engine is asked for one GPU.
    """
    if not isinstance(config, dict):
        return config
    dev = str(config.get("devices") or config.get("device") or "")
    if dev.startswith("cuda:") and dev[5:].isdigit():
        os.environ["CUDA_VISIBLE_DEVICES"] = dev[5:]
        new = _ONE_GPU[kind]
    elif dev == "mps":
        new = _MPS[kind]
    else:
        return config
    key = "device" if kind == "predict" else "devices"
    return {**config, key: new}
