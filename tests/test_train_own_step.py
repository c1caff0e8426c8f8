"""Tasks that bring their own train step and state (tta_jax.train.step.make_guarded_step,
tta_jax.train.state.task_state_shardings, loop.Task.step_fn/init_state): the guard's skip, key and
counters on a two-optimizer toy task, the shardings of a multi-network state, and the task kinds and
settings the loop refuses. Training such a task through loop.train (data-parallel mesh, exact resume
across a preemption, a non-finite step skipped): the VAE GAN in tests/test_gan_loop.py."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train_loop import tiny_config

from tta_jax.errors import ConfigError
from tta_jax.train import loop, toy
from tta_jax.train.state import task_state_shardings
from tta_jax.train.step import make_guarded_step


@flax.struct.dataclass
class PairState:
    """Two networks with one optimizer each: ``params`` (the toy denoiser) and ``critic`` (a vector)."""
    step: jax.Array
    params: object
    critic: object
    opt_state: object
    critic_opt: object
    rng: jax.Array
    nonfinite_total: jax.Array
    nonfinite_streak: jax.Array


def pair_task(config):
    """A two-optimizer task: the denoiser learns eps-prediction (AdamW), the critic the per-channel mean of
    the batch (SGD). Params are boxed with logical names (sharded by the rules)."""
    d = config.data
    model = toy.TinyDenoiser(hidden=config.model.hidden)
    tx, ctx = optax.adamw(3e-3), optax.sgd(0.1)

    def init_state(rng):
        k1, k2, k3 = jax.random.split(rng, 3)
        boxed = model.init(k1, jnp.zeros((1, d.length, d.channels)), jnp.zeros((1,)))
        critic = {"w": jax.random.normal(k2, (d.channels,))}
        z = jnp.zeros((), jnp.int32)
        return PairState(step=z, params=boxed, critic=critic, opt_state=tx.init(nn.unbox(boxed)),
                         critic_opt=ctx.init(critic), rng=k3, nonfinite_total=z, nonfinite_streak=z)

    def step_fn(state, batch, rng):
        x = batch["latent"]
        (loss, _), g = jax.value_and_grad(
            lambda p: toy.eps_loss(model.apply, p, batch, rng), has_aux=True)(state.params)
        closs, cg = jax.value_and_grad(lambda c: jnp.mean((x.mean(axis=(0, 1)) - c["w"]) ** 2))(state.critic)
        up, opt = tx.update(g, state.opt_state, state.params)
        cup, copt = ctx.update(cg, state.critic_opt, state.critic)
        new = state.replace(params=optax.apply_updates(state.params, up), opt_state=opt,
                            critic=optax.apply_updates(state.critic, cup), critic_opt=copt)
        return new, {"loss": loss, "critic_loss": closs, "key": jax.random.uniform(rng)}

    it = toy.SyntheticIterator(config.train.batch_size, d.length, d.channels, seed=config.seed)
    return loop.Task(train_iter=it, init_state=init_state, step_fn=step_fn)


def own_config(**train):
    """test_train_loop's tiny trainer config without EMA (these tasks keep none)."""
    return tiny_config(**{"ema_decay": 0.0, **train})


def mesh_config(**train):
    c = own_config(**train)
    c.mesh.num_devices = 4
    c.mesh.data, c.mesh.fsdp = 2, 2
    return c


def test_guarded_step_skips_a_nonfinite_update_and_counts():
    cfg = own_config()
    task = pair_task(cfg)
    state = jax.jit(lambda k: nn.unbox(task.init_state(k)))(jax.random.PRNGKey(0))
    step = jax.jit(make_guarded_step(task.step_fn))
    good = {"latent": np.ones((8, 16, 4), np.float32)}
    s1, m1 = step(state, good)
    assert float(m1["finite"]) == 1.0 and int(s1.step) == 1 and int(s1.nonfinite_streak) == 0
    assert float(m1["key"]) == float(jax.random.uniform(jax.random.fold_in(state.rng, 0)))  # the step's key
    assert not np.array_equal(s1.critic["w"], state.critic["w"])
    bad = {"latent": np.full((8, 16, 4), np.nan, np.float32)}
    s2, m2 = step(s1, bad)
    assert float(m2["finite"]) == 0.0 and int(m2["nonfinite_streak"]) == 1
    assert (int(s2.step), int(s2.nonfinite_total), int(s2.nonfinite_streak)) == (2, 1, 1)
    for a, b in zip(jax.tree.leaves((s1.params, s1.critic, s1.opt_state, s1.critic_opt, s1.rng)),
                    jax.tree.leaves((s2.params, s2.critic, s2.opt_state, s2.critic_opt, s2.rng))):
        np.testing.assert_array_equal(a, b)               # both networks and both optimizers kept
    s3, m3 = step(s2, good)
    assert float(m3["finite"]) == 1.0 and (int(s3.nonfinite_total), int(s3.nonfinite_streak)) == (1, 0)


def test_task_state_shardings_follow_the_boxed_params():
    cfg = mesh_config()
    mesh = loop.make_mesh_from_config(cfg.mesh)
    task = pair_task(cfg)
    abstract, sh = task_state_shardings(task.init_state, mesh)
    assert not isinstance(abstract.params["params"]["mlp_in"]["kernel"], nn.LogicallyPartitioned)
    kernel = sh.params["params"]["mlp_in"]["kernel"]
    assert kernel.spec[0] == "fsdp"
    adam = sh.opt_state[0]                                   # ScaleByAdamState: mu / nu like the params
    assert adam.mu["params"]["mlp_in"]["kernel"] == kernel == adam.nu["params"]["mlp_in"]["kernel"]
    assert adam.count.spec == jax.sharding.PartitionSpec()   # scalars and the unboxed critic: replicated
    assert sh.critic["w"].spec == jax.sharding.PartitionSpec() and sh.rng.spec == jax.sharding.PartitionSpec()


def test_task_kinds_and_unsupported_settings_are_refused(tmp_path):
    cfg = own_config()
    t = pair_task(cfg)
    with pytest.raises(ValueError, match="Task.step_fn and Task.init_state"):
        loop.train(cfg, str(tmp_path), loop.Task(train_iter=t.train_iter, step_fn=t.step_fn))
    with pytest.raises(ValueError, match="not both"):
        loop.train(cfg, str(tmp_path), loop.Task(init_fn=lambda r: {}, train_iter=t.train_iter,
                                                 init_state=t.init_state, step_fn=t.step_fn))
    with pytest.raises(ValueError, match="Task.loss_fn is missing"):
        loop.train(cfg, str(tmp_path), loop.Task(init_fn=lambda r: {}, train_iter=t.train_iter))
    with pytest.raises(ValueError, match="Task.train_iter is missing"):
        loop.train(cfg, str(tmp_path), loop.Task(init_state=t.init_state, step_fn=t.step_fn))
    for key, value in (("microbatches", 2), ("compute_dtype", "bfloat16"), ("ema_decay", 0.99)):
        c = own_config(**{key: value})
        with pytest.raises(ConfigError, match=rf"config\.train\.{key}="):
            loop.train(c, str(tmp_path), pair_task(c))
    bad = pair_task(cfg)
    bad.init_state = lambda k: {"params": jnp.zeros(3)}
    with pytest.raises(TypeError, match="flax.struct dataclass"):
        loop.train(cfg, str(tmp_path), bad)
