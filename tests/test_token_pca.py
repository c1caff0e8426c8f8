"""Token PCA: closed-form fit vs numpy's covariance eigendecomposition, exact round trip on low-rank data,
the cached fit from precomputed shards, the pipeline wiring and the errors that name the file/key."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from tta_jax.data.records import encode_record, write_shard
from tta_jax.codecs import token_pca as TP
from tta_jax.pipelines import tta


def _low_rank_tokens(n=600, d=24, r=5, seed=0):
    rs = np.random.RandomState(seed)
    a = rs.randn(r, d) * np.linspace(3.0, 0.5, r)[:, None]
    return (rs.randn(n, r) @ a + rs.randn(d)).astype(np.float32)


def test_fit_matches_numpy_and_round_trips_low_rank():
    x = _low_rank_tokens()
    pca = TP.fit([x[:250], x[250:]], k=5, patch_frames=2)  # chunked accumulation
    ref = np.sort(np.linalg.eigvalsh(np.cov(x.astype(np.float64).T)))[::-1]
    np.testing.assert_allclose(pca.eigenvalues[:5], ref[:5], rtol=1e-6)
    np.testing.assert_allclose(pca.basis.T @ pca.basis, np.eye(5), atol=1e-5)
    assert pca.explained > 0.999999
    z = pca.encode(jnp.asarray(x))
    assert z.shape == (600, 5)
    np.testing.assert_allclose(np.asarray(pca.decode(z)), x, atol=2e-4 * np.abs(x).max())
    # coordinates are centred and uncorrelated, with the eigenvalues as variances
    np.testing.assert_allclose(np.cov(np.asarray(z, np.float64).T), np.diag(ref[:5]), atol=1e-3 * ref[0])
    # dropping directions loses exactly their variance
    p2 = TP.fit([x], k=2, patch_frames=2)
    err = np.asarray(p2.decode(p2.encode(jnp.asarray(x)))) - x
    np.testing.assert_allclose((err ** 2).sum(1).mean() * 600 / 599, ref[2:].sum(), rtol=1e-3)
    assert p2.explained == pytest.approx(ref[:2].sum() / ref.sum(), rel=1e-6)
    # deterministic (sign-fixed) fit
    np.testing.assert_allclose(TP.fit([x], 5, 2).basis, TP.fit([x[::-1]], 5, 2).basis, atol=1e-5)


def test_whitened_lifts_faint_directions_and_round_trips():
    x = _low_rank_tokens()
    pca = TP.fit([x], k=5, patch_frames=2)
    lam = pca.eigenvalues[:5].astype(np.float64)
    z0 = np.asarray(pca.encode(jnp.asarray(x)), np.float64)
    assert pca.whitened(0.0).scale is None
    # below = inf: full whitening, every kept direction unit variance and still uncorrelated
    w = pca.whitened(float("inf"))
    zw = np.asarray(w.encode(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(np.cov(zw.T), np.eye(5), atol=1e-3)
    np.testing.assert_allclose(zw, z0 / np.sqrt(lam), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(w.whitened(float("inf")).scale, w.scale)  # re-applying does not compound
    # below between the eigenvalues: faint directions at unit variance, loud ones at lambda / below
    f = float(np.sqrt(lam[1] * lam[2]))
    h = np.asarray(pca.whitened(f).encode(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(h.var(0, ddof=1), np.maximum(lam / f, 1.0), rtol=1e-3)
    # .variances: each encoded channel's variance, what the Wiener preconditioning assumes
    for p_ in (pca, w, pca.whitened(f)):
        np.testing.assert_allclose(p_.variances, np.asarray(p_.encode(jnp.asarray(x)), np.float64).var(0, ddof=1),
                                   rtol=1e-3)
    # decode inverts the scale: the same reconstruction as the unscaled PCA
    np.testing.assert_allclose(np.asarray(w.decode(jnp.asarray(zw, jnp.float32))), x, atol=2e-4 * np.abs(x).max())
    with pytest.raises(ValueError, match="below=-1"):
        pca.whitened(-1.0)


def test_fit_and_shape_errors():
    x = _low_rank_tokens(d=8)
    with pytest.raises(ValueError, match="k=9"):
        TP.fit([x], k=9, patch_frames=1)
    pca = TP.fit([x], k=3, patch_frames=1)
    with pytest.raises(ValueError, match="7 values"):
        pca.encode(jnp.zeros((2, 7)))
    with pytest.raises(ValueError, match="4 channels"):
        pca.decode(jnp.zeros((2, 4)))


def _write_data(directory, n=12, frames=10, mels=4, seed=3):
    rs = np.random.RandomState(seed)
    recs = [encode_record({"latent": rs.randn(frames, mels).astype(np.float32), "split": "train" if i < 9 else "test",
                           "key": f"c{i}"}) for i in range(n)]
    write_shard(os.path.join(directory, "shard-00000-of-00001.array_record"), recs)
    return rs


def test_load_or_fit_caches_the_training_split(tmp_path):
    d = str(tmp_path)
    _write_data(d)
    pca = TP.load_or_fit(d, patch_frames=2, k=3)
    path = TP.cache_path(d, 2, 3)
    assert os.path.exists(path)
    again = TP.load_or_fit(d, patch_frames=2, k=3)  # from the cache
    np.testing.assert_array_equal(pca.basis, again.basis)
    np.testing.assert_array_equal(pca.mean, again.mean)
    # the fit saw exactly the 9 training records (10 frames -> 5 tokens of 2 x 4 values each)
    toks = list(TP._train_tokens(d, 2, "train", 100))
    assert len(toks) == 9 and toks[0].shape == (5, 8)
    ref = TP.fit(toks, 3, 2)
    np.testing.assert_allclose(pca.basis, ref.basis, atol=1e-6)
    with open(path, "wb") as f:
        f.write(b"not an npz")
    assert os.path.basename(path).startswith("token_pca-p2-k3-") and path.endswith(".npz")
    with pytest.raises(ValueError, match=re.escape(os.path.basename(path))):
        TP.load_or_fit(d, patch_frames=2, k=3)
    with pytest.raises(ValueError, match="split 'valid'"):
        TP.load_or_fit(d, patch_frames=2, k=4, split="valid")
    bad = str(tmp_path / "bad")
    os.makedirs(bad)
    write_shard(os.path.join(bad, "shard-00000-of-00001.array_record"),
                [encode_record({"latent": np.full((4, 4), np.nan, np.float32), "split": "train", "key": "c7"})])
    with pytest.raises(ValueError, match="'c7'.*non-finite"):
        TP.load_or_fit(bad, patch_frames=2, k=2)
    assert not os.path.exists(TP.cache_path(bad, 2, 2))


def test_cache_is_refitted_when_the_data_is_precomputed_again(tmp_path):
    """The cache file is keyed by the precompute manifest's content: precomputing into the same folder again
    with other codec settings (and another shard count, so the old shards stay behind) gives a new fit on
    the new shards only, never the old file."""
    from data_pipeline.precompute import PrecomputeConfig, run_precompute
    from data_pipeline.sources import AudioConfig, Example
    from data_pipeline.toy import FrameCodec

    rs = np.random.RandomState(0)
    exs = [Example(key=f"k{i}", caption="c", audio=(0.1 * rs.randn(4000)).astype(np.float32), sample_rate=8000)
           for i in range(8)]
    d = str(tmp_path)

    def precompute(bands, shard_size):
        codec = FrameCodec(sample_rate=8000, hop=100, bands=bands)
        cfg = PrecomputeConfig(audio=AudioConfig(sample_rate=8000, crop_seconds=0.5, normalize=None),
                               shard_size=shard_size, batch_size=4, codec_id=codec.codec_id)
        return run_precompute(exs, d, jax.jit(codec.encode), None, cfg, progress=False)

    precompute(bands=3, shard_size=4)  # latents [40, 4] -> tokens of 2 x 4 values
    first = TP.load_or_fit(d, patch_frames=2, k=3)
    p1 = TP.cache_path(d, 2, 3)
    assert first.dim == 8 and os.path.exists(p1)
    assert TP.cache_path(d, 2, 3) == p1 and TP.cache_path(d, 2, 4) != p1
    np.testing.assert_array_equal(TP.load_or_fit(d, patch_frames=2, k=3).basis, first.basis)  # cached
    precompute(bands=5, shard_size=3)  # other settings, same folder: latents [40, 6]
    assert TP.cache_path(d, 2, 3) != p1
    second = TP.load_or_fit(d, patch_frames=2, k=3)
    assert second.dim == 12  # re-fitted on the new latents (the old cache would give 8)
    toks = list(TP._train_tokens(d, 2, "train", 100))
    assert len(toks) == 8 and all(t.shape == (20, 12) for t in toks)  # the new shards only
    np.testing.assert_allclose(second.basis, TP.fit(toks, 3, 2).basis, atol=1e-6)


def test_pipeline_trains_and_decodes_through_the_pca(tmp_path):
    from configs.ezaudio_demo import get_config

    d = str(tmp_path)
    _write_data(d, frames=12)
    c = get_config()
    c.model.width, c.model.depth, c.model.num_heads, c.model.sola_rank = 32, 2, 2, 4
    c.data.patch_frames, c.data.token_pca, c.data.precomputed_dir = 2, 3, d
    c.model.in_channels = c.model.out_channels = 3
    pca = tta.token_pca_of(c)
    assert pca.k == 3 and pca.dim == 8
    model = tta.denoiser_of(c)
    params = meta.unbox(model.init(jax.random.PRNGKey(0), (6, 3), 5))
    rs = np.random.RandomState(0)
    batch = {"latent": jnp.asarray(rs.randn(2, 12, 4), jnp.float32),
             "text": jnp.asarray(rs.randn(2, 5, 384), jnp.float32), "text_mask": jnp.ones((2, 5), bool),
             "mask": jnp.ones((2, 12))}
    loss, _ = tta.make_loss_fn(model, c, pca)(params, batch, jax.random.PRNGKey(0))
    assert np.isfinite(float(loss))
    tok = tta.patch_batch(batch, 2, pca)
    assert tok["latent"].shape == (2, 6, 3) and tok["mask"].shape == (2, 6)
    c.data.token_pca_whiten_below = float("inf")  # the config key reaches the PCA used for training/decoding
    w = tta.token_pca_of(c)
    np.testing.assert_allclose(w.scale, 1.0 / np.sqrt(pca.eigenvalues[:3]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(tta.patch_batch(batch, 2, w)["latent"]),
                               np.asarray(tok["latent"]) * w.scale, rtol=1e-5, atol=1e-6)
    c.data.token_pca_whiten_below = 0.0
    c.model.in_channels = c.model.out_channels = 8  # a model for raw 8-value tokens cannot read the PCA's 3
    with pytest.raises(ValueError, match="token_pca=3"):
        tta.make_loss_fn(tta.denoiser_of(c), c, pca)
    c.data.token_pca, c.data.precomputed_dir = 3, str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="precomputed_dir"):
        tta.token_pca_of(c)


def test_a_run_started_from_another_keeps_its_token_pca(tmp_path):
    """Fine-tuning (LoRA, an adapter) on other data with ``train.init_from`` a base run: the token coordinates are
    the base run's (its assets/token_pca.npz), not a PCA re-fitted on the new data; the new run saves that one."""
    from configs.ezaudio_demo import get_config

    base_data, new_data = str(tmp_path / "base_data"), str(tmp_path / "new_data")
    os.makedirs(base_data)
    os.makedirs(new_data)
    _write_data(base_data, frames=12)
    _write_data(new_data, frames=12, seed=7)
    c = get_config()
    c.data.patch_frames, c.data.token_pca, c.data.precomputed_dir = 2, 3, base_data
    base_run = str(tmp_path / "base_run")
    tta.save_assets(c, base_run)
    base_pca = TP.load(os.path.join(base_run, tta.ASSETS, tta.TOKEN_PCA_ASSET))
    c.data.precomputed_dir = new_data
    refit = tta.token_pca_of(c)
    assert not np.allclose(refit.basis, base_pca.basis)      # the new data alone gives other directions
    c.train.init_from = base_run
    assert tta.saved_token_pca(c) == os.path.join(base_run, tta.ASSETS, tta.TOKEN_PCA_ASSET)
    np.testing.assert_array_equal(tta.token_pca_of(c).basis, base_pca.basis)
    new_run = str(tmp_path / "new_run")
    tta.save_assets(c, new_run)
    np.testing.assert_array_equal(TP.load(os.path.join(new_run, tta.ASSETS, tta.TOKEN_PCA_ASSET)).basis,
                                  base_pca.basis)
    c.train.init_from = str(tmp_path / "params.safetensors")  # a params file, not a run: fitted on the data
    assert tta.saved_token_pca(c) is None


def test_a_base_runs_pca_of_another_patch_size_is_refused_by_key(tmp_path):
    """``train.init_from`` a run whose token PCA was fitted on other patches: a ConfigError naming
    config.data.patch_frames (not a shape error deep in the model)."""
    from configs.ezaudio_demo import get_config

    data = str(tmp_path / "data")
    os.makedirs(data)
    _write_data(data, frames=12)
    c = get_config()
    c.data.patch_frames, c.data.token_pca, c.data.precomputed_dir = 2, 3, data
    base_run = str(tmp_path / "base_run")
    tta.save_assets(c, base_run)
    c.train.init_from = base_run
    c.data.patch_frames = 3
    with pytest.raises(tta.ConfigError, match=r"config\.data\.patch_frames=3"):
        tta.token_pca_of(c)
