"""Fixed audio front ends of the evaluation backbones, in JAX (jit-able, float32).

- :func:`panns_logmel` -- PANNs / torchlibrosa: centred reflect-padded STFT with a periodic Hann window,
  power spectrogram, librosa (Slaney) mel filters, ``10 log10(max(x, 1e-10))``.
- :func:`vggish_examples` -- VGGish (``mel_features.py`` of the AudioSet release): unpadded 25 ms /
  10 ms frames, 512-point FFT magnitude, HTK-mel filters 125-7500 Hz, ``log(mel + 0.01)``, cut into
  non-overlapping 0.96 s (96-frame) patches.

These are kept here (not in ``tta_jax.audio``) because they pin exactly the conventions of the
pretrained evaluation checkpoints, which differ from the training mel front ends.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


def periodic_hann(n: int) -> np.ndarray:
    """Periodic Hann window (``scipy.signal.get_window('hann', n, fftbins=True)``)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float64)


def frame(x: jnp.ndarray, win: int, hop: int) -> jnp.ndarray:
    """[..., T] -> [..., n_frames, win] with n_frames = 1 + (T - win) // hop (no padding)."""
    t = x.shape[-1]
    if t < win:
        raise ValueError(f"signal of {t} samples is shorter than one window of {win}")
    n = 1 + (t - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    return x[..., idx]


# --------------------------------------------------------------------------------------------------
# PANNs (torchlibrosa conventions)
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def librosa_mel_matrix(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """librosa.filters.mel (Slaney scale, Slaney norm) transposed: [n_fft//2+1, n_mels]."""
    import librosa

    return np.ascontiguousarray(
        librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).T.astype(np.float32))


def panns_logmel(wav: jnp.ndarray, sr: int = 16000, n_fft: int = 512, hop: int = 160, n_mels: int = 64,
                 fmin: float = 50.0, fmax: float = 8000.0, amin: float = 1e-10) -> jnp.ndarray:
    """Waveform [B, T] -> log-mel [B, frames, n_mels] with frames = 1 + T // hop (torchlibrosa)."""
    if wav.ndim != 2:
        raise ValueError(f"panns_logmel expects [B, T] waveforms, got shape {wav.shape}")
    pad = n_fft // 2
    if wav.shape[-1] <= pad:
        raise ValueError(f"waveform of {wav.shape[-1]} samples is too short for reflect padding {pad}")
    x = jnp.pad(wav.astype(jnp.float32), ((0, 0), (pad, pad)), mode="reflect")
    frames = frame(x, n_fft, hop) * jnp.asarray(periodic_hann(n_fft), jnp.float32)
    spec = jnp.fft.rfft(frames, n=n_fft, axis=-1)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    mel = power @ jnp.asarray(librosa_mel_matrix(sr, n_fft, n_mels, fmin, fmax))
    return 10.0 * jnp.log10(jnp.maximum(mel, amin))


# --------------------------------------------------------------------------------------------------
# VGGish (AudioSet mel_features.py conventions)
# --------------------------------------------------------------------------------------------------
VGGISH_SR = 16000
VGGISH_WIN = 400  # 25 ms
VGGISH_HOP = 160  # 10 ms
VGGISH_NFFT = 512
VGGISH_MELS = 64
VGGISH_PATCH = 96  # 0.96 s


def _hz_to_mel_htk(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)


@functools.lru_cache(maxsize=4)
def vggish_mel_matrix(num_mel_bins: int = 64, num_spectrogram_bins: int = 257, sample_rate: int = 16000,
                      lower_edge_hertz: float = 125.0, upper_edge_hertz: float = 7500.0) -> np.ndarray:
    """mel_features.spectrogram_to_mel_matrix: [num_spectrogram_bins, num_mel_bins], DC row zeroed."""
    nyquist = sample_rate / 2.0
    bins_mel = _hz_to_mel_htk(np.linspace(0.0, nyquist, num_spectrogram_bins))
    edges = np.linspace(_hz_to_mel_htk(lower_edge_hertz), _hz_to_mel_htk(upper_edge_hertz), num_mel_bins + 2)
    w = np.empty((num_spectrogram_bins, num_mel_bins))
    for i in range(num_mel_bins):
        lo, c, hi = edges[i:i + 3]
        w[:, i] = np.maximum(0.0, np.minimum((bins_mel - lo) / (c - lo), (hi - bins_mel) / (hi - c)))
    w[0, :] = 0.0
    return w.astype(np.float32)


def vggish_logmel(wav: jnp.ndarray) -> jnp.ndarray:
    """16 kHz waveform [B, T] -> log-mel [B, frames, 64] (frames = 1 + (T - 400) // 160)."""
    if wav.ndim != 2:
        raise ValueError(f"vggish_logmel expects [B, T] waveforms, got shape {wav.shape}")
    frames = frame(wav.astype(jnp.float32), VGGISH_WIN, VGGISH_HOP)
    frames = frames * jnp.asarray(periodic_hann(VGGISH_WIN), jnp.float32)
    mag = jnp.abs(jnp.fft.rfft(frames, n=VGGISH_NFFT, axis=-1))
    mel = mag @ jnp.asarray(vggish_mel_matrix())
    return jnp.log(mel + 0.01)


def vggish_examples(wav: jnp.ndarray) -> jnp.ndarray:
    """16 kHz waveform [B, T] -> patches [B, n_patches, 96, 64]; needs T >= 15,600 (0.975 s)."""
    lm = vggish_logmel(wav)
    n_frames = lm.shape[1]
    if n_frames < VGGISH_PATCH:
        raise ValueError(f"VGGish needs >= 0.975 s at 16 kHz (15600 samples) per clip, got {wav.shape[-1]}")
    n = 1 + (n_frames - VGGISH_PATCH) // VGGISH_PATCH
    return lm[:, : n * VGGISH_PATCH].reshape(lm.shape[0], n, VGGISH_PATCH, VGGISH_MELS)
