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

The original CompVis/LDM layout (``first_stage_model`` of latent-diffusion, AudioLDM, and Tango's
``pytorch_model_vae.bin``; the ``Encoder``/``Decoder``/``AttnBlock`` classes of
github.com/declare-lab/tango ``audioldm/variational_autoencoder/modules.py``) is detected by its
``encoder.down.*`` keys and mapped onto the same tree::

    encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2}  -> encoder/down_blocks_{i}/resnets_{j}/...
    ....block.{j}.nin_shortcut (1x1 conv)                 -> .../resnets_{j}/conv_shortcut
    encoder.down.{i}.downsample.conv                      -> encoder/down_blocks_{i}/downsamplers_0/conv
    {encoder,decoder}.mid.{block_1,block_2}               -> .../mid_block/resnets_{0,1}
    {encoder,decoder}.mid.attn_1.{norm,q,k,v,proj_out}    -> .../mid_block/attentions_0/
                                                             {group_norm,to_q,to_k,to_v,to_out_0} (1x1 convs)
    decoder.up.{n-1-i}.block.{j}                          -> decoder/up_blocks_{i}/resnets_{j}
        (LDM numbers decoder levels from the highest resolution, diffusers from the lowest)
    decoder.up.{n-1-i}.upsample.conv                      -> decoder/up_blocks_{i}/upsamplers_0/conv
    {encoder,decoder}.norm_out                            -> .../conv_norm_out

Keys of another component stored in the same file are ignored when they clearly are one: ``vocoder.*``
when ``vocoder.conv_pre.*`` is there (AudioLDM/Tango keep their HiFi-GAN inside the VAE module; read it
with :func:`tta_jax.convert.hifigan.load_hifigan`). Every other key must map: an unexpected, missing or
mis-shaped key raises :class:`ConversionError` naming it. LDM attention inside the resolution levels
(``attn_resolutions`` non-empty, ``encoder.down.{i}.attn.*``) has no counterpart here and is reported as
unexpected.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import numpy as np

from tta_jax.codecs.kl_vae import KLVAEConfig, abstract_params, get_config
from tta_jax.convert.common import (ConversionError, ConversionReport, KeyMapper, load_state_dict,
                                    read_torch_pickle, shapes_of)

_LEGACY_ATTN = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
_LDM_ATTN = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# components that share a file with the VAE: prefix -> a key that shows the prefix really is that component
OTHER_COMPONENTS = {"vocoder.": "vocoder.conv_pre."}


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Source key names of one checkpoint layout (``n``: number of resolution levels)."""

    name: str
    shortcut: str                       # resnet 1x1 shortcut conv
    attn_norm: str
    attn: Mapping[str, str]             # our to_q/to_k/to_v/to_out.0 -> source name

    def down_res(self, i, j):
        return f"encoder.down.{i}.block.{j}" if self.name == "ldm" else f"encoder.down_blocks.{i}.resnets.{j}"

    def downsample(self, i):
        return f"encoder.down.{i}.downsample.conv" if self.name == "ldm" else \
            f"encoder.down_blocks.{i}.downsamplers.0.conv"

    def up_res(self, i, j, n):
        return f"decoder.up.{n - 1 - i}.block.{j}" if self.name == "ldm" else f"decoder.up_blocks.{i}.resnets.{j}"

    def upsample(self, i, n):
        return f"decoder.up.{n - 1 - i}.upsample.conv" if self.name == "ldm" else \
            f"decoder.up_blocks.{i}.upsamplers.0.conv"

    def mid(self, part: str, which: str) -> str:
        """``part``: encoder/decoder; ``which``: res0 / attn / res1."""
        if self.name == "ldm":
            return f"{part}.mid." + {"res0": "block_1", "attn": "attn_1", "res1": "block_2"}[which]
        return f"{part}.mid_block." + {"res0": "resnets.0", "attn": "attentions.0", "res1": "resnets.1"}[which]

    def norm_out(self, part: str) -> str:
        return f"{part}.norm_out" if self.name == "ldm" else f"{part}.conv_norm_out"


DIFFUSERS = _Layout("diffusers", "conv_shortcut", "group_norm", {k: k for k in _LEGACY_ATTN})
LDM = _Layout("ldm", "nin_shortcut", "norm", _LDM_ATTN)


def detect_layout(state_dict: Mapping[str, object]) -> _Layout:
    """LDM when any key starts with ``encoder.down.`` (e.g. ``encoder.down.0.block.0.norm1.weight``), else
    diffusers."""
    return LDM if any(k.startswith("encoder.down.") for k in state_dict) else DIFFUSERS


def other_component(key: str, state_dict: Mapping[str, object]) -> bool:
    """True when ``key`` belongs to another model kept in the same file (see ``OTHER_COMPONENTS``)."""
    return any(key.startswith(p) and any(k.startswith(sig) for k in state_dict)
               for p, sig in OTHER_COMPONENTS.items())


def _resnet(m: KeyMapper, src: str, dst: str, lay: _Layout) -> None:
    for n in ("norm1", "norm2"):
        m.norm(f"{src}.{n}", f"{dst}/{n}")
    for n in ("conv1", "conv2"):
        _conv(m, f"{src}.{n}", f"{dst}/{n}")
    if m.has(f"{src}.{lay.shortcut}.weight"):
        _conv(m, f"{src}.{lay.shortcut}", f"{dst}/conv_shortcut")


def _conv(m: KeyMapper, src: str, dst: str) -> None:
    w = m.src.get(f"{src}.weight")
    if w is not None and np.ndim(w) != 4:
        raise ConversionError(f"{src}.weight: Conv2d weight has shape {np.shape(w)}, expected [out, in, kh, kw]")
    m.conv(src, dst)


def _attention(m: KeyMapper, src: str, dst: str, lay: _Layout) -> None:
    m.norm(f"{src}.{lay.attn_norm}", f"{dst}/group_norm")
    for new, theirs in lay.attn.items():
        name = theirs
        if lay is DIFFUSERS and not m.has(f"{src}.{new}.weight") and m.has(f"{src}.{_LEGACY_ATTN[new]}.weight"):
            name = _LEGACY_ATTN[new]
        w = m.take(f"{src}.{name}.weight")
        if w.ndim == 4 and w.shape[2:] == (1, 1):
            w = w[:, :, 0, 0]
        if w.ndim != 2:
            raise ConversionError(f"{src}.{name}.weight: attention weight has shape {w.shape}, expected [C, C]")
        d = f"{dst}/{new.replace('.', '_')}"
        m.put(f"{d}/kernel", np.ascontiguousarray(w.T), f"{src}.{name}.weight")
        m.raw(f"{src}.{name}.bias", f"{d}/bias")


def _mid(m: KeyMapper, part: str, cfg: KLVAEConfig, lay: _Layout) -> None:
    dst = f"{part}/mid_block"
    _resnet(m, lay.mid(part, "res0"), f"{dst}/resnets_0", lay)
    if cfg.mid_block_add_attention:
        _attention(m, lay.mid(part, "attn"), f"{dst}/attentions_0", lay)
    _resnet(m, lay.mid(part, "res1"), f"{dst}/resnets_1", lay)


def convert_kl_vae(state_dict: Mapping[str, np.ndarray], config: KLVAEConfig | str, *, strict: bool = True,
                   prefix: str = "", what: str = "AutoencoderKL checkpoint") -> tuple[dict, ConversionReport]:
    """Flat AutoencoderKL state dict (diffusers or CompVis/LDM layout, detected) -> (KLVAE params, report).

    ``prefix`` selects a sub-module in a bigger checkpoint (e.g. ``"vae."`` or ``"first_stage_model."``);
    other keys are ignored then. Keys of another component (``vocoder.*``, see the module docstring) are
    ignored too; any other unmapped key is reported.
    """
    cfg = get_config(config) if isinstance(config, str) else config
    sd = {k[len(prefix):]: np.asarray(v) for k, v in state_dict.items() if k.startswith(prefix)}
    foreign = {k for k in sd if other_component(k, sd)}
    sd = {k: v for k, v in sd.items() if k not in foreign}
    lay = detect_layout(sd)
    m = KeyMapper(sd)
    n = len(cfg.block_out_channels)
    try:
        _conv(m, "encoder.conv_in", "encoder/conv_in")
        for i in range(n):
            for j in range(cfg.layers_per_block):
                _resnet(m, lay.down_res(i, j), f"encoder/down_blocks_{i}/resnets_{j}", lay)
            if i != n - 1:
                _conv(m, lay.downsample(i), f"encoder/down_blocks_{i}/downsamplers_0/conv")
        _mid(m, "encoder", cfg, lay)
        m.norm(lay.norm_out("encoder"), "encoder/conv_norm_out")
        _conv(m, "encoder.conv_out", "encoder/conv_out")
        if cfg.use_quant_conv:
            _conv(m, "quant_conv", "quant_conv")
        if cfg.use_post_quant_conv:
            _conv(m, "post_quant_conv", "post_quant_conv")
        _conv(m, "decoder.conv_in", "decoder/conv_in")
        _mid(m, "decoder", cfg, lay)
        for i in range(n):
            for j in range(cfg.layers_per_block + 1):
                _resnet(m, lay.up_res(i, j, n), f"decoder/up_blocks_{i}/resnets_{j}", lay)
            if i != n - 1:
                _conv(m, lay.upsample(i, n), f"decoder/up_blocks_{i}/upsamplers_0/conv")
        m.norm(lay.norm_out("decoder"), "decoder/conv_norm_out")
        _conv(m, "decoder.conv_out", "decoder/conv_out")
    except ConversionError as e:
        if strict:
            raise ConversionError(f"{what}: {e} ({lay.name} AutoencoderKL layout)") from None
    return m.finish(shapes_of(abstract_params(cfg)), strict=strict, what=what)


def _read_weights(path: str) -> dict:
    """safetensors, or a pickled torch state dict read without torch (a ``state_dict`` entry is unwrapped)."""
    if path.endswith(".safetensors"):
        return load_state_dict(path)
    obj = read_torch_pickle(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k: v.astype(np.float32) if v.dtype.kind == "f" or v.dtype.name == "bfloat16" else v
            for k, v in obj.items() if isinstance(v, np.ndarray)}


def load_kl_vae(path: str | os.PathLike, config: KLVAEConfig | str, *, strict: bool = True) -> dict:
    """Reads a diffusers ``vae/`` folder (``diffusion_pytorch_model.safetensors``/``.bin``) or one weights file
    (safetensors or a torch pickle, read without torch; e.g. Tango's ``pytorch_model_vae.bin``) and converts."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f"{path}: no diffusion_pytorch_model.safetensors/.bin in this folder")
    params, _ = convert_kl_vae(_read_weights(path), config, strict=strict, what=path)
    return params


__all__ = ["convert_kl_vae", "load_kl_vae", "detect_layout", "other_component", "OTHER_COMPONENTS", "DIFFUSERS",
           "LDM"]
