r"""Edit audio with a trained latent text-to-audio run (any U-Net or DiT system)::

    python -m launch.edit --workdir W --out OUT sdedit   --audio in.wav --prompt "a cat meows" --strength 0.6
    python -m launch.edit --workdir W --out OUT inpaint  --audio in.wav --prompt "a door slams" --start 1 --end 2.5
    python -m launch.edit --workdir W --out OUT swap     --source_prompt "a dog barks" --prompt "a cat barks" --tau 0.4
    python -m launch.edit --workdir W --out OUT reweight --prompt "rain and thunder" --token thunder --weight 2
    python -m launch.edit --workdir W --out OUT attnmap  --prompt "a dog barks" [--audio in.wav --strength 0.8]

Modes (:mod:`tta_jax.pipelines.editing`): ``sdedit`` (SDEdit / text-guided style transfer; strength 0 returns
the source), ``inpaint`` (regenerate [--start, --end) seconds; every other latent frame is the source's
exactly), ``swap`` (prompt-to-prompt word swap: source and edited prompt from the same noise, the edit keeps
the source's cross-attention maps for the first --tau of the steps), ``reweight`` (scale the cross-attention of
--token words or positions by --weight), ``attnmap`` (per-token cross-attention maps as a PNG over the
spectrogram). ``swap``, ``reweight`` and ``attnmap`` start from noise, or from --audio with --strength.

Writes WAVs and spectrogram PNGs into --out (``edit.wav``/``edit.png``; ``swap``: ``source.*`` too;
``attnmap``: ``attention.png``) and prints their paths. The run is loaded as ``launch.sample`` loads it
(``W/config.json`` or --config, the latest or --step checkpoint, EMA params unless --no_ema).
"""
from __future__ import annotations

import logging
import os

from absl import app, flags

from launch import cli
from launch import sample  # its flags (--workdir, --config, --out, --prompt, --step, --seed, ...) are ours too
from tta_jax.errors import UserError

flags.adopt_module_key_flags(sample)

MODES = ("sdedit", "inpaint", "swap", "reweight", "attnmap")
REQUIRED = {"sdedit": ("audio", "prompt", "strength"), "inpaint": ("audio", "prompt", "start", "end"),
            "swap": ("source_prompt", "prompt"), "reweight": ("prompt", "token"), "attnmap": ("prompt",)}

_AUDIO = flags.DEFINE_string("audio", None, "Source audio file (resampled to the codec's rate).")
_SOURCE_PROMPT = flags.DEFINE_string("source_prompt", None, "swap: the source prompt.")
_STRENGTH = flags.DEFINE_float("strength", None, "SDEdit strength in [0, 1] (sdedit: required; others: with "
                               "--audio, default 1).")
_START = flags.DEFINE_float("start", None, "inpaint: start of the span to regenerate, seconds.")
_END = flags.DEFINE_float("end", None, "inpaint: end of the span to regenerate, seconds.")
_TAU = flags.DEFINE_float("tau", 0.4, "swap: fraction of the steps that keep the source's attention maps.")
_TOKEN = flags.DEFINE_multi_string("token", None, "reweight: a word of the prompt or a context position.")
_WEIGHT = flags.DEFINE_float("weight", 2.0, "reweight: factor on the chosen tokens' attention.")
_SECONDS = flags.DEFINE_float("seconds", None, "Length without --audio (default: the run's training length).")


def _need(value, flag: str, mode: str):
    if value is None:
        raise UserError(f"{mode} needs --{flag}")
    return value


def _in_range(value: float, flag: str, lo: float = 0.0, hi: float = 1.0) -> float:
    if not lo <= value <= hi:
        raise UserError(f"--{flag}={value} must be in [{lo}, {hi}]")
    return value


def _write(out_dir: str, stem: str, audio, latent, sample_rate: int, title: str) -> list[str]:
    import soundfile as sf

    from tta_jax.pipelines.tta import save_spectrogram_png

    base = os.path.join(out_dir, stem)
    sf.write(base + ".wav", audio, sample_rate)
    save_spectrogram_png(base + ".png", latent, title)
    return [base + ".wav", base + ".png"]


def run_edit(mode: str, s, *, out_dir: str, audio=None, prompt=None, source_prompt=None, strength=None,
             start=None, end=None, tau=0.4, tokens=None, weight=2.0, seconds=None, seed=0) -> list[str]:
    """One edit on an :class:`tta_jax.pipelines.editing.EditSession` -> the paths written into ``out_dir``."""
    from tta_jax.pipelines import editing

    sr = s.codec.sample_rate
    prompt = _need(prompt, "prompt", mode)
    frames = None if seconds is None else max(1, int(round(seconds * sr / s.codec.hop_length)))
    if strength is not None:
        _in_range(strength, "strength")
    if audio is None and strength is not None and mode != "sdedit":
        raise UserError("--strength applies to a source: pass --audio too")
    start_from = dict(audio=audio, strength=(1.0 if strength is None else strength) if audio is not None else None)
    if mode == "sdedit":
        r = editing.sdedit(s, _need(audio, "audio", mode), prompt, _need(strength, "strength", mode), seed=seed)
    elif mode == "inpaint":
        a, b = _need(start, "start", mode), _need(end, "end", mode)
        if not 0 <= a < b:
            raise UserError(f"--start={a} --end={b}: the span to regenerate is empty or negative")
        r = editing.inpaint(s, _need(audio, "audio", mode), prompt, a, b, seed=seed)
    elif mode == "swap":
        _in_range(tau, "tau")
        r = editing.word_swap(s, _need(source_prompt, "source_prompt", mode), prompt, tau, seed=seed,
                              num_frames=frames, **start_from)
        return (_write(out_dir, "source", r["audio"][0], r["latent"][0], sr, source_prompt)
                + _write(out_dir, "edit", r["audio"][1], r["latent"][1], sr, prompt))
    elif mode == "reweight":
        r = editing.reweight(s, prompt, list(_need(tokens, "token", mode)), weight, seed=seed, num_frames=frames,
                             **start_from)
    else:
        r = editing.attention_maps(s, prompt, seed=seed, num_frames=frames, **start_from)
        paths = _write(out_dir, "edit", r["audio"][0], r["latent"][0], sr, prompt)
        png = os.path.join(out_dir, "attention.png")
        editing.save_attention_png(png, r["latent"][0], r["maps"], r["labels"], prompt)
        return paths + [png]
    return _write(out_dir, "edit", r["audio"][0], r["latent"][0], sr, prompt)


def main(argv):
    if len(argv) != 2 or argv[1] not in MODES:
        raise app.UsageError(f"expected one mode, one of {list(MODES)}; got {argv[1:]}")
    mode = argv[1]
    workdir, out = sample._WORKDIR.value, sample._OUT.value
    if not workdir or not out:
        raise app.UsageError("--workdir and --out are required")
    prompts = list(sample._PROMPT.value or [])
    if len(prompts) > 1:
        raise UserError(f"one --prompt please, got {len(prompts)} (swap: --source_prompt for the source)")
    for flag in REQUIRED[mode]:  # before anything is loaded
        _need(prompts[0] if flag == "prompt" and prompts else flags.FLAGS[flag].value, flag, mode)
    cli.check_output_dir(out, "--out")
    config = sample.load_config(workdir, sample._CONFIG.value)
    step = sample._STEP.value
    sample.check_checkpoint(workdir, step)
    audio = None
    from tta_jax.pipelines import editing
    from tta_jax.train.checkpoint import load_params

    params, step = load_params(workdir, step=step, ema=not sample._RAW.value)
    logging.info("loaded %s params from step %d", "raw" if sample._RAW.value else "EMA", step)
    s = editing.session(config, params, workdir=workdir, steps=sample._STEPS.value, guidance=sample._GUIDANCE.value,
                        rescale=sample._RESCALE.value)
    if _AUDIO.value:
        from tta_jax.audio.io import AudioError, load_audio

        try:
            audio, _ = load_audio(_AUDIO.value, s.codec.sample_rate)
        except AudioError as e:
            raise UserError(f"--audio: {e}") from None
    os.makedirs(out, exist_ok=True)
    paths = run_edit(mode, s, out_dir=out, audio=audio, prompt=prompts[0],
                     source_prompt=_SOURCE_PROMPT.value, strength=_STRENGTH.value, start=_START.value,
                     end=_END.value, tau=_TAU.value, tokens=_TOKEN.value, weight=_WEIGHT.value,
                     seconds=_SECONDS.value, seed=sample._SEED.value)
    for p in paths:
        print(p)


if __name__ == "__main__":
    cli.run(main)
