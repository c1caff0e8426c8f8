"""diffusers ``UNet2DConditionModel`` state dict -> :class:`tta_jax.denoisers.unet.UNet` params.

Pure key mapping (NCHW conv kernels -> HWIO, Linear -> Dense, ``to_out.0`` -> ``to_out``,
``ff.net.0.proj`` -> ``ff/net_0/proj``, 1x1-conv ``proj_in``/``proj_out`` -> Dense). Every source key must
be used and every target param filled with the right shape, otherwise :class:`ConversionError` names
the offending keys (``strict=False`` returns what matched plus the report instead).

Adapter parameters that a pretrained checkpoint cannot contain (extra cross-attention contexts,
DreamAudio reference cross-attention, SERST ``ada1``/``ada2`` modulation and the class/style projection)
may be taken from ``init_params`` (a freshly initialised param tree), so a pretrained SD/Tango U-Net
loads into an adapter-augmented model; any other missing param is still an error.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np

from tta_jax.convert.common import (ConversionError, ConversionReport, KeyMapper, flatten_params,
                                    load_state_dict, shapes_of, torch_state_dict_to_numpy, unbox)
from tta_jax.denoisers.unet import CROSS_DOWN, CROSS_UP, MID_CROSS, UNet


def unet_param_shapes(model: UNet) -> dict[str, tuple]:
    """Flat ``{"a/b/kernel": shape}`` of the model's params (abstract init, no compute)."""
    x, t, cond = model.dummy_inputs()
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t, cond)
    return shapes_of(variables["params"])


def _is_adapter_param(name: str, model: UNet) -> bool:
    parts = name.split("/")
    keys = [ec.key for ec in model.extra_contexts] + (["ref"] if model.ref_blocks else [])
    adapter_modules = {f"attn_{k}" for k in keys} | {f"norm_{k}" for k in keys} | {"ada1", "ada2"}
    if any(p in adapter_modules for p in parts):
        return True
    return parts[0] == "class_embedding"


class _Mapper(KeyMapper):
    """KeyMapper that maps only keys present in the source (absent ones surface as missing targets)."""

    def opt_dense(self, src, dst):
        if not self.has(f"{src}.weight") and self.has(f"{src}.bias"):
            self.raw(f"{src}.bias", f"{dst}/bias")
        if self.has(f"{src}.weight"):
            w = self.src[f"{src}.weight"]
            if np.ndim(w) == 4:  # 1x1 conv used as a projection
                if tuple(np.shape(w)[2:]) != (1, 1):
                    raise ConversionError(f"{src}.weight: expected a Linear or 1x1 conv, got shape {np.shape(w)}")
                self.raw(f"{src}.weight", f"{dst}/kernel", lambda a: np.ascontiguousarray(a[:, :, 0, 0].T))
                if self.has(f"{src}.bias"):
                    self.raw(f"{src}.bias", f"{dst}/bias")
            else:
                self.dense(src, dst)

    def opt_conv(self, src, dst):
        if not self.has(f"{src}.weight") and self.has(f"{src}.bias"):
            self.raw(f"{src}.bias", f"{dst}/bias")
        if self.has(f"{src}.weight"):
            self.conv(src, dst)

    def opt_norm(self, src, dst):
        if self.has(f"{src}.weight"):
            self.norm(src, dst)

    def resnet(self, src, dst):
        if self.has(f"{src}.norm1.linear.weight"):  # AdaGroupNorm (ada_group)
            self.dense(f"{src}.norm1.linear", f"{dst}/norm1/linear")
            self.dense(f"{src}.norm2.linear", f"{dst}/norm2/linear")
        else:
            self.opt_norm(f"{src}.norm1", f"{dst}/norm1")
            self.opt_norm(f"{src}.norm2", f"{dst}/norm2")
        self.opt_conv(f"{src}.conv1", f"{dst}/conv1")
        self.opt_conv(f"{src}.conv2", f"{dst}/conv2")
        self.opt_dense(f"{src}.time_emb_proj", f"{dst}/time_emb_proj")
        self.opt_conv(f"{src}.conv_shortcut", f"{dst}/conv_shortcut")

    def transformer(self, src, dst, n_layers):
        self.opt_norm(f"{src}.norm", f"{dst}/norm")
        self.opt_dense(f"{src}.proj_in", f"{dst}/proj_in")
        self.opt_dense(f"{src}.proj_out", f"{dst}/proj_out")
        for k in range(n_layers):
            s, d = f"{src}.transformer_blocks.{k}", f"{dst}/transformer_blocks_{k}"
            for n in ("norm1", "norm2", "norm3"):
                self.opt_norm(f"{s}.{n}", f"{d}/{n}")
            for a in ("attn1", "attn2"):
                for p in ("to_q", "to_k", "to_v"):
                    self.opt_dense(f"{s}.{a}.{p}", f"{d}/{a}/{p}")
                self.opt_dense(f"{s}.{a}.to_out.0", f"{d}/{a}/to_out")
            self.opt_dense(f"{s}.ff.net.0.proj", f"{d}/ff/net_0/proj")
            self.opt_dense(f"{s}.ff.net.2", f"{d}/ff/net_2")


def convert_diffusers_unet(state_dict: Mapping[str, Any], model: UNet, *, strict: bool = True,
                           init_params: Mapping[str, Any] | None = None,
                           what: str = "diffusers UNet2DConditionModel") -> tuple[dict, ConversionReport]:
    """Maps a diffusers ``UNet2DConditionModel`` state dict onto ``model``'s param tree.

    Args:
      state_dict: ``{name: array or torch tensor}`` (e.g. ``unet.state_dict()`` or a safetensors file).
      model: the target :class:`UNet` (e.g. ``UNet.from_diffusers_config(unet.config)``).
      strict: raise :class:`ConversionError` naming every unexpected/missing/mismatched key.
      init_params: params of ``model.init`` used to fill adapter params absent from the checkpoint.
      what: a name (file path) for error messages.
    Returns:
      (params nested dict of float32 numpy arrays, report).
    """
    sd = torch_state_dict_to_numpy(state_dict)
    shapes = unet_param_shapes(model)
    m = _Mapper(sd)
    m.opt_conv("conv_in", "conv_in")
    m.opt_dense("time_embedding.linear_1", "time_embedding/linear_1")
    m.opt_dense("time_embedding.linear_2", "time_embedding/linear_2")
    m.opt_dense("class_embedding", "class_embedding")  # simple_projection
    m.opt_dense("class_embedding.linear_1", "class_embedding/linear_1")  # projection
    m.opt_dense("class_embedding.linear_2", "class_embedding/linear_2")
    n = model.n_blocks
    lpb = model.layers_per_block
    lpb = tuple(lpb) if isinstance(lpb, (list, tuple)) else (lpb,) * n
    tl = model.transformer_layers_per_block
    for i in range(n):
        s, d = f"down_blocks.{i}", f"down_blocks_{i}"
        for j in range(lpb[i]):
            m.resnet(f"{s}.resnets.{j}", f"{d}/resnets_{j}")
            if model.down_block_types[i] == CROSS_DOWN:
                m.transformer(f"{s}.attentions.{j}", f"{d}/attentions_{j}", tl)
        m.opt_conv(f"{s}.downsamplers.0.conv", f"{d}/downsamplers_0")
    if model.mid_block_type == MID_CROSS:
        m.resnet("mid_block.resnets.0", "mid_block/resnets_0")
        m.transformer("mid_block.attentions.0", "mid_block/attentions_0", tl)
        m.resnet("mid_block.resnets.1", "mid_block/resnets_1")
    rl = lpb[::-1]
    for i in range(n):
        s, d = f"up_blocks.{i}", f"up_blocks_{i}"
        for j in range(rl[i] + 1):
            m.resnet(f"{s}.resnets.{j}", f"{d}/resnets_{j}")
            if model.up_block_types[i] == CROSS_UP:
                m.transformer(f"{s}.attentions.{j}", f"{d}/attentions_{j}", tl)
        m.opt_conv(f"{s}.upsamplers.0.conv", f"{d}/upsamplers_0")
    m.opt_norm("conv_norm_out", "conv_norm_out")
    m.opt_conv("conv_out", "conv_out")

    if init_params is not None:
        init_flat = flatten_params(unbox(dict(init_params)))
        for name in shapes:
            if name not in m.out and _is_adapter_param(name, model):
                if name not in init_flat:
                    raise ConversionError(f"{what}: init_params has no {name!r} to fill the adapter param")
                m.put(name, np.asarray(init_flat[name]), "(init_params)")
    return m.finish(shapes, strict=strict, what=what)


def load_diffusers_unet(path: str | os.PathLike, *, strict: bool = True, init_params=None, **overrides):
    """Loads a diffusers U-Net folder (``config.json`` + ``diffusion_pytorch_model.safetensors``/``.bin``).

    Returns (model, params, report). ``overrides`` go to :meth:`UNet.from_diffusers_config` (e.g.
    ``dtype``, ``extra_contexts``).
    """
    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path}: no config.json (expected a diffusers UNet2DConditionModel folder)")
    with open(cfg_path) as f:
        config = json.load(f)
    model = UNet.from_diffusers_config(config, **overrides)
    for fname in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        wpath = os.path.join(path, fname)
        if os.path.exists(wpath):
            break
    else:
        raise FileNotFoundError(f"{path}: no diffusion_pytorch_model.safetensors or .bin")
    params, report = convert_diffusers_unet(load_state_dict(wpath), model, strict=strict,
                                            init_params=init_params, what=wpath)
    return model, params, report
