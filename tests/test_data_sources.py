"""Real data sources: layouts, audio preparation fixes, and every kind of bad input."""
import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf

from data_pipeline import sources as S
from data_pipeline.precompute import PrecomputeConfig, run_precompute
from tta_jax.data.records import read_shard

SR = 22050


def _tone(sr, seconds, channels=1, f=440.0):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * f * t).astype(np.float32)
    return np.stack([x * (c + 1) / channels for c in range(channels)], 1) if channels > 1 else x


def make_bad_folder(root):
    """3 good files (rate/channel fixes needed for two) + 6 bad ones, one of each kind."""
    a = os.path.join(root, "audio")
    os.makedirs(a)
    sf.write(f"{a}/good_mono.wav", _tone(SR, 1.2), SR, subtype="PCM_16")
    sf.write(f"{a}/good_stereo_44k.flac", _tone(44100, 1.0, 2), 44100)
    sf.write(f"{a}/good_3ch_16k.ogg", _tone(16000, 1.5, 3), 16000)
    sf.write(f"{a}/trunc.wav", _tone(SR, 1.0), SR, subtype="PCM_16")
    with open(f"{a}/trunc.wav", "rb") as f:
        b = f.read()
    with open(f"{a}/trunc.wav", "wb") as f:
        f.write(b[: len(b) // 2])
    open(f"{a}/zero.wav", "wb").close()
    with open(f"{a}/notaudio.mp3", "w") as f:
        f.write("<html>this is not audio</html>\n" * 20)
    x = _tone(SR, 1.0)
    x[100:200] = np.nan
    x[300] = np.inf
    sf.write(f"{a}/nan.wav", x, SR, subtype="FLOAT")
    sf.write(f"{a}/nocaption.wav", _tone(SR, 1.0), SR, subtype="PCM_16")
    rows = [
        ("audio/good_mono.wav", "a tone"), ("audio/good_stereo_44k.flac", "a stereo tone"),
        ("audio/good_3ch_16k.ogg", "a three channel tone"), ("audio/trunc.wav", "truncated"),
        ("audio/zero.wav", "empty file"), ("audio/notaudio.mp3", "html"),
        ("audio/nan.wav", "nan samples"), ("audio/nocaption.wav", "   "),
        ("audio/missing.wav", "missing file"),
    ]
    with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption", "split"])
        for p, c in rows:
            w.writerow([p, c, "train"])
    return {"audio/trunc.wav": "truncated", "audio/zero.wav": "empty",
            "audio/notaudio.mp3": "could not decode", "audio/nan.wav": "non-finite",
            "audio/nocaption.wav": "caption is empty", "audio/missing.wav": "not found"}


def _identity_codec(audio):
    return np.asarray(audio)[:, : (audio.shape[1] // 100) * 100].reshape(audio.shape[0], -1, 100)


def test_bad_folder_yields_good_records_and_named_reasons(tmp_path, caplog):
    expected = make_bad_folder(str(tmp_path / "raw"))
    ex = S.folder_source(str(tmp_path / "raw"))
    assert len(ex) == 9
    cfg = PrecomputeConfig(audio=S.AudioConfig(sample_rate=SR, crop_seconds=1.0, crop="start"),
                           shard_size=4, batch_size=2, decode_threads=2)
    m = run_precompute(ex, str(tmp_path / "pre"), _identity_codec, None, cfg, progress=False)
    assert m["num_records"] == 3 and m["num_skipped"] == 6
    got = {s["key"]: s["reason"] for s in m["skipped"]}
    assert set(got) == set(expected)
    for k, frag in expected.items():
        assert frag in got[k], (k, got[k])
    assert all(k in caplog.text for k in expected)  # also in the log
    recs = [r for f in m["shards"] for r in read_shard(str(tmp_path / "pre" / f))]
    assert sorted(r["key"] for r in recs) == sorted(
        ["audio/good_mono.wav", "audio/good_stereo_44k.flac", "audio/good_3ch_16k.ogg"])
    for r in recs:
        assert r["latent"].shape == (220, 100) and np.all(np.isfinite(r["latent"]))
        assert abs(np.abs(r["latent"]).max() - 0.95) < 1e-3  # peak-normalised


def test_prepare_audio_fixes_rate_channels_and_crops(tmp_path):
    p = str(tmp_path / "x.flac")
    sf.write(p, _tone(44100, 3.0, 2), 44100)
    cfg = S.AudioConfig(sample_rate=16000, crop_seconds=1.0, crop="random", seed=1)
    ex = S.Example(key="x", caption="c", path=p)
    a, valid = S.prepare_audio(ex, cfg)
    assert a.shape == (16000,) and valid == 16000
    b, _ = S.prepare_audio(ex, cfg)
    np.testing.assert_array_equal(a, b)  # crop seeded per key
    c, _ = S.prepare_audio(S.Example(key="y", caption="c", path=p), cfg)
    assert not np.array_equal(a, c)
    short, v = S.prepare_audio(ex, S.AudioConfig(sample_rate=16000, crop_seconds=5.0, max_seconds=2.0))
    assert short.shape == (80000,) and v == 32000 and np.all(short[32000:] == 0)
    mono, _ = S.prepare_audio(ex, S.AudioConfig(sample_rate=44100, crop_seconds=1.0, crop="start",
                                                normalize=None))
    ref = _tone(44100, 1.0, 2).mean(1)
    np.testing.assert_allclose(mono, ref, atol=1e-4)


def test_audiocaps_clotho_wavcaps_layouts(tmp_path):
    a = tmp_path / "audio"
    a.mkdir()
    for name in ("Yabc123.wav", "def456.wav", "clip one.wav", "777.flac"):
        sf.write(str(a / name), _tone(SR, 0.5), SR)
    with open(tmp_path / "train.csv", "w") as f:
        f.write("audiocap_id,youtube_id,start_time,caption\n1,abc123,30,dog barks\n"
                "2,def456,0,rain falls\n3,zzz,0,not downloaded\n")
    ac = S.audiocaps_source(str(tmp_path / "train.csv"), str(a))
    assert [e.caption for e in ac] == ["dog barks", "rain falls", "not downloaded"]
    assert ac[0].path.endswith("Yabc123.wav") and ac[1].path.endswith("def456.wav")
    assert not os.path.exists(ac[2].path) and ac[0].split == "train"
    with open(tmp_path / "clotho_captions_development.csv", "w") as f:
        f.write("file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
                '"clip one.wav",a,b,c,d,e\n')
    cl = S.clotho_source(str(tmp_path / "clotho_captions_development.csv"), str(a))
    assert [e.caption for e in cl] == list("abcde") and cl[0].split == "development"
    assert len({e.key for e in cl}) == 5
    assert len(S.clotho_source(str(tmp_path / "clotho_captions_development.csv"), str(a),
                               all_captions=False)) == 1
    with open(tmp_path / "wc.json", "w") as f:
        json.dump({"data": [{"id": "777", "caption": "a bell", "duration": 0.5},
                            {"id": "888", "caption": "gone"}]}, f)
    wc = S.wavcaps_source(str(tmp_path / "wc.json"), str(a))
    assert wc[0].path.endswith("777.flac") and wc[0].labels["duration"] == "0.5"
    assert not os.path.exists(wc[1].path)


def test_jsonl_captions_and_bad_line(tmp_path):
    sf.write(str(tmp_path / "a.wav"), _tone(SR, 0.5), SR)
    with open(tmp_path / "captions.jsonl", "w") as f:
        f.write('{"path": "a.wav", "caption": "x", "split": "valid", "tag": 3}\n{broken\n')
    ex = S.folder_source(str(tmp_path))
    assert ex[0].split == "valid" and ex[0].labels == {"tag": "3"}
    assert "_error" in ex[1].labels and "unreadable JSON" in ex[1].labels["_error"]


def test_tfds_source_real():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(Exception):
        list(S.tfds_source("no_such_builder_xyz", "/nonexistent"))


def test_tfds_source_with_stub(monkeypatch):
    """The tfds code path against a stub module (tensorflow-datasets itself is an optional extra)."""
    import sys
    import types

    calls = {}

    class Builder:
        info = types.SimpleNamespace(features={"audio": types.SimpleNamespace(sample_rate=16000)})

        def download_and_prepare(self, download_config):
            calls["manual_dir"] = download_config.manual_dir

        def as_dataset(self, split):
            calls["split"] = split
            a = (np.sin(np.arange(16000) / 5) * 20000).astype(np.int16)
            return [{"audio": a, "captions": np.array([b"one", b"two"], dtype=object)}]

    stub = types.ModuleType("tensorflow_datasets")
    stub.builder = lambda name, data_dir=None: Builder()
    stub.download = types.SimpleNamespace(
        DownloadConfig=lambda manual_dir: types.SimpleNamespace(manual_dir=manual_dir))
    stub.as_numpy = lambda ds: iter(ds)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", stub)
    ex = list(S.tfds_source("clotho", "/manual", split="dev", caption_key="captions"))
    assert calls == {"manual_dir": "/manual", "split": "dev"}
    assert [e.key for e in ex] == ["clotho/dev/0#1", "clotho/dev/0#2"]
    assert [S.check_caption(e) for e in ex] == ["one", "two"]
    audio, valid = S.prepare_audio(ex[0], S.AudioConfig(sample_rate=8000, crop_seconds=1.0))
    assert valid == 8000 and abs(np.abs(audio).max() - 0.95) < 1e-3


def test_non_utf8_caption_is_skipped_naming_file_and_line(tmp_path):
    """A caption that is not UTF-8 (here Latin-1) is not garbled into U+FFFD: its row is skipped with a reason
    naming the file and line, the other rows load, and the precompute manifest lists it under skipped."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for n in ("a", "b", "c"):
        sf.write(str(raw / f"{n}.wav"), _tone(SR, 0.5), SR)
    with open(raw / "metadata.csv", "wb") as f:
        f.write(b'path,caption,split\na.wav,a clean tone,train\n'
                b'b.wav,"caf\xe9 noise, with a\nline break",train\nc.wav,"caf\xc3\xa9 ok",train\n')
    ex = S.folder_source(str(raw))
    assert [e.caption for e in ex[::2]] == ["a clean tone", "café ok"]
    err = ex[1].labels["_error"]
    assert f"{raw / 'metadata.csv'}:3:" in err and "'caption' is not valid UTF-8" in err and "0xe9" in err
    cfg = PrecomputeConfig(audio=S.AudioConfig(sample_rate=SR, crop_seconds=0.5, crop="start"), batch_size=2)
    m = run_precompute(ex, str(tmp_path / "pre"), _identity_codec, None, cfg, progress=False)
    assert m["num_records"] == 2 and m["num_skipped"] == 1
    assert m["skipped"][0]["key"] == "metadata.csv:3" and m["skipped"][0]["reason"] == err
    # the same for the other layouts: an AudioCaps csv row, a JSONL line, a WavCaps item
    with open(tmp_path / "train.csv", "wb") as f:
        f.write(b"audiocap_id,youtube_id,start_time,caption\n1,a,0,dog\n2,b,0,\xff\xfe rain\n")
    ac = S.audiocaps_source(str(tmp_path / "train.csv"), str(raw))
    assert ac[0].caption == "dog" and f"{tmp_path / 'train.csv'}:3: column 'caption'" in ac[1].labels["_error"]
    with open(raw / "caps.jsonl", "wb") as f:
        f.write(b'{"path": "a.wav", "caption": "ok"}\n{"path": "b.wav", "caption": "\xe9t\xe9"}\n')
    jl = S.folder_source(str(raw), "caps.jsonl")
    assert jl[0].caption == "ok" and jl[1].key == "caps.jsonl:2"
    assert f"{raw / 'caps.jsonl'}:2: not valid UTF-8" in jl[1].labels["_error"]
    with open(tmp_path / "wc.json", "wb") as f:
        f.write(b'{"data": [\n {"id": "a", "caption": "fine"},\n {"id": "b", "caption": "\xe9cho"}\n]}\n')
    wc = S.wavcaps_source(str(tmp_path / "wc.json"), str(raw))
    assert wc[0].caption == "fine" and f"{tmp_path / 'wc.json'}:3: item 1 is not valid UTF-8" in wc[1].labels["_error"]
