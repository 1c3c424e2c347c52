"""predict / suggest / the Python API on real hippocampus MR volumes, with one tiny model fine-tuned here
(32 px, resnet18, a few steps) and shared by every test of the module."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from napari_ssl import api
from napari_ssl.active.predict import slice_scores
from napari_ssl.active.suggest import rank_pool, suggest_slices
from napari_ssl.cli import main
from napari_ssl.errors import NapariSSLError

CLASSES = ["anterior", "posterior"]


def _geometry(path):
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def _same_geometry(a, b):
    sa, sb = _geometry(a), _geometry(b)
    assert sa[0] == sb[0], (sa[0], sb[0])
    for x, y in zip(sa[1:], sb[1:]):
        assert np.allclose(x, y, atol=1e-4), (x, y)


@pytest.fixture(scope="module")
def files(hippo_dir):
    return {n: (str(hippo_dir / "images" / f"hippocampus_{n:03d}.nii.gz"), str(hippo_dir / "labels" / f"hippocampus_{n:03d}.nii.gz"))
            for n in (1, 3, 4)}


@pytest.fixture(scope="module")
def model(files, tmp_path_factory):
    """Fine-tuned on every annotated slice of two volumes (30 steps): imperfect, so uncertainty varies."""
    out = tmp_path_factory.mktemp("model") / "seg"
    imgs = [files[1][0], files[4][0]]
    labs = [files[1][1], files[4][1]]
    return api.finetune(imgs, labs, out, classes="anterior,posterior", steps=30, lr=3e-3, image_size=32, batch_size=4,
                        preview_every_s=0.0, seed=0, semi_supervised=False, encoder="resnet18")  # the model these tests were written for


@pytest.fixture(scope="module")
def flipped(files, tmp_path_factory):
    """hippocampus_003 stored with permuted axes and a flipped direction (same physical image)."""
    img = sitk.ReadImage(files[3][0])
    perm = sitk.Flip(sitk.PermuteAxes(img, [2, 0, 1]), [True, False, True])
    assert perm.GetDirection() != img.GetDirection()
    path = tmp_path_factory.mktemp("flip") / "flipped.nii.gz"
    sitk.WriteImage(perm, str(path))
    return str(path)


@pytest.fixture(scope="module")
def predicted(model, files, flipped, tmp_path_factory):
    """predict CLI with every output, on the original and on the permuted/flipped file."""
    d = tmp_path_factory.mktemp("pred")
    res = {}
    for key, image in (("orig", files[3][0]), ("flip", flipped)):
        paths = {k: str(d / f"{key}_{k}.nii.gz") for k in ("labels", "prob", "unc")}
        rc = main(["predict", "--model", model, "--image", image, "--out", paths["labels"], "--probabilities", paths["prob"],
                   "--uncertainty", paths["unc"], "--tta"])
        assert rc == 0
        res[key] = paths
    return res


def test_predict_outputs_have_the_source_geometry(predicted, files, flipped):
    for key, image in (("orig", files[3][0]), ("flip", flipped)):
        for path in predicted[key].values():
            _same_geometry(path, image)
    # same physical prediction whichever way the file stores the voxels: resample the flipped-file
    # outputs onto the original grid (identity transform, nearest neighbour) and compare voxel by voxel
    ref = sitk.ReadImage(predicted["orig"]["labels"])
    back = sitk.Resample(sitk.ReadImage(predicted["flip"]["labels"]), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    a, b = sitk.GetArrayFromImage(ref), sitk.GetArrayFromImage(back)
    assert (a > 0).sum() > 100  # the tiny model does find hippocampus
    assert np.array_equal(a, b)
    ua = sitk.GetArrayFromImage(sitk.ReadImage(predicted["orig"]["unc"]))
    ub = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(predicted["flip"]["unc"]), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    assert np.allclose(ua, ub, atol=1e-5)


def test_probabilities_and_entropy(predicted):
    prob_img = sitk.ReadImage(predicted["orig"]["prob"])
    assert prob_img.GetNumberOfComponentsPerPixel() == 3  # background, anterior, posterior
    p = sitk.GetArrayFromImage(prob_img).astype(np.float64)  # (z, y, x, K)
    assert np.allclose(p.sum(-1), 1.0, atol=1e-4) and p.min() >= 0
    lab = sitk.GetArrayFromImage(sitk.ReadImage(predicted["orig"]["labels"]))
    assert np.array_equal(lab, p.argmax(-1))
    u = sitk.GetArrayFromImage(sitk.ReadImage(predicted["orig"]["unc"])).astype(np.float64)
    k = p.shape[-1]
    ent = u * np.log(k)  # the file holds entropy / log K
    assert ent.min() >= -1e-6 and ent.max() <= np.log(k) + 1e-6
    # it is the entropy of the written (mean TTA) probabilities
    expect = -(p * np.log(np.clip(p, 1e-8, 1))).sum(-1)
    assert np.allclose(ent, expect, atol=1e-3)
    # higher where the probabilities are mixed than where one class is near-certain
    pmax = p.max(-1)
    lo, hi = np.quantile(pmax, [0.1, 0.9])
    assert hi - lo > 0.1  # the tiny model is sure of some voxels and torn about others
    mixed, sure = pmax <= lo, pmax >= hi
    assert ent[mixed].mean() > ent[sure].mean() + 0.1
    assert np.corrcoef(pmax.ravel(), ent.ravel())[0, 1] < -0.8


def test_slice_uncertainty_tta_and_mc_dropout(model, files, capsys):
    vol = api.load_volume(files[3][0])
    single = api.predict(model, vol)
    assert single.method == "single" and single.passes == 1
    assert single.slice_uncertainty.shape == (vol.shape[0],)
    assert np.allclose(single.slice_uncertainty, single.uncertainty.reshape(vol.shape[0], -1).mean(1), atol=1e-6)
    assert single.slice_uncertainty.max() > 1.5 * single.slice_uncertainty.min()  # varies along the volume
    tta = api.predict(model, vol, tta=True)
    mc = api.predict(model, vol, mc_dropout=3)
    both = api.predict(model, vol, tta=True, mc_dropout=2)
    assert (tta.passes, mc.passes, both.passes) == (4, 3, 8)
    assert mc.method == "mc-dropout-3" and both.method == "tta+mc-dropout-2"
    for pr in (tta, mc, both):
        assert np.allclose(pr.probabilities.sum(0), 1, atol=1e-5)
        assert not np.allclose(pr.probabilities, single.probabilities, atol=1e-4)  # the extra passes change the estimate
        assert 0 <= pr.uncertainty.min() and pr.uncertainty.max() <= 1 + 1e-6
    # the CLI exposes the per-slice uncertainty (same numbers as the API)
    capsys.readouterr()
    out = os.path.join(os.path.dirname(model), "mc_labels.nii.gz")
    assert main(["predict", "--model", model, "--image", files[3][0], "--out", out, "--mc-dropout", "3", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["method"] == "mc-dropout-3" and js["passes"] == 3 and js["classes"] == ["background", *CLASSES]
    assert np.allclose(js["slice_uncertainty"], mc.slice_uncertainty, atol=1e-4)
    assert np.array_equal(api.load_volume(out).array, mc.labels)  # canonical grid of a canonical file: same voxels


def _sparse_labels(files, tmp_path, slices):
    """hippocampus_003's true labels kept on `slices` only (what a user would have drawn)."""
    vol = api.load_volume(files[3][1])  # canonical grid: slices along axis 0, as napari shows them
    sparse = np.zeros_like(vol.array)
    sparse[slices] = vol.array[slices]
    path = tmp_path / f"sparse_{'_'.join(map(str, slices))}.nii.gz"
    api.save_prediction(_as_prediction(sparse), vol, path)  # written back in the file's own voxel order
    return str(path), vol.array


def _as_prediction(labels):
    from napari_ssl.active.predict import Prediction

    z = labels.shape[0]
    return Prediction(labels=labels.astype(np.uint8), probabilities=np.zeros((3, *labels.shape), np.float32),
                      uncertainty=np.zeros(labels.shape, np.float32), slice_uncertainty=np.zeros(z, np.float32),
                      class_names=CLASSES, passes=1, method="single")


def test_suggest_cli(model, files, tmp_path, capsys):
    vol = api.load_volume(files[3][0])
    full = api.load_volume(files[3][1]).array
    fg = np.flatnonzero(full.reshape(full.shape[0], -1).any(1))
    annotated = [int(fg[2]), int(fg[len(fg) // 2])]
    labels, _ = _sparse_labels(files, tmp_path, annotated)
    assert list(np.flatnonzero(api.annotated_slices(labels, vol))) == sorted(annotated)
    capsys.readouterr()
    assert main(["suggest", "--model", model, "--image", files[3][0], "--labels", labels, "--empty-slices", "0", "-n", "4", "--json",
                 "--score", "foreground-entropy"]) == 0  # the earlier default (the default now: tests/test_next_slice.py)
    picks = json.loads(capsys.readouterr().out)["suggestions"]
    assert len(picks) == 4 and [p["rank"] for p in picks] == [1, 2, 3, 4]
    assert all(set(p) == {"rank", "slice", "uncertainty", "min_distance"} for p in picks)
    zs = [p["slice"] for p in picks]
    assert not set(zs) & set(annotated + [0]) and all(0 <= z < vol.shape[0] for z in zs)
    d = picks[0]["min_distance"]
    assert d >= 2 and all(p["min_distance"] == d for p in picks)  # no relaxation was needed here
    for i, a in enumerate(zs):  # spread: apart from each other and from the annotated slices
        assert all(abs(a - b) >= d for b in zs[:i] + annotated + [0])
    # ranked by TTA entropy x P(structure), slice mean: the first pick has the highest
    pr = api.predict(model, vol, tta=True)
    su = (pr.uncertainty * (1 - pr.probabilities[0])).reshape(vol.shape[0], -1).mean(1)
    free = [z for z in range(vol.shape[0]) if all(abs(z - a) >= d for a in annotated + [0])]
    assert zs[0] == max(free, key=lambda z: su[z])
    assert np.isclose(picks[0]["uncertainty"], su[zs[0]], atol=1e-5)
    assert all(a["uncertainty"] >= b["uncertainty"] for a, b in zip(picks, picks[1:]))
    # --score entropy ranks by the plain slice-mean entropy instead
    assert main(["suggest", "--model", model, "--image", files[3][0], "--labels", labels, "--empty-slices", "0", "-n", "4", "--json",
                 "--score", "entropy"]) == 0
    ent = json.loads(capsys.readouterr().out)["suggestions"]
    assert ent[0]["slice"] == max(free, key=lambda z: pr.slice_uncertainty[z])
    assert np.isclose(ent[0]["uncertainty"], pr.slice_uncertainty[ent[0]["slice"]], atol=1e-5)
    # -n is respected; the plain-text output names the slices
    assert main(["suggest", "--model", model, "--image", files[3][0], "--labels", labels, "-n", "2", "--no-tta"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("1. slice ")


def test_suggest_only_unannotated_when_few_remain(model, files):
    vol = api.load_volume(files[3][0])
    z = vol.shape[0]
    # everything annotated (as empty) except three slices: exactly those come back, whatever -n
    keep = [1, 2, z - 1]
    picks = api.suggest(model, vol, empty_slices=[i for i in range(z) if i not in keep], n=5, tta=False)
    assert sorted(p["slice"] for p in picks) == keep
    assert api.suggest(model, vol, empty_slices=list(range(z)), n=5, tta=False) == []


def test_rank_pool_spreads_picks():
    # a smooth peak: the five most uncertain slices are neighbours; the picks must not be
    u = np.exp(-0.5 * ((np.arange(40) - 20) / 6.0) ** 2)
    picks = suggest_slices(u, n=5)
    zs = [p["slice"] for p in picks]
    assert zs[0] == 20 and len(zs) == 5
    assert min(abs(a - b) for i, a in enumerate(zs) for b in zs[:i]) >= 4  # default spacing 40 // 10
    plain = sorted(np.argsort(-u)[:5].tolist())
    assert max(plain) - min(plain) == 4 and sorted(zs) != plain
    # over several volumes: the picks come from distinct volumes and, with the depth spacing off, each
    # takes its volume's most uncertain slice; with it (default 0.5 / n), the batch covers different levels
    u2 = [u, u * 0.9, u * 0.8]
    plain = rank_pool(u2, n=3, depth_spacing=0)
    assert [p["volume"] for p in plain] == [0, 1, 2] and all(p["slice"] == 20 for p in plain)
    picks = rank_pool(u2, n=3)
    assert sorted(p["volume"] for p in picks) == [0, 1, 2] and picks[0] == plain[0]
    rel = [p["slice"] / 40 for p in picks]
    assert min(abs(a - b) for i, a in enumerate(rel) for b in rel[:i]) >= 0.5 / 3
    ann = [np.zeros(40, bool) for _ in u2]
    ann[0][18:23] = True
    picks = rank_pool(u2, ann, n=6)
    assert len(picks) == 6 and sorted(p["volume"] for p in picks) == [0, 0, 1, 1, 2, 2]
    assert all(not ann[p["volume"]][p["slice"]] for p in picks)
    with pytest.raises(NapariSSLError, match="slices but the volume has"):
        rank_pool([u], [np.zeros(3, bool)], n=2)


def test_api_suggest_pool_and_prediction_reuse(model, files, tmp_path, capsys):
    vols = [api.load_volume(files[3][0]), api.load_volume(files[1][0])]
    picks = api.suggest_pool(model, vols, [None, files[1][1]], n=3, tta=False, score="foreground-entropy")  # the earlier default
    assert len(picks) == 3
    ann1 = api.annotated_slices(files[1][1], vols[1])
    assert all(not ann1[p["slice"]] for p in picks if p["volume"] == 1)
    assert {p["volume"] for p in picks[:2]} == {0, 1}  # spread over both scans first
    # the command ranks over several scans too (one --labels per --image)
    capsys.readouterr()
    assert main(["suggest", "--model", model, "--image", files[3][0], "--image", files[1][0], "--labels", files[3][1], "--labels", files[1][1],
                 "-n", "3", "--no-tta", "--json"]) == 0
    multi = json.loads(capsys.readouterr().out)["suggestions"]
    assert len(multi) == 3 and {p["volume"] for p in multi} == {0, 1}
    ann = [api.annotated_slices(files[3][1], vols[0]), ann1]
    assert all(p["image"] == [files[3][0], files[1][0]][p["volume"]] and not ann[p["volume"]][p["slice"]] for p in multi)
    preds = [api.predict(model, v) for v in vols]
    again = api.suggest_pool(model, vols, [None, files[1][1]], n=3, predictions=preds, score="foreground-entropy")
    assert again == picks  # same ranking from precomputed predictions
    # the structure-weighted score: entropy x P(not background), slice mean
    fg = api.suggest_pool(model, vols, [None, files[1][1]], n=3, predictions=preds, score="foreground-entropy")
    p0 = preds[fg[0]["volume"]]
    expect = (p0.uncertainty * (1 - p0.probabilities[0])).reshape(p0.labels.shape[0], -1).mean(1)
    assert np.isclose(fg[0]["uncertainty"], expect[fg[0]["slice"]], atol=1e-6)
    with pytest.raises(NapariSSLError, match="unknown slice score"):
        api.suggest_pool(model, vols, n=1, predictions=preds, score="nope")
    assert fg == again
    typ = api.suggest_pool(model, vols, [None, files[1][1]], n=3)  # the default now: typiclust in the model encoder's embedding
    assert len(typ) == 3 and typ[0]["volume"] == 0 and all("reason" in p for p in typ)  # scan 1 holds annotations already
    assert all(not ann1[p["slice"]] for p in typ if p["volume"] == 1)
    plain = api.suggest_pool(model, vols, [None, files[1][1]], n=3, predictions=preds, score="entropy")
    assert np.isclose(plain[0]["uncertainty"], preds[plain[0]["volume"]].slice_uncertainty[plain[0]["slice"]], atol=1e-6)
    assert api.suggest(model, vols[0], n=2, prediction=preds[0], score="entropy") == suggest_slices(preds[0].slice_uncertainty, n=2)
    expected = suggest_slices(slice_scores(preds[0], "foreground-entropy"), n=2)
    assert api.suggest(model, vols[0], n=2, prediction=preds[0], score="foreground-entropy") == expected
    # save_prediction from the API writes the source geometry too
    api.save_prediction(preds[0], files[3][0], tmp_path / "api.nii.gz", uncertainty=tmp_path / "u.nii.gz")
    _same_geometry(tmp_path / "api.nii.gz", files[3][0])
    # labels from a napari Labels layer (a numpy array on the canonical grid) are accepted
    arr = np.zeros(vols[0].shape, np.uint8)
    arr[5, 10, 10] = 1
    p2 = api.suggest(model, vols[0], arr, n=40, prediction=preds[0])
    assert 5 not in [p["slice"] for p in p2] and len(p2) == vols[0].shape[0] - 1


def _bad_model(model, tmp_path, name, **changes):
    d = tmp_path / name
    shutil.copytree(model, d)
    meta = json.loads((d / "model.json").read_text())
    meta.update(changes)
    (d / "model.json").write_text(json.dumps(meta))
    return str(d)


def test_bad_inputs_are_one_line_errors(model, files, tmp_path, capsys):
    img3, lab3 = files[3]
    shifted = tmp_path / "shifted.nii.gz"
    s = sitk.ReadImage(lab3)
    s.SetOrigin(tuple(o + 5.0 for o in s.GetOrigin()))
    sitk.WriteImage(s, str(shifted))
    three = tmp_path / "three.nii.gz"
    t = sitk.ReadImage(lab3)
    a = sitk.GetArrayFromImage(t)
    a[a == 2] = 3
    t3 = sitk.GetImageFromArray(a)
    t3.CopyInformation(t)
    sitk.WriteImage(t3, str(three))
    zero = tmp_path / "zero.nii.gz"
    z0 = sitk.GetImageFromArray(np.zeros_like(a))
    z0.CopyInformation(t)
    sitk.WriteImage(z0, str(zero))
    out = str(tmp_path / "o.nii.gz")
    cases = [
        (["predict", "--model", str(tmp_path), "--image", img3, "--out", out], "no model.json"),
        (["predict", "--model", _bad_model(model, tmp_path, "enc", encoder_name="resnet34"), "--image", img3, "--out", out],
         "weights do not match the resnet34 encoder"),
        (["predict", "--model", _bad_model(model, tmp_path, "ch", in_channels=3), "--image", img3, "--out", out], "3 channel(s)"),
        (["predict", "--model", model, "--image", img3, "--out", str(tmp_path / "missing" / "o.nii.gz")], "output folder does not exist"),
        (["predict", "--model", model, "--image", str(tmp_path / "nope.nii.gz"), "--out", out], "nope.nii.gz"),
        (["suggest", "--model", model, "--image", img3, "--labels", files[1][1]], "does not match the image shape"),
        (["suggest", "--model", model, "--image", img3, "--labels", str(shifted)], "geometry"),
        (["suggest", "--model", model, "--image", img3, "--labels", str(three)], "label index 3 has no class"),
        (["suggest", "--model", model, "--image", img3, "-n", "0"], "-n must be at least 1"),
        (["suggest", "--model", model, "--image", img3, "--empty-slices", "999"], "outside the volume"),
        (["finetune", "--image", img3, "--labels", str(zero), "--out", str(tmp_path / "ft"), "--steps", "1"], "no annotated slice"),
        (["finetune", "--image", img3, "--labels", lab3, "--classes", "anterior", "--out", str(tmp_path / "ft"), "--steps", "1"],
         "label index 2 has no class name"),
    ]
    capsys.readouterr()
    for argv, msg in cases:
        rc = main(argv)
        cap = capsys.readouterr()
        err = cap.err.strip()
        assert rc != 0 and msg in err and len(err.splitlines()) == 1 and "Traceback" not in err, (argv[0], msg, err)
    assert not os.path.exists(out) and not (tmp_path / "ft").exists()
    # the real command (a separate process): exit status 2, one line on stderr, no traceback
    r = subprocess.run([sys.executable, "-m", "napari_ssl.cli", "suggest", "--model", model, "--image", img3, "--labels", files[1][1]],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "does not match the image shape" in lines[0], r.stderr
