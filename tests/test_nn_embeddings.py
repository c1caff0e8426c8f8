"""timestep_embedding vs diffusers.get_timestep_embedding, and the TimestepMLP layout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.nn.embeddings import TimestepMLP, timestep_embedding


@pytest.mark.parity
@pytest.mark.parametrize("flip,shift,dim,scale", [(True, 0.0, 256, 1.0), (False, 1.0, 320, 1.0),
                                                  (True, 1.0, 33, 2.0)])
def test_timestep_embedding_matches_diffusers(flip, shift, dim, scale, rel_err):
    torch = pytest.importorskip("torch")
    from diffusers.models.embeddings import get_timestep_embedding

    t = np.array([0, 1, 17, 500, 999], np.int64)
    ref = get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip,
                                 downscale_freq_shift=shift, scale=scale).numpy()
    ours = np.asarray(timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=flip,
                                         downscale_freq_shift=shift, scale=scale))
    assert ours.shape == ref.shape
    # torch's float32 exp is not always correctly rounded: one ulp (6e-8) in a frequency times t = 999
    # moves the argument by ~6e-5 rad, so 1e-4 is the float32 bound, not slack.
    assert rel_err(ours, ref) < 1e-4


def test_timestep_embedding_layout():
    e = np.asarray(timestep_embedding(jnp.array([0.0, 2.0]), 8, flip_sin_to_cos=True, downscale_freq_shift=0))
    np.testing.assert_allclose(e[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)  # [cos, sin]
    np.testing.assert_allclose(e[1, 0], np.cos(2.0), rtol=1e-6)  # first frequency is 1
    np.testing.assert_allclose(e[1, 1], np.cos(2.0 * 10000 ** (-1 / 4)), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[B\]"):
        timestep_embedding(jnp.zeros((2, 1)), 8, flip_sin_to_cos=True)


def test_timestep_mlp_param_names():
    p = TimestepMLP(32).init(jax.random.key(0), jnp.ones((2, 16)))["params"]
    assert set(p) == {"linear_1", "linear_2"}
    assert p["linear_1"]["kernel"].value.shape == (16, 32)
