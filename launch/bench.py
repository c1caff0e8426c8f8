"""Benchmarks: JAX vs PyTorch for the denoisers (train step, 100-step DDIM + CFG sampling), matmul peak,
data loader.

  python -m launch.bench {all,dit,unet,lora,scaling,profile,data,peak} [--json out.json] [--plot out.png]
                         [--quick] [--repeats N] [--xla_flags "..."] [--threads N]

What is measured (every number is the **median** of ``--repeats`` timed runs after warm-up/compile):

- ``peak``: float32 ``jnp.dot`` / ``torch.mm`` of two n x n matrices -> FLOP/s (2 n^3 / time). The JAX
  figure is "the machine's matmul peak" that the "% of peak" columns use.
- ``dit``: EzAudio-DiT (``tta_jax.denoisers.dit``) at a CPU-sized config vs the same function in PyTorch
  (``benchmarks/torch_dit.py``, on the official state-dict names; our params come from the EzAudio
  converter, so both compute the same function -- a forward parity check is reported as ``max_rel_err``).
  * train: one optimizer step (v-prediction MSE, zero-terminal-SNR scaled_linear schedule, AdamW).
    JAX: ``make_train_step`` (EMA off), ``jax.jit`` with the state donated; torch: eager forward,
    backward, ``torch.optim.AdamW``.
  * sample: 100 DDIM steps (eta 1, trailing) with CFG 5 / rescale 0.75, cond and uncond batched in one
    model call. JAX: one ``jit`` around ``D.sample`` (a ``lax.scan``); torch: diffusers ``DDIMScheduler``
    loop under ``torch.inference_mode``.
- ``unet``: Tango-layout U-Net (``tta_jax.denoisers.unet``) vs diffusers ``UNet2DConditionModel`` with
  the same weights (``tta_jax.convert.diffusers_unet``), same two tasks.
- ``lora``: JAX only, full fine-tuning vs LoRA (rank 8 on attention q/k/v/out, self + cross, base frozen by
  ``config.optimizer.trainable = ("lora/.*",)``) for the DiT and the U-Net above (random init), same train
  step as ``train``. Per variant: step time, trained params (count, fraction of all params), optimizer-state
  bytes, and peak memory twice: XLA ``memory_analysis`` of the compiled step (argument + output + temp -
  alias) and the peak RSS (VmHWM) of a fresh subprocess that ran only that variant (``LORA_MEMORY_NOTE``).
  Each JAX train/sample row also has ``compile_s`` (trace + lower + compile; small when the persistent
  compilation cache, on by default as for every ``launch.*`` command, already holds the program) and
  :func:`compiled_memory` (``compiled_peak_bytes``: XLA's argument + output + temp - alias of that program);
  ``train step remat`` is the same step with every block under ``remat`` (JAX only, for time and memory).
- ``scaling``: JAX only, random params: the DiT and U-Net train step and one sampler step (DDIM + CFG) at
  1x, 2x, 4x the clip of :data:`SCALE_BASE` and batch 1, 4, 16: time, FLOP/s, % of peak, compile seconds,
  XLA peak memory per point; ``--json X.json`` also writes the plot ``X.png`` (time per clip vs tokens).
- ``profile``: JAX only: the train steps of ``dit``/``unet`` traced with ``jax.profiler``; XLA op self time
  per model part (``launch/xprof.py``), the largest parts printed.
- ``data``: ``launch.bench_data`` (embedded render, precompute, grain loader).

FLOPs come from XLA's ``cost_analysis`` of the compiled JAX program (train step; one CFG model call x
the number of sampling steps) and the same count is used for torch. "% of peak" = achieved FLOP/s /
measured JAX matmul FLOP/s.

Knobs (documented for the record): ``--xla_flags`` is prepended to ``XLA_FLAGS`` before jax is imported
(e.g. ``--xla_cpu_multi_thread_eigen=true``); ``--threads`` sets ``torch.set_num_threads`` (default:
all cores) -- JAX's CPU client always uses all cores. ``--attention {auto,xla,einsum}`` picks our
attention backend. ``OMP_WAIT_POLICY=PASSIVE`` is set (unless already set) before torch is imported:
with libgomp's default spin-waiting barriers a 2-thread torch on a loaded (oversubscribed) machine ran
~1000x slower. The machine may be shared: the JSON records the load average before/after.

Results: ``benchmarks/results_cpu_2core.json``; the measured runs and what they showed (dated, with
their commands) are in ``docs/experiments.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

TARGETS = {"train_speedup": 1.5, "sample_speedup": 2.0, "dit_train_pct_peak": 50.0}
SCALE, RESCALE = 5.0, 0.75            # EzAudio sampling defaults


# ----------------------------------------------------------------------------- sizes
@dataclasses.dataclass(frozen=True)
class DiTBench:
    width: int = 256
    depth: int = 6
    num_heads: int = 4
    channels: int = 128
    context_dim: int = 256
    sola_rank: int = 16
    frames: int = 200            # 4 s of 50 Hz latents
    context_len: int = 77
    batch: int = 4
    sample_batch: int = 1
    steps: int = 100


@dataclasses.dataclass(frozen=True)
class UNetBench:
    block_out_channels: tuple = (32, 64, 128, 128)
    heads: tuple = (1, 1, 2, 2)           # Tango pattern: head dim 64 -> channels // 64 (>= 1)
    layers_per_block: int = 1              # Tango: 2 (1 halves the ~minutes-long XLA CPU compile here)
    norm_num_groups: int = 32
    channels: int = 8
    cross_dim: int = 256                   # Tango: 1024 (FLAN-T5-large)
    height: int = 64                       # time axis (Tango: 256 for 10.24 s)
    width: int = 16                        # mel axis / 4
    context_len: int = 77
    batch: int = 4
    sample_batch: int = 1
    steps: int = 100


QUICK_DIT = DiTBench(width=32, depth=2, num_heads=2, channels=8, context_dim=16, sola_rank=4, frames=16,
                     context_len=6, batch=2, sample_batch=1, steps=4)
QUICK_UNET = UNetBench(block_out_channels=(32, 64), heads=(1, 2), layers_per_block=1, norm_num_groups=8,
                       channels=4, cross_dim=16, height=16, width=8, context_len=6, batch=2, sample_batch=1,
                       steps=4)


# ----------------------------------------------------------------------------- helpers
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Runs ``fn`` ``warmup`` times, then ``repeats`` timed times; (median seconds, all times)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu_model": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_start": list(os.getloadavg())}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for p in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "diffusers"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def _row(model, task, jax_s, torch_s, flops, peak, jax_times, torch_times, **extra) -> dict:
    r = {"model": model, "task": task, "jax_s": jax_s, "torch_s": torch_s,
         "speedup": (torch_s / jax_s) if (jax_s and torch_s) else None, "flops": flops,
         "jax_flops_per_s": flops / jax_s if flops else None,
         "torch_flops_per_s": flops / torch_s if flops and torch_s else None,
         "jax_times": jax_times, "torch_times": torch_times}
    r["jax_pct_peak"] = 100 * r["jax_flops_per_s"] / peak if peak and r["jax_flops_per_s"] else None
    r["torch_pct_peak"] = 100 * r["torch_flops_per_s"] / peak if peak and r["torch_flops_per_s"] else None
    r.update(extra)
    return r


def _flops(compiled) -> float | None:
    from tta_jax.train.observe import compiled_flops

    return compiled_flops(compiled)


# ----------------------------------------------------------------------------- peak
def bench_peak(n: int = 2048, repeats: int = 5) -> dict:
    """float32 n x n matmul FLOP/s in JAX (jit jnp.dot) and torch (torch.mm)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    f = jax.jit(jnp.dot)
    tj, tjs = median_time(lambda: f(ja, jb).block_until_ready(), repeats, warmup=2)
    ta_, tb_ = torch.from_numpy(a), torch.from_numpy(b)
    tt, tts = median_time(lambda: torch.mm(ta_, tb_), repeats, warmup=2)
    fl = 2.0 * n ** 3
    return {"n": n, "jax_flops_per_s": fl / tj, "torch_flops_per_s": fl / tt,
            "jax_best_flops_per_s": fl / min(tjs), "torch_best_flops_per_s": fl / min(tts),
            "jax_times": tjs, "torch_times": tts}


# ----------------------------------------------------------------------------- shared JAX/torch tasks
def _schedule():
    from tta_jax import diffusion as D

    return D.make_schedule("scaled_linear", zero_terminal_snr=True, prediction_type="v_prediction")


def _apply_of(module):
    """A Flax denoiser -> ``apply_fn(params, x_t, t, cond, train=False)``."""
    def apply_fn(p, x, t, c, train=False):
        return module.apply({"params": p}, x, t, c, train=train)

    return apply_fn


def _jax_train_state(apply_fn, params, x0, cond, trainable: tuple[str, ...] = ()):
    """The real trainer's step (``diffusion_loss`` v-pred MSE, AdamW, ``make_train_step`` with EMA off) and its
    fresh state. ``trainable``: ``config.optimizer.trainable`` regexes (empty: all train).
    -> (step fn, state, batch {"latent", "cond"})."""
    import jax
    import jax.numpy as jnp

    from tta_jax import diffusion as D
    from tta_jax.train.optim import make_optimizer
    from tta_jax.train.state import create_state
    from tta_jax.train.step import make_train_step

    sched = _schedule()

    def loss_fn(p, b, r):
        return D.diffusion_loss(lambda pp, x, t, c, rng: apply_fn(pp, x, t, c, train=True), p, b, r, sched)

    tx, _ = make_optimizer({"name": "adamw", "lr": 1e-4, "weight_decay": 0.01, "schedule": "constant",
                            "trainable": tuple(trainable)})
    step = make_train_step(loss_fn, tx, ema_decay=None)
    fresh = jax.tree.map(lambda a: jnp.array(a, jnp.float32), params)
    state = create_state(lambda k: fresh, tx, jax.random.PRNGKey(0), use_ema=False)
    batch = {"latent": jnp.asarray(x0), "cond": jax.tree.map(jnp.asarray, cond)}
    return step, state, batch


def _compile_step(step, state, batch):
    """``jax.jit(step)`` with the state donated, AOT-compiled for ``(state, batch)``. -> (compiled, seconds to
    trace, lower and compile it: a persistent-cache hit shows here as a small figure)."""
    import jax

    log("jax train: compiling")
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
    return compiled, time.perf_counter() - t0


def _time_train(compiled, state, batch, repeats):
    """Median time of ``compiled(state, batch)`` (state donated, threaded through). -> (median, times, loss)."""
    import jax

    log("jax train: timing")
    box = [state]

    def run():
        s, m = compiled(box[0], batch)
        jax.block_until_ready((s, m))
        box[0] = s
        return m

    med, times = median_time(run, repeats, warmup=2)
    return med, times, float(run()["loss"])


def _jax_train(apply_fn, params, x0, cond, repeats):
    """Times one donated, jitted make_train_step step. -> (median, times, flops, loss, extra: compile_s and
    :func:`compiled_memory` of the step)."""
    step, state, batch = _jax_train_state(apply_fn, params, x0, cond)
    compiled, compile_s = _compile_step(step, state, batch)
    flops = _flops(compiled)
    extra = dict(compile_s=compile_s, **compiled_memory(compiled))
    med, times, loss = _time_train(compiled, state, batch, repeats)
    return med, times, flops, loss, extra


def _remat_row(tag, apply_fn, params, x0, cond, peak, repeats) -> dict:
    """The train step of :func:`_jax_train` with every block under ``remat`` (recomputed in the backward;
    ``nothing_saveable``): JAX only, for its time and :func:`compiled_memory` next to the plain step's."""
    log("jax train (remat)")
    jt, jts, fl, loss, extra = _jax_train(apply_fn, params, x0, cond, repeats)
    return _row(tag, "train step remat", jt, None, fl, peak, jts, [], jax_loss=loss, remat=True, **extra)


def _jax_sample(apply_fn, params, x_T, cond, uncond, steps, repeats):
    """Times ``steps``-step DDIM + batched CFG in one jit. -> (median, times, flops of all model calls, finite,
    extra: compile_s and :func:`compiled_memory` of the sampler)."""
    import jax
    import jax.numpy as jnp

    from tta_jax import diffusion as D

    sched = _schedule()
    scfg = D.SamplerConfig("ddim", steps, spacing="trailing", eta=1.0)

    def denoiser(p, c, u):
        return D.cfg_denoiser(lambda x, t, cd: apply_fn(p, x, t, cd), c, u, scale=SCALE, rescale=RESCALE)

    def gen(p, x, key, c, u):
        return D.sample(denoiser(p, c, u), x, sched, scfg, key)

    args = (params, jnp.asarray(x_T), jax.random.PRNGKey(1), cond, uncond)
    log("jax sample: compiling")
    t0 = time.perf_counter()
    compiled = jax.jit(gen).lower(*args).compile()
    extra = dict(compile_s=time.perf_counter() - t0, **compiled_memory(compiled))
    # cost_analysis of a while loop counts its body once: count one guided model call x steps instead.
    t = jnp.full((x_T.shape[0],), 500, jnp.int32)
    one = jax.jit(lambda p, x, t, c, u: denoiser(p, c, u)(x, t)).lower(params, jnp.asarray(x_T), t, cond,
                                                                      uncond).compile()
    f1 = _flops(one)
    log("jax sample: timing")
    med, times = median_time(lambda: compiled(*args).block_until_ready(), repeats, warmup=0)  # AOT-compiled
    out = compiled(*args)
    return med, times, (f1 * steps if f1 else None), bool(jnp.all(jnp.isfinite(out))), extra


def _torch_train(torch_fn, tparams, x0, repeats, ac):
    """Eager torch: v-pred MSE, backward, AdamW. ``torch_fn(x_t, t) -> out``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    log("torch train: timing")
    opt = torch.optim.AdamW(tparams, lr=1e-4, weight_decay=0.01)
    ac = torch.tensor(np.asarray(ac, np.float32))
    B = x0.shape[0]
    last = [None]

    def run():
        t = torch.randint(0, 1000, (B,))
        noise = torch.randn_like(x0)
        a = ac[t].view((B,) + (1,) * (x0.ndim - 1))
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v = a.sqrt() * noise - (1 - a).sqrt() * x0
        loss = F.mse_loss(torch_fn(x_t, t), v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last[0] = float(loss.detach())

    med, times = median_time(run, repeats, warmup=2)
    return med, times, last[0]


def _torch_rescale(guided, cond_out, rescale):
    dims = list(range(1, guided.ndim))
    std_c = cond_out.std(dim=dims, keepdim=True)
    std_g = guided.std(dim=dims, keepdim=True)
    return rescale * guided * (std_c / std_g) + (1 - rescale) * guided


def _torch_sample(torch_fn, x_T, steps, repeats):
    """diffusers DDIMScheduler loop, CFG batched, inference_mode. ``torch_fn(x2, t2) -> out2`` (2B)."""
    import torch
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=True,
                        prediction_type="v_prediction", timestep_spacing="trailing",
                        rescale_betas_zero_snr=True)
    log("torch sample: timing")
    gen = torch.Generator().manual_seed(0)
    B = x_T.shape[0]
    res = [None]

    def run():
        with torch.inference_mode():
            sch.set_timesteps(steps)
            x = x_T.clone()
            for t in sch.timesteps:
                out = torch_fn(torch.cat([x, x]), t.expand(2 * B))
                c, u = out.chunk(2)
                g = _torch_rescale(u + SCALE * (c - u), c, RESCALE)
                x = sch.step(g, t, x, eta=1.0, generator=gen).prev_sample
            res[0] = x

    med, times = median_time(run, repeats, warmup=0)  # eager; 100 model calls warm up in the first steps
    return med, times, bool(torch.isfinite(res[0]).all())


# ----------------------------------------------------------------------------- DiT
def dit_config(b: DiTBench, attention: str = "auto"):
    from tta_jax.denoisers.dit import DiTConfig

    return DiTConfig(in_channels=b.channels, out_channels=b.channels, width=b.width, depth=b.depth,
                     num_heads=b.num_heads, context_dim=b.context_dim, sola_rank=b.sola_rank,
                     attention_backend=attention)


def bench_dit(b: DiTBench, peak: float | None, repeats: int = 3, sample_repeats: int = 3,
              attention: str = "auto") -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from benchmarks.torch_dit import dit_forward, official_state_dict, torch_weights
    from tta_jax.convert.ezaudio_dit import convert_ezaudio_dit
    from tta_jax.denoisers.dit import DiT

    log("dit: building")
    c = dit_config(b, attention)
    sd = official_state_dict(c, seed=0, init="fan_in")
    variables, report = convert_ezaudio_dit(sd, c)
    if not report.ok:
        raise RuntimeError(report.summary())
    params = jax.tree.map(jnp.asarray, variables["params"])
    model = DiT(c)

    apply_fn = _apply_of(model)

    rng = np.random.default_rng(0)
    B, T, L = b.batch, b.frames, b.context_len
    x0 = rng.standard_normal((B, T, b.channels)).astype(np.float32)
    text = rng.standard_normal((B, L, b.context_dim)).astype(np.float32)
    tmask = np.ones((B, L), bool)
    tmask[::2, L * 3 // 4:] = False
    cond = {"text": jnp.asarray(text), "text_mask": jnp.asarray(tmask)}

    W = torch_weights(sd, requires_grad=True)
    for k in W:
        if k.endswith("rotary.inv_freq"):
            W[k].requires_grad_(False)
    tt_text, tt_mask = torch.from_numpy(text), torch.from_numpy(tmask)

    # parity (same function on both sides)
    t_par = np.array([17, 900] * B, np.int32)[:B]
    ours = np.asarray(jax.jit(apply_fn)(params, jnp.asarray(x0), jnp.asarray(t_par), cond))
    with torch.no_grad():
        ref = dit_forward(W, torch.from_numpy(x0), torch.from_numpy(t_par), tt_text, tt_mask, None, None,
                          c).numpy()
    err = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))

    tag = f"dit w{b.width} d{b.depth} T{T} B{B}"
    jt, jts, fl_train, jloss, jx = _jax_train(apply_fn, params, x0, cond, repeats)
    tt, tts, tloss = _torch_train(lambda x, t: dit_forward(W, x, t, tt_text, tt_mask, None, None, c),
                                  [v for v in W.values() if v.requires_grad], torch.from_numpy(x0), repeats,
                                  np.asarray(_schedule().alphas_cumprod))
    rows = [_row(tag, "train step", jt, tt, fl_train, peak, jts, tts, max_rel_err=err,
                 jax_loss=jloss, torch_loss=tloss, **jx)]
    remat_model = DiT(c.replace(remat=True))
    rows.append(_remat_row(tag, _apply_of(remat_model), params, x0, cond,
                           peak, repeats))

    Bs = b.sample_batch
    x_T = rng.standard_normal((Bs, T, b.channels)).astype(np.float32)
    null = rng.standard_normal((1, L, b.context_dim)).astype(np.float32)
    nmask = np.zeros((Bs, L), bool)
    nmask[:, :2] = True
    scond = {"text": jnp.asarray(text[:Bs]), "text_mask": jnp.asarray(tmask[:Bs])}
    sun = {"text": jnp.asarray(np.repeat(null, Bs, 0)), "text_mask": jnp.asarray(nmask)}
    js, jss, fl_s, jfin, jsx = _jax_sample(apply_fn, params, x_T, scond, sun, b.steps, sample_repeats)
    text2 = torch.from_numpy(np.concatenate([text[:Bs], np.repeat(null, Bs, 0)]))
    mask2 = torch.from_numpy(np.concatenate([tmask[:Bs], nmask]))
    Wd = {k: v.detach() for k, v in W.items()}
    ts, tss, tfin = _torch_sample(lambda x, t: dit_forward(Wd, x, t, text2, mask2, None, None, c),
                                  torch.from_numpy(x_T), b.steps, sample_repeats)
    rows.append(_row(tag, f"sample {b.steps}x DDIM+CFG B{Bs}", js, ts, fl_s, peak, jss, tss,
                     finite=jfin and tfin, **jsx))
    return rows


# ----------------------------------------------------------------------------- U-Net
def unet_diffusers_config(b: UNetBench) -> dict:
    n = len(b.block_out_channels)
    down = ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"] if n > 2 else ["CrossAttnDownBlock2D"] * n
    up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1) if n > 2 else ["CrossAttnUpBlock2D"] * n
    return dict(sample_size=b.height, in_channels=b.channels, out_channels=b.channels,
                block_out_channels=tuple(b.block_out_channels), down_block_types=tuple(down),
                up_block_types=tuple(up), layers_per_block=b.layers_per_block,
                attention_head_dim=tuple(b.heads), cross_attention_dim=b.cross_dim,
                norm_num_groups=b.norm_num_groups, use_linear_projection=True, flip_sin_to_cos=True,
                freq_shift=0)


def bench_unet(b: UNetBench, peak: float | None, repeats: int = 3, sample_repeats: int = 3,
               attention: str = "auto") -> list[dict]:
    import diffusers
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from tta_jax.convert.diffusers_unet import convert_diffusers_unet
    from tta_jax.denoisers.unet import UNet

    log("unet: building")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**unet_diffusers_config(b))
    model = UNet.from_diffusers_config(dict(unet.config), attention_backend=attention)
    params, report = convert_diffusers_unet(unet.state_dict(), model)
    if not report.ok:
        raise RuntimeError(report.summary())
    params = jax.tree.map(jnp.asarray, params)

    apply_fn = _apply_of(model)

    rng = np.random.default_rng(0)
    B, L = b.batch, b.context_len
    x0 = rng.standard_normal((B, b.channels, b.height, b.width)).astype(np.float32)   # torch NCHW
    x0j = x0.transpose(0, 2, 3, 1)
    text = rng.standard_normal((B, L, b.cross_dim)).astype(np.float32)
    tmask = np.ones((B, L), bool)
    tmask[::2, L * 3 // 4:] = False
    cond = {"text": jnp.asarray(text), "text_mask": jnp.asarray(tmask)}
    tt_text, tt_mask = torch.from_numpy(text), torch.from_numpy(tmask)

    t_par = np.array([17, 900] * B, np.int32)[:B]
    ours = np.asarray(jax.jit(apply_fn)(params, jnp.asarray(x0j), jnp.asarray(t_par), cond)).transpose(0, 3, 1, 2)
    with torch.no_grad():
        ref = unet(torch.from_numpy(x0), torch.from_numpy(t_par), tt_text,
                   encoder_attention_mask=tt_mask).sample.numpy()
    err = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))

    tag = f"unet {'-'.join(map(str, b.block_out_channels))} {b.height}x{b.width} B{B}"
    jt, jts, fl_train, jloss, jx = _jax_train(apply_fn, params, x0j, cond, repeats)
    unet.train()
    tt, tts, tloss = _torch_train(
        lambda x, t: unet(x, t, tt_text, encoder_attention_mask=tt_mask).sample,
        list(unet.parameters()), torch.from_numpy(x0), repeats, np.asarray(_schedule().alphas_cumprod))
    rows = [_row(tag, "train step", jt, tt, fl_train, peak, jts, tts, max_rel_err=err,
                 jax_loss=jloss, torch_loss=tloss, **jx)]
    remat_model = UNet.from_diffusers_config(dict(unet.config), attention_backend=attention, remat=True)
    rows.append(_remat_row(tag, _apply_of(remat_model), params, x0j, cond,
                           peak, repeats))

    unet.eval()
    Bs = b.sample_batch
    x_T = rng.standard_normal((Bs, b.channels, b.height, b.width)).astype(np.float32)
    null = rng.standard_normal((1, L, b.cross_dim)).astype(np.float32)
    nmask = np.zeros((Bs, L), bool)
    nmask[:, :2] = True
    scond = {"text": jnp.asarray(text[:Bs]), "text_mask": jnp.asarray(tmask[:Bs])}
    sun = {"text": jnp.asarray(np.repeat(null, Bs, 0)), "text_mask": jnp.asarray(nmask)}
    js, jss, fl_s, jfin, jsx = _jax_sample(apply_fn, params, x_T.transpose(0, 2, 3, 1), scond, sun, b.steps,
                                           sample_repeats)
    text2 = torch.from_numpy(np.concatenate([text[:Bs], np.repeat(null, Bs, 0)]))
    mask2 = torch.from_numpy(np.concatenate([tmask[:Bs], nmask]))
    ts, tss, tfin = _torch_sample(lambda x, t: unet(x, t, text2, encoder_attention_mask=mask2).sample,
                                  torch.from_numpy(x_T), b.steps, sample_repeats)
    rows.append(_row(tag, f"sample {b.steps}x DDIM+CFG B{Bs}", js, ts, fl_s, peak, jss, tss,
                     finite=jfin and tfin, **jsx))
    return rows


# ----------------------------------------------------------------------------- LoRA vs full fine-tuning
LORA_RANK = 8
# attention q/k/v/out, self- and cross-attention (DiT: attn / cross_attn; U-Net: attn1 / attn2)
LORA_TARGETS = {"dit": (".*/(attn|cross_attn)/to_(q|k|v|out)",), "unet": (".*/attn[12]/to_(q|k|v|out)",)}
LORA_VARIANTS = ("full", "lora")
LORA_MEMORY_NOTE = {
    "compiled_peak_bytes": "XLA memory_analysis() of the compiled, donated train step: argument + output + "
                           "temp - alias bytes (what the step itself holds: state, batch, activations, grads)",
    "rss_peak_bytes": "peak resident set (VmHWM) of a fresh subprocess that ran only this "
                      "variant (build, init, compile, timing): the whole process, incl. the JAX runtime and "
                      "the XLA compiler",
    "rss_before_compile_bytes": "the same VmHWM in that subprocess after building the params and the "
                                "train state, before compiling the step",
}


def _lora_sizes(quick: bool) -> dict:
    """{"dit": DiTBench, "unet": UNetBench} of the other suites (``quick``: the tiny ones)."""
    return {"dit": QUICK_DIT if quick else DiTBench(), "unet": QUICK_UNET if quick else UNetBench()}


def _bench_of(family: str, size: dict):
    """``size`` (a :class:`DiTBench` / :class:`UNetBench` as a dict, e.g. from JSON) -> the dataclass."""
    cls = {"dit": DiTBench, "unet": UNetBench}.get(family)
    if cls is None:
        raise ValueError(f"launch/bench.py lora: family {family!r} is not 'dit' or 'unet'")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in size.items()})


def _lora_base(family: str, b, attention: str = "auto"):
    """The base denoiser at bench size ``b``, randomly initialised (:func:`_random_params`; no torch needed).
    -> (flax module, params, x0 [B, T, C] or [B, H, W, C], cond {"text" [B, L, D], "text_mask" [B, L]}, tag)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    if family == "dit":
        from tta_jax.denoisers.dit import DiT

        model = DiT(dit_config(b, attention))
        shape, dim = (b.frames, b.channels), b.context_dim
        tag = f"dit w{b.width} d{b.depth} T{b.frames} B{b.batch}"
    else:
        from tta_jax.denoisers.unet import UNet

        model = UNet.from_diffusers_config(unet_diffusers_config(b), attention_backend=attention)
        shape, dim = (b.height, b.width, b.channels), b.cross_dim
        tag = f"unet {'-'.join(map(str, b.block_out_channels))} {b.height}x{b.width} B{b.batch}"
    rng = np.random.default_rng(0)
    B, L = b.batch, b.context_len
    x0 = rng.standard_normal((B,) + shape).astype(np.float32)
    tmask = np.ones((B, L), bool)
    tmask[::2, L * 3 // 4:] = False
    cond = {"text": jnp.asarray(rng.standard_normal((B, L, dim)).astype(np.float32)),
            "text_mask": jnp.asarray(tmask)}
    one = jax.tree.map(lambda a: a[:1], cond)
    shapes = jax.eval_shape(lambda r: model.init(r, jnp.asarray(x0[:1]), jnp.zeros((1,), jnp.int32), one),
                            jax.random.PRNGKey(0))["params"]
    return model, _random_params(shapes, rng), x0, cond, tag


def _random_params(shapes, rng):
    """Random float32 params of ``shapes`` (an ``eval_shape`` tree; nothing is compiled): kernels
    ``N(0, 1 / fan_in)``, norm ``scale`` 1, other vectors ``N(0, 0.02^2)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax.core import meta

    def one(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return jnp.ones(s.shape, jnp.float32)
        std = 1 / np.sqrt(max(int(np.prod(s.shape[:-1])), 1)) if len(s.shape) >= 2 else 0.02
        return jnp.asarray(std * rng.standard_normal(s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(one, meta.unbox(shapes))


def _n_params(tree) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(tree)))


def _n_bytes(tree) -> int:
    import jax

    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _max_rss_bytes() -> int:
    """This process's peak resident set: ``VmHWM`` of /proc/self/status (the high-water mark of this program's
    own memory map), else ``ru_maxrss``. Not ``ru_maxrss`` first: Linux carries it across fork + exec, so a
    subprocess started by a 3 GiB parent reports at least 3 GiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024                     # kB
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024   # Linux: KiB


def compiled_memory(compiled) -> dict:
    """XLA's ``memory_analysis()`` of a compiled program -> {argument, output, temp, alias, generated_code
    bytes, ``compiled_peak_bytes`` = argument + output + temp - alias}; {} if the backend has none."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # pragma: no cover - backend without memory analysis
        return {}
    if ma is None:
        return {}
    out = {k: int(getattr(ma, f"{k}_size_in_bytes", 0) or 0)
           for k in ("argument", "output", "temp", "alias", "generated_code")}
    out = {f"{k}_bytes": v for k, v in out.items()}
    out["compiled_peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                                  - out["alias_bytes"])
    return out


def lora_variant(family: str, variant: str, size: dict, repeats: int = 3, attention: str = "auto",
                 peak: float | None = None) -> dict:
    """One train-step measurement, in this process: ``variant`` "full" (every parameter trains) or "lora"
    (rank-:data:`LORA_RANK` adapters on :data:`LORA_TARGETS` via :class:`tta_jax.train.lora.LoRADenoiser`,
    ``trainable = ("lora/.*",)``: the base is frozen). Same step as the trainer (:func:`_jax_train_state`).
    -> a :func:`_row` dict (``torch_s`` None) + variant, trained/total params, optimizer-state bytes,
    :func:`compiled_memory` and the process's ``rss_*`` (meaningful in a fresh process: :func:`lora_isolated`)."""
    import jax

    from tta_jax.train.lora import LoRADenoiser, init_lora, nest_adapters
    from tta_jax.train.optim import trainable_mask

    if variant not in LORA_VARIANTS:
        raise ValueError(f"launch/bench.py lora: variant {variant!r} is not one of {LORA_VARIANTS}")
    b = _bench_of(family, size)
    log(f"lora: {family} {variant}: building")
    model, base, x0, cond, tag = _lora_base(family, b, attention)
    if variant == "full":
        params, trainable, net = base, (), model
        task = "train step full"
    else:
        targets = LORA_TARGETS[family]
        adapters = init_lora(base, targets, LORA_RANK, jax.random.PRNGKey(1))
        params, trainable = {"net": base, "lora": nest_adapters(adapters)}, ("lora/.*",)
        net = LoRADenoiser(model, targets, LORA_RANK)
        task = f"train step LoRA r{LORA_RANK}"

    apply_fn = _apply_of(net)

    step, state, batch = _jax_train_state(apply_fn, params, x0, cond, trainable)
    rss_before = _max_rss_bytes()
    mask = trainable_mask(state.params, trainable)
    trained = int(sum(x.size for x, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask)) if m))
    total = _n_params(state.params)
    info = {"variant": variant, "trained_params": trained, "total_params": total,
            "base_params": _n_params(base), "trained_frac": trained / total,
            "opt_state_bytes": _n_bytes(state.opt_state), "params_bytes": _n_bytes(state.params)}
    if variant == "lora":
        info.update(rank=LORA_RANK, targets=list(LORA_TARGETS[family]), adapted_kernels=len(adapters))
    compiled, compile_s = _compile_step(step, state, batch)
    info.update(compiled_memory(compiled), compile_s=compile_s)
    flops = _flops(compiled)
    med, times, loss = _time_train(compiled, state, batch, repeats)   # donates (deletes) ``state``
    return _row(tag, task, med, None, flops, peak, times, [], jax_loss=loss, **info,
                rss_before_compile_bytes=rss_before, rss_peak_bytes=_max_rss_bytes())


_ISOLATED = ("import json, sys\n"
             "from launch import bench\n"
             "r = bench.lora_variant(**json.loads(sys.argv[1]))\n"
             "print('@@lora ' + json.dumps(r))\n")


def lora_isolated(family: str, variant: str, size: dict, repeats: int = 3, attention: str = "auto",
                  peak: float | None = None, timeout: float = 3600) -> dict:
    """:func:`lora_variant` in a fresh ``python`` subprocess (same interpreter, environment incl. ``XLA_FLAGS``),
    so its ``rss_*`` figures are this variant's alone. Its log goes to our stderr. -> the row dict."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = json.dumps({"family": family, "variant": variant, "size": size, "repeats": repeats,
                       "attention": attention, "peak": peak})
    proc = subprocess.run([sys.executable, "-c", _ISOLATED, args], cwd=root, env=env, stdout=subprocess.PIPE,
                          text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@lora ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"launch/bench.py lora: the {family} {variant} subprocess failed "
                           f"(exit {proc.returncode}; its stderr is above)")
    return json.loads(lines[-1][len("@@lora "):])


def bench_lora(quick: bool = False, repeats: int = 3, attention: str = "auto", peak: float | None = None,
               families: tuple[str, ...] = ("dit", "unet"), isolate: bool = True) -> list[dict]:
    """Full fine-tuning vs LoRA for each family at the bench size (``quick``: the tiny one): one
    :func:`lora_variant` row per (family, variant), each in a fresh subprocess unless ``isolate`` is False
    (then ``rss_*`` are this process's and mean little). -> rows, full then LoRA per family."""
    rows = []
    for family, b in _lora_sizes(quick).items():
        if family not in families:
            continue
        for variant in LORA_VARIANTS:
            kw = dict(family=family, variant=variant, size=dataclasses.asdict(b), repeats=repeats,
                      attention=attention, peak=peak)
            row = lora_isolated(**kw) if isolate else lora_variant(**kw)
            row["isolated"] = isolate
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- scaling
SCALE_TOKENS = (1, 2, 4)           # clip length as a multiple of the 1x clip below
SCALE_BATCH = (1, 4, 16)
SCALE_SAMPLE_STEPS = 4             # the sampler's per-step time: DDIM + CFG (2B rows per model call)
# 1x = 2 s of 50 Hz DiT latents (100 tokens) / a 32 x 16 U-Net latent (512 positions); 2x is the train/sample
# suites' clip.
SCALE_BASE = {"dit": DiTBench(frames=100), "unet": UNetBench(height=32)}
QUICK_SCALE_BASE = {"dit": dataclasses.replace(QUICK_DIT, frames=8),
                    "unet": dataclasses.replace(QUICK_UNET, height=8)}


def _scaled(family: str, b, tokens: int, batch: int):
    """Bench size ``b`` with the clip ``tokens`` times as long (DiT frames, U-Net latent height = time) and
    ``batch`` rows (train and sample)."""
    if family == "dit":
        return dataclasses.replace(b, frames=b.frames * tokens, batch=batch, sample_batch=batch)
    return dataclasses.replace(b, height=b.height * tokens, batch=batch, sample_batch=batch)


def scaling_point(family: str, size: dict, tokens: int, batch: int, repeats: int = 2,
                  peak: float | None = None, attention: str = "auto") -> list[dict]:
    """One point of the sweep (random params, JAX only): the train step (as ``train``) and the sampler
    (:data:`SCALE_SAMPLE_STEPS` DDIM + CFG steps in one jit; ``jax_s`` is per step) at ``tokens`` x the 1x clip
    and ``batch`` rows. -> two rows with ``tokens`` (latent positions per clip), time, FLOP/s, % of peak,
    compile seconds and :func:`compiled_memory`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    b = _scaled(family, _bench_of(family, size), tokens, batch)
    log(f"scaling: {family} {tokens}x B{batch}")
    model, params, x0, cond, _ = _lora_base(family, b, attention)
    n_tok = int(np.prod(x0.shape[1:-1]))

    apply_fn = _apply_of(model)

    info = dict(family=family, tokens_mult=tokens, tokens=n_tok, batch=batch)
    tag = f"{family} {tokens}x ({n_tok} tok) B{batch}"
    jt, jts, fl, loss, extra = _jax_train(apply_fn, params, x0, cond, repeats)
    rows = [_row(tag, "train step", jt, None, fl, peak, jts, [], jax_loss=loss, **info, **extra)]
    L = cond["text"].shape[1]
    umask = np.zeros((batch, L), bool)
    umask[:, :2] = True
    uncond = {"text": jnp.zeros_like(cond["text"]), "text_mask": jnp.asarray(umask)}
    steps = SCALE_SAMPLE_STEPS
    js, jss, fls, fin, sx = _jax_sample(apply_fn, params, x0, cond, uncond, steps, repeats)
    rows.append(_row(tag, "sample step (CFG)", js / steps, None, (fls / steps) if fls else None, peak,
                     [t / steps for t in jss], [], finite=fin, sample_steps=steps, **info, **sx))
    jax.clear_caches()
    return rows


def bench_scaling(quick: bool = False, repeats: int = 2, peak: float | None = None, attention: str = "auto",
                  families: tuple[str, ...] = ("dit", "unet")) -> list[dict]:
    """The sweep: every (family, :data:`SCALE_TOKENS`, :data:`SCALE_BATCH`) point of :func:`scaling_point`
    over the families of :data:`SCALE_BASE` (``quick``: :data:`QUICK_SCALE_BASE`). -> rows."""
    base = QUICK_SCALE_BASE if quick else SCALE_BASE
    rows = []
    for family in (f for f in families if f in base):
        for n in SCALE_TOKENS:
            for bs in SCALE_BATCH:
                rows += scaling_point(family, dataclasses.asdict(base[family]), n, bs, repeats, peak, attention)
    return rows


def plot_scaling(rows: list[dict], path: str) -> str:
    """Time per clip (row) vs tokens per clip, log-log, one line per (family, batch); train step and sampler
    step side by side. A dashed line continues each 1x point linearly: where a curve bends above it, cost grows
    faster than the token count (attention's quadratic term). -> ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = ("train step", "sample step (CFG)")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, task in zip(axes, tasks):
        pts = [r for r in rows if r["task"] == task and r.get("jax_s")]
        for key in sorted({(r["family"], r["batch"]) for r in pts}):
            line = sorted((r["tokens"], r["jax_s"] / r["batch"]) for r in pts if (r["family"], r["batch"]) == key)
            xs, ys = zip(*line)
            (h,) = ax.plot(xs, [1e3 * y for y in ys], "o-", label=f"{key[0]} B{key[1]}")
            ax.plot(xs, [1e3 * ys[0] * x / xs[0] for x in xs], "--", color=h.get_color(), alpha=0.4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens per clip (latent positions)")
        ax.set_ylabel("ms per clip")
        ax.set_title(task + (" (one of the sampler's steps)" if task.startswith("sample") else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("tta-jax: cost vs clip length (dashed: linear in tokens from the 1x point)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_scaling_table(rows: list[dict]) -> None:
    hdr = (f"{'family':<6} {'tokens':>7} {'B':>3} {'task':<18} {'time':>9} {'per clip':>9} {'FLOP/s':>8} "
           f"{'%pk':>5} {'compile':>8} {'XLA peak':>10}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['family']:<6} {r['tokens']:>7} {r['batch']:>3} {r['task']:<18} {_fmt_s(r['jax_s']):>9} "
              f"{_fmt_s(r['jax_s'] / r['batch']):>9} {_fmt_f(r['jax_flops_per_s']):>8} "
              f"{_fmt_p(r['jax_pct_peak']):>5} {_fmt_s(r.get('compile_s')):>8} "
              f"{_fmt_b(r.get('compiled_peak_bytes')):>10}")


# ----------------------------------------------------------------------------- profile
def bench_profile(quick: bool = False, calls: int = 3, attention: str = "auto",
                  families: tuple[str, ...] = ("dit", "unet")) -> dict:
    """Where each train step of the ``train`` suites' sizes spends its time (:func:`launch.xprof.profile`:
    XLA op self time per model part). -> {family: profile dict + "model"}."""
    import jax

    from launch import xprof

    out = {}
    for family, b in _lora_sizes(quick).items():
        if family not in families:
            continue
        log(f"profile: {family}")
        model, params, x0, cond, tag = _lora_base(family, b, attention)

        step, state, batch = _jax_train_state(_apply_of(model), params, x0, cond)
        compiled, _ = _compile_step(step, state, batch)
        box = [state]

        def run():
            s, m = compiled(box[0], batch)
            box[0] = s
            return s

        run()
        run()
        prof = xprof.profile(compiled, run, (type(model).__name__,), calls=calls)
        out[family] = dict(model=tag, **prof)
        del box
        jax.clear_caches()
    return out


# ----------------------------------------------------------------------------- data
def bench_data(quick: bool) -> dict:
    from launch import bench_data as bd

    if quick:
        return bd.bench(num_clips=8, duration=1.0, sample_rate=16000, batch_size=4, steps=3, workers=(0,))
    return bd.bench()


# ----------------------------------------------------------------------------- report
def _fmt_s(v):
    return "-" if v is None else (f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s")


def _fmt_f(v):
    return "-" if v is None else f"{v / 1e9:.1f} G"


def _fmt_p(v):
    return "-" if v is None else f"{v:.0f}%"


def _fmt_b(v):
    return "-" if v is None else (f"{v / 2**20:.1f} MiB" if v < 2**30 else f"{v / 2**30:.2f} GiB")


def _fmt_n(v):
    return "-" if v is None else (f"{v / 1e6:.2f} M" if v >= 1e5 else f"{v / 1e3:.1f} k")


def print_lora_table(rows: list[dict]) -> None:
    """The ``lora`` suite: full fine-tuning vs LoRA side by side (``XLA peak``: compiled_peak_bytes, ``RSS``:
    rss_peak_bytes of the variant's own process; see LORA_MEMORY_NOTE)."""
    hdr = (f"{'model':<30} {'task':<22} {'step':>9} {'trained':>9} {'frac':>7} {'opt state':>10} "
           f"{'XLA peak':>10} {'RSS peak':>10} {'FLOPs':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        frac = r.get("trained_frac")
        print(f"{r['model']:<30} {r['task']:<22} {_fmt_s(r['jax_s']):>9} {_fmt_n(r.get('trained_params')):>9} "
              f"{'-' if frac is None else f'{100 * frac:.2f}%':>7} {_fmt_b(r.get('opt_state_bytes')):>10} "
              f"{_fmt_b(r.get('compiled_peak_bytes')):>10} {_fmt_b(r.get('rss_peak_bytes')):>10} "
              f"{_fmt_f(r.get('flops')):>8}")


def print_table(result: dict) -> None:
    pk = result.get("peak")
    if pk:
        print(f"matmul peak (float32 {pk['n']}^2): jax {pk['jax_flops_per_s'] / 1e9:.1f} GFLOP/s, "
              f"torch {pk['torch_flops_per_s'] / 1e9:.1f} GFLOP/s (median; best jax "
              f"{pk['jax_best_flops_per_s'] / 1e9:.1f})")
    rows = result.get("results", [])
    if rows:
        hdr = (f"{'model':<30} {'task':<26} {'jax':>9} {'torch':>9} {'speed-up':>8} "
               f"{'FLOP/s jax':>10} {'torch':>8} {'%pk jax':>7} {'torch':>6} {'compile':>8} {'XLA peak':>10}")
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
            print(f"{r['model']:<30} {r['task']:<26} {_fmt_s(r['jax_s']):>9} {_fmt_s(r['torch_s']):>9} "
                  f"{sp:>8} {_fmt_f(r['jax_flops_per_s']):>10} {_fmt_f(r['torch_flops_per_s']):>8} "
                  f"{_fmt_p(r['jax_pct_peak']):>7} {_fmt_p(r['torch_pct_peak']):>6} "
                  f"{_fmt_s(r.get('compile_s')):>8} {_fmt_b(r.get('compiled_peak_bytes')):>10}")
    if result.get("lora"):
        print_lora_table(result["lora"])
    if result.get("scaling"):
        print_scaling_table(result["scaling"])
    if result.get("profile"):
        from launch import xprof

        for fam, prof in result["profile"].items():
            xprof.print_profile(f"profile {prof['model']} train step", prof)
    for k, v in result.get("targets", {}).items():
        print(f"target {k}: {v}")
    if result.get("data"):
        from launch import bench_data as bd

        bd.print_table(result["data"])
    m = result["machine"]
    print(f"machine: {m['cpu_model']} x{m['cores']}, load avg start {m['loadavg_start']} "
          f"end {m.get('loadavg_end')}")


def check_targets(rows: list[dict]) -> dict:
    out = {}
    for r in rows:
        name = r["model"].split()[0]
        if r.get("torch_s") is None:      # JAX-only rows (remat) have no target
            continue
        if r["task"] == "train step":
            out[f"{name} train speed-up >= {TARGETS['train_speedup']}x"] = (
                r["speedup"] is not None and r["speedup"] >= TARGETS["train_speedup"])
            if name == "dit":
                out[f"dit train >= {TARGETS['dit_train_pct_peak']:.0f}% of matmul peak"] = (
                    r["jax_pct_peak"] is not None and r["jax_pct_peak"] >= TARGETS["dit_train_pct_peak"])
        else:
            out[f"{name} sampling speed-up >= {TARGETS['sample_speedup']}x"] = (
                r["speedup"] is not None and r["speedup"] >= TARGETS["sample_speedup"])
    return out


def run(which: str, quick: bool = False, repeats: int | None = None, threads: int | None = None,
        attention: str = "auto") -> dict:
    # libgomp reads this when torch is loaded: with the default (active spin-waiting) OpenMP barriers a
    # 2-thread torch on a loaded machine was ~1000x slower (2 s vs 3 ms per tiny forward).
    if which not in ("lora", "scaling", "profile"):      # these suites are JAX only
        if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
            print("warning: torch already imported; OMP_WAIT_POLICY=PASSIVE not applied", file=sys.stderr)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        threads = threads or os.cpu_count()
        torch.set_num_threads(threads)
    result = {"benchmark": which, "quick": quick, "machine": machine_info(), "versions": versions(),
              "settings": {"torch_threads": threads, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                           "attention_backend": attention,
                           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "cfg_scale": SCALE,
                           "cfg_rescale": RESCALE},
              "targets_spec": TARGETS, "config": {}, "results": []}
    rep = repeats or (1 if quick else 3)
    peak = None
    if which in ("all", "peak", "dit", "unet", "scaling"):
        log("peak")
        result["peak"] = bench_peak(256 if quick else 2048, repeats=rep + 2)
        peak = result["peak"]["jax_flops_per_s"]
    if which in ("all", "dit"):
        b = QUICK_DIT if quick else DiTBench()
        result["config"]["dit"] = {"bench": dataclasses.asdict(b), "model": dit_config(b, attention).to_dict()}
        result["results"] += bench_dit(b, peak, repeats=rep, sample_repeats=rep, attention=attention)
    if which in ("all", "unet"):
        b = QUICK_UNET if quick else UNetBench()
        result["config"]["unet"] = {"bench": dataclasses.asdict(b), "diffusers": unet_diffusers_config(b)}
        result["results"] += bench_unet(b, peak, repeats=rep, sample_repeats=rep, attention=attention)
    if which in ("all", "lora"):
        result["config"]["lora"] = {"rank": LORA_RANK, "targets": {k: list(v) for k, v in LORA_TARGETS.items()},
                                    "bench": {f: dataclasses.asdict(b) for f, b in _lora_sizes(quick).items()},
                                    "memory": LORA_MEMORY_NOTE}
        result["lora"] = bench_lora(quick, repeats=rep, attention=attention, peak=peak)
    if which in ("all", "profile"):
        result["profile"] = bench_profile(quick, attention=attention)
    if which in ("all", "scaling"):
        result["config"]["scaling"] = {"tokens": list(SCALE_TOKENS), "batch": list(SCALE_BATCH),
                                       "sample_steps": SCALE_SAMPLE_STEPS,
                                       "base": {f: dataclasses.asdict(b) for f, b in
                                                (QUICK_SCALE_BASE if quick else SCALE_BASE).items()}}
        result["scaling"] = bench_scaling(quick, repeats=min(rep, 2), peak=peak, attention=attention)
    if which in ("all", "data"):
        log("data")
        result["data"] = bench_data(quick)
    result["targets"] = check_targets(result["results"])
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("which", choices=("all", "dit", "unet", "lora", "scaling", "profile", "data", "peak"))
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="the scaling plot (PNG; default: the --json path with .png)")
    p.add_argument("--quick", action="store_true", help="tiny configs, 4 sampling steps (CI smoke test)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--attention", default="auto", choices=("auto", "xla", "einsum", "deferred"))
    p.add_argument("--xla_flags", default="", help="prepended to XLA_FLAGS (must precede jax import)")
    a = p.parse_args(argv)
    if a.xla_flags:
        if "jax" in sys.modules:
            print("warning: jax already imported; --xla_flags may not take effect", file=sys.stderr)
        os.environ["XLA_FLAGS"] = (a.xla_flags + " " + os.environ.get("XLA_FLAGS", "")).strip()
    from launch.cli import enable_compile_cache

    t0 = time.perf_counter()
    cache = enable_compile_cache()      # TTA_JAX_COMPILE_CACHE=off turns it off
    res = run(a.which, quick=a.quick, repeats=a.repeats, threads=a.threads, attention=a.attention)
    res["settings"]["compile_cache"] = cache
    res["wall_s"] = time.perf_counter() - t0
    res["compile_s_total"] = sum(r.get("compile_s") or 0.0 for k in ("results", "lora", "scaling")
                                 for r in res.get(k) or [])
    print_table(res)
    print(f"compile seconds over all rows: {res['compile_s_total']:.1f} (persistent cache: {cache or 'off'}); "
          f"whole run {res['wall_s']:.0f} s")
    plot = a.plot or (os.path.splitext(a.json)[0] + ".png" if a.json else None)
    if res.get("scaling") and plot:
        res["plot"] = plot_scaling(res["scaling"], plot)
        print(f"wrote {plot}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {a.json}")
    return res


if __name__ == "__main__":
    main()
