"""The interface every self-supervised method implements (see the pretraining contract).

A method is a ``torch.nn.Module`` that owns the smp U-Net encoder being pretrained
(``self.encoder``, saved to ``encoder.safetensors``) plus whatever heads it needs, and
turns a batch of slices into a loss. The engine (napari_ssl.train) owns the data,
the loop, checkpoints and events; a method never touches files.

Batches are dicts of tensors (see napari_ssl.data.slices):
  "image"   (B, C, S, S) float32 in [0, 1]; C = 1, or 3 adjacent slices (the middle one is the target)
  "partner" (B, C, S, S) another slice of the same patient/study (MICLe positives)
  "context" (B, C, S+2m, S+2m) only when the method asks for it with :meth:`context_request`:
            the C slices centred ``dz`` slices away ("context_dz" (B,) holds +-distance), cut at the
            same place as "image" with a margin ``m`` on every side.
  "volume_index" (B,), "slice_index" (B,)
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from ..errors import NapariSSLError
from ..models.optim import adamw  # noqa: F401 (re-exported: methods build their optimisers through it)
from ..models.unet import build_encoder, build_unet, encoder_out_channels


class PretextMethod(torch.nn.Module):
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    kind: ClassVar[str] = "pretext"  # or "joint-embedding"
    needs_unet: ClassVar[bool] = False
    # method-specific option defaults, accepted as ``--opt key=value`` (value coerced to the default's type)
    options: ClassVar[dict[str, Any]] = {}
    # one line per option, shown by ``napari-ssl methods --verbose`` (optional)
    option_help: ClassVar[dict[str, str]] = {}
    # DDP: set True when some parameters get no gradient in some steps (e.g. alternating GAN updates)
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, encoder_name: str, in_channels: int, image_size: int, **options: Any):
        super().__init__()
        self.encoder_name = encoder_name
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.opts: dict[str, Any] = self.resolve_options(options)
        if self.needs_unet:
            self.unet = build_unet(encoder_name, in_channels=self.in_channels, classes=self.unet_classes())
        else:
            self.encoder = build_encoder(encoder_name, in_channels=self.in_channels)

    # --- the encoder ---------------------------------------------------------------------------
    @property
    def encoder(self) -> torch.nn.Module:  # type: ignore[override]
        """THE smp U-Net encoder (``smp.Unet(...).encoder``), whether or not the whole U-Net is trained."""
        unet = self._modules.get("unet")
        if unet is not None:
            return unet.encoder
        return self._modules["encoder"]

    @property
    def feature_dim(self) -> int:
        """Channels of the deepest encoder feature map."""
        return encoder_out_channels(self.encoder)

    def unet_classes(self) -> int:
        """Output channels of the U-Net head when ``needs_unet`` (default: reconstruct the input channels)."""
        return self.in_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Deepest encoder feature map (B, F, h, w)."""
        return self.encoder(x)[-1]

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled deepest encoder features (B, F)."""
        return self.features(x).mean(dim=(2, 3))

    # --- options -------------------------------------------------------------------------------
    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults updated by `given`; string values (from ``--opt``) coerced to the default's type."""
        unknown = sorted(set(given) - set(cls.options))
        if unknown:
            known = ", ".join(sorted(cls.options)) or "none"
            raise NapariSSLError(f"method {cls.name!r} has no option {unknown[0]!r}; its options are: {known}")
        out = dict(cls.options)
        for key, value in given.items():
            out[key] = coerce_option(key, value, cls.options[key])
        return out

    # --- data the method needs from the engine --------------------------------------------------
    @classmethod
    def context_request(cls, image_size: int, in_channels: int, options: dict[str, Any]) -> tuple[int, int] | None:
        """``(distance_in_slices, margin_px)`` when the method needs batch["context"], else None."""
        return None

    @classmethod
    def min_image_size(cls, in_channels: int, options: dict[str, Any]) -> int:
        """Smallest --image-size the method can work with."""
        return 16

    # --- training -----------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scalars for one batch; must hold "loss" (the one that is optimised); the others are logged."""
        raise NotImplementedError

    def optimize_step(self, batch: dict[str, torch.Tensor], optimizers: Sequence[Any],
                      backward: Callable[[torch.Tensor], None]) -> dict[str, torch.Tensor]:
        """One optimisation step (the engine runs Lightning manual optimisation).

        Default: one optimizer over :meth:`training_loss`. Methods with several optimizers
        (e.g. an adversarial discriminator) override this and alternate their updates.
        ``backward`` must be used instead of ``loss.backward()`` (mixed precision, DDP).
        """
        opt = optimizers[0]
        out = self.training_loss(batch)
        opt.zero_grad(set_to_none=True)
        backward(out["loss"])
        opt.step()
        return out

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        """Called after every optimisation step (e.g. a momentum/EMA update)."""

    def configure_optimizers(self, lr: float, weight_decay: float, total_steps: int):
        """An optimizer or a list of optimizers; default AdamW over every trainable parameter."""
        params = [p for p in self.parameters() if p.requires_grad]
        return adamw(params, lr=lr, weight_decay=weight_decay)

    # --- previews -----------------------------------------------------------------------------
    @torch.no_grad()
    def previews(self, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Method-specific pictures of what it learns: name -> float32 2-D array (images in [0, 1] or heatmaps).

        Called in eval mode on a small fixed batch, throttled by time; the engine adds the
        feature PCA for every method itself.
        """
        return {}




def coerce_option(key: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, (tuple, list)):
            return type(default)(type(default[0])(v) for v in value.split(",")) if default else value.split(",")
    except ValueError:
        raise NapariSSLError(f"option {key}={value!r}: expected a {type(default).__name__} like {default!r}") from None
    return value


def middle_slice(x: torch.Tensor) -> torch.Tensor:
    """The target (middle) channel of a (B, C, H, W) batch, as (B, 1, H, W)."""
    c = x.shape[1]
    return x[:, c // 2 : c // 2 + 1]
