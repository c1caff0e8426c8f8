"""Evaluation metric math: pure numpy/scipy functions of feature arrays.

All functions take plain arrays (``[N, D]`` features, ``[N, C]`` logits) and return Python floats or
dicts of floats. They follow the conventions of the reference implementations so numbers are
comparable with published tables:

- :func:`frechet_distance` -- ``||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))`` with ``scipy.linalg.sqrtm``;
  a non-finite square root retries with ``eps`` on the diagonals and a small imaginary part is
  dropped, exactly as pytorch-fid / audioldm_eval (FD on PANNs ``2048`` and FAD on VGGish) do.
- :func:`kernel_distance` -- KID: unbiased polynomial-kernel MMD^2 averaged over random subsets
  (audioldm_eval's ``calculate_kid``: degree 3, gamma 1/D, coef0 1, 100 subsets of 1000, seed 2020).
- :func:`kl_divergence` -- KL(ref || gen) over the softmax and over the sigmoid of classifier logits,
  pairing generated and reference clips by file name (audioldm_eval's ``calculate_kl``).
- :func:`inception_score` -- exp E[KL(p(y|x) || p(y))] over ``splits`` after a seeded shuffle.
- :func:`clap_score` / :func:`clap_audio_score` -- text-audio and audio-audio cosine similarity
  (CLAP score; DreamAudio's CLAP_A).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import scipy.linalg

Array = np.ndarray


def _as_2d(x, name: str) -> Array:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [N, D], got shape {x.shape}")
    return x


# --------------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------------
def gaussian_stats(features) -> tuple[Array, Array]:
    """[N, D] features -> (mean [D], unbiased covariance [D, D]) as ``np.cov(rowvar=False)``."""
    f = _as_2d(features, "features")
    if f.shape[0] < 2:
        raise ValueError(f"features: need at least 2 rows to estimate a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``sqrtm(sigma1 @ sigma2)``; if that is not finite (near-singular product) it is recomputed with
    ``eps`` added to both diagonals; an imaginary part from round-off is dropped when the diagonal's
    imaginary part is below 1e-3 and an error is raised otherwise (pytorch-fid convention).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in length: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"covariances must be [D, D] with D={mu1.shape[0]}: {sigma1.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: sqrtm has imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance(features1, features2, eps: float = 1e-6) -> float:
    """Frechet distance between two feature sets [N1, D] and [N2, D]."""
    f1, f2 = _as_2d(features1, "features1"), _as_2d(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dims differ: {f1.shape} vs {f2.shape}")
    return frechet_distance_from_stats(*gaussian_stats(f1), *gaussian_stats(f2), eps=eps)


# --------------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------------
def polynomial_kernel(x: Array, y: Array, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> Array:
    """(x y^T * gamma + coef0) ** degree, gamma defaulting to 1/D."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def polynomial_mmd(x: Array, y: Array, degree: int = 3, gamma: float | None = None,
                   coef0: float = 1.0) -> float:
    """Unbiased MMD^2 with a polynomial kernel between two equal-size sets [m, D]."""
    kxx = polynomial_kernel(x, x, degree, gamma, coef0)
    kyy = polynomial_kernel(y, y, degree, gamma, coef0)
    kxy = polynomial_kernel(x, y, degree, gamma, coef0)
    m = kxx.shape[0]
    sxx = kxx.sum() - np.trace(kxx)
    syy = kyy.sum() - np.trace(kyy)
    return float((sxx + syy) / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kernel_distance(features1, features2, *, subsets: int = 100, subset_size: int = 1000,
                    degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                    seed: int = 2020) -> dict[str, float]:
    """KID: mean/std of unbiased polynomial MMD^2 over random subsets (sampled without replacement).

    ``subset_size`` is clipped to the smaller set (as audioldm_eval does). The subset draws use
    ``np.random.RandomState(seed)``, first from set 1 then from set 2, per subset.
    """
    f1, f2 = _as_2d(features1, "features1"), _as_2d(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dims differ: {f1.shape} vs {f2.shape}")
    subset_size = min(subset_size, len(f2), len(f1))
    if subset_size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(f1)} and {len(f2)}")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = f1[rng.choice(len(f1), subset_size, replace=False)]
        b = f2[rng.choice(len(f2), subset_size, replace=False)]
        mmds[i] = polynomial_mmd(a, b, degree, gamma, coef0)
    return {"kid_mean": float(mmds.mean()), "kid_std": float(mmds.std())}


# --------------------------------------------------------------------------------------------------
# KL and IS
# --------------------------------------------------------------------------------------------------
def _softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _log_softmax(x: Array) -> Array:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _sigmoid(x: Array) -> Array:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _kl_sum(log_input: Array, target: Array) -> float:
    """sum target * (log target - log_input), 0 where target == 0 (torch ``kl_div(reduction='sum')``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(target > 0, target * np.log(np.where(target > 0, target, 1.0)), 0.0)
    return float(np.sum(t - target * log_input))


def pair_by_name(names_gen: Sequence[str], names_ref: Sequence[str]) -> tuple[list[int], list[int], list[str]]:
    """Indices (gen, ref) of clips sharing a base file name, in reference order; also the ref names
    with no generated counterpart. Names are compared by ``os.path.basename``."""
    gen_index = {os.path.basename(str(n)): i for i, n in enumerate(names_gen)}
    gi, ri, missing = [], [], []
    for j, n in enumerate(names_ref):
        key = os.path.basename(str(n))
        if key in gen_index:
            gi.append(gen_index[key])
            ri.append(j)
        else:
            missing.append(key)
    return gi, ri, missing


def kl_divergence(logits_gen, logits_ref, names_gen: Sequence[str] | None = None,
                  names_ref: Sequence[str] | None = None, eps: float = 1e-6) -> dict[str, float]:
    """KL(ref_i || gen_i) averaged over pairs, on softmax and on sigmoid of the logits.

    ``names_*`` pair clips by base file name (reference order, unmatched references skipped);
    without names the rows are paired in order. ``eps`` is added to the generated probabilities
    before the log (audioldm_eval / AudioGen convention). The sigmoid variant sums
    ``p log(p / q)`` over classes (the positive-class term only, as audioldm_eval does).
    Returns ``kl_softmax``, ``kl_sigmoid`` and ``kl_pairs`` (number of pairs used).
    """
    lg, lr = _as_2d(logits_gen, "logits_gen"), _as_2d(logits_ref, "logits_ref")
    if names_gen is not None or names_ref is not None:
        if names_gen is None or names_ref is None:
            raise ValueError("kl_divergence: give both names_gen and names_ref, or neither")
        if len(names_gen) != len(lg) or len(names_ref) != len(lr):
            raise ValueError(f"kl_divergence: {len(names_gen)} gen names for {len(lg)} rows, "
                             f"{len(names_ref)} ref names for {len(lr)} rows")
        gi, ri, _ = pair_by_name(names_gen, names_ref)
        if not gi:
            raise ValueError("kl_divergence: no generated file name matches a reference file name")
        lg, lr = lg[gi], lr[ri]
    elif len(lg) != len(lr):
        raise ValueError(f"kl_divergence: unpaired sets of different sizes {len(lg)} vs {len(lr)}")
    n = len(lg)
    kl_soft = _kl_sum(np.log(_softmax(lg) + eps), _softmax(lr)) / n
    kl_sig = _kl_sum(np.log(_sigmoid(lg) + eps), _sigmoid(lr)) / n
    return {"kl_softmax": kl_soft, "kl_sigmoid": kl_sig, "kl_pairs": n}


def inception_score(logits, splits: int = 10, shuffle: bool = True, seed: int = 2020) -> dict[str, float]:
    """Inception score of classifier logits [N, C]: exp(mean_x KL(p(y|x) || p(y))) per split.

    Rows are shuffled with ``np.random.RandomState(seed).permutation`` first (audioldm_eval: splits 10,
    seed 2020). Returns ``is_mean`` and ``is_std`` over the splits.
    """
    x = _as_2d(logits, "logits")
    n = len(x)
    if n < splits:
        raise ValueError(f"inception_score: {n} clips is fewer than splits={splits}")
    if shuffle:
        x = x[np.random.RandomState(seed).permutation(n)]
    p, log_p = _softmax(x), _log_softmax(x)
    scores = []
    for i in range(splits):
        sl = slice(i * n // splits, (i + 1) * n // splits)
        pc, lpc = p[sl], log_p[sl]
        q = pc.mean(axis=0, keepdims=True)
        scores.append(float(np.exp((pc * (lpc - np.log(q))).sum(axis=1).mean())))
    return {"is_mean": float(np.mean(scores)), "is_std": float(np.std(scores))}


# --------------------------------------------------------------------------------------------------
# CLAP scores
# --------------------------------------------------------------------------------------------------
def _l2n(x: Array) -> Array:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def clap_score(text_emb, audio_emb) -> float:
    """Mean cosine similarity between paired text [N, D] and audio [N, D] embeddings."""
    t, a = _as_2d(text_emb, "text_emb"), _as_2d(audio_emb, "audio_emb")
    if t.shape != a.shape:
        raise ValueError(f"clap_score: text {t.shape} and audio {a.shape} embeddings must be paired")
    return float(np.mean(np.sum(_l2n(t) * _l2n(a), axis=-1)))


def clap_audio_score(gen_emb, ref_emb, groups: Sequence[Sequence[int]] | None = None) -> float:
    """CLAP_A (DreamAudio): audio-audio cosine similarity between generated clips and references.

    gen_emb [N, D]; ref_emb [M, D]. ``groups[i]`` lists the reference rows belonging to generated
    clip ``i`` (its reference concepts); each clip scores the mean cosine to its references and the
    result is the mean over clips. Without groups, rows are paired one to one (M == N).
    """
    g, r = _l2n(_as_2d(gen_emb, "gen_emb")), _l2n(_as_2d(ref_emb, "ref_emb"))
    if groups is None:
        if g.shape != r.shape:
            raise ValueError(f"clap_audio_score: unpaired shapes {g.shape} vs {r.shape}; pass groups")
        return float(np.mean(np.sum(g * r, axis=-1)))
    if len(groups) != len(g):
        raise ValueError(f"clap_audio_score: {len(groups)} groups for {len(g)} generated clips")
    per = []
    for i, idx in enumerate(groups):
        idx = list(idx)
        if not idx:
            raise ValueError(f"clap_audio_score: generated clip {i} has no references")
        per.append(float(np.mean(r[idx] @ g[i])))
    return float(np.mean(per))


def frechet_audio_distance(embeddings_gen, embeddings_ref) -> float:
    """FAD: Frechet distance between VGGish frame embeddings (all 0.96 s patches of all clips)."""
    return frechet_distance(embeddings_gen, embeddings_ref)


__all__ = [
    "gaussian_stats", "frechet_distance_from_stats", "frechet_distance", "frechet_audio_distance",
    "polynomial_kernel", "polynomial_mmd", "kernel_distance", "pair_by_name", "kl_divergence",
    "inception_score", "clap_score", "clap_audio_score", "accuracy_vs_chance",
]


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``hits / n`` (``z`` = 1.96: 95 %)."""
    if n <= 0 or not 0 <= hits <= n:
        raise ValueError(f"wilson_interval: need 0 <= hits <= n and n > 0, got hits={hits}, n={n}")
    p = hits / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def accuracy_vs_chance(hits: int, n: int, chance: float, z: float = 1.96) -> dict[str, float]:
    """``hits`` of ``n`` trials against a chance rate: the accuracy, its Wilson score interval (``z`` = 1.96:
    95 %) and the exact one-sided binomial p-value of doing at least this well by chance."""
    import scipy.stats

    if n <= 0 or not 0 <= hits <= n:
        raise ValueError(f"accuracy_vs_chance: need 0 <= hits <= n and n > 0, got hits={hits}, n={n}")
    if not 0 < chance < 1:
        raise ValueError(f"accuracy_vs_chance: chance={chance} must be in (0, 1)")
    p = hits / n
    lo, hi = wilson_interval(hits, n, z)
    pval = float(scipy.stats.binomtest(hits, n, chance, alternative="greater").pvalue)
    return dict(accuracy=p, hits=float(hits), n=float(n), chance=chance, ci_low=lo, ci_high=hi, p_value=pval,
                times_chance=p / chance)


def difference_of_proportions(hits1: int, n1: int, hits2: int, n2: int, z: float = 1.96) -> dict[str, float]:
    """``hits1/n1 - hits2/n2`` with Newcombe's hybrid score interval (Newcombe 1998, method 10: the two Wilson
    intervals combined; ``z`` = 1.96: 95 %). Independent samples: conservative for paired designs."""
    p1, p2 = hits1 / n1, hits2 / n2
    l1, u1 = wilson_interval(hits1, n1, z)
    l2, u2 = wilson_interval(hits2, n2, z)
    d = p1 - p2
    low = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return dict(difference=float(d), ci_low=float(low), ci_high=float(high))
