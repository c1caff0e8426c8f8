"""LAION CLAP embedder for the CLAP score (text-audio) and CLAP_A (audio-audio, DreamAudio), in JAX.

Protocol: ``laion/larger_clap_general`` (HTSAT audio tower + RoBERTa text tower, 512-d joint space),
audio resampled to 48 kHz, features computed like the checkpoint's own ``ClapFeatureExtractor``
(``preprocessor_config.json``): repeat-padding to 10 s; clips longer than 10 s are cut to their first
10 s here so the score is deterministic (the extractor would take a random crop), embeddings
L2-normalised.

Runtime: everything runs in JAX. The audio tower is :class:`tta_jax.eval.htsat.HTSAT` (converter
:mod:`tta_jax.convert.clap_audio`), the text tower :class:`tta_jax.text.clap.ClapTextEncoder`
(converter :func:`tta_jax.convert.text_encoders.convert_clap_text`), both loaded by
:func:`tta_jax.convert.clap_audio.load_clap_embedder` from one local Hugging Face folder (``config.json``
+ ``model.safetensors`` or ``pytorch_model.bin``, tokenizer files, ``preprocessor_config.json``). torch is
never imported (``.bin`` files are read with the restricted torch-free unpickler); the tokenizer is
transformers' (torch-free).

Front end (:func:`clap_features`, numpy float64 like the extractor): take the first ``max_length_s``
seconds, pad shorter clips (``repeatpad``: tile ``int(max / len)`` times then zero-pad; ``repeat``:
tile and cut; ``pad``: zero-pad), centred reflect-padded STFT (periodic Hann 1024, hop 480; bins kept
in complex64 as the extractor does), power spectrum, mel filters (``truncation="fusion"``: HTK scale
without norm; otherwise Slaney scale + Slaney norm, fmin 0 / fmax 14 kHz), floor 1e-10,
``10 log10`` (``top_db`` is not applied, by the extractor either). Output ``[C, frames, mels]``,
C = 4 identical copies with fusion (the fused tower then gets ``is_longer = False`` for every clip, as
no clip exceeds 10 s; the extractor would flag a random clip of the batch instead, a training-time
behaviour), else C = 1.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

CLAP_SR = 48000
CLAP_MAX_S = 10.0


# --------------------------------------------------------------------------------------------------
# Front end (= transformers.ClapFeatureExtractor, deterministic path)
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ClapFrontendConfig:
    """The ``ClapFeatureExtractor`` settings (``preprocessor_config.json``; same names and defaults)."""

    feature_size: int = 64
    sampling_rate: int = 48000
    hop_length: int = 480
    max_length_s: float = 10
    fft_window_size: int = 1024
    frequency_min: float = 0.0
    frequency_max: float = 14000.0
    top_db: float | None = None  # stored by the extractor but never applied (its STFT gets no db_range)
    truncation: str = "fusion"
    padding: str = "repeatpad"

    def __post_init__(self):
        if self.truncation not in ("fusion", "rand_trunc"):
            raise ValueError(f"CLAP front end: unknown truncation {self.truncation!r} (fusion or rand_trunc)")
        if self.padding not in ("repeatpad", "repeat", "pad"):
            raise ValueError(f"CLAP front end: unknown padding {self.padding!r} (repeatpad, repeat or pad)")

    @property
    def max_samples(self) -> int:
        return int(self.max_length_s * self.sampling_rate)

    @property
    def channels(self) -> int:
        return 4 if self.truncation == "fusion" else 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClapFrontendConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: d[k] for k in fields if k in d and (d[k] is not None or k == "top_db")})

    @classmethod
    def from_dir(cls, path: str | os.PathLike, *, enable_fusion: bool = False) -> "ClapFrontendConfig":
        """``preprocessor_config.json`` of a HF folder; without one, the extractor defaults with the
        truncation that matches the model (``fusion`` iff ``enable_fusion``)."""
        f = os.path.join(os.fspath(path), "preprocessor_config.json")
        if not os.path.exists(f):
            return cls(truncation="fusion" if enable_fusion else "rand_trunc")
        with open(f) as fh:
            return cls.from_dict(json.load(fh))


def _hz_to_mel(f, scale: str):
    f = np.asarray(f, np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    lin = 3.0 * f / 200.0  # Slaney: linear below 1 kHz, logarithmic above
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * (27.0 / np.log(6.4)), lin)


def _mel_to_hz(m, scale: str):
    m = np.asarray(m, np.float64)
    if scale == "htk":
        return 700.0 * (np.power(10.0, m / 2595.0) - 1.0)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), 200.0 * m / 3.0)


@functools.lru_cache(maxsize=8)
def mel_filters(n_freqs: int, n_mels: int, fmin: float, fmax: float, sr: int, htk: bool) -> np.ndarray:
    """[n_freqs, n_mels] float64 triangular filters: HTK scale without norm (``htk``), or Slaney scale
    with Slaney (constant-energy) norm; FFT bin frequencies ``linspace(0, sr // 2, n_freqs)``."""
    scale = "htk" if htk else "slaney"
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin, scale), _hz_to_mel(fmax, scale), n_mels + 2), scale)
    fft = np.linspace(0, sr // 2, n_freqs)[:, None]
    lo, mid, hi = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    fb = np.maximum(0.0, np.minimum((fft - lo) / (mid - lo), (hi - fft) / (hi - mid)))
    if not htk:
        fb = fb * (2.0 / (hi - lo))
    return fb


def fit_length(wav: np.ndarray, cfg: ClapFrontendConfig) -> np.ndarray:
    """[T] -> [max_samples] float64: the first max_samples, or padded by ``cfg.padding``."""
    x = np.asarray(wav, np.float64).reshape(-1)
    n = cfg.max_samples
    if x.size == 0:
        raise ValueError("CLAP front end: empty waveform")
    if x.size >= n:
        return x[:n]
    if cfg.padding == "repeat":
        x = np.tile(x, n // x.size + 1)[:n]
    elif cfg.padding == "repeatpad":
        x = np.tile(x, n // x.size)
    return np.pad(x, (0, n - x.size))


def log_mel(wav: np.ndarray, cfg: ClapFrontendConfig) -> np.ndarray:
    """[T] (48 kHz, already fitted) -> [1 + T // hop, mels] float32 dB mel spectrogram."""
    n_fft, hop = cfg.fft_window_size, cfg.hop_length
    x = np.pad(np.asarray(wav, np.float64), (n_fft // 2, n_fft // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    spec = np.fft.rfft(frames * window, axis=-1).astype(np.complex64)  # the extractor stores complex64
    power = np.abs(spec).astype(np.float64) ** 2
    fb = mel_filters(n_fft // 2 + 1, cfg.feature_size, float(cfg.frequency_min), float(cfg.frequency_max),
                     int(cfg.sampling_rate), cfg.truncation == "fusion")
    return (10.0 * np.log10(np.maximum(power @ fb, 1e-10))).astype(np.float32)


def clap_features(wavs: Sequence[np.ndarray], cfg: ClapFrontendConfig) -> np.ndarray:
    """List of mono [T_i] at ``cfg.sampling_rate`` -> ``input_features`` [B, C, frames, mels] float32."""
    feats = [log_mel(fit_length(w, cfg), cfg) for w in wavs]
    return np.stack([np.repeat(f[None], cfg.channels, 0) for f in feats])


# --------------------------------------------------------------------------------------------------
# Embedder
# --------------------------------------------------------------------------------------------------
def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class ClapEmbedder:
    """``embed_audio(list of [T] arrays, sr) -> [N, D]``, ``embed_text(list of str) -> [N, D]`` (unit norm)."""

    runtime = "tta_jax JAX (linen HTSAT + RoBERTa)"

    def __init__(self, audio_module, audio_variables, text_module, text_params, tokenizer,
                 frontend: ClapFrontendConfig, name: str = "clap"):
        from tta_jax.eval.htsat import get_audio_features
        from tta_jax.text.clap import get_text_features

        cfg = audio_module.config
        if frontend.feature_size != cfg.num_mel_bins:
            raise ValueError(f"CLAP: the feature extractor makes {frontend.feature_size} mel bins, the audio "
                             f"tower expects num_mel_bins={cfg.num_mel_bins}")
        if frontend.channels != cfg.in_channels:
            raise ValueError(f"CLAP: feature extractor truncation={frontend.truncation!r} does not match the "
                             f"audio tower's enable_fusion={cfg.enable_fusion} (fusion needs truncation='fusion')")
        self.audio_module, self.audio_variables = audio_module, audio_variables
        self.text_module, self.text_params = text_module, text_params
        self.tokenizer = tokenizer
        self.frontend = frontend
        self.name = name
        self._audio_fn = jax.jit(lambda v, x: get_audio_features(audio_module, v, x))
        self._text_fn = jax.jit(lambda p, i, m: get_text_features(text_module, p, i, m))

    def prepare_audio(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """Mono [T] at ``sr`` -> float32 [T'] at 48 kHz, cut to the first 10 s."""
        from tta_jax.audio.io import resample

        x = resample(np.asarray(wav, np.float32), sr, self.frontend.sampling_rate)
        return x[: self.frontend.max_samples]

    def features(self, wavs: Sequence[np.ndarray], sr: int) -> np.ndarray:
        """``input_features`` [N, C, frames, mels] of the audio tower."""
        return clap_features([self.prepare_audio(w, sr) for w in wavs], self.frontend)

    def embed_audio(self, wavs: Sequence[np.ndarray], sr: int, batch: int = 8) -> np.ndarray:
        if len(wavs) == 0:
            raise ValueError("embed_audio: no clips")
        bs = max(1, min(batch, len(wavs)))  # one compiled shape: the last batch is zero-padded
        out = []
        for i in range(0, len(wavs), bs):
            x = self.features(wavs[i:i + bs], sr)
            n = len(x)
            if n < bs:
                x = np.concatenate([x, np.zeros((bs - n,) + x.shape[1:], x.dtype)])
            out.append(np.asarray(self._audio_fn(self.audio_variables, jnp.asarray(x)))[:n])
        return np.concatenate(out, 0).astype(np.float32)

    def _max_text_len(self) -> int:
        cfg = self.text_module.config
        cap = cfg.max_position_embeddings - cfg.pad_token_id - 1
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        return min(cap, tok_max) if isinstance(tok_max, int) and tok_max > 0 else cap

    def embed_text(self, texts: Sequence[str], batch: int = 32) -> np.ndarray:
        if len(texts) == 0:
            raise ValueError("embed_text: no texts")
        max_len = self._max_text_len()
        pad_id = self.text_module.config.pad_token_id
        out = []
        for i in range(0, len(texts), batch):
            tok = self.tokenizer(list(texts[i:i + batch]), padding=True, truncation=True, max_length=max_len,
                                 return_tensors="np")
            ids, mask = np.asarray(tok["input_ids"]), np.asarray(tok["attention_mask"])
            length = min(_round_up(ids.shape[1], 8), max_len)  # bucketed: fewer compiled shapes
            ids = np.pad(ids, ((0, 0), (0, length - ids.shape[1])), constant_values=pad_id)
            mask = np.pad(mask, ((0, 0), (0, length - mask.shape[1])))
            out.append(np.asarray(self._text_fn(self.text_params, jnp.asarray(ids, jnp.int32),
                                                jnp.asarray(mask, jnp.int32))))
        return np.concatenate(out, 0).astype(np.float32)


__all__ = ["CLAP_SR", "CLAP_MAX_S", "ClapFrontendConfig", "mel_filters", "fit_length", "log_mel",
           "clap_features", "ClapEmbedder"]
