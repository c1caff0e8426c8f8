"""Customised-TTA training targets (DreamAudio, arXiv 2509.06027): targets built from K reference clips.

    targets, report = concatenate_targets(examples, label="family", count=3, segment_seconds=2.0,
                                          sample_rate=16000, seed=0)
    targets, report = overlay_targets(examples, label="family", count=2, segment_seconds=2.0,
                                      target_seconds=10.0, sample_rate=16000, seed=0)

Every eligible example (``labels[label]`` set, no second event ``labels["2_" + label]``, a usable caption) gives
one target; it is reference 0. References 1..K-1 are other eligible clips of the same split whose labels differ
from reference 0's and from each other (K distinct concepts): K-1 labels are drawn uniformly from the split's other
labels, then one clip of each (seeded by the example's key, so the draw depends neither on the input order nor on
the number of processes; as :func:`data_pipeline.references.pair_references`).

* Reference segment: the first ``segment_seconds`` of the clip, mono, resampled to ``sample_rate``; a shorter clip
  is zero-padded to exactly n = round(segment_seconds * sample_rate) samples (use ``min_seconds`` to leave short
  clips out instead). Peak levels are kept (no normalisation).
* Concatenation: target = the K segments one after the other, target[j*n:(j+1)*n] == reference j exactly.
  Caption "A, then b, then c." of the references' captions.
* Overlay: target of round(target_seconds * sample_rate) samples = ``background_gain`` * background (its first
  target_seconds, zero-padded) + each reference segment added at a seeded offset fully inside the target, then
  scaled by 1 / max(1, peak / 0.99) so it stays within [-1, 1] (untouched when it does not clip). The background
  is a clip of the same split with ``labels[label]`` set whose event(s) are none of the references' labels;
  two-event clips are allowed as backgrounds when both events differ (a richer scene; they cannot serve as
  references). Caption "<background caption>, with a and b." (K = 1: "..., with a."; K = 3: "with a, b and c").
  Offsets (seconds, 6 decimals) are stored as ``labels["_offsets"]``, the background's key as
  ``labels["_background"]``.

Decoding is lazy: a target's ``audio`` is a zero-argument callable that decodes its references (and background)
when :func:`data_pipeline.sources.prepare_audio` calls it; a reference that cannot be decoded makes the target a
BadExample naming that reference. ``refs`` are Examples (key ``<target key>~ref<j>~<clip key>``, the target's
split, their own caption and labels) whose ``audio`` callable returns exactly their segment at ``sample_rate``.

Target labels: reference 0's labels, plus ``ref_<label>`` = the references' labels comma-joined in order
(``num_events`` is set to the number of events in the target when the source has that column). Target keys:
``<example key>~cat`` / ``<example key>~mix``.

``caption_fn`` / ``caption_prob``: with probability ``caption_prob`` (seeded by key) the references' captions are
replaced by ``caption_fn(reference labels)`` in the target caption (e.g. the embedded set's
:func:`tta_jax.data.embedded.neutral_caption`, which names no instrument), so that only the reference audio says
what each event sounds like; the overlay's background keeps its caption.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Callable, Sequence

import numpy as np

from data_pipeline.references import _ref, _seed
from data_pipeline.sources import AudioConfig, BadExample, Example, check_caption, prepare_audio
from tta_jax.audio import io as audio_io

PEAK = 0.99          # overlay mixes are scaled down to this peak when they would exceed it
_MARGIN_S = 0.25     # decoded past a segment's end so that resampling does not see an edge inside it


# --------------------------------------------------------------------------------------------- helpers
def _segment_loader(src: Example, seconds: float, sample_rate: int) -> Callable[[], np.ndarray]:
    """A zero-argument callable -> float32 [round(seconds * sample_rate)]: the first `seconds` of `src` (mono,
    resampled, zero-padded, levels kept). Problems raise AudioError naming `src`."""
    cfg = AudioConfig(sample_rate=int(sample_rate), max_seconds=float(seconds) + _MARGIN_S,
                      crop_seconds=float(seconds), crop="start", normalize=None)

    def load() -> np.ndarray:
        try:
            return prepare_audio(src, cfg)[0]
        except BadExample as e:
            raise audio_io.AudioError(f"reference {src.path or src.key}: {e.reason}") from None

    return load


def _duration(ex: Example) -> float | None:
    """Seconds of audio when known without decoding (an array, or a file header); None otherwise."""
    if ex.audio is not None:
        if callable(ex.audio) or not ex.sample_rate:
            return None
        return len(np.asarray(ex.audio)) / float(ex.sample_rate)
    try:
        import soundfile as sf

        return float(sf.info(ex.path).duration)
    except Exception:  # noqa: BLE001 - unreadable: decoding reports it later
        return None


def _clause(text: str, first: bool) -> str:
    """A caption as part of a sentence: no final punctuation; a leading capital lowered unless it is an acronym."""
    text = " ".join(str(text).split()).rstrip(" .!;,")
    if first or not text:
        return text[:1].upper() + text[1:]
    word = text.split()[0]
    if word == "I" or (len(word) > 1 and word.isupper()):
        return text
    return text[:1].lower() + text[1:]


def _and_list(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def concat_caption(captions: Sequence[str]) -> str:
    """["A dog barks.", "A cat meows."] -> "A dog barks, then a cat meows." """
    return ", then ".join(_clause(c, j == 0) for j, c in enumerate(captions)) + "."


def overlay_caption(background: str, captions: Sequence[str]) -> str:
    """("Rain falls.", ["A dog barks.", "A cat meows."]) -> "Rain falls, with a dog barks and a cat meows." """
    return f"{_clause(background, True)}, with {_and_list([_clause(c, False) for c in captions])}."


def _check_args(count: int, segment_seconds: float, sample_rate: int, caption_fn, caption_prob: float) -> None:
    if count < 1:
        raise ValueError(f"count={count}: expected at least one reference per target")
    if not segment_seconds > 0:
        raise ValueError(f"segment_seconds={segment_seconds}: expected a positive length")
    if int(sample_rate) <= 0:
        raise ValueError(f"sample_rate={sample_rate}: expected a positive rate")
    if not 0.0 <= caption_prob <= 1.0:
        raise ValueError(f"caption_prob={caption_prob}: expected a probability in [0, 1]")
    if caption_prob > 0 and caption_fn is None:
        raise ValueError("caption_prob > 0 needs caption_fn")


def _eligible(examples: Sequence[Example], label: str, min_seconds: float) -> tuple[list[int], dict, dict]:
    """-> (indices of eligible clips, {index: caption}, report counts of the rest)."""
    report = {"eligible": 0, "no_label": 0, "two_events": 0, "no_caption": 0, "too_short": 0}
    usable, caps = [], {}
    for i, ex in enumerate(examples):
        if not str(ex.labels.get(label, "") or ""):
            report["no_label"] += 1
            continue
        if ex.labels.get("2_" + label):
            report["two_events"] += 1
            continue
        try:
            caps[i] = check_caption(ex)
        except BadExample:
            report["no_caption"] += 1
            continue
        if min_seconds > 0:
            d = _duration(ex)
            if d is not None and d < min_seconds:
                report["too_short"] += 1
                continue
        usable.append(i)
    report["eligible"] = len(usable)
    return usable, caps, report


def _draw_refs(examples: Sequence[Example], i: int, by_label: dict[str, list[int]], label: str, count: int,
               rng: np.random.Generator) -> list[int] | None:
    """Reference indices [i, r1, .., r_{K-1}] with K distinct labels (None: too few labels in the split).
    `by_label`: label -> clip indices of the split, each list sorted by key."""
    own = str(examples[i].labels[label])
    others = sorted(v for v in by_label if v != own)
    if len(others) < count - 1:
        return None
    picks = [others[p] for p in rng.choice(len(others), size=count - 1, replace=False)] if count > 1 else []
    return [i] + [by_label[v][int(rng.integers(len(by_label[v])))] for v in picks]


def _groups(examples: Sequence[Example], idx: Sequence[int], label: str) -> dict[str, dict[str, list[int]]]:
    """split -> label -> indices (sorted by key: draws do not depend on the input order)."""
    g: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i in sorted(idx, key=lambda j: examples[j].key):
        g[examples[i].split][str(examples[i].labels[label])].append(i)
    return g


def _ref_examples(target_key: str, split: str, srcs: Sequence[Example], seconds: float,
                  sample_rate: int) -> tuple[Example, ...]:
    stub = Example(key=target_key, caption=None, split=split)
    return tuple(dataclasses.replace(_ref(stub, s, j), path=None, audio=_segment_loader(s, seconds, sample_rate),
                                     sample_rate=int(sample_rate)) for j, s in enumerate(srcs))


def _ref_captions(srcs: Sequence[Example], caps: dict, picks: Sequence[int], key: str, salt: str,
                  caption_fn, caption_prob: float) -> list[str]:
    if caption_prob > 0 and np.random.default_rng(_seed(key, salt)).uniform() < caption_prob:
        return [caption_fn(dict(s.labels)) for s in srcs]
    return [caps[p] for p in picks]


def _target_labels(src0: Example, label: str, ref_labels: Sequence[str], num_events: int) -> dict[str, str]:
    labels = dict(src0.labels)
    if "num_events" in labels:
        labels["num_events"] = str(num_events)
    labels[label] = ref_labels[0]
    labels[f"ref_{label}"] = ",".join(ref_labels)
    return labels


# ------------------------------------------------------------------------------------------ builders
def concatenate_targets(examples: Sequence[Example], *, label: str, count: int, segment_seconds: float,
                        sample_rate: int, seed: int = 0, caption_fn: Callable[[dict], str] | None = None,
                        caption_prob: float = 0.0, min_seconds: float = 0.0) -> tuple[list[Example], dict]:
    """Customized-Concatenation: one target per eligible example, audio [count * n] = its K reference segments
    in order (n = round(segment_seconds * sample_rate)).

    -> (targets, report {"kept", "eligible", "no_label", "two_events", "no_caption", "too_short",
    "too_few_labels"}); "too_short" counts clips shorter than ``min_seconds`` (0: none left out, short clips are
    zero-padded); "too_few_labels": eligible clips whose split has fewer than count - 1 other labels.
    """
    _check_args(count, segment_seconds, sample_rate, caption_fn, caption_prob)
    usable, caps, report = _eligible(examples, label, min_seconds)
    report = {"kept": 0, **report, "too_few_labels": 0}
    groups = _groups(examples, usable, label)
    out = []
    for i in usable:
        ex = examples[i]
        rng = np.random.default_rng(_seed(ex.key, f"cat{seed}"))
        picks = _draw_refs(examples, i, groups[ex.split], label, count, rng)
        if picks is None:
            report["too_few_labels"] += 1
            continue
        srcs = [examples[p] for p in picks]
        key = f"{ex.key}~cat"
        refs = _ref_examples(key, ex.split, srcs, segment_seconds, sample_rate)
        ref_caps = _ref_captions(srcs, caps, picks, ex.key, f"catcap{seed}", caption_fn, caption_prob)

        def audio(refs=refs) -> np.ndarray:
            """float32 [count * n]: the reference segments one after the other."""
            return np.concatenate([r.audio() for r in refs]).astype(np.float32)

        out.append(Example(key=key, caption=concat_caption(ref_caps), split=ex.split, audio=audio,
                           sample_rate=int(sample_rate), refs=refs,
                           labels=_target_labels(ex, label, [str(s.labels[label]) for s in srcs], count)))
        report["kept"] += 1
    return out, report


def overlay_targets(examples: Sequence[Example], *, label: str, count: int, segment_seconds: float,
                    target_seconds: float, sample_rate: int, seed: int = 0, background_gain: float = 0.5,
                    caption_fn: Callable[[dict], str] | None = None, caption_prob: float = 0.0,
                    min_seconds: float = 0.0) -> tuple[list[Example], dict]:
    """Customized-Overlay: one target per eligible example, audio [round(target_seconds * sample_rate)] =
    background_gain * background + the K reference segments at seeded offsets, scaled to stay within [-1, 1].

    -> (targets, report {"kept", "eligible", "no_label", "two_events", "no_caption", "too_short",
    "too_few_labels", "no_background"}); "no_background": no clip of the split (with a caption and ``label``
    set) has events other than the K references'.
    """
    _check_args(count, segment_seconds, sample_rate, caption_fn, caption_prob)
    if not target_seconds >= segment_seconds:
        raise ValueError(f"target_seconds={target_seconds} is shorter than segment_seconds={segment_seconds}: "
                         "each reference must fit inside the target")
    usable, caps, report = _eligible(examples, label, min_seconds)
    report = {"kept": 0, **report, "too_few_labels": 0, "no_background": 0}
    groups = _groups(examples, usable, label)
    backgrounds: dict[str, list[tuple[int, str, set]]] = defaultdict(list)  # split -> (index, caption, events)
    for i in sorted(range(len(examples)), key=lambda j: examples[j].key):
        ex = examples[i]
        events = {str(ex.labels.get(k, "") or "") for k in (label, "2_" + label)} - {""}
        if not str(ex.labels.get(label, "") or ""):
            continue
        try:
            backgrounds[ex.split].append((i, check_caption(ex), events))
        except BadExample:
            continue
    n = int(round(segment_seconds * sample_rate))
    total = int(round(target_seconds * sample_rate))
    out = []
    for i in usable:
        ex = examples[i]
        rng = np.random.default_rng(_seed(ex.key, f"mix{seed}"))
        picks = _draw_refs(examples, i, groups[ex.split], label, count, rng)
        if picks is None:
            report["too_few_labels"] += 1
            continue
        srcs = [examples[p] for p in picks]
        ref_labels = [str(s.labels[label]) for s in srcs]
        pool = [b for b in backgrounds[ex.split] if not b[2] & set(ref_labels)]
        if not pool:
            report["no_background"] += 1
            continue
        b_i, b_cap, b_events = pool[int(rng.integers(len(pool)))]
        offsets = [int(o) for o in rng.integers(0, total - n + 1, size=count)]
        key = f"{ex.key}~mix"
        refs = _ref_examples(key, ex.split, srcs, segment_seconds, sample_rate)
        ref_caps = _ref_captions(srcs, caps, picks, ex.key, f"mixcap{seed}", caption_fn, caption_prob)
        bg = examples[b_i]
        load_bg = _segment_loader(bg, target_seconds, sample_rate)

        def audio(refs=refs, offsets=offsets, load_bg=load_bg) -> np.ndarray:
            """float32 [total]: gain * background + references at their offsets, peak <= PEAK."""
            mix = np.float32(background_gain) * load_bg()
            for r, o in zip(refs, offsets):
                mix[o:o + n] += r.audio()
            peak = float(np.max(np.abs(mix))) if mix.size else 0.0
            return (mix / np.float32(peak / PEAK) if peak > PEAK else mix).astype(np.float32)

        labels = _target_labels(ex, label, ref_labels, count + len(b_events))
        labels["_offsets"] = ",".join(f"{o / sample_rate:.6f}" for o in offsets)
        labels["_background"] = bg.key
        out.append(Example(key=key, caption=overlay_caption(b_cap, ref_caps), split=ex.split, audio=audio,
                           sample_rate=int(sample_rate), refs=refs, labels=labels))
        report["kept"] += 1
    return out, report


__all__ = ["concatenate_targets", "overlay_targets", "concat_caption", "overlay_caption", "PEAK"]
