"""transformers text-encoder state dicts -> tta_jax.text params (T5 encoder, CLIP text, CLAP text).

Key mappings (``.weight`` of Linear -> Dense ``kernel`` transposed, ``.bias`` -> ``bias``; Embedding
``.weight`` -> ``embedding``; LayerNorm ``weight``/``bias`` -> ``scale``/``bias``):

T5 (``T5EncoderModel`` or a full ``T5ForConditionalGeneration``; ``decoder.*``/``lm_head`` ignored)::

    shared | encoder.embed_tokens                              -> shared
    encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}          -> block_{i}/{q,k,v,o}
    encoder.block.0.layer.0.SelfAttention.relative_attention_bias -> block_0/relative_attention_bias
    encoder.block.{i}.layer.0.layer_norm                       -> block_{i}/layer_norm_0/scale
    encoder.block.{i}.layer.1.DenseReluDense.{wi,wi_0,wi_1,wo} -> block_{i}/{wi,wi_0,wi_1,wo}
    encoder.block.{i}.layer.1.layer_norm                       -> block_{i}/layer_norm_1/scale
    encoder.final_layer_norm                                   -> final_layer_norm/scale

CLIP text (``CLIPTextModel[WithProjection]`` or ``CLIPModel``; optional ``text_model.`` prefix; the
vision tower, ``visual_projection`` and ``logit_scale`` are ignored)::

    embeddings.token_embedding / position_embedding            -> token_embedding / position_embedding
    encoder.layers.{i}.self_attn.{q,k,v,out}_proj              -> layers_{i}/{q,k,v,out}_proj
    encoder.layers.{i}.{layer_norm1,layer_norm2}               -> layers_{i}/{layer_norm1,layer_norm2}
    encoder.layers.{i}.mlp.{fc1,fc2}                           -> layers_{i}/{fc1,fc2}
    final_layer_norm                                           -> final_layer_norm
    text_projection (no bias, only if config.projection_dim)   -> text_projection

CLAP text (``ClapTextModelWithProjection`` or ``ClapModel``; audio tower ignored)::

    text_model.embeddings.{word,position,token_type}_embeddings -> {word,position,token_type}_embeddings
    text_model.embeddings.LayerNorm                             -> embeddings_ln
    text_model.encoder.layer.{i}.attention.self.{query,key,value} -> layer_{i}/{query,key,value}
    text_model.encoder.layer.{i}.attention.output.dense / LayerNorm -> layer_{i}/attn_out / attn_ln
    text_model.encoder.layer.{i}.intermediate.dense             -> layer_{i}/ffn_in
    text_model.encoder.layer.{i}.output.dense / LayerNorm       -> layer_{i}/ffn_out / ffn_ln
    text_model.pooler.dense                                     -> pooler
    text_projection.{linear1,linear2}                           -> projection/{linear1,linear2}
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.convert.common import (ConversionError, ConversionReport, KeyMapper, load_hf_state_dict,
                                    read_hf_config, shapes_of)
from tta_jax.text.clap import ClapTextConfig, ClapTextEncoder
from tta_jax.text.clip import CLIPTextConfig, CLIPTextEncoder
from tta_jax.text.t5 import T5Config, T5Encoder


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def _abstract(module, length: int = 4) -> dict[str, tuple]:
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    tree = jax.eval_shape(lambda i: module.init(jax.random.PRNGKey(0), i), ids)["params"]
    return shapes_of(tree)


def _linear(m: KeyMapper, src: str, dst: str, *, bias: bool | None = None) -> None:
    w = m.src.get(f"{src}.weight")
    if w is not None and np.ndim(w) != 2:
        raise ConversionError(f"{src}.weight: Linear weight has shape {np.shape(w)}, expected [out, in]")
    m.dense(src, dst, bias=bias)


def _embed(m: KeyMapper, src: str, dst: str) -> None:
    m.raw(f"{src}.weight", f"{dst}/embedding")


def _run(fn: Callable[[KeyMapper], None], sd: Mapping[str, Any], target: Mapping[str, tuple], *,
         strict: bool, what: str, ignore: Callable[[str], bool]) -> tuple[dict, ConversionReport]:
    m = KeyMapper({k: np.asarray(v) for k, v in sd.items()})
    try:
        fn(m)
    except ConversionError as e:
        if strict:
            raise ConversionError(f"{what}: {e}") from None
    return m.finish(target, strict=strict, what=what, ignore=ignore)


def _strip(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Removes ``prefix`` from keys that have it (other keys are kept unchanged)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


# --------------------------------------------------------------------------------------------------
# T5
# --------------------------------------------------------------------------------------------------
def convert_t5(state_dict: Mapping[str, Any], config: T5Config, *, strict: bool = True,
               what: str = "T5 checkpoint") -> tuple[dict, ConversionReport]:
    """transformers T5 state dict -> (T5Encoder params, report)."""
    sd = dict(state_dict)

    def fn(m: KeyMapper):
        if m.has("shared.weight"):
            _embed(m, "shared", "shared")
            m.src.pop("encoder.embed_tokens.weight", None)  # tied copy
        else:
            _embed(m, "encoder.embed_tokens", "shared")
        for i in range(config.num_layers):
            s, d = f"encoder.block.{i}.layer", f"block_{i}"
            for n in ("q", "k", "v", "o"):
                _linear(m, f"{s}.0.SelfAttention.{n}", f"{d}/{n}", bias=False)
            if i == 0:
                m.raw(f"{s}.0.SelfAttention.relative_attention_bias.weight", f"{d}/relative_attention_bias")
            m.raw(f"{s}.0.layer_norm.weight", f"{d}/layer_norm_0/scale")
            for n in (("wi_0", "wi_1") if config.is_gated else ("wi",)) + ("wo",):
                _linear(m, f"{s}.1.DenseReluDense.{n}", f"{d}/{n}", bias=False)
            m.raw(f"{s}.1.layer_norm.weight", f"{d}/layer_norm_1/scale")
        m.raw("encoder.final_layer_norm.weight", "final_layer_norm/scale")

    ignore = lambda k: k.startswith("decoder.") or k.startswith("lm_head.")  # noqa: E731
    return _run(fn, sd, _abstract(T5Encoder(config)), strict=strict, what=what, ignore=ignore)


# --------------------------------------------------------------------------------------------------
# CLIP text
# --------------------------------------------------------------------------------------------------
def convert_clip_text(state_dict: Mapping[str, Any], config: CLIPTextConfig, *, strict: bool = True,
                      what: str = "CLIP checkpoint") -> tuple[dict, ConversionReport]:
    """transformers CLIP (text) state dict -> (CLIPTextEncoder params, report)."""
    sd = _strip(state_dict, "text_model.")

    def fn(m: KeyMapper):
        _embed(m, "embeddings.token_embedding", "token_embedding")
        m.raw("embeddings.position_embedding.weight", "position_embedding")
        for i in range(config.num_hidden_layers):
            s, d = f"encoder.layers.{i}", f"layers_{i}"
            for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
                _linear(m, f"{s}.self_attn.{n}", f"{d}/{n}")
            m.norm(f"{s}.layer_norm1", f"{d}/layer_norm1")
            m.norm(f"{s}.layer_norm2", f"{d}/layer_norm2")
            _linear(m, f"{s}.mlp.fc1", f"{d}/fc1")
            _linear(m, f"{s}.mlp.fc2", f"{d}/fc2")
        m.norm("final_layer_norm", "final_layer_norm")
        if config.projection_dim:
            _linear(m, "text_projection", "text_projection", bias=False)

    def ignore(k: str) -> bool:
        return (k.startswith("vision_model.") or k.startswith("visual_projection") or k == "logit_scale"
                or k.endswith("position_ids") or (not config.projection_dim and k.startswith("text_projection")))

    return _run(fn, sd, _abstract(CLIPTextEncoder(config)), strict=strict, what=what, ignore=ignore)


# --------------------------------------------------------------------------------------------------
# CLAP text
# --------------------------------------------------------------------------------------------------
def convert_clap_text(state_dict: Mapping[str, Any], config: ClapTextConfig, *, strict: bool = True,
                      what: str = "CLAP checkpoint") -> tuple[dict, ConversionReport]:
    """transformers CLAP (text tower + projection) state dict -> (ClapTextEncoder params, report)."""
    sd = dict(state_dict)

    def fn(m: KeyMapper):
        e = "text_model.embeddings"
        for n in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            _embed(m, f"{e}.{n}", n)
        m.norm(f"{e}.LayerNorm", "embeddings_ln")
        for i in range(config.num_hidden_layers):
            s, d = f"text_model.encoder.layer.{i}", f"layer_{i}"
            for n in ("query", "key", "value"):
                _linear(m, f"{s}.attention.self.{n}", f"{d}/{n}")
            _linear(m, f"{s}.attention.output.dense", f"{d}/attn_out")
            m.norm(f"{s}.attention.output.LayerNorm", f"{d}/attn_ln")
            _linear(m, f"{s}.intermediate.dense", f"{d}/ffn_in")
            _linear(m, f"{s}.output.dense", f"{d}/ffn_out")
            m.norm(f"{s}.output.LayerNorm", f"{d}/ffn_ln")
        _linear(m, "text_model.pooler.dense", "pooler")
        _linear(m, "text_projection.linear1", "projection/linear1")
        _linear(m, "text_projection.linear2", "projection/linear2")

    def ignore(k: str) -> bool:
        return (k.startswith("audio_model.") or k.startswith("audio_projection.") or k.startswith("logit_scale")
                or k.endswith("embeddings.position_ids") or k.endswith("embeddings.token_type_ids"))

    return _run(fn, sd, _abstract(ClapTextEncoder(config)), strict=strict, what=what, ignore=ignore)


# --------------------------------------------------------------------------------------------------
# Folders (config.json + weights)
# --------------------------------------------------------------------------------------------------
read_config = read_hf_config  # noqa: E305 (folder readers live in convert.common)
load_hf_weights = load_hf_state_dict


def load_t5_dir(path) -> tuple[T5Config, dict]:
    cfg = T5Config.from_hf(read_config(path))
    params, _ = convert_t5(load_hf_weights(path), cfg, what=os.fspath(path))
    return cfg, params


def load_clip_text_dir(path, *, with_projection: bool | None = None) -> tuple[CLIPTextConfig, dict]:
    raw = read_config(path)
    sd = load_hf_weights(path)
    if with_projection is None:  # project only if the checkpoint holds the head
        with_projection = "text_projection.weight" in sd
    cfg = CLIPTextConfig.from_hf(raw, with_projection=with_projection)
    params, _ = convert_clip_text(sd, cfg, what=os.fspath(path))
    return cfg, params


def load_clap_text_dir(path) -> tuple[ClapTextConfig, dict]:
    cfg = ClapTextConfig.from_hf(read_config(path))
    params, _ = convert_clap_text(load_hf_weights(path), cfg, what=os.fspath(path))
    return cfg, params


def t5_from_pretrained_dir(path, *, dtype: Any = None) -> tuple[T5Encoder, dict]:
    """Loads a transformers T5 / FLAN-T5 folder (config.json + safetensors, shards or .bin); the decoder
    of a full seq2seq checkpoint is ignored. -> (T5Encoder, params)."""
    cfg, params = load_t5_dir(path)
    return T5Encoder(cfg, dtype=dtype), params


def clip_text_from_pretrained_dir(path, *, with_projection: bool | None = None,
                                  dtype: Any = None) -> tuple[CLIPTextEncoder, dict]:
    """Loads a transformers CLIP text model folder (config.json + model.safetensors / shards / .bin).
    -> (CLIPTextEncoder, params)."""
    cfg, params = load_clip_text_dir(path, with_projection=with_projection)
    return CLIPTextEncoder(cfg, dtype=dtype), params


def clap_text_from_pretrained_dir(path, *, dtype: Any = None) -> tuple[ClapTextEncoder, dict]:
    """Loads a transformers CLAP folder (ClapModel or ClapTextModelWithProjection; config.json +
    safetensors / .bin); the audio tower is ignored. -> (ClapTextEncoder, params)."""
    cfg, params = load_clap_text_dir(path)
    return ClapTextEncoder(cfg, dtype=dtype), params


__all__ = ["convert_t5", "convert_clip_text", "convert_clap_text", "load_hf_weights", "read_config",
           "load_t5_dir", "load_clip_text_dir", "load_clap_text_dir", "t5_from_pretrained_dir",
           "clip_text_from_pretrained_dir", "clap_text_from_pretrained_dir"]
