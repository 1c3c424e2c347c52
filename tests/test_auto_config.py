"""Data-driven training defaults (napari_ssl.data.auto_config) on real scans: a full-size CT with its RTSTRUCT
liver, a hippocampus MR crop, and a 2-slice CT series; then the whole path (finetune -> model.json -> predict)."""
import os
import sys

import numpy as np
import pytest

from napari_ssl.data.auto_config import COMPACT_ENCODER, DEFAULT_STEPS, MAX_STEPS, choose_settings, default_steps, slow_setting_warning, z_range_for
from napari_ssl.data.components import keep_touched as keep_connected
from napari_ssl.data.sparse_labels import annotated_slices
from napari_ssl.train.finetune import load_image, load_labels

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import ct_reference as ref  # noqa: E402


@pytest.fixture(scope="module")
def ct_liver(data_dir):
    ct_dir = data_dir / "tcia_cervical_ct"
    vol = load_image(str(ct_dir / "CT_images"))
    liver = ref.rasterise_roi(str(ct_dir / "RTstruct.dcm"), vol, "liver")
    slices = ref.quantile_slices(liver, 3)
    return vol, liver, slices, ref.sparse_from(liver, slices)


@pytest.fixture(scope="module")
def mr_crop(hippo_dir):
    img = load_image(str(hippo_dir / "images" / "hippocampus_001.nii.gz"))
    lab = load_labels(str(hippo_dir / "labels" / "hippocampus_001.nii.gz"), img)
    slices = ref.quantile_slices(lab > 0, 3)
    sparse = np.zeros_like(lab)
    sparse[slices] = lab[slices]
    return img, lab, slices, sparse


def test_ct_liver_gets_a_crop_a_soft_tissue_window_and_a_compact_encoder(ct_liver):
    vol, liver, slices, sparse = ct_liver
    s = choose_settings(vol.array, vol.spacing, vol.modality, sparse, annotated_slices(sparse), devices="cpu")
    y0, y1, x0, x1 = s.roi
    assert y1 - y0 == x1 - x0 < 512  # a square crop, not the whole 512 x 512 slice
    ys, xs = np.flatnonzero(sparse.any((0, 2))), np.flatnonzero(sparse.any((0, 1)))
    assert y0 <= ys[0] and ys[-1] < y1 and x0 <= xs[0] and xs[-1] < x1  # the drawing is inside it
    assert s.image_size == 128 and 1.5 < s.spacing_mm < 3.0  # near native resolution, affordable on a CPU
    lo, hi = s.normalization["window"]
    assert s.normalization["mode"] == "window" and lo < 60 < hi and 400 <= hi - lo < 1000  # soft tissue, not -1000..1000
    assert s.encoder == COMPACT_ENCODER
    assert s.steps == DEFAULT_STEPS  # a 128 px tile costs 4x a 64 px one per step: the budget keeps it at ~1 min
    zs = np.flatnonzero(liver.any((1, 2)))
    z0, z1 = s.z_range
    assert z0 <= zs[0] + 2 and zs[-1] - 2 < z1 and z1 - z0 < vol.shape[0] // 2  # the liver, not the whole series
    assert "crop" in s.reasons and "window" in s.summary()
    gpu = choose_settings(vol.array, vol.spacing, vol.modality, sparse, annotated_slices(sparse), devices="cuda:0")
    assert gpu.image_size == 256 and gpu.encoder == "resnet18"


def test_mr_crop_keeps_the_whole_slice_at_native_resolution(mr_crop):
    img, lab, slices, sparse = mr_crop
    s = choose_settings(img.array, img.spacing, img.modality, sparse, annotated_slices(sparse), devices="cpu")
    assert s.roi is None and s.image_size == 64  # what the hippocampus benchmarks have always used
    assert s.normalization["mode"] == "percentile"
    assert s.encoder == COMPACT_ENCODER  # the setting study completion was measured with (benchmarks/RESULTS.md)
    assert s.steps == MAX_STEPS  # a small tile: the training budget buys more steps (600 beat 300 on validation volumes)
    zs = np.flatnonzero((lab > 0).any((1, 2)))
    if s.z_range is not None:
        assert s.z_range[0] <= zs[0] and zs[-1] < s.z_range[1]


def test_two_slice_series(dcmqi_dir, tmp_path):
    """A 2-slice CT series with the liver drawn on one slice: no crash, a crop, the whole (2-slice) range."""
    d = tmp_path / "two"
    d.mkdir()
    for name in ("01.dcm", "02.dcm"):
        os.symlink(dcmqi_dir / "ct-3slice" / name, d / name)
    vol = load_image(str(d))
    assert vol.shape[0] == 2
    liver = load_image(str(dcmqi_dir / "liver_seg.nrrd")).array[:2] > 0
    sparse = np.zeros(vol.shape, np.uint8)
    sparse[1][liver[1]] = 1
    s = choose_settings(vol.array, vol.spacing, vol.modality, sparse, annotated_slices(sparse), devices="cpu")
    assert s.z_range is None  # both slices may hold it
    assert s.roi is not None and s.image_size <= 128 and s.normalization["mode"] == "window"
    # annotated-empty slice 0 bounds the range
    ann = annotated_slices(sparse, [0])
    assert z_range_for(sparse, ann, vol.spacing) == [1, 2]


def test_steps_are_a_training_time_budget():
    sizes = [64, 96, 128, 192, 256]
    cpu = [default_steps(COMPACT_ENCODER, n, "cpu") for n in sizes]
    assert cpu[0] == MAX_STEPS and cpu[-1] == DEFAULT_STEPS
    assert all(a >= b for a, b in zip(cpu, cpu[1:])) and DEFAULT_STEPS < cpu[1] < MAX_STEPS  # fewer steps for a larger tile
    assert all(n % 50 == 0 for n in cpu)
    assert default_steps("resnet18", 64, "cpu") == DEFAULT_STEPS  # ~4.5x per step: never below the floor
    assert default_steps("resnet18", 128, "gpu") == MAX_STEPS


def test_slow_setting_warning():
    msg = slow_setting_warning(image_size=512, encoder="resnet18", steps=300, devices="cpu")
    assert msg and "min" in msg and "CPU" in msg
    assert slow_setting_warning(image_size=512, encoder="resnet18", steps=300, devices="cuda:0") is None
    assert slow_setting_warning(image_size=64, encoder=None, steps=300, devices="cpu") is None


def test_keep_connected_drops_what_the_drawing_does_not_touch(mr_crop):
    img, lab, slices, sparse = mr_crop
    pred = (lab > 0).astype(np.uint8)
    pred[:, :3, :3] = 1  # a look-alike in a corner, not connected to the structure
    out = keep_connected(pred, sparse)
    assert not out[:, :3, :3].any()
    assert np.array_equal(out > 0, lab > 0)


def test_finetune_writes_auto_and_predicts_the_same_study(ct_liver, tmp_path):
    """Few steps on the real CT: model.json carries the choice; prediction on the crop and range, full-size output."""
    from napari_ssl.active.predict import predict_volume
    from napari_ssl.models.checkpoint import read_meta
    from napari_ssl.train.finetune import FinetuneConfig, run_finetuning

    vol, liver, slices, sparse = ct_liver
    events = []
    out = run_finetuning(FinetuneConfig(images=[vol], labels=[sparse], out=str(tmp_path / "m"), steps=2, batch_size=2,
                                        devices="cpu", preview_every_s=0.0), events.append)
    meta = read_meta(out)
    auto = meta["auto"]
    assert meta["encoder_name"] == COMPACT_ENCODER and meta["image_size"] == auto["image_size"] == 128
    assert auto["rois"][0] == auto["roi"] and auto["z_ranges"][0] == auto["z_range"]
    assert meta["normalization"]["CT"]["window"] == auto["normalization"]["window"]
    assert any(e.get("type") == "status" and e["message"].startswith("settings: ") for e in events)
    pred = predict_volume(out, vol, roi=auto["roi"], z_range=auto["z_range"], seeds=sparse, device="cpu")
    assert pred.labels.shape == vol.shape and pred.probabilities.shape[1:] == vol.shape
    z0, z1 = auto["z_range"]
    y0, y1, x0, x1 = auto["roi"]
    outside = np.ones(vol.shape, bool)
    outside[z0:z1, y0:y1, x0:x1] = False
    assert not pred.labels[outside].any() and np.allclose(pred.probabilities[0][outside], 1.0)
