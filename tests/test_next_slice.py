"""Next slice inside a study (gap / expected-error) and the cold start across studies, on real hippocampus volumes."""
import numpy as np
import pytest

from napari_ssl import api
from napari_ssl.active.cold_start import cold_start_pool, kmeans, typiclust_picks
from napari_ssl.active.next_slice import expected_error, predicted_extent, rank_next_slices, stretches
from napari_ssl.errors import NapariSSLError


@pytest.fixture(scope="module")
def case(hippo_dir):
    lab = np.asarray(api.load_volume(hippo_dir / "labels" / "hippocampus_001.nii.gz").array).astype(np.uint8)
    zs = np.flatnonzero(lab.reshape(lab.shape[0], -1).any(1))
    return lab, int(zs[0]), int(zs[-1])


def test_gap_halves_the_largest_stretch_of_the_extent(case):
    lab, z0, z1 = case
    ann = np.zeros(lab.shape[0], bool)
    mid = (z0 + z1) // 2
    ann[mid] = True
    assert predicted_extent(lab, ann) == (z0, z1)
    st = stretches(lab, ann)
    assert {(s["from"], s["to"]) for s in st} == {(z0 - 1, mid), (mid, z1 + 1)}
    picks = rank_next_slices(lab, ann, np.where(ann[:, None, None], lab, 0), n=4, strategy="gap")
    zs = [p["slice"] for p in picks]
    assert len(set(zs)) == 4 and not any(ann[z] for z in zs)
    assert all(z0 <= z <= z1 for z in zs)  # inside the structure, never in the empty margins
    first = st[0]
    assert zs[0] == first["slice"] and first["from"] < zs[0] < first["to"]
    # evenly spread: after 4 picks no stretch of the extent is longer than half the first one (+1 for rounding)
    ann2 = ann.copy()
    ann2[zs] = True
    assert max(s["length"] for s in stretches(lab, ann2)) <= (max(mid - z0, z1 - mid) + 1) // 2 + 1
    assert "largest unannotated stretch" in picks[0]["reason"]


def test_gap_with_a_fully_drawn_extent_goes_just_beyond_it(case):
    lab, z0, z1 = case
    ann = np.zeros(lab.shape[0], bool)
    ann[z0:z1 + 1] = True
    (p,) = rank_next_slices(lab, ann, lab, n=1, strategy="gap")
    assert not ann[p["slice"]] and p["slice"] in (z0 - 1, z1 + 1)


def test_expected_error_finds_the_slice_the_completion_gets_wrong(case):
    lab, z0, z1 = case
    k = 3
    prob = (np.arange(k)[:, None, None, None] == lab[None]).astype(np.float32)  # a model sure of the truth
    comp = lab.copy()
    bad = z0 + 3
    comp[bad] = 0  # the completion misses the structure on one slice
    ann = np.zeros(lab.shape[0], bool)
    ann[(z0 + z1) // 2] = True
    e = expected_error(prob, comp, ann)
    assert int(np.argmax(e)) == bad and e[bad] == (lab[bad] > 0).sum()
    assert e[ann].sum() == 0
    for window in (0, 2, -1):
        (p,) = rank_next_slices(comp, ann, np.where(ann[:, None, None], lab, 0), n=1, strategy="expected-error", probabilities=prob, window=window)
        assert abs(p["slice"] - bad) <= max(window, 0) + 1 and not ann[p["slice"]]
    with pytest.raises(NapariSSLError):
        rank_next_slices(comp, ann, n=1, strategy="expected-error")


def test_never_an_annotated_slice_and_bad_input(case):
    lab, _, _ = case
    ann = np.ones(lab.shape[0], bool)
    ann[[3, 20]] = False
    for strategy in ("gap", "expected-error"):
        prob = np.full((3, *lab.shape), 1 / 3, np.float32)
        picks = rank_next_slices(lab, ann, lab, n=5, strategy=strategy, probabilities=prob)
        assert sorted(p["slice"] for p in picks) == [3, 20]
    with pytest.raises(NapariSSLError, match="annotated-slice mask"):
        rank_next_slices(lab, ann[:-1], n=1)
    with pytest.raises(NapariSSLError, match="unknown next-slice strategy"):
        rank_next_slices(lab, ann, n=1, strategy="dice-roll")


def test_kmeans_and_typiclust_cover_separate_groups():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8) * 5
    x = np.concatenate([c + rng.normal(0, 0.1, (30, 8)) for c in centres]).astype(np.float32)
    lab = kmeans(x, 4, seed=1)
    assert len({tuple(np.bincount(lab[i * 30:(i + 1) * 30], minlength=4).nonzero()[0]) for i in range(4)}) == 4
    index = [(i // 10, i % 10) for i in range(120)]  # 12 "volumes" of 10 slices
    picks = typiclust_picks(x, index, 4, seed=0)
    assert sorted(p["volume"] // 3 for p in picks) == [0, 1, 2, 3]  # one pick per group
    ann = {(picks[0]["volume"], picks[0]["slice"])}
    more = typiclust_picks(x, index, 3, ann, seed=0)
    assert (picks[0]["volume"], picks[0]["slice"]) not in {(p["volume"], p["slice"]) for p in more}
    assert picks[0]["volume"] // 3 not in {p["volume"] // 3 for p in more}  # the covered group is not picked again


@pytest.fixture(scope="module")
def vols(hippo_dir):
    return ([hippo_dir / "images" / f"hippocampus_{n:03d}.nii.gz" for n in (1, 3, 4, 6)],
            [hippo_dir / "labels" / f"hippocampus_{n:03d}.nii.gz" for n in (1, 3, 4, 6)])


def test_cold_start_from_a_pretrained_encoder_picks_diverse_slices(vols, tmp_path, capsys):
    """A (briefly) pretrained compact encoder, no model yet: API and CLI pick slices spread over studies, never annotated."""
    import json

    from napari_ssl.cli import main

    imgs, _ = vols
    enc = api.pretrain("inpainting", [str(p) for p in imgs], tmp_path / "enc", steps=2, batch_size=4, image_size=32,
                       encoder="mobilenetv3-small-lite", devices="cpu")
    depth = [api.load_volume(p).shape[0] for p in imgs]
    ann = [np.zeros(d, bool) for d in depth]
    ann[0][10] = True
    picks = cold_start_pool(enc, imgs, n=4, annotated=ann, seed=0)
    assert len(picks) == 4 and len({p["volume"] for p in picks}) >= 3
    assert (0, 10) not in {(p["volume"], p["slice"]) for p in picks}
    assert len({p["slice"] for p in picks}) >= 2 and all("similar-looking slices" in p["reason"] for p in picks)
    got = api.suggest_pool(enc, imgs, n=3)  # a pretrained encoder as "model": the cold start
    assert len(got) == 3 and len({p["volume"] for p in got}) == 3
    capsys.readouterr()
    assert main(["suggest", "--model", str(enc), "--image", str(imgs[0]), "--image", str(imgs[1]), "-n", "2", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["suggestions"]
    assert len(cli) == 2 and {p["image"] for p in cli} == {str(imgs[0]), str(imgs[1])}
    assert main(["suggest", "--model", str(enc), "--image", str(imgs[0]), "--score", "entropy"]) == 2
    assert "needs a fine-tuned model" in capsys.readouterr().err


def test_default_next_slice_in_one_study_api_and_cli(vols, tmp_path, capsys):
    """api.suggest / napari-ssl suggest in one study: the default ranking (expected error of the completed result)."""
    import json

    from napari_ssl.cli import main

    imgs, labs = vols
    model = api.finetune(imgs[:1], labs[:1], tmp_path / "m", classes="anterior,posterior", steps=3, image_size=32, batch_size=2,
                         encoder="mobilenetv3-small-lite", preview_every_s=0.0, seed=0, semi_supervised=False)
    full = np.asarray(api.load_volume(labs[1]).array).astype(np.uint8)
    zs = np.flatnonzero(full.reshape(full.shape[0], -1).any(1))
    drawn = [int(zs[len(zs) // 3]), int(zs[2 * len(zs) // 3])]
    sparse = np.zeros_like(full)
    sparse[drawn] = full[drawn]
    picks = api.suggest(model, imgs[1], sparse, n=3)
    assert [p["rank"] for p in picks] == [1, 2, 3] and all(p["strategy"] == "expected-error" for p in picks)
    assert not set(p["slice"] for p in picks) & set(drawn) and len({p["slice"] for p in picks}) == 3
    assert "may be wrong" in picks[0]["reason"] and picks[0]["score"] >= picks[1]["score"] - 1e-9
    gap = api.suggest(model, imgs[1], sparse, n=1, score="gap")
    assert gap[0]["strategy"] == "gap" and gap[0]["slice"] not in drawn
    capsys.readouterr()
    assert main(["suggest", "--model", model, "--image", str(imgs[1]), "--labels", str(labs[1]), "-n", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith("1. slice ") and "may be wrong" in out[0]
    assert main(["suggest", "--model", model, "--image", str(imgs[1]), "-n", "2", "--json", "--score", "gap"]) == 0
    assert all("largest unannotated stretch" in p["reason"] for p in json.loads(capsys.readouterr().out)["suggestions"])


def test_prediction_path_records_the_expected_error_of_the_completion(case):
    """respect_annotation (the prediction path with the user's labels) gives per slice the expected wrong voxels of the
    completed result under the model's probabilities as predicted, the same as next_slice.expected_error on them."""
    from napari_ssl.active.predict import Prediction
    from napari_ssl.active.respect_annotation import respect_annotation

    lab, z0, z1 = case
    rng = np.random.default_rng(0)
    logits = 2.0 * (np.arange(3)[:, None, None, None] == np.roll(lab, 2, axis=1)[None]) + rng.normal(0, 0.8, (3, *lab.shape))
    prob = (np.exp(logits) / np.exp(logits).sum(0, keepdims=True)).astype(np.float32)
    raw = prob.copy()
    pred = Prediction(labels=prob.argmax(0).astype(np.uint8), probabilities=prob, uncertainty=np.zeros(lab.shape, np.float32),
                      slice_uncertainty=np.zeros(lab.shape[0], np.float32), class_names=["a", "b"], passes=1, method="single")
    ann = np.zeros(lab.shape[0], bool)
    ann[[z0 + 4, z1 - 4]] = True
    out = respect_annotation(pred, np.where(ann[:, None, None], lab, 0), ann, keep_connected=True, fill_between=True)
    expect = expected_error(raw, out.labels, ann)
    assert out.slice_error is not None and np.allclose(out.slice_error, expect, rtol=1e-4, atol=1e-2)
    assert out.slice_error[ann].sum() == 0 and out.slice_error.max() > 0
