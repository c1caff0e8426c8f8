"""DC-LDM's acoustic condition (tta_jax/conditioners/dcldm.py, configs/dcldm.py): the zero-initialised extra
cross-attention on a pretrained U-Net, the registry's one-slot "target" layout, teacher-forced precompute, and
LM -> acoustic -> diffusion -> vocoder sampling in one call."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.config import load_config
from tta_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(variant="tiny", *overrides):
    return load_config(os.path.join(ROOT, "configs", "dcldm.py") + f":{variant}", list(overrides))


def _flat(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_acoustic_layers_leave_a_pretrained_unet_unchanged():
    """A text-only U-Net's params load into the DC-LDM model unchanged (same names), the new acoustic layers
    are the only extra params, and with them freshly initialised the output equals the text-only model's
    bit for bit, whatever the acoustic context."""
    from tta_jax.pipelines.tta import denoiser_of

    c = _config()
    base_cfg = _config()
    base_cfg.conditioner = {}
    base_cfg.model.extra_contexts = []
    den, base = denoiser_of(c), denoiser_of(base_cfg)
    B, shape = 2, (16, 16, 8)
    x = jax.random.normal(jax.random.PRNGKey(0), (B,) + shape)
    t = jnp.array([3.0, 700.0])
    text = jax.random.normal(jax.random.PRNGKey(1), (B, 5, 32))
    base_params = base.module.init(jax.random.PRNGKey(2), x, t, {"text": text})
    params = den.module.init(jax.random.PRNGKey(3), x, t, den.dummy_cond(B, shape, 5))
    fb, fp = _flat(base_params), _flat(params)
    extra = sorted(set(fp) - set(fb))
    assert not set(fb) - set(fp), "a text-only checkpoint must load by name"
    assert extra and all("acoustic" in k for k in extra), extra
    assert any("down_blocks_0" in k for k in extra) and any("up_blocks_1" in k for k in extra)
    merged = jax.tree_util.tree_map_with_path(
        lambda p, v: fb.get(jax.tree_util.keystr(p), v), params)
    acoustic = jax.random.normal(jax.random.PRNGKey(4), (B, 1, 7, 8)) * 3.0
    out = den.module.apply(merged, x, t, {"text": text, "acoustic": acoustic,
                                          "reference_mask": jnp.ones((B, 1), bool)})
    ref = base.module.apply(base_params, x, t, {"text": text})
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))

    # once the acoustic layers are trained (non-zero), the condition matters, and a switched-off slot gives
    # the text-only output exactly (CFG's null branch)
    trained = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.1 if "acoustic" in jax.tree_util.keystr(p) else v, merged)
    on = den.module.apply(trained, x, t, {"text": text, "acoustic": acoustic,
                                          "reference_mask": jnp.ones((B, 1), bool)})
    off = den.module.apply(trained, x, t, {"text": text, "acoustic": acoustic,
                                           "reference_mask": jnp.array([[True], [False]])})
    assert float(jnp.abs(on - ref).max()) > 1e-3
    np.testing.assert_array_equal(np.asarray(off[1]), np.asarray(ref[1]))
    np.testing.assert_array_equal(np.asarray(off[0]), np.asarray(on[0]))


def test_config_errors():
    from tta_jax.conditioners.registry import reference_features_of, reference_spec_of
    from tta_jax.pipelines.tta import denoiser_of

    spec = reference_spec_of(_config().conditioner, sample_rate=16000)
    assert spec["target"] and spec["count"] == 1 and spec["sample_rate"] == 16000 and spec["captions"]
    with pytest.raises(ConfigError, match="config.conditioner.source='gold'"):
        reference_spec_of(_config("tiny", "conditioner.source=gold").conditioner)
    with pytest.raises(ConfigError, match="config.conditioner.lm.beam"):
        reference_spec_of({"name": "dcldm", "lm": {"beam": 4}})
    with pytest.raises(ConfigError, match="lm_workdir is empty"):
        reference_features_of(_config().conditioner, codec=object(), text=None)
    c = _config()
    c.model.extra_contexts = []
    with pytest.raises(ConfigError, match="extra_contexts"):
        denoiser_of(c)


def test_not_an_lm_run(tmp_path):
    from tta_jax.conditioners.dcldm import load_acoustic_lm

    with pytest.raises(ConfigError, match="no config.json"):
        load_acoustic_lm(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"builder": "tta_jax.pipelines.tta:build_task"}))
    with pytest.raises(ConfigError, match="not a codec LM"):
        load_acoustic_lm(str(tmp_path))


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.audio_folders import write_audio_folder

    sr = 16000
    t = np.arange(sr // 2) / sr
    clips = [(np.sin(2 * np.pi * (200 + 90 * i) * t) * (0.3 + 0.1 * (i % 3)), {"caption": f"a tone number {i}"})
             for i in range(6)]
    return write_audio_folder(tmp_path_factory.mktemp("raw"), clips, sr)


def _precompute(system, folder, out):
    from data_pipeline import build, precompute_config

    pc = precompute_config.get_config()
    pc.source, pc.source_args.root = "folder", folder
    pc.audio.sample_rate = 0
    pc.audio.crop = "start"
    pc.audio.crop_seconds = 0.5
    pc.audio.normalize = None
    build.run(pc, out, system=system, progress=False)
    return out


@pytest.mark.slow  # ~1 min: LM precompute + training, teacher-forced precompute, diffusion training, sampling
def test_teacher_forced_training_and_one_call_sampling(folder, tmp_path):
    from tta_jax.conditioners import dcldm
    from tta_jax.data.loader import LoaderConfig, make_dataset, read_manifest
    from tta_jax.pipelines.tta import generate_audio
    from tta_jax.train.checkpoint import load_params
    from tta_jax.train.loop import train

    # 1. the codec LM over its tiny EnCodec's tokens of the same clips
    lm_cfg = load_config(os.path.join(ROOT, "configs", "dcldm_lm.py") + ":tiny",
                         ["train.total_steps=2", "train.batch_size=2", "model.max_len=80"])
    lm_cfg.data.crop_frames = 0
    lm_cfg.data.precomputed_dir = _precompute(lm_cfg, folder, str(tmp_path / "lm_data"))
    lm_work = str(tmp_path / "lm")
    assert train(lm_cfg, lm_work).step == 2
    (tmp_path / "lm" / "config.json").write_text(lm_cfg.to_json_best_effort())

    # 2. teacher-forced precompute: ref:acoustic [1, T_a, dim] = the codec latents of the clip's own tokens
    c = _config("tiny", f"conditioner.lm_workdir={lm_work}")
    data = _precompute(c, folder, str(tmp_path / "data"))
    m = read_manifest(data)
    lm = dcldm.load_acoustic_lm(lm_work)
    T_a = int(np.ceil(0.5 * lm.frame_rate))
    assert m["num_records"] == 6 and m["shapes"]["ref:acoustic"][0] == [1, T_a, 8]
    import grain
    import soundfile as sf

    from tta_jax.data import records

    rec = records.decode_record(grain.sources.ArrayRecordDataSource([os.path.join(data, m["shards"][0])])[0])
    clip, sr = sf.read(os.path.join(folder, rec["key"]), dtype="float32")
    want = dcldm.acoustic_from_tokens(lm, dcldm.teacher_tokens(lm, clip[None], sr), "codec")
    np.testing.assert_allclose(rec["ref:acoustic"][0], want[0], atol=1e-5)
    batch = next(iter(make_dataset(data, LoaderConfig(batch_size=6, shuffle=False))))
    assert batch["acoustic"].shape == (6, 1, T_a, 8) and batch["reference_mask"].all()

    # 3. the diffusion model trains on it; sampling runs LM -> acoustic -> U-Net -> vocoder in one call
    c.data.precomputed_dir = data
    work = str(tmp_path / "run")
    assert train(c, work).step == c.train.total_steps
    params, _ = load_params(work, ema=False)
    lat, audio, codec = generate_audio(c, params, ["a tone", "a low tone"], workdir=work, steps=2, seed=3)
    assert np.isfinite(audio).all() and audio.shape[0] == 2
    with pytest.raises(ConfigError, match="from the prompt"):
        generate_audio(c, params, ["a tone"], workdir=work, steps=2, references=[clip])


def test_acoustic_path_on_the_dit():
    """The same conditioner on the DiT (acoustic_dim / acoustic_blocks): base names kept, fresh layers a no-op,
    a switched-off slot exactly the text-only output."""
    from tta_jax.conditioners.registry import wrap_denoiser
    from tta_jax.denoisers.factory import build_denoiser

    fields = {"name": "dit", "preset": "ezaudio_tiny", "in_channels": 4, "out_channels": 4, "context_dim": 8,
              "use_mask_input": False}
    section = {"name": "dcldm", "lm_workdir": ""}
    den = build_denoiser(dict(fields, acoustic_dim=6, acoustic_blocks=(0,)),
                         inner=lambda d: wrap_denoiser(d, section))
    base = build_denoiser(fields)
    B, shape = 2, (12, 4)
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    x, text = jax.random.normal(k[0], (B,) + shape), jax.random.normal(k[1], (B, 5, 8))
    t = jnp.array([3.0, 600.0])
    base_params = base.module.init(k[2], x, t, {"text": text})
    params = den.module.init(k[3], x, t, den.dummy_cond(B, shape, 5))
    fb, fp = _flat(base_params), _flat(params)
    assert not set(fb) - set(fp) and all("acoustic" in n for n in set(fp) - set(fb))
    merged = jax.tree_util.tree_map_with_path(lambda p, v: fb.get(jax.tree_util.keystr(p), v), params)
    a = jax.random.normal(k[0], (B, 1, 7, 6))
    ref = base.module.apply(base_params, x, t, {"text": text})
    on = {"text": text, "acoustic": a, "reference_mask": jnp.ones((B, 1), bool)}
    np.testing.assert_array_equal(np.asarray(den.module.apply(merged, x, t, on)), np.asarray(ref))
    trained = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.1 if "acoustic" in jax.tree_util.keystr(p) else v, merged)
    assert float(jnp.abs(den.module.apply(trained, x, t, on) - ref).max()) > 1e-3
    off = den.module.apply(trained, x, t, dict(on, reference_mask=jnp.zeros((B, 1), bool)))
    np.testing.assert_array_equal(np.asarray(off), np.asarray(ref))


def test_vae_representation_reencodes_the_lm_audio_with_the_system_codec():
    """Option (b): tokens -> EnCodec audio -> resampled to the system codec's rate -> its latents [N, H, T, C]
    -> one row per latent frame [N, T, H*C]; option (a): the code vectors [N, T_a, dim]."""
    from tta_jax.codecs.encodec import CONFIGS, init_params
    from tta_jax.codecs.registry import build_codec
    from tta_jax.conditioners.dcldm import AcousticLM, acoustic_from_tokens

    cfg = CONFIGS["tiny"]
    lm = AcousticLM(None, None, cfg, init_params(cfg, jax.random.PRNGKey(0)), 4, "")
    tokens = np.random.default_rng(0).integers(0, cfg.codebook_size, size=(2, 50, 4))
    a = acoustic_from_tokens(lm, tokens, "codec")
    assert a.shape == (2, 50, cfg.codebook_dim or cfg.hidden_size) and np.isfinite(a).all()
    codec = build_codec(_config().codec)
    z = acoustic_from_tokens(lm, tokens, "vae", codec)
    lat = np.asarray(codec.encode(np.zeros((2, round(50 * cfg.hop_length * codec.sample_rate / cfg.sampling_rate)),
                                           np.float32)))
    assert z.shape == (2, lat.shape[2], lat.shape[1] * lat.shape[3]) and np.isfinite(z).all()
    with pytest.raises(ConfigError, match="system codec"):
        acoustic_from_tokens(lm, tokens, "vae")


def test_the_lm_text_encoder_is_built_once_per_loaded_lm(monkeypatch):
    """Generating acoustics for many prompts must not rebuild (reload) the LM's text encoder each call."""
    import ml_collections

    from tta_jax.conditioners.dcldm import AcousticLM
    from tta_jax.text import registry

    built = []
    real = registry.build_text_encoder
    monkeypatch.setattr(registry, "build_text_encoder", lambda s, *a, **k: built.append(s) or real(s, *a, **k))
    config = ml_collections.ConfigDict({"text": {"name": "bytes", "max_len": 8}})
    lm = AcousticLM(config, None, None, None, 4, "")
    first = lm.text_encoder
    assert lm.text_encoder is first and len(built) == 1
