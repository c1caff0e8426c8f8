"""Official EzAudio checkpoint (``MaskDiT`` state dict) -> :class:`tta_jax.denoisers.dit.DiT` params.

Source names (github.com/haidog-yaqub/EzAudio, ``src/models/conditioners.py::MaskDiT`` wrapping
``udit.py::UDiT``; the released ``.pt`` holds them under ``['model']``, which :func:`load_state_dict`
selects with ``key="model"``)::

  mask_embed                                   [C]            -> mask_embed
  model.patch_embed.proj.{weight [D, 2C+1, 1], bias}          -> patch_embed (Conv1d k=1)
  model.time_embed.mlp.{0,2}.{weight, bias}                   -> time_embed/linear_{1,2}
  model.time_ada.{weight [6D, D], bias}                       -> time_ada   (shared; sola / adaln_single)
  model.time_ada_final.{weight [2D, D], bias}                 -> time_ada_final
  model.context_embed.{0,2}.{weight, bias}                    -> context_embed/linear_{1,2}
  model.{in_blocks.i | mid_block | out_blocks.i}.
      norm1 / norm2 / norm3 / norm_context.{weight, bias}     -> .../norm1 ... (LayerNorm scale/bias)
      attn.{to_q, to_k, to_v}.weight                          -> .../attn/to_{q,k,v}
      attn.proj.{weight, bias}                                -> .../attn/to_out
      attn.norm_q / attn.norm_k.{weight, bias}                -> .../attn/q_norm, k_norm
      attn.rotary.inv_freq                                    (buffer: checked, dropped)
      cross_attn.*                                            -> .../cross_attn/* (same layout)
      mlp.net.0.proj.{weight, bias}, mlp.net.2.{weight,bias}  -> .../ff/net_0/proj, ff/net_2
      adaln.lora_a.weight, adaln.lora_b.weight                -> .../adaln/lora_a, lora_b
      adaln.scale_shift_table [6, D]                          -> .../adaln/scale_shift_table
      adaln.time_ada.{weight, bias}   (adaln_zero ablation)   -> .../adaln/time_ada
      skip_norm.{weight, bias}, skip_linear.{weight, bias}    -> .../skip_norm, skip_linear (out blocks)
  model.final_block.norm / linear / final_layer (Conv1d k=3)  -> final_block/norm, linear, final_layer

A DDP ``module.`` prefix is stripped. Every source key must be consumed and every target param filled
with the expected shape; otherwise :class:`ConversionError` names the offending keys (``strict=False``
returns the partial tree and the report instead).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.convert.common import ConversionError, KeyMapper, load_state_dict, shapes_of


def target_shapes(config) -> dict[str, tuple]:
    """Flat ``{"a/b/kernel": shape}`` of the DiT params for ``config`` (abstract init with a text context)."""
    from tta_jax.denoisers.dit import DiT

    cond = {}
    if config.context_dim is not None:
        cond = {"text": jnp.zeros((1, 2, config.context_dim)), "text_mask": jnp.ones((1, 2), bool)}
    abstract = jax.eval_shape(DiT(config).init, jax.random.key(0), jnp.zeros((1, 4, config.in_channels)),
                              jnp.zeros((1,)), cond)
    return shapes_of(abstract["params"])


def _strip_prefixes(sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        k2 = k[len("module."):] if k.startswith("module.") else k
        out[k2] = np.asarray(v)
    return out


def _block_keys(m: KeyMapper, src: str, dst: str, config, *, has_skip: bool, has_cross: bool, errors: list):
    def attempt(fn, *a, **kw):
        try:
            fn(*a, **kw)
        except ConversionError as e:
            errors.append(str(e))

    for n in ("norm1", "norm3"):
        attempt(m.norm, f"{src}.{n}", f"{dst}/{n}")
    attns = [("attn", "attn")] + ([("cross_attn", "cross_attn")] if has_cross else [])
    for s, d in attns:
        for p in ("to_q", "to_k", "to_v"):
            attempt(m.dense, f"{src}.{s}.{p}", f"{dst}/{d}/{p}")
        attempt(m.dense, f"{src}.{s}.proj", f"{dst}/{d}/to_out")
        if config.qk_norm:
            attempt(m.norm, f"{src}.{s}.norm_q", f"{dst}/{d}/q_norm")
            attempt(m.norm, f"{src}.{s}.norm_k", f"{dst}/{d}/k_norm")
        inv = f"{src}.{s}.rotary.inv_freq"
        if m.has(inv):
            v = m.take(inv)
            hd = config.hd
            expect = 1.0 / (10000 ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
            if v.shape != expect.shape or not np.allclose(v, expect, rtol=1e-5):
                errors.append(f"{inv}: rotary table {v.shape} does not match head_dim {hd} / base 10000")
    if has_cross:
        attempt(m.norm, f"{src}.norm2", f"{dst}/norm2")
        if config.context_norm:
            attempt(m.norm, f"{src}.norm_context", f"{dst}/norm_context")
    attempt(m.dense, f"{src}.mlp.net.0.proj", f"{dst}/ff/net_0/proj")
    attempt(m.dense, f"{src}.mlp.net.2", f"{dst}/ff/net_2")
    if config.modulation == "sola":
        attempt(m.dense, f"{src}.adaln.lora_a", f"{dst}/adaln/lora_a", bias=False)
        attempt(m.dense, f"{src}.adaln.lora_b", f"{dst}/adaln/lora_b", bias=False)
        if config.sola_table:
            attempt(m.raw, f"{src}.adaln.scale_shift_table", f"{dst}/adaln/scale_shift_table")
    elif config.modulation == "adaln_single":
        attempt(m.raw, f"{src}.adaln.scale_shift_table", f"{dst}/adaln/scale_shift_table")
    else:
        attempt(m.dense, f"{src}.adaln.time_ada", f"{dst}/adaln/time_ada")
    if has_skip:
        if config.skip_norm:
            attempt(m.norm, f"{src}.skip_norm", f"{dst}/skip_norm")
        attempt(m.dense, f"{src}.skip_linear", f"{dst}/skip_linear")


def convert_ezaudio_dit(state_dict: Mapping[str, Any], config, *, strict: bool = True,
                        what: str = "EzAudio DiT checkpoint"):
    """Maps an official EzAudio ``MaskDiT`` state dict onto our DiT params.

    Args:
      state_dict: flat ``{name: array}`` (numpy or torch tensors converted with ``torch_state_dict_to_numpy``).
      config: the :class:`~tta_jax.denoisers.dit.DiTConfig` the checkpoint was trained with.
      strict: raise on any missing / unexpected / mis-shaped key.
    Returns:
      (``{"params": tree}``, :class:`~tta_jax.convert.common.ConversionReport`)
    """
    sd = _strip_prefixes(state_dict)
    P = "model." if any(k.startswith("model.") for k in sd) else ""
    m = KeyMapper(sd)
    errors: list[str] = []

    def attempt(fn, *a, **kw):
        try:
            fn(*a, **kw)
        except ConversionError as e:
            errors.append(str(e))

    if config.use_mask_input:
        attempt(m.raw, "mask_embed", "mask_embed")
    attempt(m.conv, f"{P}patch_embed.proj", "patch_embed")
    attempt(m.dense, f"{P}time_embed.mlp.0", "time_embed/linear_1")
    attempt(m.dense, f"{P}time_embed.mlp.2", "time_embed/linear_2")
    if config.modulation in ("sola", "adaln_single"):
        attempt(m.dense, f"{P}time_ada", "time_ada")
    attempt(m.dense, f"{P}time_ada_final", "time_ada_final")
    has_cross = config.context_dim is not None
    if has_cross:
        attempt(m.dense, f"{P}context_embed.0", "context_embed/linear_1")
        attempt(m.dense, f"{P}context_embed.2", "context_embed/linear_2")
    n_half = config.depth // 2
    for i in range(n_half):
        _block_keys(m, f"{P}in_blocks.{i}", f"in_blocks_{i}", config, has_skip=False, has_cross=has_cross,
                    errors=errors)
    _block_keys(m, f"{P}mid_block", "mid_block", config, has_skip=False, has_cross=has_cross, errors=errors)
    for i in range(n_half):
        _block_keys(m, f"{P}out_blocks.{i}", f"out_blocks_{i}", config, has_skip=config.long_skips,
                    has_cross=has_cross, errors=errors)
    attempt(m.norm, f"{P}final_block.norm", "final_block/norm")
    attempt(m.dense, f"{P}final_block.linear", "final_block/linear")
    if config.final_conv:
        attempt(m.conv, f"{P}final_block.final_layer", "final_block/final_layer")

    shapes = target_shapes(config)
    try:
        params, report = m.finish(shapes, strict=strict and not errors, what=what)
    except ConversionError as e:
        errors.append(str(e))
        params, report = None, None
    if errors and strict:
        leftover = sorted(m.src)
        msg = "; ".join(dict.fromkeys(errors))
        if leftover:
            msg += f"; unconsumed source keys: {', '.join(leftover[:30])}" + (
                f" ... (+{len(leftover) - 30})" if len(leftover) > 30 else "")
        raise ConversionError(f"{what}: {msg}")
    if report is None:
        params, report = m.finish(shapes, strict=False, what=what)
    report.missing.extend(e for e in errors if e not in report.missing)
    return {"params": params}, report


def load_ezaudio_dit(path, config, *, strict: bool = True):
    """Reads an official EzAudio ``.pt`` (``['model']`` sub-dict) or a ``.safetensors`` file and converts it."""
    path = str(path)
    sd = load_state_dict(path) if path.endswith(".safetensors") else load_state_dict(path, key="model")
    return convert_ezaudio_dit(sd, config, strict=strict, what=path)
