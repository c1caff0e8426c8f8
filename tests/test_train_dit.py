"""The trainer's pieces on the real EzAudio-DiT (tiny): EzAudio's weight-decay rules on the real
parameter tree.

A full `loop.train` run of the tiny DiT works (measured: 3 steps on a (data 2, fsdp 2, tensor 2) mesh,
finite losses) but compiling its train step takes 100-250 s on this CPU, too slow for the suite;
`dit_task` below is the template for plugging the real model and loss into `loop.Task`."""
import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.denoisers.dit import DiT, ezaudio_tiny
from tta_jax.diffusion.objectives import diffusion_loss
from tta_jax.diffusion.schedules import make_schedule
from tta_jax.train import loop
from tta_jax.train.optim import decay_mask, path_str


class CondIterator:
    """Synthetic EzAudio-style batches: latent [B, T, 16], text [B, L, 32], text_mask, loss_mask."""

    def __init__(self, batch, T=16, L=5, seed=0):
        self.batch, self.T, self.L, self.seed, self.index = batch, T, L, seed, 0

    def __next__(self):
        r = np.random.default_rng([self.seed, self.index])
        self.index += 1
        mask = (r.random((self.batch, self.T)) < 0.5).astype(np.float32)
        return {"latent": r.standard_normal((self.batch, self.T, 16)).astype(np.float32),
                "cond": {"text": r.standard_normal((self.batch, self.L, 32)).astype(np.float32),
                         "text_mask": np.ones((self.batch, self.L), bool),
                         "mask": mask},
                "loss_mask": mask}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, s):
        self.index = int(s["index"])


def dit_task(batch):
    model = DiT(ezaudio_tiny())
    sched = make_schedule("scaled_linear", zero_terminal_snr=True, prediction_type="v_prediction")

    def init_fn(rng):
        return model.init(rng, jnp.zeros((1, 16, 16)), jnp.zeros((1,)),
                          {"text": jnp.zeros((1, 5, 32)), "text_mask": jnp.ones((1, 5), bool),
                           "mask": jnp.ones((1, 16))})

    def apply_fn(params, x_t, t, cond, rng):
        return model.apply(params, x_t, t, cond, train=True, rngs={"dropout": rng})

    def loss_fn(params, b, rng):
        return diffusion_loss(apply_fn, params, b, rng, sched)
    return loop.Task(init_fn=init_fn, loss_fn=loss_fn, train_iter=CondIterator(batch))


def test_decay_mask_on_dit_params():
    params = jax.eval_shape(dit_task(2).init_fn, jax.random.PRNGKey(0))
    import flax.linen as nn
    flat = jax.tree_util.tree_flatten_with_path(decay_mask(nn.unbox(params)))[0]
    mask = {path_str(p): v for p, v in flat}
    decayed = [k for k, v in mask.items() if v]
    kept = [k for k, v in mask.items() if not v]
    assert decayed and kept
    assert all(k.endswith("kernel") for k in decayed)
    assert not any("norm" in k.lower() or "mask_embed" in k or "table" in k for k in decayed), decayed
    assert any("mask_embed" in k for k in kept)
    assert any(k.endswith("bias") for k in kept)
