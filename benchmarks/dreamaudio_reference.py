r"""Do the references decide what is heard? DreamAudio on the embedded dataset, with and without references.

    python -m benchmarks.dreamaudio_reference --workdir outputs/dreamaudio_demo/workdir [--per_family 4] \
        [--out outputs/dreamaudio_demo/eval]

For each of the 17 sound sources X, ``per_family`` held-out single-event clips (test split, then valid, of the
embedded set the run was trained on) are reference 0; reference 1 is a held-out clip of the next source Y (so
the pair has two distinct concepts, as the concatenation targets the run learnt from). The prompt names no
instrument: the references' label-free captions (:func:`tta_jax.data.embedded.neutral_caption`) joined as the
concatenation builder joins captions. Conditions (same prompts and seeds):

- ``refs_captioned``: both references with their own captions (which name the instrument), the DreamAudio use;
- ``refs_neutral``: both references with label-free captions (only the audio says which instrument);
- ``no_refs``: every reference slot masked (the same network as a plain text-conditioned model).

The in-domain evaluator (tta_jax.eval.indomain) scores each half of the 4 s clip (the target lays reference k
out in half k): **X rate** = how often the first half's top family is X (chance 1/17), **Y rate** the same for
the second half, **pair** = the predicted two-family set equals {X, Y}. CLAP_A is the cosine similarity between
the generated clip and its references in the in-domain evaluator's embedding (no CLAP weights ship with the
package; LAION CLAP_A needs ``launch.evaluate --clap``). Prints a table, writes ``report.json`` / ``report.md``.
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

_WORK = flags.DEFINE_string("workdir", None, "DreamAudio training run (configs/dreamaudio.py:demo)")
_PER = flags.DEFINE_integer("per_family", 4, "reference pairs (and samples) per sound source")
_OUT = flags.DEFINE_string("out", "outputs/dreamaudio_eval", "output directory")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_STEPS = flags.DEFINE_integer("steps", None, "sampler steps (default: the config's)")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 2000, "size of the embedded set the run was trained on (seed 0)")
_CONDITIONS = flags.DEFINE_list("conditions", ["refs_captioned", "refs_neutral", "no_refs"],
                                "conditions to sample (module docstring)")
log = logging.getLogger("dreamaudio_reference")


def held_out(num_clips: int, seed: int, per_family: int, sample_rate: int, seconds: float):
    """-> {source: [(audio [round(seconds * sample_rate)], row), ...]}: the first ``seconds`` of the held-out
    single-event clips of :func:`tta_jax.data.embedded.held_out_clips`."""
    from tta_jax.data.embedded import SOURCES, held_out_clips

    n = int(round(seconds * sample_rate))
    out = {f: [] for f in SOURCES}
    for row, audio in held_out_clips(num_clips, seed, per_family, sample_rate):
        out[row["family"]].append((np.asarray(audio[:n], np.float32), row))
    return out


def pairs(clips: dict, per_family: int):
    """-> list of ((audio X, row X), (audio Y, row Y)) with Y the next source (cyclic)."""
    names = list(clips)
    out = []
    for a, x in enumerate(names):
        y = names[(a + 1) % len(names)]
        for j in range(min(per_family, len(clips[x]), len(clips[y]))):
            out.append((clips[x][j], clips[y][(j + 1) % len(clips[y])]))
    return out


def half_top(out: dict) -> np.ndarray:
    """Evaluator outputs -> top family index of each half [N, 2]."""
    from tta_jax.eval.indomain import half_scores

    return half_scores(out["family_frames"]).argmax(-1)


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    from data_pipeline.customized import concat_caption
    from launch.runs import load_config
    from tta_jax.data.embedded import SOURCES, neutral_caption
    from tta_jax.eval.indomain import get_or_train, logmel, predicted_family_sets
    from tta_jax.eval.metrics import accuracy_vs_chance, clap_audio_score
    from tta_jax.pipelines.tta import generate_audio
    from tta_jax.train.checkpoint import load_params

    os.makedirs(_OUT.value, exist_ok=True)
    config = load_config(_WORK.value)
    params, step = load_params(_WORK.value)
    seconds = float(config.conditioner.reference.seconds)
    sr = 22050
    ps = pairs(held_out(_NUM_CLIPS.value, 0, _PER.value, sr, seconds), _PER.value)
    fx = [SOURCES.index(x[1]["family"]) for x, _ in ps]
    fy = [SOURCES.index(y[1]["family"]) for _, y in ps]
    prompts = [concat_caption([neutral_caption(x[1]), neutral_caption(y[1])]) for x, y in ps]
    refs = [[x[0], y[0]] for x, y in ps]
    conditions = {"refs_captioned": ([[x[1]["caption"], y[1]["caption"]] for x, y in ps], refs),
                  "refs_neutral": ([[neutral_caption(x[1]), neutral_caption(y[1])] for x, y in ps], refs),
                  "no_refs": (None, None)}
    unknown = sorted(set(_CONDITIONS.value) - set(conditions))
    if unknown:
        raise SystemExit(f"--conditions: unknown {unknown}; choose from {sorted(conditions)}")
    conditions = {k: v for k, v in conditions.items() if k in _CONDITIONS.value}
    ev = get_or_train()
    ref_emb = ev.predict(logmel(np.stack([a for r in refs for a in r])))["embedding"]
    report = {"workdir": _WORK.value, "step": step, "per_family": _PER.value, "num_samples": len(ps),
              "prompts": prompts[:4], "sampler": dict(config.sampler), "chance": 1.0 / len(SOURCES),
              "clap_a_embedder": "in-domain evaluator embedding (tta_jax.eval.indomain), not LAION CLAP"}
    lines = ["| condition | X rate (1st half) | Y rate (2nd half) | pair {X, Y} | X vs chance p | CLAP_A (in-domain) |",
             "|---|---|---|---|---|---|"]
    t0 = time.time()
    for name, (caps, rs) in conditions.items():
        _, audio, codec = generate_audio(config, params, prompts, seed=_SEED.value, steps=_STEPS.value,
                                         workdir=_WORK.value, references=rs, reference_captions=caps)
        if codec.sample_rate != sr:
            raise SystemExit(f"the evaluator reads 22.05 kHz; this run's codec runs at {codec.sample_rate} Hz")
        out = ev.predict(logmel(audio))
        top = half_top(out)
        hx = (top[:, 0] == np.asarray(fx)).astype(int)
        hy = (top[:, 1] == np.asarray(fy)).astype(int)
        pair = [int(p == sorted({a, b})) for p, a, b in zip(predicted_family_sets(out, [2] * len(ps)), fx, fy)]
        vs = accuracy_vs_chance(int(hx.sum()), len(hx), 1.0 / len(SOURCES))
        clap_a = clap_audio_score(out["embedding"], ref_emb, [[2 * i, 2 * i + 1] for i in range(len(ps))])
        report[name] = {"x_rate": float(hx.mean()), "y_rate": float(hy.mean()), "pair_rate": float(np.mean(pair)),
                        "x_vs_chance": vs, "clap_a_indomain": float(clap_a),
                        "predicted_halves": [[SOURCES[a], SOURCES[b]] for a, b in top.tolist()]}
        lines.append(f"| {name} | {hx.mean():.3f} ({hx.sum()}/{len(hx)}) | {hy.mean():.3f} | {np.mean(pair):.3f} | "
                     f"{vs['p_value']:.1e} | {clap_a:.3f} |")
        log.info("%s done (%.0f s)", name, time.time() - t0)
    report["sampling_seconds"] = time.time() - t0
    write_report(_OUT.value, report, lines)


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    cli.run(main)
