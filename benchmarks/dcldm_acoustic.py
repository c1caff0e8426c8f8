"""DC-LDM at CPU size: does the acoustic condition help? Three systems on the embedded dataset's demo prompts.

    (i)   the codec LM's own audio (its tokens decoded by its EnCodec)      --lm_workdir   (configs/dcldm_lm.py:demo)
    (ii)  the U-Net without the acoustic path                              --text_workdir (configs/dcldm.py:demo_text)
    (iii) the same U-Net with it; sampling runs the LM first               --acoustic_workdir (configs/dcldm.py:demo)

Each samples the launch.demo prompt set (one prompt per instrument family, drums and two-event prompts) x
``--clips`` seeds; the in-domain evaluator scores them (prompted-family accuracy over the one-family prompts,
Wilson 95 % interval, in-domain FD). The table adds the differences (iii) - (ii) and (iii) - (i) with Newcombe's
95 % interval. Writes OUT/report.json and OUT/report.md.

    python -m benchmarks.dcldm_acoustic --lm_workdir LM --text_workdir TXT --acoustic_workdir AC --out OUT
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _config(workdir: str):
    import ml_collections

    with open(os.path.join(workdir, "config.json")) as f:
        return ml_collections.ConfigDict(json.load(f))


def lm_audio(workdir: str, prompts: list[str], seeds: list[int]) -> tuple[np.ndarray, int]:
    """(i): the LM's tokens for each prompt and seed, decoded by its codec -> (audio [N, S], sample rate)."""
    from tta_jax.codecs.registry import build_codec
    from tta_jax.pipelines.codec_lm import generate_tokens
    from tta_jax.train.checkpoint import load_params

    config = _config(workdir)
    params, _ = load_params(workdir, ema=True)
    codec = build_codec(config.codec)
    out = [np.asarray(codec.decode(np.asarray(generate_tokens(config, params, prompts, seed=s, workdir=workdir),
                                              np.float32))) for s in seeds]
    return np.concatenate(out), codec.sample_rate


def diffusion_audio(workdir: str, prompts: list[str], seeds: list[int]) -> tuple[np.ndarray, int]:
    """(ii) / (iii): the diffusion run's samples (its config: sampler, CFG; DC-LDM runs the LM inside)."""
    from tta_jax.pipelines.tta import generate_audio
    from tta_jax.train.checkpoint import load_params

    config = _config(workdir)
    params, _ = load_params(workdir, ema=True)
    out, sr = [], None
    for s in seeds:
        _, audio, codec = generate_audio(config, params, prompts, seed=s, workdir=workdir)
        out.append(np.asarray(audio))
        sr = codec.sample_rate
    return np.concatenate(out), sr


def main(argv=None):
    from benchmarks import write_report
    from launch.demo import evaluate, prompt_set
    from tta_jax.eval.metrics import difference_of_proportions

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lm_workdir", required=True)
    p.add_argument("--text_workdir", required=True)
    p.add_argument("--acoustic_workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=4, help="seeds per prompt")
    p.add_argument("--only", default="", help="comma-separated subset of lm,text,acoustic (others read from OUT)")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    prompts, families = prompt_set()
    seeds = list(range(a.clips))
    fams = [f for _ in seeds for f in families]
    runs = {"lm": (lm_audio, a.lm_workdir), "text": (diffusion_audio, a.text_workdir),
            "acoustic": (diffusion_audio, a.acoustic_workdir)}
    only = [x for x in a.only.split(",") if x] or list(runs)
    results = {}
    for name, (fn, workdir) in runs.items():
        path = os.path.join(a.out, f"{name}.json")
        if name not in only and os.path.exists(path):
            with open(path) as f:
                results[name] = json.load(f)
            continue
        t0 = time.time()
        audio, sr = fn(workdir, prompts, seeds)
        t1 = time.time()
        metrics, _ = evaluate(audio, fams, sr)
        v = metrics["prompt_family_vs_chance"]
        results[name] = {"workdir": workdir, "accuracy": v["accuracy"], "hits": int(v["hits"]), "n": int(v["n"]),
                         "ci_low": v["ci_low"], "ci_high": v["ci_high"], "p_vs_chance": v["p_value"],
                         "chance": metrics["chance"], "accuracy_all": metrics["prompt_family_accuracy_all"],
                         "fd": metrics["fd_generated_vs_test"], "fd_real": metrics["fd_real_valid_vs_test"],
                         "sample_s": t1 - t0, "clips": len(audio)}
        with open(path, "w") as f:
            json.dump(results[name], f, indent=1)
    labels = {"lm": "(i) LM audio", "text": "(ii) U-Net, text only", "acoustic": "(iii) U-Net + acoustic"}
    lines = ["| system | prompted-family acc. | hits | 95% CI | p vs chance | acc. incl. two-event | FD (real 1) | "
             "sampling s |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {labels[name]} | {r['accuracy']:.3f} | {r['hits']}/{r['n']} | [{r['ci_low']:.3f}, "
                     f"{r['ci_high']:.3f}] | {r['p_vs_chance']:.2g} | {r['accuracy_all']:.3f} | {r['fd']:.1f} "
                     f"({r['fd_real']:.1f}) | {r['sample_s']:.0f} |")
    diffs = {}
    for x, y in (("acoustic", "text"), ("acoustic", "lm"), ("lm", "text")):
        if x in results and y in results:
            d = difference_of_proportions(results[x]["hits"], results[x]["n"], results[y]["hits"], results[y]["n"])
            diffs[f"{x}-{y}"] = d
            lines.append(f"| {labels[x]} - {labels[y]} | {d['difference']:+.3f} | | [{d['ci_low']:+.3f}, "
                         f"{d['ci_high']:+.3f}] (Newcombe) | | | | |")
    write_report(a.out, {"results": results, "differences": diffs, "seeds": seeds, "prompts": prompts}, lines)


if __name__ == "__main__":
    main()
