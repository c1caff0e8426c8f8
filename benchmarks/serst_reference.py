r"""Does the reference decide the sound? SERST reference-family match on the embedded dataset.

    python -m benchmarks.serst_reference --serst_workdir outputs/tango_serst/work \
        --base_workdir outputs/tango_demo/workdir [--per_family 4] [--out outputs/tango_serst/eval] \
        [--negative prompt] [--guidance 8] [--data outputs/serst_data]

For each of the 17 sound sources, ``per_family`` held-out clips (the test split of the embedded set the runs were
trained on, single-event, rendered at 16 kHz; valid split when the test split has too few) are references. Every
sample gets a prompt that names no instrument (a fixed cycle of pattern/register/dynamics/tempo sentences) and:

- ``serst``: the SERST run with that reference (``--references_per_sample K``: and the next K - 1 held-out clips
  of the same source; CFG against the empty prompt without reference; with
  ``--negative prompt`` against the same prompt without reference);
- ``base``: the run the adapter was trained on, same prompts and seeds, no reference.

With ``--data DIR`` (the run's precomputed reference pairs) it also reports the training loss of the SERST run on
``--loss_batches`` batches with the right reference, another row's reference and none (the same noise draws): how
much the frozen base gains from the reference at all, and how much of that is the reference's *own* sound.

The in-domain evaluator (tta_jax.eval.indomain) predicts each clip's family; the figure is how often it equals the
*reference's* family (chance 1/17), with a one-sided binomial test against chance. Prints a table and writes
``report.json``.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np
from absl import flags

from benchmarks import write_report
from launch import cli

_SERST = flags.DEFINE_string("serst_workdir", None, "SERST training run (configs/tango.py:demo_serst)")
_BASE = flags.DEFINE_string("base_workdir", None, "the base run it was trained on (configs/tango.py:demo)")
_PER = flags.DEFINE_integer("per_family", 4, "references (and samples) per sound source")
_OUT = flags.DEFINE_string("out", "outputs/serst_eval", "output directory")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_STEPS = flags.DEFINE_integer("steps", None, "sampler steps (default: the config's)")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 2000, "size of the embedded set the runs were trained on (seed 0)")
_GUIDANCE = flags.DEFINE_float("guidance", None, "CFG scale for the SERST run (default: its config's)")
_NEGATIVE = flags.DEFINE_enum("negative", None, ["empty", "prompt"],
                              "CFG's unconditioned branch for the SERST run (default: its config's sampler.negative): "
                              "'prompt' = the same prompt without reference, i.e. guidance on the reference alone")

NEUTRAL_PROMPTS = ("A short melody in a high register, soft and slow.",
                   "Repeated notes in a mid register, loud and fast.",
                   "A chord in a low register, soft and slow.",
                   "An arpeggio in a mid register, loud and slow.")
_K = flags.DEFINE_integer("references_per_sample", 1,
                          "K references per SERST sample: the sample's own held-out clip and the next K - 1 held-out "
                          "clips of the same source (K <= per_family)")
_DATA = flags.DEFINE_string("data", None, "precomputed reference pairs of the SERST run: also report the loss gap")
_LOSS_BATCHES = flags.DEFINE_integer("loss_batches", 40, "batches for the loss gap (--data)")
log = logging.getLogger("serst_reference")


def reference_clips(num_clips: int, seed: int, per_family: int, sample_rate: int = 16000):
    """-> (audio [N, S] at ``sample_rate``, family per clip, keys) of
    :func:`tta_jax.data.embedded.held_out_clips`."""
    from tta_jax.data.embedded import held_out_clips

    rows = held_out_clips(num_clips, seed, per_family, sample_rate)
    return (np.stack([a for _, a in rows]).astype(np.float32), [r["family"] for r, _ in rows],
            [r["key"] for r, _ in rows])


def _load(workdir):
    from launch.runs import load_config
    from tta_jax.train.checkpoint import load_params

    config = load_config(workdir)
    params, step = load_params(workdir)
    return config, params, step


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    from tta_jax.eval.indomain import score_generated as evaluate
    from tta_jax.data.embedded import SOURCES, same_family_groups
    from tta_jax.eval.metrics import accuracy_vs_chance
    from tta_jax.pipelines.tta import generate_audio

    os.makedirs(_OUT.value, exist_ok=True)
    sc, sp, s_step = _load(_SERST.value)
    if _NEGATIVE.value:
        sc.sampler.negative = _NEGATIVE.value
    bc, bp, b_step = _load(_BASE.value)
    refs, fams, keys = reference_clips(_NUM_CLIPS.value, 0, _PER.value)
    per_sample = same_family_groups(fams, _K.value)
    prompts = [NEUTRAL_PROMPTS[i % len(NEUTRAL_PROMPTS)] for i in range(len(fams))]
    runs = {}
    t0 = time.time()
    kw = {"seed": _SEED.value, "steps": _STEPS.value, "num_frames": int(sc.data.crop_frames)}
    grouped = [[refs[j] for j in g] for g in per_sample]
    _, a_serst, codec = generate_audio(sc, sp, prompts, references=grouped, workdir=_SERST.value,
                                       guidance=_GUIDANCE.value, **kw)
    runs["serst"] = a_serst
    _, runs["base"], _ = generate_audio(bc, bp, prompts, workdir=_BASE.value, **kw)
    sample_s = time.time() - t0
    report = {"serst_workdir": _SERST.value, "serst_step": s_step, "base_workdir": _BASE.value, "base_step": b_step,
              "per_family": _PER.value, "num_samples": len(fams), "prompts": list(NEUTRAL_PROMPTS),
              "reference_keys": keys, "references_per_sample": _K.value, "sampler": dict(sc.sampler),
              "serst_guidance": _GUIDANCE.value,
              "sampling_seconds": sample_s,
              "chance": 1.0 / len(SOURCES)}
    lines = ["| condition | reference-family match | hits | x chance | one-sided p |", "|---|---|---|---|---|"]
    for name, audio in runs.items():
        m, _ = evaluate(audio, [(f,) for f in fams], codec.sample_rate)
        hits = m["per_prompt_hit"]
        vs = accuracy_vs_chance(sum(hits), len(hits), 1.0 / len(SOURCES))
        per_family = {f: float(np.mean([h for h, g in zip(hits, fams) if g == f])) for f in SOURCES if f in fams}
        report[name] = {"match_rate": float(np.mean(hits)), "vs_chance": vs, "predicted": m["predicted"],
                        "per_family": per_family, "fd_generated_vs_test": m["fd_generated_vs_test"]}
        lines.append(f"| {name} | {np.mean(hits):.3f} | {sum(hits)}/{len(hits)} | {vs['times_chance']:.1f} | "
                     f"{vs['p_value']:.1e} |")
    if _DATA.value:
        from flax.core import meta

        from tta_jax.eval.reference_gap import reference_loss_gap

        gap = reference_loss_gap(sc, meta.unbox(sp), _DATA.value, _LOSS_BATCHES.value)
        report["loss_gap"] = gap
        lines += ["", "| loss on training batches | right reference | another row's | none |", "|---|---|---|---|",
                  f"| mean (minus right, s.e.) | {gap['right']:.4f} | {gap['other']:.4f} "
                  f"({gap['other_minus_right'][0]:+.4f} +- {gap['other_minus_right'][1]:.4f}) | {gap['none']:.4f} "
                  f"({gap['none_minus_right'][0]:+.4f} +- {gap['none_minus_right'][1]:.4f}) |"]
    write_report(_OUT.value, report, lines)


if __name__ == "__main__":
    cli.run(main)
