"""Waveform-VAE training losses: multi-resolution STFT loss, EnCodec-style multi-scale STFT
discriminator, adversarial (hinge / least-squares) and feature-matching losses, reconstruction metrics.

Shapes: audio is ``[B, T]`` (mono) or ``[B, T, C]`` (channels are folded into the batch for the losses).

- :func:`multi_resolution_stft_loss` (auraloss ``MultiResolutionSTFTLoss`` as stable-audio-tools uses it):
  per resolution, spectral convergence ``||S_t - S_p||_F / ||S_t||_F`` + log-magnitude L1
  ``mean|log S_t - log S_p|``; averaged over resolutions. ``EZAUDIO_FFT_SIZES`` (1280 .. 20, 7 scales,
  EzAudio's 24 kHz list) and ``SAT_FFT_SIZES`` (2048 .. 32, stable-audio-tools') with hop = n_fft / 4,
  window = n_fft (Hann).
- :class:`STFTDiscriminator` (EnCodec ``DiscriminatorSTFT``): normalised complex STFT -> [B, frames,
  freq, 2] (real, imag) -> Conv2d(3x9) -> 3 x Conv2d(3x9, time dilation 1/2/4, freq stride 2) -> Conv2d(3x3)
  -> Conv2d(3x3) to 1 logit map, LeakyReLU(0.2) between. Returns (logits, feature maps).
- :class:`MultiScaleSTFTDiscriminator`: one :class:`STFTDiscriminator` per (n_fft, hop, win).
- :func:`discriminator_loss`, :func:`generator_adv_loss`, :func:`feature_matching_loss`.
- :func:`si_sdr`, :func:`log_mel_l1`, :func:`reconstruction_metrics` (periodic eval metrics).
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

EZAUDIO_FFT_SIZES = (1280, 640, 320, 160, 80, 40, 20)
SAT_FFT_SIZES = (2048, 1024, 512, 256, 128, 64, 32)
ENCODEC_DISC_FFTS = (2048, 1024, 512, 256, 128)   # stable-audio-tools' "encodec" discriminator


def _mono_batch(x: jax.Array) -> jax.Array:
    """[B, T] or [B, T, C] -> [B*C, T] float32."""
    x = jnp.asarray(x, jnp.float32)
    if x.ndim == 3:
        b, t, c = x.shape
        return jnp.moveaxis(x, -1, 1).reshape(b * c, t)
    if x.ndim != 2:
        raise ValueError(f"expected audio [B, T] or [B, T, C], got shape {x.shape}")
    return x


@functools.lru_cache(maxsize=64)
def _hann(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)  # periodic (torch)


def stft(x: jax.Array, n_fft: int, hop: int, win: int | None = None, *, normalized: bool = False
         ) -> jax.Array:
    """Centred (reflect-padded) complex STFT with a periodic Hann window, as ``torch.stft(center=True)``.

    x [B, T] -> complex64 [B, frames, n_fft//2 + 1] (frames = 1 + T // hop).
    """
    win = win or n_fft
    x = jnp.asarray(x, jnp.float32)
    if x.shape[-1] <= n_fft // 2:
        raise ValueError(f"stft: {x.shape[-1]} samples is too short for n_fft={n_fft} (reflect padding)")
    w = np.zeros(n_fft, np.float32)
    off = (n_fft - win) // 2
    w[off:off + win] = _hann(win)
    xp = jnp.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    n = 1 + (xp.shape[-1] - n_fft) // hop
    idx = np.arange(n)[:, None] * hop + np.arange(n_fft)[None, :]
    spec = jnp.fft.rfft(xp[:, idx] * w, axis=-1)
    if normalized:
        spec = spec / np.sqrt(np.sum(w ** 2))
    return spec


def stft_magnitude(x: jax.Array, n_fft: int, hop: int, win: int | None = None, eps: float = 1e-7):
    s = stft(x, n_fft, hop, win)
    return jnp.sqrt(jnp.maximum(s.real ** 2 + s.imag ** 2, eps))


def stft_loss(pred: jax.Array, target: jax.Array, n_fft: int, hop: int, win: int | None = None):
    """One resolution: (spectral convergence, log-magnitude L1). pred/target [B, T]."""
    sp = stft_magnitude(pred, n_fft, hop, win)
    st = stft_magnitude(target, n_fft, hop, win)
    sc = jnp.linalg.norm((st - sp).reshape(-1)) / jnp.maximum(jnp.linalg.norm(st.reshape(-1)), 1e-7)
    mag = jnp.mean(jnp.abs(jnp.log(st) - jnp.log(sp)))
    return sc, mag


def multi_resolution_stft_loss(pred: jax.Array, target: jax.Array,
                               fft_sizes: Sequence[int] = EZAUDIO_FFT_SIZES,
                               hop_sizes: Sequence[int] | None = None,
                               win_lengths: Sequence[int] | None = None,
                               sc_weight: float = 1.0, mag_weight: float = 1.0):
    """Mean over resolutions of ``sc_weight * SC + mag_weight * logmag``. -> (loss, {"sc", "mag"})."""
    pred, target = _mono_batch(pred), _mono_batch(target)
    if pred.shape != target.shape:
        raise ValueError(f"multi_resolution_stft_loss: pred {pred.shape} != target {target.shape}")
    hop_sizes = hop_sizes or tuple(max(n // 4, 1) for n in fft_sizes)
    win_lengths = win_lengths or tuple(fft_sizes)
    if not len(fft_sizes) == len(hop_sizes) == len(win_lengths):
        raise ValueError(f"fft_sizes {fft_sizes}, hop_sizes {hop_sizes}, win_lengths {win_lengths} "
                         "must have the same length")
    scs, mags = [], []
    for n, h, w in zip(fft_sizes, hop_sizes, win_lengths):
        sc, mag = stft_loss(pred, target, int(n), int(h), int(w))
        scs.append(sc)
        mags.append(mag)
    sc, mag = jnp.mean(jnp.stack(scs)), jnp.mean(jnp.stack(mags))
    return sc_weight * sc + mag_weight * mag, {"sc": sc, "mag": mag}


# ------------------------------------------------------------------------------------ discriminator
class STFTDiscriminator(nn.Module):
    """EnCodec ``DiscriminatorSTFT`` (channels-last). audio [B, T] -> (logits [B, frames, F', 1],
    feature maps list)."""

    n_fft: int = 1024
    hop: int = 256
    win: int | None = None
    filters: int = 32
    max_filters: int = 1024
    filters_scale: int = 1
    dilations: tuple[int, ...] = (1, 2, 4)
    kernel: tuple[int, int] = (3, 9)       # (time, freq)
    stride: tuple[int, int] = (1, 2)

    @nn.compact
    def __call__(self, x):
        spec = stft(x, self.n_fft, self.hop, self.win, normalized=True)
        h = jnp.stack([spec.real, spec.imag], axis=-1)          # [B, frames, F, 2]
        feats = []
        kt, kf = self.kernel

        def conv(ch, k, stride=(1, 1), dil=(1, 1), name=None):
            pad = [((k[0] - 1) * dil[0] // 2,) * 2, ((k[1] - 1) * dil[1] // 2,) * 2]
            return nn.Conv(ch, k, strides=stride, kernel_dilation=dil, padding=pad, name=name)

        h = conv(self.filters, self.kernel, name="conv_0")(h)
        h = nn.leaky_relu(h, 0.2)
        feats.append(h)
        ch = self.filters
        for i, d in enumerate(self.dilations):
            ch = min(self.filters_scale ** (i + 1) * self.filters, self.max_filters)
            h = conv(ch, self.kernel, stride=self.stride, dil=(d, 1), name=f"conv_{i + 1}")(h)
            h = nn.leaky_relu(h, 0.2)
            feats.append(h)
        h = conv(ch, (kt, kt), name=f"conv_{len(self.dilations) + 1}")(h)
        h = nn.leaky_relu(h, 0.2)
        feats.append(h)
        logits = conv(1, (kt, kt), name="conv_post")(h)
        return logits, feats


class MultiScaleSTFTDiscriminator(nn.Module):
    """One :class:`STFTDiscriminator` per resolution. audio [B, T] or [B, T, C] ->
    (list of logits, list of feature-map lists)."""

    n_ffts: tuple[int, ...] = ENCODEC_DISC_FFTS
    hops: tuple[int, ...] | None = None
    filters: int = 32

    @nn.compact
    def __call__(self, x):
        x = _mono_batch(x)
        hops = self.hops or tuple(n // 4 for n in self.n_ffts)
        logits, feats = [], []
        for i, (n, h) in enumerate(zip(self.n_ffts, hops)):
            lg, ft = STFTDiscriminator(n_fft=n, hop=h, filters=self.filters, name=f"disc_{i}")(x)
            logits.append(lg)
            feats.append(ft)
        return logits, feats


def discriminator_loss(real_logits, fake_logits, kind: str = "hinge") -> jax.Array:
    """Mean over discriminators. hinge: relu(1 - D(x)) + relu(1 + D(G(z))); ls: (1 - D(x))^2 + D(G(z))^2."""
    out = []
    for r, f in zip(real_logits, fake_logits):
        if kind == "hinge":
            out.append(jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f)))
        elif kind == "ls":
            out.append(jnp.mean(jnp.square(1.0 - r)) + jnp.mean(jnp.square(f)))
        else:
            raise ValueError(f"adversarial loss kind {kind!r}; expected 'hinge' or 'ls'")
    return jnp.mean(jnp.stack(out))


def generator_adv_loss(fake_logits, kind: str = "hinge") -> jax.Array:
    """Mean over discriminators. hinge: relu(1 - D(G(z))); ls: (1 - D(G(z)))^2."""
    out = []
    for f in fake_logits:
        if kind == "hinge":
            out.append(jnp.mean(jax.nn.relu(1.0 - f)))
        elif kind == "ls":
            out.append(jnp.mean(jnp.square(1.0 - f)))
        else:
            raise ValueError(f"adversarial loss kind {kind!r}; expected 'hinge' or 'ls'")
    return jnp.mean(jnp.stack(out))


def feature_matching_loss(real_feats, fake_feats) -> jax.Array:
    """Sum over layers of mean |f_real - f_fake| (real features are not differentiated), mean over
    discriminators (stable-audio-tools' EncodecDiscriminator)."""
    per_disc = []
    for rf, ff in zip(real_feats, fake_feats):
        per_disc.append(sum(jnp.mean(jnp.abs(jax.lax.stop_gradient(r) - f)) for r, f in zip(rf, ff)))
    return jnp.mean(jnp.stack(per_disc))


# ----------------------------------------------------------------------------------------- metrics
def si_sdr(pred: jax.Array, target: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Scale-invariant SDR in dB per item, [B]. pred/target [B, T] (or [B, T, C])."""
    pred, target = _mono_batch(pred), _mono_batch(target)
    pred = pred - pred.mean(-1, keepdims=True)
    target = target - target.mean(-1, keepdims=True)
    alpha = jnp.sum(pred * target, -1, keepdims=True) / (jnp.sum(target ** 2, -1, keepdims=True) + eps)
    s = alpha * target
    e = pred - s
    return 10.0 * jnp.log10((jnp.sum(s ** 2, -1) + eps) / (jnp.sum(e ** 2, -1) + eps))


def log_mel_l1(pred: jax.Array, target: jax.Array, sample_rate: int, n_fft: int = 1024, hop: int = 256,
               n_mels: int = 64) -> jax.Array:
    """Mean |log-mel(pred) - log-mel(target)| (natural log, floor 1e-5), Slaney mel, centred STFT."""
    import librosa

    pred, target = _mono_batch(pred), _mono_batch(target)
    n_fft = min(n_fft, 2 * (pred.shape[-1] // 2) - 2)
    hop = min(hop, max(n_fft // 4, 1))
    fb = jnp.asarray(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels), jnp.float32)

    def lm(x):
        return jnp.log(jnp.maximum(jnp.einsum("btk,mk->btm", stft_magnitude(x, n_fft, hop), fb), 1e-5))
    return jnp.mean(jnp.abs(lm(pred) - lm(target)))


def reconstruction_metrics(pred: jax.Array, target: jax.Array, sample_rate: int,
                           fft_sizes: Sequence[int] = EZAUDIO_FFT_SIZES) -> dict[str, jax.Array]:
    """{"mrstft", "si_sdr" (dB, batch mean), "log_mel_l1"}."""
    pred, target = _mono_batch(pred), _mono_batch(target)
    n = min(pred.shape[-1], target.shape[-1])
    pred, target = pred[:, :n], target[:, :n]
    fft_sizes = tuple(f for f in fft_sizes if f // 2 < n) or (min(fft_sizes),)
    mr, _ = multi_resolution_stft_loss(pred, target, fft_sizes)
    return {"mrstft": mr, "si_sdr": jnp.mean(si_sdr(pred, target)),
            "log_mel_l1": log_mel_l1(pred, target, sample_rate)}


__all__ = ["EZAUDIO_FFT_SIZES", "SAT_FFT_SIZES", "ENCODEC_DISC_FFTS", "stft", "stft_magnitude", "stft_loss",
           "multi_resolution_stft_loss", "STFTDiscriminator", "MultiScaleSTFTDiscriminator",
           "discriminator_loss", "generator_adv_loss", "feature_matching_loss", "si_sdr", "log_mel_l1",
           "reconstruction_metrics"]
