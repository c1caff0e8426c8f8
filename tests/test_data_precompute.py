"""Precompute: round trip through grain, SIGKILL + resume, multi-process sharding."""
import glob
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tta_jax.data import embedded as E
from tta_jax.data import records
from tta_jax.data.loader import LoaderConfig, make_dataset
from data_pipeline.precompute import PrecomputeConfig, run_precompute
from data_pipeline.sources import AudioConfig, folder_source, prepare_audio
from data_pipeline.toy import FrameCodec, byte_tokens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("raw"))
    E.export_embedded(d, E.EmbeddedConfig(num_clips=32, duration=1.0, sample_rate=SR))
    return d


def _cfg(**kw):
    return PrecomputeConfig(audio=AudioConfig(sample_rate=SR, crop_seconds=1.0, normalize=None),
                            shard_size=5, batch_size=4, codec_id="toy", text_id="bytes", **kw)


def _shard_bytes(d):
    out = {}
    for p in sorted(glob.glob(os.path.join(d, "shard-*"))):
        with open(p, "rb") as f:
            out[os.path.basename(p)] = f.read()
    return out


def test_round_trip_returns_exact_latents(raw_dir, tmp_path):
    codec = FrameCodec(sample_rate=SR, hop=160, bands=5)
    ex = folder_source(raw_dir)
    jenc, seen = jax.jit(codec.encode), {}

    def enc(batch):  # remember what the codec returned for each audio row
        out = np.asarray(jenc(batch))
        for a, z in zip(batch, out):
            seen[a.tobytes()] = z
        return out

    m = run_precompute(ex, str(tmp_path), enc, byte_tokens, _cfg(), progress=False)
    assert m["num_records"] == 32 and m["num_skipped"] == 0
    assert m["shapes"]["latent"] == [[100, 6], "float32"]
    assert len(m["latent_stats"]["channel_mean"]) == 6 and m["latent_stats"]["std"] > 0
    ds = make_dataset(str(tmp_path), LoaderConfig(batch_size=4, num_epochs=1, keep_strings=True),
                      0, 1)
    got = {}
    for b in ds:
        for i, k in enumerate(b["key"]):
            got[str(k)] = (b["latent"][i], b["input_ids"][i], str(b["caption"][i]))
    assert len(got) == 32
    cfg = _cfg().audio
    for e in ex:
        audio, _ = prepare_audio(e, cfg)
        ref = seen[audio.tobytes()]
        np.testing.assert_allclose(ref, np.asarray(codec.encode(audio[None]))[0], atol=1e-5)
        lat, ids, cap = got[e.key]
        np.testing.assert_array_equal(lat, ref)  # exactly the encoded latents
        assert cap == e.caption
        np.testing.assert_array_equal(ids, byte_tokens([e.caption])["input_ids"][0])


def _child(out, raw, throttle):
    args = ["--out", out, "--noprogress", "--config.source=folder",
            f"--config.source_args.root={raw}", "--config.codec.sample_rate=16000",
            "--config.audio.crop_seconds=1.0", "--config.shard_size=3", "--config.batch_size=2",
            f"--config.throttle_s={throttle}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "launch.precompute", *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_then_resume_equals_uninterrupted(raw_dir, tmp_path):
    from data_pipeline import build as cli
    from data_pipeline.precompute_config import get_config

    # uninterrupted reference, in-process, with exactly the CLI's config
    c = get_config()
    c.source, c.codec.sample_rate, c.audio.crop_seconds = "folder", SR, 1.0
    c.shard_size, c.batch_size = 3, 2
    codec, text = cli.build_encoders(c)
    ref = str(tmp_path / "ref")
    run_precompute(folder_source(raw_dir), ref, codec.encode, text.encode, cli.precompute_config(c, codec, text),
                   progress=False)

    out = str(tmp_path / "killed")
    p = _child(out, raw_dir, 0.15)
    t0 = time.time()
    while len(glob.glob(os.path.join(out, "shard-*.json"))) < 3:
        assert p.poll() is None, "child finished or died before it could be killed"
        assert time.time() - t0 < 60
        time.sleep(0.02)
    time.sleep(0.1)  # land mid-shard
    p.send_signal(signal.SIGKILL)
    p.wait()
    n_done = len(glob.glob(os.path.join(out, "shard-*.json")))
    assert 3 <= n_done < 11 and not os.path.exists(os.path.join(out, "manifest.json"))
    assert _child(out, raw_dir, 0).wait() == 0
    a, b = _shard_bytes(ref), _shard_bytes(out)
    assert set(a) == set(b) and len(a) == 2 * 11  # 32 clips / 3 per shard, no stray temp files
    assert all(a[k] == b[k] for k in a)
    with open(os.path.join(ref, "manifest.json")) as f1, open(os.path.join(out, "manifest.json")) as f2:
        assert f1.read() == f2.read()


def test_two_processes_disjoint_halves(raw_dir, tmp_path):
    codec = FrameCodec(sample_rate=SR, hop=160, bands=5)
    ex = folder_source(raw_dir)
    out = str(tmp_path)
    m0 = run_precompute(ex, out, jax.jit(codec.encode), None, _cfg(), 0, 2, progress=False)
    assert m0 is None  # process 1 not finished yet
    own0 = sorted(glob.glob(os.path.join(out, "shard-*.array_record")))
    m1 = run_precompute(ex, out, jax.jit(codec.encode), None, _cfg(), 1, 2, progress=False)
    assert m1 is not None and m1["num_records"] == 32
    keys0 = {r["key"] for p in own0 for r in records.read_shard(p)}
    keys1 = {r["key"] for f in m1["shards"] for r in records.read_shard(os.path.join(out, f))} - keys0
    assert len(keys0) == 17 and len(keys1) == 15 and not keys0 & keys1  # shards 0,2,4,6 vs 1,3,5
    # loader: each process sees a disjoint half of the records
    seen = []
    for pi in range(2):
        ds = make_dataset(out, LoaderConfig(batch_size=2, num_epochs=1, keep_strings=True), pi, 2)
        seen.append([str(k) for b in ds for k in b["key"]])
    assert len(seen[0]) == len(seen[1]) == 16
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == 32


def test_crash_while_writing_leaves_no_accepted_shard(raw_dir, tmp_path, monkeypatch):
    from data_pipeline import precompute as P

    codec = FrameCodec(sample_rate=SR, hop=160, bands=5)
    ex = folder_source(raw_dir)
    ref = str(tmp_path / "ref")
    run_precompute(ex, ref, jax.jit(codec.encode), None, _cfg(), progress=False)
    out = str(tmp_path / "out")
    real_write, calls = records.write_shard, []

    def crashing_write(path, recs):
        calls.append(path)
        if len(calls) == 3:  # third shard: half a file, then the process "dies"
            real_write(path, recs)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            raise SystemExit("simulated crash")
        real_write(path, recs)

    monkeypatch.setattr(P.records, "write_shard", crashing_write)
    with pytest.raises(SystemExit):
        run_precompute(ex, out, jax.jit(codec.encode), None, _cfg(), progress=False)
    names = sorted(os.listdir(out))
    assert [n for n in names if n.endswith(".array_record")] == [
        "shard-00000-of-00007.array_record", "shard-00001-of-00007.array_record"]
    assert any(".tmp-" in n for n in names) and "manifest.json" not in names
    with pytest.raises(FileNotFoundError):
        make_dataset(out, LoaderConfig(), 0, 1)
    monkeypatch.setattr(P.records, "write_shard", real_write)
    m = run_precompute(ex, out, jax.jit(codec.encode), None, _cfg(), progress=False)
    assert m["num_records"] == 32 and _shard_bytes(out) == _shard_bytes(ref)
    assert not any(".tmp-" in n for n in os.listdir(out))
