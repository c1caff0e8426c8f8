"""launch.precompute --system: any codec x text encoder of the registries, from a system config's sections.

End to end (tiny random / tiny released-layout weights): (a) through the CLI (subprocess): Oobleck VAE +
FLAN-T5-layout folder -> sequence latents [T, C]; (b) in this process (data_pipeline.build.run, what the
CLI calls): Auffusion's KL-VAE over mel images + a multi-encoder (T5 + CLIP) -> image latents [H, T, C] and
one text feature per encoder. The manifest records the registries' info,
and the records hold exactly what the same sections encode in this process.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import build
from data_pipeline.precompute_config import get_config as precompute_defaults
from data_pipeline.sources import AudioConfig, folder_source, prepare_audio
from tta_jax import sections
from tta_jax.codecs.registry import build_codec
from tta_jax.data import records
from tta_jax.errors import ConfigError
from tta_jax.text.registry import build_text_encoder, resolve_text_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR_IN, SECONDS = 16000, 0.4

OOBLECK = {"name": "oobleck", "preset": "tiny", "init": "random", "seed": 1}
KL_IMAGE = {"name": "kl_mel_image", "init": "random", "n_mels": 32, "vae_config": "sd_tiny",
            "vocoder_config": "tiny", "seed": 7}
MULTI = {"name": "multi", "encoders": [{"name": "t5", "init": "random", "preset": "tiny", "max_len": 8},
                                       {"name": "clip", "init": "random", "preset": "tiny", "max_len": 10,
                                        "seed": 1}]}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """5 captioned clips (metadata.csv) at 16 kHz; each system resamples them to its codec's rate."""
    import soundfile as sf

    d = tmp_path_factory.mktemp("raw")
    t = np.arange(int(SR_IN * 0.5)) / SR_IN
    rows = ["path,caption"]
    for i in range(5):
        tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) * np.exp(-t * (1 + i))
        sf.write(str(d / f"c{i}.wav"), tone.astype(np.float32), SR_IN)
        rows.append(f"c{i}.wav,a dog barks {i} times in the rain")
    (d / "metadata.csv").write_text("\n".join(rows) + "\n")
    return str(d)


def _system_file(path, codec: dict, text: dict) -> str:
    """A system config file (get_config() -> ConfigDict) holding the given codec / text sections."""
    path.write_text("import ml_collections\n\n\ndef get_config(arg=None):\n"
                    f"    return ml_collections.ConfigDict({{'codec': {codec!r}, 'text': {text!r}}})\n")
    return str(path)


def _precompute(system: str, out: str, raw_dir: str, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "launch.precompute", "--system", system, "--out", out, "--noprogress",
            "--config.source=folder", f"--config.source_args.root={raw_dir}",
            f"--config.audio.crop_seconds={SECONDS}", "--config.shard_size=3", "--config.batch_size=2", *extra]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _precompute_here(codec: dict, text: dict, out: str, raw_dir: str) -> dict:
    """What :func:`_precompute` runs, in this process (the CLI itself is run by the other tests here):
    the precompute defaults with the same overrides, the system sections as ``--system`` loads them."""
    import ml_collections

    c = precompute_defaults()
    c.source, c.source_args.root, c.audio.crop_seconds = "folder", raw_dir, SECONDS
    c.shard_size, c.batch_size = 3, 2
    return build.run(c, out, system=ml_collections.ConfigDict({"codec": codec, "text": text}), progress=False)


def _read(out: str) -> tuple[dict, list[dict]]:
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    recs = [r for s in m["shards"] for r in records.read_shard(os.path.join(out, s))]
    return m, sorted(recs, key=lambda r: r["key"])


def _prepared(raw_dir: str, sample_rate: int) -> dict[str, np.ndarray]:
    """The clips as the CLI prepares them (precompute config defaults + crop_seconds)."""
    a = precompute_defaults().audio
    cfg = AudioConfig(sample_rate=sample_rate, max_seconds=a.max_seconds, crop_seconds=SECONDS, crop=a.crop,
                      normalize=a.normalize, seed=a.seed)
    return {ex.key: prepare_audio(ex, cfg)[0] for ex in folder_source(raw_dir)}


@pytest.mark.slow  # 10 s on 2 cores, 25 s when they are shared (a subprocess + the same codec built here)
def test_oobleck_and_t5_folder_from_a_system_config(raw, tmp_path):
    pytest.importorskip("torch")
    from tests.tiny_text_folders import save_text_model

    t5_dir = str(tmp_path / "flan-t5-tiny")
    save_text_model("t5", t5_dir)
    text = {"name": "t5", "path": t5_dir, "max_len": 12}
    system = _system_file(tmp_path / "ezaudio_tiny_system.py", OOBLECK, text)
    out = str(tmp_path / "out")
    p = _precompute(system, out, raw, "--system.codec.seed=2")  # a system key overridden on the command line
    assert p.returncode == 0, p.stderr[-3000:]
    m, recs = _read(out)
    codec = build_codec({**OOBLECK, "seed": 2})
    t5 = build_text_encoder(text)
    assert m["codec"] == codec.info and m["codec"]["seed"] == 2 and m["codec"]["sample_rate"] == 8000
    assert m["text"] == t5.info == {"name": "t5", "path": t5_dir, "max_len": 12, "init": "pretrained",
                                    "preset": "", "seed": 0, "tokenizer": ""}
    assert sections.mismatches({**OOBLECK, "seed": 2}, m["codec"], "codec") == []
    frames = int(SECONDS * 8000) // 6
    assert m["shapes"] == {"latent": [[frames, 2], "float32"], "txt:text": [[12, 32], "float32"],
                           "txt:text_mask": [[12], "bool"]}
    assert m["num_records"] == 5 and m["config"]["audio"]["sample_rate"] == 8000  # resampled to the codec's rate
    audio = _prepared(raw, 8000)
    for r in recs:  # what this process encodes from the same sections (random init is deterministic)
        np.testing.assert_allclose(r["latent"], np.asarray(codec.encode(audio[r["key"]][None]))[0], atol=1e-5)
        feats = t5.encode([r["caption"]])
        np.testing.assert_allclose(r["txt:text"], feats["text"][0], atol=1e-5)
        np.testing.assert_array_equal(r["txt:text_mask"], feats["text_mask"][0])
    with open(os.path.join(out, m["null_text"]), "rb") as f:
        null = records.decode_record(f.read())
    assert null["text"].shape == (12, 32) and null["text_mask"].sum() == 1  # "" -> the EOS token alone


@pytest.mark.slow  # 15 s on 2 cores, 40-50 s when they are shared (the precompute + the same codec here)
def test_kl_mel_image_and_multi_encoder_from_a_system_config(raw, tmp_path):
    from tta_jax.data.loader import LoaderConfig, make_dataset

    out = str(tmp_path / "out")
    assert _precompute_here(KL_IMAGE, MULTI, out, raw)["num_records"] == 5
    m, recs = _read(out)
    codec = build_codec(KL_IMAGE)
    assert m["codec"] == codec.info
    assert m["text"] == {"name": "multi", "encoders": resolve_text_section(MULTI)["encoders"]}  # settings + defaults
    assert [e["name"] for e in m["text"]["encoders"]] == ["t5", "clip"]
    assert sections.mismatches(MULTI, m["text"], "text") == [] and sections.mismatches(KL_IMAGE, m["codec"], "c") == []
    t = int(SECONDS * 16000) // 160 // 2  # mel frames / the tiny SD-VAE's factor 2
    assert m["shapes"] == {"latent": [[16, t, 4], "float32"],
                           "txt:text:0": [[8, 32], "float32"], "txt:text_mask:0": [[8], "bool"],
                           "txt:text:1": [[10, 32], "float32"], "txt:text_mask:1": [[10], "bool"]}
    assert len(m["latent_stats"]["channel_mean"]) == 4  # per latent channel, over (H, T)
    audio = _prepared(raw, 16000)
    r = recs[0]
    np.testing.assert_allclose(r["latent"], np.asarray(codec.encode(audio[r["key"]][None]))[0], atol=1e-4)
    assert r["latent_frames"] == t
    # the training loader reads image latents and the per-encoder text features
    batch = next(iter(make_dataset(out, LoaderConfig(batch_size=2, num_epochs=1, shuffle=False), 0, 1)))
    assert batch["latent"].shape == (2, 16, t, 4) and batch["latent_valid"].shape == (2, t)
    assert batch["text:0"].shape == (2, 8, 32) and batch["text_mask:1"].shape == (2, 10)


def test_system_sections_replace_the_precompute_config_and_errors_name_the_key(raw, tmp_path):
    sysd = {"codec": dict(OOBLECK), "text": {"name": "bytes_embed", "dim": 4, "max_len": 6}}
    c = precompute_defaults()
    assert build.system_sections(c, sysd) == sysd
    codec, text = build.build_encoders(c, sysd)
    assert (codec.name, text.name) == ("oobleck", "bytes_embed")
    assert build.sample_rate_of(c, codec) == 8000  # audio.sample_rate 0 follows the codec
    c.audio.sample_rate = 22050
    with pytest.raises(ConfigError, match=r"config\.audio\.sample_rate=22050 but the codec .* 8000 Hz"):
        build.sample_rate_of(c, codec)
    touched = precompute_defaults()
    touched.codec.hop = 128
    with pytest.raises(ConfigError, match=r"config\.codec\.hop is set, but --system replaces .* --system\.codec\.hop"):
        build.build_encoders(touched, sysd)
    with pytest.raises(ConfigError, match=r"system config has no text section"):
        build.build_encoders(precompute_defaults(), {"codec": OOBLECK})
    with pytest.raises(ConfigError, match=r"unknown key system\.text\.max_length"):
        build.build_encoders(precompute_defaults(), {**sysd, "text": {"name": "bytes", "max_length": 3}})
    # the default precompute config: settings of the other entries are dropped while untouched
    c = precompute_defaults()
    c.codec.name = "mel"
    assert build.section_of(c, "codec") == {"name": "mel", "model": "universal", "mean": -5.0, "std": 2.5}
    c.codec.hop = 128
    with pytest.raises(ConfigError, match=r"unknown key config\.codec\.hop"):
        build.build_encoders(c)
    # on the command line: one line naming the key, exit status 2
    system = _system_file(tmp_path / "bad_system.py", {**OOBLECK, "name": "oobleak"}, sysd["text"])
    p = _precompute(system, str(tmp_path / "out"), raw)
    assert p.returncode == 2 and "error: system.codec.name='oobleak' is not a registered codec" in p.stderr
