"""Context-encoder in-painting (Pathak et al. 2016) with a U-Net.

Rectangular holes are cut into every channel of the input; the U-Net predicts the target
(middle) slice; the reconstruction loss (L1 or MSE) is weighted toward the holes. With
``adv_weight > 0`` a small patch discriminator (PatchGAN) judges the completed slice and the
two networks are updated in alternation (discriminator, then U-Net) with their own optimizers.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from .base import PretextMethod, adamw, middle_slice


def random_holes(b: int, size: int, num_holes: int, min_frac: float, max_frac: float, device, generator=None) -> torch.Tensor:
    """(B, 1, S, S) float mask, 1 inside 1..num_holes random rectangles per sample."""
    kw = {"device": device, "generator": generator}
    lo, hi = max(1, int(round(min_frac * size))), max(1, int(round(max_frac * size)))
    hs = torch.randint(lo, hi + 1, (b, num_holes), **kw)
    ws = torch.randint(lo, hi + 1, (b, num_holes), **kw)
    y0 = (torch.rand((b, num_holes), **kw) * (size - hs + 1)).long()
    x0 = (torch.rand((b, num_holes), **kw) * (size - ws + 1)).long()
    active = torch.arange(num_holes, device=device)[None] < torch.randint(1, num_holes + 1, (b, 1), **kw)
    r = torch.arange(size, device=device)
    rows = (r[None, None] >= y0[..., None]) & (r[None, None] < (y0 + hs)[..., None])  # (B, n, S)
    cols = (r[None, None] >= x0[..., None]) & (r[None, None] < (x0 + ws)[..., None])
    mask = (rows[..., :, None] & cols[..., None, :] & active[..., None, None]).any(1)
    return mask[:, None].float()


class PatchDiscriminator(torch.nn.Module):
    """PatchGAN: a few strided convolutions, one real/fake logit per patch."""

    def __init__(self, in_channels: int = 1, width: int = 32, layers: int = 3):
        super().__init__()
        mods, c = [], in_channels
        for i in range(layers):
            out = width * 2**i
            mods += [torch.nn.Conv2d(c, out, 4, stride=2, padding=1)]
            if i:
                mods += [torch.nn.InstanceNorm2d(out, affine=True)]
            mods += [torch.nn.LeakyReLU(0.2, inplace=True)]
            c = out
        mods += [torch.nn.Conv2d(c, 1, 3, padding=1)]
        self.net = torch.nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """No gradients for `module`'s parameters inside the block."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


class Inpainting(PretextMethod):
    name = "inpainting"
    summary = "context encoder: the U-Net fills rectangular holes cut into a slice (L1/MSE weighted toward the holes, optional adversarial term)"
    needs_unet = True
    options = {"holes": 3, "min_hole": 0.1, "max_hole": 0.3, "hole_weight": 0.9, "loss": "l1", "adv_weight": 0.0, "disc_width": 32}
    option_help = {
        "holes": "up to this many rectangular holes per slice",
        "min_hole": "smallest hole side, as a fraction of the image size",
        "max_hole": "largest hole side, as a fraction of the image size",
        "hole_weight": "share of the reconstruction loss given to hole pixels (the rest goes to the visible context)",
        "loss": "l1 or mse",
        "adv_weight": "weight of the adversarial term (0: off; Pathak et al. used 0.001)",
        "disc_width": "channels of the discriminator's first layer",
    }

    def __init__(self, encoder_name: str, in_channels: int, image_size: int, **options):
        super().__init__(encoder_name, in_channels, image_size, **options)
        if self.opts["loss"] not in ("l1", "mse"):
            from ..errors import NapariSSLError

            raise NapariSSLError(f"inpainting option loss={self.opts['loss']!r}: use l1 or mse")
        self.adversarial = float(self.opts["adv_weight"]) > 0
        if self.adversarial:
            self.discriminator = PatchDiscriminator(1, int(self.opts["disc_width"]))
        self.find_unused_parameters = self.adversarial  # DDP: the discriminator sits out the U-Net's update

    def unet_classes(self) -> int:
        return 1

    def _mask(self, x, generator=None):
        o = self.opts
        return random_holes(x.shape[0], x.shape[-1], int(o["holes"]), float(o["min_hole"]), float(o["max_hole"]), x.device, generator)

    def _forward(self, batch, generator=None):
        x = batch["image"]
        mask = self._mask(x, generator)
        fill = x.mean(dim=(1, 2, 3), keepdim=True)
        masked = x * (1 - mask) + fill * mask
        pred = torch.sigmoid(self.unet(masked))
        return masked, mask, pred, middle_slice(x)

    def _reconstruction(self, pred, target, mask):
        err = (pred - target).abs() if self.opts["loss"] == "l1" else (pred - target) ** 2
        w = float(self.opts["hole_weight"])
        hole = (err * mask).sum() / mask.sum().clamp_min(1)
        ctx = (err * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1)
        return w * hole + (1 - w) * ctx, hole

    def training_loss(self, batch):
        masked, mask, pred, target = self._forward(batch)
        rec, hole = self._reconstruction(pred, target, mask)
        return {"loss": rec, "hole_error": hole.detach()}

    def optimize_step(self, batch, optimizers, backward):
        if not self.adversarial:
            return super().optimize_step(batch, optimizers, backward)
        opt_g, opt_d = optimizers[0], optimizers[1]
        masked, mask, pred, target = self._forward(batch)
        completed = target * (1 - mask) + pred * mask
        # 1) discriminator: real slices vs completed ones (generator output detached)
        real_logits = self.discriminator(target)
        fake_logits = self.discriminator(completed.detach())
        d_loss = 0.5 * (
            F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        )
        opt_d.zero_grad(set_to_none=True)
        backward(d_loss)
        opt_d.step()
        # 2) U-Net: reconstruction + fool the (now frozen) discriminator
        rec, hole = self._reconstruction(pred, target, mask)
        with frozen(self.discriminator):
            g_logits = self.discriminator(completed)
            g_adv = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
        loss = rec + float(self.opts["adv_weight"]) * g_adv
        opt_g.zero_grad(set_to_none=True)
        backward(loss)
        opt_g.step()
        return {"loss": loss.detach(), "reconstruction": rec.detach(), "hole_error": hole.detach(), "adversarial": g_adv.detach(),
                "discriminator": d_loss.detach()}

    def configure_optimizers(self, lr, weight_decay, total_steps):
        gen = adamw(self.unet.parameters(), lr=lr, weight_decay=weight_decay)
        if not self.adversarial:
            return gen
        disc = adamw(self.discriminator.parameters(), lr=lr, weight_decay=0.0, cls=torch.optim.Adam, betas=(0.5, 0.999))
        return [gen, disc]

    @torch.no_grad()
    def previews(self, batch):
        g = torch.Generator(device=batch["image"].device).manual_seed(0)
        x = {"image": batch["image"][:1]}
        masked, mask, pred, target = self._forward(x, generator=g)
        completed = target * (1 - mask) + pred * mask
        return {
            "inpainting_input": middle_slice(masked)[0, 0].float().cpu().numpy().astype(np.float32),
            "inpainting_output": completed[0, 0].float().cpu().numpy().astype(np.float32),
        }
