"""EnCodec training (tta_jax.train.encodec, configs/dcldm_codec.py:micro): the loss falls on a fixed batch, the
EMA codebooks are seeded from the first batch and keep moving (finite), a run trained through the shared loop
loads as an ``encodec_tokens`` / ``encodec`` codec (``workdir``) and round-trips audio, and ``weights`` +
``workdir`` is refused."""
import json

import jax
import numpy as np
import pytest

from tta_jax.codecs.registry import build_codec
from tta_jax.config import load_config
from tta_jax.errors import ConfigError
from tta_jax.train import encodec as T


def _micro(**extra):
    c = load_config("configs/dcldm_codec.py:micro")
    for k, v in extra.items():
        setattr(c.extra, k, v)
    return c


class _FixedBatch:
    """The first batch of ``it``, forever (checkpointable like the loop's iterators)."""

    def __init__(self, it):
        self.batch = next(it)

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch

    def get_state(self):
        return {}

    def set_state(self, s):
        pass


STEPS = 12


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One run through the shared loop (one compile for every test): STEPS steps on one fixed micro batch,
    logged every step -> (workdir, config, TrainResult)."""
    from tta_jax.train.loop import make_mesh_from_config, train

    c = _micro()
    c.train.total_steps = STEPS
    c.train.log_every = 1
    wd = tmp_path_factory.mktemp("encodec_run")
    (wd / "config.json").write_text(c.to_json_best_effort())     # as launch.train writes it
    mesh = make_mesh_from_config(c.mesh)
    task = T.build_task(c, mesh)
    task.train_iter = _FixedBatch(task.train_iter)
    res = train(c, str(wd), task, mesh=mesh)
    return str(wd), c, res


def test_loss_falls_on_a_fixed_batch(run_dir):
    _, _, res = run_dir
    hist = res.history
    assert [h["step"] for h in hist] == list(range(1, STEPS + 1))
    losses = np.array([h["loss"] for h in hist])
    assert np.all(np.isfinite(losses)) and all(h["finite"] == 1.0 for h in hist)
    assert losses[-3:].mean() < 0.9 * losses[:3].mean(), losses   # measured: 3.69 -> 3.07 (x0.83)
    for h in hist:   # usage metrics in range
        assert 1.0 <= h["codebook_perplexity"] <= 16.0 and 0.0 < h["codebook_usage"] <= 1.0


def test_ema_codebooks_seeded_then_updated(run_dir):
    from tta_jax.codecs.encodec import codebook_from_ema

    _, _, res = run_dir
    s = res.state
    cb = np.asarray(s.params["quantizer"]["codebooks"])
    assert int(s.codebooks_ready) == 1 and np.all(np.isfinite(cb))
    counts = np.asarray(s.ema_counts)
    assert counts.shape == cb.shape[:2] and np.all(counts >= 0) and np.isfinite(np.asarray(s.ema_sums)).all()
    assert not np.allclose(counts, 1.0)            # moved away from the seed's 1 per code by the EMA updates
    k, frames = cb.shape[1], 4 * 16                # seed: 1 per code; a batch: B x T frames per stage
    assert np.all((counts.sum(-1) > k + 1) & (counts.sum(-1) < frames))
    # the codebooks are the EMA statistics' codebooks (not the optimizer's, not the N(0, 1) placeholder)
    np.testing.assert_allclose(cb, np.asarray(codebook_from_ema(s.ema_counts, s.ema_sums)), rtol=1e-5, atol=1e-6)


def test_run_trains_and_writes_assets(run_dir):
    wd, c, res = run_dir
    assert res.step == STEPS and res.evals
    ev = res.evals[-1]
    assert all(np.isfinite(ev[k]) for k in ("eval/si_sdr", "eval/log_mel_l1", "eval/mrstft"))
    with open(f"{wd}/assets/{T.ASSET}") as fh:
        asset = json.load(fh)
    from tta_jax.codecs.encodec import from_hf_config
    assert from_hf_config(asset) == T.encodec_config_of(c.model) and asset["step"] == STEPS


def test_workdir_loads_as_codec_and_round_trips(run_dir):
    wd, c, _ = run_dir
    cfg = T.encodec_config_of(c.model)
    tok = build_codec({"name": "encodec_tokens", "workdir": wd})
    assert (tok.sample_rate, tok.hop_length, tok.latent_channels) == (2000, 4, cfg.num_quantizers)
    audio = (0.3 * np.random.default_rng(0).standard_normal((2, 41))).astype(np.float32)   # not a multiple of hop
    t = np.asarray(tok.encode(audio))
    assert t.shape == (2, 11, cfg.num_quantizers) and np.all(t == np.round(t))
    assert t.min() >= 0 and t.max() < cfg.codebook_size
    y = np.asarray(tok.decode(t))
    assert y.shape == (2, 44) and np.all(np.isfinite(y))
    lat = build_codec({"name": "encodec", "workdir": wd})
    np.testing.assert_allclose(np.asarray(lat.decode(lat.encode(audio))), y, rtol=1e-4, atol=1e-5)
    assert tok.info["workdir"] == wd


def test_workdir_errors(run_dir, tmp_path):
    wd = run_dir[0]
    with pytest.raises(ConfigError, match=r"weights and config\.codec\.workdir are both set"):
        build_codec({"name": "encodec_tokens", "workdir": wd, "weights": "/some/folder"})
    with pytest.raises(ConfigError, match="not a tta_jax.train.encodec run"):
        build_codec({"name": "encodec_tokens", "workdir": str(tmp_path)})
    (tmp_path / "config.json").write_text(json.dumps({"builder": "tta_jax.train.kl_vae:build_task"}))
    with pytest.raises(ConfigError, match="not an EnCodec training run"):
        build_codec({"name": "encodec", "workdir": str(tmp_path)})
