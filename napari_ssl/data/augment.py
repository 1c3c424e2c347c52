"""Batched torch augmentations for 1-channel (or 2.5D) CT/MR slices.

Works on (B, C, H, W) float tensors in [0, 1] on any device, one random draw per sample.
There is no colour jitter: a scan has one intensity channel, so the intensity changes are
brightness / contrast / gamma, Gaussian noise and Gaussian blur. With 2.5D input (C adjacent
slices) every channel of a sample gets the same crop, flip, rotation, intensity change and blur,
so the slices stay aligned with each other; only the noise differs per voxel.

Randomness comes from ``generator`` (a ``torch.Generator``) when one is given, else from torch's
global RNG (seeded by Lightning's ``seed_everything``), so a seed reproduces the same views.
lightly's own transforms are not used: they assume RGB PIL images and work one image at a time.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import NapariSSLError


@dataclass
class AugmentSpec:
    """Augmentation strengths; each field is also a joint-embedding ``--opt`` (prefix-free name).

    crop_scale_min / crop_scale_max: area fraction of the random resized crop (1, 1 = no crop).
    crop_ratio: the crop's aspect ratio is drawn log-uniformly in [1/crop_ratio, crop_ratio].
    hflip / vflip: probability of a left-right / up-down flip. vflip defaults to 0 because after
      canonical reorientation anterior is always up; left-right mirror images are anatomically close.
    rotate_deg: maximum in-plane rotation in degrees (uniform in +-rotate_deg; 0 = off).
    brightness: maximum additive shift of the intensities (uniform in +-brightness).
    contrast: maximum relative contrast change around the slice mean (factor in 1 +- contrast).
    gamma: maximum gamma exponent; drawn log-uniformly in [1/gamma, gamma] (1 = off).
    intensity_p: probability that a sample gets the brightness/contrast/gamma changes at all.
    noise_std: maximum standard deviation of additive Gaussian noise (uniform in [0, noise_std]).
    noise_p: probability of noise.
    blur_sigma: maximum Gaussian blur sigma in pixels (uniform in [0.1, blur_sigma]).
    blur_p: probability of blur.
    """

    crop_scale_min: float = 0.3
    crop_scale_max: float = 1.0
    crop_ratio: float = 4.0 / 3.0
    hflip: float = 0.5
    vflip: float = 0.0
    rotate_deg: float = 0.0
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 1.4
    intensity_p: float = 0.8
    noise_std: float = 0.03
    noise_p: float = 0.5
    blur_sigma: float = 1.5
    blur_p: float = 0.5

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "AugmentSpec":
        """The spec from a method's options dict (unknown keys are ignored), validated."""
        known = {f.name for f in fields(cls)}
        spec = cls(**{k: float(v) for k, v in options.items() if k in known})
        spec.validate()
        return spec

    def validate(self) -> None:
        if not 0.0 < self.crop_scale_min <= self.crop_scale_max <= 1.0:
            raise NapariSSLError(
                f"crop scale range must satisfy 0 < crop_scale_min <= crop_scale_max <= 1 (got {self.crop_scale_min}, {self.crop_scale_max})"
            )
        if self.crop_ratio < 1.0:
            raise NapariSSLError(f"crop_ratio must be >= 1 (got {self.crop_ratio})")
        if self.gamma < 1.0:
            raise NapariSSLError(f"gamma must be >= 1 (1 = off; got {self.gamma})")
        for name in ("hflip", "vflip", "intensity_p", "noise_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise NapariSSLError(f"{name} is a probability: give a value between 0 and 1 (got {getattr(self, name)})")
        for name in ("rotate_deg", "brightness", "contrast", "noise_std", "blur_sigma"):
            if getattr(self, name) < 0:
                raise NapariSSLError(f"{name} must not be negative (got {getattr(self, name)})")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """n uniform draws in [lo, hi], drawn on the generator's device (so a seed gives the same values anywhere)."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, generator=generator, device=gdev)
    return (lo + (hi - lo) * u).to(device)


def _bernoulli(n: int, p: float, generator, device) -> torch.Tensor:
    return _uniform(n, 0.0, 1.0, generator, device) < p


def geometric_params(batch: int, spec: AugmentSpec, generator=None, device="cpu", aspect: float = 1.0) -> torch.Tensor:
    """(B, 2, 3) affine matrices mapping output to input normalised coordinates (for F.affine_grid).

    Per sample: random resized crop (area fraction and aspect ratio), flips, and a rotation about the
    crop centre. Coordinates are normalised to [-1, 1] on each axis; the rotation is done in pixel units
    (``aspect`` = H / W), i.e. A = D^-1 R D S with D = diag(W/2, H/2), so non-square slices are not sheared.
    """
    scale = _uniform(batch, spec.crop_scale_min, spec.crop_scale_max, generator, device)
    log_r = math.log(spec.crop_ratio)
    ratio = torch.exp(_uniform(batch, -log_r, log_r, generator, device))
    w = torch.sqrt(scale * ratio).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(scale / ratio).clamp(max=1.0)
    cx = _uniform(batch, -1.0, 1.0, generator, device) * (1.0 - w)  # crop centre, box stays inside
    cy = _uniform(batch, -1.0, 1.0, generator, device) * (1.0 - h)
    fx = torch.where(_bernoulli(batch, spec.hflip, generator, device), -1.0, 1.0)
    fy = torch.where(_bernoulli(batch, spec.vflip, generator, device), -1.0, 1.0)
    angle = _uniform(batch, -spec.rotate_deg, spec.rotate_deg, generator, device) * (math.pi / 180.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(batch, 2, 3, device=device)
    # input = centre + D^-1 R(angle) D @ diag(w * fx, h * fy) @ output
    theta[:, 0, 0] = cos * w * fx
    theta[:, 0, 1] = -sin * aspect * h * fy
    theta[:, 1, 0] = sin / aspect * w * fx
    theta[:, 1, 1] = cos * h * fy
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    return theta


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, apply: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (same for all channels of a sample)."""
    b, c, hgt, wid = x.shape
    radius = min(max(1, int(math.ceil(3.0 * max_sigma))), min(hgt, wid) - 1)  # reflect pad needs < size
    if radius <= 0:
        return x
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kern = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None].to(x.dtype)) ** 2)
    kern = kern / kern.sum(dim=1, keepdim=True)
    identity = (offsets == 0).to(x.dtype)[None, :].expand(b, -1)
    kern = torch.where(apply[:, None], kern, identity)  # (B, K)
    kern = kern.repeat_interleave(c, dim=0)  # (B*C, K): one kernel per channel of each sample
    y = x.reshape(1, b * c, hgt, wid)
    y = F.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, kern[:, None, None, :], groups=b * c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, kern[:, None, :, None], groups=b * c)
    return y.reshape(b, c, hgt, wid)


def augment(x: torch.Tensor, spec: AugmentSpec | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random view of each sample of ``x`` (B, C, H, W) in [0, 1]; same shape, dtype and range."""
    if x.ndim != 4:
        raise ValueError(f"augment expects (B, C, H, W), got shape {tuple(x.shape)}")
    spec = spec or AugmentSpec()
    dtype, device = x.dtype, x.device
    b, c, hgt, wid = x.shape
    y = x.float()

    # geometry: one affine per sample, shared by all channels (2.5D slices stay aligned)
    theta = geometric_params(b, spec, generator, device, aspect=hgt / wid)
    grid = F.affine_grid(theta, [b, c, hgt, wid], align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # intensity: gamma, contrast around the sample mean, brightness; same for all channels of a sample
    on = _bernoulli(b, spec.intensity_p, generator, device)[:, None, None, None]
    log_g = math.log(spec.gamma)
    gamma = torch.exp(_uniform(b, -log_g, log_g, generator, device))[:, None, None, None]
    contrast = _uniform(b, 1.0 - spec.contrast, 1.0 + spec.contrast, generator, device)[:, None, None, None]
    bright = _uniform(b, -spec.brightness, spec.brightness, generator, device)[:, None, None, None]
    z = y.clamp(0.0, 1.0).pow(gamma)
    mean = z.mean(dim=(1, 2, 3), keepdim=True)
    z = (z - mean) * contrast + mean + bright
    y = torch.where(on, z, y)

    # blur
    if spec.blur_sigma > 0 and spec.blur_p > 0:
        apply = _bernoulli(b, spec.blur_p, generator, device)
        sigma = _uniform(b, min(0.1, spec.blur_sigma), spec.blur_sigma, generator, device)
        y = _gaussian_blur(y, sigma, apply, spec.blur_sigma)

    # noise
    if spec.noise_std > 0 and spec.noise_p > 0:
        std = _uniform(b, 0.0, spec.noise_std, generator, device)
        std = torch.where(_bernoulli(b, spec.noise_p, generator, device), std, torch.zeros_like(std))
        gdev = generator.device if generator is not None else device
        noise = torch.randn(y.shape, generator=generator, device=gdev).to(device)
        y = y + noise * std[:, None, None, None]

    return y.clamp_(0.0, 1.0).to(dtype)


class Augment(torch.nn.Module):
    """``augment`` with a fixed spec, as a module (no parameters)."""

    def __init__(self, spec: AugmentSpec | None = None):
        super().__init__()
        self.spec = spec or AugmentSpec()
        self.spec.validate()

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return augment(x, self.spec, generator)
