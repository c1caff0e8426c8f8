"""Mel front end: parity vs librosa.filters.mel + torch.stft, shapes, Auffusion image mapping, audio I/O."""
import numpy as np
import pytest

from tta_jax.audio import io as aio
from tta_jax.audio import mel as M


def _test_audio(sr, seconds=0.5, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t)[None] * np.linspace(0.2, 1, batch)[:, None]
    x = x + 0.05 * rng.standard_normal((batch, t.size))
    return x.astype(np.float32)


def _torch_log_mel(audio, cfg):
    import librosa
    import torch

    basis = torch.from_numpy(librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels,
                                                 fmin=cfg.fmin, fmax=cfg.fmax)).double()
    y = torch.from_numpy(audio).double()
    if cfg.padding == "hifigan":
        p = (cfg.n_fft - cfg.hop_length) // 2
        y = torch.nn.functional.pad(y.unsqueeze(1), (p, p), mode="reflect").squeeze(1)
        center = False
    else:
        center = True
    spec = torch.stft(y, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                      window=torch.hann_window(cfg.win_length, dtype=torch.float64), center=center,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    spec = torch.view_as_real(spec)
    mag = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
    mel = torch.matmul(basis, mag)
    return torch.log(torch.clamp(mel, min=1e-5)).transpose(1, 2).numpy()


@pytest.mark.parity
@pytest.mark.parametrize("preset", ["auffusion", "audioldm"])
@pytest.mark.parametrize("padding", ["hifigan", "tacotron"])
def test_log_mel_matches_torch_stft_recipe(preset, padding):
    cfg = M.get_mel_config(preset, padding=padding)
    audio = _test_audio(cfg.sample_rate)
    ours = np.asarray(M.MelSpectrogram(cfg)(audio))
    ref = _torch_log_mel(audio, cfg)
    assert ours.shape == ref.shape == (2, cfg.num_frames(audio.shape[1]), cfg.n_mels)
    err = np.max(np.abs(ours - ref))
    assert err <= 1e-4, f"{preset}/{padding}: max abs log-mel error {err}"


@pytest.mark.parity
def test_fft_path_matches_matmul_path():
    cfg = M.get_mel_config("audioldm")
    audio = _test_audio(cfg.sample_rate, 0.3)
    a = np.asarray(M.log_mel_spectrogram(audio, cfg))
    b = np.asarray(M.log_mel_spectrogram(audio, cfg, use_fft=True))
    assert np.max(np.abs(a - b)) < 1e-3


def test_frame_counts_per_convention():
    hop = 160
    cfg = M.get_mel_config("audioldm")
    n = 16000 * 10.24
    assert M.get_mel_config("audioldm").num_frames(int(n)) == 1024
    assert M.get_mel_config("tango").num_frames(int(n)) == 1025
    out = M.log_mel_spectrogram(np.zeros((1, 10 * hop), np.float32), cfg)
    assert out.shape == (1, 10, 64)
    assert np.allclose(np.asarray(out), np.log(1e-5))  # silence sits on the clamp


def test_presets():
    assert M.HIFIGAN_22K.sample_rate == 22050 and M.HIFIGAN_22K.hop_length == 256 and M.HIFIGAN_22K.n_mels == 80
    assert M.AUFFUSION.n_fft == 2048 and M.AUFFUSION.win_length == 1024 and M.AUFFUSION.n_mels == 256
    assert (M.AUFFUSION.sample_rate, M.AUFFUSION.hop_length, M.AUFFUSION.fmin, M.AUFFUSION.fmax,
            M.AUFFUSION.padding) == (16000, 160, 0.0, 8000.0, "hifigan")  # Auffusion converter.py's call
    assert M.AUFFUSION.num_frames(16000 * 10) == 1000                      # 10 s -> 1000 frames
    assert M.TANGO.padding == "tacotron" and M.AUDIOLDM.padding == "hifigan"
    with pytest.raises(ValueError, match="padding"):
        M.MelConfig(padding="centre")
    with pytest.raises(KeyError, match="unknown mel preset"):
        M.get_mel_config("nope")
    with pytest.raises(ValueError, match=r"audio \[B, T\]"):
        M.log_mel_spectrogram(np.zeros(1000, np.float32), M.AUDIOLDM)


def test_auffusion_image_roundtrip():
    rng = np.random.default_rng(0)
    log_mel = rng.uniform(np.log(1e-5), np.log(200.0), size=(2, 16, 8)).astype(np.float32)
    log_mel[0, 0, 0] = -20.0  # below the clamp
    img = np.asarray(M.mel_to_image(log_mel))
    assert img.shape == (2, 8, 16, 3)
    assert img.min() >= -1 and img.max() <= 1
    assert np.all(img[..., 0] == img[..., 2])
    # frequency flip: the lowest mel bin is the last image row
    np.testing.assert_allclose(img[1, -1, :, 0],
                               2 * (log_mel[1, :, 0] - np.log(1e-5)) / (np.log(200) - np.log(1e-5)) - 1, atol=1e-5)
    back = np.asarray(M.image_to_mel(img))
    expected = np.clip(log_mel, np.log(1e-5), np.log(200.0))
    np.testing.assert_allclose(back, expected, atol=1e-4)


# ---- audio I/O ---------------------------------------------------------------------------------------
def test_load_audio_mono_resample_normalize(tmp_path):
    import soundfile as sf

    sr = 22050
    x = _test_audio(sr, 0.5, batch=2).T * 0.5  # [T, 2]
    p = tmp_path / "a.wav"
    sf.write(p, x, sr, subtype="FLOAT")
    y, out_sr = aio.load_audio(p, 16000, normalize=0.95)
    assert out_sr == 16000 and y.ndim == 1 and abs(y.size - 8000) <= 1
    assert abs(np.max(np.abs(y)) - 0.95) < 1e-5
    y2, sr2 = aio.load_audio(p, mono=False)
    assert y2.shape == (2, x.shape[0]) and sr2 == sr
    np.testing.assert_allclose(y2, x.T, atol=1e-6)


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(aio.AudioError, match="missing.wav: file not found"):
        aio.load_audio(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(aio.AudioError, match="empty.wav: file is empty"):
        aio.load_audio(empty)
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF" + b"\x13" * 200)
    with pytest.raises(aio.AudioError, match="corrupt.wav: could not decode"):
        aio.load_audio(bad)
    import soundfile as sf

    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.1], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(aio.AudioError, match="nan.wav: audio has 1 non-finite"):
        aio.load_audio(nan)
    zero_len = tmp_path / "zero.wav"
    sf.write(zero_len, np.zeros(0, np.float32), 16000)
    with pytest.raises(aio.AudioError, match="zero.wav"):
        aio.load_audio(zero_len)


def test_peak_normalize_keeps_silence():
    x = np.stack([np.zeros(10), np.linspace(-2, 1, 10)]).astype(np.float32)
    y = aio.peak_normalize(x, 0.5)
    assert np.all(y[0] == 0) and abs(np.max(np.abs(y[1])) - 0.5) < 1e-6
