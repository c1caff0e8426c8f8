"""Token PCA: a fixed, orthonormal linear stage between a codec's patched latent and the denoiser.

A DiT token of ``p`` mel frames carries ``p * n_mels`` values (320 for the demo's 4 x 80), far more than a
CPU-sized model's width, yet those values are highly redundant: on the embedded dataset the first 64
principal directions of the 320-value tokens hold 99.1 % of the variance. Diffusing in the full 320-d space
makes a narrow model spend its capacity on predicting (and failing to cancel) noise in directions the data
never uses. This stage rotates each centred token onto its top-``k`` principal directions and drops the
rest, so the diffusion runs in the ``k``-d subspace the data lives in:

  z = (token - mean) @ basis        [B, N, p*C] -> [B, N, k]
  token ~= z @ basis.T + mean       [B, N, k]   -> [B, N, p*C]

``basis`` [p*C, k] has orthonormal columns, so the projection neither rescales nor mixes the kept
directions' variances: the diffusion loss in ``z`` equals the mel-space MSE restricted to the subspace
(unless :meth:`TokenPCA.whitened` rescales the directions, ``config.data.token_pca_whiten_below``).
The stage is fitted in closed form from the precomputed training split (no training) and cached next to
the data as ``token_pca-p{p}-k{k}-{key}.npz``, ``key`` a hash of what the fit is computed from (the content of
the precompute's ``manifest.json``: its config hash, shard list and counts, latent statistics; and the split
and record limit), so data precomputed again into the same folder with other settings gets a new fit instead
of the old file. It is part of the codec, so a run needs the same file (or the same data) to sample.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from typing import Iterable

import jax.numpy as jnp
import numpy as np

FORMAT = "tta_jax.token_pca/1"


@dataclasses.dataclass(frozen=True)
class TokenPCA:
    """``mean`` [D], ``basis`` [D, k] (orthonormal columns), ``eigenvalues`` [D] (all, descending)."""

    mean: np.ndarray
    basis: np.ndarray
    eigenvalues: np.ndarray
    patch_frames: int
    scale: np.ndarray | None = None   # [k] per-direction gain applied after projection (:meth:`whitened`)

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    @property
    def k(self) -> int:
        return int(self.basis.shape[1])

    @property
    def explained(self) -> float:
        """Fraction of the token variance the kept directions hold."""
        ev = np.maximum(self.eigenvalues, 0.0)
        return float(ev[:self.k].sum() / max(ev.sum(), 1e-30))

    @property
    def variances(self) -> np.ndarray:
        """[k] variance of each encoded channel over the training tokens (eigenvalue x scale^2)."""
        ev = np.maximum(self.eigenvalues[:self.k], 0.0)
        return (ev if self.scale is None else ev * np.square(self.scale.astype(np.float64))).astype(np.float32)

    def encode(self, tokens):
        """[..., D] -> [..., k] (jax or numpy)."""
        if tokens.shape[-1] != self.dim:
            raise ValueError(f"TokenPCA.encode: tokens have {tokens.shape[-1]} values, the basis expects {self.dim}")
        z = (tokens - jnp.asarray(self.mean)) @ jnp.asarray(self.basis)
        return z if self.scale is None else z * jnp.asarray(self.scale)

    def decode(self, z):
        """[..., k] -> [..., D]."""
        if z.shape[-1] != self.k:
            raise ValueError(f"TokenPCA.decode: z has {z.shape[-1]} channels, the basis keeps {self.k}")
        if self.scale is not None:
            z = z / jnp.asarray(self.scale)
        return z @ jnp.asarray(self.basis).T + jnp.asarray(self.mean)

    def whitened(self, below: float) -> "TokenPCA":
        """This PCA with direction ``i`` divided by ``sqrt(min(lambda_i, below))``: directions fainter than
        ``below`` get unit variance, louder ones keep their variance relative to ``below``
        (``lambda_i / below``). ``below = 0``: projections unchanged (on the demo data the variances run from
        300 (the token's level) to 0.09, so the diffusion noise drowns the faint timbre directions long
        before the level and the x0 loss hardly weighs them); ``below = 1``: directions under unit variance
        are lifted to it; ``below = inf``: full whitening, every direction unit variance."""
        if below == 0:
            return dataclasses.replace(self, scale=None)
        if not below > 0:
            raise ValueError(f"TokenPCA.whitened: below={below} must be >= 0")
        ev = np.maximum(self.eigenvalues[:self.k].astype(np.float64), 1e-12)
        return dataclasses.replace(self, scale=(1.0 / np.sqrt(np.minimum(ev, below))).astype(np.float32))


def fit(tokens: Iterable[np.ndarray], k: int, patch_frames: int) -> TokenPCA:
    """Closed-form PCA of token arrays ([N_i, D] each; any number of chunks) keeping ``k`` directions.

    The sign of each direction is fixed (largest-magnitude entry positive) so the fit is deterministic."""
    s = s2 = None
    n = 0
    for t in tokens:
        t = np.asarray(t, np.float64).reshape(-1, np.shape(t)[-1])
        if s is None:
            s, s2 = np.zeros(t.shape[1]), np.zeros((t.shape[1], t.shape[1]))
        s += t.sum(0)
        s2 += t.T @ t
        n += t.shape[0]
    if n < 2:
        raise ValueError("TokenPCA.fit: need at least 2 tokens")
    d = s.shape[0]
    if not 0 < k <= d:
        raise ValueError(f"TokenPCA.fit: k={k} must be in [1, {d}] (token size)")
    mean = s / n
    cov = (s2 - n * np.outer(mean, mean)) / (n - 1)
    w, v = np.linalg.eigh(cov)
    w, v = w[::-1], v[:, ::-1]
    v = v * np.where(v[np.abs(v).argmax(0), np.arange(d)] < 0, -1.0, 1.0)
    return TokenPCA(mean.astype(np.float32), np.ascontiguousarray(v[:, :k], np.float32), w.astype(np.float64),
                    int(patch_frames))


def _read_manifest(data_dir: str) -> dict | None:
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable precompute manifest ({e})") from e


def data_key(data_dir: str, split: str = "train", max_records: int = 4096) -> str:
    """Hash of what a fit on ``data_dir`` is computed from: the precompute manifest's content (config hash,
    shards, counts, latent statistics), or without a manifest the shard files' names, sizes and modification
    times; plus ``split`` and ``max_records``."""
    h = hashlib.sha256(f"split={split},max_records={int(max_records)}\n".encode())
    manifest = _read_manifest(data_dir)
    if manifest is not None:
        h.update(json.dumps(manifest, sort_keys=True).encode())
    else:
        for p in sorted(glob.glob(os.path.join(data_dir, "shard-*.array_record"))):
            st = os.stat(p)
            h.update(f"{os.path.basename(p)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def cache_path(data_dir: str, patch_frames: int, k: int, *, split: str = "train", max_records: int = 4096) -> str:
    """``data_dir/token_pca-p{p}-k{k}-{data_key}.npz``: a new file whenever the data it was fitted on changes."""
    key = data_key(data_dir, split, max_records)
    return os.path.join(data_dir, f"token_pca-p{int(patch_frames)}-k{int(k)}-{key}.npz")


def save(pca: TokenPCA, path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp.npz"  # one per process: hosts fitting at once do not collide
    np.savez(tmp, format=FORMAT, mean=pca.mean, basis=pca.basis, eigenvalues=pca.eigenvalues,
             patch_frames=pca.patch_frames)
    os.replace(tmp, path)


def load(path: str) -> TokenPCA:
    try:
        with np.load(path) as f:
            if str(f["format"]) != FORMAT:
                raise ValueError(f"format {f['format']!r}, expected {FORMAT!r}")
            pca = TokenPCA(f["mean"], f["basis"], f["eigenvalues"], int(f["patch_frames"]))
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"token PCA file {path}: {e}") from e
    if pca.mean.shape != (pca.dim,) or pca.eigenvalues.shape != (pca.dim,):
        raise ValueError(f"token PCA file {path}: mean {pca.mean.shape} / eigenvalues {pca.eigenvalues.shape} "
                         f"do not match basis {pca.basis.shape}")
    return pca


def _train_tokens(data_dir: str, patch_frames: int, split: str, max_records: int):
    """Patched latents [N, p*C] of the first ``max_records`` records of ``split`` (shard order)."""
    from array_record.python.array_record_module import ArrayRecordReader

    from tta_jax.data.records import decode_record

    manifest = _read_manifest(data_dir)
    if manifest is not None:  # only the shards of this precompute (an older one may have left others)
        shards = [os.path.join(data_dir, f) for f in manifest.get("shards", [])]
    else:
        shards = sorted(glob.glob(os.path.join(data_dir, "shard-*.array_record")))
    if not shards:
        raise FileNotFoundError(f"no shard-*.array_record in {data_dir}: cannot fit the token PCA")
    seen = 0
    for path in shards:
        reader = ArrayRecordReader(path)
        try:
            for raw in reader.read_all():
                rec = decode_record(raw)
                if rec.get("split", split) != split:
                    continue
                lat = np.asarray(rec["latent"], np.float32)
                if lat.ndim != 2:
                    raise ValueError(f"record {rec.get('key', '?')!r} in {path}: latent shape {list(lat.shape)}; the "
                                     "token PCA patches sequence latents [T, C] (an image latent [H, T, C] has no "
                                     "DiT tokens to fit)")
                if not np.isfinite(lat).all():
                    raise ValueError(f"record {rec.get('key', '?')!r} in {path}: non-finite latent values; "
                                     "cannot fit the token PCA")
                t = lat.shape[0] // patch_frames * patch_frames
                if t:
                    yield lat[:t].reshape(t // patch_frames, patch_frames * lat.shape[1])
                    seen += 1
                if seen >= max_records:
                    return
        finally:
            reader.close()
    if not seen:
        raise ValueError(f"no records of split {split!r} in {data_dir}: cannot fit the token PCA")


def load_or_fit(data_dir: str, patch_frames: int, k: int, *, split: str = "train",
                max_records: int = 4096) -> TokenPCA:
    """The cached fit for (the data in data_dir, p, k), fitting it from the data on first use."""
    path = cache_path(data_dir, patch_frames, k, split=split, max_records=max_records)
    if os.path.exists(path):
        pca = load(path)
        if pca.k != k or pca.patch_frames != patch_frames:
            raise ValueError(f"token PCA file {path} holds p={pca.patch_frames}, k={pca.k}; expected p={patch_frames}, "
                             f"k={k}")
        return pca
    pca = fit(_train_tokens(data_dir, patch_frames, split, max_records), k, patch_frames)
    save(pca, path)
    return pca
