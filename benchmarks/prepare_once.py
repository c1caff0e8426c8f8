r"""Reference features computed once per generation vs at every sampler step (``Denoiser.prepare``).

    python -m benchmarks.prepare_once [--batch 4] [--repeats 3] [--out outputs/prepare_once]

For the CPU demo sizes of the two reference-conditioned systems (``configs/dreamaudio.py:demo``: K = 2 reference
latents through a second U-Net encoder, Euler 25 steps, CFG 2; ``configs/tango.py:demo_serst``: a ResNet-SE
reference encoder + text x reference attention -> style, DDIM 50, CFG 3), random weights (the zero-initialised
reference layers are perturbed so that the references change the output), random conditions of the sizes the
demo data has: seconds per ``Generator.generate`` call (median of ``repeats`` after a compile) with the
sampler's ``prepare`` (the features before the loop) and with the per-step path (``prepare`` as the identity,
as before it existed), the compile seconds of each, how many convolutions of the compiled sampler sit inside its
loop (XLA's loop-invariant code motion may hoist the per-step path's reference encoder by itself), and the
largest difference between the two outputs.
Prints a table and writes ``report.json`` / ``report.md``.
"""
from __future__ import annotations

import functools
import os
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax.core import meta

from benchmarks import write_report
from launch import cli

_BATCH = flags.DEFINE_integer("batch", 4, "clips per generate call")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls per row (after one compiling call)")
_OUT = flags.DEFINE_string("out", "outputs/prepare_once", "output directory")

TEXT_LEN, TEXT_DIM = 32, 384          # MiniLM states of the demo configs


def _system(name: str):
    """-> (config, latent shape [H, T, C], reference conditions of one example {key: [1, ...]})."""
    if name == "dreamaudio":
        from configs.dreamaudio import get_config

        c = get_config("demo")
        k = int(c.conditioner.reference.count)
        shape, ref_t = (20, 86, 4), 43          # 4 s targets, 2 s references (docs/experiments.md)
        refs = {"ref_latent": np.random.RandomState(1).randn(1, k, 20, ref_t, 4).astype(np.float32),
                "ref_text": np.random.RandomState(2).randn(1, k, TEXT_LEN, TEXT_DIM).astype(np.float32),
                "ref_text_mask": np.ones((1, k, TEXT_LEN), bool), "reference_mask": np.ones((1, k), bool)}
        return c, shape, refs
    from configs.tango import get_config
    from tta_jax.conditioners.reference_encoder import REFERENCE_MEL

    c = get_config("demo_serst")
    k = int(c.conditioner.get("reference", {}).get("count", 1))
    frames = REFERENCE_MEL.num_frames(int(round(2.0 * REFERENCE_MEL.sample_rate)))
    refs = {"reference": np.random.RandomState(1).randn(1, k, frames, REFERENCE_MEL.n_mels).astype(np.float32),
            "reference_mask": np.ones((1, k), bool)}
    return c, (20, 86, 4), refs


def _perturbed_params(den, shape):
    text = {"text": np.zeros((1, TEXT_LEN, TEXT_DIM), np.float32), "text_mask": np.ones((1, TEXT_LEN), bool)}
    p = meta.unbox(den.init(jax.random.PRNGKey(0), shape, TEXT_LEN, text))
    leaves, treedef = jax.tree_util.tree_flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [v + 0.02 * jax.random.normal(k, v.shape, v.dtype) for v, k in zip(leaves, keys)])


def loop_convolutions(gen, params, cond, uncond, shape) -> tuple[int, int]:
    """-> (convolutions in the compiled sampler, those inside its while-loop bodies), from XLA's optimised HLO
    (after its loop-invariant code motion): what runs once vs at every step."""
    txt = jax.jit(functools.partial(gen.traceable, shape=shape)).lower(
        params, cond, uncond, jax.random.PRNGKey(0)).compile().as_text()
    comps = {}
    for block in re.split(r"\n(?=\S)", txt):
        m = re.match(r"(?:ENTRY )?%?([\w.\-]+)", block)
        if m:
            comps[m.group(1)] = block
    inside, todo = set(), re.findall(r"body=%?([\w.\-]+)", txt)
    while todo:                                  # loop bodies and every computation they call
        name = todo.pop()
        if name in inside or name not in comps:
            continue
        inside.add(name)
        todo += re.findall(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)", comps[name])
    conv = re.compile(r" convolution\(")
    return len(conv.findall(txt)), sum(len(conv.findall(comps[n])) for n in inside)


def _time(gen, params, cond, uncond, shape, repeats: int):
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    out = np.asarray(gen.generate(params, cond, uncond, key, shape))
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(gen.generate(params, cond, uncond, key, shape))
        runs.append(time.perf_counter() - t0)
    med = statistics.median(runs)
    return out, med, first - med


def measure(name: str, batch: int, repeats: int) -> dict:
    from tta_jax.denoisers.factory import Denoiser
    from tta_jax.pipelines.tta import denoiser_of, generator_from_config

    config, shape, refs = _system(name)
    den = denoiser_of(config)
    params = _perturbed_params(den, shape)
    rs = np.random.RandomState(3)
    cond = {"text": rs.randn(batch, TEXT_LEN, TEXT_DIM).astype(np.float32),
            "text_mask": np.ones((batch, TEXT_LEN), bool),
            **{k: np.repeat(v, batch, 0) for k, v in refs.items()}}
    uncond = {"text": np.zeros((1, TEXT_LEN, TEXT_DIM), np.float32), "text_mask": np.ones((1, TEXT_LEN), bool),
              "reference_mask": np.zeros(refs["reference_mask"].shape, bool)}
    gen = generator_from_config(den, config)
    fast, t_fast, c_fast = _time(gen, params, cond, uncond, shape, repeats)
    conv_fast = loop_convolutions(gen, params, cond, uncond, shape)
    orig = Denoiser.prepare
    try:
        Denoiser.prepare = lambda self, params, cond, x=None: dict(cond)    # the per-step path
        jax.clear_caches()      # equal Generators share jax's trace and compile caches
        gen = generator_from_config(den, config)
        slow, t_slow, c_slow = _time(gen, params, cond, uncond, shape, repeats)
        conv_slow = loop_convolutions(gen, params, cond, uncond, shape)
    finally:
        Denoiser.prepare = orig
    s = config.sampler
    return {"system": name, "config": config.name if "name" in config else name, "batch": batch,
            "sampler": f"{s.name} {s.num_steps} steps, CFG {s.guidance_scale}", "latent": list(shape),
            "per_step_s": round(t_slow, 3), "prepared_s": round(t_fast, 3), "speedup": round(t_slow / t_fast, 2),
            "compile_per_step_s": round(c_slow, 1), "compile_prepared_s": round(c_fast, 1),
            "max_abs_diff": float(np.abs(fast - slow).max()), "output_max_abs": float(np.abs(slow).max()),
            "convs_total_in_loop_per_step": list(conv_slow), "convs_total_in_loop_prepared": list(conv_fast)}


def main(argv):
    del argv
    os.makedirs(_OUT.value, exist_ok=True)
    rows = [measure(n, _BATCH.value, _REPEATS.value) for n in ("dreamaudio", "serst")]
    lines = [f"# Reference features once per generation vs per sampler step ({jax.devices()[0].device_kind}, "
             f"{os.cpu_count()} CPUs, batch {_BATCH.value}, median of {_REPEATS.value})", "",
             "| system | sampler | per step (s) | prepared once (s) | speed-up | compile per-step / prepared (s) "
             "| convolutions in the compiled loop, per-step / prepared | max abs diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['sampler']} | {r['per_step_s']:.3f} | {r['prepared_s']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['compile_per_step_s']:.1f} / {r['compile_prepared_s']:.1f} | "
                     f"{r['convs_total_in_loop_per_step'][1]} of {r['convs_total_in_loop_per_step'][0]} / "
                     f"{r['convs_total_in_loop_prepared'][1]} of {r['convs_total_in_loop_prepared'][0]} | "
                     f"{r['max_abs_diff']:.2e} (outputs up to {r['output_max_abs']:.2f}) |")
    write_report(_OUT.value, {"rows": rows, "jax": jax.__version__}, lines)


if __name__ == "__main__":
    cli.run(main)
