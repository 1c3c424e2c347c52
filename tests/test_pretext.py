"""Pretext methods (in-painting, rotation, relative position, offset heatmap) on real MR slices.

Losses and targets are checked against the published definitions on fixed inputs (hole-weighted
reconstruction, 4-way rotation cross-entropy, Doersch neighbour labels, Blendowski offset heatmaps);
the patch geometry is checked by finding every cut patch again in the real slices it came from.
Each method then trains briefly on a fixed batch of real slices: its loss, averaged over fixed random
draws, must fall clearly, and its encoder must load strictly into smp.Unet.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_ssl.data.cache import PreparedVolume
from napari_ssl.data.normalize import default_spec, normalize
from napari_ssl.data.slices import SliceDataset
from napari_ssl.errors import NapariSSLError
from napari_ssl.io.nifti import read_itk_volume
from napari_ssl.io.orientation import canonicalize
from napari_ssl.pretext import METHODS, get_method
from napari_ssl.pretext.inpainting import random_holes
from napari_ssl.pretext.offset_heatmap import gaussian_heatmaps
from napari_ssl.pretext.relative_position import NEIGHBOURS, grid_geometry
from napari_ssl.pretext.rotation import rotate_batch

PRETEXT = ["inpainting", "rotation", "relative-position", "offset-heatmap"]


# ---------------------------------------------------------------------------------------------
# real data
def _volumes(hippo_dir, n):
    out = []
    for path in sorted((hippo_dir / "images").glob("hippocampus_*.nii.gz"))[:n]:
        vol = canonicalize(read_itk_volume(str(path)))
        out.append(normalize(vol.array, default_spec(vol.modality)).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def vols(hippo_dir):
    """8 real normalised MR volumes (z, y, x) in [0, 1]."""
    return _volumes(hippo_dir, 8)


def stacks(vols, size, channels=1, dz=0, per_volume=3):
    """Real (N, C, size, size) slice stacks (bilinear-resized to size) around z; with dz also the stacks dz away."""
    imgs, ctx = [], []
    for arr in vols:
        d = arr.shape[0]
        for z in np.linspace(d * 0.35, d * 0.65, per_volume).astype(int):
            lo = z - channels // 2
            imgs.append(arr[lo : lo + channels])
            if dz:
                ctx.append(arr[lo + dz : lo + dz + channels])
    def rs(a):
        t = [torch.from_numpy(np.ascontiguousarray(s))[None] for s in a]
        return torch.cat([F.interpolate(s, size=(size, size), mode="bilinear", align_corners=False) for s in t]).clamp(0, 1)
    return (rs(imgs), rs(ctx)) if dz else rs(imgs)


def locate(patch, image):
    """Every (row, col) where the (C, p, p) `patch` occurs exactly in the (C, H, W) `image`."""
    p = patch.shape[-1]
    win = image.unfold(1, p, 1).unfold(2, p, 1)  # (C, H-p+1, W-p+1, p, p)
    eq = (win == patch[:, None, None]).flatten(3).all(-1).all(0)
    return [tuple(int(v) for v in rc) for rc in eq.nonzero()]


def place(patch, image, row, col, tol):
    """Where `patch` was cut from `image`, among the places within `tol` pixels of (row, col) (None if nowhere)."""
    hits = [(r, c) for r, c in locate(patch, image) if abs(r - row) <= tol and abs(c - col) <= tol]
    return hits[0] if hits else None


# ---------------------------------------------------------------------------------------------
# registry
def test_registry_has_all_ten_methods_in_order():
    assert list(METHODS) == ["inpainting", "rotation", "relative-position", "offset-heatmap",
                             "byol", "simclr", "moco", "simsiam", "barlow-twins", "vicreg"]
    for name in PRETEXT:
        assert METHODS[name].kind == "pretext" and METHODS[name].summary
    with pytest.raises(NapariSSLError, match="unknown method 'mae'.*inpainting"):
        get_method("mae")
    with pytest.raises(NapariSSLError, match="no option 'holez'"):
        get_method("inpainting")("resnet18", 1, 32, holez=3)


# ---------------------------------------------------------------------------------------------
# in-painting
def test_inpainting_loss_is_hole_weighted_reconstruction(vols):
    x = stacks(vols[:2], 32, channels=3, per_volume=2)  # (4, 3, 32, 32): 2.5D input
    for loss, w in (("l1", 0.9), ("mse", 0.7)):
        m = get_method("inpainting")("resnet18", 3, 32, loss=loss, hole_weight=w)
        g = torch.Generator().manual_seed(1)
        masked, mask, pred, target = m._forward({"image": x}, generator=g)
        # holes are cut into every channel (filled with the sample's mean), the context is untouched,
        # and the target is the middle slice of the stack
        assert torch.equal(target, x[:, 1:2])
        hole = mask.bool().expand_as(x)
        assert torch.equal(masked[~hole], x[~hole])
        fill = x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
        assert torch.allclose(masked[hole], fill[hole])
        assert 0 < float(mask.mean()) < 0.6
        # published form: w * mean error over the hole pixels + (1 - w) * mean error over the context
        pred = pred.detach().clone().requires_grad_(True)
        got, hole_err = m._reconstruction(pred, target, mask)
        e = (pred - target).abs() if loss == "l1" else (pred - target) ** 2
        h = mask.bool()
        want = w * e[h].mean() + (1 - w) * e[~h].mean()
        assert abs(float(got) - float(want)) < 1e-6 and abs(float(hole_err) - float(e[h].mean())) < 1e-6
        # each hole pixel weighs w/|holes|, each context pixel (1-w)/|context|: holes dominate
        got.backward()
        gabs = pred.grad.abs()
        if loss == "l1":
            assert torch.allclose(gabs[h], torch.full_like(gabs[h], w / int(h.sum())), rtol=1e-4)
            assert torch.allclose(gabs[~h], torch.full_like(gabs[~h], (1 - w) / int((~h).sum())), rtol=1e-4)


def test_random_holes_respect_sizes_and_count():
    g = torch.Generator().manual_seed(0)
    mask = random_holes(64, 40, 1, 0.25, 0.25, "cpu", g)  # one 10 x 10 hole each
    assert mask.shape == (64, 1, 40, 40)
    assert torch.equal(mask.sum(dim=(1, 2, 3)), torch.full((64,), 100.0))
    rows = mask[:, 0].amax(2).sum(1)
    assert torch.equal(rows, torch.full((64,), 10.0))  # a rectangle: 10 rows, 10 columns
    many = random_holes(256, 40, 3, 0.1, 0.3, "cpu", g)
    area = many.mean(dim=(1, 2, 3))
    assert float(area.min()) >= 16 / 1600 - 1e-6 and float(area.max()) <= 3 * 144 / 1600 + 1e-6
    assert len(torch.unique(area)) > 20  # sizes, places and number of holes vary


def test_adversarial_inpainting_alternates_discriminator_and_unet_updates(vols):
    x = stacks(vols[:4], 32, per_volume=2)
    torch.manual_seed(0)
    m = get_method("inpainting")("resnet18", 1, 32, adv_weight=0.01, disc_width=8)
    assert m.adversarial and m.find_unused_parameters
    opts = m.configure_optimizers(1e-3, 0.0, 10)
    assert len(opts) == 2
    unet_params, disc_params = list(m.unet.parameters()), list(m.discriminator.parameters())
    assert {id(p) for g in opts[0].param_groups for p in g["params"]} == {id(p) for p in unet_params}
    assert {id(p) for g in opts[1].param_groups for p in g["params"]} == {id(p) for p in disc_params}
    seen = []

    def backward(loss):  # record who gets gradients from each backward pass
        disc_before = [None if p.grad is None else p.grad.clone() for p in disc_params]
        loss.backward()
        seen.append({
            "unet": any(p.grad is not None and p.grad.abs().sum() > 0 for p in unet_params),
            "disc_changed": any((b is None) != (p.grad is None) or (b is not None and not torch.equal(b, p.grad))
                                for b, p in zip(disc_before, disc_params)),
        })

    u0 = [p.detach().clone() for p in unet_params]
    d0 = [p.detach().clone() for p in disc_params]
    out = m.optimize_step({"image": x}, opts, backward)
    # 1) discriminator step: only the discriminator gets gradients (U-Net output detached)
    # 2) U-Net step: reconstruction + adversarial; the discriminator is frozen, its gradients untouched
    assert seen == [{"unet": False, "disc_changed": True}, {"unet": True, "disc_changed": False}]
    assert any(not torch.equal(a, p) for a, p in zip(u0, unet_params))
    assert any(not torch.equal(a, p) for a, p in zip(d0, disc_params))
    assert all(p.requires_grad for p in disc_params)  # unfrozen again
    for key in ("loss", "reconstruction", "adversarial", "discriminator", "hole_error"):
        assert torch.isfinite(out[key])
    assert abs(float(out["loss"]) - float(out["reconstruction"] + 0.01 * out["adversarial"])) < 1e-5


# ---------------------------------------------------------------------------------------------
# rotation
def test_rotation_labels_and_cross_entropy(vols):
    x = stacks(vols[:3], 32, per_volume=4)
    k = torch.tensor([0, 1, 2, 3] * 3)
    rot = rotate_batch(x, k)
    for i in range(len(x)):  # label k = k quarter turns (numpy's rot90 on the slice plane)
        assert np.array_equal(rot[i, 0].numpy(), np.rot90(x[i, 0].numpy(), int(k[i])))
    m = get_method("rotation")("resnet18", 1, 32)
    m.eval()  # BatchNorm with running statistics: every forward pass below gives the same features
    torch.manual_seed(3)
    out = m.training_loss({"image": x})
    torch.manual_seed(3)
    labels = torch.randint(0, 4, (len(x),))
    with torch.no_grad():
        logits = torch.cat([m.head(m.pooled_features(torch.from_numpy(np.rot90(x[i].numpy(), int(labels[i]), axes=(1, 2)).copy())[None]))
                            for i in range(len(x))])
    # 4-way cross-entropy: mean of -log softmax(logits)[true rotation]
    want = -(torch.log_softmax(logits.double(), 1)[torch.arange(len(x)), labels]).mean()
    assert abs(float(out["loss"]) - float(want)) < 1e-4
    assert abs(float(out["accuracy"]) - float((logits.argmax(1) == labels).float().mean())) < 1e-6


# ---------------------------------------------------------------------------------------------
# relative position (Doersch)
def test_relative_position_labels_match_patch_geometry(vols):
    size = 48
    m = get_method("relative-position")("resnet18", 1, size, hidden=32)
    cell, patch, base, jit = m.cell, m.patch, m.base, m.jit
    assert (cell, patch) == (16, 12) and jit >= 1 and m.num_classes == 8
    x = stacks(vols, size, per_volume=4)  # 32 real slices
    torch.manual_seed(0)
    ref, qry, label = m.make_pairs({"image": x})
    assert ref.shape == qry.shape == (32, 1, patch, patch)
    assert set(label.tolist()) >= {0, 7} and label.max() < 8
    for i in range(len(x)):
        # the reference lies in the centre cell; the query in neighbour NEIGHBOURS[label] (row, col), up to jitter
        r0, c0 = place(ref[i], x[i], cell + base, cell + base, jit)
        row, col = NEIGHBOURS[int(label[i])]
        r1, c1 = place(qry[i], x[i], row * cell + base, col * cell + base, jit)
        dr, dc = r1 - r0, c1 - c0  # so the direction from reference to query gives the class
        assert (np.sign(dr) if abs(dr) > 2 * jit else 0, np.sign(dc) if abs(dc) > 2 * jit else 0) == (row - 1, col - 1)
        # patches never overlap: the gap is real
        assert max(abs(dr), abs(dc)) >= patch


def test_relative_position_through_plane_classes_25d(vols):
    size, dz = 48, 3
    m = get_method("relative-position")("resnet18", 3, size, hidden=32, distance=dz)
    assert m.num_classes == 10 and m.context_request(size, 3, m.opts) == (dz, 0)
    assert get_method("relative-position").context_request(size, 1, m.opts) is None  # 1 channel: in-plane only
    image, ctx = stacks(vols, size, channels=3, dz=dz, per_volume=4)
    # half the stacks are below (+dz), half above (-dz): swap image and context for the "above" ones
    sign = torch.tensor([1, -1] * (len(image) // 2))
    img = torch.where(sign[:, None, None, None] > 0, image, ctx)
    con = torch.where(sign[:, None, None, None] > 0, ctx, image)
    torch.manual_seed(1)
    counts = np.zeros(10, int)
    for _ in range(3):
        ref, qry, label = m.make_pairs({"image": img, "context": con, "context_dz": sign * dz})
        counts += np.bincount(label.numpy(), minlength=10)
        centre = m.cell + m.base
        for i in range(len(img)):
            assert place(ref[i], img[i], centre, centre, m.jit) is not None
            if label[i] >= 8:
                # through-plane: the query is the centre patch of the stack dz away; 8 = above, 9 = below
                assert int(label[i]) == (8 if sign[i] < 0 else 9)
                assert place(qry[i], con[i], centre, centre, m.jit) is not None
                assert place(qry[i], img[i], centre, centre, m.jit) is None
            else:
                row, col = NEIGHBOURS[int(label[i])]
                assert place(qry[i], img[i], row * m.cell + m.base, col * m.cell + m.base, m.jit) is not None
    assert counts[8] > 0 and counts[9] > 0 and counts[:8].sum() > 0


def test_relative_position_minimum_size_is_enforced():
    cls = get_method("relative-position")
    smallest = cls.min_image_size(1, cls.options)
    cell, patch, _, _ = grid_geometry(smallest, cls.options["gap"], cls.options["jitter"])
    assert patch >= 8 and grid_geometry(smallest - 1, cls.options["gap"], cls.options["jitter"])[1] < 8
    with pytest.raises(NapariSSLError, match="--image-size"):
        cls("resnet18", 1, smallest - 1)


# ---------------------------------------------------------------------------------------------
# offset heatmap (Blendowski)
def test_offset_heatmap_target_is_a_gaussian_centred_on_the_shift():
    shift = torch.tensor([[0, 0], [-8, 8], [3, -5], [8, -8], [-1, 2]])
    hm = gaussian_heatmaps(shift, max_shift=8, size=17, sigma=1.5)  # 17 cells for shifts -8..8: one cell per pixel
    r = torch.arange(17.0)
    for i, (dy, dx) in enumerate(shift.tolist()):
        peak = divmod(int(hm[i].argmax()), 17)
        assert peak == (dy + 8, dx + 8) and abs(float(hm[i].max()) - 1.0) < 1e-6
        want = torch.exp(-((r[:, None] - (dy + 8)) ** 2 + (r[None, :] - (dx + 8)) ** 2) / (2 * 1.5**2))
        assert torch.allclose(hm[i], want, atol=1e-6)
    # coarser grid: the centre falls between cells; the Gaussian's centre of mass still maps back to the shift
    hm = gaussian_heatmaps(torch.tensor([[2, -3]]), max_shift=6, size=9, sigma=2.0)[0]
    w = hm / hm.sum()
    cy, cx = float((w.sum(1) * torch.arange(9.0)).sum()), float((w.sum(0) * torch.arange(9.0)).sum())
    scale = 8 / 12  # cells per pixel
    # centre of mass is pulled toward the grid middle by truncation, so check the side and rough place
    assert abs(cy / scale - 6 - 2) < 1.0 and abs(cx / scale - 6 + 3) < 1.0


def test_offset_heatmap_pairs_come_from_the_stack_dz_away_shifted_by_the_target(vols):
    size, dz, ms = 32, 2, 6
    m = get_method("offset-heatmap")("resnet18", 3, size, distance=dz, max_shift=ms, heatmap_size=13, width=16)
    assert m.context_request(size, 3, m.opts) == (dz, ms)
    pv = [PreparedVolume(v.astype(np.float16), np.eye(4), "MR", f"g{i}", (1.0, 1.0, 1.0)) for i, v in enumerate(vols[:4])]
    ds = SliceDataset(pv, size, 3, context=(dz, ms), seed=0)
    batch = ds[list(range(0, len(ds), max(1, len(ds) // 12)))[:12]]
    assert batch["context"].shape[-1] == size + 2 * ms and set(batch["context_dz"].abs().tolist()) == {dz}
    ref, qry, shift = m._pairs(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ref, batch["image"])
    for i in range(len(ref)):
        j, z = int(batch["volume_index"][i]), int(batch["slice_index"][i])
        vol = torch.from_numpy(ds.volumes[j].astype(np.float32))
        # the reference: the stack around z; the query: the stack around z + dz, moved by (dy, dx)
        stack = lambda zc: vol[[min(max(zc + k, 0), vol.shape[0] - 1) for k in (-1, 0, 1)]]
        (y0, x0), = locate(ref[i], stack(z))
        zq = z + int(batch["context_dz"][i])
        dy, dx = shift[i].tolist()
        assert torch.equal(qry[i], stack(zq)[:, y0 + dy : y0 + dy + size, x0 + dx : x0 + dx + size])
    # the regression target peaks at the shift; the loss is MSE against the (scaled) Gaussian
    target = m._target(shift)
    for i in range(len(ref)):
        peak = divmod(int(target[i].argmax()), 13)
        assert peak == (shift[i, 0].item() + ms, shift[i, 1].item() + ms)  # 13 cells for shifts -6..6
    torch.manual_seed(5)
    out = m.training_loss(batch)
    torch.manual_seed(5)
    ref2, qry2, shift2 = m._pairs(batch)
    with torch.no_grad():
        want = F.mse_loss(m.predict(ref2, qry2), m._target(shift2))
    assert abs(float(out["loss"]) - float(want)) < 1e-4 * max(1.0, float(want))


# ---------------------------------------------------------------------------------------------
# short training: the loss falls, the encoder loads into smp.Unet
SHORT = {
    # (in_channels, image_size, options, steps, lr)
    "inpainting": (1, 32, dict(), 16, 2e-3),
    "inpainting-adversarial": (1, 32, dict(adv_weight=0.01, disc_width=8), 16, 2e-3),
    "rotation": (1, 32, dict(), 16, 1e-3),
    "relative-position": (1, 48, dict(hidden=64), 16, 1e-3),
    "relative-position-2.5d": (3, 48, dict(hidden=64, distance=2), 16, 1e-3),
    "offset-heatmap": (3, 32, dict(distance=2, max_shift=4, heatmap_size=9, width=32), 16, 1e-3),
}


def _fixed_batch(vols, channels, size, context):
    pv = [PreparedVolume(v.astype(np.float16), np.eye(4), "MR", f"g{i}", (1.0, 1.0, 1.0)) for i, v in enumerate(vols)]
    ds = SliceDataset(pv, size, channels, context=context, seed=0)
    return ds.fixed_batch(12)


def _mean_loss(m, batch, seeds=range(4)):
    """The loss on `batch` averaged over fixed random draws (holes, rotations, positions, shifts); BN in training mode."""
    m.train()
    vals = []
    with torch.no_grad():
        for s in seeds:
            torch.manual_seed(1000 + s)
            out = m.training_loss(batch)
            vals.append(float(out["loss"]))
    return float(np.mean(vals))


@pytest.mark.parametrize("case", list(SHORT))
def test_short_training_loss_falls_and_encoder_loads_into_unet(case, vols):
    import segmentation_models_pytorch as smp

    name = case.split("-adversarial")[0].replace("-2.5d", "")
    c, size, opts, steps, lr = SHORT[case]
    cls = get_method(name)
    torch.manual_seed(0)
    m = cls("resnet18", c, size, **opts)
    batch = _fixed_batch(vols, c, size, cls.context_request(size, c, m.opts))
    before = _mean_loss(m, batch)  # adversarial in-painting: training_loss is the reconstruction part
    opt = m.configure_optimizers(lr, 1e-4, steps)
    opts_list = list(opt) if isinstance(opt, (list, tuple)) else [opt]
    torch.manual_seed(0)
    for step in range(steps):
        m.train()
        out = m.optimize_step(batch, opts_list, lambda loss: loss.backward())
        m.on_train_step_end(step, steps)
        assert all(torch.isfinite(v) for v in out.values()), out
    after = _mean_loss(m, batch)
    # a clear fall, not noise: at least 10% of the starting value
    assert after < 0.9 * before, f"{case}: mean fixed-batch loss {before:.4f} -> {after:.4f}"
    unet = smp.Unet("resnet18", encoder_weights=None, in_channels=c, classes=1)
    unet.encoder.load_state_dict(m.encoder.state_dict(), strict=True)
