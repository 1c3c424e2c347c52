"""--pairs position: joint-embedding positives at the same relative depth of two different volumes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_ssl.data.cache import load_prepared, normalization_specs
from napari_ssl.data.slices import SliceDataset
from napari_ssl.errors import NapariSSLError


@pytest.fixture(scope="module")
def volumes(hippo_dir):
    paths = sorted(str(p) for p in (hippo_dir / "images").glob("*.nii.gz"))[:6]
    return load_prepared(paths, normalization_specs())


def _which(vols, patch):
    """(volume, slice) of the training-grid slice whose padded pixels contain `patch` exactly."""
    hits = []
    for j, v in enumerate(vols):
        for z in range(v.shape[0]):
            sl = v[z]
            h, w = patch.shape
            for y in range(sl.shape[0] - h + 1):
                for x in range(sl.shape[1] - w + 1):
                    if np.array_equal(sl[y:y + h, x:x + w], patch):
                        hits.append((j, z))
    return hits


def test_partner_is_another_volume_at_the_same_relative_depth(volumes):
    ds = SliceDataset(volumes, 32, partner="same-depth", seed=3)
    assert ds.num_volumes >= 2
    batch = ds[list(range(0, len(ds), max(1, len(ds) // 12)))[:12]]
    assert batch["partner"].shape == batch["image"].shape
    for n in range(batch["image"].shape[0]):
        j = int(np.flatnonzero(np.asarray(ds.source_index) == int(batch["volume_index"][n]))[0])
        z = int(batch["slice_index"][n])
        part = batch["partner"][n, 0].numpy().astype(np.float16)
        hits = [(k, zk) for k, zk in _which(ds.volumes, part) if k != j]
        assert hits, "the partner must be cut from a different volume"
        rel = (z + 0.5) / ds.volumes[j].shape[0]
        # nearest non-blank slice to the same relative depth: within one slice of rel * depth
        assert any(abs((zk + 0.5) / ds.volumes[k].shape[0] - rel) <= 1.5 / ds.volumes[k].shape[0] for k, zk in hits)


def test_position_pairs_need_two_volumes(volumes):
    with pytest.raises(NapariSSLError, match="at least 2 volumes"):
        SliceDataset(volumes[:1], 32, partner="same-depth")


def test_pretraining_with_position_pairs_cli(hippo_dir, tmp_path):
    from napari_ssl.cli import main

    paths = sorted(str(p) for p in (hippo_dir / "images").glob("*.nii.gz"))[:4]
    out = tmp_path / "run"
    rc = main(["pretrain", "--method", "vicreg", "--pairs", "position", "--data", *paths, "--out", str(out),
               "--encoder", "resnet18", "--image-size", "32", "--batch-size", "8", "--steps", "4", "--devices", "cpu"])
    assert rc == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["pairs"] == "position"
    assert (out / "encoder.safetensors").is_file()
