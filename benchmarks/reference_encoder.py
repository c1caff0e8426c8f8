r"""Held-out accuracy of a pretrained reference encoder (``configs/serst_encoder.py``).

    python -m benchmarks.reference_encoder --workdir runs/serst_encoder [--per_family 4] [--references_per_sample K]
        [--out outputs/enc_eval]

The references are those of ``benchmarks/serst_reference.py``: ``per_family`` held-out single-event clips per
sound source of the 2000-clip, seed-0 embedded set (test split, then valid), their first ``crop_seconds`` (the
run's, 2 s) at 16 kHz. Each is classified by the run's own head (nearest prototype, cosine). A run trained on
another embedded seed (``--config.seed``) never saw these clips; a seed-0 run saw other clips of the same set.
With ``--references_per_sample K`` each clip is classified together with the next K - 1 held-out clips of its
source (the groups of ``serst_reference.py --references_per_sample K``): by the mean of their K logits (cosines).
Prints a table (accuracy, one-sided binomial test against chance 1/17) and writes ``report.json``.
"""
from __future__ import annotations

import json
import logging
import os
import sys

import numpy as np
from absl import flags

from benchmarks import write_report
from launch import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "reference-encoder run (configs/serst_encoder.py)")
_PER = flags.DEFINE_integer("per_family", 4, "held-out references per sound source")
_K = flags.DEFINE_integer("references_per_sample", 1, "classify each clip with the next K - 1 clips of its source "
                         "(mean logit)")
_OUT = flags.DEFINE_string("out", "outputs/reference_encoder_eval", "output directory")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    import jax.numpy as jnp
    from flax.core import meta

    from launch.runs import load_config
    from tta_jax.conditioners.reference_encoder import REFERENCE_MEL
    from tta_jax.conditioners.serst import encoder_config
    from tta_jax.data.embedded import held_out_clips, same_family_groups
    from tta_jax.eval.metrics import accuracy_vs_chance
    from tta_jax.train.checkpoint import load_params
    from tta_jax.train.reference_encoder import LABELS, EncoderClassifier, reference_mels

    os.makedirs(_OUT.value, exist_ok=True)
    config = load_config(_WORKDIR.value)
    params, step = load_params(_WORKDIR.value, ema=False)
    with open(os.path.join(_WORKDIR.value, "assets", LABELS)) as fh:
        classes = json.load(fh)["classes"]
    seconds = float(config.extra.get("crop_seconds", 2.0))
    rows = held_out_clips(2000, 0, _PER.value, REFERENCE_MEL.sample_rate)
    fams, keys = [r["family"] for r, _ in rows], [r["key"] for r, _ in rows]
    n = int(round(seconds * REFERENCE_MEL.sample_rate))
    mels = jnp.asarray(np.stack(reference_mels([a[:n].astype(np.float32) for _, a in rows])))
    model = EncoderClassifier(encoder_config(dict(config.model.encoder), "config.model.encoder"), len(classes),
                              float(config.extra.get("logit_scale", 16.0)))
    logits = np.asarray(model.apply({"params": meta.unbox(params)}, mels))            # [N, classes]
    if _K.value > 1:
        logits = np.stack([logits[g].mean(0) for g in same_family_groups(fams, _K.value)])
    pred = [classes[i] for i in logits.argmax(-1)]
    hits = [int(p == f) for p, f in zip(pred, fams)]
    vs = accuracy_vs_chance(sum(hits), len(hits), 1.0 / len(classes))
    report = {"workdir": _WORKDIR.value, "step": step, "seed": int(config.seed),
              "num_clips": int(config.extra.get("num_clips", 2000)), "per_family": _PER.value,
              "crop_seconds": seconds, "references_per_sample": _K.value, "accuracy": float(np.mean(hits)),
              "vs_chance": vs,
              "per_family_accuracy": {f: float(np.mean([h for h, g in zip(hits, fams) if g == f]))
                                      for f in sorted(set(fams))},
              "predicted": pred, "reference_keys": keys}
    lines = ["| encoder run | step | held-out accuracy | hits | x chance | one-sided p |",
             "|---|---|---|---|---|---|",
             f"| {_WORKDIR.value} | {step} | {np.mean(hits):.3f} | {sum(hits)}/{len(hits)} | "
             f"{vs['times_chance']:.1f} | {vs['p_value']:.1e} |"]
    write_report(_OUT.value, report, lines)


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    cli.run(main)
