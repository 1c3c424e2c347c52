"""Joint-embedding methods (BYOL, SimCLR, MoCo, SimSiam, Barlow Twins, VICReg) and MICLe pairs.

Losses are checked against the published formulas written out here; each method trains briefly on
real MR slices (msd_hippocampus) on the CPU: the loss falls, the representation does not collapse,
momentum targets follow the online network, and the encoder loads strictly into smp.Unet.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_ssl.data.augment import AugmentSpec, augment
from napari_ssl.data.normalize import default_spec, normalize
from napari_ssl.errors import NapariSSLError
from napari_ssl.io.nifti import read_itk_volume
from napari_ssl.io.orientation import canonicalize
from napari_ssl.pretext import METHODS, get_method
from napari_ssl.pretext.pairs import make_views

JE_METHODS = ["byol", "simclr", "moco", "simsiam", "barlow-twins", "vicreg"]
SIZE = 32
BATCH = 12
STEPS = 14
# small heads keep the CPU run short; everything else is the method's default, except MoCo's momentum
# (0.99 suits runs of thousands of steps; in 14 steps its keys would barely leave their random init)
SMALL = {
    "byol": dict(proj_hidden_dim=256, proj_dim=64, pred_hidden_dim=256),
    "simclr": dict(proj_hidden_dim=256, proj_dim=64),
    "moco": dict(proj_hidden_dim=256, proj_dim=64, memory_bank_size=256, momentum_start=0.9),
    "simsiam": dict(proj_hidden_dim=256, proj_dim=256, pred_hidden_dim=64),
    "barlow-twins": dict(proj_hidden_dim=256, proj_dim=256),
    "vicreg": dict(proj_hidden_dim=256, proj_dim=256),
}


# ---------------------------------------------------------------------------------------------
# real data
@pytest.fixture(scope="module")
def slices(hippo_dir):
    return load_slices(hippo_dir)


def load_slices(hippo_dir):
    """(N, 1, SIZE, SIZE) normalised axial slices from 8 real volumes, plus each slice's volume index."""
    imgs, vol_idx = [], []
    for v, path in enumerate(sorted((hippo_dir / "images").glob("hippocampus_*.nii.gz"))[:8]):
        vol = canonicalize(read_itk_volume(str(path)))
        arr = normalize(vol.array, default_spec(vol.modality))
        zs = np.linspace(arr.shape[0] * 0.3, arr.shape[0] * 0.7, 6).astype(int)
        t = torch.from_numpy(np.ascontiguousarray(arr[zs]))[:, None]
        imgs.append(F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1))
        vol_idx += [v] * len(zs)
    return torch.cat(imgs), torch.tensor(vol_idx)


def _batches(slices, steps, seed=0):
    x, _ = slices
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield {"image": x[torch.randperm(len(x), generator=g)[:BATCH]]}


# ---------------------------------------------------------------------------------------------
# losses == published formulas on fixed inputs
def _zz(seed, n=8, d=16, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def _method(name, **opts):
    return get_method(name)("resnet18", 1, SIZE, **{**SMALL[name], **opts})


def test_registry_lists_all_six_with_summaries():
    for name in JE_METHODS:
        cls = METHODS[name]
        assert cls.kind == "joint-embedding" and cls.summary and "\n" not in cls.summary
        assert "pairs" in cls.options and set(cls.options) <= set(cls.option_help)


def test_simclr_loss_is_nt_xent():
    m = _method("simclr", temperature=0.3)
    z1, z2 = _zz(0, dtype=torch.float32)
    got = m.criterion(z1, z2)
    # NT-Xent (Chen et al. 2020): 2N views, positive = the other view, negatives = the other 2N-2
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = len(z1)
    sim = z @ z.T / 0.3
    sim.fill_diagonal_(-math.inf)
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    want = (-sim[torch.arange(2 * n), pos] + torch.logsumexp(sim, dim=1)).mean()
    assert abs(float(got) - float(want)) < 1e-5


def test_moco_loss_is_infonce_with_queue_and_enqueues_keys():
    m = _method("moco", temperature=0.2, memory_bank_size=32, proj_dim=16)
    q, k = _zz(1, dtype=torch.float32)
    q.requires_grad_(True)
    bank = F.normalize(torch.randn(32, 16, generator=torch.Generator().manual_seed(2)), dim=1)
    m.criterion.memory_bank.bank.copy_(bank)
    m.criterion.memory_bank.bank_ptr.zero_()
    got = m.criterion(q, k)
    qn, kn = F.normalize(q.detach().double(), dim=1), F.normalize(k.double(), dim=1)
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ bank.double().T], dim=1) / 0.2
    want = (-logits[:, 0] + torch.logsumexp(logits, dim=1)).mean()
    assert abs(float(got) - float(want)) < 1e-5
    # the keys (not the queries) entered the queue, in order
    assert torch.allclose(m.criterion.memory_bank.bank[: len(k)].double(), kn, atol=1e-6)
    assert torch.equal(m.criterion.memory_bank.bank[len(k):], bank[len(k):])


def _neg_cos(a, b):
    return -(F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1).mean()


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_byol_simsiam_symmetrised_negative_cosine_and_stop_gradient(name):
    m = _method(name)
    p1, p2 = _zz(3)
    z1, z2 = _zz(4)
    for t in (p1, z1, z2):
        t.requires_grad_(True)
    got = m.symmetric_loss(p1, p2, z1, z2)
    want = 0.5 * (_neg_cos(p1, z2) + _neg_cos(p2, z1))
    assert abs(float(got) - float(want)) < 1e-5
    if name == "simsiam":  # stop-gradient: no gradient reaches the targets z
        got.backward()
        assert z1.grad is None and z2.grad is None and p1.grad is not None


def test_barlow_twins_loss_is_cross_correlation_formula():
    m = _method("barlow-twins", lambda_param=0.01)
    z1, z2 = _zz(5, n=12, d=10)
    got = m.criterion(z1, z2)
    # Zbontar et al. 2021, Algorithm 1 (official code: BatchNorm1d(affine=False), i.e. biased std, eps 1e-5)
    bn = lambda z: (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
    c = bn(z1).T @ bn(z2) / len(z1)
    on = ((torch.diagonal(c) - 1) ** 2).sum()
    off = (c**2).sum() - (torch.diagonal(c) ** 2).sum()
    want = on + 0.01 * off
    assert abs(float(got) - float(want)) < 1e-5 * max(1.0, abs(float(want)))


def test_vicreg_loss_is_invariance_variance_covariance():
    m = _method("vicreg", lambda_param=20.0, mu_param=15.0, nu_param=2.0)
    z1, z2 = _zz(6, n=12, d=10)
    got = m.criterion(z1, z2)
    inv = ((z1 - z2) ** 2).mean()
    std = lambda z: torch.sqrt(z.var(0) + 1e-4)
    var = 0.5 * (F.relu(1 - std(z1)).mean() + F.relu(1 - std(z2)).mean())

    def cov(z):
        zc = z - z.mean(0)
        c = zc.T @ zc / (len(z) - 1)
        return ((c**2).sum() - (torch.diagonal(c) ** 2).sum()) / z.shape[1]

    want = 20.0 * inv + 15.0 * var + 2.0 * (cov(z1) + cov(z2))
    assert abs(float(got) - float(want)) < 1e-5 * max(1.0, abs(float(want)))


@pytest.mark.parametrize("n,d", [(8, 256), (40, 12)])
def test_vicreg_loss_and_gradients_match_lightly(n, d):
    """Our VICReg loss (Gram-matrix covariance term when N < D, terms computed once) = lightly's, values and gradients."""
    from lightly.loss import VICRegLoss as LightlyVICReg

    m = _method("vicreg", lambda_param=20.0, mu_param=15.0, nu_param=2.0)
    za, zb = _zz(7, n=n, d=d, dtype=torch.float32)
    zb = 0.5 * za + zb  # correlated views, as after training
    grads = []
    for crit in (m.criterion, LightlyVICReg(lambda_param=20.0, mu_param=15.0, nu_param=2.0)):
        a, b = za.clone().requires_grad_(), zb.clone().requires_grad_()
        loss = crit(a, b)
        loss.backward()
        grads.append((float(loss), a.grad, b.grad))
    (l1, ga1, gb1), (l2, ga2, gb2) = grads
    assert abs(l1 - l2) < 1e-5 * abs(l2)
    for g1, g2 in ((ga1, ga2), (gb1, gb2)):
        assert float((g1 - g2).abs().max()) < 1e-5 * float(g2.abs().max())
    terms = m.criterion.terms(za, zb)
    assert abs(float(20.0 * terms["invariance"] + 15.0 * terms["variance"] + 2.0 * terms["covariance"]) - l2) < 1e-5 * abs(l2)


# ---------------------------------------------------------------------------------------------
# short CPU training on real slices
def _eval_loss(method, x, seeds=(123, 124, 125, 126)):
    """Loss on a fixed batch averaged over fixed augmentation draws (BN in training mode, as during training).

    One augmentation draw is too noisy to compare before/after 14 steps (SimCLR's fixed-batch loss moved by
    +-0.5 with the draw); the mean over 4 fixed draws is what must fall. MoCo's queue is left as it was.
    """
    method.train()
    bank = getattr(getattr(method, "criterion", None), "memory_bank", None)
    saved = (bank.bank.clone(), bank.bank_ptr.clone()) if bank is not None else None
    vals = []
    with torch.no_grad():
        for seed in seeds:
            torch.manual_seed(seed)
            vals.append(float(method.training_loss({"image": x})["loss"]))
    if saved is not None:
        bank.bank.copy_(saved[0])
        bank.bank_ptr.copy_(saved[1])
    return float(np.mean(vals))


def _spread(v):
    """Mean over dimensions of the std across the batch of L2-normalised vectors (0 when collapsed)."""
    return float(F.normalize(v, dim=1).std(dim=0).mean())


def _train(method, slices, steps=STEPS, lr=1e-3):
    opt = method.configure_optimizers(lr=lr, weight_decay=1e-4, total_steps=steps)
    torch.manual_seed(0)
    losses = []
    for step, batch in enumerate(_batches(slices, steps)):
        method.train()
        out = method.training_loss(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.on_train_step_end(step, steps)
        losses.append(float(out["loss"].detach()))
        assert all(torch.isfinite(v) for v in out.values())
    return losses


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("name", JE_METHODS)
def test_short_training_learns_without_collapse(name, slices):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    m = _method(name)
    x_all, _ = slices
    probe = x_all[torch.randperm(len(x_all), generator=torch.Generator().manual_seed(9))[:BATCH]]
    momentum = bool(m._momentum_pairs)
    if momentum:
        target0 = _flat(m.encoder_momentum).clone()
        assert torch.equal(target0, _flat(m.encoder))  # starts as a copy of the online encoder
    if name == "moco":  # fill the queue with real keys first, so before/after compare like with like
        for batch in _batches(slices, 8, seed=5):
            m.training_loss(batch)
        assert not torch.equal(m.criterion.memory_bank.bank, torch.zeros_like(m.criterion.memory_bank.bank))
    before = _eval_loss(m, probe)
    losses = _train(m, slices)
    after = _eval_loss(m, probe)
    # the mean loss on a fixed probe batch over fixed augmentation draws falls (the per-step training losses
    # come from different random batches and views, too noisy to compare over 14 steps)
    assert after < before, f"{name}: fixed-batch loss {before:.4f} -> {after:.4f} (training losses {np.round(losses, 3)})"

    # no collapse: distinct slices keep distinct embeddings (threshold 0.1/sqrt(dim); ~1/sqrt(dim) if spread out)
    m.eval()
    with torch.no_grad():
        feats = m.pooled_features(probe)
        proj = m.embed(probe)
    assert _spread(feats) > 0.1 / math.sqrt(feats.shape[1]), (name, _spread(feats))
    assert _spread(proj) > 0.1 / math.sqrt(proj.shape[1]), (name, _spread(proj))

    if momentum:  # the EMA target moved, toward the online encoder
        online, target = _flat(m.encoder), _flat(m.encoder_momentum)
        assert not torch.equal(target, target0)
        assert (target - online).norm() < (target0 - online).norm()

    # only the U-Net encoder is saved: it loads strictly into smp.Unet(...).encoder
    unet = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1)
    unet.encoder.load_state_dict(m.encoder.state_dict(), strict=True)
    assert all(not k.startswith(("projection", "prediction", "encoder_momentum")) for k in m.encoder.state_dict())


def test_momentum_update_is_cosine_scheduled_ema():
    from lightly.utils.scheduler import cosine_schedule

    m = _method("byol", momentum_start=0.9, momentum_end=1.0)
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(0.01)
    online, target = _flat(m.encoder), _flat(m.encoder_momentum)
    m.on_train_step_end(3, 10)
    mom = cosine_schedule(3, 10, 0.9, 1.0)
    assert 0.9 < mom < 1.0
    assert torch.allclose(_flat(m.encoder_momentum), mom * target + (1 - mom) * online, atol=1e-6)
    m.on_train_step_end(10, 10)  # last step: momentum 1, the target stays
    assert torch.allclose(_flat(m.encoder_momentum), mom * target + (1 - mom) * online, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# pairs
def test_micle_second_view_comes_from_the_partner(slices):
    x, vol = slices
    image, partner = x[0:4], x[4:8]  # different slices (of the same volumes), clearly different pixels
    assert (image - partner).abs().mean() > 0.02
    batch = {"image": image, "partner": partner}
    spec = AugmentSpec()
    aug = lambda t, generator=None: augment(t, spec, generator)
    v1, v2 = make_views(batch, "micle", aug, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    a1, a2 = aug(image, generator=g), aug(partner, generator=g)
    assert torch.equal(v1, a1) and torch.equal(v2, a2)
    g = torch.Generator().manual_seed(0)
    aug(image, generator=g)
    assert (v2 - aug(image, generator=g)).abs().mean() > 0.02  # not a second augmentation of the image
    # with augmentations switched off the views ARE image and partner; "augment" ignores the partner
    off = AugmentSpec(crop_scale_min=1, crop_scale_max=1, crop_ratio=1, hflip=0, intensity_p=0, noise_p=0, blur_p=0)
    ident = lambda t, generator=None: augment(t, off, generator)
    v1, v2 = make_views(batch, "micle", ident)
    assert torch.allclose(v1, image, atol=1e-5) and torch.allclose(v2, partner, atol=1e-5)
    v1, v2 = make_views(batch, "augment", ident)
    assert torch.allclose(v2, image, atol=1e-5)


def test_micle_method_trains_on_partners_and_needs_them(slices):
    x, _ = slices
    m = _method("simclr", pairs="micle")
    out = m.training_loss({"image": x[0:8], "partner": x[8:16]})
    out["loss"].backward()
    assert m.encoder.conv1.weight.grad is not None
    with pytest.raises(NapariSSLError, match="partner"):
        m.training_loss({"image": x[0:8]})
    with pytest.raises(NapariSSLError, match="pairs"):
        _method("simclr", pairs="nearby")
    with pytest.raises(NapariSSLError, match="batch-size"):
        m.training_loss({"image": x[0:1], "partner": x[1:2]})
