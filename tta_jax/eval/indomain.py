"""Offline in-domain evaluator for the embedded demo dataset (General-MIDI renders).

No pretrained audio model exists for this domain offline, so we train a small one: a 1-D conv net
(TDNN) over the first 30 cepstra (+ deltas) of 80-bin log-mel at 22.05 kHz / hop 256
(``tta_jax.audio.mel.HIFIGAN_22K``) producing a 128-d embedding plus three heads:

- ``family``: the 17 sound sources (16 GM families + drums), predicted per frame and pooled over time
  (log-mean-exp), trained with a softmax over families against the soft target 1/k on each of the
  clip's k families (a clip has one or two events, at different times);
- ``pattern`` (8 classes) and ``register`` (low/mid/high/none): softmax, trained on one-event clips.

Training data (:func:`get_or_train`): the train split of the embedded set (2700 of 3000 clips) plus
3000 clips rendered with an independent seed and 3000 two-event clips with another (:func:`extra_seed`),
all checked to share no spec with the valid/test clips; the frame head also gets a time-local target
(the source of each half of the clip). ``python -m tta_jax.eval.indomain`` trains (or loads) it and prints
its accuracy on the embedded test split; the measured accuracies and how they were reached are in
``docs/experiments.md``.

It gives (a) prompt-adherence accuracy of generated clips against the labels they were prompted with
and (b) an in-domain Frechet distance on the 128-d embedding (real vs generated, plus a real-vs-real
baseline between two disjoint real sets so the number has a scale).

Family accuracy: a clip counts as correct when its predicted family set (given k, its number of
families: top-1 for one family; for two, the best pair over the two halves of the clip, where the
embedded dataset places its two events) is exactly its label set.

The trainer takes arrays (log-mel [N, F, 80] or audio [N, T] at 22.05 kHz, integer labels), so it
does not depend on the generator; :func:`embedded_arrays` is the thin adapter for
``tta_jax.data.embedded``. The trained model is cached under ``~/.cache/tta_jax/indomain/<hash>``
(hash of the data and training config), and reused. Training runs through the general train loop
(:func:`tta_jax.train.loop.train`: non-finite guard, Orbax checkpoints, SIGTERM handling); its checkpoints
in ``<hash>/run`` let an interrupted first training resume, and are removed once the model is saved.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tta_jax.eval.metrics import frechet_distance

SOURCES = ("piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
           "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive",
           "sound effects", "drums")
PATTERNS = ("single note", "repeated notes", "arpeggio", "chord", "short melody", "drum beat", "snare roll",
            "tom fill")
REGISTERS = ("low", "mid", "high", "none")
SAMPLE_RATE = 22050
N_MELS = 80
DATA_VERSION = 1  # bump when rendering/front end changes (invalidates the rendered-data cache)
VERSION = 3  # bump when the model/training code changes (invalidates the cache)
DOMAIN_NOTE = ("the in-domain evaluator (tta_jax.eval.indomain) was trained only on General-MIDI renders of the "
               "embedded demo dataset (tta_jax.data.embedded: 16 GM instrument families + drums, 4 s clips at "
               "22.05 kHz); its accuracies and Frechet distances mean nothing on other audio")


# --------------------------------------------------------------------------------------------------
# Front end
# --------------------------------------------------------------------------------------------------
def logmel(audio: np.ndarray, batch: int = 64) -> np.ndarray:
    """22.05 kHz audio [N, T] -> log-mel [N, F, 80] (HiFi-GAN 22k front end of tta_jax.audio.mel)."""
    from tta_jax.audio.mel import HIFIGAN_22K, log_mel_spectrogram

    audio = np.asarray(audio, np.float32)
    if audio.ndim != 2:
        raise ValueError(f"logmel expects audio [N, T] at 22.05 kHz, got shape {audio.shape}")
    fn = jax.jit(lambda a: log_mel_spectrogram(a, HIFIGAN_22K, use_fft=True))
    return np.concatenate([np.asarray(fn(audio[i:i + batch])) for i in range(0, len(audio), batch)], 0)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
class InDomainNet(nn.Module):
    """log-mel [B, F, 80] (normalised) -> {"embedding" [B, 128], "family" [B, 17], "pattern" [B, 8],
    "register" [B, 4]} logits.

    ``arch="tdnn"`` (default): 1-D convs over time; with ``n_cepstra=30`` the channels are the first 30
    DCT cepstra of each log-mel frame + their deltas (spectral envelope, less pitch detail).
    ``family_pool="frame"``: family logits per output frame, pooled over time by log-mean-exp (a smooth
    max), so the two events of a two-event clip each dominate their own frames; ``"clip"``: family head
    on the pooled embedding (versions <= 2). ``arch="cnn2d"``: 2-D convs over (time, mel) with
    GroupNorm, each stage two 3x3 convs then a 2x2 max pool; the mel axis is then flattened per frame
    (frequency position is kept) and projected to ``width`` channels per frame; ~5-15x the step time
    of the tdnn on CPU (XLA CPU convs), too slow for the few-minute training budget, so untuned.
    """

    arch: str = "tdnn"
    width: int = 128
    emb_dim: int = 128
    n_cepstra: int = 0  # > 0: feed the first n DCT-II coefficients of each frame (+ their deltas)
    channels: tuple = (16, 32, 64, 128)
    time_pool: int = 2  # input average pool over time before the 2-D convs
    n_layers: int = 4  # tdnn conv layers (kernel 5 then 3s; stride 1 then 2s)
    family_pool: str = "clip"  # "clip": family head on the pooled embedding; "frame": per-frame
    # family logits pooled over time by log-mean-exp (a two-event clip's events are at different times)

    @nn.compact
    def __call__(self, x):
        if self.n_cepstra:
            x = x @ jnp.asarray(dct_matrix(x.shape[-1], self.n_cepstra))
            x = jnp.concatenate([x, jnp.pad(x[:, 1:] - x[:, :-1], ((0, 0), (1, 0), (0, 0)))], -1)
        if self.arch == "tdnn":
            x = nn.avg_pool(x, (2,), strides=(2,))  # [B, F/2, 80]
            layers = ((5, 1), (3, 2), (3, 2), (3, 2)) + ((3, 1),) * max(0, self.n_layers - 4)
            for i, (k, s) in enumerate(layers[: self.n_layers]):
                x = nn.Conv(self.width, (k,), strides=(s,), padding="SAME", name=f"conv{i}")(x)
                x = nn.gelu(nn.LayerNorm(name=f"ln{i}")(x))
            frames = x  # [B, T', width]
            x = jnp.concatenate([x.mean(axis=1), x.max(axis=1)], axis=-1)
        elif self.arch == "cnn2d":
            x = x[..., None]
            if self.time_pool > 1:
                x = nn.avg_pool(x, (self.time_pool, 1), strides=(self.time_pool, 1))  # [B, F/p, 80, 1]
            for i, w in enumerate(self.channels):
                for j in range(2):
                    x = nn.Conv(w, (3, 3), padding="SAME", use_bias=False, name=f"conv{i}_{j}")(x)
                    x = nn.relu(nn.GroupNorm(num_groups=min(8, w // 4), name=f"gn{i}_{j}")(x))
                x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [B, T', M', C]
            x = x.reshape(x.shape[:2] + (-1,))  # [B, T', M' * C]: per-frame, frequency-aware
            x = nn.relu(nn.Dense(self.width, name="frame")(x))  # [B, T', width]
            frames = x
            x = jnp.concatenate([x.mean(axis=1), x.max(axis=1)], axis=-1)  # [B, 2 * width]
        else:
            raise ValueError(f"InDomainNet.arch must be 'cnn2d' or 'tdnn', got {self.arch!r}")
        emb = nn.Dense(self.emb_dim, name="embed")(x)
        h = nn.gelu(emb)
        if self.family_pool == "frame":
            f = nn.gelu(nn.Dense(self.width, name="family_frame")(frames))
            f = nn.Dense(len(SOURCES), name="family")(f)  # [B, T', 17]
            fam = jax.nn.logsumexp(f, axis=1) - jnp.log(f.shape[1])  # smooth max over time
        else:
            f = None
            fam = nn.Dense(len(SOURCES), name="family")(h)
        extra = {} if f is None else {"family_frames": f}
        return {"embedding": emb, "family": fam, **extra,
                "pattern": nn.Dense(len(PATTERNS), name="pattern")(h),
                "register": nn.Dense(len(REGISTERS), name="register")(h)}


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II basis [n_in, n_out] (MFCC-style cepstra of a log-mel frame)."""
    k = np.arange(n_out)[None, :]
    n = np.arange(n_in)[:, None]
    m = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    m[:, 0] /= np.sqrt(2.0)
    return m.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 18
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    gain_aug_db: float = 6.0  # random level change, so loudness of generated clips does not matter
    freq_shift: int = 0  # random roll of +-n mel bins (pitch-shift augmentation)
    time_roll: bool = False  # random circular shift in time
    arch: str = "tdnn"
    n_cepstra: int = 30
    channels: tuple = (16, 32, 64, 128)  # cnn2d only
    time_pool: int = 2  # cnn2d only
    width: int = 128
    n_layers: int = 4
    family_pool: str = "frame"
    family_loss: str = "softmax"  # "softmax" (soft target 1/k over the k label families) or "sigmoid"
    label_smoothing: float = 0.0
    time_masks: int = 0  # SpecAugment: number of time masks per clip (frames set to the mean)
    time_mask_width: int = 20  # max frames per time mask
    freq_masks: int = 0  # number of mel-bin masks per clip
    freq_mask_width: int = 8  # max mel bins per mask
    frame_weight: float = 1.0  # weight of the time-local (per-half) loss on the frame family logits
    extra_clips: int = 3000  # get_or_train: up to this many extra training clips (at most num_clips)
    # rendered with seed extra_seed(seed); 2700 -> 5700 training clips took test family acc 64 -> 79 %
    extra_two_event_clips: int = 3000  # and this many (at most num_clips) rendered as two-event clips only
    # (seed extra_seed(seed, 1)): the two-family clips are the hard ones

    def net(self) -> "InDomainNet":
        return net_from_config(dataclasses.asdict(self))


def net_from_config(c: Mapping[str, Any]) -> InDomainNet:
    """The net of a (possibly older, JSON round-tripped) TrainConfig dict."""
    return InDomainNet(arch=c.get("arch", "tdnn"), n_cepstra=c.get("n_cepstra", 0),
                       channels=tuple(c.get("channels", InDomainNet.channels)),
                       time_pool=c.get("time_pool", InDomainNet.time_pool), width=c.get("width", 128),
                       n_layers=c.get("n_layers", 4), family_pool=c.get("family_pool", "clip"))


@dataclasses.dataclass
class Labels:
    """Integer labels. family_sets[i] lists the source indices of clip i; pattern/register are the first
    event's (-1 where unknown / multi-event and thus masked out of the loss). halves [N, 2]: the source
    sounding in the first / second half of the clip (two-event clips: event 1 then event 2; one-event
    clips: its source twice; -1 unknown), the time-local target of the frame-level family head."""

    family_sets: list
    pattern: np.ndarray
    register: np.ndarray
    halves: Any = None

    def __post_init__(self):
        self.pattern = np.asarray(self.pattern, np.int32)
        self.register = np.asarray(self.register, np.int32)
        n = len(self.family_sets)
        if len(self.pattern) != n or len(self.register) != n:
            raise ValueError(f"Labels: {n} family sets, {len(self.pattern)} patterns, {len(self.register)} registers")
        self.halves = np.full((n, 2), -1, np.int32) if self.halves is None else np.asarray(self.halves, np.int32)
        if self.halves.shape != (n, 2):
            raise ValueError(f"Labels: halves must be [{n}, 2], got {self.halves.shape}")

    def family_multi_hot(self) -> np.ndarray:
        y = np.zeros((len(self.family_sets), len(SOURCES)), np.float32)
        for i, s in enumerate(self.family_sets):
            y[i, list(s)] = 1.0
        return y

    def subset(self, idx) -> "Labels":
        idx = np.asarray(idx)
        return Labels([self.family_sets[i] for i in idx], self.pattern[idx], self.register[idx], self.halves[idx])

    @staticmethod
    def concat(a: "Labels", b: "Labels") -> "Labels":
        return Labels(a.family_sets + b.family_sets, np.concatenate([a.pattern, b.pattern]),
                      np.concatenate([a.register, b.register]), np.concatenate([a.halves, b.halves]))


def labels_from_rows(rows: Sequence[Mapping[str, str]]) -> Labels:
    """Label rows of ``tta_jax.data.embedded`` (columns family, pattern, register, num_events, 2_family)."""
    fams, pats, regs, halves = [], [], [], []
    for r in rows:
        try:
            s = [SOURCES.index(r["family"])]
            if r.get("2_family"):
                s.append(SOURCES.index(r["2_family"]))
            halves.append([s[0], s[-1]])
            single = str(r.get("num_events", "1")) == "1"
            fams.append(sorted(set(s)))
            pats.append(PATTERNS.index(r["pattern"]) if single else -1)
            regs.append(REGISTERS.index(r["register"]) if single else -1)
        except (KeyError, ValueError) as e:
            raise ValueError(f"bad label row {dict(r)}: {e}") from e
    return Labels(fams, np.array(pats), np.array(regs), np.array(halves, np.int32).reshape(-1, 2))


@dataclasses.dataclass
class InDomainEvaluator:
    params: Any
    mean: np.ndarray  # [80] per-bin log-mel mean of the training set
    std: np.ndarray  # [80]
    info: dict

    def net(self) -> InDomainNet:
        return net_from_config(self.info.get("train_config", {}))

    def _apply(self):
        if not hasattr(self, "_fn"):
            self._fn = jax.jit(self.net().apply)
        return self._fn

    def predict(self, mels: np.ndarray, batch: int = 128) -> dict[str, np.ndarray]:
        """log-mel [N, F, 80] -> dict of numpy outputs (embedding, family/pattern/register logits)."""
        mels = np.asarray(mels, np.float32)
        if mels.ndim != 3 or mels.shape[-1] != N_MELS:
            raise ValueError(f"InDomainEvaluator expects log-mel [N, F, {N_MELS}], got {mels.shape}")
        x = (mels - self.mean) / self.std
        outs = [jax.tree.map(np.asarray, self._apply()(self.params, jnp.asarray(x[i:i + batch])))
                for i in range(0, len(x), batch)]
        return {k: np.concatenate([o[k] for o in outs], 0) for k in outs[0]}

    def predict_audio(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        return self.predict(logmel(audio))

    def accuracy(self, mels: np.ndarray, labels: Labels) -> dict[str, float]:
        return accuracy(self.predict(mels), labels)

    def frechet(self, mels_a: np.ndarray, mels_b: np.ndarray) -> float:
        return frechet_distance(self.predict(mels_a)["embedding"], self.predict(mels_b)["embedding"])


def fd_with_baseline(gen_emb: np.ndarray, ref_emb: np.ndarray, real_emb: np.ndarray | None = None, *,
                     real_source: str = "", seed: int = 0) -> tuple[dict[str, float], dict[str, Any]]:
    """In-domain FD of generated vs reference embeddings, with a real-vs-real baseline whose set sizes are
    stated and matched to the comparison where possible (the FD of two samples of one distribution grows as
    the samples shrink, so a baseline on fewer clips than the comparison is not its scale).

    ``real_emb``: embeddings of extra real clips disjoint from the reference (``real_source`` names them):
    the baseline is then FD(min(N_gen, N_real) of them, all reference clips), the comparison's own sizes
    when there are enough. Without them the reference is split at random (``seed``) into two disjoint
    halves A, B: the baseline is FD(A, B) with A cut to N_gen clips when the generated set is smaller.
    Whenever the baseline's sizes differ from the comparison's, ``fd_matched`` is FD between a random subset
    of the generated clips and the baseline's second set, with exactly the baseline's sizes.

    -> (metrics ``fd``, ``fd_real_vs_real``, ``fd_matched``; protocol strings and clip counts)."""
    ng, nr = len(gen_emb), len(ref_emb)
    rng = np.random.default_rng(seed)
    out = {"fd": frechet_distance(gen_emb, ref_emb)}
    proto: dict[str, Any] = {"comparison": f"FD between all {ng} generated and all {nr} reference clips",
                             "comparison_clips": [ng, nr]}
    if real_emb is not None and len(real_emb) >= 2:
        a = min(ng, len(real_emb))
        a_set, b_idx = np.asarray(real_emb)[:a], np.arange(nr)
        proto["baseline"] = (f"FD between {a} real clips of {real_source or 'an extra real set'} (disjoint from the "
                             f"reference) and the {nr} reference clips")
    else:
        perm = rng.permutation(nr)
        half = nr // 2
        if half < 2:
            proto["baseline"] = f"none: the reference has {nr} clips, a real-vs-real baseline needs at least 4"
            return out, proto
        a = min(ng, half)
        a_set, b_idx = ref_emb[perm[:half][:a]], perm[half:]
        proto["baseline"] = (f"FD between two disjoint parts of the reference set (random split, seed {seed}): "
                             f"{a} and {len(b_idx)} clips" + (f" (the first part cut to the {ng} generated clips)"
                                                             if a < half else ""))
    out["fd_real_vs_real"] = frechet_distance(a_set, ref_emb[b_idx])
    proto["baseline_clips"] = [int(a), int(len(b_idx))]
    if [ng, nr] != proto["baseline_clips"]:
        sub = np.sort(rng.permutation(ng)[:a])
        out["fd_matched"] = frechet_distance(gen_emb[sub], ref_emb[b_idx])
        proto["matched"] = (f"FD between {a} generated clips (random subset) and the same {len(b_idx)} reference "
                            f"clips as the baseline: the baseline's sizes, so compare it (not the {ng} vs {nr} "
                            f"comparison) with the baseline")
        proto["matched_clips"] = [int(a), int(len(b_idx))]
    return out, proto


def half_scores(family_frames: np.ndarray) -> np.ndarray:
    """Per-frame family logits [N, T', 17] (T' >= 2) -> per-half family log-probabilities [N, 2, 17]
    (log-mean-exp over the frames of each half of the per-frame log-softmax)."""
    from scipy.special import log_softmax, logsumexp

    f = np.asarray(family_frames, np.float64)
    if f.ndim != 3 or f.shape[1] < 2:
        raise ValueError(f"half_scores needs frame logits [N, T' >= 2, {len(SOURCES)}], got {f.shape}")
    lp = log_softmax(f, axis=-1)
    h = f.shape[1] // 2
    return np.stack([logsumexp(lp[:, :h], 1) - np.log(h), logsumexp(lp[:, h:], 1) - np.log(f.shape[1] - h)], 1)


def predicted_family_sets(out: Mapping[str, np.ndarray], ks: Sequence[int]) -> list[list[int]]:
    """The predicted family set of each clip given its number of families k (1 or 2).

    k = 1: top-1 of the pooled ``family`` logits. k = 2 with per-frame logits: the embedded dataset
    lays a two-event clip out as one event per half (``tta_jax.data.embedded.render_clip``), so the
    pair {a, b}, a != b, maximising log p_half1(a) + log p_half2(b) (either order); without frame
    logits (or with fewer than two frames), the top-2 pooled families."""
    fam = np.asarray(out["family"])
    frames = out.get("family_frames")
    # clips too short for two output frames (< ~0.4 s) fall back to the pooled top-k
    halves = half_scores(frames) if frames is not None and np.shape(frames)[1] >= 2 else None
    sets = []
    for i, k in enumerate(ks):
        if k == 2 and halves is not None:
            s = halves[i, 0][:, None] + halves[i, 1][None, :]
            s = np.maximum(s, s.T)  # order-free
            np.fill_diagonal(s, -np.inf)
            a, b = np.unravel_index(int(np.argmax(s)), s.shape)
            sets.append(sorted({int(a), int(b)}))
        else:
            sets.append(sorted(np.argsort(-fam[i])[:k].tolist()))
    return sets


def accuracy(out: Mapping[str, np.ndarray], labels: Labels) -> dict[str, float]:
    """Family (predicted set == label set, :func:`predicted_family_sets`), single-event family,
    two-family, pattern and register accuracies."""
    pred = predicted_family_sets(out, [len(s) for s in labels.family_sets])
    ok = np.array([set(p) == set(s) for p, s in zip(pred, labels.family_sets)])
    single = np.array([len(s) == 1 for s in labels.family_sets])
    res = {"family_acc": float(ok.mean()), "n": int(len(ok))}
    if single.any():
        res["family_acc_single_event"] = float(ok[single].mean())
    if (~single).any():
        res["family_acc_two_family"] = float(ok[~single].mean())
    for k in ("pattern", "register"):
        y = getattr(labels, k)
        m = y >= 0
        if m.any():
            res[f"{k}_acc"] = float((out[k][m].argmax(-1) == y[m]).mean())
    return res


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
def _loss(params, x, fam_y, pat_y, reg_y, net, family_loss="softmax", label_smoothing=0.0, halves=None,
          frame_weight=0.0):
    out = net.apply(params, x)
    l_frame = 0.0
    if halves is not None and frame_weight and "family_frames" in out:
        f = out["family_frames"]  # [B, T', 17]: target = the source of the half each frame is in
        tgt = jnp.where(jnp.arange(f.shape[1])[None, :] < f.shape[1] // 2, halves[:, :1], halves[:, 1:])
        m = (tgt >= 0).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(f, jnp.maximum(tgt, 0))
        l_frame = frame_weight * (ce * m).sum() / jnp.maximum(m.sum(), 1.0)
    if family_loss == "softmax":
        t = fam_y / jnp.maximum(fam_y.sum(-1, keepdims=True), 1.0)
        t = t * (1.0 - label_smoothing) + label_smoothing / t.shape[-1]
        l_fam = optax.softmax_cross_entropy(out["family"], t).mean()
    else:
        t = fam_y * (1.0 - label_smoothing) + 0.5 * label_smoothing
        l_fam = optax.sigmoid_binary_cross_entropy(out["family"], t).sum(-1).mean()

    def masked_ce(logits, y):
        m = (y >= 0).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y, 0))
        return (ce * m).sum() / jnp.maximum(m.sum(), 1.0)

    return l_fam + l_frame + 0.5 * masked_ce(out["pattern"], pat_y) + 0.5 * masked_ce(out["register"], reg_y)


def _spec_augment(xb: np.ndarray, cfg: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """SpecAugment-style masks on a normalised batch [B, F, 80] (masked cells set to 0 = the mean)."""
    xb = xb.copy()
    n, f, m = xb.shape
    for i in range(n):
        for _ in range(cfg.time_masks):
            w = int(rng.integers(0, cfg.time_mask_width + 1))
            t0 = int(rng.integers(0, max(1, f - w)))
            xb[i, t0:t0 + w] = 0.0
        for _ in range(cfg.freq_masks):
            w = int(rng.integers(0, cfg.freq_mask_width + 1))
            b0 = int(rng.integers(0, max(1, m - w)))
            xb[i, :, b0:b0 + w] = 0.0
    return xb


class ClipBatches:
    """The evaluator's training batches, a checkpointable iterator (``get_state``/``set_state``) for the
    train loop.

    Epoch after epoch: a permutation of the clips, then per batch its random gain shift, mel/time rolls and
    SpecAugment masks (as ``cfg`` asks), all drawn in this order from ONE ``numpy.random.default_rng(cfg.seed)``
    (the stream every VERSION-3 evaluator was trained with). ``steps_per_epoch = max(1, N // batch_size)``
    batches an epoch (the rest of the permutation is dropped). A batch: {"x" [B, F, 80] normalised log-mel,
    "family" [B, 17] multi-hot, "pattern" [B], "register" [B], "halves" [B, 2]} (:class:`Labels`).
    """

    def __init__(self, x: np.ndarray, family: np.ndarray, labels: Labels, std: np.ndarray, cfg: TrainConfig):
        self.x, self.family, self.labels, self.std, self.cfg = x, family, labels, std, cfg
        self.gain = np.float32(cfg.gain_aug_db / 20.0 * np.log(10.0))  # dB of amplitude -> natural-log offset
        self.steps_per_epoch = max(1, len(x) // cfg.batch_size)
        self.rng = np.random.default_rng(cfg.seed)
        self.pos = 0  # batch index within the epoch
        self.perm = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        cfg, rng = self.cfg, self.rng
        if self.pos == 0:
            self.perm = rng.permutation(len(self.x))
        idx = self.perm[self.pos * cfg.batch_size:(self.pos + 1) * cfg.batch_size]
        shift = rng.uniform(-self.gain, self.gain, size=(len(idx), 1, 1)).astype(np.float32) / self.std
        xb = self.x[idx] + shift
        if cfg.freq_shift or cfg.time_roll:
            xb = np.stack([np.roll(np.roll(a, int(rng.integers(-cfg.freq_shift, cfg.freq_shift + 1)), axis=1),
                                   int(rng.integers(a.shape[0])) if cfg.time_roll else 0, axis=0) for a in xb])
        if cfg.time_masks or cfg.freq_masks:
            xb = _spec_augment(xb, cfg, rng)
        self.pos = (self.pos + 1) % self.steps_per_epoch
        return {"x": xb, "family": self.family[idx], "pattern": self.labels.pattern[idx],
                "register": self.labels.register[idx], "halves": self.labels.halves[idx]}

    def get_state(self) -> dict:
        """JSON-able: position in the epoch, its permutation and the generator state (128-bit ints as hex)."""
        st = self.rng.bit_generator.state
        return {"pos": self.pos, "perm": None if self.pos == 0 else self.perm.tolist(),
                "rng": {"bit_generator": st["bit_generator"], "state": hex(st["state"]["state"]),
                        "inc": hex(st["state"]["inc"]), "has_uint32": int(st["has_uint32"]),
                        "uinteger": int(st["uinteger"])}}

    def set_state(self, state: dict) -> None:
        try:
            r = state["rng"]
            self.rng.bit_generator.state = {
                "bit_generator": r["bit_generator"], "has_uint32": r["has_uint32"], "uinteger": r["uinteger"],
                "state": {"state": int(r["state"], 16), "inc": int(r["inc"], 16)}}
            self.pos = int(state["pos"])
            self.perm = None if state["perm"] is None else np.asarray(state["perm"], np.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"ClipBatches.set_state: not a state of this iterator ({e!r}): {str(state)[:200]}") from e
        if not 0 <= self.pos < self.steps_per_epoch or (self.pos and len(self.perm) != len(self.x)):
            raise ValueError(f"ClipBatches.set_state: batch {self.pos} of an epoch of {self.steps_per_epoch} over "
                             f"{len(self.x)} clips does not fit this data (another training set?)")


class TrainingInterrupted(RuntimeError):
    """The evaluator's training stopped early (SIGTERM); its checkpoint in ``workdir`` resumes it."""


def loop_config(cfg: TrainConfig, num_clips: int, *, progress_bar: bool = False, ckpt_every: int = 0):
    """The train loop's config (:func:`tta_jax.train.config.trainer_config`) for ``cfg`` on ``num_clips``:
    AdamW (``cfg.lr``, ``cfg.weight_decay`` on every param, no clipping) with linear warm-up over
    min(100, total / 10) steps then cosine decay to 0 over the total of ``epochs * steps_per_epoch`` steps,
    no EMA, one log record per epoch, one device (the same result on any machine); ``ckpt_every`` 0: one
    checkpoint at the end."""
    from tta_jax.train.config import trainer_config

    total = max(1, num_clips // cfg.batch_size) * cfg.epochs
    c = trainer_config()
    c.seed = int(cfg.seed)
    c.builder = "tta_jax.eval.indomain:train"  # built from arrays by train(), not from the config
    c.mesh.data = 1
    c.optimizer.update(dict(name="adamw", lr=float(cfg.lr), schedule="cosine", warmup_steps=min(100, total // 10),
                            decay_steps=total, end_lr_factor=0.0, b1=0.9, b2=0.999, eps=1e-8,
                            weight_decay=float(cfg.weight_decay), clip_norm=0.0, grad_accum=1))
    c.train.update(dict(total_steps=total, batch_size=int(cfg.batch_size), ema_decay=0.0,
                        log_every=max(1, num_clips // cfg.batch_size), ckpt_every=int(ckpt_every or total),
                        keep_ckpts=1, progress_bar=bool(progress_bar), tensorboard=False, measure_peak=False))
    return c


def _decay_all(params):
    """Weight decay on every parameter (biases and norms included), as optax.adamw's default."""
    return jax.tree.map(lambda _: True, params)


def train(mels: np.ndarray, labels: Labels, cfg: TrainConfig = TrainConfig(), *, verbose: bool = True,
          info: dict | None = None, eval_set: tuple | None = None, workdir: str | None = None) -> InDomainEvaluator:
    """Trains the in-domain net on log-mel [N, F, 80] with labels; returns an evaluator.

    Runs through the general train loop (:func:`tta_jax.train.loop.train`, :func:`loop_config`,
    :class:`ClipBatches`), so it has the loop's non-finite guard and checkpoints: with ``workdir`` one per
    epoch there (an interrupted training resumes from it and ends with the same params); without, a
    temporary directory. The same arrays and ``cfg`` give the same params. ``verbose``: a progress bar
    (loss, steps/s) and, with ``eval_set=(mels, labels)``, its accuracy printed after every epoch
    (monitoring only). SIGTERM stops it with a checkpoint and :class:`TrainingInterrupted`."""
    import contextlib
    import tempfile

    from tta_jax.train import loop

    mels = np.asarray(mels, np.float32)
    if mels.ndim != 3 or mels.shape[-1] != N_MELS:
        raise ValueError(f"train expects log-mel [N, F, {N_MELS}], got {mels.shape}")
    if len(labels.family_sets) != len(mels):
        raise ValueError(f"train: {len(mels)} clips but {len(labels.family_sets)} labels")
    mean = mels.mean(axis=(0, 1))
    std = mels.std(axis=(0, 1)) + 1e-5
    batches = ClipBatches((mels - mean) / std, labels.family_multi_hot(), labels, std, cfg)
    per_epoch = batches.steps_per_epoch
    config = loop_config(cfg, len(mels), progress_bar=verbose, ckpt_every=per_epoch if workdir else 0)
    net = cfg.net()
    x0 = jnp.zeros((1,) + mels.shape[1:])

    def init_fn(rng):  # noqa: ARG001 - the net's own key, PRNGKey(cfg.seed), as every VERSION-3 evaluator
        return net.init(jax.random.PRNGKey(cfg.seed), x0)

    def loss_fn(params, b, rng):  # noqa: ARG001 - no dropout
        return _loss(params, b["x"], b["family"], b["pattern"], b["register"], net, cfg.family_loss,
                     cfg.label_smoothing, b["halves"], cfg.frame_weight), {}

    def evaluate(params, step):
        acc = InDomainEvaluator(params, mean, std, {"train_config": dataclasses.asdict(cfg)}).accuracy(*eval_set)
        print(f"[indomain] epoch {step // per_epoch}/{cfg.epochs} {json.dumps(acc)}", flush=True)
        return {f"eval/{k}": v for k, v in acc.items()}

    task = loop.Task(init_fn=init_fn, loss_fn=loss_fn, train_iter=batches, decay_mask_fn=_decay_all,
                     eval_fn=evaluate if verbose and eval_set is not None else None, eval_every=per_epoch)
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        wd = workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="indomain_"))
        res = loop.train(config, wd, task)
    if res.reason != "done":
        raise TrainingInterrupted(f"in-domain evaluator training stopped at step {res.step} of "
                                  f"{config.train.total_steps} ({res.reason})"
                                  + (f"; run again to resume from {workdir}" if workdir else ""))
    if verbose and res.history:
        print(f"[indomain] {res.step} steps ({cfg.epochs} epochs) in {time.time() - t0:.0f} s, last epoch loss "
              f"{res.history[-1]['loss']:.4f}", flush=True)
    info = dict(info or {}, train_seconds=round(time.time() - t0, 1), train_clips=int(len(mels)),
                train_config=dataclasses.asdict(cfg), version=VERSION)
    return InDomainEvaluator(jax.tree.map(np.asarray, res.state.params), mean, std, info)


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------
def cache_root() -> str:
    return os.environ.get("TTA_JAX_INDOMAIN_CACHE", os.path.expanduser("~/.cache/tta_jax/indomain"))


def config_hash(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save(ev: InDomainEvaluator, directory: str) -> str:
    from flax import serialization

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "params.msgpack.tmp"), "wb") as f:
        f.write(serialization.to_bytes(ev.params))
    np.savez(os.path.join(directory, "norm.npz"), mean=ev.mean, std=ev.std)
    with open(os.path.join(directory, "info.json"), "w") as f:
        json.dump(ev.info, f, indent=1, default=str)
    os.replace(os.path.join(directory, "params.msgpack.tmp"), os.path.join(directory, "params.msgpack"))
    return directory


def load(directory: str) -> InDomainEvaluator:
    from flax import serialization

    path = os.path.join(directory, "params.msgpack")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no trained in-domain evaluator at {path}")
    with open(os.path.join(directory, "info.json")) as f:
        info = json.load(f)
    ev = InDomainEvaluator(None, None, None, info)
    # the tree structure only (eval_shape): an eager init of the net took ~7 s on CPU
    template = jax.eval_shape(lambda: ev.net().init(jax.random.PRNGKey(0), jnp.zeros((1, 64, N_MELS))))
    with open(path, "rb") as f:
        ev.params = serialization.from_bytes(template, f.read())
    norm = np.load(os.path.join(directory, "norm.npz"))
    ev.mean, ev.std = norm["mean"], norm["std"]
    return ev


# --------------------------------------------------------------------------------------------------
# Adapter for tta_jax.data.embedded
# --------------------------------------------------------------------------------------------------
def embedded_arrays(num_clips: int = 3000, seed: int = 0, splits: Sequence[str] = ("train",),
                    num_workers: int = 2, cache: bool = True, two_event_prob: float | None = None):
    """Renders (or loads from the cache) the embedded dataset: (keys, log-mel [N, F, 80], Labels, rows)
    for the clips in ``splits``. Uses ``tta_jax.data.embedded`` (22.05 kHz, 4 s clips); ``two_event_prob``
    overrides the dataset's default share of two-event clips."""
    from tta_jax.data import embedded as E

    cfg = E.EmbeddedConfig(num_clips=num_clips, seed=seed)
    if two_event_prob is not None:
        cfg = dataclasses.replace(cfg, two_event_prob=float(two_event_prob))
    if cfg.sample_rate != SAMPLE_RATE:
        raise ValueError(f"embedded dataset renders at {cfg.sample_rate} Hz, the evaluator expects {SAMPLE_RATE}")
    key = config_hash({"data": dataclasses.asdict(cfg), "mel": "hifigan_22k", "v": DATA_VERSION})
    path = os.path.join(cache_root(), "data", f"{key}.npz")
    if cache and os.path.exists(path):
        z = np.load(path, allow_pickle=False)
        rows = json.loads(str(z["rows"]))
        mels, keys = z["mels"].astype(np.float32), [str(k) for k in z["keys"]]
    else:
        rows, audio, chunks = [], [], []
        for row, a in E.iter_embedded(cfg, num_workers=num_workers):
            rows.append(row)
            audio.append(a)
            if len(audio) == 256:  # bounded memory: ~90 MB of audio at a time
                chunks.append(logmel(np.stack(audio)))
                audio = []
        if audio:
            chunks.append(logmel(np.stack(audio)))
        mels = np.concatenate(chunks, 0).astype(np.float16).astype(np.float32)  # as stored in the cache
        keys = [r["key"] for r in rows]
        if cache:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.savez(path + ".tmp.npz", mels=mels.astype(np.float16), keys=np.array(keys),
                     rows=json.dumps(rows))
            os.replace(path + ".tmp.npz", path)
    sel = [i for i, r in enumerate(rows) if r["split"] in splits]
    sel_rows = [rows[i] for i in sel]
    return [keys[i] for i in sel], mels[sel], labels_from_rows(sel_rows), sel_rows


def extra_seed(seed: int, which: int = 0) -> int:
    """Seed of the extra training renders (``which`` 0: ``TrainConfig.extra_clips``, 1:
    ``extra_two_event_clips``): a different seed gives clips with independent specs (random program,
    notes, tempo, velocities), disjoint from the default set."""
    return int(seed) + 1_000_003 + 7919 * int(which)


def _check_disjoint(num_clips: int, seed: int, extra: int, which: int = 0, two_event_prob: float = 0.25) -> None:
    """Refuse extra training clips whose spec equals a test/valid clip's spec (no leak into training)."""
    from tta_jax.data import embedded as E

    cfg = E.EmbeddedConfig(num_clips=num_clips, seed=seed)
    splits = E._split_table(num_clips, seed, cfg.valid_frac, cfg.test_frac)

    def sig(sp):
        return json.dumps(sp["events"], sort_keys=True) + str(sp["rng_seed"])

    held = {sig(E.clip_spec(i, seed, cfg.two_event_prob)) for i in range(num_clips) if splits[i] != "train"}
    for i in range(extra):
        if sig(E.clip_spec(i, extra_seed(seed, which), two_event_prob)) in held:
            raise ValueError(f"extra training clip {i} (seed {extra_seed(seed, which)}) equals a held-out clip")


def get_or_train(num_clips: int = 3000, seed: int = 0, cfg: TrainConfig = TrainConfig(), *,
                 verbose: bool = True) -> InDomainEvaluator:
    """The cached evaluator for the embedded dataset, trained on first use on its train split plus
    ``min(cfg.extra_clips, num_clips)`` clips of an independent render (seed :func:`extra_seed`; all of its splits).
    The valid/test splits of (num_clips, seed) never enter training."""
    key = config_hash({"num_clips": num_clips, "seed": seed, "train": dataclasses.asdict(cfg), "v": VERSION})
    directory = os.path.join(cache_root(), key)
    if os.path.exists(os.path.join(directory, "params.msgpack")):
        return load(directory)
    t0 = time.time()
    _, mels, labels, _ = embedded_arrays(num_clips, seed, ("train",))
    # a small demo set gets a proportionally small extra set
    for which, n_extra, prob in ((0, min(cfg.extra_clips, num_clips), None),
                                 (1, min(cfg.extra_two_event_clips, num_clips), 1.0)):
        if n_extra:
            _check_disjoint(num_clips, seed, n_extra, which, 0.25 if prob is None else prob)
            _, m2, l2, _ = embedded_arrays(n_extra, extra_seed(seed, which), ("train", "valid", "test"),
                                           two_event_prob=prob)
            mels = np.concatenate([mels, m2], 0)
            labels = Labels.concat(labels, l2)
    data_s = round(time.time() - t0, 1)
    run_dir = os.path.join(directory, "run")  # the loop's checkpoints: an interrupted training resumes
    ev = train(mels, labels, cfg, verbose=verbose, workdir=run_dir,
               info={"dataset": "tta_jax.data.embedded", "num_clips": num_clips, "seed": seed, "hash": key,
                     "data_seconds": data_s})
    save(ev, directory)
    shutil.rmtree(run_dir, ignore_errors=True)
    return ev


def main(argv=None):
    """``python -m tta_jax.eval.indomain [--num_clips 3000]``: train (or load) and report test accuracy."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--num_clips", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    flag = {"seed": "train_seed"}  # --seed is the dataset seed
    for f in dataclasses.fields(TrainConfig):
        d = f.default
        if isinstance(d, tuple):
            p.add_argument(f"--{flag.get(f.name, f.name)}", dest=f"cfg_{f.name}", default=d,
                           type=lambda v: tuple(int(c) for c in v.split(",")))
        else:
            typ = (lambda v: bool(int(v))) if isinstance(d, bool) else type(d)
            p.add_argument(f"--{flag.get(f.name, f.name)}", dest=f"cfg_{f.name}", type=typ, default=d)
    a = p.parse_args(argv)
    t0 = time.time()
    cfg = TrainConfig(**{f.name: getattr(a, f"cfg_{f.name}") for f in dataclasses.fields(TrainConfig)})
    ev = get_or_train(a.num_clips, a.seed, cfg)
    _, test_m, test_l, _ = embedded_arrays(a.num_clips, a.seed, ("test",))
    _, val_m, _, _ = embedded_arrays(a.num_clips, a.seed, ("valid",))
    res = {"test": ev.accuracy(test_m, test_l), "fd_real_valid_vs_real_test": ev.frechet(val_m, test_m),
           "train_seconds": ev.info.get("train_seconds"), "total_seconds": round(time.time() - t0, 1)}
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()


def score_generated(audio, families, sample_rate: int = 22050):
    """Generated audio [N, S] at ``sample_rate`` (resampled to the evaluator's 22.05 kHz) prompted with
    ``families[i]`` (1 or 2 family names) -> (metrics, log-mels [N, T, M] of the audio), from the package's
    in-domain evaluator (the 3000-clip one, >= 90 % family accuracy on its real test split; trained and cached on
    first use): a clip is a hit when its predicted family set equals the prompted one
    (:func:`predicted_family_sets`); also the in-domain FD against the real test split and its real-vs-real
    baseline."""
    ev = get_or_train()
    if sample_rate != 22050:
        from tta_jax.audio.io import resample

        audio = np.stack([resample(np.asarray(a), sample_rate, 22050) for a in audio])
    mels_gen = logmel(audio)
    names = list(SOURCES)
    pred = predicted_family_sets(ev.predict(mels_gen), [len(set(f)) for f in families])
    hits = [int(p == sorted({names.index(x) for x in f})) for p, f in zip(pred, families)]
    one = [i for i, f in enumerate(families) if len(f) == 1]
    n, seed = int(ev.info["num_clips"]), int(ev.info["seed"])  # the evaluator's own held-out splits
    _, test_m, test_l, _ = embedded_arrays(n, seed, ("test",))
    _, val_m, _, _ = embedded_arrays(n, seed, ("valid",))
    fd_gen = ev.frechet(mels_gen, test_m)
    fd_base = ev.frechet(val_m[:len(mels_gen)], test_m)
    from tta_jax.eval.metrics import accuracy_vs_chance

    vs_chance = accuracy_vs_chance(sum(hits[i] for i in one), len(one), 1.0 / len(names))
    return dict(prompt_family_accuracy=float(np.mean([hits[i] for i in one])), per_prompt_hit=hits,
                prompt_family_vs_chance=vs_chance,
                prompt_family_accuracy_all=float(np.mean(hits)),
                predicted=[" + ".join(names[j] for j in p) for p in pred], fd_generated_vs_test=float(fd_gen),
                fd_real_valid_vs_test=float(fd_base), evaluator_test_accuracy=ev.accuracy(test_m, test_l),
                chance=1.0 / len(names)), mels_gen
