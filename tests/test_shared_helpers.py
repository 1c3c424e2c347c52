"""The one-place helpers the engines share: device dialect, learning-rate schedules, annotated-slice mask,
settings, the CLI's progress printers."""
import io
import math

import numpy as np
import pytest
import torch

from napari_ssl import settings
from napari_ssl.data.sparse_labels import annotated_slices, labelled_slices
from napari_ssl.errors import NapariSSLError
from napari_ssl.models.optim import adamw
from napari_ssl.progress_print import FinetunePrinter, PretrainPrinter, slice_progress
from napari_ssl.train.devices import job_devices, lightning_devices
from napari_ssl.train.schedules import warmup_cosine


def test_device_dialect():
    assert lightning_devices("auto") == ("auto", "auto") and lightning_devices(None) == ("auto", "auto")
    assert lightning_devices("cpu") == ("cpu", 1) and lightning_devices("CPU:2") == ("cpu", 2)
    assert lightning_devices("gpu:1") == ("gpu", 1) and lightning_devices("cuda") == ("gpu", "auto")
    assert lightning_devices("2") == ("auto", 2) and lightning_devices("0,1") == ("auto", [0, 1])
    with pytest.raises(NapariSSLError, match="--devices 'tpu'"):
        lightning_devices("tpu")
    assert job_devices({"devices": "cpu"}, "finetune") == {"devices": "cpu"}  # nothing to translate
    assert job_devices({"device": "mps"}, "predict") == {"device": "mps"}
    assert job_devices({"devices": "mps"}, "finetune") == {"devices": "1"}


def test_schedules_keep_each_callers_floor_and_ramp():
    pre = warmup_cosine(100, 10, floor=0.01)                  # pretraining: ramp over warmup steps, cosine to 1 %
    seg = warmup_cosine(100, 10, floor=0.05, ramp_offset=1)  # fine-tuning: ramp over warmup + 1, cosine to 5 %
    assert pre(0) == pytest.approx(0.1) and seg(0) == pytest.approx(1 / 11)
    assert pre(10) == pytest.approx(1.0) and seg(10) == pytest.approx(1.0)
    assert pre(100) == pytest.approx(0.01) and seg(100) == pytest.approx(0.05) and seg(500) == pytest.approx(0.05)
    assert pre(55) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(5, 0, floor=0.01)(0) == pytest.approx(1.0)  # no warm-up


def test_fused_adamw_takes_groups():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    opt = adamw([{"params": a.parameters(), "lr": 1e-4}, {"params": b.parameters()}], lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW) and [g["lr"] for g in opt.param_groups] == [1e-4, 1e-3]
    assert opt.param_groups[0]["weight_decay"] == 0.1


def test_annotated_slice_mask():
    lab = np.zeros((5, 3, 3), np.uint8)
    lab[1, 0, 0] = 2
    assert labelled_slices(lab).tolist() == [False, True, False, False, False]
    assert annotated_slices(lab, [3]).tolist() == [False, True, False, True, False]
    with pytest.raises(NapariSSLError, match="outside the volume"):
        annotated_slices(lab, [7])


def test_settings_home(monkeypatch, tmp_path):
    monkeypatch.setenv(settings.HOME_ENV, str(tmp_path / "h"))
    assert settings.runs_dir() == tmp_path / "h" / "runs" and settings.annotations_dir() == tmp_path / "h" / "annotations"
    monkeypatch.delenv(settings.HOME_ENV)
    assert settings.home().name == ".napari-ssl"
    monkeypatch.setenv(settings.JOB_NICE_ENV, "x")
    assert settings.env_int(settings.JOB_NICE_ENV, 10) == 10
    monkeypatch.setenv(settings.JOB_NICE_ENV, "3")
    assert settings.env_int(settings.JOB_NICE_ENV, 10) == 3


def test_progress_printers():
    out = io.StringIO()
    p = FinetunePrinter(out)
    p({"type": "status", "message": "Preparing the annotated slices"})  # before training: only the settings
    p({"type": "status", "message": "settings: 64 px"})
    for step in range(1, 41):
        p({"type": "progress", "step": step, "total_steps": 40})
    p({"type": "status", "message": "Saving the model"})
    lines = out.getvalue().splitlines()
    assert lines[0] == "settings: 64 px" and "Preparing" not in out.getvalue() and lines[-1] == "Saving the model"
    steps = [ln for ln in lines if ln.startswith("Training the model: step ")]
    # every 5 % (2 steps of 40) from the first, and the last
    assert [int(ln.split()[4]) for ln in steps] == [*range(1, 40, 2), 40] and steps[-1] == "Training the model: step 40 of 40"

    out = io.StringIO()
    p = PretrainPrinter(out, every_s=0.0)
    p({"type": "started", "total_steps": 4, "step": 0})
    p({"type": "loss", "values": {"loss": 0.5}})
    p({"type": "progress", "step": 4, "total_steps": 4, "epoch": 0, "images_per_s": 12.0})
    p({"type": "done", "out": "/x", "stopped": False, "step": 4, "rank": 0, "world_size": 1})
    assert out.getvalue().splitlines() == ["pretraining: 4 steps", "step 4/4 epoch 1 loss 0.5000 12.0 img/s", "pretraining done at step 4: /x"]

    out = io.StringIO()
    prog = slice_progress(out)
    prog(296, 296)  # predicted in one batch: nothing to say
    assert out.getvalue() == ""
    prog(0, 10)
    prog(10, 10)
    assert out.getvalue().splitlines()[-1] == "Predicting: slice 10 of 10"
