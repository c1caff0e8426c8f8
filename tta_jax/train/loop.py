"""The train loop: mesh, sharded state, jitted step, checkpoint/resume, guard rails, logging.

Generic over the task. A task (built by ``config.builder``) provides::

    Task(init_fn(rng) -> params (boxed with logical names or plain),
         loss_fn(params, batch, rng) -> (loss, metrics),
         train_iter: iterator of host-local numpy batches with get_state()/set_state(),
         sample_fn(params, step, out_dir) -> dict | None   (optional; EMA params when EMA is on),
         decay_mask_fn(params) -> bool tree                (optional; default optim.decay_mask),
         save_assets(workdir)                              (optional; statistics sampling needs, e.g. the
                                                            token PCA or a VAE's latent scale, written by
                                                            process 0 before training and after the last
                                                            checkpoint),
         eval_fn(params, step) -> {name: scalar} | None    (optional; every ``Task.eval_every`` steps (0:
                                                            none) and at the last step, logged like the
                                                            train metrics; EMA params when EMA is on))

and trains with the default step (``step.make_train_step``: one optimizer from ``config.optimizer``, EMA,
clipping, micro-batches). A task with its own update -- several networks, several optimizers, several
losses (the VAE GAN of ``tta_jax.train.gan``) -- gives instead of ``init_fn``/``loss_fn``::

    init_state(rng) -> its train state   (a flax.struct dataclass with step, params, rng, nonfinite_total,
                                          nonfinite_streak and its own fields; leaves boxed with logical
                                          names are sharded by ``config.sharding_rules``)
    step_fn(state, batch, rng) -> (state, metrics)   (``step.TrainStep``; wrapped by
                                          ``step.make_guarded_step``: RNG, step counter, non-finite skip)

Both kinds get the same mesh, sharded jit, Orbax resume, SIGTERM handling, non-finite abort and logging.
``train.microbatches``, ``train.compute_dtype`` and (for a state without ``ema_params``) ``train.ema_decay``
belong to the default step: a task with its own step refuses them by name rather than ignore them.

``config.train.init_from`` (+ ``init_prefix``) starts a fresh run from a pretrained model's params and
``config.optimizer.trainable`` freezes the rest (:mod:`tta_jax.train.partial`).

``train(config, workdir)`` resumes automatically from ``<workdir>/checkpoints`` (state + data iterator
+ RNG), saves every ``train.ckpt_every`` steps (async, keep ``train.keep_ckpts``), on SIGTERM and at the
end, skips non-finite updates and aborts (``NonFiniteError``) after ``train.max_consecutive_nonfinite``
in a row without saving -- the last good checkpoint stays the latest. Outputs in ``workdir``:
``checkpoints/``, ``metrics.jsonl``, ``tb/`` (TensorBoard), ``param_overview.txt``, ``samples/step_N/``.

Notes: ``sample_fn`` and ``eval_fn`` run on every process (params may be sharded across hosts); only
process 0 has the TensorBoard writer. Without a progress bar each logged interval also goes to the
``logging`` INFO log. After a kill, steps between the last checkpoint and the kill are logged again
in ``metrics.jsonl`` (keep the last record per step). Steps that are skipped as non-finite still
advance ``state.step`` (the batch was consumed) but not the optimizer.

Plugging in a diffusion system (see tests/test_train_dit.py)::

    def build(config, mesh):
        model = DiT(DiTConfig.from_dict(config.model))
        schedule = schedule_from_config(config.diffusion)
        apply_fn = lambda p, x, t, c, r: model.apply(p, x, t, c, train=True, rngs={"dropout": r})
        return Task(init_fn=lambda r: model.init(r, x_dummy, t_dummy, cond_dummy),
                    loss_fn=lambda p, b, r: diffusion_loss(apply_fn, p, b, r, schedule),
                    train_iter=iter(make_dataset(...)))   # batches regrouped to latent/cond/loss_mask
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from tta_jax.errors import ConfigError
from tta_jax.nn import sharding as shd
from tta_jax.train import observe
from tta_jax.train.checkpoint import Checkpointer
from tta_jax.train.config import check_batch_vs_mesh, validate_trainer_config
from tta_jax.train.optim import make_optimizer
from tta_jax.train.preemption import PreemptionGuard
from tta_jax.train.state import (init_state_sharded, state_shardings, task_state_shardings,
                                 with_shardings)
from tta_jax.train.step import TrainStep, make_guarded_step, make_train_step

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite losses/gradients; the last good checkpoint is untouched."""


@dataclasses.dataclass
class Task:
    """What the loop trains (module docstring): ``init_fn`` + ``loss_fn`` for the default step, or
    ``init_state`` + ``step_fn`` for the task's own; ``train_iter`` always."""
    init_fn: Callable[[jax.Array], Any] | None = None
    loss_fn: Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]] | None = None
    train_iter: Any = None
    sample_fn: Callable[[Any, int, str], dict | None] | None = None
    decay_mask_fn: Callable[[Any], Any] | None = None
    save_assets: Callable[[str], Any] | None = None   # (workdir) -> writes what sampling needs besides params
    init_state: Callable[[jax.Array], Any] | None = None   # rng -> the task's own train state
    step_fn: TrainStep | None = None                      # (state, batch, rng) -> (state, metrics)
    eval_fn: Callable[[Any, int], dict | None] | None = None   # (params, step) -> {name: scalar}
    eval_every: int = 0                                   # 0: eval_fn at the last step only


# Fields the loop reads from any train state (TrainState has them; a task's own state must too).
STATE_FIELDS = ("step", "params", "rng", "nonfinite_total", "nonfinite_streak")


@dataclasses.dataclass
class TrainResult:
    state: Any             # TrainState, or the task's own state
    step: int
    reason: str            # "done" | "preempted"
    start_step: int        # step the run started (or resumed) from
    flops_per_step: float | None
    history: list = dataclasses.field(default_factory=list)  # this run's logged intervals ({"step", ...})
    evals: list = dataclasses.field(default_factory=list)    # this run's eval_fn results ({"step", ...})


@dataclasses.dataclass
class _Program:
    """How one task's state is built and updated: abstract state + shardings (the restore target),
    ``init(key) -> state`` (placed in the shardings) and the pure ``step(state, batch)``."""
    abstract: Any
    shardings: Any
    init: Callable[[jax.Array], Any]
    step: Callable[[Any, Any], tuple[Any, dict]]


def check_task(task: Task) -> None:
    """Raise ValueError naming the field when ``task`` is neither kind of task (module docstring)."""
    if task.train_iter is None:
        raise ValueError("Task.train_iter is missing: an iterator of host-local batches with "
                         "get_state()/set_state()")
    own = task.step_fn is not None or task.init_state is not None
    if own and (task.step_fn is None or task.init_state is None):
        raise ValueError("Task.step_fn and Task.init_state go together (the task's own update and the "
                         "state it updates); one is missing")
    if own and (task.init_fn is not None or task.loss_fn is not None):
        raise ValueError("Task: give init_fn + loss_fn (the default step) or init_state + step_fn (the task's "
                         "own step), not both")
    if not own and (task.init_fn is None or task.loss_fn is None):
        raise ValueError(f"Task.{'init_fn' if task.init_fn is None else 'loss_fn'} is missing (or give "
                         "init_state + step_fn)")
    if int(task.eval_every) < 0:
        raise ValueError(f"Task.eval_every={task.eval_every}: expected >= 0 (0: at the last step only)")


def _default_program(config, task: Task, mesh, rules) -> _Program:
    """The default step: one optimizer (``config.optimizer``), EMA, clipping, micro-batches, bf16."""
    tc = config.train
    use_ema = tc.ema_decay > 0
    tx, sched = make_optimizer(config.optimizer, tc.total_steps, mask_fn=task.decay_mask_fn)
    abstract, shardings = state_shardings(task.init_fn, tx, mesh, rules, use_ema=use_ema)
    step = make_train_step(task.loss_fn, tx, lr_schedule=sched,
                           ema_decay=tc.ema_decay if use_ema else None,
                           ema_warmup=tc.ema_warmup, microbatches=tc.microbatches,
                           compute_dtype=_compute_dtype(tc.compute_dtype))
    return _Program(abstract, shardings,
                    lambda key: init_state_sharded(task.init_fn, tx, key, shardings, use_ema=use_ema), step)


def _task_program(config, task: Task, mesh, rules) -> _Program:
    """The task's own state and step; trainer settings only the default step implements are refused."""
    tc = config.train
    if tc.microbatches > 1:
        raise ConfigError(f"config.train.microbatches={tc.microbatches}: this task brings its own train step "
                          "(Task.step_fn), which does not split batches; set 1")
    if _compute_dtype(tc.compute_dtype) is not None:
        raise ConfigError(f"config.train.compute_dtype={tc.compute_dtype!r}: this task brings its own train step "
                          "(Task.step_fn), which sets its own precision; set ''")
    abstract, shardings = task_state_shardings(task.init_state, mesh, rules)
    missing = [f for f in STATE_FIELDS if not hasattr(abstract, f)]
    if missing or not hasattr(abstract, "replace"):
        raise TypeError(f"Task.init_state must return a flax.struct dataclass with the fields {STATE_FIELDS}; "
                        f"got {type(abstract).__name__} without {missing or ['replace()']}")
    if tc.ema_decay > 0 and getattr(abstract, "ema_params", None) is None:
        raise ConfigError(f"config.train.ema_decay={tc.ema_decay}: this task's own state keeps no EMA "
                          "(no ema_params); set 0")
    init = jax.jit(lambda key: nn.unbox(task.init_state(key)), out_shardings=shardings)
    return _Program(abstract, shardings, init, make_guarded_step(task.step_fn))


def make_mesh_from_config(mcfg, devices=None):
    """Mesh (data, fsdp, tensor) from ``config.mesh``; one size may be -1 (= remaining devices)."""
    if devices is None:
        devices = jax.devices()
        n = mcfg.get("num_devices", None) if hasattr(mcfg, "get") else None
        if n:
            devices = devices[:int(n)]
    sizes = {ax: int(mcfg[ax]) for ax in ("data", "fsdp", "tensor")}
    fixed = int(np.prod([v for v in sizes.values() if v != -1]))
    for ax, v in sizes.items():
        if v == -1:
            if len(devices) % fixed:
                raise ValueError(f"config.mesh: {len(devices)} devices not divisible by the fixed "
                                 f"axes product {fixed}")
            sizes[ax] = len(devices) // fixed
    return shd.make_mesh(sizes["data"], sizes["fsdp"], sizes["tensor"],
                         devices=np.asarray(devices[:int(np.prod(list(sizes.values())))]))


def build_task(config, mesh) -> Task:
    mod_name, fn_name = config.builder.split(":")
    fn = getattr(importlib.import_module(mod_name), fn_name)
    return fn(config, mesh)


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp")))


def process_batch_rows(mesh, global_batch: int) -> slice:
    """The rows of a [global_batch, ...] batch that this process feeds to :func:`to_global` (the
    block its devices hold under :func:`batch_sharding`); ``slice(0, global_batch)`` with one process.
    A task that can draw the global batch on every process keeps these rows, so its data do not
    depend on the number of processes."""
    idx = batch_sharding(mesh).addressable_devices_indices_map((global_batch,)).values()
    spans = sorted({sl[0].indices(global_batch)[:2] for sl in idx})
    rows = slice(spans[0][0], spans[-1][1])
    if sum(b - a for a, b in spans) != rows.stop - rows.start:
        raise ValueError(f"process {jax.process_index()}: its devices hold batch rows {spans} of "
                         f"{global_batch}, not one contiguous block; order config.mesh devices by process")
    return rows


def to_global(batch, mesh):
    """Host-local numpy batch (nested dicts) -> global jax arrays sharded over (data, fsdp) on the
    leading dim. String/object entries (captions, keys) are dropped: nothing in the step reads them."""
    sh = batch_sharding(mesh)

    def conv(x):
        if isinstance(x, dict):
            return {k: v for k, v in ((k, conv(v)) for k, v in x.items()) if v is not None}
        x = np.asarray(x)
        if x.dtype.kind in "USO":
            return None
        return jax.make_array_from_process_local_data(sh, x)
    return conv(batch)


def _compute_dtype(name):
    return {"": None, None: None, "float32": None, "bfloat16": jnp.bfloat16,
            "float16": jnp.float16}[name]


def _is_primary() -> bool:
    return jax.process_index() == 0


def train(config, workdir: str, task: Task | None = None, *, mesh=None,
          guard: PreemptionGuard | None = None) -> TrainResult:
    validate_trainer_config(config, num_processes=jax.process_count())
    tc = config.train
    mesh = mesh if mesh is not None else make_mesh_from_config(config.mesh)
    check_batch_vs_mesh(config, mesh)
    task = task if task is not None else build_task(config, mesh)
    check_task(task)
    os.makedirs(workdir, exist_ok=True)
    if task.save_assets is not None and _is_primary():  # the workdir samples without the training data
        task.save_assets(workdir)
    rules = tuple(config.sharding_rules) if config.get("sharding_rules") else shd.DEFAULT_RULES

    with sharding_context(mesh, rules):
        program = (_task_program if task.step_fn is not None else _default_program)(config, task, mesh, rules)
    shardings = program.shardings
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.keep_ckpts or None,
                        async_save=tc.async_ckpt)
    latest = ckpt.latest_step()
    if latest is not None:
        state, data_state, _ = ckpt.restore(with_shardings(program.abstract, shardings), latest)
        task.train_iter.set_state(data_state)
        log.info("resumed from %s at step %d", ckpt.directory, latest)
    else:
        with sharding_context(mesh, rules):
            state = program.init(jax.random.PRNGKey(config.seed))
        if tc.get("init_from"):  # a fresh run that starts from a pretrained model (adapters on top of it)
            state = start_from_pretrained(state, tc.init_from, tc.get("init_prefix", ""))
        for part in tc.get("init_parts", ()) or ():   # more pretrained parts ("SOURCE[#SUBTREE]@PREFIX")
            state = start_from_pretrained(state, part)
    start = int(state.step)

    overview = observe.param_overview(state.params)
    log.info("parameters (%d):\n%s", observe.count_params(state.params), overview)
    jsonl = tb = None
    if _is_primary():
        with open(os.path.join(workdir, "param_overview.txt"), "w") as f:
            f.write(overview + "\n")
        jsonl = observe.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
        if tc.tensorboard:
            tb = observe.TensorBoardWriter(os.path.join(workdir, "tb"))

    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(program.step, in_shardings=(shardings, batch_sharding(mesh)),
                     out_shardings=(shardings, replicated), donate_argnums=(0,))

    guard = guard or PreemptionGuard()
    averager = observe.MetricAverager()
    compiled = None
    flops = None
    reason = "done"
    last_saved = latest
    step = start
    K = tc.max_consecutive_nonfinite
    prev = None
    history, evals = [], []

    def check_streak(metrics, at_step) -> int:
        streak = int(metrics["nonfinite_streak"])
        if K and streak >= K:
            raise NonFiniteError(
                f"{streak} consecutive non-finite losses/gradients at step {at_step}; aborting. "
                f"Last good checkpoint: step {ckpt.latest_step()} in {ckpt.directory}")
        return streak

    pbar = None
    if _is_primary() and tc.progress_bar:
        from tqdm import tqdm
        pbar = tqdm(total=tc.total_steps, initial=start, dynamic_ncols=True, desc="train")
    try:
        with guard:
            while step < tc.total_steps:
                batch = to_global(next(task.train_iter), mesh)
                if compiled is None:
                    with sharding_context(mesh, rules):
                        compiled = jitted.lower(state, batch).compile()
                    flops = observe.compiled_flops(compiled)
                    peak = tc.get("peak_flops_per_device", None)
                    if not peak and tc.measure_peak:
                        peak = observe.measure_peak_flops()
                    meter = observe.Throughput(tc.batch_size, flops, peak, mesh.size)
                    log.info("step FLOPs/device %s, peak FLOP/s/device %s", flops, peak)
                state, metrics = compiled(state, batch)
                step += 1
                meter.tick()
                averager.update(metrics)
                # The streak of the *previous* step is read after this step is dispatched, so the
                # host never waits on the device here (skipped steps leave params unchanged, so
                # noticing one step late changes nothing).
                if prev is not None:
                    check_streak(*prev)
                prev = (metrics, step)
                if step % tc.log_every == 0 or step == tc.total_steps:
                    values = averager.compute()
                    values.update(meter.measure())
                    history.append(dict(values, step=step))
                    _write_scalars(step, values, jsonl, tb, pbar)
                    if pbar is not None:
                        post = {"loss": f"{values['loss']:.4g}"} if "loss" in values else {}
                        pbar.set_postfix(**post, steps_s=f"{values['perf/steps_per_s']:.2f}",
                                         samples_s=f"{values['perf/samples_per_s']:.1f}",
                                         tflops=f"{values.get('perf/tflops_per_s_per_device', 0):.3g}",
                                         mfu=f"{values.get('perf/mfu', float('nan')):.3f}",
                                         refresh=False)
                if task.eval_fn is not None and (step == tc.total_steps or (
                        task.eval_every and step % task.eval_every == 0)):
                    values = _run_eval(task, state, step)
                    if values:
                        evals.append(dict(values, step=step))
                        _write_scalars(step, values, jsonl, tb, pbar)
                if pbar is not None:
                    pbar.update(1)
                if step % tc.ckpt_every == 0 and step != tc.total_steps:
                    if check_streak(metrics, step) == 0:
                        ckpt.save(step, state, task.train_iter.get_state(), force=True)
                        last_saved = step
                    else:
                        log.warning("step %d: not checkpointing during a non-finite streak", step)
                if tc.sample_every and task.sample_fn is not None and step % tc.sample_every == 0:
                    _run_sampler(task, state, step, workdir, tb)
                if guard.should_stop(step):
                    reason = "preempted"
                    log.warning("preemption: saving step %d and stopping", step)
                    break
        if prev is not None:
            check_streak(*prev)
        if last_saved != step:
            ckpt.save(step, state, task.train_iter.get_state(), force=True)
        ckpt.wait()
        if task.save_assets is not None and _is_primary():  # again: statistics of the final params
            task.save_assets(workdir)
    finally:
        ckpt.close()
        if pbar is not None:
            pbar.close()
        if jsonl is not None:
            jsonl.close()
        if tb is not None:
            tb.close()
    return TrainResult(state=state, step=step, reason=reason, start_step=start, flops_per_step=flops,
                       history=history, evals=evals)


def start_from_pretrained(state, source: str, prefix: str | None = None):
    """``state`` with the params (and EMA) of ``source`` (``config.train.init_from``: a workdir or a
    ``.safetensors`` file) placed at ``prefix`` (:func:`tta_jax.train.partial.merge_pretrained`), each leaf on
    the sharding of the leaf it replaces. ``prefix=None``: ``source`` is one ``config.train.init_parts`` entry
    (``"SOURCE[#SUBTREE]@PREFIX"``)."""
    from tta_jax.train.partial import merge_pretrained, read_params, read_part

    if prefix is None:   # one ``config.train.init_parts`` entry: "SOURCE[#SUBTREE]@PREFIX"
        source_params, prefix = read_part(source)
        where = "config.train.init_parts"
    else:
        source_params, where = read_params(source), "config.train.init_from"

    def put(old, new):
        return jax.device_put(jnp.asarray(new, old.dtype), old.sharding)

    def place(tree):
        # merged into ``tree`` itself, so the leaves the source lacks (fresh adapters) keep this tree's own
        # buffers: params and EMA sharing one buffer would be donated twice by the train step
        merged, n = merge_pretrained(tree, source_params, prefix, where)
        return jax.tree.map(put, tree, merged), n

    repl = {}
    repl["params"], n = place(state.params)
    if getattr(state, "ema_params", None) is not None:
        repl["ema_params"], _ = place(state.ema_params)
    log.info("initialised %d parameters from %s (at %r)", n, source, prefix or "/")
    return state.replace(**repl)


def _inference_params(state):
    """The params hooks see: the EMA when the state keeps one, else the trained params."""
    ema = getattr(state, "ema_params", None)
    return ema if ema is not None else state.params


def _write_scalars(step: int, values: dict, jsonl, tb, pbar) -> None:
    """One record to metrics.jsonl and TensorBoard (process 0), and the INFO log when no progress bar."""
    if jsonl is not None:
        jsonl.write(step, values)
    if tb is not None:
        tb.scalars(step, values)
    if pbar is None:
        log.info("step %d: %s", step, {k: round(float(v), 5) for k, v in values.items()})


def _run_eval(task: Task, state, step: int) -> dict[str, float]:
    res = task.eval_fn(_inference_params(state), step) or {}
    return {k: float(v) for k, v in res.items()}


def _run_sampler(task: Task, state, step: int, workdir: str, tb) -> None:
    out_dir = os.path.join(workdir, "samples", f"step_{step}")
    os.makedirs(out_dir, exist_ok=True)
    params = _inference_params(state)
    res = task.sample_fn(params, step, out_dir) or {}
    if tb is None:
        return
    sr = res.get("sample_rate")
    for i, wav in enumerate(res.get("audio", []) if sr else []):
        tb.audio(step, f"samples/audio_{i}", wav, sr)
    for i, spec in enumerate(res.get("spectrograms", [])):
        tb.spectrogram(step, f"samples/spec_{i}", spec)
    if res.get("scalars"):
        tb.scalars(step, res["scalars"])


@contextlib.contextmanager
def sharding_context(mesh, rules):
    """Mesh + logical axis rules active while tracing (``nn.with_logical_constraint`` needs both)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
