"""Audio I/O helpers (numpy, host side): decode, mono mix, resample, peak normalisation; writing samples
(WAV + spectrogram PNG per prompt).

Decoding tries ``soundfile`` first (wav/flac/ogg/mp3 with recent libsndfile) and falls back to
``librosa.load`` (audioread/ffmpeg) for anything else. Every failure raises :class:`AudioError`
naming the file and what was wrong (missing, unreadable/corrupt, empty, non-finite samples).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np


class AudioError(ValueError):
    """An audio file or buffer could not be used; the message names the file and the problem."""


def to_mono(audio: np.ndarray) -> np.ndarray:
    """[T] or [T, C] (soundfile layout) -> [T] by averaging channels."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        return audio
    if audio.ndim == 2:
        return audio.mean(axis=1)
    raise AudioError(f"expected audio [T] or [T, C], got shape {audio.shape}")


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resamples along the last axis (soxr 'HQ' when installed, else librosa's default)."""
    audio = np.asarray(audio, np.float32)
    if int(orig_sr) == int(target_sr):
        return audio
    if orig_sr <= 0 or target_sr <= 0:
        raise AudioError(f"bad sample rates for resampling: {orig_sr} -> {target_sr}")
    try:
        import soxr

        if audio.ndim == 1:
            return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32)
        return np.stack([soxr.resample(a, orig_sr, target_sr, quality="HQ") for a in audio.reshape(-1, audio.shape[-1])]
                        ).reshape(audio.shape[:-1] + (-1,)).astype(np.float32)
    except ImportError:  # pragma: no cover - soxr ships with librosa
        import librosa

        return librosa.resample(audio, orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)


def peak_normalize(audio: np.ndarray, peak: float = 0.95, eps: float = 1e-8) -> np.ndarray:
    """Scales each row (last axis = time) so that max |x| = ``peak``; silent rows are left as is."""
    audio = np.asarray(audio, np.float32)
    m = np.max(np.abs(audio), axis=-1, keepdims=True)
    return np.where(m > eps, audio / np.maximum(m, eps) * peak, audio).astype(np.float32)


def check_audio(audio: np.ndarray, name: str = "<array>") -> np.ndarray:
    """Raises :class:`AudioError` if ``audio`` is empty or has NaN/Inf samples."""
    audio = np.asarray(audio)
    if audio.size == 0 or audio.shape[0] == 0:
        raise AudioError(f"{name}: audio is empty (shape {audio.shape})")
    if not np.all(np.isfinite(audio)):
        bad = int(np.sum(~np.isfinite(audio)))
        raise AudioError(f"{name}: audio has {bad} non-finite (NaN/Inf) samples")
    return audio


def load_audio(path: str | os.PathLike, sample_rate: int | None = None, *, mono: bool = True,
               normalize: float | None = None) -> tuple[np.ndarray, int]:
    """Decodes a file to float32.

    Args:
      path: audio file.
      sample_rate: resample to this rate (None keeps the file's rate).
      mono: average channels -> [T]; otherwise [C, T].
      normalize: peak-normalise to this peak (e.g. 0.95), None for no normalisation.
    Returns:
      (audio [T] or [C, T] float32, sample rate)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")
    audio, sr = None, None
    errors = []
    try:
        import soundfile as sf

        audio, sr = sf.read(path, dtype="float32", always_2d=True)  # [T, C]
    except Exception as e:
        errors.append(f"soundfile: {e}")
        try:
            import warnings

            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y, sr = librosa.load(path, sr=None, mono=False)
            audio = np.asarray(y, np.float32)
            audio = audio[:, None] if audio.ndim == 1 else audio.T
        except Exception as e2:
            errors.append(f"librosa/audioread: {e2}")
    if audio is None:
        raise AudioError(f"{path}: could not decode audio (corrupt or unsupported format): " + "; ".join(errors))
    check_audio(audio, path)
    audio = to_mono(audio) if mono else audio.T
    if sample_rate is not None and sr != sample_rate:
        audio = resample(audio, sr, sample_rate)
        sr = sample_rate
    if normalize is not None:
        audio = peak_normalize(audio, normalize)
    return np.ascontiguousarray(audio, dtype=np.float32), int(sr)


def save_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Writes [T] or [C, T] float audio as 16-bit PCM WAV (or by extension via soundfile)."""
    import soundfile as sf

    audio = check_audio(np.asarray(audio, np.float32), os.fspath(path))
    if audio.ndim == 2:
        audio = audio.T
    sf.write(os.fspath(path), np.clip(audio, -1.0, 1.0), int(sample_rate), subtype="PCM_16")


# ------------------------------------------------------------------------------------------------ samples
def save_spectrogram_png(path: str, spec: np.ndarray, title: str = "") -> None:
    """Writes a [T, F] (log-)spectrogram or latent as a PNG, low frequencies at the bottom. An image latent
    [H, T, C] shows its first channel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = np.asarray(spec)
    img = spec[..., 0] if spec.ndim == 3 else spec.T
    fig, ax = plt.subplots(figsize=(6, 2.4))
    ax.imshow(img, origin="lower", aspect="auto", cmap="magma")
    ax.set_title(title[:60], fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def file_stem(i: int, prompt: str) -> str:
    return f"{i:02d}_" + "".join(ch if ch.isalnum() else "_" for ch in prompt)[:48]


def write_samples(out_dir: str, prompts: Sequence[str], audio, latents, sample_rate: int) -> list[str]:
    """A WAV (``audio`` [N, S] at ``sample_rate``) and a PNG of the latent (``latents`` [N, T, C] or
    [N, H, T, C]) per prompt into ``out_dir`` -> the paths written."""
    import soundfile as sf

    paths = []
    for i, (prompt, a, z) in enumerate(zip(prompts, np.asarray(audio), np.asarray(latents))):
        stem = os.path.join(out_dir, file_stem(i, prompt))
        sf.write(stem + ".wav", a, int(sample_rate))
        save_spectrogram_png(stem + ".png", z, prompt)
        paths += [stem + ".wav", stem + ".png"]
    return paths
