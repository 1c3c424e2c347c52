"""Fine-tuning on real hippocampus scans with tiny settings (32 px, resnet18, a few steps)."""
import json

import numpy as np
import pytest
import torch

from napari_ssl.cli import main
from napari_ssl.data.sparse_labels import annotated_slices
from napari_ssl.errors import NapariSSLError
from napari_ssl.models.checkpoint import load_weights, read_meta, save_weights
from napari_ssl.models.unet import build_encoder
from napari_ssl.train.finetune import FinetuneConfig, build_initial_model, load_image, load_labels, run_finetuning

WINDOW = {"mode": "window", "window": [0.0, 255.0]}  # per-voxel, so other slices cannot shift it
TINY = dict(image_size=32, batch_size=4, steps=4, preview_every_s=0.0, seed=0)
SUPERVISED = dict(TINY, semi_supervised=False)  # the user's slices only (the default recipe also learns from unannotated slices)


@pytest.fixture(scope="module")
def case(hippo_dir):
    img = load_image(str(hippo_dir / "images" / "hippocampus_001.nii.gz"))
    lab = load_labels(str(hippo_dir / "labels" / "hippocampus_001.nii.gz"), img)
    ann = np.flatnonzero(annotated_slices(lab))
    z0 = int(ann[len(ann) // 2])
    one = np.zeros_like(lab)
    one[z0] = lab[z0]
    empty = int(np.flatnonzero(~annotated_slices(lab))[0])
    return img, lab, one, z0, empty


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """An encoder folder in the pretraining contract's format (a seeded, non-default init)."""
    torch.manual_seed(123)
    enc = build_encoder("resnet18", in_channels=1)
    for p in enc.parameters():
        torch.nn.init.normal_(p, std=0.05)
    d = tmp_path_factory.mktemp("pre") / "pre"
    save_weights(str(d), enc.state_dict(), {"method": "test-init", "encoder_name": "resnet18", "in_channels": 1, "image_size": 32,
                                           "normalization": {"MR": WINDOW}, "steps": 0})
    return str(d), {k: v.clone() for k, v in enc.state_dict().items()}


def _weights(out):
    sd, _ = load_weights(out, name="model")
    return sd


def test_unannotated_slices_never_reach_the_loss(case, tmp_path):
    img, lab, one, z0, empty = case
    a = run_finetuning(FinetuneConfig(images=[img], labels=[one], out=str(tmp_path / "a"), normalization=WINDOW, **SUPERVISED))
    # scramble every unannotated slice of the image: same weights under the same seed
    noisy = img.array.astype(np.float32).copy()
    others = [z for z in range(img.shape[0]) if z != z0]
    noisy[others] = np.random.default_rng(0).uniform(0, 255, size=noisy[others].shape)
    b = run_finetuning(FinetuneConfig(images=[img.with_array(noisy)], labels=[one], out=str(tmp_path / "b"), normalization=WINDOW, **SUPERVISED))
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # an annotated-empty slice does contribute (as background): the weights change
    c = run_finetuning(FinetuneConfig(images=[img], labels=[one], empty_slices=[[empty]], out=str(tmp_path / "c"), normalization=WINDOW,
                                      **SUPERVISED))
    wc = _weights(c)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].dtype.is_floating_point)
    meta = read_meta(c)
    assert meta["training_slices"][0]["slices"] == sorted([z0, empty]) and meta["training_slices"][0]["empty_slices"] == [empty]


def test_pretrained_encoder_is_loaded_and_can_be_frozen(case, pretrained, tmp_path):
    img, lab, one, z0, empty = case
    pre_dir, pre_sd = pretrained
    unet, source = build_initial_model(FinetuneConfig(images=[], labels=[], out="", encoder_weights=pre_dir), num_classes=3)
    assert all(torch.equal(unet.encoder.state_dict()[k], v) for k, v in pre_sd.items())
    assert source["method"] == "test-init"
    # encoder frozen for the whole run: it ends exactly as pretrained (BatchNorm statistics included); decoder trained
    out = run_finetuning(FinetuneConfig(images=[img], labels=[one], out=str(tmp_path / "m"), encoder_weights=pre_dir,
                                        freeze_encoder_steps=10, **TINY))
    sd = _weights(out)
    assert all(torch.equal(sd["encoder." + k], v) for k, v in pre_sd.items())
    meta = read_meta(out)
    assert meta["normalization"] == {"default": WINDOW} or list(meta["normalization"].values()) == [WINDOW]
    assert meta["pretrained"]["method"] == "test-init" and meta["image_size"] == 32
    # without freezing the encoder moves
    out2 = run_finetuning(FinetuneConfig(images=[img], labels=[one], out=str(tmp_path / "m2"), encoder_weights=pre_dir, **TINY))
    assert not torch.equal(_weights(out2)["encoder.conv1.weight"], pre_sd["conv1.weight"])


def test_encoder_or_channel_mismatch_is_an_error(case, pretrained, tmp_path):
    img, lab, one, z0, empty = case
    pre_dir, _ = pretrained
    with pytest.raises(NapariSSLError, match="resnet18 encoder, not resnet34"):
        run_finetuning(FinetuneConfig(images=[img], labels=[one], out=str(tmp_path / "x"), encoder_weights=pre_dir, encoder="resnet34", **TINY))
    with pytest.raises(NapariSSLError, match="channel"):
        run_finetuning(FinetuneConfig(images=[img], labels=[one], out=str(tmp_path / "x"), encoder_weights=pre_dir, in_channels=3, **TINY))
    assert not (tmp_path / "x").exists()


def test_init_model_warm_start(case, tmp_path):
    img, lab, one, z0, empty = case
    first = run_finetuning(FinetuneConfig(images=[img], labels=[one], out=str(tmp_path / "r1"), classes=["anterior", "posterior"], **TINY))
    two = one.copy()
    z1 = int(np.flatnonzero(annotated_slices(lab))[2])
    two[z1] = lab[z1]
    second = run_finetuning(FinetuneConfig(images=[img], labels=[two], out=str(tmp_path / "r2"), init_model=first, lr=1e-9,
                                           **{**TINY, "steps": 1}))
    w1, w2 = _weights(first), _weights(second)
    convs = [k for k in w1 if w1[k].ndim == 4]
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in convs)  # started from round 1
    fresh = run_finetuning(FinetuneConfig(images=[img], labels=[two], out=str(tmp_path / "r3"), lr=1e-9, **{**TINY, "steps": 1}))
    assert not all(torch.allclose(w1[k], _weights(fresh)[k], atol=1e-6) for k in convs)
    meta = read_meta(second)
    assert meta["source"]["init"] == "model" and meta["class_names"] == ["anterior", "posterior"]
    assert meta["training_slices"][0]["slices"] == sorted([z0, z1])


def test_cli_finetune_and_bad_inputs(hippo_dir, tmp_path, capsys):
    img = str(hippo_dir / "images" / "hippocampus_001.nii.gz")
    lab = str(hippo_dir / "labels" / "hippocampus_001.nii.gz")
    out = tmp_path / "cli"
    rc = main(["finetune", "--image", img, "--labels", lab, "--out", str(out), "--steps", "3", "--image-size", "32", "--batch-size", "4",
               "--classes", "anterior,posterior", "--empty-slices", "0,34"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "model.json").read_text())
    # the encoder is chosen for the machine (data/auto_config.py): the compact U-Net on a CPU, resnet18 on a GPU
    expected_encoder = "resnet18" if torch.cuda.is_available() else "mobilenetv3-small-lite"
    assert meta["classes"] == {"1": "anterior", "2": "posterior"} and meta["encoder_name"] == expected_encoder and meta["in_channels"] == 1
    assert 0 in meta["training_slices"][0]["slices"] and meta["training_slices"][0]["empty_slices"] == [0, 34]
    assert "hippocampus" not in (out / "model.json").read_text()  # no file names (they may identify a patient)
    capsys.readouterr()
    bad = [
        (["--labels", str(hippo_dir / "labels" / "hippocampus_003.nii.gz")], "does not match the image shape"),
        (["--labels", lab, "--classes", "anterior"], "label index 2 has no class name"),
        (["--labels", lab, "--steps", "2", "--image-size", "48"], "multiple of 32"),
    ]
    for extra, msg in bad:
        rc = main(["finetune", "--image", img, "--out", str(tmp_path / "bad"), "--steps", "2", "--image-size", "32", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and msg in err and len(err.splitlines()) == 1, err
    # no annotated slice at all
    empty_lab = tmp_path / "empty.nii.gz"
    from napari_ssl.io.nifti import read_itk_volume, write_itk_volume
    v = read_itk_volume(lab)
    write_itk_volume(np.zeros(v.shape, np.uint8), v.affine, str(empty_lab))
    rc = main(["finetune", "--image", img, "--labels", str(empty_lab), "--out", str(tmp_path / "bad"), "--steps", "2"])
    assert rc == 2 and "no annotated slice" in capsys.readouterr().err
    # labels on another grid (same shape, shifted origin)
    moved = tmp_path / "moved.nii.gz"
    aff = v.affine.copy()
    aff[:3, 3] += 3.0
    write_itk_volume(v.array, aff, str(moved))
    rc = main(["finetune", "--image", img, "--labels", str(moved), "--out", str(tmp_path / "bad"), "--steps", "2"])
    assert rc == 2 and "geometry" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_class_balanced_weights_and_head_only_warmup(case):
    """Two fine-tuning knobs the label-efficiency benchmark probes: cross-entropy weights from the annotated
    voxels (rare classes weigh more; a class absent from the annotations gets the largest weight seen), and a
    head-only warm-up in which encoder and decoder (BatchNorm statistics included) stay as they were."""
    from functools import partial

    from napari_ssl.data.labelled_slices import LabelledSliceDataset, LabelledVolume
    from napari_ssl.train.finetune import train_unet
    from napari_ssl.train.seg_module import SegmentationModule, balanced_class_weights, segmentation_loss

    img, lab, one, z0, empty = case
    t = torch.from_numpy(np.ascontiguousarray(lab[z0:z0 + 1])).long()
    w = balanced_class_weights(t, 4)
    counts = torch.bincount(t.reshape(-1), minlength=4)[:4]
    seen = counts > 0
    assert bool(seen[0]) and not bool(seen[3]) and abs(float(w[seen].mean()) - 1.0) < 1e-5
    order = torch.argsort(counts[seen])  # rarer -> heavier
    assert torch.all(w[seen][order][:-1] >= w[seen][order][1:])
    assert float(w[3]) == float(w[seen].max()) and float(w[0]) < 1.0
    logits = torch.randn(1, 4, *t.shape[1:])
    assert not torch.isclose(segmentation_loss(logits, t, class_weights=w), segmentation_loss(logits, t))

    mask = np.zeros(lab.shape[0], bool)
    mask[z0] = True
    ds = LabelledSliceDataset([LabelledVolume(image=img.array.astype(np.float32) / 255.0, labels=lab, annotated=mask)], 32, 1, None)
    torch.manual_seed(0)
    unet, _ = build_initial_model(FinetuneConfig(images=[], labels=[], out=""), num_classes=3)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    factory = partial(SegmentationModule, head_warmup_steps=3, class_weights=balanced_class_weights(ds.targets, 3, 0.5))
    unet, info = train_unet(unet, ds, steps=3, batch_size=2, devices="cpu", module_factory=factory)
    after = unet.state_dict()
    assert info["steps"] == 3
    body = [k for k in before if not k.startswith("segmentation_head.")]
    assert all(torch.equal(before[k], after[k]) for k in body)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("segmentation_head."))
    assert all(p.requires_grad for p in unet.parameters())  # unfrozen again for whoever trains next


def test_finetune_on_dicom_with_dicom_seg_labels(dcmqi_dir, tmp_path, capsys):
    """A real CT series with its real DICOM-SEG (dcmqi) as the labels: placed on the series' grid, the
    segment label becomes the class name; overlapping segments or a SEG of another series: one-line errors."""
    from napari_ssl.train.finetune import load_labels_and_names

    ct = str(dcmqi_dir / "ct-3slice")
    seg = str(dcmqi_dir / "liver.dcm")
    img = load_image(ct)
    lab, names = load_labels_and_names(seg, img)
    ref = load_labels(str(dcmqi_dir / "liver_seg.nrrd"), img)  # the same mask as a labelmap, read the ordinary way
    assert names == {1: "Liver"} and lab.shape == img.shape and np.array_equal(lab, ref) and lab.sum() > 10_000
    out = tmp_path / "ct"
    rc = main(["finetune", "--image", ct, "--labels", seg, "--out", str(out), "--steps", "2", "--image-size", "32", "--batch-size", "2"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "model.json").read_text())
    assert meta["class_names"] == ["Liver"] and meta["training_slices"][0]["slices"] == [0, 1, 2]
    assert "CT" in meta["normalization"]
    capsys.readouterr()
    bad = [(str(dcmqi_dir / "partial_overlaps.dcm"), "overlapping segments"),
           (str(dcmqi_dir / "23x38x3" / "seg" / "label.seg"), "references another DICOM series")]
    for labels, msg in bad:
        rc = main(["finetune", "--image", ct, "--labels", labels, "--out", str(tmp_path / "bad"), "--steps", "2", "--image-size", "32"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and msg in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
