"""transformers CLAP audio tower state dict -> :class:`tta_jax.eval.htsat.HTSAT` variables.

Sources: ``ClapModel`` or ``ClapAudioModelWithProjection`` (both name the tower ``audio_model.audio_encoder``
and the head ``audio_projection``); the text tower, ``logit_scale_{a,t}``, the ``relative_position_index``
buffers and ``num_batches_tracked`` are ignored. Linear ``weight`` -> Dense ``kernel`` (transposed),
Conv2d ``[out, in, kh, kw]`` -> ``[kh, kw, in, out]``, LayerNorm ``weight`` -> ``scale``, BatchNorm
``weight``/``bias`` -> ``params/.../scale``/``bias`` and ``running_mean``/``running_var`` ->
``batch_stats/.../mean``/``var``. With ``E = audio_model.audio_encoder``::

    E.batch_norm                                          -> batch_norm (BatchNorm over mel bins)
    E.patch_embed.proj / norm                             -> patch_embed/proj / norm
    E.patch_embed.mel_conv2d                              -> patch_embed/mel_conv2d          (fusion)
    E.patch_embed.fusion_model.{local,global}_att.{n}     -> patch_embed/fusion/{local,global}_att_{n}
    E.layers.{i}.blocks.{j}.layernorm_before / after      -> layers_{i}/blocks_{j}/layernorm_before / after
    E.layers.{i}.blocks.{j}.attention.self.{query,key,value} -> layers_{i}/blocks_{j}/{query,key,value}
    E.layers.{i}.blocks.{j}.attention.self.relative_position_bias_table
                                                          -> layers_{i}/blocks_{j}/relative_position_bias_table
    E.layers.{i}.blocks.{j}.attention.output.dense        -> layers_{i}/blocks_{j}/attn_out
    E.layers.{i}.blocks.{j}.intermediate.dense / output.dense -> layers_{i}/blocks_{j}/intermediate / output
    E.layers.{i}.downsample.norm / reduction              -> layers_{i}/downsample/norm / reduction
    E.norm                                                -> norm
    audio_projection.linear1 / linear2                    -> projection/linear1 / linear2

:func:`tta_jax.convert.common.load_hf_state_dict` reads a transformers folder without torch (safetensors, or ``.bin`` pickles
through the restricted torch-free reader :func:`tta_jax.convert.common.read_torch_pickle`).
:func:`load_clap_embedder` loads both towers of such a folder into the evaluation suite's
:class:`tta_jax.eval.clap.ClapEmbedder`.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import numpy as np

from tta_jax.convert.common import (ConversionError, ConversionReport, KeyMapper, load_hf_state_dict,
                                    read_hf_config, shapes_of)
from tta_jax.eval.htsat import HTSAT, HTSATConfig, abstract_variables

PREFIX = "audio_model.audio_encoder."


def _ignored(k: str) -> bool:
    return (k.startswith(("text_model.", "text_projection.", "logit_scale"))
            or k.endswith(("relative_position_index", "num_batches_tracked", "position_ids", "token_type_ids")))


def _batch_norm(m: KeyMapper, src: str, dst: str) -> None:
    m.raw(f"{src}.weight", f"params/{dst}/scale")
    m.raw(f"{src}.bias", f"params/{dst}/bias")
    m.raw(f"{src}.running_mean", f"batch_stats/{dst}/mean")
    m.raw(f"{src}.running_var", f"batch_stats/{dst}/var")


def _map(m: KeyMapper, config: HTSATConfig) -> None:
    e, p = PREFIX, "params/"
    _batch_norm(m, f"{e}batch_norm", "batch_norm")
    m.conv(f"{e}patch_embed.proj", f"{p}patch_embed/proj")
    if config.enable_patch_layer_norm:
        m.norm(f"{e}patch_embed.norm", f"{p}patch_embed/norm")
    if config.enable_fusion:
        m.conv(f"{e}patch_embed.mel_conv2d", f"{p}patch_embed/mel_conv2d")
        f = f"{e}patch_embed.fusion_model"
        for branch, convs, bns in (("local_att", (0, 3), (1, 4)), ("global_att", (1, 4), (2, 5))):
            for n in convs:
                m.conv(f"{f}.{branch}.{n}", f"{p}patch_embed/fusion/{branch}_{n}")
            for n in bns:
                _batch_norm(m, f"{f}.{branch}.{n}", f"patch_embed/fusion/{branch}_{n}")
    for i, depth in enumerate(config.depths):
        for j in range(depth):
            s, d = f"{e}layers.{i}.blocks.{j}", f"{p}layers_{i}/blocks_{j}"
            m.norm(f"{s}.layernorm_before", f"{d}/layernorm_before")
            for n in ("query", "key", "value"):
                m.dense(f"{s}.attention.self.{n}", f"{d}/{n}")
            m.raw(f"{s}.attention.self.relative_position_bias_table", f"{d}/relative_position_bias_table")
            m.dense(f"{s}.attention.output.dense", f"{d}/attn_out")
            m.norm(f"{s}.layernorm_after", f"{d}/layernorm_after")
            m.dense(f"{s}.intermediate.dense", f"{d}/intermediate")
            m.dense(f"{s}.output.dense", f"{d}/output")
        if i < len(config.depths) - 1:
            m.norm(f"{e}layers.{i}.downsample.norm", f"{p}layers_{i}/downsample/norm")
            m.dense(f"{e}layers.{i}.downsample.reduction", f"{p}layers_{i}/downsample/reduction", bias=False)
    m.norm(f"{e}norm", f"{p}norm")
    m.dense("audio_projection.linear1", f"{p}projection/linear1")
    m.dense("audio_projection.linear2", f"{p}projection/linear2")


def convert_clap_audio(state_dict: Mapping[str, Any], config: HTSATConfig, *, strict: bool = True,
                       what: str = "CLAP checkpoint") -> tuple[dict, ConversionReport]:
    """transformers ``ClapModel`` / ``ClapAudioModelWithProjection`` state dict -> (HTSAT variables
    ``{"params", "batch_stats"}``, report). Missing keys, leftover audio keys and shape mismatches raise
    :class:`ConversionError` naming the keys (unless ``strict=False``)."""
    m = KeyMapper({k: np.asarray(v) for k, v in state_dict.items()})
    try:
        _map(m, config)
    except ConversionError as err:
        if strict:
            raise ConversionError(f"{what}: {err}") from None
    return m.finish(_target_shapes(config), strict=strict, what=what, ignore=_ignored)


@functools.lru_cache(maxsize=8)
def _target_shapes(config: HTSATConfig) -> dict[str, tuple]:
    return shapes_of(abstract_variables(config))


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------
def load_clap_audio_dir(path: str | os.PathLike, *, strict: bool = True,
                        state_dict: Mapping[str, Any] | None = None) -> tuple[HTSATConfig, dict]:
    """A transformers CLAP folder (config.json + weights) -> (HTSATConfig, variables)."""
    cfg = HTSATConfig.from_hf(read_hf_config(path))
    sd = load_hf_state_dict(path) if state_dict is None else state_dict
    variables, _ = convert_clap_audio(sd, cfg, strict=strict, what=os.fspath(path))
    return cfg, variables


def from_pretrained_dir(path, *, dtype: Any = None):
    """-> (HTSAT module, variables) from a transformers CLAP folder."""
    cfg, variables = load_clap_audio_dir(path)
    return HTSAT(cfg, dtype=dtype), variables


def load_clap_embedder(directory: str, *, dtype: Any = None):
    """Loads a local HF-format CLAP directory (config.json, model weights, preprocessor and tokenizer
    files), e.g. a snapshot of ``laion/larger_clap_general`` -> :class:`tta_jax.eval.clap.ClapEmbedder`."""
    from transformers import AutoTokenizer

    from tta_jax.convert.text_encoders import convert_clap_text
    from tta_jax.eval.clap import ClapEmbedder, ClapFrontendConfig
    from tta_jax.text.clap import ClapTextConfig, ClapTextEncoder

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"CLAP checkpoint directory not found: {directory}")
    raw = read_hf_config(directory)
    sd = load_hf_state_dict(directory)
    acfg, tcfg = HTSATConfig.from_hf(raw), ClapTextConfig.from_hf(raw)
    avars, _ = convert_clap_audio(sd, acfg, what=directory)
    tparams, _ = convert_clap_text(sd, tcfg, what=directory)
    tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    fe = ClapFrontendConfig.from_dir(directory, enable_fusion=acfg.enable_fusion)
    return ClapEmbedder(HTSAT(acfg, dtype=dtype), avars, ClapTextEncoder(tcfg, dtype=dtype), tparams, tok, fe,
                        name=os.path.basename(os.path.normpath(directory)))


__all__ = ["convert_clap_audio", "load_hf_state_dict", "read_hf_config", "load_clap_audio_dir",
           "from_pretrained_dir", "load_clap_embedder"]
