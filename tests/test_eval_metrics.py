"""Metric math vs audioldm_eval (0.0.3) and torchmetrics on random features.

References: ``audioldm_eval.metrics.{fid,kl,isc,kid}`` (loaded by file path: the package's
``__init__`` imports torchaudio/ssr_eval, which the metric files themselves do not need) and
``torchmetrics.image.fid._compute_fid``. Tolerances: FD 1e-6 relative, KL/IS/KID 1e-5 relative.
"""
import importlib.util
import os

import numpy as np
import pytest

from tta_jax.eval import metrics as M


def _ae_module(name):
    spec = importlib.util.find_spec("audioldm_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("audioldm-eval==0.0.3 not installed (pip install --no-deps audioldm-eval==0.0.3)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "metrics", f"{name}.py")
    s = importlib.util.spec_from_file_location(f"_ae_{name}", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod


def _feats(seed, n=64, d=16, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


def test_fd_basic_properties():
    a = _feats(0, 200)
    assert abs(M.frechet_distance(a, a)) < 1e-8
    b = a + 3.0
    # a pure shift of the mean by 3 in every dim adds exactly 9*D
    assert M.frechet_distance(a, b) == pytest.approx(9.0 * a.shape[1], rel=1e-6)
    with pytest.raises(ValueError, match="feature dims differ"):
        M.frechet_distance(a, a[:, :3])


@pytest.mark.parity
def test_fd_vs_audioldm_eval_and_torchmetrics(rel_err):
    import torch

    fid = _ae_module("fid")
    a, b = _feats(1, 80, 32), _feats(2, 90, 32, shift=0.3)
    ours = M.frechet_distance(a, b)
    ref = fid.calculate_fid({"2048": torch.from_numpy(a)}, {"2048": torch.from_numpy(b)}, "2048")
    assert rel_err(ours, ref["frechet_distance"]) < 1e-6
    tm = pytest.importorskip("torchmetrics.image.fid")
    mu1, s1 = M.gaussian_stats(a)
    mu2, s2 = M.gaussian_stats(b)
    ref_tm = tm._compute_fid(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2))).item()
    assert rel_err(ours, ref_tm) < 1e-6


@pytest.mark.parity
def test_fd_near_singular_matches_reference(rel_err):
    """Fewer samples than dims: singular covariances take the eps-offset / complex-drop path."""
    import torch

    fid = _ae_module("fid")
    a, b = _feats(3, 10, 24), _feats(4, 12, 24, shift=0.1)
    ours = M.frechet_distance(a, b)
    ref = fid.calculate_fid({"2048": torch.from_numpy(a)}, {"2048": torch.from_numpy(b)}, "2048")
    assert np.isfinite(ours)
    assert rel_err(ours, ref["frechet_distance"]) < 1e-6


@pytest.mark.parity
def test_kl_vs_audioldm_eval_paired_by_name(rel_err):
    import torch

    kl = _ae_module("kl")
    rng = np.random.default_rng(5)
    lg, lr = rng.normal(size=(20, 527)) * 3, rng.normal(size=(18, 527)) * 3
    names_g = [f"/gen/clip_{i:03d}.wav" for i in range(20)]
    names_r = [f"/ref/clip_{i:03d}.wav" for i in reversed(range(2, 20))]  # different order, subset
    ours = M.kl_divergence(lg, lr, names_g, names_r)
    ref, _, _ = kl.calculate_kl({"logits": torch.from_numpy(lg), "file_path_": names_g},
                                {"logits": torch.from_numpy(lr), "file_path_": names_r}, "logits")
    assert ours["kl_pairs"] == 18
    assert rel_err(ours["kl_softmax"], ref["kullback_leibler_divergence_softmax"]) < 1e-5
    assert rel_err(ours["kl_sigmoid"], ref["kullback_leibler_divergence_sigmoid"]) < 1e-5
    # pairing matters: in-order pairing gives a different number
    unpaired = M.kl_divergence(lg[:18], lr)
    assert abs(unpaired["kl_softmax"] - ours["kl_softmax"]) > 1e-3


@pytest.mark.parity
def test_is_vs_audioldm_eval(rel_err):
    import torch

    isc = _ae_module("isc")
    lg = np.random.default_rng(6).normal(size=(57, 527)) * 2
    ours = M.inception_score(lg, splits=10, seed=2020)
    ref = isc.calculate_isc({"logits": torch.from_numpy(lg)}, "logits", rng_seed=2020,
                            samples_shuffle=True, splits=10)
    assert rel_err(ours["is_mean"], ref["inception_score_mean"]) < 1e-5
    assert rel_err(ours["is_std"], ref["inception_score_std"]) < 1e-5


@pytest.mark.parity
def test_kid_vs_audioldm_eval(rel_err):
    import torch

    kid = _ae_module("kid")
    a, b = _feats(7, 60, 32), _feats(8, 50, 32, shift=0.2)
    ours = M.kernel_distance(a, b, subsets=7, subset_size=40, seed=2020)
    ref = kid.calculate_kid({"2048": torch.from_numpy(a)}, {"2048": torch.from_numpy(b)}, subsets=7,
                            subset_size=40, degree=3, gamma=None, coef0=1, rng_seed=2020,
                            feat_layer_name="2048")
    assert rel_err(ours["kid_mean"], ref["kernel_inception_distance_mean"]) < 1e-5
    assert rel_err(ours["kid_std"], ref["kernel_inception_distance_std"]) < 1e-5


def test_clap_scores():
    rng = np.random.default_rng(9)
    t = rng.normal(size=(5, 8))
    assert M.clap_score(t, 2.0 * t) == pytest.approx(1.0)
    assert M.clap_score(t, -t) == pytest.approx(-1.0)
    g = rng.normal(size=(3, 8))
    refs = np.concatenate([g[0:1], -g[0:1], g[1:2], g[2:3]], 0)
    # clip 0: mean(+1, -1) = 0; clips 1, 2: 1 -> mean 2/3
    assert M.clap_audio_score(g, refs, groups=[[0, 1], [2], [3]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="groups"):
        M.clap_audio_score(g, refs)


def test_accuracy_vs_chance_against_first_principles():
    import math

    from tta_jax.eval.metrics import accuracy_vs_chance

    for hits, n, chance in ((12, 68, 1 / 17), (0, 20, 0.1), (20, 20, 0.5), (31, 136, 1 / 17)):
        r = accuracy_vs_chance(hits, n, chance)
        p = hits / n
        # Wilson interval = the p0 whose score test |p - p0| <= z sqrt(p0 (1 - p0) / n) accepts (dense grid)
        grid = np.linspace(0, 1, 200001)
        ok = grid[np.abs(p - grid) <= 1.96 * np.sqrt(grid * (1 - grid) / n) + 1e-12]
        assert r["ci_low"] == pytest.approx(ok.min(), abs=2e-5)
        assert r["ci_high"] == pytest.approx(ok.max(), abs=2e-5)
        # exact one-sided binomial tail P(X >= hits | chance)
        tail = sum(math.comb(n, k) * chance ** k * (1 - chance) ** (n - k) for k in range(hits, n + 1))
        assert r["p_value"] == pytest.approx(tail, rel=1e-9)
        assert r["accuracy"] == p and r["times_chance"] == pytest.approx(p / chance)
    with pytest.raises(ValueError, match="hits=5, n=3"):
        accuracy_vs_chance(5, 3, 0.1)
    with pytest.raises(ValueError, match="chance=1.5"):
        accuracy_vs_chance(1, 3, 1.5)


def test_difference_of_proportions_matches_newcombe_1998():
    """Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score), to 4 places."""
    from tta_jax.eval.metrics import difference_of_proportions

    for (h1, n1, h2, n2), (lo, hi) in {(56, 70, 48, 80): (0.0524, 0.3339), (9, 10, 3, 10): (0.1705, 0.8090),
                                       (5, 56, 0, 29): (-0.0381, 0.1926)}.items():
        r = difference_of_proportions(h1, n1, h2, n2)
        assert r["difference"] == pytest.approx(h1 / n1 - h2 / n2)
        assert (round(r["ci_low"], 4), round(r["ci_high"], 4)) == (lo, hi)
