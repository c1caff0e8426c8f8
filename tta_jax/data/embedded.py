"""Embedded demo dataset: seeded, captioned General-MIDI clips rendered with tinysoundfont.

Every clip is described by a *spec* (pure data, see `clip_spec`): one or two events, each an
instrument (one of the 16 GM families, or the channel-10 drum kit), a pattern (single note, repeated
notes, arpeggio, chord, short melody; drum beat, snare roll, tom fill for the kit), a pitch register
(low/mid/high), dynamics (soft/loud) and tempo (slow/fast). The caption is a sentence built from the
spec with one of several templates; the spec's facts are kept as label columns.

Determinism: the spec of clip `i` depends only on `(seed, i)` (its own `np.random.default_rng`), and
each clip is rendered by a fresh `tinysoundfont.Synth`, so the output is byte-identical for the same
seed whatever the number of worker processes or their scheduling.

Export (`export_embedded`) writes `<out>/audio/clip_00000.wav` (16-bit PCM) and `<out>/metadata.csv`
(path, caption, split + label columns): the same layout `data_pipeline.sources.folder_source` reads.

Shapes: rendered audio is float32 [T] mono, T = round(duration * sample_rate).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterator, Sequence

import numpy as np

from tta_jax.audio.synth import soundfont_path

FAMILIES: tuple[str, ...] = (
    "piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
    "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive",
    "sound effects",
)
DRUMS = "drums"
SOURCES: tuple[str, ...] = FAMILIES + (DRUMS,)  # 17 sound sources
MELODIC_PATTERNS = ("single note", "repeated notes", "arpeggio", "chord", "short melody")
DRUM_PATTERNS = ("drum beat", "snare roll", "tom fill")
REGISTERS = ("low", "mid", "high")
DYNAMICS = ("soft", "loud")
TEMPI = ("slow", "fast")

_REGISTER_ROOT = {"low": (36, 47), "mid": (55, 66), "high": (72, 83)}
_VELOCITY = {"soft": (35, 55), "loud": (100, 124)}
_BPM = {"slow": (66, 84), "fast": (140, 168)}
_PATTERN_NP = {
    "single note": "a single note", "repeated notes": "repeated notes", "arpeggio": "an arpeggio",
    "chord": "a chord", "short melody": "a short melody", "drum beat": "a drum beat",
    "snare roll": "a snare roll", "tom fill": "a tom fill",
}
_MAJOR = (0, 2, 4, 5, 7, 9, 11, 12)
KICK, SNARE, HAT, OPEN_HAT, CRASH = 36, 38, 42, 46, 49
TOMS = (50, 48, 47, 45, 43, 41)


def program_name(program: int) -> str:
    """GM program name (0-based program), e.g. 0 -> 'Acoustic Grand Piano'."""
    import pretty_midi

    return pretty_midi.program_to_instrument_name(int(program))


# ----------------------------------------------------------------------------------------- specs
def _event_spec(rng: np.random.Generator, source: str) -> dict[str, Any]:
    if source == DRUMS:
        return {
            "family": DRUMS, "program": -1, "instrument": "drum kit",
            "pattern": DRUM_PATTERNS[rng.integers(len(DRUM_PATTERNS))], "register": "none",
            "dynamics": DYNAMICS[rng.integers(2)], "tempo": TEMPI[rng.integers(2)],
        }
    fam = FAMILIES.index(source)
    program = fam * 8 + int(rng.integers(8))
    return {
        "family": source, "program": program, "instrument": program_name(program).lower(),
        "pattern": MELODIC_PATTERNS[rng.integers(len(MELODIC_PATTERNS))],
        "register": REGISTERS[rng.integers(3)], "dynamics": DYNAMICS[rng.integers(2)],
        "tempo": TEMPI[rng.integers(2)],
    }


def clip_spec(index: int, seed: int = 0, two_event_prob: float = 0.25) -> dict[str, Any]:
    """The spec of clip `index`: {'index', 'events': [event, ...], 'template', 'rng_seed'}.

    Clip i's first event uses source SOURCES[i % 17], so any 17 consecutive clips cover all 16 GM
    families and the drum kit. Pure function of (index, seed).
    """
    rng = np.random.default_rng([int(seed), int(index), 0x7A])
    events = [_event_spec(rng, SOURCES[index % len(SOURCES)])]
    if rng.random() < two_event_prob:
        other = SOURCES[int(rng.integers(len(SOURCES)))]
        events.append(_event_spec(rng, other))
    return {
        "index": int(index), "events": events, "template": int(rng.integers(4)),
        "rng_seed": int(rng.integers(2**31 - 1)),
    }


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _event_phrase(ev: dict[str, Any]) -> str:
    if ev["family"] == DRUMS:
        return f"a {ev['dynamics']} {ev['tempo']} {ev['pattern']} on a drum kit"
    return (f"{_PATTERN_NP[ev['pattern']]} on a {ev['dynamics']} {ev['instrument']} "
            f"in a {ev['register']} register at a {ev['tempo']} tempo")


def caption_for(spec: dict[str, Any]) -> str:
    """A natural sentence stating every fact of the spec (several templates)."""
    evs = spec["events"]
    if len(evs) == 2:
        a, b = (_event_phrase(e) for e in evs)
        if spec["template"] % 2 == 0:
            return f"{a[0].upper()}{a[1:]}, followed by {b}."
        return f"First {a}, then {b}."
    ev = evs[0]
    t = spec["template"]
    if ev["family"] == DRUMS:
        pat = _PATTERN_NP[ev["pattern"]]
        if t == 0:
            return f"A {ev['dynamics']} {ev['tempo']} {ev['pattern']} played on a drum kit."
        if t == 1:
            return f"Someone plays {pat} on a drum kit, {ev['dynamics']} and {ev['tempo']}."
        if t == 2:
            return f"A drum kit plays {pat} at a {ev['tempo']} tempo, {ev['dynamics']}."
        return f"{pat[0].upper()}{pat[1:]} on a drum kit, {ev['tempo']} and {ev['dynamics']}."
    pat = _PATTERN_NP[ev["pattern"]]
    fam = ev["family"]
    if t == 0:
        return (f"A {ev['dynamics']} {ev['instrument']} plays {pat} in a {ev['register']} "
                f"register at a {ev['tempo']} tempo.")
    if t == 1:
        return (f"{pat[0].upper()}{pat[1:]} played {ev['dynamics']} and {ev['tempo']} on "
                f"{_a(ev['instrument'])} ({fam}), {ev['register']} register.")
    if t == 2:
        return (f"Someone plays {pat} on {_a(ev['instrument'])}, {_a(fam)} instrument, in a "
                f"{ev['register']} register; the playing is {ev['dynamics']} and {ev['tempo']}.")
    return (f"The sound of {_a(ev['instrument'])} playing {pat}, {ev['register']} register, "
            f"{ev['dynamics']}, {ev['tempo']} tempo.")


def neutral_caption(labels: dict[str, str]) -> str:
    """A caption of a single-event clip's labels that names no instrument or family (how it is played:
    pattern, register, dynamics, tempo), e.g. "A short melody in a high register, soft and slow." Reference-
    style data (SERST) uses it so that only the reference audio says which instrument to play."""
    if labels.get("family") == DRUMS:
        return f"A {labels['dynamics']} rhythm at a {labels['tempo']} tempo."
    pat = _PATTERN_NP.get(labels.get("pattern", ""), "a sound")
    return f"{pat[0].upper()}{pat[1:]} in a {labels['register']} register, {labels['dynamics']} and {labels['tempo']}."


def labels_for(spec: dict[str, Any]) -> dict[str, str]:
    """Flat label columns: family, program, instrument, pattern, register, dynamics, tempo
    (event 1) and the same with a `2_` prefix for event 2 ('' for single-event clips)."""
    out: dict[str, str] = {"num_events": str(len(spec["events"]))}
    keys = ("family", "program", "instrument", "pattern", "register", "dynamics", "tempo")
    for j, prefix in enumerate(("", "2_")):
        ev = spec["events"][j] if j < len(spec["events"]) else None
        for k in keys:
            out[prefix + k] = "" if ev is None else str(ev[k])
    return out


# ------------------------------------------------------------------------------------- rendering
def _event_notes(ev: dict, t0: float, t1: float, rng: np.random.Generator) -> list[tuple]:
    """(onset_s, offset_s, key, velocity) of an event laid out in [t0, t1)."""
    lo, hi = _VELOCITY[ev["dynamics"]]
    beat = 60.0 / rng.uniform(*_BPM[ev["tempo"]])
    vel = lambda: int(rng.integers(lo, hi + 1))  # noqa: E731
    notes: list[tuple] = []
    if ev["family"] == DRUMS:
        if ev["pattern"] == "drum beat":
            step, k = beat / 2, 0
            while t0 + k * step < t1 - 0.05:
                t = t0 + k * step
                notes.append((t, t + step, HAT, vel()))
                if k % 4 == 0:
                    notes.append((t, t + step, KICK, vel()))
                if k % 4 == 2:
                    notes.append((t, t + step, SNARE, vel()))
                k += 1
            notes.append((t0, t0 + beat, CRASH, vel()))
        elif ev["pattern"] == "snare roll":
            step, k = beat / 6, 0
            while t0 + k * step < t1 - 0.05:
                notes.append((t0 + k * step, t0 + (k + 1) * step, SNARE, vel()))
                k += 1
        else:  # tom fill
            step, k = beat / 4, 0
            while t0 + k * step < t1 - 0.05:
                notes.append((t0 + k * step, t0 + (k + 1) * step, TOMS[(k // 2) % len(TOMS)], vel()))
                k += 1
        return notes
    root = int(rng.integers(*_REGISTER_ROOT[ev["register"]]))
    third = 4 if rng.random() < 0.5 else 3
    pat = ev["pattern"]
    if pat == "single note":
        notes.append((t0, min(t1, t0 + 2.5 * beat), root, vel()))
    elif pat == "repeated notes":
        step, k = beat / 2, 0
        while t0 + k * step < t1 - 0.05:
            notes.append((t0 + k * step, t0 + (k + 0.8) * step, root, vel()))
            k += 1
    elif pat == "arpeggio":
        seq = (0, third, 7, 12, 7, third)
        step, k = beat / 2, 0
        while t0 + k * step < t1 - 0.05:
            notes.append((t0 + k * step, t0 + (k + 0.9) * step, root + seq[k % 6], vel()))
            k += 1
    elif pat == "chord":
        dur = min(t1 - t0, 3 * beat)
        v = vel()
        for iv in (0, third, 7, 12):
            notes.append((t0, t0 + dur, root + iv, v))
    else:  # short melody: random walk on the major scale
        t, deg = t0, int(rng.integers(0, 5))
        while t < t1 - 0.05:
            d = beat * (0.5 if rng.random() < 0.6 else 1.0)
            notes.append((t, min(t1, t + 0.9 * d), root + _MAJOR[deg], vel()))
            deg = int(np.clip(deg + rng.integers(-2, 3), 0, len(_MAJOR) - 1))
            t += d
    return [(a, min(b, t1), int(np.clip(key, 0, 127)), v) for a, b, key, v in notes]


def render_clip(spec: dict[str, Any], sample_rate: int = 22050, duration: float = 4.0,
                soundfont: bytes | str | None = None, gain: float = 0.6) -> np.ndarray:
    """Render a spec to float32 mono audio [round(duration*sample_rate)] in [-1, 1]."""
    import tinysoundfont

    n_total = int(round(duration * sample_rate))
    rng = np.random.default_rng(spec["rng_seed"])
    synth = tinysoundfont.Synth(samplerate=int(sample_rate))
    sfid = synth.sfload(soundfont if soundfont is not None else soundfont_path())
    evs = spec["events"]
    if len(evs) == 1:
        slots = [(0.05 * duration, 0.9 * duration)]
    else:
        slots = [(0.03 * duration, 0.47 * duration), (0.52 * duration, 0.95 * duration)]
    msgs: list[tuple[int, int, int, int, int]] = []  # (sample, order, chan, key, vel); vel 0 = off
    for j, (ev, (t0, t1)) in enumerate(zip(evs, slots)):
        if ev["family"] == DRUMS:
            chan = 9
            synth.program_select(chan, sfid, 128, 0, True)
        else:
            chan = j
            synth.program_select(chan, sfid, 0, int(ev["program"]))
        for on, off, key, vel in _event_notes(ev, t0, t1, rng):
            msgs.append((int(round(on * sample_rate)), 1, chan, key, vel))
            msgs.append((int(round(off * sample_rate)), 0, chan, key, 0))
    msgs.sort()
    chunks, pos = [], 0
    for at, _, chan, key, vel in msgs:
        at = min(at, n_total)
        if at > pos:
            chunks.append(np.frombuffer(synth.generate(at - pos), dtype=np.float32).copy())
            pos = at
        if vel > 0:
            synth.noteon(chan, key, vel)
        else:
            synth.noteoff(chan, key)
    if pos < n_total:
        chunks.append(np.frombuffer(synth.generate(n_total - pos), dtype=np.float32).copy())
    stereo = np.concatenate(chunks).reshape(-1, 2)
    return np.clip(stereo.mean(axis=1) * gain, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------- splits
def split_of(index: int, num_clips: int, seed: int = 0, valid_frac: float = 0.05,
             test_frac: float = 0.05) -> str:
    """Deterministic train/valid/test assignment by a seeded permutation of clip indices."""
    return _split_table(num_clips, seed, valid_frac, test_frac)[index]


def _split_table(num_clips: int, seed: int, valid_frac: float, test_frac: float) -> list[str]:
    perm = np.random.default_rng([int(seed), 0x5B]).permutation(num_clips)
    n_valid = max(1, int(round(valid_frac * num_clips))) if num_clips >= 20 else 0
    n_test = max(1, int(round(test_frac * num_clips))) if num_clips >= 20 else 0
    out = ["train"] * num_clips
    for i in perm[:n_valid]:
        out[int(i)] = "valid"
    for i in perm[n_valid:n_valid + n_test]:
        out[int(i)] = "test"
    return out


@dataclasses.dataclass(frozen=True)
class EmbeddedConfig:
    num_clips: int = 3000
    seed: int = 0
    sample_rate: int = 22050
    duration: float = 4.0
    two_event_prob: float = 0.25
    valid_frac: float = 0.05
    test_frac: float = 0.05


def iter_embedded(cfg: EmbeddedConfig, indices: Sequence[int] | None = None,
                  num_workers: int = 1) -> Iterator[tuple[dict, np.ndarray]]:
    """Yield (row, audio) in index order; row has key, caption, split and label columns."""
    indices = list(range(cfg.num_clips)) if indices is None else list(indices)
    splits = _split_table(cfg.num_clips, cfg.seed, cfg.valid_frac, cfg.test_frac)
    with open(soundfont_path(), "rb") as f:
        sf = f.read()
    specs = [clip_spec(i, cfg.seed, cfg.two_event_prob) for i in indices]

    def row(spec):
        return {"key": f"clip_{spec['index']:05d}", "caption": caption_for(spec),
                "split": splits[spec["index"]], **labels_for(spec)}

    if num_workers <= 1:
        for spec in specs:
            yield row(spec), render_clip(spec, cfg.sample_rate, cfg.duration, sf)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a (possibly) multithreaded jax parent
    with ProcessPoolExecutor(num_workers, mp_context=ctx) as ex:  # map() keeps order
        audios = ex.map(_render_worker, [(s, cfg.sample_rate, cfg.duration) for s in specs],
                        chunksize=16)
        for spec, audio in zip(specs, audios):
            yield row(spec), audio


def held_out_clips(num_clips: int, seed: int, per_family: int, sample_rate: int = 16000
                   ) -> list[tuple[dict, np.ndarray]]:
    """-> [(row, audio [S] at ``sample_rate``)]: ``per_family`` held-out single-event clips per source (test split
    first, then valid), sources in :data:`tta_jax.data.embedded.SOURCES` order."""
    cfg = EmbeddedConfig(num_clips=num_clips, seed=seed, sample_rate=sample_rate)
    pools = {f: {"test": [], "valid": []} for f in SOURCES}
    for i in range(num_clips):
        split = split_of(i, num_clips, seed)
        if split in ("test", "valid"):
            spec = clip_spec(i, seed, cfg.two_event_prob)
            if len(spec["events"]) == 1:
                pools[spec["events"][0]["family"]][split].append(i)
    chosen = []
    for f in SOURCES:
        picks = (pools[f]["test"] + pools[f]["valid"])[:per_family]
        if len(picks) < per_family:
            logging.getLogger(__name__).warning("%s: only %d held-out clips", f, len(picks))
        chosen += picks
    return list(iter_embedded(cfg, chosen, num_workers=2))


def same_family_groups(families: Sequence[str], k: int) -> list[list[int]]:
    """``families`` [N] (e.g. of :func:`held_out_clips`) -> for each clip i the indices of K clips of its family: i
    and the next K - 1 of the same family, cyclically (several references of one source per sample)."""
    groups = []
    for i, f in enumerate(families):
        same = [j for j, g in enumerate(families) if g == f]
        if not 1 <= k <= len(same):
            raise ValueError(f"{k} references per clip: {f} has {len(same)} clips")
        at = same.index(i)
        groups.append([same[(at + n) % len(same)] for n in range(k)])
    return groups


_WORKER_SF: bytes | None = None


def _render_worker(args) -> np.ndarray:
    global _WORKER_SF
    if _WORKER_SF is None:
        with open(soundfont_path(), "rb") as f:
            _WORKER_SF = f.read()
    spec, sr, dur = args
    return render_clip(spec, sr, dur, _WORKER_SF)


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV bytes (deterministic)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, int(sample_rate), format="WAV", subtype="PCM_16")
    return buf.getvalue()


def export_embedded(out_dir: str, cfg: EmbeddedConfig = EmbeddedConfig(),
                    num_workers: int = 1, progress: bool = False) -> str:
    """Write <out_dir>/audio/*.wav and <out_dir>/metadata.csv. Returns the metadata path.

    Files are written to a temp name and renamed, so an interrupted export never leaves a partial
    wav under its final name; metadata.csv is written last.
    """
    os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)
    rows = []
    it = iter_embedded(cfg, num_workers=num_workers)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=cfg.num_clips, desc="render")
    for row, audio in it:
        rel = f"audio/{row['key']}.wav"
        _atomic_write(os.path.join(out_dir, rel), wav_bytes(audio, cfg.sample_rate))
        rows.append({"path": rel, **row})
    meta = os.path.join(out_dir, "metadata.csv")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _atomic_write(meta, buf.getvalue().encode())
    return meta


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tta_jax.data.embedded OUT [--num_clips N --seed S --sample_rate SR --workers W]`."""
    import argparse
    import time

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("out")
    for k, v in dataclasses.asdict(EmbeddedConfig()).items():
        p.add_argument(f"--{k}", type=type(v), default=v)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    a = vars(p.parse_args(argv))
    out, workers = a.pop("out"), a.pop("workers")
    cfg = EmbeddedConfig(**a)
    t = time.perf_counter()
    export_embedded(out, cfg, num_workers=workers, progress=True)
    dt = time.perf_counter() - t
    print(f"rendered {cfg.num_clips} clips in {dt:.1f} s ({cfg.num_clips / dt:.1f} clips/s) -> {out}")


if __name__ == "__main__":
    main()
