"""Batched augmentations on real MR slices (msd_hippocampus): shape/range, per-sample randomness,
seeded determinism, and 2.5D channels transformed together."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_ssl.data.augment import Augment, AugmentSpec, augment
from napari_ssl.data.normalize import default_spec, normalize
from napari_ssl.errors import NapariSSLError
from napari_ssl.io.nifti import read_itk_volume
from napari_ssl.io.orientation import canonicalize

SIZE = 40
OFF = dict(crop_scale_min=1.0, crop_scale_max=1.0, crop_ratio=1.0, hflip=0.0, vflip=0.0, rotate_deg=0.0,
           intensity_p=0.0, noise_p=0.0, blur_p=0.0)


@pytest.fixture(scope="module")
def slabs(hippo_dir):
    """(4, 3, SIZE, SIZE): 3 adjacent normalised axial slices around the middle of 4 real volumes."""
    out = []
    for path in sorted((hippo_dir / "images").glob("hippocampus_*.nii.gz"))[:4]:
        vol = canonicalize(read_itk_volume(str(path)))
        arr = normalize(vol.array, default_spec(vol.modality))
        z = arr.shape[0] // 2
        t = torch.from_numpy(np.ascontiguousarray(arr[z - 1 : z + 2]))[None]
        out.append(F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0])
    x = torch.stack(out).clamp(0, 1)
    assert x.std() > 0.05  # real anatomy, not a blank
    return x


def test_shape_dtype_range_kept(slabs):
    g = torch.Generator().manual_seed(0)
    spec = AugmentSpec(rotate_deg=15, vflip=0.5, noise_std=0.2, noise_p=1.0, brightness=0.5)
    for x in (slabs, slabs[:, 1:2], slabs[:, 1:2, :, : SIZE - 8].contiguous()):  # 2.5D, 1 channel, non-square
        y = augment(x, spec, g)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert not torch.equal(y, x)
    y64 = augment(slabs.double(), spec, g)
    assert y64.dtype == torch.float64


def test_identity_and_exact_flips(slabs):
    x = slabs
    assert torch.allclose(augment(x, AugmentSpec(**OFF)), x, atol=1e-5)
    assert torch.allclose(augment(x, AugmentSpec(**{**OFF, "hflip": 1.0})), x.flip(-1), atol=1e-5)
    assert torch.allclose(augment(x, AugmentSpec(**{**OFF, "vflip": 1.0})), x.flip(-2), atol=1e-5)


def test_crop_zooms_in(slabs):
    """A crop of a quarter of the area, resized back, equals bilinear upsampling of some 2x smaller window."""
    g = torch.Generator().manual_seed(3)
    spec = AugmentSpec(**{**OFF, "crop_scale_min": 0.25, "crop_scale_max": 0.25})
    x = slabs[:1, 1:2]
    y = augment(x, spec, g)
    # the zoomed view is smoother than the original at pixel scale (half the pixels spread over the whole view)
    tv = lambda a: (a[..., 1:, :] - a[..., :-1, :]).abs().mean() + (a[..., 1:] - a[..., :-1]).abs().mean()
    assert tv(y) < 0.75 * tv(x)


def test_each_sample_gets_its_own_parameters(slabs):
    x = slabs[:1].expand(6, -1, -1, -1).contiguous()  # six copies of one slab
    y = augment(x, AugmentSpec(noise_p=0.0), torch.Generator().manual_seed(1))
    for i in range(6):
        for j in range(i + 1, 6):
            assert (y[i] - y[j]).abs().max() > 1e-3, (i, j)


def test_seeded_determinism(slabs):
    spec = AugmentSpec(rotate_deg=10)
    a = augment(slabs, spec, torch.Generator().manual_seed(42))
    b = augment(slabs, spec, torch.Generator().manual_seed(42))
    c = augment(slabs, spec, torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    torch.manual_seed(7)
    d = Augment(spec)(slabs)
    torch.manual_seed(7)
    e = Augment(spec)(slabs)
    assert torch.equal(d, e)  # global RNG (what Lightning's seed_everything seeds) also reproduces


def test_25d_channels_transformed_consistently(slabs):
    # identical channels stay identical through crop/flip/rotation/intensity/blur (noise off: it is per voxel)
    same = slabs[:, 1:2].expand(-1, 3, -1, -1).contiguous()
    spec = AugmentSpec(rotate_deg=20, vflip=0.5, noise_p=0.0, blur_p=0.5, intensity_p=1.0)
    y = augment(same, spec, torch.Generator().manual_seed(5))
    assert torch.allclose(y[:, 0], y[:, 1], atol=1e-6) and torch.allclose(y[:, 1], y[:, 2], atol=1e-6)
    # real adjacent slices: each channel gets exactly the geometry the 1-channel path gives it with the same seed
    geo = AugmentSpec(**{**OFF, "crop_scale_min": 0.3, "hflip": 0.5, "vflip": 0.5, "rotate_deg": 20})
    y3 = augment(slabs, geo, torch.Generator().manual_seed(9))
    for k in range(3):
        yk = augment(slabs[:, k : k + 1].contiguous(), geo, torch.Generator().manual_seed(9))
        assert torch.allclose(y3[:, k : k + 1], yk, atol=1e-6)


def test_blur_smooths_and_noise_adds_noise(slabs):
    x = slabs[:, 1:2]
    blurred = augment(x, AugmentSpec(**{**OFF, "blur_p": 1.0, "blur_sigma": 1.5}), torch.Generator().manual_seed(2))
    hf = lambda a: (a[..., 1:] - a[..., :-1]).abs().mean(dim=(1, 2, 3))
    assert torch.all(hf(blurred) < hf(x))
    noisy = augment(x, AugmentSpec(**{**OFF, "noise_p": 1.0, "noise_std": 0.05}), torch.Generator().manual_seed(2))
    resid = (noisy - x).std(dim=(1, 2, 3))
    assert torch.all(resid > 0.002) and torch.all(resid < 0.06)


def test_bad_spec_is_a_user_error():
    with pytest.raises(NapariSSLError, match="crop scale"):
        AugmentSpec.from_options({"crop_scale_min": 0.9, "crop_scale_max": 0.5})
    with pytest.raises(NapariSSLError, match="hflip"):
        AugmentSpec.from_options({"hflip": 2})
