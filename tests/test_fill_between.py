"""Fill between slices (ITK morphological contour interpolation) on real hippocampus labels."""
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from napari_ssl import api
from napari_ssl.active.fill_between import fill_between_slices


def _quantile_slices(lab: np.ndarray, k: int) -> list[int]:
    zs = np.flatnonzero(lab.reshape(lab.shape[0], -1).any(1))
    return sorted({int(round(zs[0] + (zs[-1] - zs[0]) * (i + 1) / (k + 1))) for i in range(k)})


def _dice(a, b, c):
    p, t = a == c, b == c
    return 2 * (p & t).sum() / max(1, p.sum() + t.sum())


def test_fill_between_interpolates_real_labels_and_keeps_the_users_slices(hippo_dir):
    scores = []
    files = sorted((hippo_dir / "labels").glob("*.nii.gz"))
    for path in files[200::15]:  # 4 of the held-out volumes
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.uint8)
        idx = _quantile_slices(lab, 3)
        ann = np.zeros(lab.shape[0], bool)
        ann[idx] = True
        sparse = np.where(ann[:, None, None], lab, 0)
        sparse[lab.shape[0] - 1] = 0
        ann_e = ann.copy()
        ann_e[lab.shape[0] - 1] = True  # an annotated-empty end slice
        out = fill_between_slices(sparse, ann_e)
        assert np.array_equal(out[ann], lab[ann]), "annotated slices must come back exactly as drawn"
        assert not out[lab.shape[0] - 1].any(), "an annotated-empty slice must stay empty"
        between = slice(idx[0] + 1, idx[-1])
        assert out[between].any(), "slices between the annotated ones are filled"
        scores.append(np.mean([_dice(out, lab, c) for c in (1, 2)]))
    assert np.mean(scores) > 0.45, scores


def test_fill_between_cli_writes_the_labels_geometry(tmp_path, hippo_dir):
    src = sorted((hippo_dir / "labels").glob("*.nii.gz"))[240]
    img = sitk.ReadImage(str(src))
    lab = sitk.GetArrayFromImage(img).astype(np.uint8)
    sparse = np.zeros_like(lab)
    for z in _quantile_slices(lab, 2):
        sparse[z] = lab[z]
    sp = sitk.GetImageFromArray(sparse)
    sp.CopyInformation(img)
    sitk.WriteImage(sp, str(tmp_path / "sparse.nii.gz"))
    out = tmp_path / "filled.nii.gz"
    r = subprocess.run([sys.executable, "-m", "napari_ssl.cli", "fill-between", "--labels", str(tmp_path / "sparse.nii.gz"),
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = sitk.ReadImage(str(out))
    assert got.GetSize() == img.GetSize() and np.allclose(got.GetDirection(), img.GetDirection()) and np.allclose(got.GetOrigin(), img.GetOrigin())
    arr = sitk.GetArrayFromImage(got)
    assert (arr > 0).sum() > (sparse > 0).sum()
    vol = api.load_volume(str(tmp_path / "sparse.nii.gz"))
    assert np.array_equal(api.fill_between(str(tmp_path / "sparse.nii.gz")), api.load_volume(str(out)).array)
    assert vol.shape == api.load_volume(str(out)).shape


def test_fill_between_bad_input_is_one_line():
    import pytest

    from napari_ssl.errors import NapariSSLError

    with pytest.raises(NapariSSLError, match="annotated-slice mask"):
        fill_between_slices(np.zeros((4, 5, 5), np.uint8), [True, False])
    with pytest.raises(NapariSSLError, match="integer labels"):
        fill_between_slices(np.zeros((4, 5, 5), np.float32))
