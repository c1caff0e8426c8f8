"""Auffusion's audio front end and spectrogram <-> image mapping vs a NumPy/librosa re-statement of its
reference inference code (github.com/happylittlecat2333/Auffusion: converter.py ``mel_spectrogram`` /
``get_mel_spectrogram_from_audio``, auffusion_pipeline.py ``normalize_spectrogram`` /
``denormalize_spectrogram`` and the diffusers image processor's [0, 1] <-> [-1, 1] steps)."""
import math

import numpy as np
import pytest

from tta_jax.audio import mel as M
from tta_jax.codecs.mel_image import mel_to_vae_image, vae_image_to_mel

SR, N_FFT, WIN, HOP, N_MELS = 16000, 2048, 1024, 160, 256
LO, HI = np.log(1e-5), np.log(200.0)


# ---- the reference, re-stated in float64 NumPy --------------------------------------------------------
def ref_log_mel(x: np.ndarray) -> np.ndarray:
    """One clip [T] -> log-mel [n_mels, T // hop] (the reference's orientation)."""
    import librosa
    import scipy.signal

    y = librosa.util.normalize(np.asarray(x, np.float64)) * 0.95           # peak 0.95
    side = (N_FFT - HOP) // 2
    y = np.pad(y, (side, side), mode="reflect")                            # then STFT with center=False
    count = 1 + (y.size - N_FFT) // HOP
    frames = np.stack([y[i * HOP:i * HOP + N_FFT] for i in range(count)])  # [frames, n_fft]
    hann = scipy.signal.get_window("hann", WIN, fftbins=True)              # periodic, as torch.hann_window
    window = np.zeros(N_FFT)
    window[(N_FFT - WIN) // 2:(N_FFT - WIN) // 2 + WIN] = hann             # centred in n_fft, as torch.stft
    spec = np.fft.rfft(frames * window, axis=-1)
    mag = np.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)                  # [frames, n_fft/2 + 1]
    basis = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=0, fmax=8000)  # Slaney
    return np.log(np.maximum(basis @ mag.T, 1e-5))


def ref_image(log_mel: np.ndarray) -> np.ndarray:
    """[n_mels, frames] -> VAE input [3, n_mels, frames] in [-1, 1]."""
    x = (np.clip(log_mel, LO, HI) - LO) / (HI - LO)
    x = np.flip(np.repeat(x[None], 3, axis=0), axis=1)   # 3 channels; row 0 = highest frequency
    return 2.0 * x - 1.0


def ref_image_to_mel(image: np.ndarray) -> np.ndarray:
    """VAE output [C, n_mels, frames] -> log-mel [n_mels, frames]."""
    x = np.clip(image / 2.0 + 0.5, 0.0, 1.0)
    x = np.flip(x, axis=1)[0]
    return x * (HI - LO) + LO


def _clips(kind: str, seconds=0.6, seed=0) -> np.ndarray:
    """Two rows at different levels (peak normalisation is per clip)."""
    n = int(SR * seconds)
    if kind == "random":
        x = np.random.default_rng(seed).standard_normal((2, n)) * np.array([[0.05], [0.4]])
    else:
        t = np.arange(n) / SR
        x = np.stack([0.2 * np.sin(2 * np.pi * 440.0 * t), 0.7 * np.sin(2 * np.pi * 3100.0 * t + 0.3)])
    return x.astype(np.float32)


# ---- tests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["random", "sine"])
def test_auffusion_log_mel_and_image_match_reference(kind):
    audio = _clips(kind)
    ours = np.asarray(M.auffusion_log_mel(audio))                        # [B, frames, n_mels]
    ref_mt = np.stack([ref_log_mel(a) for a in audio])                   # [B, n_mels, frames]
    ref = np.swapaxes(ref_mt, 1, 2)
    assert ours.shape == ref.shape == (2, audio.shape[1] // HOP, N_MELS)
    diff = np.abs(ours - ref)
    if kind == "random":
        err = float(diff.max())
    else:
        # A Hann-windowed pure tone falls > 100 dB below its peak, and there float32 DFT rounding
        # (~1e-7 of the peak; Auffusion's own float32 torch.stft is 5x further off than ours) dominates the
        # log: 1e-4 holds for every bin within 60 dB of the clip's loudest one; the rest stay within 1e-2.
        near = ref >= ref.max(axis=(1, 2), keepdims=True) - 60.0 / 20.0 * np.log(10.0)
        assert near.mean() > 0.05 and float(diff.max()) <= 1e-2, float(diff.max())
        err = float(diff[near].max())
    assert err <= 1e-4, f"{kind}: max abs log-mel error {err}"
    assert ref.max() > 0.0 and np.mean(ref > LO + 1.0) > 0.1             # a real spectrum, not the clamp
    img = np.asarray(M.mel_to_image(ours))                               # [B, n_mels, frames, 3]
    ref_img = np.stack([ref_image(r) for r in ref_mt])                   # [B, 3, n_mels, frames]
    img_err = np.abs(img - np.moveaxis(ref_img, 1, -1))
    if kind == "sine":                                                   # the same bins, as image rows
        img_err = img_err[np.flip(np.swapaxes(near, 1, 2), axis=1)]
    img_err = float(img_err.max())
    assert img_err <= 1e-4, f"{kind}: max abs image error {img_err}"
    # the codec's map is the same one
    np.testing.assert_array_equal(np.asarray(mel_to_vae_image(ours, "auffusion")), img)


def test_peak_normalisation_is_part_of_the_front_end():
    audio = _clips("random")
    # a clip and the same clip at another level give the same mel; without the step they do not
    a = np.asarray(M.auffusion_log_mel(audio[:1]))
    b = np.asarray(M.auffusion_log_mel(audio[:1] * 3.0))
    assert np.max(np.abs(a - b)) <= 1e-4
    raw = np.asarray(M.auffusion_log_mel(audio[:1] * 0.1, peak=None))   # peak ~0.02 instead of 0.95
    assert np.min(np.abs(raw - a)[a > LO + 4.0]) > 3.0
    y = np.asarray(M.peak_normalize(np.stack([np.zeros(50), np.linspace(-2, 1, 50)]).astype(np.float32)))
    assert np.all(y[0] == 0.0) and abs(np.max(np.abs(y[1])) - 0.95) < 1e-6 and y[1, 0] < 0


def test_image_to_mel_roundtrip_and_reference_inverse():
    rng = np.random.default_rng(1)
    log_mel = rng.uniform(LO - 2.0, HI + 1.0, size=(2, 24, N_MELS)).astype(np.float32)  # some values clamp
    img = np.asarray(M.mel_to_image(log_mel))
    back = np.asarray(M.image_to_mel(img))
    np.testing.assert_allclose(back, np.clip(log_mel, LO, HI), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(vae_image_to_mel(img, "auffusion")), back)
    # a VAE output: out of [-1, 1], channels disagree -> the reference reads channel 0 after clipping
    out = img + rng.normal(0, 0.3, img.shape).astype(np.float32)
    ours = np.asarray(M.image_to_mel(out))                               # [B, frames, n_mels]
    ref = np.stack([ref_image_to_mel(np.moveaxis(o, -1, 0)) for o in out])
    assert np.max(np.abs(ours - np.swapaxes(ref, 1, 2))) <= 1e-4
    assert math.isclose(float(ours.min()), LO, abs_tol=1e-5) and math.isclose(float(ours.max()), HI, abs_tol=1e-4)
