"""grain loader: resume from iterator state, augmentations, EzAudio masks, global batch."""
import os

import jax
import numpy as np
import pytest

from tta_jax.data import masks
from tta_jax.data.loader import LoaderConfig, global_batch, make_dataset
from data_pipeline.precompute import PrecomputeConfig, run_precompute
from data_pipeline.sources import AudioConfig, Example
from data_pipeline.toy import byte_tokens

SR = 8000


@pytest.fixture(scope="module")
def pre_dir(tmp_path_factory):
    """30 in-memory examples of different lengths; identity-ish codec: 80-sample frames -> [T, 4]."""
    rng = np.random.default_rng(0)
    ex = [Example(key=f"k{i:02d}", caption=f"caption number {i}", split="valid" if i % 5 == 0 else "train",
                  audio=rng.uniform(-1, 1, int(SR * (0.5 + i / 30))).astype(np.float32), sample_rate=SR)
          for i in range(30)]

    def enc(a):
        fr = a.reshape(a.shape[0], -1, 80)
        return np.stack([fr.mean(-1), fr.std(-1), fr.max(-1), fr.min(-1)], -1)

    d = str(tmp_path_factory.mktemp("pre"))
    cfg = PrecomputeConfig(audio=AudioConfig(sample_rate=SR, crop_seconds=1.0, normalize=None),
                           shard_size=7, batch_size=4)
    m = run_precompute(ex, d, enc, byte_tokens, cfg, progress=False)
    assert m["num_records"] == 30 and m["shapes"]["latent"][0] == [100, 4]
    return d


def _take(it, n):
    return [next(it) for _ in range(n)]


def _eq(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_from_state_matches_uninterrupted(pre_dir):
    cfg = LoaderConfig(batch_size=4, seed=7, crop_frames=40, caption_dropout=0.3,
                       mask_partial_prob=0.25, keep_strings=True)
    it = iter(make_dataset(pre_dir, cfg, 0, 1))
    _take(it, 5)  # past the first epoch boundary (30 records / 4)
    state = it.get_state()
    ref = _take(it, 10)
    it2 = iter(make_dataset(pre_dir, cfg, 0, 1))
    it2.set_state(state)
    for a, b in zip(ref, _take(it2, 10)):
        _eq(a, b)
    # and a different seed gives a different stream
    other = _take(iter(make_dataset(pre_dir, LoaderConfig(batch_size=4, seed=8, keep_strings=True),
                                    0, 1)), 1)[0]
    first = _take(iter(make_dataset(pre_dir, LoaderConfig(batch_size=4, seed=7, keep_strings=True),
                                    0, 1)), 1)[0]
    assert list(other["key"]) != list(first["key"])


def test_epochs_shuffle_and_cover(pre_dir):
    cfg = LoaderConfig(batch_size=5, seed=1, num_epochs=2, keep_strings=True)
    keys = [str(k) for b in make_dataset(pre_dir, cfg, 0, 1) for k in b["key"]]
    assert len(keys) == 60 and sorted(keys[:30]) == sorted(f"k{i:02d}" for i in range(30))
    assert keys[:30] != keys[30:] and keys[:30] != sorted(keys[:30])


def test_crop_dropout_masks_and_split(pre_dir):
    cfg = LoaderConfig(batch_size=30, seed=3, num_epochs=1, crop_frames=60, caption_dropout=0.5,
                       mask_partial_prob=0.25, keep_strings=True, shuffle=False)
    b = next(iter(make_dataset(pre_dir, cfg, 0, 1)))
    assert b["latent"].shape == (30, 60, 4) and b["mask"].shape == (30, 60)
    drop = b["caption_dropped"]
    assert 5 < drop.sum() < 25
    null = byte_tokens([""])["input_ids"][0]
    for i in range(30):
        if drop[i]:
            np.testing.assert_array_equal(b["input_ids"][i], null)
            assert b["caption"][i] == ""
        else:
            assert b["caption"][i].startswith("caption number")
            np.testing.assert_array_equal(b["input_ids"][i],
                                          byte_tokens([str(b["caption"][i])])["input_ids"][0])
    # short clips: valid frames counted, padding beyond them flagged 0
    k0 = list(b["key"]).index("k00")  # 0.5 s -> 50 valid of 100 frames
    assert b["latent_valid"][k0].sum() == 50
    full = (b["mask"] == 1).all(1)
    assert 0 < (~full).sum() < 30  # some partial masks, most full
    vb = next(iter(make_dataset(pre_dir, LoaderConfig(batch_size=6, num_epochs=1, split="valid",
                                                      keep_strings=True), 0, 1)))
    assert sorted(vb["key"]) == [f"k{i:02d}" for i in range(0, 30, 5)]


def test_span_mask_definition():
    L = 250
    fracs, partial = [], 0
    for s in range(400):
        rng = np.random.default_rng(s)
        m = masks.span_mask(L, rng)
        # replay the definition with the same rng stream
        r2 = np.random.default_rng(s)
        ratio = r2.uniform(0.25, 1.0)
        n = max(1, int(np.floor(ratio * L / 10 + r2.uniform())))
        starts = r2.choice(L - 10, size=n, replace=False)
        ref = np.zeros(L, np.float32)
        for st in starts:
            ref[st:st + 10] = 1
        np.testing.assert_array_equal(m, ref)
        assert m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
        # spans are runs of length >= 10 (overlaps merge)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], m, [0]])))
        assert np.all(edges[1::2] - edges[0::2] >= 10)
        fracs.append(m.mean())
        partial += (masks.sample_mask(L, np.random.default_rng(10_000 + s)) < 1).any()
    assert 0.2 < np.mean(fracs) < 0.6
    assert 60 < partial < 140  # ~25% partial masks
    assert masks.span_mask(8, np.random.default_rng(0)).all()  # shorter than a span: all masked


def test_global_batch_on_mesh(pre_dir):
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    b = next(iter(make_dataset(pre_dir, LoaderConfig(batch_size=8, keep_strings=True), 0, 1)))
    g = global_batch(b, mesh, ("data", "fsdp"))
    assert "caption" not in g and g["latent"].shape == (8, 100, 4)
    assert len(g["latent"].sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(g["latent"]), b["latent"])
    g1 = global_batch(b, mesh, ("data",))
    assert g1["input_ids"].sharding.spec[0] == "data"


def test_mp_workers_same_batches_and_resume(pre_dir):
    cfg = LoaderConfig(batch_size=4, seed=2, crop_frames=30, num_workers=1)
    it = iter(make_dataset(pre_dir, cfg, 0, 1))
    ref = iter(make_dataset(pre_dir, LoaderConfig(batch_size=4, seed=2, crop_frames=30), 0, 1))
    for a, b in zip(_take(it, 3), _take(ref, 3)):
        _eq(a, b)
    state = it.get_state()
    nxt = _take(it, 2)
    it.close()
    it2 = iter(make_dataset(pre_dir, cfg, 0, 1))
    it2.set_state(state)
    for a, b in zip(nxt, _take(it2, 2)):
        _eq(a, b)
    it2.close()


# ------------------------------------------------------------------ image latents [H, T, C] (time axis -2)
H_ROWS, IMG_C = 3, 2


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """12 examples of 0.3-1.0 s through a fake image codec: 80-sample frames -> [B, H=3, T, C=2] with
    channel 0 = frame mean + row, channel 1 = 1000 * row + frame index (so crops can be located)."""
    rng = np.random.default_rng(1)
    ex = [Example(key=f"i{i:02d}", caption=f"image clip {i}", audio=rng.uniform(-1, 1, int(SR * (0.3 + i / 16)))
                  .astype(np.float32), sample_rate=SR) for i in range(12)]

    def enc(a):
        fr = np.asarray(a).reshape(a.shape[0], -1, 80)           # [B, T, 80]
        b, t = fr.shape[:2]
        rows = np.arange(H_ROWS, dtype=np.float32)[None, :, None]  # [1, H, 1]
        mean = fr.mean(-1)[:, None, :] + rows                     # [B, H, T]
        where = np.broadcast_to(1000 * rows + np.arange(t)[None, None, :], (b, H_ROWS, t))
        return np.stack([mean, where], -1).astype(np.float32)     # [B, H, T, C]

    d = str(tmp_path_factory.mktemp("pre_img"))
    cfg = PrecomputeConfig(audio=AudioConfig(sample_rate=SR, crop_seconds=1.0, normalize=None),
                           shard_size=5, batch_size=4)
    m = run_precompute(ex, d, enc, byte_tokens, cfg, progress=False)
    assert m["num_records"] == 12 and m["shapes"]["latent"][0] == [H_ROWS, 100, IMG_C]
    assert len(m["latent_stats"]["channel_mean"]) == IMG_C
    return d


def _valid_frames(key: str) -> int:
    """Valid latent frames of image example `key` (0.3 + i/16 s at 100 frames/s, ceil)."""
    i = int(key[1:])
    return int(np.ceil(int(SR * (0.3 + i / 16)) / SR * 100)) if 0.3 + i / 16 < 1.0 else 100


def test_image_latents_crop_along_time_axis(image_dir):
    from tta_jax.data.records import read_shard

    recs = {r["key"]: r for s in sorted(os.listdir(image_dir)) if s.endswith(".array_record")
            for r in read_shard(os.path.join(image_dir, s))}
    assert {k: r["latent_frames"] for k, r in recs.items()} == {k: _valid_frames(k) for k in recs}
    cfg = LoaderConfig(batch_size=12, seed=5, num_epochs=1, crop_frames=40, mask_partial_prob=0.5,
                       keep_strings=True, shuffle=False)
    b = next(iter(make_dataset(image_dir, cfg, 0, 1)))
    assert b["latent"].shape == (12, H_ROWS, 40, IMG_C) and b["latent"].dtype == np.float32
    assert b["latent_valid"].shape == (12, 40) and b["mask"].shape == (12, 40)
    starts = set()
    for i, key in enumerate(b["key"]):
        frames, z = _valid_frames(str(key)), b["latent"][i]
        start = int(z[0, 0, 1])
        assert 0 <= start <= max(frames - 40, 0), (key, start, frames)   # the window starts on real audio
        starts.add(start)
        for h in range(H_ROWS):                                          # every row: the same window
            np.testing.assert_array_equal(z[h, :, 1], 1000 * h + np.arange(start, start + 40))
            np.testing.assert_array_equal(z[h, :, 0], recs[str(key)]["latent"][h, start:start + 40, 0])
        np.testing.assert_array_equal(b["latent_valid"][i], (np.arange(start, start + 40) < frames))
    assert len(starts) > 2                                               # random windows, not all at 0
    assert 0 < (b["mask"] < 1).any(1).sum() < 12                         # per-frame masks: some partial


def test_image_latents_pad_when_shorter(image_dir):
    cfg = LoaderConfig(batch_size=4, seed=0, num_epochs=1, crop_frames=128, keep_strings=True, shuffle=False)
    b = next(iter(make_dataset(image_dir, cfg, 0, 1)))
    assert b["latent"].shape == (4, H_ROWS, 128, IMG_C)
    np.testing.assert_array_equal(b["latent"][:, :, 100:], 0.0)          # zero-padded past the 100 frames
    for i, key in enumerate(b["key"]):
        np.testing.assert_array_equal(b["latent_valid"][i], np.arange(128) < _valid_frames(str(key)))
        np.testing.assert_array_equal(b["latent"][i, :, :100, 1], 1000 * np.arange(H_ROWS)[:, None] + np.arange(100))
    full = next(iter(make_dataset(image_dir, LoaderConfig(batch_size=2, num_epochs=1, shuffle=False), 0, 1)))
    assert full["latent"].shape == (2, H_ROWS, 100, IMG_C) and full["latent_valid"].shape == (2, 100)


def test_image_latents_deterministic_and_resumable(image_dir):
    cfg = LoaderConfig(batch_size=4, seed=11, crop_frames=30, caption_dropout=0.3, mask_partial_prob=0.25,
                       keep_strings=True)
    a = _take(iter(make_dataset(image_dir, cfg, 0, 1)), 6)
    for x, y in zip(a, _take(iter(make_dataset(image_dir, cfg, 0, 1)), 6)):
        _eq(x, y)
    it = iter(make_dataset(image_dir, cfg, 0, 1))
    _take(it, 4)                                  # past the first epoch boundary (12 records / 4)
    state = it.get_state()
    ref = _take(it, 5)
    it2 = iter(make_dataset(image_dir, cfg, 0, 1))
    it2.set_state(state)
    for x, y in zip(ref, _take(it2, 5)):
        _eq(x, y)
    assert ref[0]["latent"].shape == (4, H_ROWS, 30, IMG_C)


def test_crop_time_and_rank_errors():
    from tta_jax.data.loader import crop_time
    from tta_jax.data.records import latent_time_len

    z = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)          # [H, T, C]
    c, v = crop_time(z, np.ones(5, np.float32), 3, 4)
    np.testing.assert_array_equal(c[:, :2], z[:, 3:5])
    np.testing.assert_array_equal(c[:, 2:], 0.0)
    np.testing.assert_array_equal(v, [1, 1, 0, 0])
    seq, _ = crop_time(z[0], np.ones(5, np.float32), 1, 2)               # [T, C]
    np.testing.assert_array_equal(seq, z[0, 1:3])
    assert latent_time_len((7, 4)) == 7 and latent_time_len((3, 7, 4)) == 7
    with pytest.raises(ValueError, match=r"record 'k' field 'latent': expected a latent \[T, C\].*\[5\]"):
        latent_time_len((5,), "record 'k' field 'latent'")
    with pytest.raises(ValueError, match="crop_frames=0"):
        crop_time(z, np.ones(5, np.float32), 0, 0)
