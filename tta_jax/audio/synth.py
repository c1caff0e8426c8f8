"""Real sampled-instrument audio without any download: MIDI-style note sequences rendered with
``tinysoundfont`` from the General MIDI SoundFont that ships inside ``pretty_midi`` (TimGM6mb.sf2).

Used as "real recordings" for vocoder/codec round-trip tests and demos.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def soundfont_path() -> str:
    """Path of pretty_midi's bundled TimGM6mb.sf2."""
    import importlib.util

    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pretty_midi is not installed; it ships the TimGM6mb.sf2 SoundFont")
    path = os.path.join(list(spec.submodule_search_locations)[0], "TimGM6mb.sf2")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: SoundFont missing from the pretty_midi package")
    return path


def _synth(sample_rate: int):
    import tinysoundfont

    s = tinysoundfont.Synth(samplerate=sample_rate)
    return s, s.sfload(soundfont_path())


def _block(s, n: int) -> np.ndarray:
    return np.frombuffer(s.generate(n), np.float32).reshape(-1, 2).mean(1).copy()


def _finish(x: np.ndarray, peak: float) -> np.ndarray:
    return (x / (np.abs(x).max() + 1e-8) * peak).astype(np.float32)


def render_band(sample_rate: int = 22050, seconds: float = 3.0, *, pad_program: int = 0,
                peak: float = 0.9) -> np.ndarray:
    """A drum kit + finger bass + chord pad (GM program ``pad_program``, default piano) groove, [T] float32."""
    s, sfid = _synth(sample_rate)
    s.program_select(9, sfid, 128, 0, is_drums=True)
    s.program_select(0, sfid, 0, 33)
    s.program_select(1, sfid, 0, pad_program)
    step = int(0.125 * sample_rate)
    drums = {0: [36, 42], 2: [42], 4: [38, 42], 6: [42], 7: [36]}
    bass = [40, 40, 43, 45]
    chords = [[64, 67, 71], [62, 65, 69]]
    out = []
    for i in range(max(1, int(round(seconds / 0.125)))):
        if i % 8 == 0:
            for k in range(128):
                s.noteoff(1, k)
            for n in chords[(i // 16) % 2]:
                s.noteon(1, n, 70)
        if i % 2 == 0:
            s.noteoff(0, bass[(i // 2 - 1) % 4])
            s.noteon(0, bass[(i // 2) % 4], 100)
        for n in drums.get(i % 8, []):
            s.noteon(9, n, 110)
        out.append(_block(s, step))
    return _finish(np.concatenate(out), peak)


def render_melody(program: int = 0, notes: Sequence[int] = (60, 64, 67, 72, 69, 65, 62, 59),
                  sample_rate: int = 22050, note_seconds: float = 0.25, *, drums: bool = False,
                  peak: float = 0.9) -> np.ndarray:
    """One instrument (GM ``program``, or the drum kit) playing ``notes`` in sequence, [T] float32."""
    s, sfid = _synth(sample_rate)
    s.program_select(0, sfid, 128 if drums else 0, 0 if drums else program, is_drums=drums)
    out = []
    for n in notes:
        s.noteon(0, int(n), 100)
        out.append(_block(s, int(note_seconds * sample_rate)))
        s.noteoff(0, int(n))
    return _finish(np.concatenate(out), peak)
