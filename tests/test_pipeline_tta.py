"""The text-to-audio task pieces: patching, loss wiring, and the jitted CFG generator."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax.core import meta

from configs.ezaudio_demo import get_config
from tta_jax import diffusion as D
from tta_jax.pipelines import tta


@pytest.fixture(scope="module")
def tiny():
    c = get_config()
    c.model.width, c.model.depth, c.model.num_heads, c.model.sola_rank = 32, 2, 2, 4
    c.data.patch_frames = 2
    c.data.token_pca = 0  # raw tokens here; tests/test_token_pca.py covers the PCA path
    c.model.in_channels = c.model.out_channels = 8  # 2 frames x 4 bins
    c.sampler.num_steps = 4
    model = tta.denoiser_of(c)

    @jax.jit  # one program: op-by-op init and per-leaf noise dispatch many small compiles on the CPU
    def init(key):
        params = meta.unbox(model.init(key, (6, 8), 5))
        # make the zero-initialised output paths non-trivial so the test can see conditioning
        return jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)

    return c, model, init(jax.random.PRNGKey(0))


def test_patchify_roundtrip_and_mask():
    x = jnp.arange(2 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 3)
    np.testing.assert_array_equal(tta.unpatchify(tta.patchify(x, 2), 2), x)
    assert tta.patchify(x, 3).shape == (2, 2, 9)
    m = jnp.array([[0, 1, 0, 0, 0, 0]], jnp.float32)
    np.testing.assert_array_equal(tta.patch_mask(m, 2), [[1, 0, 0]])
    with pytest.raises(ValueError, match="patch_frames"):
        tta.patchify(x, 4)


def test_loss_uses_masked_frames_only(tiny):
    c, model, params = tiny
    loss_fn = jax.jit(tta.make_loss_fn(model, c))  # both calls below share the compiled program
    rs = np.random.RandomState(0)
    batch = {"latent": jnp.asarray(rs.randn(2, 12, 4), jnp.float32),
             "text": jnp.asarray(rs.randn(2, 5, 384), jnp.float32), "text_mask": jnp.ones((2, 5), bool),
             "mask": jnp.zeros((2, 12)).at[:, :4].set(1.0), "latent_valid": jnp.ones((2, 12))}
    loss, metrics = loss_fn(params, batch, jax.random.PRNGKey(0))
    assert np.isfinite(float(loss))
    # an empty generation mask leaves nothing to learn: the loss is exactly 0, not NaN
    empty, _ = loss_fn(params, dict(batch, mask=jnp.zeros((2, 12))), jax.random.PRNGKey(0))
    assert float(empty) == 0.0


def test_generator_pads_context_and_pastes_back(tiny):
    c, model, params = tiny
    gen = tta.generator_from_config(model, c)
    rs = np.random.RandomState(1)
    text = jnp.asarray(rs.randn(2, 5, 384), jnp.float32)
    mask = jnp.ones((2, 5), bool)
    null, null_mask = jnp.zeros((1, 3, 384)), jnp.ones((1, 3), bool)  # shorter than the prompt
    out = gen.generate(params, {"text": text, "text_mask": mask}, {"text": null, "text_mask": null_mask}, jax.random.PRNGKey(0), (6, 8))
    assert out.shape == (2, 6, 8) and np.isfinite(np.asarray(out)).all()
    again = gen.generate(params, {"text": text, "text_mask": mask}, {"text": null, "text_mask": null_mask}, jax.random.PRNGKey(0), (6, 8))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(again))  # deterministic given the key
    other = gen.generate(params, {"text": text[::-1], "text_mask": mask}, {"text": null, "text_mask": null_mask}, jax.random.PRNGKey(0), (6, 8))
    assert not np.allclose(np.asarray(other[0]), np.asarray(out[0]))  # the prompt matters
    src = jnp.asarray(rs.randn(2, 6, 8), jnp.float32)
    edit_mask = jnp.zeros((2, 6)).at[:, 2:4].set(1.0)
    edited = gen.generate(params, {"text": text, "text_mask": mask}, {"text": null, "text_mask": null_mask},
                          jax.random.PRNGKey(0), (6, 8), masked_latent=src, mask=edit_mask)
    keep = np.asarray(edit_mask) < 0.5
    np.testing.assert_array_equal(np.asarray(edited)[keep], np.asarray(src)[keep])


def test_wiener_preconditioning_wiring(tiny):
    """diffusion.precondition = "wiener": the network reads c_in x_t and the masked latent over its std, the
    generator and the loss use the same wrapper, and a non-x0 objective or unknown kind names the key."""
    c, model, params = tiny
    c = c.copy_and_resolve_references()
    c.diffusion.precondition = "wiener"
    c.diffusion.sigma_data = 2.0
    assert float(tta.precondition_var_of(c)) == 4.0
    bad = c.copy_and_resolve_references()
    bad.diffusion.sigma_data = 0.0
    with pytest.raises(ValueError, match="diffusion.sigma_data"):
        tta.precondition_var_of(bad)
    sched = tta.schedule_of(c)
    seen = {}

    def net(x, t, cond):
        seen.update(x=x, cond=cond)
        return jnp.zeros_like(x)

    x_t = jnp.full((1, 3, 8), 3.0)
    ml = jnp.full((1, 3, 8), 6.0)
    out = tta.preconditioned(net, sched, 4.0)(x_t, jnp.array([999]), {"masked_latent": ml})
    np.testing.assert_allclose(np.asarray(seen["x"]), 3.0, rtol=1e-6)   # zero SNR: c_in = 1
    np.testing.assert_allclose(np.asarray(seen["cond"]["masked_latent"]), 3.0, rtol=1e-6)  # 6 / sqrt(4)
    np.testing.assert_allclose(np.asarray(out), 0.0, atol=1e-6)  # c_skip = 0 at zero SNR
    assert tta.preconditioned(net, sched, None) is net

    gen = tta.generator_from_config(model, c)
    assert float(gen.data_var) == 4.0
    rs = np.random.RandomState(1)
    text, mask = jnp.asarray(rs.randn(2, 5, 384), jnp.float32), jnp.ones((2, 5), bool)
    null, null_mask = jnp.zeros((1, 5, 384)), jnp.ones((1, 5), bool)
    pre = gen.generate(params, {"text": text, "text_mask": mask}, {"text": null, "text_mask": null_mask}, jax.random.PRNGKey(0), (6, 8))
    plain = tta.generator_from_config(model, tiny[0]).generate(
        params, {"text": text, "text_mask": mask}, {"text": null, "text_mask": null_mask}, jax.random.PRNGKey(0), (6, 8))
    assert np.isfinite(np.asarray(pre)).all() and not np.allclose(np.asarray(pre), np.asarray(plain))
    batch = {"latent": jnp.asarray(rs.randn(2, 12, 4), jnp.float32), "text": text, "text_mask": mask}
    loss, _ = jax.jit(tta.make_loss_fn(model, c))(params, batch, jax.random.PRNGKey(0))
    assert np.isfinite(float(loss))

    # precondition_loss_power = 1: the loss is the network's own (normalised) error, c_out^-2 times the x0 error
    w = tta.precondition_loss_weight(sched, jnp.asarray([4.0, 0.25]), 1.0)(jnp.array([999, 0]), jnp.zeros((2, 3, 2)))
    _, _, c_out = D.wiener_coefficients(sched.alphas_cumprod[jnp.array([999, 0])][:, None, None], jnp.asarray([4.0, 0.25]))
    np.testing.assert_allclose(np.asarray(w), 1.0 / np.asarray(c_out) ** 2, rtol=1e-5)
    assert w.shape == (2, 1, 2) and tta.precondition_loss_weight(sched, 4.0, 0.0) is None
    with pytest.raises(ValueError, match="precondition_loss_power"):
        tta.precondition_loss_weight(sched, 4.0, 1.5)
    with pytest.raises(ValueError, match="precondition_loss_power.*'wiener'"):
        tta.precondition_loss_weight(sched, None, 0.5)

    c.diffusion.prediction_type = "v_prediction"
    with pytest.raises(ValueError, match="diffusion.precondition"):
        tta.precondition_var_of(c)
    c.diffusion.prediction_type = "sample"
    c.diffusion.precondition = "edm"
    with pytest.raises(ValueError, match="diffusion.precondition"):
        tta.precondition_var_of(c)
