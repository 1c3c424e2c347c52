"""Sparse annotations on real hippocampus label maps: annotated vs unknown slices, dataset contents, errors."""
import numpy as np
import pytest
import torch

from napari_ssl.data.labelled_slices import (
    AugmentConfig,
    LabelledSliceDataset,
    LabelledVolume,
    augment_pair,
    fit_to_size,
    slice_stack,
    unfit_from_size,
)
from napari_ssl.data.normalize import normalize
from napari_ssl.data.sparse_labels import annotated_slices, as_label_array, check_class_names, check_same_grid, parse_class_names, parse_index_list
from napari_ssl.errors import NapariSSLError
from napari_ssl.train.finetune import load_image, load_labels


@pytest.fixture(scope="module")
def hippo(hippo_dir):
    img = load_image(str(hippo_dir / "images" / "hippocampus_001.nii.gz"))
    lab = load_labels(str(hippo_dir / "labels" / "hippocampus_001.nii.gz"), img)
    return img, lab


def test_annotated_slices_are_labelled_or_listed_empty(hippo):
    img, lab = hippo
    full = annotated_slices(lab)
    has_label = [bool(lab[z].any()) for z in range(lab.shape[0])]
    assert full.tolist() == has_label and 0 < full.sum() < lab.shape[0]
    sparse = np.zeros_like(lab)
    z0 = int(np.flatnonzero(full)[len(np.flatnonzero(full)) // 2])
    sparse[z0] = lab[z0]
    empty = int(np.flatnonzero(~full)[0])
    mask = annotated_slices(sparse, [empty])
    assert np.flatnonzero(mask).tolist() == sorted([z0, empty])
    with pytest.raises(NapariSSLError, match="outside the volume"):
        annotated_slices(sparse, [lab.shape[0]])


def test_dataset_holds_only_annotated_slices(hippo):
    img, lab = hippo
    sparse = np.zeros_like(lab)
    zs = np.flatnonzero(annotated_slices(lab))[[2, 10]]
    sparse[zs] = lab[zs]
    empty = int(np.flatnonzero(~annotated_slices(lab))[0])
    vol = LabelledVolume(normalize(img.array, {"mode": "percentile", "percentiles": [0.5, 99.5]}), sparse, annotated_slices(sparse, [empty]))
    ds = LabelledSliceDataset([vol], image_size=32, in_channels=1)
    assert sorted(z for _, z in ds.index) == sorted([*zs.tolist(), empty])
    item = ds[ds.index.index((0, empty))]
    assert item["image"].shape == (1, 32, 32) and int(item["target"].max()) == 0  # annotated-empty: all background
    ds3 = LabelledSliceDataset([vol], image_size=64, in_channels=3, augment=AugmentConfig())
    assert ds3[0]["image"].shape == (3, 64, 64) and set(ds3[0]["target"].unique().tolist()) <= {0, 1, 2}
    # 2.5D stacks the neighbours, clamped at the ends
    st = slice_stack(vol.image, 0, 3)
    assert np.array_equal(st[0], vol.image[0]) and np.array_equal(st[2], vol.image[1])


def test_fit_and_unfit_are_inverse(hippo):
    img, lab = hippo
    x = torch.from_numpy(lab[20].astype(np.float32))[None, None]
    h, w = x.shape[-2:]
    same = unfit_from_size(fit_to_size(x, max(h, w), mode="nearest"), (h, w), mode="nearest")
    assert torch.equal(same, x)  # pad/crop only: exact
    up = unfit_from_size(fit_to_size(x, 128, mode="nearest"), (h, w), mode="nearest")
    assert (up == x).float().mean() > 0.97


def test_augmentation_keeps_label_values_and_changes_image(hippo):
    img, lab = hippo
    z = int(np.flatnonzero(annotated_slices(lab))[5])
    x = fit_to_size(torch.from_numpy(normalize(img.array, {"mode": "window", "window": [0, 255]})[z])[None, None], 64)[0]
    t = fit_to_size(torch.from_numpy(lab[z].astype(np.float32))[None, None], 64, mode="nearest")[0, 0].long()
    torch.manual_seed(3)
    changed = 0
    for _ in range(5):
        xa, ta = augment_pair(x, t, AugmentConfig(affine=1.0, intensity=1.0))
        assert set(ta.unique().tolist()) <= {0, 1, 2} and xa.shape == x.shape
        changed += int(not torch.allclose(xa, x))
    assert changed == 5


def test_parsing_and_class_names():
    assert parse_index_list("3,17") == [3, 17]
    assert parse_index_list("3-5, 9") == [3, 4, 5, 9]
    assert parse_index_list(None) == []
    with pytest.raises(NapariSSLError, match="not a slice index"):
        parse_index_list("three")
    assert parse_class_names("anterior,posterior") == ["anterior", "posterior"]
    with pytest.raises(NapariSSLError, match="duplicate"):
        parse_class_names("a,a")
    lab = np.zeros((4, 5, 5), np.int64)
    lab[1, 2, 2] = 3
    with pytest.raises(NapariSSLError, match="label index 3 has no class name"):
        check_class_names(lab, ["a", "b"])
    assert check_class_names(lab, ["a", "b", "c"]) == ["a", "b", "c"]
    with pytest.raises(NapariSSLError, match="non-integer"):
        as_label_array(np.full((2, 2, 2), 0.5))


def test_grid_mismatch_is_an_error(hippo, hippo_dir):
    img, lab = hippo
    shifted = img.affine.copy()
    shifted[:3, 3] += 5.0
    with pytest.raises(NapariSSLError, match="geometry"):
        check_same_grid(img.shape, img.affine, img.shape, shifted)
    with pytest.raises(NapariSSLError, match="shape"):
        load_labels(str(hippo_dir / "labels" / "hippocampus_003.nii.gz"), img)
