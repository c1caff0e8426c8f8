"""Editing on the shared generator, for a tiny random U-Net (image latents [B, H, T, C]) and DiT (sequence
latents [B, T, C]): SDEdit, RePaint-style time-span inpainting, prompt-to-prompt word swap and re-weighting,
cross-attention maps; the sampler restart (``start_step``) they build on; one ``launch.edit`` run."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from tta_jax import diffusion as D
from tta_jax.denoisers.factory import build_denoiser
from tta_jax.pipelines import editing, tta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

UNET = {"name": "unet", "in_channels": 2, "out_channels": 2, "block_out_channels": (8, 16),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "layers_per_block": 1,
        "attention_head_dim": 2, "cross_attention_dim": 16, "norm_num_groups": 4}
DIT = {"name": "dit", "in_channels": 4, "out_channels": 4, "width": 16, "depth": 2, "num_heads": 2,
       "context_dim": 16, "sola_rank": 2, "time_freq_dim": 16, "use_mask_input": False}
SHAPES = {"unet": (4, 6, 2), "dit": (6, 4)}   # one example: [H, T, C] / [T, C]
L = 5                                          # text tokens (the last one padding)


def _random_params(den, shape):
    """Random params of the model's structure (no flax initialisers: compiling them takes ~30 s on a shared
    CPU): kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.01), everything else N(0, 0.01); so the
    zero-initialised output paths are on, and text and attention visibly matter."""
    abstract = jax.eval_shape(lambda k: meta.unbox(den.init(k, shape, L)), jax.random.PRNGKey(0))
    rs = np.random.RandomState(0)

    def leaf(path, a):
        name = jax.tree_util.keystr(path)
        if len(a.shape) >= 2:
            return jnp.asarray(rs.randn(*a.shape) / np.sqrt(np.prod(a.shape[:-1])), a.dtype)
        return jnp.asarray(("scale" in name) + 0.1 * rs.randn(*a.shape), a.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


@pytest.fixture(scope="module", params=["unet", "dit"])
def system(request):
    model = UNET if request.param == "unet" else DIT
    den = build_denoiser(model)
    shape = SHAPES[request.param]
    params = _random_params(den, shape)
    # the U-Net with CFG (model calls on [cond; uncond] rows), the DiT without (cond rows only): the attention
    # controls see both layouts of the model batch
    gen = tta.Generator(den, D.make_schedule("scaled_linear", prediction_type="v_prediction"),
                        D.SamplerConfig("ddim", 4, spacing="trailing", eta=1.0),
                        guidance_scale=3.0 if request.param == "unet" else 1.0)
    return request.param, den, params, gen, shape


def _prompts(n, seed):
    rs = np.random.RandomState(seed)
    text = rs.randn(n, L, 16).astype(np.float32)
    mask = np.ones((n, L), bool)
    mask[:, -1] = False
    return {"text": jnp.asarray(text), "text_mask": jnp.asarray(mask)}


UNCOND = {"text": jnp.zeros((1, L, 16)), "text_mask": jnp.ones((1, L), bool)}


# ------------------------------------------------------------------------------ the sampler restart
@pytest.mark.parametrize("name,pt", [("ddim", "v_prediction"), ("ddpm", "epsilon"), ("euler", "flow")])
def test_starting_at_step_k_continues_the_full_trajectory(name, pt):
    """A run started at step k from the full run's state after k steps ends where the full run ends (the same
    per-step noise for DDPM); step_levels gives each row's input level."""
    sched = D.make_schedule("linear", prediction_type=pt)
    cfg = D.SamplerConfig(name, 6, spacing="trailing")

    def denoise(x, t):  # a cheap stand-in network that depends on x and t
        return 0.3 * x + 0.001 * t.astype(jnp.float32)[:, None]

    x_T = jax.random.normal(jax.random.PRNGKey(0), (2, 3))
    noises = jax.random.normal(jax.random.PRNGKey(1), (6, 2, 3))
    full, traj = D.sample(denoise, x_T, sched, cfg, noises=noises, return_trajectory=True)
    levels = D.step_levels(sched, cfg)
    assert len(levels) == 6 and np.all(np.diff(levels) < 0)
    for k in (1, 4):
        assert np.array_equal(D.step_levels(sched, cfg, k), levels[k:])
        tail = D.sample(denoise, traj[k - 1], sched, cfg, noises=noises[k:], start_step=k)
        np.testing.assert_allclose(np.asarray(tail), np.asarray(full), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="start_step"):
        D.sample(denoise, x_T, sched, cfg, noises=noises, start_step=6)


@pytest.mark.parametrize("name,pt,rows", [("pndm", "epsilon", 5), ("dpmpp_2m", "epsilon", 4), ("heun", "flow", 4)])
def test_multistep_samplers_restart(name, pt, rows):
    sched = D.make_schedule("linear", prediction_type=pt)
    cfg = D.SamplerConfig(name, 6)
    x = jnp.ones((1, 2))
    out, traj = D.sample(lambda x, t: 0.1 * x, x, sched, cfg, start_step=2, return_trajectory=True)
    assert traj.shape[0] == rows == len(D.step_levels(sched, cfg, 2)) and np.isfinite(np.asarray(out)).all()
    assert D.start_step_for_strength(6, 0.0) == 6 and D.start_step_for_strength(6, 1.0) == 0
    assert D.start_step_for_strength(6, 0.5) == 3
    # noise_to_level: clean at level -1 (DDPM) / sigma 0 (flow), pure noise at sigma 1
    z0, n = jnp.full((1, 2), 2.0), jnp.full((1, 2), -1.0)
    lvl = -1 if pt != "flow" else 0.0
    np.testing.assert_array_equal(np.asarray(D.noise_to_level(sched, z0, n, lvl)), np.asarray(z0))


# ------------------------------------------------------------------------------ SDEdit and inpainting
def test_sdedit(system):
    name, den, params, gen, shape = system
    cond = _prompts(1, 0)
    src = jax.random.normal(jax.random.PRNGKey(3), (1,) + shape)
    same = gen.edit(params, cond, UNCOND, jax.random.PRNGKey(0), shape, source=src, strength=0.0)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(src))          # strength 0: the source itself
    half = gen.edit(params, cond, UNCOND, jax.random.PRNGKey(0), shape, source=src, strength=0.5)
    assert half.shape == (1,) + shape and np.isfinite(np.asarray(half)).all()
    assert not np.allclose(np.asarray(half), np.asarray(src), atol=1e-3)
    with pytest.raises(ValueError, match="strength"):
        gen.edit(params, cond, UNCOND, jax.random.PRNGKey(0), shape, source=src, strength=1.5)


def test_inpainting_keeps_the_known_region_bit_identical(system):
    name, den, params, gen, shape = system
    cond = _prompts(1, 1)
    src = jax.random.normal(jax.random.PRNGKey(4), (1,) + shape) * 2.0
    t = shape[-2]
    mask = np.zeros((1, t), np.float32)
    mask[:, 2:4] = 1.0                                                         # generate frames 2, 3
    out = np.asarray(gen.edit(params, cond, UNCOND, jax.random.PRNGKey(0), shape, source=src, mask=mask))
    keep = np.broadcast_to(np.asarray(tta.time_mask_like(jnp.asarray(mask), jnp.asarray(out))) < 0.5, out.shape)
    np.testing.assert_array_equal(out[keep], np.asarray(src)[keep])
    assert not np.allclose(out[~keep], np.asarray(src)[~keep], atol=1e-2)    # the span was regenerated
    # RePaint: the known frames steer the generated ones (a different source, a different span)
    other = np.asarray(gen.edit(params, cond, UNCOND, jax.random.PRNGKey(0), shape, source=-src, mask=mask))
    assert np.abs(other[~keep] - out[~keep]).max() > 1e-3


# ------------------------------------------------------------------------------ prompt-to-prompt
def test_word_swap(system):
    name, den, params, gen, shape = system
    src, new = _prompts(1, 5), _prompts(1, 6)
    pair = {k: jnp.concatenate([src[k], new[k]]) for k in src}
    key = jax.random.PRNGKey(2)
    plain_new = np.asarray(gen.generate(params, new, UNCOND, key, shape))
    plain_src = np.asarray(gen.generate(params, src, UNCOND, key, shape))
    tau0 = np.asarray(gen.edit(params, pair, UNCOND, key, shape, pairs=True, tau=0.0))
    # tau = 0 is plain sampling of each prompt from the same noise (DDIM eta = 1: the per-step noise too)
    # (a batch of 2 vs 1 changes float32 rounding: ~1e-5 after 4 guided steps; the prompts differ by ~1)
    np.testing.assert_allclose(tau0[1], plain_new[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tau0[0], plain_src[0], rtol=1e-4, atol=1e-4)
    assert np.abs(plain_new - plain_src).max() > 0.1
    tau1 = np.asarray(gen.edit(params, pair, UNCOND, key, shape, pairs=True, tau=1.0))
    np.testing.assert_allclose(tau1[0], plain_src[0], rtol=1e-4, atol=1e-4)  # the source row is untouched
    assert np.abs(tau1[1] - tau0[1]).max() > 1e-3                              # the edit follows its maps
    with pytest.raises(ValueError, match="pairs"):
        gen.edit(params, new, UNCOND, key, shape, tau=0.5)


def test_reweighting(system):
    name, den, params, gen, shape = system
    cond = _prompts(1, 8)
    key = jax.random.PRNGKey(1)
    plain = np.asarray(gen.generate(params, cond, UNCOND, key, shape))
    ones = np.asarray(gen.edit(params, cond, UNCOND, key, shape, token_weights=np.ones(L)))
    np.testing.assert_allclose(ones, plain, rtol=1e-4, atol=1e-4)             # weight 1: a no-op (einsum
    # attention instead of the fused kernel: float32 rounding only)
    w = np.ones(L, np.float32)
    w[1] = 0.0
    zero = np.asarray(gen.edit(params, cond, UNCOND, key, shape, token_weights=w))
    assert np.abs(zero - plain).max() > 1e-3


def test_attention_maps(system, tmp_path):
    name, den, params, gen, shape = system
    cond = _prompts(1, 9)
    out, maps = gen.edit(params, cond, UNCOND, jax.random.PRNGKey(0), shape, attention_maps=True)
    plain = gen.generate(params, cond, UNCOND, jax.random.PRNGKey(0), shape)
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), rtol=1e-5, atol=1e-5)
    maps = np.asarray(maps)
    assert maps.shape == (1,) + shape[:-1] + (L,)                             # (H, T) or (T,) per token
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert (maps >= 0).all() and np.abs(maps[..., -1]).max() == 0.0            # the padding token gets none
    assert maps[..., :-1].std(-1).max() > 1e-3                                # not uniform over the tokens
    png = str(tmp_path / "attn.png")
    editing.save_attention_png(png, np.asarray(out[0]),
                               np.moveaxis(maps[0, ..., :-1], -1, 0), ["a", "b", "c", "d"], "title")
    assert os.path.getsize(png) > 1000


def test_token_positions_from_labels():
    labels = editing._section_labels({"name": "bytes_embed"}, "a dog", 7)   # BOS + one token per byte
    assert labels == ["<s>", "a", "␣", "d", "o", "g", "#6"]
    valid = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    assert editing.resolve_tokens(["dog"], labels, valid) == [3, 4, 5]
    assert editing.resolve_tokens([1, "2"], labels, valid) == [1, 2]
    t5 = ["▁a", "▁dog", "▁bark", "s", "</s>"]
    assert editing.resolve_tokens(["barks"], t5, np.ones(5, bool)) == [2, 3]
    from tta_jax.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="cat"):
        editing.resolve_tokens(["cat"], labels, valid)
    with pytest.raises(InvalidArgument, match="position 6"):
        editing.resolve_tokens([6], labels, valid)


# ------------------------------------------------------------------------------ the command line
SYSTEM = '''
from configs.ezaudio import get_config as ezaudio


def get_config(arg=None):
    c = ezaudio("tiny")
    c.builder = "tta_jax.pipelines.tta:build_task"
    c.codec = {"name": "toy", "sample_rate": 8000, "hop": 256, "bands": 3}
    c.text = {"name": "bytes_embed", "dim": 16, "max_len": 8}
    c.data.patch_frames = 2
    c.data.token_pca = 0
    c.data.crop_frames = 8
    c.model.in_channels = c.model.out_channels = 8
    c.model.context_dim = 16
    c.model.width, c.model.depth, c.model.num_heads, c.model.sola_rank = 16, 2, 2, 2
    c.model.use_mask_input = False
    c.data.mask_partial_prob = -1.0
    c.sampler.num_steps = 3
    c.train.total_steps = 2
    c.train.batch_size = 2
    return c
'''


def _run(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow  # precompute + train + two edits: four subprocesses
def test_launch_edit(tmp_path):
    import soundfile as sf

    raw = tmp_path / "raw"
    raw.mkdir()
    sr = 8000
    t = np.arange(int(sr * 0.4)) / sr
    rows = ["path,caption"]
    for i in range(2):
        sf.write(str(raw / f"c{i}.wav"), (0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t)).astype(np.float32), sr)
        rows.append(f"c{i}.wav,tone {i}")
    (raw / "metadata.csv").write_text("\n".join(rows) + "\n")
    sys_file = tmp_path / "system.py"
    sys_file.write_text(SYSTEM)
    data, work, out = tmp_path / "data", tmp_path / "work", tmp_path / "out"
    p = _run("launch.precompute", "--system", sys_file, "--out", data, "--noprogress", "--config.source=folder",
             f"--config.source_args.root={raw}", "--config.audio.crop_seconds=0.3")
    assert p.returncode == 0, p.stderr[-3000:]
    p = _run("launch.train", "--config", sys_file, "--workdir", work, f"--config.data.precomputed_dir={data}")
    assert p.returncode == 0, p.stderr[-3000:]
    src = raw / "c0.wav"
    p = _run("launch.edit", "--workdir", work, "--out", out, "inpaint", "--audio", src, "--prompt", "tone 1",
             "--start", "0.1", "--end", "0.2")
    assert p.returncode == 0, p.stderr[-3000:]
    wav, rate = sf.read(str(out / "edit.wav"))
    assert rate == sr and wav.ndim == 1 and wav.size > 0 and np.isfinite(wav).all()
    assert (out / "edit.png").exists()
    p = _run("launch.edit", "--workdir", work, "--out", out, "attnmap", "--prompt", "tone 1")
    assert p.returncode == 0, p.stderr[-3000:]
    assert os.path.getsize(out / "attention.png") > 1000
    p = _run("launch.edit", "--workdir", work, "--out", out, "sdedit", "--prompt", "tone")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == "error: sdedit needs --audio"
