"""The waveform-VAE GAN trained by the general loop (tta_jax.train.loop with gan.build_vae_training):
a preempted run resumes bit-exactly (both networks, both optimizers, RNG, data position), the
discriminator starts at extra.adv_start_step, and a non-finite step is skipped without touching the state.

Micro VAE config on a 2-device mesh; the programs are shared through test_train_loop's persistent
compilation cache fixture (the three runs here compile the same step)."""
import os

import jax
import numpy as np
import pytest
from test_train_loop import StopAt, compile_cache  # noqa: F401 - module-scoped autouse fixture

from tta_jax.config import load_config
from tta_jax.errors import ConfigError
from tta_jax.train import gan, observe
from tta_jax.train.loop import make_mesh_from_config, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def micro_config(total_steps=4):
    """The micro VAE data-parallel on 2 devices (batch 2), 4 steps, discriminator from step 2, evaluation
    every 2 steps."""
    return load_config(f"{ROOT}/configs/ezaudio_vae.py:micro", [
        "mesh.data=2", f"train.total_steps={total_steps}", "train.log_every=2", "train.ckpt_every=100",
        "train.progress_bar=False", "train.tensorboard=False", "train.measure_peak=False",
        "extra.num_clips=12", "extra.clip_seconds=0.5", "extra.eval_every=2", "extra.adv_start_step=2"])


def state_leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def kernels_moved(a, b) -> list[bool]:
    fa = jax.tree_util.tree_flatten_with_path(a)[0]
    return [bool(np.any(np.asarray(x) != np.asarray(y))) for (p, x), y in zip(fa, jax.tree.leaves(b))
            if "kernel" in jax.tree_util.keystr(p)]


def adam_updates(opt_state) -> tuple[set, list[bool]]:
    """(the optimizer's update counts, for every kernel: is its Adam first moment non-zero) of an
    optax AdamW state: counts {n} with all moments non-zero = n updates reached every kernel."""
    flat = [(jax.tree_util.keystr(p), np.asarray(x)) for p, x in jax.tree_util.tree_flatten_with_path(opt_state)[0]]
    counts = {int(x) for k, x in flat if k.endswith(".count")}
    return counts, [bool(np.any(x != 0)) for k, x in flat if ".mu" in k and "kernel" in k]


class PoisonAt:
    """Wraps the segment iterator: the batches numbered ``indices`` (0-based) are all NaN."""

    def __init__(self, it, *indices):
        self.it, self.indices = it, set(indices)

    def __next__(self):
        poison = self.it.index in self.indices
        batch = next(self.it)
        return np.full_like(batch, np.nan) if poison else batch

    def get_state(self):
        return self.it.get_state()

    def set_state(self, s):
        self.it.set_state(s)


def run(cfg, workdir, guard=None):
    """The VAE GAN through loop.train with batch 2 (step 3) poisoned; the generator params are recorded
    after every step (next to the GAN's own evaluation)."""
    mesh = make_mesh_from_config(cfg.mesh)
    task = gan.build_vae_training(cfg, mesh)
    task.train_iter = PoisonAt(task.train_iter, 2)
    seen, evaluate = [], task.eval_fn

    def record(params, step):
        seen.append(jax.device_get(params))
        return evaluate(params, step) if step % 2 == 0 else None
    task.eval_fn, task.eval_every = record, 1
    return train(cfg, str(workdir), task, mesh=mesh, guard=guard), seen


@pytest.mark.slow  # ~40 s on 2 CPU cores: compiles the GAN step once, the other runs hit the cache
def test_gan_resumes_bit_exactly_skips_nonfinite_and_starts_the_discriminator_late(tmp_path):
    cfg = micro_config()
    straight, seen = run(cfg, tmp_path / "a")
    assert straight.step == 4 and straight.reason == "done"
    assert len(jax.tree.leaves(straight.state.params)[0].sharding.device_set) == 2   # on the mesh
    # step 3 saw NaN audio: skipped, nothing changed; steps 1, 2 and 4 trained
    assert int(straight.state.nonfinite_total) == 1 and int(straight.state.nonfinite_streak) == 0
    for x, y in zip(jax.tree.leaves(seen[1]), jax.tree.leaves(seen[2])):
        np.testing.assert_array_equal(x, y)
    assert any(kernels_moved(seen[0], seen[1])) and any(kernels_moved(seen[2], seen[3]))
    assert all(np.isfinite(x).all() for x in state_leaves(straight.state))

    first, _ = run(cfg, tmp_path / "b", guard=StopAt(2))
    assert first.reason == "preempted" and first.step == 2
    # extra.adv_start_step=2: steps 1-2 update every generator kernel and leave the discriminator alone
    counts, moved = adam_updates(first.state.opt_state)
    assert counts == {2} and moved and all(moved)
    counts, moved = adam_updates(first.state.disc_opt_state)
    assert counts == {0} and moved and not any(moved)

    second, _ = run(cfg, tmp_path / "b")                    # a fresh trainer resumes from the workdir
    assert second.start_step == 2 and second.step == 4
    a, b = straight.state, second.state
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(state_leaves(a), state_leaves(b)):      # both networks, both optimizers, rng, counters
        np.testing.assert_array_equal(x, y)
    counts, moved = adam_updates(b.disc_opt_state)           # step 4 (not the skipped 3) trained it
    assert counts == {1} and all(moved) and all(kernels_moved(first.state.disc_params, b.disc_params))

    # logging: train metrics every 2 steps, the GAN's evaluation at 2 and 4, split over the two runs
    recs = observe.read_jsonl(str(tmp_path / "b" / "metrics.jsonl"))
    assert [r["step"] for r in recs if "mrstft" in r] == [2, 4]
    assert [r["step"] for r in recs if "eval/mrstft" in r] == [2, 4]
    last = [r for r in recs if "mrstft" in r][-1]
    assert last["finite"] == pytest.approx(0.5) and last["nonfinite_total"] == 1.0
    assert {"gen_loss", "disc_loss", "lr", "gen_grad_norm", "perf/steps_per_s"} <= set(last)
    assert [e["step"] for e in second.evals] == [4] and second.history[-1]["step"] == 4


def test_train_vae_refuses_an_ema(tmp_path):
    """The GAN state keeps no EMA: train.ema_decay > 0 is refused by name, before anything is compiled."""
    cfg = micro_config()
    cfg.train.ema_decay = 0.999
    with pytest.raises(ConfigError, match=r"config\.train\.ema_decay=0\.999"):
        gan.train_vae(cfg, str(tmp_path))
