"""The pretraining engine (napari_ssl.train.pretrain) and `napari-ssl pretrain`, on real scans.

Tiny settings (32-pixel slices, a few steps, 2-3 volumes of msd_hippocampus plus the 3-slice CT of
dcmqi_segmentations) keep it short. Covered: every method through the real Lightning engine (files,
strict smp.Unet load, previews as events and PNGs), the CLI end to end (model.json fields, normalisation
per modality, no patient identifiers anywhere), decode-once caching, cancel by stop event and by SIGINT
with --resume, one-line errors that leave no folder behind (out of memory included, under a real
address-space limit), --init 3 -> 1 channel, --in-channels 3, resnet34, and DDP over 2 CPU processes
(gloo, torchrun) with identical weights on both ranks.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ssl import cli
from napari_ssl.pretext import METHODS, get_method
from napari_ssl.train.pretrain import PretrainConfig, run_pretraining, state_digest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def mr(hippo_dir):
    """Three real MR volumes (NIfTI)."""
    return [str(p) for p in sorted((hippo_dir / "images").glob("hippocampus_*.nii.gz"))[:3]]


@pytest.fixture(scope="module")
def ct(dcmqi_dir):
    """A real 3-slice CT DICOM series (512 x 512) whose headers carry a patient name and ID."""
    return str(dcmqi_dir / "ct-3slice")


def tiny(method, data, out, **kw):
    size = max(32, get_method(method).min_image_size(kw.get("in_channels", 1), get_method(method).options))
    base = dict(method=method, data=list(data), out=str(out), image_size=size, batch_size=4, steps=3, devices="cpu",
                preview_every_s=0, checkpoint_every_s=0, lr=1e-3)
    base.update(kw)
    return PretrainConfig(**base)


def load_encoder(out, encoder="resnet18", in_channels=1):
    """encoder.safetensors loaded strictly into smp.Unet(encoder, encoder_weights=None, in_channels).encoder."""
    import segmentation_models_pytorch as smp
    from safetensors.torch import load_file

    unet = smp.Unet(encoder, encoder_weights=None, in_channels=in_channels, classes=1)
    unet.encoder.load_state_dict(load_file(os.path.join(out, "encoder.safetensors")), strict=True)
    return unet.encoder


def read_losses(out):
    lines = Path(out, "losses.csv").read_text().strip().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    return header, rows


def is_png(path):
    return Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# every method through the real engine
PREVIEWS = {"inpainting": {"inpainting_input", "inpainting_output"}, "offset-heatmap": {"heatmap_target", "heatmap_predicted"}}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_pretrains_saves_a_strict_unet_encoder_and_previews(method, mr, tmp_path):
    events = []
    out = tmp_path / "run"
    run_pretraining(tiny(method, mr[:2], out), events=events.append)
    meta = json.loads((out / "model.json").read_text())
    assert meta["method"] == method and meta["status"] == "complete" and meta["steps"] == 3
    load_encoder(out)
    header, rows = read_losses(out)
    assert header[:3] == ["step", "epoch", "loss"] and [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert (out / "last.ckpt").is_file()
    # previews: events with arrays and the step, and the same pictures as PNGs under DIR/previews
    prev = [e for e in events if e["type"] == "preview"]
    assert prev and prev[-1]["step"] == 3
    images = prev[-1]["images"]
    want = {"feature_pca"} | PREVIEWS.get(method, set())
    assert want <= set(images)
    pca = images["feature_pca"]
    assert pca.dtype == np.float32 and pca.ndim == 3 and pca.shape[2] == 3 and 0 <= pca.min() and pca.max() <= 1 and pca.std() > 0
    for name, img in images.items():
        assert img.dtype == np.float32 and img.ndim in (2, 3) and np.isfinite(img).all()
        assert is_png(out / "previews" / f"{name}.png")
    if method == "offset-heatmap":  # the target is a Gaussian peak; the prediction a heatmap of the same grid
        t, p = images["heatmap_target"], images["heatmap_predicted"]
        assert t.shape == p.shape and abs(float(t.max()) - 1) < 1e-5
    if method == "inpainting":  # masked input differs from the reconstruction only where the holes are
        assert images["inpainting_input"].shape == images["inpainting_output"].shape
    done = [e for e in events if e["type"] == "done"]
    assert len(done) == 1 and done[0]["step"] == 3 and not done[0]["stopped"]
    assert done[0]["encoder_sha256"] == state_digest(load_encoder(out))


# ---------------------------------------------------------------------------------------------
# the command line, end to end
def run_cli(args, timeout=300, **kw):
    return subprocess.run([PY, "-m", "napari_ssl.cli", "pretrain", *args], capture_output=True, text=True, env=ENV, timeout=timeout, cwd=REPO, **kw)


def test_cli_end_to_end_model_json_and_no_patient_identifiers(mr, ct, tmp_path):
    import pydicom

    out = tmp_path / "enc"
    p = run_cli(["--method", "inpainting", "--data", ct, *mr[:2], "--out", str(out), "--steps", "4", "--batch-size", "4",
                 "--image-size", "32", "--devices", "cpu", "--preview-every", "0"])
    assert p.returncode == 0, p.stderr
    assert "pretraining done at step 4" in p.stderr
    names = sorted(os.listdir(out))
    for f in ("encoder.safetensors", "model.json", "last.ckpt", "losses.csv", "previews"):
        assert f in names, names
    assert {"inpainting_input.png", "inpainting_output.png", "feature_pca.png"} <= set(os.listdir(out / "previews"))
    meta = json.loads((out / "model.json").read_text())
    assert meta["method"] == "inpainting" and meta["encoder_name"] == "resnet18" and meta["in_channels"] == 1
    assert meta["image_size"] == 32 and meta["steps"] == 4 and meta["status"] == "complete"
    # normalisation per modality: a fixed HU window for CT, per-volume percentiles for MR/unknown
    norm = meta["normalization"]
    assert norm["CT"] == {"mode": "window", "window": [-1000.0, 1000.0]}
    assert [v["mode"] for k, v in norm.items() if k != "CT"] == ["percentile"]
    data = meta["data"]
    assert data["num_volumes"] == 3 and data["modalities"].get("CT") == 1 and data["num_studies"] == 3
    enc = load_encoder(out)
    assert enc.conv1.weight.shape[1] == 1
    # nothing that identifies a patient or a source file: not in any file of DIR, not in the output
    ds = pydicom.dcmread(os.path.join(ct, sorted(os.listdir(ct))[0]), stop_before_pixels=True)
    secrets = [str(ds.PatientName), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
               ct, "ct-3slice", *mr[:2], *(Path(m).name.split(".")[0] for m in mr[:2])]
    assert str(ds.PatientName) == "JANCT000"
    pid = re.compile(rb"(?<![\d.])" + re.escape(str(ds.PatientID).encode()) + rb"(?![\d])")
    files = [Path(r, f) for r, _, fs in os.walk(out) for f in fs]
    for f in files:
        blob = f.read_bytes()
        for s in secrets:
            assert s.encode() not in blob, (f, s)
        if f.suffix in (".json", ".csv", ".yaml", ".txt"):
            assert not pid.search(blob), f
    for s in secrets:
        assert s not in p.stderr and s not in p.stdout


def test_methods_command_lists_every_method():
    p = subprocess.run([PY, "-m", "napari_ssl.cli", "methods"], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)
    assert p.returncode == 0
    listed = [line.split()[0] for line in p.stdout.strip().splitlines()]
    assert listed == list(METHODS) and len(listed) == 10


# ---------------------------------------------------------------------------------------------
# decoded volumes are cached
def test_volumes_are_decoded_once_not_every_epoch(mr, tmp_path, monkeypatch):
    import napari_ssl.io as io

    reads = []
    real = io.read_itk_volume
    monkeypatch.setattr(io, "read_itk_volume", lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    cache = tmp_path / "cache"
    cfg = tiny("rotation", mr[:2], tmp_path / "a", steps=None, epochs=2, batch_size=32, cache_dir=str(cache))
    run_pretraining(cfg)
    _, rows = read_losses(tmp_path / "a")
    epochs = sorted({int(r["epoch"]) for r in rows})
    assert epochs == [0, 1] and len(rows) >= 4  # two passes over the slices ...
    assert sorted(reads) == sorted(mr[:2])  # ... each file decoded once
    assert len(list(cache.rglob("*.npy"))) == 2 and not any(s in p.name for p in cache.rglob("*") for s in ("hippocampus",))
    reads.clear()
    run_pretraining(tiny("rotation", mr[:2], tmp_path / "b", cache_dir=str(cache)))
    assert reads == []  # a later run reads the normalised volumes from the cache, decodes nothing


# ---------------------------------------------------------------------------------------------
# cancel and resume
def test_stop_event_saves_last_weights_and_resume_continues(mr, tmp_path):
    out = tmp_path / "run"
    stop = threading.Event()
    events = []

    def sink(ev):
        events.append(ev)
        if ev["type"] == "progress" and ev["step"] >= 2:
            stop.set()

    run_pretraining(tiny("simclr", mr[:2], out, steps=500, batch_size=4), events=sink, stop_event=stop)
    meta = json.loads((out / "model.json").read_text())
    k = meta["steps"]
    assert meta["status"] == "stopped" and 2 <= k < 500
    assert events[-1]["type"] == "done" and events[-1]["stopped"] and events[-1]["step"] == k
    saved = state_digest(load_encoder(out))
    assert saved == events[-1]["encoder_sha256"]
    events.clear()
    run_pretraining(tiny("simclr", mr[:2], out, steps=k + 2, batch_size=4, resume=True), events=events.append)
    started = next(e for e in events if e["type"] == "started")
    assert started["step"] == k  # continues from the saved step
    meta = json.loads((out / "model.json").read_text())
    assert meta["status"] == "complete" and meta["steps"] == k + 2
    _, rows = read_losses(out)
    assert [int(r["step"]) for r in rows] == list(range(1, k + 3))
    assert state_digest(load_encoder(out)) != saved  # it trained on


def test_sigint_to_the_cli_saves_and_resume_continues(mr, tmp_path):
    out = tmp_path / "run"
    args = ["--method", "rotation", "--data", *mr[:2], "--out", str(out), "--batch-size", "4", "--image-size", "32",
            "--devices", "cpu", "--preview-every", "0"]
    proc = subprocess.Popen([PY, "-m", "napari_ssl.cli", "pretrain", *args, "--steps", "100000"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=ENV, cwd=REPO)
    lines = []
    try:
        for line in proc.stderr:  # progress lines come every 2 s once training runs
            lines.append(line)
            if line.startswith("step "):
                break
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + rest
    assert proc.returncode == 0, err
    assert "stopped early, last weights saved" in err
    meta = json.loads((out / "model.json").read_text())
    k = meta["steps"]
    assert meta["status"] == "stopped" and k >= 1
    load_encoder(out)
    p = run_cli([*args, "--resume", "--steps", str(k + 2)])
    assert p.returncode == 0, p.stderr
    assert f"resuming at step {k}" in p.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["status"] == "complete" and meta["steps"] == k + 2


# ---------------------------------------------------------------------------------------------
# bad input: one line saying what to change, no folder left behind
def _cli_error(capsys, argv):
    rc = cli.main(["pretrain", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("napari-ssl pretrain: error: "), err
    return err


def test_bad_input_gives_one_line_errors_and_no_folder(mr, tmp_path, capsys):
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "readme.txt").write_text("not an image")
    out = tmp_path / "out"
    cases = [
        (["--method", "rotation", "--data", str(empty)], "image found under"),
        (["--method", "jigsaw", "--data", mr[0]], "unknown method 'jigsaw'; choose one of inpainting"),
        (["--method", "rotation", "--encoder", "resnet9", "--data", mr[0]], "unknown encoder 'resnet9'"),
        (["--method", "rotation", "--data", mr[0], "--image-size", "256"], "volumes too small for --image-size 256"),
        (["--method", "offset-heatmap", "--data", mr[0], "--opt", "distance=80"], "lower --image-size or the method's distance"),
        (["--method", "rotation", "--data", str(tmp_path / "missing.nii.gz")], "no such file or folder"),
        (["--method", "rotation", "--data", mr[0], "--opt", "hiden=3"], "has no option 'hiden'"),
        (["--method", "relative-position", "--data", mr[0], "--image-size", "24"], "use at least"),
        (["--method", "rotation", "--data", mr[0], "--pairs", "micle"], "joint-embedding methods only"),
    ]
    for argv, expect in cases:
        extra = ["--out", str(out), "--steps", "1", "--batch-size", "2", "--devices", "cpu"]
        err = _cli_error(capsys, [*argv, *extra, *([] if "--image-size" in argv else ["--image-size", "32"])])
        assert expect in err, (argv, err)
        assert not out.exists(), argv


def test_init_from_other_encoder_is_a_one_line_error(mr, tmp_path, capsys):
    src = tmp_path / "src"
    run_pretraining(tiny("rotation", mr[:1], src, steps=1))
    out = tmp_path / "out"
    err = _cli_error(capsys, ["--method", "rotation", "--data", mr[0], "--out", str(out), "--init", str(src), "--encoder", "resnet34",
                              "--steps", "1", "--image-size", "32", "--devices", "cpu"])
    assert "--encoder resnet18" in err and not out.exists()
    err = _cli_error(capsys, ["--method", "rotation", "--data", mr[0], "--out", str(src), "--steps", "1", "--devices", "cpu"])
    assert "not empty" in err and (src / "encoder.safetensors").is_file()


OOM_RUNNER = """
import resource, sys
import torch, pytorch_lightning, segmentation_models_pytorch, lightly  # imported before the limit
from napari_ssl import cli
from napari_ssl.train import pretrain
vm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")][0] * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 1_500_000_000, resource.RLIM_INFINITY))
sys.exit(cli.main(sys.argv[1:]))
"""


def test_out_of_memory_is_a_one_line_error_and_leaves_no_folder(mr, tmp_path):
    """A real allocation failure: the process gets 1.5 GB of address space more than it needs to start."""
    out = tmp_path / "out"
    script = tmp_path / "oom.py"
    script.write_text(OOM_RUNNER)
    p = subprocess.run([PY, str(script), "pretrain", "--method", "inpainting", "--data", mr[0], "--out", str(out), "--steps", "2",
                        "--batch-size", "2048", "--image-size", "64", "--devices", "cpu", "--preview-every", "0"],
                       capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr[-2000:]
    assert err[-1] == "napari-ssl pretrain: error: out of memory at --batch-size 2048 --image-size 64; lower --batch-size or --image-size"
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# channels, encoders, hierarchical pretraining
def test_25d_in_channels_3_then_init_into_1_channel_sums_the_first_conv(mr, tmp_path):
    from safetensors.torch import load_file

    three = tmp_path / "three"
    run_pretraining(tiny("offset-heatmap", mr[:2], three, in_channels=3, steps=2))
    enc3 = load_encoder(three, in_channels=3)
    assert enc3.conv1.weight.shape[1] == 3 and json.loads((three / "model.json").read_text())["in_channels"] == 3
    # hierarchical pretraining: a 1-channel run starts from the 2.5D encoder; lr 0 keeps the loaded weights visible
    one = tmp_path / "one"
    p = run_cli(["--method", "rotation", "--data", mr[0], "--out", str(one), "--init", str(three), "--steps", "1", "--lr", "0",
                 "--batch-size", "4", "--image-size", "32", "--devices", "cpu", "--preview-every", "0"])
    assert p.returncode == 0, p.stderr
    src, got = load_file(three / "encoder.safetensors"), load_file(one / "encoder.safetensors")
    assert got["conv1.weight"].shape[1] == 1
    assert torch.allclose(got["conv1.weight"], src["conv1.weight"].sum(dim=1, keepdim=True))
    weights = [k for k in src if k.endswith("weight") and k != "conv1.weight"]
    assert weights and all(torch.equal(got[k], src[k]) for k in weights)
    meta = json.loads((one / "model.json").read_text())
    assert meta["in_channels"] == 1 and meta["init"]["method"] == "offset-heatmap" and meta["init"]["in_channels"] == 3


def test_resnet34_encoder(mr, tmp_path):
    out = tmp_path / "r34"
    run_pretraining(tiny("rotation", mr[:1], out, encoder="resnet34", steps=1))
    enc = load_encoder(out, "resnet34")
    assert len(enc.layer1) == 3 and json.loads((out / "model.json").read_text())["encoder_name"] == "resnet34"


def test_resnet50_encoder_with_a_joint_embedding_head(mr, tmp_path):
    """resnet50's 2048-d features under a projection head (bottleneck blocks, another feature width)."""
    out = tmp_path / "r50"
    run_pretraining(tiny("simclr", mr[:1], out, encoder="resnet50", steps=2))
    enc = load_encoder(out, "resnet50")
    assert enc.layer1[0].conv3.out_channels == 256 and json.loads((out / "model.json").read_text())["encoder_name"] == "resnet50"


# ---------------------------------------------------------------------------------------------
# DDP: 2 CPU processes (gloo) under torchrun
def test_ddp_two_cpu_processes_under_torchrun_agree_on_the_saved_weights(mr, tmp_path):
    out = tmp_path / "ddp"
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2", "-m", "napari_ssl.cli",
           "pretrain", "--method", "byol", "--data", *mr[:2], "--out", str(out), "--steps", "3", "--batch-size", "4",
           "--image-size", "32", "--devices", "2", "--strategy", "ddp", "--preview-every", "0"]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "PL_DISABLE_FORK": "1"}, cwd=REPO, timeout=420)
    assert p.returncode == 0, p.stderr[-3000:]
    found = re.findall(r"rank (\d)/2: step 3, weights sha256 ([0-9a-f]{64}), encoder sha256 ([0-9a-f]{64})", p.stderr)
    ranks = {r: (w, e) for r, w, e in found}
    assert set(ranks) == {"0", "1"}, p.stderr[-3000:]
    assert ranks["0"] == ranks["1"]  # every parameter and buffer (heads, momentum copies, BN statistics) equal
    assert ranks["0"][1] == state_digest(load_encoder(out))  # and equal to what was saved
    meta = json.loads((out / "model.json").read_text())
    assert meta["world_size"] == 2 and meta["steps"] == 3 and meta["status"] == "complete"
    _, rows = read_losses(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
