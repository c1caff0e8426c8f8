"""Mel-image codec: audio -> log-mel -> image -> 2-D KL-VAE latent, and back through a mel vocoder (HiFi-GAN or
BigVGAN: :func:`vocoder_module`).

One mechanism, two released settings (docs/reference-architectures.md sections 2 and 3):

- ``image="auffusion"`` (Auffusion; github.com/happylittlecat2333/Auffusion): 16 kHz, 256 mels, hop 160
  (:data:`tta_jax.audio.mel.AUFFUSION`); log-mel clamped to [log 1e-5, log 200], min-max to [0, 1], frequency
  flipped (low bins at the bottom), repeated to 3 channels, mapped to [-1, 1]
  (:func:`tta_jax.audio.mel.mel_to_image`): an image [B, n_mels, T, 3] for the Stable Diffusion v1.5 VAE
  (/8, scaling factor 0.18215) -> latent [B, n_mels/8, T/8, 4]. Decoding reads channel 0 back
  (:func:`tta_jax.audio.mel.image_to_mel`) and runs the 256-mel 16 kHz HiFi-GAN (``"auffusion"`` upsample
  padding: exactly 160 samples per frame). Auffusion peak-normalises each clip to 0.95 before its mel
  (:func:`tta_jax.audio.mel.auffusion_log_mel`); the codec does not rescale its input: the data pipeline
  does it (``AudioConfig.normalize = 0.95``, after cropping) before audio reaches ``encode``.
- ``image="audioldm"`` (AudioLDM / Tango mel VAE; diffusers ``AudioLDMPipeline``): 16 kHz, 64 mels, hop 160
  (:data:`tta_jax.audio.mel.AUDIOLDM`, or ``TANGO``'s centred frames); the log-mel itself is the 1-channel
  image, time-major as the VAE was trained ([B, T, n_mels, 1], H = time) -> VAE (/4, scaling factor
  0.9227914214134216) -> [B, T/4, n_mels/4, 8], returned transposed to this module's layout. The VAE's
  output is the vocoder's log-mel input (64-mel 16 kHz HiFi-GAN).

Layout of every latent here: ``[B, H, T, C]`` with H = frequency rows and time on axis -2 (what the
loader, the records and the sampler use); the AudioLDM VAE's time-major latent is transposed on the way
out and back on the way in. Latents are scaled: ``z = (mean or mean + std * eps) * scaling_factor``
(minus ``shift_factor`` first, when the VAE has one), i.e. what the diffusion model sees. Mel frames are
cropped to a multiple of the VAE's downsampling factor ``f``, so ``N`` samples give
``(mel frames // f)`` latent frames and ``hop_length = mel hop * f`` samples per latent frame. Decoding
gives exactly ``latent frames * hop_length`` samples: a vocoder that makes a few more (``"jik876"`` padding
with an odd ``kernel - rate``, e.g. AudioLDM's: ``160 * frames + 32``) is cropped at the end, as the
AudioLDM pipelines crop to the wanted length.

The vocoder is whichever generator ``MelImageConfig.vocoder`` configures: a
:class:`~tta_jax.vocoders.hifigan.HiFiGANConfig` (the released Auffusion / AudioLDM vocoders) or a
:class:`~tta_jax.vocoders.bigvgan.BigVGANConfig` (DreamAudio's mel VAE + BigVGAN). Both read the same
``log(clamp(mel, 1e-5))`` frames (``"hifigan"`` padding) and must take the front end's ``n_mels`` at its hop
and sample rate; everything else (VAE, image mapping, cropping) is shared.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from tta_jax.audio.mel import MelConfig, image_to_mel, log_mel_spectrogram, mel_to_image
from tta_jax.codecs.kl_vae import KLVAE, KLVAEConfig
from tta_jax.vocoders.bigvgan import BigVGAN, BigVGANConfig
from tta_jax.vocoders.hifigan import HiFiGANConfig, HiFiGANGenerator

IMAGES = ("auffusion", "audioldm")
VocoderConfig = HiFiGANConfig | BigVGANConfig


def vocoder_kind(cfg: VocoderConfig) -> str:
    """``"hifigan"`` or ``"bigvgan"``: which generator a vocoder config builds."""
    if isinstance(cfg, HiFiGANConfig):
        return "hifigan"
    if isinstance(cfg, BigVGANConfig):
        return "bigvgan"
    raise TypeError(f"vocoder config must be a HiFiGANConfig or a BigVGANConfig, got {type(cfg).__name__}")


def vocoder_module(cfg: VocoderConfig, dtype: Any = jnp.float32):
    """The generator of ``cfg``: ``module.apply({"params": p}, mel [B, frames, num_mels]) -> audio
    [B, >= frames * hop]``; ``module.init_params(key)`` gives random params."""
    return (HiFiGANGenerator if vocoder_kind(cfg) == "hifigan" else BigVGAN)(cfg, dtype=dtype)


@dataclasses.dataclass(frozen=True)
class MelImageConfig:
    """Static facts: the mel front end, the mel -> image mapping (``IMAGES``), the VAE and the vocoder
    (HiFi-GAN or BigVGAN config)."""

    mel: MelConfig
    image: str
    vae: KLVAEConfig
    vocoder: VocoderConfig

    def __post_init__(self):
        if self.image not in IMAGES:
            raise ValueError(f"MelImageConfig.image={self.image!r}: expected one of {IMAGES}")
        want = 3 if self.image == "auffusion" else 1
        if self.vae.in_channels != want or self.vae.out_channels != want:
            raise ValueError(f"MelImageConfig: image={self.image!r} makes {want}-channel images but the VAE has "
                             f"in/out channels {self.vae.in_channels}/{self.vae.out_channels}")
        f = self.vae.downsample_factor
        if self.mel.n_mels % f:
            raise ValueError(f"MelImageConfig: n_mels={self.mel.n_mels} is not a multiple of the VAE's "
                             f"downsampling factor {f}")
        kind = vocoder_kind(self.vocoder)
        if self.vocoder.num_mels != self.mel.n_mels or self.vocoder.hop_length != self.mel.hop_length:
            raise ValueError(f"MelImageConfig: the vocoder ({kind}) takes {self.vocoder.num_mels} mels at hop "
                             f"{self.vocoder.hop_length}, the mel front end gives {self.mel.n_mels} at hop "
                             f"{self.mel.hop_length}")
        if self.vocoder.sampling_rate != self.mel.sample_rate:
            raise ValueError(f"MelImageConfig: vocoder at {self.vocoder.sampling_rate} Hz, mel front end at "
                             f"{self.mel.sample_rate} Hz")

    @property
    def factor(self) -> int:
        return self.vae.downsample_factor

    @property
    def hop_length(self) -> int:
        """Audio samples per latent time frame."""
        return self.mel.hop_length * self.factor

    @property
    def latent_height(self) -> int:
        return self.mel.n_mels // self.factor

    def latent_frames(self, num_samples: int) -> int:
        return self.mel.num_frames(num_samples) // self.factor


# ---------------------------------------------------------------------------------------------- pure maps
def mel_to_vae_image(log_mel: jax.Array, image: str) -> jax.Array:
    """log-mel [B, T, M] -> the VAE's input: [B, M, T, 3] (auffusion) or [B, T, M, 1] (audioldm)."""
    if image == "auffusion":
        return mel_to_image(log_mel)
    return log_mel[..., None]


def vae_image_to_mel(img: jax.Array, image: str) -> jax.Array:
    """Inverse of :func:`mel_to_vae_image`: the VAE's output -> log-mel [B, T, M]."""
    if image == "auffusion":
        return image_to_mel(img)
    return img[..., 0]


def to_layout(z: jax.Array, image: str) -> jax.Array:
    """VAE latent -> [B, H (frequency), T, C]: the AudioLDM VAE's time-major [B, T, M', C] is transposed."""
    return jnp.swapaxes(z, 1, 2) if image == "audioldm" else z


def from_layout(z: jax.Array, image: str) -> jax.Array:
    """Inverse of :func:`to_layout`."""
    return jnp.swapaxes(z, 1, 2) if image == "audioldm" else z


def content_noise(key: jax.Array, audio: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal noise of ``shape`` [B, ...] keyed per example by its audio's bits: the same clip gets
    the same noise whatever batch it is in (resumable, order-free precompute), different clips differ."""
    bits = jax.lax.bitcast_convert_type(jnp.asarray(audio, jnp.float32).reshape(audio.shape[0], -1), jnp.uint32)
    weights = (jnp.arange(bits.shape[1], dtype=jnp.uint32) * jnp.uint32(2654435761)) | jnp.uint32(1)
    digest = jnp.sum(bits * weights, axis=1, dtype=jnp.uint32)           # wrapping uint32 arithmetic
    keys = jax.vmap(lambda d: jax.random.fold_in(key, d))(digest)
    return jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(keys)


class MelImageCodec:
    """``encode(audio [B, N]) -> latent [B, H, T, C]`` (scaled), ``decode(latent) -> audio [B, T * hop_length]``.

    ``params = {"vae": KL-VAE params, "vocoder": the vocoder's params}`` (HiFi-GAN or BigVGAN, as
    ``config.vocoder``). ``sample``: encode to
    ``mean + std * eps`` (eps from :func:`content_noise` with ``sample_seed``) instead of the mean.
    """

    def __init__(self, config: MelImageConfig, params: dict, *, sample: bool = False, sample_seed: int = 0,
                 dtype: Any = None):
        self.config, self.params, self.sample, self.sample_seed = config, params, bool(sample), int(sample_seed)
        self.vae = KLVAE(config.vae, dtype=dtype)
        self.vocoder = vocoder_module(config.vocoder, dtype=dtype or jnp.float32)
        self._encode = jax.jit(self._encode_impl)
        self._decode = jax.jit(self._decode_impl)

    def _encode_impl(self, params, audio):
        cfg = self.config
        lm = log_mel_spectrogram(audio, cfg.mel)                       # [B, frames, M]
        t = (lm.shape[1] // cfg.factor) * cfg.factor
        if t == 0:
            raise ValueError(f"MelImageCodec.encode: {audio.shape[1]} samples give {lm.shape[1]} mel frames, "
                             f"fewer than the VAE's downsampling factor {cfg.factor}")
        img = mel_to_vae_image(lm[:, :t], cfg.image)
        mean, std = self.vae.apply({"params": params["vae"]}, img, method="encode")
        z = mean
        if self.sample:
            z = mean + std * content_noise(jax.random.PRNGKey(self.sample_seed), audio, mean.shape)
        z = self.vae.apply({"params": params["vae"]}, z, method="scale_latents")
        return to_layout(z, cfg.image)

    def _decode_impl(self, params, latent):
        cfg = self.config
        z = self.vae.apply({"params": params["vae"]}, from_layout(latent, cfg.image), method="unscale_latents")
        img = self.vae.apply({"params": params["vae"]}, z, method="decode")
        mel = vae_image_to_mel(img, cfg.image)                          # [B, frames, M]
        audio = self.vocoder.apply({"params": params["vocoder"]}, mel)  # [B, >= frames * hop]
        return audio[:, :mel.shape[1] * cfg.vocoder.hop_length]

    def encode(self, audio) -> jax.Array:
        """audio [B, N] at ``config.mel.sample_rate`` -> latent [B, n_mels / f, frames // f, latent_channels]."""
        audio = jnp.asarray(audio, jnp.float32)
        if audio.ndim != 2:
            raise ValueError(f"MelImageCodec.encode expects audio [B, N], got shape {tuple(audio.shape)}")
        return self._encode(self.params, audio)

    def decode(self, latent) -> jax.Array:
        """latent [B, H, T, C] -> audio [B, T * hop_length] float32."""
        latent = jnp.asarray(latent, jnp.float32)
        cfg = self.config
        want = (cfg.latent_height, cfg.vae.latent_channels)
        if latent.ndim != 4 or (latent.shape[1], latent.shape[3]) != want:
            raise ValueError(f"MelImageCodec.decode expects latent [B, {want[0]}, T, {want[1]}], got shape "
                             f"{tuple(latent.shape)}")
        return self._decode(self.params, latent)


__all__ = ["IMAGES", "VocoderConfig", "vocoder_kind", "vocoder_module", "MelImageConfig", "MelImageCodec",
           "mel_to_vae_image", "vae_image_to_mel", "to_layout", "from_layout", "content_noise"]
