"""The codec-token LM through the shared trainer (tta_jax/pipelines/codec_lm.py, configs/dcldm_lm.py:tiny):
synthetic token shards -> train -> generate tokens -> (when the encodec_tokens codec is registered) WAVs."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.config import load_config
from tta_jax.errors import ConfigError
from tta_jax.pipelines import codec_lm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, K, V, L, D = 12, 4, 16, 8, 32


def _tiny(data_dir="", *overrides):
    return load_config(os.path.join(ROOT, "configs", "dcldm_lm.py") + ":tiny",
                       [f"data.precomputed_dir={data_dir}", *overrides])


def write_token_shards(d, n=8, frames=T, k=K, seed=0):
    """n records of random tokens [frames, k] (as float32 latents) + tiny-T5-shaped text features; the last
    record is 4 frames short (zero-padded by the loader's crop)."""
    from tta_jax.data import records

    cfg = _tiny()
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        n_frames = frames - 4 if i == n - 1 else frames
        mask = np.arange(L) < 3 + i % 5
        recs.append(records.encode_record({
            "key": f"k{i}", "caption": f"clip {i}", "split": "train", "labels": {},
            "latent": rng.integers(0, V, size=(n_frames, k)).astype(np.float32), "latent_frames": n_frames,
            "txt:text": (rng.normal(size=(L, D)) * mask[:, None]).astype(np.float32), "txt:text_mask": mask}))
    records.write_shard(os.path.join(d, "s.array_record"), recs)
    with open(os.path.join(d, "null_text.msgpack"), "wb") as f:
        f.write(records.encode_record({"text": np.zeros((L, D), np.float32), "text_mask": np.zeros((L,), bool)}))
    manifest = {"shards": ["s.array_record"], "num_examples": n, "null_text": "null_text.msgpack",
                "shapes": {"latent": [[frames, k], "float32"], "txt:text": [[L, D], "float32"],
                           "txt:text_mask": [[L], "bool"]},
                "codec": cfg.codec.to_dict(), "text": cfg.text.to_dict()}
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return str(d)


def test_lm_batch_masks_padded_frames():
    latent = jnp.asarray(np.arange(2 * 4 * 2).reshape(2, 4, 2) % 5, jnp.float32)
    valid = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]], jnp.float32)
    inputs, targets, m = codec_lm.lm_batch(latent, valid, 9)
    assert inputs.shape == targets.shape == m.shape == (2, 5, 2)
    assert int(m[0].sum()) == 8 and int(m[1].sum()) == 4           # T*K real positions per example
    assert (targets[1, 2:, 0] == 9).all() and (targets[1, 3:, 1] == 9).all()   # padded frames: the special id
    assert (jnp.where(m, targets, 0) < 9).all()


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="config.model.widht.*did you mean config.model.width"):
        codec_lm.lm_config_of(_tiny("", "model.widht=64"))
    with pytest.raises(ConfigError, match="config.model: .*heads"):
        codec_lm.lm_config_of(_tiny("", "model.width=30"))
    assert codec_lm.lm_config_of(load_config(os.path.join(ROOT, "configs", "dcldm_lm.py"))).num_codebooks == 4
    with pytest.raises(ConfigError, match="config.extra.top_k"):
        codec_lm.sampling_options_of(_tiny("", "extra.top_k=-1"))
    data = write_token_shards(tmp_path, n=2, k=3)
    with pytest.raises(ConfigError, match="K=3 codebooks, config.model.num_codebooks is 4"):
        codec_lm.build_task(_tiny(data), None)


def test_train_then_generate(tmp_path):
    from tta_jax.codecs.registry import CODECS
    from tta_jax.train.loop import train

    (tmp_path / "data").mkdir()
    data = write_token_shards(tmp_path / "data")
    cfg = _tiny(data, "train.total_steps=20", "train.batch_size=4")
    workdir = str(tmp_path / "run")
    res = train(cfg, workdir)
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 4 and np.isfinite(losses).all()
    assert losses[-1] < losses[0] - 0.2 and losses[0] < np.log(V) + 0.5, losses
    assert json.load(open(os.path.join(workdir, "assets", "latent.json")))["latent_shape"] == [T, K]

    params = jax.tree.map(np.asarray, res.state.params)
    prompts = ["clip 0", "a dog barks"]
    tok = codec_lm.generate_tokens(cfg, params, prompts, seed=1, workdir=workdir)   # T from assets/latent.json
    assert tok.shape == (2, T, K) and tok.dtype == np.int32 and tok.min() >= 0 and tok.max() < V
    with pytest.raises(ConfigError, match="parameter 'params/block_2"):
        codec_lm.check_lm_params(codec_lm.lm_config_of(_tiny(data, "model.depth=3")), params, workdir)

    if "encodec_tokens" not in CODECS:
        pytest.skip("the encodec_tokens codec is not registered yet: audio decode not tested")
    out = tmp_path / "samples"
    paths = codec_lm.sample_pipeline(cfg, params, prompts, str(out), seed=1, steps=None, guidance=None,
                                     rescale=None, workdir=workdir)
    import soundfile as sf

    wavs = [p for p in paths if p.endswith(".wav")]
    assert len(wavs) == 2
    audio, sr = sf.read(wavs[0])
    assert sr == 400 and audio.shape[0] == T * 4 and np.isfinite(audio).all()
    np.testing.assert_array_equal(np.load(paths[1]), tok[0])   # same seed, same tokens
