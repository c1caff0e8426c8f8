"""Waveform-VAE training pieces: STFT (parity with torch.stft), MRSTFT loss, SI-SDR, InverseLR, the
discriminator and the recipe's settings. The GAN training itself (both networks updated, discriminator
start step, exact resume, non-finite skip) is tested through the general loop in tests/test_gan_loop.py;
its reconstruction loss falling, end to end, in tests/test_ezaudio_e2e.py."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.codecs import vae_losses as VL
from tta_jax.train import gan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parity
def test_stft_matches_torch(rel_err):
    import torch
    x = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    for n, hop in ((128, 32), (64, 16), (20, 5)):
        ref = torch.stft(torch.from_numpy(x), n, hop, n, window=torch.hann_window(n), center=True,
                         pad_mode="reflect", return_complex=True).numpy().transpose(0, 2, 1)
        ours = np.asarray(VL.stft(x, n, hop))
        assert ours.shape == ref.shape
        assert rel_err(np.abs(ours), np.abs(ref)) < 1e-5
        assert rel_err(ours.real, ref.real) < 1e-5


def test_mrstft_and_metrics():
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 2000)).astype(np.float32)
    mrstft = jax.jit(VL.multi_resolution_stft_loss)
    loss, parts = mrstft(x, x)
    assert float(loss) < 1e-6
    noisy = x + 0.3 * r.standard_normal(x.shape).astype(np.float32)
    loss2, parts2 = mrstft(noisy, x)
    assert float(loss2) > 0.1 and float(parts2["sc"]) > 0 and float(parts2["mag"]) > 0
    assert len(VL.EZAUDIO_FFT_SIZES) == 7 and VL.EZAUDIO_FFT_SIZES[0] == 1280 and VL.EZAUDIO_FFT_SIZES[-1] == 20
    # SI-SDR: scale-invariant; ~10.5 dB for noise at 0.3 amplitude
    assert float(VL.si_sdr(3.0 * x, x).min()) > 60
    np.testing.assert_allclose(np.asarray(VL.si_sdr(noisy, x)), 10 * np.log10(1 / 0.09), atol=0.6)
    m = jax.jit(VL.reconstruction_metrics, static_argnums=2)(noisy, x, 8000)
    assert set(m) == {"mrstft", "si_sdr", "log_mel_l1"} and float(m["log_mel_l1"]) > 0


def test_losses_and_discriminator_shapes():
    disc = VL.MultiScaleSTFTDiscriminator(n_ffts=(64, 32), filters=4)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 512, 1)), jnp.float32)
    p = jax.jit(disc.init)(jax.random.PRNGKey(0), x)
    logits, feats = jax.jit(disc.apply)(p, x)
    assert len(logits) == 2 and len(feats) == 2 and len(feats[0]) == 5
    assert logits[0].shape[0] == 2 and logits[0].shape[-1] == 1
    assert logits[0].shape[1] == 1 + 512 // 16        # frames of the 64-point STFT (hop 16)
    real, fake = [jnp.full((3,), 2.0)], [jnp.full((3,), -2.0)]
    assert float(VL.discriminator_loss(real, fake, "hinge")) == 0.0
    assert float(VL.generator_adv_loss(fake, "hinge")) == 3.0
    assert float(VL.discriminator_loss([jnp.ones(3)], [jnp.zeros(3)], "ls")) == 0.0
    assert float(VL.feature_matching_loss([[jnp.ones(4)]], [[jnp.zeros(4)]])) == 1.0


def test_inverse_lr_and_optimizer_settings():
    s = gan.inverse_lr(1.5e-4, inv_gamma=200000, power=0.5, warmup=0.999)
    assert float(s(0)) == pytest.approx(1.5e-4 * 0.001, rel=1e-4)
    assert float(s(10_000)) == pytest.approx(1.5e-4 * (1 - 0.999 ** 10001) * (1 + 0.05) ** -0.5, rel=1e-4)
    from tta_jax.config import load_config
    c = load_config(f"{ROOT}/configs/ezaudio_vae.py")
    st = gan.gan_settings(c)
    assert (c.optimizer.lr, c.optimizer.b1, c.optimizer.b2) == (1.5e-4, 0.8, 0.99)
    assert st["disc_lr"] == 3e-4 and st["loss"].w_adv == 0.1 and st["loss"].w_fm == 5.0
    assert st["loss"].w_kl == 1e-4 and st["segment_seconds"] == 0.5
    assert gan.vae_config_of(c).hop_length == 480 and gan.vae_config_of(c).latent_dim == 128
