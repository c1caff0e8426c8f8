"""`make demo`: the main job on the embedded dataset, end to end, on CPU.

  python -m launch.demo [--out outputs/demo] [--num_clips 2000] [--train_minutes 14]
                        [--config.train.total_steps=800 ...]   (overrides of configs/ezaudio_demo.py)

Steps (each resumes: re-running skips what is done and continues training from the last checkpoint):
 1. render the embedded dataset and precompute it with the config's codec and text encoder (the demo DiT's:
    mel-codec latents + MiniLM text states) -> OUT/data
 2. train the config's model (default: the small EzAudio-style DiT, configs/ezaudio_demo.py; any system config
    with a codec that decodes to audio works, e.g. configs/auffusion.py:demo) -> OUT/workdir, stopping at
    train.total_steps or after --train_minutes of training, whichever comes first (checkpointed)
 3. sample one prompt per instrument family, drums, and two two-event prompts -> OUT/samples/*.wav
 4. evaluate with the in-domain evaluator (prompted-family accuracy, in-domain FD vs the real test
    split, and the real-vs-real baseline) -> OUT/report.md, OUT/report.json, OUT/grid.png
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

from absl import flags
from ml_collections import config_flags

from launch import cli

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = cli.define_config_file("config", os.path.join(_ROOT, "configs", "ezaudio_demo.py"),
                                 "experiment config")
_OUT = flags.DEFINE_string("out", "outputs/demo", "output directory")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 2000, "embedded dataset size (4 s clips)")
_MINUTES = flags.DEFINE_float("train_minutes", 14.0, "wall-clock training budget (minutes)")
_PER_PROMPT = flags.DEFINE_integer("samples_per_prompt", 4, "clips per prompt (accuracy is over all of them)")

log = logging.getLogger("demo")

FAMILY_PROMPTS = {
    "piano": "a piano playing a short melody",
    "chromatic percussion": "a vibraphone playing an arpeggio",
    "organ": "an organ playing a chord",
    "guitar": "an acoustic guitar playing repeated notes",
    "bass": "a bass playing a short melody in a low register",
    "strings": "a violin playing a slow melody",
    "ensemble": "a string ensemble playing a chord",
    "brass": "a trumpet playing loud repeated notes",
    "reed": "a saxophone playing a short melody",
    "pipe": "a flute playing a high melody",
    "synth lead": "a synth lead playing a fast arpeggio",
    "synth pad": "a soft synth pad playing a chord",
    "synth effects": "a synth effect playing a single note",
    "ethnic": "a sitar playing a short melody",
    "percussive": "a steel drum playing repeated notes",
    "sound effects": "a sound effect of a single note",
    "drums": "a fast drum beat",
}
TWO_EVENT_PROMPTS = {  # prompt -> its two families (first event, second event)
    "a flute melody, followed by a snare roll": ("pipe", "drums"),
    "a piano chord, followed by a fast drum beat": ("piano", "drums"),
}


def prompt_set() -> tuple[list[str], list[tuple[str, ...]]]:
    """The fixed demo prompts and the families each was prompted with (one, or two for two-event)."""
    prompts = list(FAMILY_PROMPTS.values()) + list(TWO_EVENT_PROMPTS)
    families = [(f,) for f in FAMILY_PROMPTS] + list(TWO_EVENT_PROMPTS.values())
    return prompts, families



def precompute(out_dir: str, num_clips: int, system) -> str:
    """The embedded dataset encoded with the system config's own codec and text encoder (``system.codec``,
    ``system.text``: the mel codec + MiniLM for configs/ezaudio_demo.py) -> OUT/data."""
    from data_pipeline import build as P
    from data_pipeline import precompute_config
    from tta_jax.data.loader import read_manifest

    data_dir = os.path.join(out_dir, "data")
    if os.path.exists(os.path.join(data_dir, "manifest.json")):
        log.info("precompute: %s exists, reusing", data_dir)
        return data_dir
    c = precompute_config.get_config()
    c.source = "embedded"
    c.embedded.num_clips = num_clips
    c.embedded.workers = 2
    c.audio.sample_rate = 0  # the codec's
    os.makedirs(data_dir, exist_ok=True)
    P.run(c, data_dir, system=system)
    m = read_manifest(data_dir)
    log.info("precompute: %d records, %d skipped", m["num_records"], m["num_skipped"])
    return data_dir


def train(config, workdir: str, minutes: float):
    from tta_jax.config import validate_config
    from tta_jax.train.loop import train as run_train

    validate_config(config)
    os.makedirs(workdir, exist_ok=True)  # the workdir samples on its own: launch.sample --workdir reads this
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    t0 = time.time()
    from tta_jax.train.preemption import BudgetGuard

    res = run_train(config, workdir, guard=BudgetGuard(minutes * 60))
    log.info("train: steps %d -> %d (%s) in %.1f min", res.start_step, res.step, res.reason,
             (time.time() - t0) / 60)
    return res, time.time() - t0


def write_grid(path, mels, titles):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(mels)
    cols = 4
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.2 * rows))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(mels[i].T, origin="lower", aspect="auto", cmap="magma")
            ax.set_title(titles[i][:40], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def evaluate(audio, families, sample_rate: int = 22050):
    """The in-domain evaluator's scores of generated audio (:func:`tta_jax.eval.indomain.score_generated`)."""
    from tta_jax.eval.indomain import score_generated

    return score_generated(audio, families, sample_rate)


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    import numpy as np
    import soundfile as sf

    out = _OUT.value
    cli.check_output_dir(out, "--out")
    os.makedirs(out, exist_ok=True)
    t_all = time.time()
    config = _CONFIG.value
    config_name = os.path.relpath(config_flags.get_config_filename(flags.FLAGS["config"]), _ROOT)
    data_dir = precompute(out, _NUM_CLIPS.value, config)
    with config.unlocked():
        config.data.precomputed_dir = os.path.abspath(data_dir)
    res, train_s = train(config, os.path.join(out, "workdir"), _MINUTES.value)

    prompts, families = prompt_set()
    t0 = time.time()
    from tta_jax.pipelines.tta import file_stem, generate_audio

    params = res.state.ema_params if res.state.ema_params is not None else res.state.params
    k = _PER_PROMPT.value
    lat, audio, codec = generate_audio(config, params, [p for p in prompts for _ in range(k)])
    audio_all = audio
    audio = audio[::k]  # the first clip of each prompt is written and shown
    sample_s = time.time() - t0
    sdir = os.path.join(out, "samples")
    os.makedirs(sdir, exist_ok=True)
    for i, (p, a) in enumerate(zip(prompts, audio)):
        sf.write(os.path.join(sdir, file_stem(i, p) + ".wav"), a, codec.sample_rate)

    metrics, mels_gen = evaluate(audio_all, [f for f in families for _ in range(k)], codec.sample_rate)
    mels_gen = mels_gen[::k]
    write_grid(os.path.join(out, "grid.png"), mels_gen, prompts)
    from tta_jax.pipelines.tta import token_pca_of

    pca = token_pca_of(config)
    whiten = float(config.data.get("token_pca_whiten_below", 0.0))
    pca_info = None if pca is None else dict(k=pca.k, token_values=pca.dim, explained=pca.explained,
                                             whiten_below=whiten)
    report = dict(config=config_name, steps=res.step, train_seconds_this_run=train_s, token_pca=pca_info,
                  sampling_seconds=sample_s, sampler=dict(config.sampler), num_clips=_NUM_CLIPS.value,
                  samples_per_prompt=k,
                  total_seconds_this_run=time.time() - t_all, **metrics)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    lines = ["# tta-jax demo report", "",
             f"- model: {config.name} ({config_name}, config.model.name={config.model.get('name', 'dit')}), "
             f"trained {res.step} steps",
             *([] if pca is None else [f"- token PCA: {pca.k} of {pca.dim} token values, {100 * pca.explained:.1f}% of "
                                       f"the training tokens' variance" + (
                                           f", directions under variance {whiten:g} whitened" if whiten else "")]),
             f"- prompted-family accuracy (in-domain evaluator): {metrics['prompt_family_accuracy']:.2f} "
             f"over {len(FAMILY_PROMPTS)} one-family prompts x {k} clips (chance {metrics['chance']:.3f}); "
             f"{metrics['prompt_family_accuracy_all']:.2f} with the two-event prompts (both families right)",
             "- vs chance: {hits:.0f}/{n:.0f} hits, {times_chance:.1f}x chance, 95% Wilson interval "
             "[{ci_low:.2f}, {ci_high:.2f}], one-sided binomial p = {p_value:.1e}".format(
                 **metrics["prompt_family_vs_chance"]),
             f"- in-domain FD, generated vs real test: {metrics['fd_generated_vs_test']:.2f} "
             f"(real valid vs real test baseline: {metrics['fd_real_valid_vs_test']:.2f})",
             f"- evaluator accuracy on real test renders: {metrics['evaluator_test_accuracy']}",
             f"- sampling: {config.sampler.name} {config.sampler.num_steps} steps, CFG "
             f"{config.sampler.guidance_scale} rescale {config.sampler.guidance_rescale}: {sample_s:.1f} s "
             f"for {len(prompts)} prompts x {k} clips", "",
             "| # | prompt | prompted | predicted families | hits |", "|---|---|---|---|---|"]
    for i, fam in enumerate(families):
        hits = metrics["per_prompt_hit"][i * k:(i + 1) * k]
        preds = ", ".join(metrics["predicted"][i * k:(i + 1) * k])
        lines.append(f"| {i} | {prompts[i]} | {' + '.join(fam)} | {preds} | {sum(hits)}/{k} |")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
