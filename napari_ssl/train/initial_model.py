"""The U-Net fine-tuning starts from: random, a pretrained encoder (optionally its decoder too), or a previous model.

Weights must fit exactly (strict loading); a mismatch is one line naming the flag to fix.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import NapariSSLError


def _load_pretrained_encoder(path: str) -> tuple[dict, dict]:
    from ..models.checkpoint import load_weights

    if not os.path.exists(path):
        raise NapariSSLError(f"--encoder-weights: no such file or folder: {path}")
    if os.path.isdir(path):
        from ..models.checkpoint import read_meta

        meta = read_meta(path)
        if os.path.isfile(os.path.join(path, "encoder.safetensors")):
            sd, meta = load_weights(path, name="encoder")
        elif os.path.isfile(os.path.join(path, "model.safetensors")) and meta.get("kind") == "segmentation":
            full, meta = load_weights(path, name="model")
            sd = {k[len("encoder."):]: v for k, v in full.items() if k.startswith("encoder.")}
        else:
            sd, meta = load_weights(path)
        return sd, meta
    return load_weights(path)


def _strict_load(module: torch.nn.Module, sd: dict, what: str, source: str) -> None:
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise NapariSSLError(f"{source}: {what} weights do not fit this model ({first[:160]}); check the encoder name and channels") from None


def build_initial_model(config: Any, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """The U-Net to train and a description of where its weights came from."""
    from ..models.checkpoint import load_weights, read_meta
    from ..models.unet import adapt_in_channels, build_unet

    if config.encoder_weights and config.init_model:
        raise NapariSSLError("give either --encoder-weights (pretrained encoder) or --init-model (previous fine-tuned model), not both")
    source: dict[str, Any] = {"init": "random"}
    if config.init_model:
        meta = read_meta(config.init_model)
        if meta.get("kind") != "segmentation":
            raise NapariSSLError(f"--init-model {config.init_model} is not a fine-tuned segmentation model "
                                 "(use --encoder-weights for a pretrained encoder)")
        enc, ch = meta["encoder_name"], int(meta["in_channels"])
        if config.encoder and config.encoder != enc:
            raise NapariSSLError(f"--init-model uses encoder {enc}, not {config.encoder}; drop --encoder or pick a matching model")
        if config.in_channels and int(config.in_channels) != ch:
            raise NapariSSLError(f"--init-model takes {ch} input channel(s), not {config.in_channels}")
        if int(meta["num_classes"]) != num_classes:
            raise NapariSSLError(f"--init-model predicts {int(meta['num_classes']) - 1} class(es) but the labels have {num_classes - 1}; "
                                 "give matching --classes")
        unet = build_unet(enc, in_channels=ch, classes=num_classes)
        sd, _ = load_weights(config.init_model, name="model")
        _strict_load(unet, sd, "model", "--init-model")
        source = {"init": "model", "model": os.path.basename(os.path.abspath(config.init_model)), "pretrained": meta.get("pretrained")}
        return unet, {**source, "_meta": meta, "_encoder": enc, "_in_channels": ch}
    enc_meta: dict = {}
    sd = None
    if config.encoder_weights:
        sd, enc_meta = _load_pretrained_encoder(config.encoder_weights)
        pre_enc = enc_meta.get("encoder_name")  # older spellings resolved by models/metadata.py
        if config.encoder and pre_enc and config.encoder != pre_enc:
            raise NapariSSLError(f"--encoder-weights hold a {pre_enc} encoder, not {config.encoder}; drop --encoder or pick matching weights")
    enc = config.encoder or enc_meta.get("encoder_name") or "resnet18"
    ch = int(config.in_channels or enc_meta.get("in_channels") or 1)
    unet = build_unet(enc, in_channels=ch, classes=num_classes)
    if sd is not None:
        sd_ch = next((v.shape[1] for k, v in sd.items() if k.endswith("conv1.weight") and v.ndim == 4), ch)
        if (config.in_channels and enc_meta.get("in_channels") and int(enc_meta["in_channels"]) != ch
                and sd_ch == int(enc_meta["in_channels"]) and sd_ch != 3):
            raise NapariSSLError(f"--encoder-weights were pretrained on {enc_meta['in_channels']} channel(s), not {ch}; "
                                 f"use --in-channels {enc_meta['in_channels']}")
        sd = adapt_in_channels(sd, ch)
        _strict_load(unet.encoder, sd, "encoder", "--encoder-weights")
        source = {"init": "pretrained-encoder", "weights": os.path.basename(os.path.abspath(config.encoder_weights)),
                  "method": enc_meta.get("method"), "steps": enc_meta.get("steps"), "created": enc_meta.get("created")}
        if config.transfer_decoder:
            source["decoder"] = _transfer_decoder(unet, config.encoder_weights)
    return unet, {**source, "_meta": enc_meta, "_encoder": enc, "_in_channels": ch}


def _transfer_decoder(unet: torch.nn.Module, pretrain_dir: str) -> str:
    """Copy the pretrained U-Net's decoder (methods that train the whole U-Net) into `unet`."""
    from safetensors.torch import load_file

    path = os.path.join(pretrain_dir, "unet.safetensors") if os.path.isdir(pretrain_dir) else ""
    if not os.path.isfile(path):
        raise NapariSSLError(f"--transfer-decoder: {pretrain_dir} holds no unet.safetensors (only methods that train the whole U-Net save a decoder)")
    full = load_file(path)
    dec = {k[len("decoder."):]: v for k, v in full.items() if k.startswith("decoder.")}
    _strict_load(unet.decoder, dec, "decoder", "--transfer-decoder")
    return "transferred"
