"""DC-LDM's acoustic condition (reference-architectures.md section 5; ../shared/papers/dc_ldm.txt; no public code).

A codec-token LM (AudioGen-style, :mod:`tta_jax.pipelines.codec_lm`, trained on its own and frozen here)
writes EnCodec tokens for the prompt; their acoustic encoding is a second cross-attention context of the
diffusion model next to the text:

    prompt -> LM (frozen) -> tokens [N, T_a, n]  --(a) "codec": the codec's continuous latents (sum of the
                                                       chosen code vectors)                  [N, T_a, dim]
                                                 --(b) "vae": the tokens decoded to audio, re-encoded by the
                                                       diffusion system's own codec, each latent frame's
                                                       channels flattened                    [N, T_z, C*F/r]
    acoustic [B, La, D] -> the denoiser's extra cross-attention (U-Net ``extra_contexts`` key ``acoustic``
                           in the configured blocks; DiT ``acoustic_dim`` / ``acoustic_blocks``), zero-initialised
                           output: a pretrained text-only model is unchanged at step 0 (the paper's skip).

Training data (the paper: teacher forcing): precompute treats the condition as a reference whose audio *is the
example itself* (``reference_spec(...)["target"]``: one slot, the example's own decoded clip and caption), so
the stored ``ref:acoustic`` [1, La, D] is the encoding of the ground-truth tokens (``source="teacher"``), or,
with ``source="lm"``, of tokens the LM generated from the example's caption (cached LM generations). The
loader emits ``acoustic`` [B, 1, La, D] and ``reference_mask`` [B, 1]; its reference dropout
(``config.diffusion.ref_drop_prob``) drops the acoustic condition for CFG, as caption dropout drops the text.

Sampling (``launch.sample``, one command): the prompts go through the LM (its own text encoder, codec and
sampling options, from ``lm_workdir``), the tokens through (a) or (b), then the diffusion model, codec decoder
and vocoder. CFG as the paper: ``w * eps(text, acoustic) + (1 - w) * eps(empty text, no acoustic)`` (the
unconditioned branch masks the acoustic context, which then contributes exactly zero), w = 4.

Choices where the paper is silent:

- The LM, its codec and text encoder are read from a ``tta_jax.pipelines.codec_lm`` run (``lm_workdir``:
  ``config.json`` + checkpoint); its codec section must be an ``encodec``/``encodec_tokens`` one (the codec whose
  code vectors give E_t2a). The LM samples with its run's options unless ``lm`` overrides them
  (``temperature``, ``top_k``, ``top_p``, ``guidance``; ``seed`` for precompute's cached generations).
- Teacher-forced and generated acoustics go through the same function (:func:`acoustic_from_tokens`), so the
  diffusion model sees the same representation in training and sampling; at sampling the LM writes as many
  frames as the diffusion clip lasts.
- The acoustic sequence has no positional encoding of its own (the paper's cross-attention adds none).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tta_jax.errors import ConfigError

KEY = "acoustic"
REFERENCE_KEYS = (KEY, "reference_mask")
SOURCES = ("teacher", "lm")
REPRESENTATIONS = ("codec", "vae")
LM_OPTIONS = ("temperature", "top_k", "top_p", "guidance", "seed")
SECTION_KEYS = ("lm_workdir", "source", "representation", "lm")


def _choice(section: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    v = str(section.get(key) or choices[0])
    if v not in choices:
        raise ConfigError(f"config.conditioner.{key}={v!r}; expected one of {list(choices)}")
    return v


def reference_spec(section: Mapping[str, Any]) -> dict:
    """The registry's spec: one slot, the example's own clip and caption (``target``), at the system codec's
    rate; no loader augmentation besides the reference dropout."""
    _choice(section, "source", SOURCES)
    _choice(section, "representation", REPRESENTATIONS)
    bad = sorted(set(dict(section.get("lm") or {})) - set(LM_OPTIONS))
    if bad:
        raise ConfigError(f"config.conditioner.lm.{bad[0]} is not an LM sampling option ({list(LM_OPTIONS)})")
    return {"seconds": 0.0, "count": 1, "sample_rate": None, "captions": True, "fixed_count": True,
            "target": True, "features": (KEY,)}


@dataclasses.dataclass
class AcousticLM:
    """A trained codec-token LM run, loaded: its config, params and codec model (``tokens -> latents/audio``)."""
    config: Any
    params: Any
    codec_cfg: Any          # EncodecConfig
    codec_params: Any
    num_codebooks: int
    workdir: str

    @property
    def sample_rate(self) -> int:
        return int(self.codec_cfg.sampling_rate)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.codec_cfg.hop_length

    @functools.cached_property
    def text_encoder(self):
        """The LM run's text encoder (``config.text``), built once per loaded LM (not once per generation)."""
        from tta_jax.text.registry import build_text_encoder

        return build_text_encoder(self.config.text)


def load_acoustic_lm(workdir: str, where: str = "config.conditioner.lm_workdir") -> AcousticLM:
    """A ``tta_jax.pipelines.codec_lm`` run -> :class:`AcousticLM` (ConfigError naming ``where`` when the folder
    is not such a run or its codec is not an EnCodec)."""
    import ml_collections

    from tta_jax.codecs.registry import encodec_model
    from tta_jax.train.checkpoint import load_params

    if not workdir:
        raise ConfigError(f"{where} is empty: DC-LDM reads a trained codec LM (python -m launch.train --config "
                          f"configs/dcldm_lm.py:<variant> --workdir LM_RUN)")
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"{where}={workdir!r} has no config.json: not a codec-LM training run")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if str(config.get("builder", "")) != "tta_jax.pipelines.codec_lm:build_task":
        raise ConfigError(f"{where}={workdir!r} is a {config.get('builder')!r} run, not a codec LM "
                          f"(tta_jax.pipelines.codec_lm:build_task)")
    section = dict(config.codec.to_dict())
    if section.get("name") not in ("encodec", "encodec_tokens"):
        raise ConfigError(f"{where}={workdir!r}: its codec {section.get('name')!r} is not an EnCodec; the acoustic "
                          f"encoding is the EnCodec code vectors")
    cfg, cparams, n = encodec_model(section, f"{where}/config.json codec")
    try:
        params, _ = load_params(workdir, ema=True)
    except FileNotFoundError as e:
        raise ConfigError(f"{where}={workdir!r}: {e}") from None
    return AcousticLM(config, params, cfg, cparams, int(n), workdir)


def acoustic_from_tokens(lm: AcousticLM, tokens, representation: str, codec=None) -> np.ndarray:
    """Codec tokens [N, T_a, n] -> the acoustic sequence: ``codec`` -> the EnCodec latents [N, T_a, dim];
    ``vae`` -> the tokens decoded to audio, resampled to ``codec`` (the diffusion system's) rate and encoded by
    it, each latent frame flattened: [N, T_z, C] (sequence codecs) or [N, T_z, H*C] (image codecs [N, H, T, C])."""
    from tta_jax.codecs.encodec import EncodecModel

    model = EncodecModel(lm.codec_cfg)
    codes = jnp.asarray(np.asarray(tokens), jnp.int32)
    if representation == "codec":
        return np.asarray(model.apply({"params": lm.codec_params}, codes, method="codes_to_latents"), np.float32)
    if codec is None:
        raise ConfigError("representation='vae' re-encodes the LM's audio with the system codec: pass it")
    from tta_jax.audio.io import resample

    audio = np.asarray(model.apply({"params": lm.codec_params}, codes, method="decode"), np.float32)
    audio = audio if audio.ndim == 2 else audio.mean(-1)
    if lm.sample_rate != codec.sample_rate:
        audio = np.stack([resample(a, lm.sample_rate, codec.sample_rate) for a in audio])
    z = np.asarray(codec.encode(audio), np.float32)
    if z.ndim == 4:   # [N, H, T, C] -> [N, T, H*C]
        z = np.transpose(z, (0, 2, 1, 3)).reshape(z.shape[0], z.shape[2], -1)
    return z


def teacher_tokens(lm: AcousticLM, audio, sample_rate: int) -> np.ndarray:
    """Audio [N, S] at ``sample_rate`` -> the LM codec's tokens [N, T_a, n] (the ground truth the LM learns)."""
    from tta_jax.audio.io import resample
    from tta_jax.codecs.encodec import EncodecModel

    audio = np.asarray(audio, np.float32)
    if sample_rate != lm.sample_rate:
        audio = np.stack([resample(a, sample_rate, lm.sample_rate) for a in audio])
    x = jnp.repeat(jnp.asarray(audio)[..., None], lm.codec_cfg.audio_channels, axis=-1)
    model = EncodecModel(lm.codec_cfg)
    return np.asarray(model.apply({"params": lm.codec_params}, x, num_quantizers=lm.num_codebooks,
                                  method="encode"))


def lm_tokens(lm: AcousticLM, captions, frames: int, options: Mapping[str, Any], seed: int) -> np.ndarray:
    """Captions [N] -> tokens [N, frames, n] the LM generates: its run's text encoder and sampling options
    (``options`` overriding temperature / top_k / top_p / guidance), CFG's null branch the empty caption."""
    import jax

    from tta_jax.lm.generate import generate
    from tta_jax.lm.options import check_sampling, lm_config_of, sampling_options_of

    cfg = lm_config_of(lm.config)
    limit = cfg.max_len - lm.num_codebooks + 1
    if frames > limit:
        raise ConfigError(f"the acoustic condition needs {frames} LM frames ({frames / lm.frame_rate:.2f} s), the LM "
                          f"run {lm.workdir!r} writes at most {limit} (its config.model.max_len); sample shorter clips")
    opts = sampling_options_of(lm.config)
    opts = check_sampling(**{**opts, **{k: options[k] for k in opts if options.get(k) is not None}},
                          where="config.conditioner.lm")
    scale = float(options["guidance"] if options.get("guidance") is not None else lm.config.sampler.guidance_scale)
    text = lm.text_encoder
    cond = text.encode([str(c) for c in captions])
    null = {}
    if scale != 1.0:
        empty = text.encode([""])
        null = {"null_text": jnp.asarray(empty["text"]), "null_mask": empty.get("text_mask")}
    tokens = generate(lm.params, cfg, jnp.asarray(cond["text"]), cond.get("text_mask"), jax.random.PRNGKey(seed),
                      steps=int(frames), cfg_scale=scale, **opts, **null)
    return np.asarray(tokens)


def acoustic_features(section: Mapping[str, Any], codec, text):
    """-> ``encode(audio [N, S] at the system codec's rate | None, captions [N], *, seconds=None, seed=None)
    -> {"acoustic": [N, La, D]}``: teacher-forced tokens of ``audio`` (``source="teacher"``), else the LM's
    tokens for ``captions`` (``seconds`` long: the audio's length, or given when there is no audio), through
    :func:`acoustic_from_tokens`. ``text`` is unused (the LM has its own text encoder)."""
    del text
    source = _choice(section, "source", SOURCES)
    representation = _choice(section, "representation", REPRESENTATIONS)
    options = dict(section.get("lm") or {})
    lm = load_acoustic_lm(str(section.get("lm_workdir") or ""))
    if codec is None:
        raise ConfigError("DC-LDM's acoustic features need the system codec (its sample rate; 'vae' encodes with it)")

    def encode(audio, captions, *, seconds: float | None = None, seed: int | None = None):
        if audio is not None and seconds is None:
            seconds = np.shape(audio)[-1] / codec.sample_rate
        if source == "teacher" and audio is not None:
            tokens = teacher_tokens(lm, audio, codec.sample_rate)
        else:
            if captions is None or seconds is None:
                raise ValueError("the LM writes the acoustic condition from captions and a length in seconds")
            frames = max(1, int(round(float(seconds) * lm.frame_rate)))
            tokens = lm_tokens(lm, captions, frames, options,
                               int(options.get("seed", 0) if seed is None else seed))
        return {KEY: acoustic_from_tokens(lm, tokens, representation, codec)}

    return encode


class AcousticConditioned(nn.Module):
    """The denoiser reading ``acoustic`` [B, 1, La, D] (the registry's one reference slot) and
    ``reference_mask`` [B, 1]: passes ``acoustic`` [B, La, D] with ``acoustic_mask`` [B, La] (False where the
    slot is off) to the denoiser's own acoustic path. No params of its own (the denoiser's stay where they are:
    a text-only checkpoint of the same backbone loads unchanged)."""

    net: nn.Module

    def setup(self):
        nn.share_scope(self, self.net)

    def __call__(self, x, t, cond, train: bool = False):
        cond = dict(cond)
        a = cond.pop(KEY, None)
        rmask = cond.pop("reference_mask", None)
        if a is not None:
            a = jnp.asarray(a)
            B = x.shape[0]
            if a.ndim != 4 or a.shape[:2] != (B, 1):
                raise ValueError(f"cond[{KEY!r}] must be [B={B}, 1, La, D] (one acoustic slot), got {a.shape}")
            a = a[:, 0]
            on = jnp.ones((B,), bool) if rmask is None else jnp.asarray(rmask).astype(bool).reshape(B, -1)[:, 0]
            m = cond.get(f"{KEY}_mask")
            m = jnp.ones(a.shape[:2], bool) if m is None else jnp.asarray(m).astype(bool)
            cond[KEY], cond[f"{KEY}_mask"] = a, m & on[:, None]
        return self.net(x, t, cond, train=train)


def with_acoustic(den, section: Mapping[str, Any], where: str = "config.conditioner"):
    """A Denoiser with an acoustic path (U-Net ``extra_contexts`` keyed ``acoustic``; DiT ``acoustic_dim``) ->
    the same one reading the registry's slot layout (:class:`AcousticConditioned`)."""
    if KEY not in den.cond_keys:
        raise ConfigError(f"{where}.name='dcldm' feeds the acoustic encoding to the denoiser's extra "
                          f"cross-attention: set config.model.extra_contexts=[{{'key': 'acoustic', 'dim': D, "
                          f"'blocks': ...}}] (U-Net) or config.model.acoustic_dim (DiT)")
    reference_spec(section)
    inner = den.dummy_cond
    keys = tuple(k for k in den.cond_keys if k != f"{KEY}_mask") + ("reference_mask",)

    def dummy_cond(b, shape, length):
        cond = dict(inner(b, shape, length))
        a = cond.pop(KEY, None)
        cond.pop(f"{KEY}_mask", None)
        if a is not None:
            cond[KEY] = jnp.asarray(a)[:, None]
            cond["reference_mask"] = jnp.ones((b, 1), bool)
        return cond

    return dataclasses.replace(den, module=AcousticConditioned(den.module.clone(parent=None)), cond_keys=keys,
                               dummy_cond=dummy_cond)


__all__ = ["AcousticConditioned", "AcousticLM", "with_acoustic", "reference_spec", "acoustic_features",
           "acoustic_from_tokens", "teacher_tokens", "lm_tokens", "load_acoustic_lm", "REFERENCE_KEYS"]
