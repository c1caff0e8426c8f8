"""Pretraining a reference encoder as a sound-event classifier (``config.builder``, ``configs/serst_encoder.py``).

SERST's reference encoder is a speaker-encoder ResNet (SE blocks, attentive statistics pooling; a
:class:`tta_jax.conditioners.reference_encoder.ReferenceEncoder`). The paper trains it from scratch together with
the adapter. At CPU scale that failed: with the U-Net (docs/experiments.md, three runs) and with the DiT (one run;
the encoder collapsed to one output for every reference, mean pairwise cosine 0.9994). The adapter then learns a
constant shift of the frozen base, not a style. A speaker encoder is normally trained as a classifier of
speakers, so this task trains the same network as a classifier of the source's event labels:

    emb    = ReferenceEncoder(log-mel of a random crop)          [B, E]  unit norm
    logits = scale * emb @ normalise(prototypes).T               [B, N]  (normalised softmax; scale fixed)
    loss   = cross-entropy(logits, label)

The SERST run then loads the encoder (``config.train.init_parts = ("<this run>#encoder@conditioner/encoder",)``)
and can keep it frozen (``config.optimizer.trainable`` without ``conditioner/encoder``).

Data: the embedded dataset's single-event clips of ``config.data.split`` (default train), rendered at the
reference rate (16 kHz) with their ``config.extra.label`` column (default ``family``), as the same log-mels the
SERST features use (:func:`tta_jax.conditioners.serst.reference_features`), cropped to
``config.extra.crop_seconds`` (the reference length). ``assets/labels.json`` lists the classes.
"""
from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.errors import ConfigError

LABELS = "labels.json"


class EncoderClassifier(nn.Module):
    """``encoder`` (the reference encoder) + ``prototypes`` [N, E]: log-mel [B, T, M] -> logits [B, N]."""

    cfg: object
    num_classes: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, mel):
        from tta_jax.conditioners.reference_encoder import ReferenceEncoder, l2_normalize

        emb = ReferenceEncoder(self.cfg, name="encoder")(mel)
        protos = self.param("prototypes", nn.initializers.normal(1.0), (self.num_classes, emb.shape[-1]))
        return self.scale * emb @ l2_normalize(protos).T


def labelled_clips(config, sample_rate: int) -> tuple[list[np.ndarray], list[str]]:
    """The embedded set's single-event clips of ``config.data.split`` at ``sample_rate`` -> (audio [N] float32
    each, label each)."""
    from tta_jax.data.embedded import EmbeddedConfig, iter_embedded

    e = config.extra
    if e.get("audio_source", "embedded") != "embedded":
        raise ConfigError(f"config.extra.audio_source={e.get('audio_source')!r}: the reference-encoder classifier "
                          f"reads the embedded dataset's labels ('embedded')")
    key = str(e.get("label", "family"))
    cfg = EmbeddedConfig(num_clips=int(e.get("num_clips", 2000)), seed=int(config.seed), sample_rate=sample_rate)
    split = config.data.get("split", "") or "train"
    audio, labels = [], []
    for row, a in iter_embedded(cfg, num_workers=2):
        if row["split"] != split or row.get("num_events") != "1":
            continue
        if key not in row:
            raise ConfigError(f"config.extra.label={key!r} is not a column of the embedded dataset ({sorted(row)})")
        audio.append(a.astype(np.float32))
        labels.append(str(row[key]))
    return audio, labels


def reference_mels(audio: list[np.ndarray], batch: int = 32) -> list[np.ndarray]:
    """Clips at 16 kHz (equal or unequal lengths) -> SERST reference log-mels [T, 80] each."""
    from tta_jax.conditioners.serst import reference_features

    out = []
    for i in range(0, len(audio), batch):
        group = audio[i:i + batch]
        n = max(a.size for a in group)
        mel = reference_features(np.stack([np.pad(a, (0, n - a.size)) for a in group]))["reference"]
        out += list(np.asarray(mel))
    return out


def make_loss_fn(model: EncoderClassifier):
    """-> ``loss_fn(params, {"mel": [B, T, M], "label": [B] int}, rng) -> (loss, {"accuracy", "xent"})``."""
    def loss_fn(params, batch, rng):
        del rng
        logits = model.apply({"params": params}, batch["mel"])
        label = jnp.asarray(batch["label"], jnp.int32)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        xent = -jnp.take_along_axis(logp, label[:, None], axis=-1).mean()
        acc = (logits.argmax(-1) == label).mean()
        return xent, {"xent": xent, "accuracy": acc}

    return loss_fn


def build_task(config, mesh=None):  # noqa: ARG001 - the loop shards the batch over the mesh
    """``config.builder`` entry: the classifier over ``config.model.encoder`` (a reference-encoder preset + fields, as
    ``config.conditioner.encoder`` of a SERST config); ``save_assets`` writes ``assets/labels.json``."""
    from tta_jax.conditioners.reference_encoder import REFERENCE_MEL
    from tta_jax.conditioners.serst import encoder_config
    from tta_jax.data.crops import MelCropIterator
    from tta_jax.train.loop import Task

    enc = encoder_config(dict(config.model.get("encoder") or {}), "config.model.encoder")
    audio, labels = labelled_clips(config, REFERENCE_MEL.sample_rate)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ConfigError(f"the reference-encoder classifier needs at least two labels; the data has {classes}")
    mels = reference_mels(audio)
    crop = REFERENCE_MEL.num_frames(int(round(float(config.extra.get("crop_seconds", 2.0))
                                               * REFERENCE_MEL.sample_rate)))
    floor = float(min(m.min() for m in mels))
    it = MelCropIterator(mels, config.train.batch_size // jax.process_count(), crop,
                         seed=config.seed + 1000 * jax.process_index(), floor=floor,
                         labels=[classes.index(x) for x in labels])
    model = EncoderClassifier(enc, len(classes), float(config.extra.get("logit_scale", 16.0)))

    def init_fn(rng):
        return model.init(rng, jnp.zeros((1, crop, enc.n_mels), jnp.float32))["params"]

    def save_assets(workdir):
        path = os.path.join(workdir, "assets", LABELS)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            json.dump({"label": str(config.extra.get("label", "family")), "classes": classes}, fh)
        return [path]

    return Task(init_fn=init_fn, loss_fn=make_loss_fn(model), train_iter=it, save_assets=save_assets)


__all__ = ["EncoderClassifier", "build_task", "labelled_clips", "reference_mels", "make_loss_fn", "LABELS"]
