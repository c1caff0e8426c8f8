"""A released Tango folder -> the config and params of ``configs/tango.py`` (a plain U-Net over AudioLDM mel-VAE
latents, FLAN-T5 text).

Facts from the official code, github.com/declare-lab/tango (``tango.py`` in the history of that repository,
``models.py``, ``configs/``, ``audioldm/``): the hub folders (``declare-lab/tango``, ``tango-full``,
``tango-full-ft-audiocaps``, ``tango2``, ...) are read by its ``Tango`` class and hold::

    main_config.json        kwargs of ``models.AudioDiffusion``: text_encoder_name ("google/flan-t5-large"),
                            scheduler_name, unet_model_name (null), unet_model_config_path (the repository's
                            "tango/configs/diffusion_model_config.json": the U-Net config is NOT in the folder),
                            snr_gamma, ...
    pytorch_model_main.bin  AudioDiffusion's state dict: ``unet.*`` (diffusers UNet2DConditionModel names) and
                            ``text_encoder.*`` (the transformers T5EncoderModel, frozen FLAN-T5 in the README's
                            training recipe). With ``unet_model_name`` set (a Stable-Diffusion-initialised
                            variant) it also holds ``group_in.*``/``group_out.*``, which this port refuses.
    vae_config.json         kwargs of audioldm's ``AutoencoderKL``: ``ddconfig`` (ch, ch_mult, num_res_blocks,
                            z_channels, in_channels, out_ch, double_z, attn_resolutions), embed_dim, subband,
                            scale_factor (0.9227914214134216)
    pytorch_model_vae.bin   that module's state dict: the CompVis/LDM-named encoder/decoder/quant convs and its
                            HiFi-GAN under ``vocoder.*`` (jik876 names, weight norm removed; the architecture is
                            ``HIFIGAN_16K_64`` in ``audioldm/hifigan/utilities.py`` = our ``audioldm_16k``)
    stft_config.json        kwargs of ``TacotronSTFT``: filter_length, hop_length, win_length, n_mel_channels,
                            sampling_rate, mel_fmin, mel_fmax (its STFT reflect-pads n_fft/2 on each side:
                            our mel preset ``tango``)
    pytorch_model_stft.bin  TacotronSTFT buffers: ``mel_basis`` [n_mels, n_fft/2+1], ``stft_fn.forward_basis``,
                            ``stft_fn.inverse_basis``

:func:`tango_config` fills a ``configs/tango.py`` config from the folder: ``model`` from a ``config.json`` (a
diffusers U-Net config) when the folder has one, else from the U-Net config that ``main_config.json`` names
(:data:`TANGO_UNET`, the facts of ``tango/configs/diffusion_model_config.json``); ``codec.vae`` and
``codec.vocoder`` both = ``pytorch_model_vae.bin``; the codec's mel preset ``tango`` unless the config names one.
The facts the files give are checked against the config's presets (``stft_config.json`` vs the mel preset,
``vae_config.json`` vs ``codec.vae_config``, ``pytorch_model_stft.bin``'s mel filterbank vs ours), each
mismatch naming the file and the field. The text encoder's weights are not taken from ``text_encoder.*``: set
``text.path`` to a local ``google/flan-t5-large`` folder (the tokenizer lives there too).

:func:`load_tango` converts ``pytorch_model_main.bin``'s ``unet.*`` into the params ``denoiser_of(config)``
builds (the U-Net's own tree: Tango has no text adapters); write the workdir with
:func:`tta_jax.convert.workdir.write_workdir` (``python -m launch.convert --family tango``).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np

from tta_jax.convert.common import ConversionError, collect_reports, read_torch_pickle

MAIN_CONFIG, MAIN_WEIGHTS = "main_config.json", "pytorch_model_main.bin"
VAE_CONFIG, VAE_WEIGHTS = "vae_config.json", "pytorch_model_vae.bin"
STFT_CONFIG, STFT_WEIGHTS = "stft_config.json", "pytorch_model_stft.bin"
UNET_CONFIG = "config.json"          # optional: a diffusers U-Net config for a folder of another U-Net size
UNET_PREFIX, TEXT_PREFIX = "unet.", "text_encoder."

# github.com/declare-lab/tango/configs/diffusion_model_config.json, as our UNet fields (the other keys of that
# file are diffusers defaults: act_fn silu, downsample_padding 1, mid_block_scale_factor 1, norm_eps 1e-5,
# center_input_sample false; upcast_attention true only changes fp16 arithmetic)
TANGO_UNET: dict[str, Any] = {
    "name": "unet", "in_channels": 8, "out_channels": 8, "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "norm_num_groups": 32,
    "use_linear_projection": True}
# tango/configs/diffusion_model_xl_config.json: the same with cross-attention 2048 (FLAN-T5-XL states)
TANGO_UNET_XL: dict[str, Any] = {**TANGO_UNET, "cross_attention_dim": 2048}
UNET_CONFIGS = {"diffusion_model_config.json": TANGO_UNET, "diffusion_model_xl_config.json": TANGO_UNET_XL}

# stft_config.json key -> MelConfig field; vae_config.json ddconfig facts are checked in _check_vae
_STFT_FIELDS = {"filter_length": "n_fft", "hop_length": "hop_length", "win_length": "win_length",
                "n_mel_channels": "n_mels", "sampling_rate": "sample_rate", "mel_fmin": "fmin", "mel_fmax": "fmax"}
MEL_BASIS_ATOL = 1e-6

log = logging.getLogger(__name__)


def _json(path: str, required: bool = True) -> Any:
    import json

    if not os.path.exists(path):
        if required:
            raise ConversionError(f"{path}: missing (expected in a released Tango folder)")
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ConversionError(f"{path}: not valid JSON ({e})") from e


def _weights_file(folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        raise ConversionError(f"{path}: missing (expected in a released Tango folder)")
    return path


def _read(path: str) -> dict[str, np.ndarray]:
    """A torch pickle (read without torch) or safetensors file -> flat {name: array}."""
    if path.endswith(".safetensors"):
        from tta_jax.convert.common import load_state_dict

        return load_state_dict(path)
    obj = read_torch_pickle(path)
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


# ------------------------------------------------------------------------------------------------ U-Net
def unet_fields(folder: str) -> dict:
    """``config.model`` U-Net fields for the folder: its ``config.json`` when that is a diffusers U-Net config
    (it has ``down_block_types``), else the repository config that ``main_config.json``'s
    ``unet_model_config_path`` names (:data:`UNET_CONFIGS`)."""
    from tta_jax.convert.auffusion import unet_fields_from_config

    own = os.path.join(folder, UNET_CONFIG)
    raw = _json(own, required=False)
    if isinstance(raw, Mapping) and "down_block_types" in raw:   # a diffusers U-Net config (not hub metadata)
        return unet_fields_from_config(raw, own)
    path = os.path.join(folder, MAIN_CONFIG)
    main = _json(path)
    if main.get("unet_model_name"):
        raise ConversionError(f"{path}: unet_model_name={main['unet_model_name']!r}: the Stable-Diffusion-"
                              "initialised variant (group_in/group_out channel adapters) is not supported")
    name = os.path.basename(str(main.get("unet_model_config_path") or ""))
    if name not in UNET_CONFIGS:
        raise ConversionError(f"{path}: unet_model_config_path={main.get('unet_model_config_path')!r} is none of "
                              f"the Tango repository's U-Net configs {sorted(UNET_CONFIGS)}; put that diffusers "
                              f"U-Net config into the folder as {UNET_CONFIG}")
    return dict(UNET_CONFIGS[name])


def unet_state_dict(state_dict: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """AudioDiffusion's state dict -> the U-Net's (``unet.`` stripped). ``text_encoder.*`` (the frozen FLAN-T5
    encoder) is ignored; any other key raises naming it."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith(UNET_PREFIX):
            out[k[len(UNET_PREFIX):]] = v
        elif not k.startswith(TEXT_PREFIX):
            hint = " (a Stable-Diffusion-initialised Tango: not supported)" if k.startswith("group_") else ""
            raise ConversionError(f"{what}: unexpected tensor {k!r}{hint}; a Tango AudioDiffusion state dict holds "
                                  f"{UNET_PREFIX}* and {TEXT_PREFIX}* only")
    if not out:
        raise ConversionError(f"{what}: no {UNET_PREFIX}* tensors (not a Tango pytorch_model_main.bin)")
    return out


def load_tango_unet(path: str, model=None, *, strict: bool = True) -> dict:
    """``pytorch_model_main.bin`` -> UNet params (nested float32 numpy) for ``model`` (a
    :class:`tta_jax.denoisers.unet.UNet` or ``config.model`` fields; default :data:`TANGO_UNET`). Every
    ``unet.*`` tensor must map with the right shape; errors name the file and the key (relative to ``unet.``)."""
    from tta_jax.convert.diffusers_unet import convert_diffusers_unet
    from tta_jax.denoisers.factory import unet_module
    from tta_jax.denoisers.unet import UNet

    if not isinstance(model, UNet):
        fields = dict(TANGO_UNET if model is None else model)
        fields.pop("name", None)
        model = unet_module(fields)
    path = os.fspath(path)
    sd = unet_state_dict(_read(path), path)
    with collect_reports():  # this file's problems are reported here, naming it
        try:
            params, _ = convert_diffusers_unet(sd, model, strict=strict, what=path)
        except ConversionError as e:
            if e.report is None:
                raise
            raise ConversionError(f"{path}: the unet.* tensors do not match config.model: "
                                  f"{e.report.summary(limit=10)} (source keys without 'unet.', shapes in the "
                                  f"flax layout)", details=e.report.details()) from None
    return params


# ------------------------------------------------------------------------------------------------ checks
def _mismatch(path: str, field: str, have, want, what: str) -> ConversionError:
    return ConversionError(f"{path}: {field}={have!r} but {what} has {want!r}")


def check_stft_config(folder: str, mel, where: str = "the mel preset") -> None:
    """``stft_config.json`` (when present) against ``mel`` (a MelConfig); raises naming the field."""
    path = os.path.join(folder, STFT_CONFIG)
    raw = _json(path, required=False)
    if raw is None:
        return
    for key, field in _STFT_FIELDS.items():
        want = getattr(mel, field)
        if field == "fmax" and want is None:
            want = mel.sample_rate / 2
        have = raw.get(key)
        if have is None and field == "fmax" and key in raw:
            have = mel.sample_rate / 2   # librosa: None is sr / 2
        if have is not None and float(have) != float(want):
            raise _mismatch(path, key, raw[key], want, f"{where} ({field})")


def stft_basis_error(folder: str, mel) -> float | None:
    """max |mel_basis - ours| of ``pytorch_model_stft.bin`` (None when the folder has no such file); a
    different shape or a difference above ``MEL_BASIS_ATOL`` raises naming the file."""
    from tta_jax.audio.mel import mel_basis

    path = os.path.join(folder, STFT_WEIGHTS)
    if not os.path.exists(path):
        return None
    sd = _read(path)
    if "mel_basis" not in sd:
        raise ConversionError(f"{path}: tensor 'mel_basis' is missing; it has {sorted(sd)}")
    theirs, ours = np.asarray(sd["mel_basis"], np.float64), mel_basis(mel).astype(np.float64)
    if theirs.shape != ours.shape:
        raise ConversionError(f"{path}: tensor 'mel_basis' has shape {theirs.shape}, expected {ours.shape} "
                              f"(n_mels, n_fft / 2 + 1 of the mel preset)")
    err = float(np.max(np.abs(theirs - ours)))
    if err > MEL_BASIS_ATOL:
        raise ConversionError(f"{path}: tensor 'mel_basis' differs from our Slaney filterbank by {err:.3e} "
                              f"(> {MEL_BASIS_ATOL}); the front end would not match")
    return err


def check_vae_config(folder: str, vae, where: str = "config.codec.vae_config") -> None:
    """``vae_config.json`` (when present) against ``vae`` (a KLVAEConfig); raises naming the field and, when one
    fits, the preset that matches the file."""
    from tta_jax.codecs.kl_vae import CONFIGS

    path = os.path.join(folder, VAE_CONFIG)
    raw = _json(path, required=False)
    if raw is None:
        return
    dd = raw.get("ddconfig") or {}
    for key, ok in (("double_z", True), ("attn_resolutions", [])):
        if key in dd and dd[key] != ok:
            raise ConversionError(f"{path}: ddconfig.{key}={dd[key]!r} is not supported (only {ok!r}: the "
                                  f"diffusers-equivalent AutoencoderKL)")
    if int(raw.get("subband", 1)) != 1 or dd.get("downsample_time_stride4_levels"):
        raise ConversionError(f"{path}: subband / downsample_time_stride4_levels are not supported")
    facts = {"in_channels": dd.get("in_channels"), "out_channels": dd.get("out_ch"),
             "layers_per_block": dd.get("num_res_blocks"), "latent_channels": dd.get("z_channels"),
             "block_out_channels": (tuple(int(dd["ch"]) * int(m) for m in dd["ch_mult"])
                                    if "ch" in dd and "ch_mult" in dd else None),
             "scaling_factor": raw.get("scale_factor")}
    if raw.get("embed_dim") is not None and dd.get("z_channels") is not None \
            and int(raw["embed_dim"]) != int(dd["z_channels"]):
        raise ConversionError(f"{path}: embed_dim={raw['embed_dim']} != ddconfig.z_channels={dd['z_channels']} "
                              f"(not supported)")
    facts = {k: v for k, v in facts.items() if v is not None}

    def fits(cfg) -> str | None:
        for k, v in facts.items():
            have = getattr(cfg, k)
            if k == "scaling_factor":
                if abs(float(v) - float(have)) > 1e-6 * abs(float(have)):
                    return k
            elif (tuple(v) if isinstance(v, (list, tuple)) else v) != have:
                return k
        return None

    bad = fits(vae)
    if bad:
        other = [n for n, c in CONFIGS.items() if fits(c) is None]
        hint = f"; the preset {other[0]!r} fits the file" if other else ""
        raise _mismatch(path, bad, facts[bad], getattr(vae, bad), f"{where}{hint}; it")


# ------------------------------------------------------------------------------------------------ config
def tango_config(folder: str, base):
    """Fills ``base`` (a ``configs/tango.py`` ConfigDict) from the folder: model fields, codec paths (both
    ``pytorch_model_vae.bin``, ``init="pretrained"``), mel preset ``tango`` when the config names none; checks
    the folder's stft/vae facts against the config's presets. -> a new ConfigDict (``base`` unchanged)."""
    import ml_collections

    from tta_jax.audio.mel import PRESETS as MEL_PRESETS
    from tta_jax.codecs.kl_vae import CONFIGS
    from tta_jax.codecs.registry import resolve_codec_section

    folder = os.path.abspath(folder)
    main = _json(os.path.join(folder, MAIN_CONFIG))
    vae_file = _weights_file(folder, VAE_WEIGHTS)
    _weights_file(folder, MAIN_WEIGHTS)
    c = ml_collections.ConfigDict(base.to_dict())
    model = dict(base.model.to_dict() if hasattr(base.model, "to_dict") else base.model)
    for k in ("text_adapters", "text_padding"):
        model.pop(k, None)
    model.update(unet_fields(folder))
    c.model = ml_collections.ConfigDict(model)
    codec = dict(base.codec.to_dict())
    codec.update(vae=vae_file, vocoder=vae_file, init="pretrained")
    codec.pop("vae_workdir", None)
    codec.setdefault("mel", "tango")   # TacotronSTFT: centred frames
    c.codec = ml_collections.ConfigDict(codec)
    s = resolve_codec_section(c.codec)
    if s["mel"] not in MEL_PRESETS or s["vae_config"] not in CONFIGS:
        raise ConversionError(f"config.codec: mel={s['mel']!r} / vae_config={s['vae_config']!r} are not presets")
    mel = MEL_PRESETS[s["mel"]]
    if int(s["n_mels"] or 0):
        mel = mel.replace(n_mels=int(s["n_mels"]))
    check_stft_config(folder, mel, f"config.codec.mel={s['mel']!r}")
    if mel.padding != "tacotron":
        log.warning("config.codec.mel=%r frames audio with %r padding; Tango's TacotronSTFT centres frames "
                    "(preset 'tango'): encoded latents are shifted by half a hop", s["mel"], mel.padding)
    err = stft_basis_error(folder, mel)
    if err is not None:
        log.info("%s: mel_basis matches ours (max abs diff %.2e)", os.path.join(folder, STFT_WEIGHTS), err)
    check_vae_config(folder, CONFIGS[s["vae_config"]], f"config.codec.vae_config={s['vae_config']!r}")
    enc = str(main.get("text_encoder_name") or "")
    if enc and "t5" not in enc.lower():
        raise ConversionError(f"{os.path.join(folder, MAIN_CONFIG)}: text_encoder_name={enc!r} is not a T5 model")
    if enc and not c.text.get("path") and c.text.get("init", "pretrained") == "pretrained":
        log.warning("config.text.path is empty: set it to a local copy of %s (its weights are frozen in %s too, "
                    "but the tokenizer is not)", enc, MAIN_WEIGHTS)
    c.name = "tango_released"
    return c


def load_tango(folder: str, config, *, strict: bool = True) -> dict:
    """The folder's ``pytorch_model_main.bin`` -> the params ``denoiser_of(config)`` builds (the U-Net's tree,
    float32 numpy), checked tensor by tensor against ``config.model``."""
    from tta_jax.denoisers.unet import UNet
    from tta_jax.pipelines.tta import denoiser_of

    den = denoiser_of(config)
    if not isinstance(den.module, UNet):
        raise ConversionError(f"config.model builds a {type(den.module).__name__}, not a plain U-Net (Tango has no "
                              f"text adapters)")
    return load_tango_unet(_weights_file(os.path.abspath(folder), MAIN_WEIGHTS), den.module, strict=strict)


__all__ = ["TANGO_UNET", "TANGO_UNET_XL", "UNET_CONFIGS", "unet_fields", "unet_state_dict", "load_tango_unet",
           "check_stft_config", "stft_basis_error", "check_vae_config", "tango_config", "load_tango"]
