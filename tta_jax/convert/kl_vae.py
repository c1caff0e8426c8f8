"""``diffusers.AutoencoderKL`` state dict -> :class:`tta_jax.codecs.kl_vae.KLVAE` params.

Key mapping (diffusers -> ours; ``.weight``/``.bias`` of Conv2d -> ``kernel`` [kh, kw, in, out]/``bias``,
GroupNorm ``weight``/``bias`` -> ``scale``/``bias``, Linear -> Dense)::

    encoder.conv_in                                   -> encoder/conv_in
    encoder.down_blocks.{i}.resnets.{j}.{norm1,conv1,norm2,conv2,conv_shortcut}
                                                      -> encoder/down_blocks_{i}/resnets_{j}/...
    encoder.down_blocks.{i}.downsamplers.0.conv       -> encoder/down_blocks_{i}/downsamplers_0/conv
    {encoder,decoder}.mid_block.resnets.{0,1}         -> .../mid_block/resnets_{0,1}
    {encoder,decoder}.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}
                                                      -> .../mid_block/attentions_0/{group_norm,to_q,to_k,to_v,to_out_0}
        (legacy names query/key/value/proj_attn and 1x1-conv shaped [C, C, 1, 1] weights are accepted)
    decoder.up_blocks.{i}.resnets.{j}                 -> decoder/up_blocks_{i}/resnets_{j}
    decoder.up_blocks.{i}.upsamplers.0.conv           -> decoder/up_blocks_{i}/upsamplers_0/conv
    {encoder,decoder}.{conv_norm_out,conv_out}        -> .../{conv_norm_out,conv_out}
    quant_conv, post_quant_conv                       -> quant_conv, post_quant_conv

The original CompVis/LDM key layout (``encoder.down.0.block.0...``) is not handled: convert it with
diffusers' ``convert_ldm_vae_checkpoint`` first (or load the hub's ``vae/`` folder).
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from tta_jax.codecs.kl_vae import KLVAEConfig, abstract_params, get_config
from tta_jax.convert.common import (ConversionError, ConversionReport, KeyMapper, load_state_dict,
                                    shapes_of)

_LEGACY_ATTN = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _resnet(m: KeyMapper, src: str, dst: str) -> None:
    for n in ("norm1", "norm2"):
        m.norm(f"{src}.{n}", f"{dst}/{n}")
    for n in ("conv1", "conv2"):
        _conv(m, f"{src}.{n}", f"{dst}/{n}")
    if m.has(f"{src}.conv_shortcut.weight"):
        _conv(m, f"{src}.conv_shortcut", f"{dst}/conv_shortcut")


def _conv(m: KeyMapper, src: str, dst: str) -> None:
    w = m.src.get(f"{src}.weight")
    if w is not None and np.ndim(w) != 4:
        raise ConversionError(f"{src}.weight: Conv2d weight has shape {np.shape(w)}, expected [out, in, kh, kw]")
    m.conv(src, dst)


def _attention(m: KeyMapper, src: str, dst: str) -> None:
    m.norm(f"{src}.group_norm", f"{dst}/group_norm")
    for new, old in _LEGACY_ATTN.items():
        name = new if m.has(f"{src}.{new}.weight") else old
        w = m.take(f"{src}.{name}.weight")
        if w.ndim == 4 and w.shape[2:] == (1, 1):
            w = w[:, :, 0, 0]
        if w.ndim != 2:
            raise ConversionError(f"{src}.{name}.weight: attention weight has shape {w.shape}, expected [C, C]")
        d = f"{dst}/{new.replace('.', '_')}"
        m.put(f"{d}/kernel", np.ascontiguousarray(w.T), f"{src}.{name}.weight")
        m.raw(f"{src}.{name}.bias", f"{d}/bias")


def _mid(m: KeyMapper, src: str, dst: str, cfg: KLVAEConfig) -> None:
    _resnet(m, f"{src}.resnets.0", f"{dst}/resnets_0")
    if cfg.mid_block_add_attention:
        _attention(m, f"{src}.attentions.0", f"{dst}/attentions_0")
    _resnet(m, f"{src}.resnets.1", f"{dst}/resnets_1")


def convert_kl_vae(state_dict: Mapping[str, np.ndarray], config: KLVAEConfig | str, *, strict: bool = True,
                   prefix: str = "", what: str = "AutoencoderKL checkpoint") -> tuple[dict, ConversionReport]:
    """Flat diffusers AutoencoderKL state dict -> (KLVAE params, report).

    ``prefix`` selects a sub-module in a bigger checkpoint (e.g. ``"vae."``); other keys are ignored then.
    """
    cfg = get_config(config) if isinstance(config, str) else config
    sd = {k[len(prefix):]: np.asarray(v) for k, v in state_dict.items() if k.startswith(prefix)}
    if any(k.startswith("encoder.down.") for k in sd):
        raise ConversionError(f"{what}: this is the original LDM key layout (encoder.down.*); convert it to the "
                              "diffusers layout first (diffusers' convert_ldm_vae_checkpoint)")
    m = KeyMapper(sd)
    n = len(cfg.block_out_channels)
    try:
        _conv(m, "encoder.conv_in", "encoder/conv_in")
        for i in range(n):
            for j in range(cfg.layers_per_block):
                _resnet(m, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder/down_blocks_{i}/resnets_{j}")
            if i != n - 1:
                _conv(m, f"encoder.down_blocks.{i}.downsamplers.0.conv",
                      f"encoder/down_blocks_{i}/downsamplers_0/conv")
        _mid(m, "encoder.mid_block", "encoder/mid_block", cfg)
        m.norm("encoder.conv_norm_out", "encoder/conv_norm_out")
        _conv(m, "encoder.conv_out", "encoder/conv_out")
        if cfg.use_quant_conv:
            _conv(m, "quant_conv", "quant_conv")
        if cfg.use_post_quant_conv:
            _conv(m, "post_quant_conv", "post_quant_conv")
        _conv(m, "decoder.conv_in", "decoder/conv_in")
        _mid(m, "decoder.mid_block", "decoder/mid_block", cfg)
        for i in range(n):
            for j in range(cfg.layers_per_block + 1):
                _resnet(m, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder/up_blocks_{i}/resnets_{j}")
            if i != n - 1:
                _conv(m, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder/up_blocks_{i}/upsamplers_0/conv")
        m.norm("decoder.conv_norm_out", "decoder/conv_norm_out")
        _conv(m, "decoder.conv_out", "decoder/conv_out")
    except ConversionError as e:
        if strict:
            raise ConversionError(f"{what}: {e}") from None
    return m.finish(shapes_of(abstract_params(cfg)), strict=strict, what=what)


def load_kl_vae(path: str | os.PathLike, config: KLVAEConfig | str, *, strict: bool = True) -> dict:
    """Reads ``diffusion_pytorch_model.safetensors`` (file or the ``vae/`` folder holding it) and converts."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f"{path}: no diffusion_pytorch_model.safetensors/.bin in this folder")
    params, _ = convert_kl_vae(load_state_dict(path), config, strict=strict, what=path)
    return params


__all__ = ["convert_kl_vae", "load_kl_vae"]
