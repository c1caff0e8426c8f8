"""User inputs that used to fail late or silently: precomputed data made with another codec / text encoder
than the experiment config expects is refused by name, before anything is built from it."""
import json
import os

import numpy as np
import pytest

from data_pipeline import build
from data_pipeline.precompute import PrecomputeConfig, config_hash, run_precompute
from data_pipeline.precompute_config import get_config as precompute_defaults
from data_pipeline.sources import Example
from tta_jax.config import ConfigError
from tta_jax.pipelines import tta


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """launch.precompute's defaults (toy codec, byte tokens), on a few synthetic clips."""
    d = str(tmp_path_factory.mktemp("pre"))
    c = precompute_defaults()
    c.audio.crop_seconds, c.shard_size, c.batch_size = 1.0, 8, 4
    rs = np.random.RandomState(0)
    exs = [Example(key=f"k{i}", caption=f"caption {i}", audio=(0.1 * rs.randn(22050)).astype(np.float32),
                   sample_rate=22050) for i in range(6)]
    codec, text = build.build_encoders(c)
    cfg = build.precompute_config(c, codec, text)
    run_precompute(exs, d, codec.encode, text.encode, cfg, progress=False)
    return d, cfg


def _manifest(d):
    with open(os.path.join(d, "manifest.json")) as f:
        return json.load(f)


def test_manifest_records_codec_and_text_as_fields(toy_data):
    d, cfg = toy_data
    m = _manifest(d)
    assert m["codec"] == {"name": "toy", "sample_rate": 22050, "hop": 256, "bands": 7}
    assert m["text"] == {"name": "bytes", "max_len": 64}
    # descriptions of codec_id / text_id, not part of the hash: data made before them still resumes
    assert m["config_hash"] == config_hash(PrecomputeConfig(**{**cfg.__dict__, "codec": {}, "text": {}}),
                                           [f"k{i}" for i in range(6)])


def _demo_config(d):
    from configs.ezaudio_demo import get_config

    c = get_config()
    c.data.precomputed_dir = d
    return c


def test_training_refuses_data_of_another_codec_by_name(toy_data):
    """configs/ezaudio_demo.py (mel codec, MiniLM text, token PCA 64) on the toy-codec precompute: the error
    names both codecs and the fix, not ``TokenPCA.fit: k=64 must be in [1, 32]``."""
    d, _ = toy_data
    c = _demo_config(d)
    msg = (f"data in {d} was precomputed with codec='toy' (manifest.json), but the config expects codec='mel' "
           "(config.codec.name); re-run launch.precompute with --config.codec.name=mel or point "
           "config.data.precomputed_dir elsewhere")
    with pytest.raises(ConfigError) as e:
        tta.build_task(c, None)
    assert str(e.value) == msg
    with pytest.raises(ConfigError, match="codec='toy'"):  # sampling fits/loads the token PCA from the data too
        tta.token_pca_of(c)
    assert not [f for f in os.listdir(d) if f.startswith("token_pca")]
    c.codec.name = "toy"  # the right codec, the wrong text encoder
    with pytest.raises(ConfigError, match=r"text='bytes' \(manifest.json\), but the config expects "
                                          r"text='minilm' \(config.text.name\).*--config.text.name=minilm"):
        tta.build_task(c, None)
    c.text.name = "bytes"  # the right names, a setting both record differs
    with pytest.raises(ConfigError, match=r"text.max_len=64 \(manifest.json\), but the config expects "
                                          r"text.max_len=32 \(config.text.max_len\).*--config.text.max_len=32"):
        tta.build_task(c, None)
    c.text.max_len = 64
    assert tta.check_precomputed(c, _manifest(d), d) == []


def test_older_manifests_are_read_by_id_or_accepted_with_a_warning(toy_data, caplog):
    d, _ = toy_data
    c = _demo_config(d)
    old = {k: v for k, v in _manifest(d).items() if k not in ("codec", "text")}
    with pytest.raises(ConfigError, match=r"codec='toy' \(manifest.json config.codec_id='toy-frame-codec"):
        tta.check_precomputed(c, old, d)
    old["config"] = dict(old["config"], codec_id="my-codec", text_id="minilm(all-MiniLM-L6-v2,max_len=32)")
    with caplog.at_level("WARNING", logger="tta_jax.pipelines.tta"):
        warnings = tta.check_precomputed(c, old, d)
    assert len(warnings) == 2 and "does not record the codec" in warnings[0] and "'my-codec'" in warnings[0]
    assert "only the text name was checked" in warnings[1]
    assert "does not record the codec" in caplog.text and "only the text name was checked" in caplog.text
    del c.codec["name"], c.text["name"]  # a config that names no codec / text encoder is not checked
    assert tta.check_precomputed(c, old, d) == []
