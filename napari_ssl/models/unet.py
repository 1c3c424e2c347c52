"""U-Net factory (segmentation-models-pytorch) and first-layer channel adaptation.

The pretrained object is always ``smp.Unet(...).encoder``, so transfer is a strict
state-dict load, never a key-renaming guess.
"""
from __future__ import annotations

import torch

from ..errors import NapariSSLError

ENCODERS = ("resnet18", "resnet34", "resnet50", "mobilenetv3-small-lite")

# Named U-Net presets: (smp encoder, extra smp.Unet arguments). "mobilenetv3-small-lite" is a
# compact U-Net (timm MobileNetV3-small encoder, narrow decoder; ~1.4 M parameters, ~8x cheaper
# per training step than resnet18 on the CPU) for CPU benchmarks and small structures.
PRESETS: dict[str, tuple[str, dict]] = {
    "mobilenetv3-small-lite": ("tu-mobilenetv3_small_100", {"decoder_channels": (64, 32, 16, 16, 8)}),
}


def build_unet(encoder_name: str = "resnet18", in_channels: int = 1, classes: int = 1, **kwargs):
    import segmentation_models_pytorch as smp

    if encoder_name in PRESETS:
        real, preset_kw = PRESETS[encoder_name]
        return smp.Unet(encoder_name=real, encoder_weights=None, in_channels=in_channels, classes=classes, **{**preset_kw, **kwargs})
    try:
        return smp.Unet(encoder_name=encoder_name, encoder_weights=None, in_channels=in_channels, classes=classes, **kwargs)
    except (KeyError, ValueError) as exc:
        if encoder_name not in smp.encoders.get_encoder_names():
            raise NapariSSLError(f"unknown encoder {encoder_name!r}; try one of {', '.join(ENCODERS)}") from None
        raise NapariSSLError(f"cannot build a U-Net with encoder {encoder_name!r}: {exc}") from None


def build_encoder(encoder_name: str = "resnet18", in_channels: int = 1):
    """The encoder of the U-Net we would build, alone (what pretraining trains and saves)."""
    return build_unet(encoder_name, in_channels=in_channels, classes=1).encoder


def encoder_out_channels(encoder) -> int:
    return int(encoder.out_channels[-1])


def adapt_in_channels(state_dict: dict[str, torch.Tensor], in_channels: int, first_conv_key: str = "conv1.weight") -> dict[str, torch.Tensor]:
    """Adapt the first convolution's weights to `in_channels`.

    3 -> 1 sums the RGB kernels (what smp does for pretrained weights); 1 -> N repeats the
    kernel divided by N so a constant input gives the same activation.
    """
    sd = dict(state_dict)
    key = first_conv_key if first_conv_key in sd else next((k for k in sd if k.endswith("conv1.weight")), None)
    if key is None:
        return sd
    w = sd[key]
    have = w.shape[1]
    if have == in_channels:
        return sd
    if in_channels == 1:
        sd[key] = w.sum(dim=1, keepdim=True)
    elif have == 1:
        sd[key] = w.repeat(1, in_channels, 1, 1) / in_channels
    else:
        sd[key] = w.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels
    return sd
