"""The exported sampler (tta_jax.pipelines.export -> tta_jax.serving): the audio it gives equals the in-process
sampler's for the same seed (float32, 1e-5), it loads and runs with every model module blocked, bf16 params,
several platforms, and its errors. The command lines are covered in tests/test_systems_e2e.py."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a dog barks", "rain on a roof"]


def dit_config():
    from configs.ezaudio import get_config

    c = get_config("tiny")
    c.codec = {"name": "oobleck", "preset": "tiny", "init": "random", "seed": 1}   # 8 kHz, [T, 2] latents
    c.text = {"name": "t5", "init": "random", "preset": "tiny", "max_len": 8}   # byte tokens, 32-d states
    c.data.patch_frames, c.data.token_pca, c.data.crop_frames = 1, 0, 32
    c.model.in_channels = c.model.out_channels = 2
    c.model.context_dim = 32
    c.sampler.num_steps = 3
    c.sampler.guidance_rescale = 0.5
    return c


def unet_config():
    from configs.auffusion import get_config

    c = get_config("tiny")   # KL-VAE mel images [H, T, C] + T5 and CLIP towers through adapters ("multi")
    c.sampler.num_steps = 3
    return c


def random_params(config, seed=0):
    """The denoiser's init moved off zero (its zero-initialised output layers would make every sampler agree)."""
    from flax.core import meta

    from tta_jax.pipelines import tta

    sm = tta.sampling_of(config)
    cond, _ = tta.text_conds(sm.text.encode, ["x"], sm.negative)
    p = meta.unbox(sm.denoiser.init(jax.random.PRNGKey(seed), sm.shape,
                                    int(cond["text"].shape[1]) if "text" in cond else 1, cond))
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


BLOCKED_RUN = textwrap.dedent('''
    import importlib.abc, sys
    BLOCK = ("flax", "tta_jax.denoisers", "tta_jax.nn", "tta_jax.codecs", "tta_jax.vocoders", "tta_jax.pipelines",
             "tta_jax.conditioners", "tta_jax.convert", "tta_jax.diffusion", "tta_jax.train", "tta_jax.lm",
             "tta_jax.text.t5", "tta_jax.text.clip", "tta_jax.text.clap", "tta_jax.text.bert",
             "tta_jax.text.registry", "tta_jax.text.conditioner", "configs", "launch")
    ALLOW = ("tta_jax.convert", "tta_jax.convert.common")   # the package and its numpy-only flat-dict helpers

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name not in ALLOW and any(name == b or name.startswith(b + ".") for b in BLOCK):
                raise ImportError(f"blocked model module {name}")
            return None

    sys.meta_path.insert(0, Blocker())
    import json, numpy as np
    from tta_jax.serving import load_exported
    export, out, prompts, seed, guidance, rescale = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), \\
        int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
    s = load_exported(export)
    audio, lat = s(prompts, seed=seed, guidance=guidance, rescale=rescale)
    np.save(out, audio)
    print(sorted(m for m in sys.modules if m.startswith("tta_jax")))
''')


def run_blocked(export_dir, out, prompts, seed, guidance, rescale):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", BLOCKED_RUN, str(export_dir), str(out), json.dumps(prompts),
                        str(seed), str(guidance), str(rescale)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return np.load(out), p.stdout


def test_exported_dit_sampler_equals_in_process_with_model_modules_blocked(tmp_path):
    from tta_jax.pipelines import export, tta

    c = dit_config()
    params = random_params(c)
    info = export.export_sampler(c, params, str(tmp_path / "ex"), batch=2, platforms=("cpu",))
    assert info["platforms"] == ["cpu"] and info["steps"] == 3 and info["batch"] == 2
    _, want, _ = tta.generate_audio(c, params, PROMPTS, seed=3, guidance=2.5, rescale=0.25)
    got, imported = run_blocked(tmp_path / "ex", tmp_path / "a.npy", PROMPTS, 3, 2.5, 0.25)
    assert got.shape == want.shape and np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert "tta_jax.denoisers" not in imported and "tta_jax.serving" in imported
    # guidance and rescale are inputs of the one compiled function, not constants
    _, other, _ = tta.generate_audio(c, params, PROMPTS, seed=3, guidance=1.5, rescale=0.0)
    got1, _ = run_blocked(tmp_path / "ex", tmp_path / "b.npy", PROMPTS, 3, 1.5, 0.0)
    np.testing.assert_allclose(got1, other, rtol=0, atol=1e-5)
    assert np.abs(got1 - got).max() > 1e-3


def test_exported_unet_sampler_for_three_platforms_and_more_prompts_than_its_batch(tmp_path):
    from tta_jax.pipelines import export, tta
    from tta_jax.serving import load_exported

    c = unet_config()
    params = random_params(c)
    info = export.export_sampler(c, params, str(tmp_path / "ex"), batch=2)
    assert info["platforms"] == ["cpu", "cuda", "tpu"]
    assert [t["key"] for t in info["tokenizers"]] == ["text:0", "text:1"]
    lat, want, _ = tta.generate_audio(c, params, PROMPTS, seed=1)
    s = load_exported(str(tmp_path / "ex"))
    got, got_lat = s(PROMPTS, seed=1)
    assert got_lat.shape == lat.shape and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    three, _ = s(PROMPTS + ["wind"], seed=1)   # two calls: rows 0-1 with seed 1, row 2 with seed 2
    assert three.shape[0] == 3
    np.testing.assert_array_equal(three[:2], got)


def test_bf16_export_halves_the_params_and_samples_the_rounded_model(tmp_path):
    import jax.numpy as jnp

    from tta_jax.pipelines import export, tta
    from tta_jax.serving import PARAMS_FILE, load_exported

    c = dit_config()
    params = random_params(c)
    export.export_sampler(c, params, str(tmp_path / "f32"), batch=2, platforms=("cpu",))
    export.export_sampler(c, params, str(tmp_path / "bf16"), batch=2, platforms=("cpu",), dtype="bf16")
    size = {d: os.path.getsize(tmp_path / d / PARAMS_FILE) for d in ("f32", "bf16")}
    assert size["bf16"] < 0.55 * size["f32"]
    rounded = jax.tree.map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32), params)
    _, want, _ = tta.generate_audio(c, rounded, PROMPTS, seed=0)
    s = load_exported(str(tmp_path / "bf16"))
    got, _ = s(PROMPTS, seed=0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert all(isinstance(p, jax.Array) for p in jax.tree.leaves(s.params))   # on the device once
    from tta_jax.serving import ExportError

    for kw in ({"guidance": float("nan")}, {"rescale": float("inf")}, {"guidance": "loud"}):
        with pytest.raises(ExportError, match=next(iter(kw))):
            s(PROMPTS, seed=0, **kw)


def test_export_errors_name_the_problem(tmp_path):
    from tta_jax.errors import ConfigError
    from tta_jax.pipelines import export
    from tta_jax.serving import ExportError, load_exported

    c = dit_config()
    params = random_params(c)
    with pytest.raises(ConfigError, match="dtype"):
        export.export_sampler(c, params, str(tmp_path / "x"), dtype="int8")
    with pytest.raises(ConfigError, match="platforms 'gpu'"):
        export.export_sampler(c, params, str(tmp_path / "x"), platforms=("cpu", "gpu"))
    serst = dit_config()
    serst.conditioner = {"name": "serst"}
    with pytest.raises(ConfigError, match="config.conditioner"):
        export.export_sampler(serst, params, str(tmp_path / "x"))
    c.model.width = c.model.width * 2   # params of another model: named before anything is lowered
    with pytest.raises(ConfigError, match="parameter '"):
        export.export_sampler(c, params, str(tmp_path / "x"), platforms=("cpu",))
    with pytest.raises(ExportError, match="not a directory"):
        load_exported(str(tmp_path / "missing"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "export.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(ExportError, match="sampler.jax is missing"):
        load_exported(str(tmp_path / "half"))


@pytest.mark.parametrize("kind", ["minilm", "bytes"])
def test_tokenizers_saved_with_an_export_give_the_same_ids(tmp_path, kind):
    import functools

    from tta_jax.text.bytes import byte_tokens
    from tta_jax.text.tokenizer import TextTokenizer, load_tokenizer, save_tokenizer

    if kind == "minilm":
        from tta_jax.text.bert import minilm_dir

        tok = TextTokenizer(minilm_dir(), max_length=16)
    else:
        tok = functools.partial(byte_tokens, max_len=12, bos=98, pad_id=0, vocab_size=99)
    spec = save_tokenizer(tok, str(tmp_path / "tok"))
    again = load_tokenizer(json.loads(json.dumps(spec)), str(tmp_path / "tok"))
    texts = ["A dog barks, twice!", "", "rain on a tin roof at night with distant thunder"]
    a, b = tok(texts), again(texts)
    for k in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
    with pytest.raises(TypeError, match="cannot save tokenizer"):
        save_tokenizer(lambda t: t, str(tmp_path / "x"))
