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


def test_cold_start_on_real_volumes_picks_diverse_slices(hippo_dir, tmp_path):
    """The encoder of a briefly fine-tuned compact U-Net: picks spread over studies and depths, never annotated."""
    imgs = [hippo_dir / "images" / f"hippocampus_{n:03d}.nii.gz" for n in (1, 3, 4, 6)]
    labs = [hippo_dir / "labels" / f"hippocampus_{n:03d}.nii.gz" for n in (1, 3, 4, 6)]
    model = api.finetune(imgs[:1], labs[:1], tmp_path / "m", classes="anterior,posterior", steps=3, image_size=32, batch_size=2,
                         encoder="mobilenetv3-small-lite", preview_every_s=0.0, seed=0, semi_supervised=False)
    depth = [api.load_volume(p).shape[0] for p in imgs]
    ann = [np.zeros(d, bool) for d in depth]
    ann[0][10] = True
    picks = cold_start_pool(model, imgs, n=4, annotated=ann, seed=0)
    assert len(picks) == 4 and len({p["volume"] for p in picks}) >= 3
    assert (0, 10) not in {(p["volume"], p["slice"]) for p in picks}
    assert len({p["slice"] for p in picks}) >= 2 and all("similar-looking slices" in p["reason"] for p in picks)
