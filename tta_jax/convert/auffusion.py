"""A released Auffusion folder -> the config and params of ``configs/auffusion.py`` (U-Net + condition adapters).

The published folder (``auffusion/auffusion`` on the Hugging Face hub, read by the official
``AuffusionPipeline.from_pretrained``) holds::

    condition_config.json          [{"text_encoder_name": "text_encoder_0", "condition_adapter_name":
                                     "condition_adapter_0", "condition_max_length": 77, ...}, ...]
    unet/                          diffusers UNet2DConditionModel (config.json + diffusion_pytorch_model.*)
    vae/                           diffusers AutoencoderKL (config.json + diffusion_pytorch_model.*)
    vocoder/                       HiFi-GAN: config.json (jik876 keys) + vocoder.pt ({"generator": ...})
    text_encoder_<i>/              transformers text model (CLIPTextModel / T5EncoderModel / CLAP) + tokenizer
    condition_adapter_<i>/         config.json {"condition_dim", "cross_attention_dim"} + condition_adapter.pt
                                   (torch state dict: proj.weight [cross, cond], proj.bias, norm.weight, norm.bias)

:func:`auffusion_config` fills a ``configs/auffusion.py`` config from the folder: ``model`` from
``unet/config.json`` (with one adapter per text encoder, ``text_padding="zeros"``: the pipeline encodes each
prompt without padding and zero-pads its states to ``condition_max_length``, every position attended to),
``text`` with each ``text_encoder_<i>`` path, ``codec.vae`` / ``codec.vocoder`` with their paths (the VAE and
vocoder architectures matched to the codec registry's presets). :func:`load_auffusion` converts the U-Net and
the adapters into ``{"text_adapters": {"adapter_<i>", "adapter_<i>_norm"}, "net": <UNet params>}`` and
checks the tree against what ``denoiser_of(config)`` builds. Every file is checked: a renamed, missing or
reshaped tensor raises :class:`~tta_jax.convert.common.ConversionError` naming the file, the tensor and the
expected shape. :func:`write_workdir` writes what ``python -m launch.sample --workdir`` loads.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np

from tta_jax.convert.common import (ConversionError, collect_reports, flatten_params, read_torch_pickle,
                                    unflatten_params)
from tta_jax.convert.workdir import write_workdir  # noqa: F401  (re-exported: moved to the neutral module)

CONDITIONS = "condition_config.json"
ADAPTER_FILE = "condition_adapter.pt"
# transformers architectures -> text registry names
TEXT_ARCHS = {"CLIPTextModel": "clip", "CLIPTextModelWithProjection": "clip", "T5EncoderModel": "t5",
              "ClapTextModel": "clap", "ClapTextModelWithProjection": "clap"}
_UNET_CORE = ("in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types",
              "layers_per_block", "attention_head_dim", "cross_attention_dim", "norm_num_groups")


def _json(path: str) -> Any:
    if not os.path.exists(path):
        raise ConversionError(f"{path}: missing (expected in a released Auffusion folder)")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ConversionError(f"{path}: not valid JSON ({e})") from e


def read_conditions(folder: str) -> list[dict]:
    """``condition_config.json`` -> one dict per text encoder (``text_encoder_name``,
    ``condition_adapter_name``, ``condition_max_length`` (default 77), ``arch``, ``width``), each folder checked."""
    path = os.path.join(folder, CONDITIONS)
    items = _json(path)
    if not isinstance(items, list) or not items:
        raise ConversionError(f"{path}: expected a non-empty list of conditions, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        for key in ("text_encoder_name", "condition_adapter_name"):
            if not isinstance(item, Mapping) or not item.get(key):
                raise ConversionError(f"{path}: condition {i} has no {key!r}")
        enc_dir = os.path.join(folder, item["text_encoder_name"])
        raw = _json(os.path.join(enc_dir, "config.json"))
        arch = next((a for a in raw.get("architectures") or () if a in TEXT_ARCHS), None)
        if arch is None:
            raise ConversionError(f"{enc_dir}/config.json: architectures={raw.get('architectures')!r}; expected "
                                  f"one of {sorted(TEXT_ARCHS)}")
        width = raw.get("d_model") or raw.get("hidden_size") or (raw.get("text_config") or {}).get("hidden_size")
        if not width:
            raise ConversionError(f"{enc_dir}/config.json: no hidden_size / d_model")
        out.append(dict(item, index=i, arch=arch, kind=TEXT_ARCHS[arch], width=int(width),
                        encoder_dir=enc_dir, adapter_dir=os.path.join(folder, item["condition_adapter_name"]),
                        max_len=int(item.get("condition_max_length", 77))))
    return out


def text_section(conditions: list[dict]) -> dict:
    """The ``config.text`` section: one encoder -> ``{"name": clip|t5|clap, "path", "max_len"}``, several ->
    ``multi`` with one such section per encoder, in the folder's order."""
    secs = [{"name": c["kind"], "path": os.path.abspath(c["encoder_dir"]), "max_len": c["max_len"]}
            for c in conditions]
    return secs[0] if len(secs) == 1 else {"name": "multi", "encoders": secs}


def unet_fields(folder: str) -> dict:
    """``unet/config.json`` -> ``config.model`` fields of our U-Net (the core ones always, others when they
    differ from the defaults). An option this port does not implement raises naming the key."""
    path = os.path.join(folder, "unet", "config.json")
    return unet_fields_from_config(_json(path), path)


def unet_fields_from_config(raw: Mapping[str, Any], where: str) -> dict:
    """A diffusers ``UNet2DConditionModel`` config dict -> ``config.model`` fields (see :func:`unet_fields`);
    ``where`` (its file) is named in errors."""
    import jax.numpy as jnp

    from tta_jax.denoisers.unet import UNet

    try:
        m = UNet.from_diffusers_config(raw)
    except (ValueError, TypeError) as e:
        raise ConversionError(f"{where}: {e}") from e
    fields = {"name": "unet"}
    for f in dataclasses.fields(UNet):
        if f.name in ("parent", "name"):
            continue
        v = getattr(m, f.name)
        if f.name in _UNET_CORE or v != f.default:
            if f.name == "dtype":
                v = jnp.dtype(v).name
            fields[f.name] = list(v) if isinstance(v, tuple) else v
    return fields


def _vae_preset(folder: str) -> str:
    from tta_jax.codecs.kl_vae import CONFIGS

    path = os.path.join(folder, "vae", "config.json")
    raw = _json(path)
    keys = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
            "norm_num_groups", "scaling_factor")
    want = {k: tuple(raw[k]) if isinstance(raw.get(k), list) else raw.get(k) for k in keys}
    for name, cfg in CONFIGS.items():
        if all(want[k] is None or want[k] == getattr(cfg, k) for k in keys):
            return name
    raise ConversionError(f"{path}: an AutoencoderKL of {want} matches none of the codec presets "
                          f"(tta_jax.codecs.kl_vae.CONFIGS: {sorted(CONFIGS)})")


def _vocoder(folder: str) -> tuple[str, str, int]:
    """-> (codec.vocoder, codec.vocoder_config, n_mels) for ``vocoder/``: the folder when the HiFi-GAN loader
    finds its weights there, else its ``vocoder.pt`` with the preset of the same architecture."""
    from tta_jax.codecs.registry import vocoder_presets
    from tta_jax.convert.hifigan import HIFIGAN_WEIGHT_NAMES
    from tta_jax.vocoders.hifigan import HiFiGANConfig

    vdir = os.path.join(folder, "vocoder")
    path = os.path.join(vdir, "config.json")
    try:
        cfg = HiFiGANConfig.from_json_dict(_json(path))
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"{path}: not a HiFi-GAN config ({e!r})") from e
    if any(os.path.exists(os.path.join(vdir, n)) for n in HIFIGAN_WEIGHT_NAMES):
        return os.path.abspath(vdir), "auffusion_16k", cfg.num_mels
    weights = os.path.join(vdir, "vocoder.pt")
    if not os.path.exists(weights):
        raise ConversionError(f"{vdir}: no vocoder.pt (nor any of {', '.join(HIFIGAN_WEIGHT_NAMES)})")
    arch = ("upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel", "resblock",
            "resblock_kernel_sizes", "resblock_dilation_sizes")
    for name, preset in vocoder_presets().items():
        if all(getattr(preset, k) == getattr(cfg, k) for k in arch):
            return os.path.abspath(weights), name, cfg.num_mels
    raise ConversionError(f"{path}: a HiFi-GAN of {[(k, getattr(cfg, k)) for k in arch]} matches no vocoder preset "
                          f"of the codec registry ({sorted(vocoder_presets())})")


def auffusion_config(folder: str, base):
    """Fills ``base`` (a ``configs/auffusion.py`` ConfigDict, e.g. variant ``full``) from the folder: model,
    adapters, text encoders, codec paths. -> a new ConfigDict (``base`` is not changed)."""
    import ml_collections

    folder = os.path.abspath(folder)
    conds = read_conditions(folder)
    c = ml_collections.ConfigDict(base.to_dict())
    model = unet_fields(folder)
    model.update(text_adapters=True, text_padding="zeros")
    c.model = ml_collections.ConfigDict(model)
    c.text = ml_collections.ConfigDict(text_section(conds))
    vocoder, voc_preset, n_mels = _vocoder(folder)
    c.codec = ml_collections.ConfigDict({"name": "kl_mel_image", "vae": os.path.join(folder, "vae"),
                                         "vae_config": _vae_preset(folder), "vocoder": vocoder,
                                         "vocoder_config": voc_preset, "n_mels": int(n_mels),
                                         "sample": bool(base.codec.get("sample", False))})
    c.sampler.negative = "zeros"
    c.name = "auffusion_released"
    return c


def load_adapter(cond: Mapping[str, Any], dim: int) -> dict:
    """``condition_adapter_<i>/`` -> ``{"adapter_<i>": {kernel, bias}, "adapter_<i>_norm": {scale, bias}}``."""
    d, i = cond["adapter_dir"], cond["index"]
    cfg = _json(os.path.join(d, "config.json"))
    width = int(cond["width"])
    for key, want in (("condition_dim", width), ("cross_attention_dim", dim)):
        if key in cfg and int(cfg[key]) != want:
            raise ConversionError(f"{d}/config.json: {key}={cfg[key]} but the model needs {want} "
                                  f"({'the text encoder width' if key == 'condition_dim' else 'the U-Net context'})")
    path = os.path.join(d, ADAPTER_FILE)
    sd = read_torch_pickle(path)
    if not isinstance(sd, Mapping):
        raise ConversionError(f"{path}: expected a state dict, got {type(sd).__name__}")
    expected = {"proj.weight": (dim, width), "proj.bias": (dim,), "norm.weight": (dim,), "norm.bias": (dim,)}
    for k, shape in expected.items():
        if k not in sd:
            raise ConversionError(f"{path}: tensor {k!r} is missing (expected shape {shape}); it has {sorted(sd)}")
        if tuple(np.shape(sd[k])) != shape:
            raise ConversionError(f"{path}: tensor {k!r} has shape {tuple(np.shape(sd[k]))}, expected {shape}")
    extra = sorted(set(sd) - set(expected))
    if extra:
        raise ConversionError(f"{path}: unexpected tensor {extra[0]!r} (expected only {sorted(expected)})")
    f = {k: np.asarray(v, np.float32) for k, v in sd.items()}
    return {f"adapter_{i}": {"kernel": np.ascontiguousarray(f["proj.weight"].T), "bias": f["proj.bias"]},
            f"adapter_{i}_norm": {"scale": f["norm.weight"], "bias": f["norm.bias"]}}


def _example_cond(conds: list[dict]) -> dict:
    if len(conds) == 1:
        c = conds[0]
        return {"text": np.zeros((1, c["max_len"], c["width"]), np.float32),
                "text_mask": np.ones((1, c["max_len"]), bool)}
    out = {}
    for c in conds:
        out[f"text:{c['index']}"] = np.zeros((1, c["max_len"], c["width"]), np.float32)
        out[f"text_mask:{c['index']}"] = np.ones((1, c["max_len"]), bool)
    return out


def load_auffusion(folder: str, config, *, strict: bool = True) -> dict:
    """The folder's U-Net and condition adapters -> the params ``denoiser_of(config)`` builds (float32 numpy):
    ``{"text_adapters": {...}, "net": <UNet params>}``, checked tensor by tensor."""
    import jax
    from flax.core import meta

    from tta_jax.convert.diffusers_unet import convert_diffusers_unet
    from tta_jax.convert.common import load_state_dict
    from tta_jax.pipelines.tta import denoiser_of

    folder = os.path.abspath(folder)
    conds = read_conditions(folder)
    den = denoiser_of(config)
    net = getattr(den.module, "net", None)
    if net is None:
        raise ConversionError("the config builds no text adapters (config.model.text_adapters / text.name)")
    udir = os.path.join(folder, "unet")
    wpath = next((os.path.join(udir, n) for n in ("diffusion_pytorch_model.safetensors",
                                                   "diffusion_pytorch_model.bin")
                  if os.path.exists(os.path.join(udir, n))), None)
    if wpath is None:
        raise ConversionError(f"{udir}: no diffusion_pytorch_model.safetensors or .bin")
    with collect_reports():  # this file's problems are reported here, naming it, not as the folder's
        try:
            unet_params, _ = convert_diffusers_unet(load_state_dict(wpath), net, strict=strict, what=wpath)
        except ConversionError as e:
            if e.report is None:
                raise
            raise ConversionError(f"{wpath}: does not match config.model (unet/config.json): "
                                  f"{e.report.summary(limit=10)} (shapes in the flax layout)",
                                  details=e.report.details()) from None
    adapters = {}
    for c in conds:
        adapters.update(load_adapter(c, den.context_dim))
    params = {"text_adapters": adapters, "net": unet_params}
    # the whole tree against what the config builds (abstract init: nothing is allocated)
    n = len(getattr(net, "block_out_channels", ())) or 1
    side = 2 ** n
    want = jax.eval_shape(lambda r: meta.unbox(den.init(r, (side, side, den.in_channels), conds[0]["max_len"],
                                                        _example_cond(conds))), jax.random.PRNGKey(0))
    want_flat = {k: tuple(v.shape) for k, v in flatten_params(want).items()}
    have_flat = flatten_params(params)
    for k in sorted(set(want_flat) | set(have_flat)):
        where = udir if k.startswith("net/") else "condition_adapter_*"
        if k not in have_flat:
            raise ConversionError(f"{folder}: parameter {k!r} (shape {want_flat[k]}) is not in {where}")
        if k not in want_flat:
            raise ConversionError(f"{folder}: {where} gives {k!r}, which the config's model does not have")
        if tuple(np.shape(have_flat[k])) != want_flat[k]:
            raise ConversionError(f"{folder}: parameter {k!r} from {where} has shape "
                                  f"{tuple(np.shape(have_flat[k]))}, expected {want_flat[k]}")
    return unflatten_params({k: np.asarray(v, np.float32) for k, v in have_flat.items()})


def check_components(config) -> None:
    """Loads the codec (VAE + vocoder) and text encoders the config names, so a bad file fails at conversion
    (naming it) rather than at sampling (:func:`tta_jax.convert.workdir.check_components`)."""
    from tta_jax.convert.workdir import check_components as check

    check(config)


__all__ = ["read_conditions", "text_section", "unet_fields", "unet_fields_from_config", "auffusion_config",
           "load_adapter", "load_auffusion", "check_components", "write_workdir"]
