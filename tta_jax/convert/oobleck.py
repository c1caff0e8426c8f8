"""PyTorch Oobleck VAE checkpoints -> :class:`tta_jax.codecs.oobleck.OobleckVAE` params.

Two source layouts are understood (weight norm, old ``weight_g/weight_v`` or new ``parametrizations``
API, is folded into plain conv kernels):

1. ``diffusers.AutoencoderOobleck`` (Stable Audio Open ``vae/diffusion_pytorch_model.safetensors``)::

     encoder.conv1                          -> encoder/conv1
     encoder.block.{i}.res_unit{r}.snake1   -> encoder/block_{i}/res_unit{r}/snake1   (alpha/beta [1,C,1] -> [C])
     encoder.block.{i}.res_unit{r}.conv1/2  -> encoder/block_{i}/res_unit{r}/conv1/2
     encoder.block.{i}.snake1 / conv1       -> encoder/block_{i}/snake1 / conv1
     encoder.snake1 / conv2                 -> encoder/snake1 / conv2
     decoder.conv1                          -> decoder/conv1
     decoder.block.{i}.snake1 / conv_t1     -> decoder/block_{i}/snake1 / conv_t1   (ConvTranspose1d)
     decoder.block.{i}.res_unit{r}.*        -> decoder/block_{i}/res_unit{r}/*
     decoder.snake1 / conv2                 -> decoder/snake1 / conv2 (no bias)

2. stable-audio-tools ``AudioAutoencoder`` with ``OobleckEncoder``/``OobleckDecoder`` (``use_snake``)
   and a VAE bottleneck (no params): EzAudio's official VAE (``state_dict`` with the ``autoencoder.``
   prefix) and Stable Audio Open's ``model.ckpt`` (``pretransform.model.`` prefix)::

     encoder.layers.0                         -> encoder/conv1
     encoder.layers.{1+i}.layers.{r-1}        -> encoder/block_{i}/res_unit{r}   (r = 1, 2, 3)
         .layers.0 / 1 / 2 / 3                ->   snake1 / conv1 / snake2 / conv2
     encoder.layers.{1+i}.layers.3 / 4        -> encoder/block_{i}/snake1 / conv1
     encoder.layers.{n+1} / {n+2}             -> encoder/snake1 / conv2
     decoder.layers.0                         -> decoder/conv1
     decoder.layers.{1+i}.layers.0 / 1        -> decoder/block_{i}/snake1 / conv_t1
     decoder.layers.{1+i}.layers.{r+1}        -> decoder/block_{i}/res_unit{r}
     decoder.layers.{n+1} / {n+2}             -> decoder/snake1 / conv2
   (``n`` = number of strides; SnakeBeta params are already [C]; ``decoder.layers.{n+3}`` is the
   parameter-free tanh/identity.)

A checkpoint with a recognised prefix may hold other modules (discriminators, a DiT, conditioners):
keys outside ``<prefix>encoder.``/``<prefix>decoder.`` are ignored; everything inside must map.
"""
from __future__ import annotations

import os
from typing import Iterator, Mapping

import jax
import numpy as np

from tta_jax.codecs.oobleck import OobleckConfig, OobleckVAE, get_config
from tta_jax.convert.common import (ConversionError, ConversionReport, KeyMapper, fold_weight_norms_checked,
                                    load_state_dict, shapes_of)

_SAT_PREFIXES = ("autoencoder.", "pretransform.model.", "")


def _diffusers_names(cfg: OobleckConfig) -> Iterator[tuple[str, str, str]]:
    """(source module, target module, kind) for the diffusers layout; kind in {conv, convt, snake}."""
    def res(src, dst):
        yield f"{src}.snake1", f"{dst}/snake1", "snake"
        yield f"{src}.conv1", f"{dst}/conv1", "conv"
        yield f"{src}.snake2", f"{dst}/snake2", "snake"
        yield f"{src}.conv2", f"{dst}/conv2", "conv"

    n = len(cfg.strides)
    yield "encoder.conv1", "encoder/conv1", "conv"
    for i in range(n):
        for r in (1, 2, 3):
            yield from res(f"encoder.block.{i}.res_unit{r}", f"encoder/block_{i}/res_unit{r}")
        yield f"encoder.block.{i}.snake1", f"encoder/block_{i}/snake1", "snake"
        yield f"encoder.block.{i}.conv1", f"encoder/block_{i}/conv1", "conv"
    yield "encoder.snake1", "encoder/snake1", "snake"
    yield "encoder.conv2", "encoder/conv2", "conv"
    yield "decoder.conv1", "decoder/conv1", "conv"
    for i in range(n):
        yield f"decoder.block.{i}.snake1", f"decoder/block_{i}/snake1", "snake"
        yield f"decoder.block.{i}.conv_t1", f"decoder/block_{i}/conv_t1", "convt"
        for r in (1, 2, 3):
            yield from res(f"decoder.block.{i}.res_unit{r}", f"decoder/block_{i}/res_unit{r}")
    yield "decoder.snake1", "decoder/snake1", "snake"
    yield "decoder.conv2", "decoder/conv2", "conv"


def _sat_names(cfg: OobleckConfig, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """Same as :func:`_diffusers_names` for the stable-audio-tools layout."""
    def res(src, dst):
        for j, (name, kind) in enumerate((("snake1", "snake"), ("conv1", "conv"), ("snake2", "snake"),
                                          ("conv2", "conv"))):
            yield f"{src}.layers.{j}", f"{dst}/{name}", kind

    n = len(cfg.strides)
    e, d = f"{prefix}encoder.layers", f"{prefix}decoder.layers"
    yield f"{e}.0", "encoder/conv1", "conv"
    for i in range(n):
        for r in (1, 2, 3):
            yield from res(f"{e}.{1 + i}.layers.{r - 1}", f"encoder/block_{i}/res_unit{r}")
        yield f"{e}.{1 + i}.layers.3", f"encoder/block_{i}/snake1", "snake"
        yield f"{e}.{1 + i}.layers.4", f"encoder/block_{i}/conv1", "conv"
    yield f"{e}.{n + 1}", "encoder/snake1", "snake"
    yield f"{e}.{n + 2}", "encoder/conv2", "conv"
    yield f"{d}.0", "decoder/conv1", "conv"
    for i in range(n):
        yield f"{d}.{1 + i}.layers.0", f"decoder/block_{i}/snake1", "snake"
        yield f"{d}.{1 + i}.layers.1", f"decoder/block_{i}/conv_t1", "convt"
        for r in (1, 2, 3):
            yield from res(f"{d}.{1 + i}.layers.{r + 1}", f"decoder/block_{i}/res_unit{r}")
    yield f"{d}.{n + 1}", "decoder/snake1", "snake"
    yield f"{d}.{n + 2}", "decoder/conv2", "conv"


def _snake_vector(key: str):
    def fn(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v)
        if v.ndim == 3 and v.shape[0] == 1 and v.shape[2] == 1:
            return v[0, :, 0]
        if v.ndim == 1:
            return v
        raise ConversionError(f"{key}: SnakeBeta parameter has shape {v.shape}, expected [C] or [1, C, 1]")
    return fn


def detect_layout(sd: Mapping[str, np.ndarray]) -> tuple[str, str]:
    """-> (layout, prefix): ("diffusers", "") or ("sat", prefix)."""
    keys = list(sd)
    if any(k.startswith("encoder.block.") or k.startswith("encoder.conv1.") for k in keys):
        return "diffusers", ""
    for p in _SAT_PREFIXES:
        if any(k.startswith(f"{p}encoder.layers.") for k in keys):
            return "sat", p
    raise ConversionError("not an Oobleck checkpoint: found neither diffusers keys (encoder.block.*) nor "
                          "stable-audio-tools keys ([autoencoder.|pretransform.model.]encoder.layers.*); "
                          f"first keys: {keys[:8]}")


def convert_oobleck(state_dict: Mapping[str, np.ndarray], config: OobleckConfig | str, *,
                    layout: str = "auto", prefix: str | None = None, strict: bool = True,
                    what: str = "Oobleck checkpoint") -> tuple[dict, ConversionReport]:
    """Flat PyTorch state dict -> (OobleckVAE params, report).

    Args:
      state_dict: ``{name: array}`` (numpy or anything ``np.asarray`` accepts).
      config: the target :class:`OobleckConfig` (or a name in ``CONFIGS``).
      layout: "diffusers", "sat" (stable-audio-tools / EzAudio) or "auto".
      prefix: key prefix for the SAT layout (auto-detected when None).
      strict: raise :class:`ConversionError` on any missing/unexpected/mis-shaped key.
    """
    cfg = get_config(config) if isinstance(config, str) else config
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    if layout == "auto":
        layout, detected = detect_layout(sd)
        prefix = detected if prefix is None else prefix
    if layout == "diffusers":
        names = list(_diffusers_names(cfg))
        keep = lambda k: True  # noqa: E731
    elif layout == "sat":
        prefix = prefix or ""
        names = list(_sat_names(cfg, prefix))
        keep = (lambda k: True) if not prefix else (  # noqa: E731
            lambda k: k.startswith(f"{prefix}encoder.") or k.startswith(f"{prefix}decoder."))
    else:
        raise ValueError(f"layout must be 'diffusers', 'sat' or 'auto', got {layout!r}")
    sd = fold_weight_norms_checked({k: v for k, v in sd.items() if keep(k)}, what)

    m = KeyMapper(sd)
    for src, dst, kind in names:
        try:
            if kind == "snake":
                m.raw(f"{src}.alpha", f"{dst}/alpha", _snake_vector(f"{src}.alpha"))
                m.raw(f"{src}.beta", f"{dst}/beta", _snake_vector(f"{src}.beta"))
            elif kind == "conv":
                w = m.src.get(f"{src}.weight")
                if w is not None and np.ndim(w) != 3:
                    raise ConversionError(f"{src}.weight: Conv1d weight has shape {np.shape(w)}, "
                                          "expected [out, in, kernel]")
                m.conv(src, dst)
            else:
                w = m.src.get(f"{src}.weight")
                if w is not None and np.ndim(w) != 3:
                    raise ConversionError(f"{src}.weight: ConvTranspose1d weight has shape {np.shape(w)}, "
                                          "expected [in, out, kernel]")
                m.conv_transpose(src, dst)
        except ConversionError as e:
            if strict:
                raise ConversionError(f"{what}: {e}") from None
    target = shapes_of(abstract_params(cfg))
    return m.finish(target, strict=strict, what=what)


def abstract_params(cfg: OobleckConfig):
    import jax.numpy as jnp
    model = OobleckVAE(cfg)
    x = jax.ShapeDtypeStruct((1, 2 * cfg.hop_length, cfg.audio_channels), jnp.float32)
    return jax.eval_shape(lambda a: model.init(jax.random.PRNGKey(0), a), x)["params"]


def load_oobleck(path: str | os.PathLike, config: OobleckConfig | str, *, layout: str = "auto",
                 strict: bool = True, key: str | None = None) -> dict:
    """Reads a checkpoint file (``.safetensors``, ``.ckpt``/``.pt``/``.bin``) and converts it."""
    sd = load_state_dict(path, key=key)
    params, _ = convert_oobleck(sd, config, layout=layout, strict=strict, what=os.fspath(path))
    return params


__all__ = ["convert_oobleck", "load_oobleck", "detect_layout"]
