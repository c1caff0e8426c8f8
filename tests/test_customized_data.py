"""Customised-TTA targets (data_pipeline/customized.py): concatenation and overlay of reference clips."""
from __future__ import annotations

import numpy as np
import pytest

from data_pipeline import customized
from data_pipeline.sources import AudioConfig, BadExample, Example, folder_source, prepare_audio
from tta_jax.audio import io as audio_io

SR = 8000
FAMILIES = ("piano", "guitar", "organ", "strings", "drums")


def _clip(i: int, seconds: float = 1.0, amp: float = 0.3, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * (110 + 37 * i) * t + i)).astype(np.float32)


def _examples(n_per: int = 3, families=FAMILIES, split: str = "train", amp: float = 0.3) -> list[Example]:
    out = []
    for f, fam in enumerate(families):
        for k in range(n_per):
            i = f * n_per + k
            out.append(Example(key=f"{split}/{fam}_{k}", caption=f"A {fam} plays note {k}.", split=split,
                               labels={"family": fam, "2_family": "", "num_events": "1"},
                               audio=_clip(i, amp=amp), sample_rate=SR))
    return out


def _decode(ex: Example, seconds: float, sr: int = SR) -> np.ndarray:
    cfg = AudioConfig(sample_rate=sr, max_seconds=None, crop_seconds=seconds, crop="start", normalize=None)
    return prepare_audio(ex, cfg)[0]


def _src(ref: Example) -> str:
    """The source clip's key of a reference (key <target key>~ref<j>~<clip key>)."""
    return ref.key.split("~ref", 1)[1].split("~", 1)[1]


def _summary(targets):
    return sorted((t.key, t.caption, tuple(r.key for r in t.refs), tuple(sorted(t.labels.items())))
                  for t in targets)


def test_concatenation_is_sample_accurate():
    exs = _examples()
    seg = 0.5
    n = int(round(seg * SR))
    targets, report = customized.concatenate_targets(exs, label="family", count=3, segment_seconds=seg,
                                                     sample_rate=SR, seed=1)
    assert report["kept"] == len(exs) == len(targets)
    by_key = {e.key: e for e in exs}
    for t in targets:
        assert t.sample_rate == SR and callable(t.audio) and len(t.refs) == 3
        audio = _decode(t, 3 * seg)
        assert audio.shape == (3 * n,)
        for j, r in enumerate(t.refs):
            assert r.split == t.split and r.sample_rate == SR and r.key.startswith(f"{t.key}~ref{j}~")
            ref = _decode(r, seg)
            np.testing.assert_array_equal(audio[j * n:(j + 1) * n], ref)
            src = by_key[_src(r)]
            np.testing.assert_array_equal(ref, src.audio[:n])  # first segment_seconds of the clip, as is
            assert r.caption == src.caption
        assert t.refs[0].key.endswith("~" + t.key[: -len("~cat")])  # the example is reference 0
        fams = t.labels["ref_family"].split(",")
        assert len(set(fams)) == 3 and t.labels["family"] == fams[0] and t.labels["num_events"] == "3"
        caps = [r.caption.rstrip(".") for r in t.refs]
        assert t.caption == f"{caps[0]}, then a{caps[1][1:]}, then a{caps[2][1:]}."


def test_short_clip_zero_padded_and_resampled():
    exs = _examples(n_per=2, families=FAMILIES[:2])
    exs[0].audio = _clip(0, seconds=0.2)                     # shorter than the segment: zero-padded
    exs[1].audio, exs[1].sample_rate = _clip(1, sr=16000), 16000   # another rate: resampled
    seg = 0.5
    n = int(round(seg * SR))
    targets, _ = customized.concatenate_targets(exs, label="family", count=2, segment_seconds=seg,
                                                sample_rate=SR)
    t0 = next(t for t in targets if t.key == exs[0].key + "~cat")
    a = t0.refs[0].audio()
    assert a.shape == (n,) and np.all(a[int(0.2 * SR):] == 0)
    np.testing.assert_array_equal(a[: int(0.2 * SR)], exs[0].audio)
    t1 = next(t for t in targets if t.key == exs[1].key + "~cat")
    b = t1.refs[0].audio()
    want = audio_io.resample(exs[1].audio, 16000, SR)[:n]
    assert b.shape == (n,)
    np.testing.assert_allclose(b, want, atol=1e-5)  # decoded past the segment: no edge inside it
    # a clip shorter than min_seconds is left out instead
    _, rep = customized.concatenate_targets(exs, label="family", count=2, segment_seconds=seg, sample_rate=SR,
                                            min_seconds=0.5)
    assert rep["too_short"] == 1 and rep["eligible"] == len(exs) - 1


def test_determinism_order_independence_and_distinct_labels():
    exs = _examples()
    kw = dict(label="family", count=3, segment_seconds=0.25, sample_rate=SR, seed=3)
    a, _ = customized.concatenate_targets(exs, **kw)
    b, _ = customized.concatenate_targets(list(reversed(exs)), **kw)
    assert _summary(a) == _summary(b)
    c, _ = customized.concatenate_targets(exs, **{**kw, "seed": 4})
    assert _summary(a) != _summary(c)
    kw_o = dict(label="family", count=2, segment_seconds=0.25, target_seconds=1.0, sample_rate=SR, seed=3)
    oa, _ = customized.overlay_targets(exs, **kw_o)
    ob, _ = customized.overlay_targets(exs[::-1], **kw_o)
    assert _summary(oa) == _summary(ob)
    ta = {t.key: t for t in oa}
    for t in ob:
        np.testing.assert_array_equal(t.audio(), ta[t.key].audio())
    for t in a + oa:
        fams = t.labels["ref_family"].split(",")
        assert len(set(fams)) == len(fams) == len(t.refs)
        assert [r.labels["family"] for r in t.refs] == fams


def _mix_by_hand(t: Example, exs, gain: float, total: int, n: int) -> np.ndarray:
    by_key = {e.key: e for e in exs}
    bg = by_key[t.labels["_background"]].audio
    mix = np.zeros(total, np.float32)
    mix[: min(total, len(bg))] = gain * bg[:total]
    offsets = [int(round(float(s) * SR)) for s in t.labels["_offsets"].split(",")]
    for r, o in zip(t.refs, offsets):
        assert 0 <= o <= total - n
        mix[o:o + n] += by_key[_src(r)].audio[:n]
    return mix


@pytest.mark.parametrize("amp", [0.1, 0.9])
def test_overlay_within_range_and_exact_mix(amp):
    exs = _examples(amp=amp)
    seg, tgt, gain = 0.25, 0.75, 0.5
    n, total = int(round(seg * SR)), int(round(tgt * SR))
    targets, report = customized.overlay_targets(exs, label="family", count=2, segment_seconds=seg,
                                                 target_seconds=tgt, sample_rate=SR, seed=0, background_gain=gain)
    assert report["kept"] == len(targets) == len(exs) and report["no_background"] == 0
    clipped = 0
    for t in targets:
        audio = _decode(t, tgt)
        assert audio.shape == (total,) and np.max(np.abs(audio)) <= 1.0
        fams = t.labels["ref_family"].split(",")
        bg = next(e for e in exs if e.key == t.labels["_background"])
        assert bg.labels["family"] not in fams and bg.split == t.split
        assert t.caption.startswith(bg.caption.rstrip(".") + ", with a")
        want = _mix_by_hand(t, exs, gain, total, n)
        peak = np.max(np.abs(want))
        if peak <= customized.PEAK:
            np.testing.assert_allclose(audio, want, atol=1e-6)
        else:
            clipped += 1
            np.testing.assert_allclose(audio, want * customized.PEAK / peak, atol=1e-6)
            assert np.isclose(np.max(np.abs(audio)), customized.PEAK)
    assert (clipped > 0) == (amp > 0.5)


def test_report_counts_and_backgrounds():
    exs = _examples(n_per=2, families=FAMILIES[:3])
    exs.append(Example(key="train/nolabel", caption="x.", labels={"family": ""}, audio=_clip(1), sample_rate=SR))
    exs.append(Example(key="train/two", caption="Piano then drums.", labels={"family": "piano", "2_family": "drums"},
                       audio=_clip(2), sample_rate=SR))
    exs.append(Example(key="train/nocap", caption="  ", labels={"family": "piano"}, audio=_clip(3), sample_rate=SR))
    exs.append(Example(key="valid/alone", caption="A bell.", split="valid", labels={"family": "bell"},
                       audio=_clip(4), sample_rate=SR))
    kw = dict(label="family", segment_seconds=0.25, sample_rate=SR)
    _, rep = customized.concatenate_targets(exs, count=3, **kw)
    assert rep == {"kept": 6, "eligible": 7, "no_label": 1, "two_events": 1, "no_caption": 1, "too_short": 0,
                   "too_few_labels": 1}
    _, rep = customized.concatenate_targets(exs, count=4, **kw)
    assert rep["kept"] == 0 and rep["too_few_labels"] == 7
    # overlay with 3 of 3 labels: only the two-event clip (piano + drums) could be a background, and it is not
    _, rep = customized.overlay_targets(exs, count=3, target_seconds=0.5, **kw)
    assert rep["kept"] == 0 and rep["no_background"] == 6 and rep["too_few_labels"] == 1
    # count 2: the background is the third family, or the two-event clip when neither reference is piano/drums
    targets, rep = customized.overlay_targets(exs, count=2, target_seconds=0.5, **kw)
    assert rep["kept"] == 6
    for t in targets:
        fams = set(t.labels["ref_family"].split(","))
        assert t.labels["_background"] not in ("train/nolabel", "train/nocap")
        if t.labels["_background"] == "train/two":
            assert not fams & {"piano", "drums"}
            assert t.labels["num_events"] == "4"


def test_caption_fn_and_errors():
    exs = _examples(n_per=2, families=FAMILIES[:3])
    fn = lambda labels: f"Some {labels['family'][0]} sound."  # noqa: E731
    kw = dict(label="family", count=2, segment_seconds=0.25, sample_rate=SR)
    targets, _ = customized.concatenate_targets(exs, caption_fn=fn, caption_prob=1.0, **kw)
    for t in targets:
        f0, f1 = t.labels["ref_family"].split(",")
        assert t.caption == f"Some {f0[0]} sound, then some {f1[0]} sound."
        assert t.refs[0].caption.startswith("A ")   # the references keep their own captions
    with pytest.raises(ValueError, match="count=0"):
        customized.concatenate_targets(exs, **{**kw, "count": 0})
    with pytest.raises(ValueError, match="caption_fn"):
        customized.overlay_targets(exs, target_seconds=1.0, caption_prob=0.5, **kw)
    with pytest.raises(ValueError, match="target_seconds"):
        customized.overlay_targets(exs, target_seconds=0.1, **kw)
    # a reference that cannot be decoded makes the target a BadExample that names it
    exs[1].audio = np.full(100, np.nan, np.float32)
    targets, _ = customized.concatenate_targets(exs, **kw)
    bad = next(t for t in targets if t.key == exs[1].key + "~cat")
    with pytest.raises(BadExample, match="non-finite") as e:
        _decode(bad, 0.5)
    assert e.value.key == bad.key and exs[1].key in e.value.reason


def test_folder_source_with_labels(tmp_path):
    sf = pytest.importorskip("soundfile")
    rows = ["path,caption,split,family"]
    for f, fam in enumerate(FAMILIES[:3]):
        for k in range(2):
            sr = 16000 if k else SR
            sf.write(str(tmp_path / f"{fam}_{k}.wav"), _clip(f * 2 + k, seconds=0.6, sr=sr), sr, subtype="FLOAT")
            rows.append(f"{fam}_{k}.wav,A {fam} sound {k}.,train,{fam}")
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    exs = folder_source(str(tmp_path))
    seg = 0.5
    n = int(round(seg * SR))
    targets, rep = customized.concatenate_targets(exs, label="family", count=3, segment_seconds=seg,
                                                  sample_rate=SR, min_seconds=0.1)
    assert rep["kept"] == 6 and rep["too_short"] == 0
    for t in targets:
        audio = _decode(t, 3 * seg)
        for j, r in enumerate(t.refs):
            np.testing.assert_array_equal(audio[j * n:(j + 1) * n], _decode(r, seg))
    _, rep = customized.concatenate_targets(exs, label="family", count=3, segment_seconds=seg, sample_rate=SR,
                                            min_seconds=1.0)   # clip lengths read from the file headers
    assert rep["too_short"] == 6 and rep["kept"] == 0
    targets, rep = customized.overlay_targets(exs, label="family", count=2, segment_seconds=seg,
                                              target_seconds=1.0, sample_rate=SR)
    assert rep["kept"] == 6
    for t in targets:
        assert np.max(np.abs(_decode(t, 1.0))) <= 1.0
