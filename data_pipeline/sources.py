"""Real data sources -> `Example`s, and the audio preparation every source shares.

Layouts (all read from local disk; nothing is downloaded):
  * `folder_source(root, captions)`: audio files (wav/flac/ogg/mp3) + a CSV or JSONL caption file
    with columns `path, caption[, split, ...]` (paths relative to `root`; extra columns are kept as
    labels). The embedded demo export (`embedded.export_embedded`) is such a folder.
  * `audiocaps_source(csv, audio_dir)`: AudioCaps csv `audiocap_id, youtube_id, start_time,
    caption`; audio looked up as `<youtube_id>.*`, `Y<youtube_id>.*`, `<audiocap_id>.*` or
    `<youtube_id>_<start_time>.*` in `audio_dir`.
  * `clotho_source(csv, audio_dir)`: Clotho captions csv `file_name, caption_1..caption_5`; one
    example per caption (key `<file_name>#<k>`) or only the first (`all_captions=False`).
  * `wavcaps_source(json, audio_dir)`: WavCaps json `{"data": [{"id"|"audio", "caption", ...}]}`.
  * `tfds_source(name, manual_dir)`: a tensorflow-datasets builder (extra `tfds`; imported lazily).

`prepare_audio` decodes, mono-mixes, resamples to the codec's rate, keeps the first `max_seconds`,
crops `crop_seconds` (random with a per-example seed, or from the start), zero-pads short clips and
peak-normalises. Any problem raises `BadExample(key, reason)`; precompute records the reason and
goes on (see precompute.py). Fixes (resampling, mono mix) are not errors.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import io
import json
import os
import re
import struct
from typing import Any, Iterable, Iterator

import numpy as np

from tta_jax.audio import io as audio_io

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3")


class BadExample(ValueError):
    """An example that cannot be used; `key` names it and `reason` says why."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


@dataclasses.dataclass
class Example:
    """One captioned clip. Either `path` (a file) or `audio` [T] float + `sample_rate` is set."""
    key: str
    caption: Any
    path: str | None = None
    split: str = "train"
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    refs: tuple = ()        # reference clips (Examples) conditioning this one (SERST, DreamAudio)


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 22050
    max_seconds: float = 30.0      # decode at most the first 30 s
    crop_seconds: float = 10.0     # fixed output length (zero-padded if shorter)
    crop: str = "random"           # 'random' (seeded per example key) | 'start'
    normalize: float | None = 0.95  # peak; None keeps levels
    seed: int = 0


# ------------------------------------------------------------------------------------- decoding
def _wav_truncation(path: str) -> str | None:
    """For RIFF/WAVE files: a reason string if the data chunk is shorter than its header says."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                cid, clen = struct.unpack("<4sI", f.read(8))
                if cid == b"data":
                    have = size - pos - 8
                    if clen != 0xFFFFFFFF and clen > have:
                        return f"truncated file: header declares {clen} data bytes, only {have} present"
                    return None
                pos += 8 + clen + (clen & 1)
    except OSError:
        return None
    return None


def decode_audio(path: str, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode (at most the first `max_seconds` of) a file -> (float32 [T, C], sample rate).

    Raises audio_io.AudioError naming the file and the problem.
    """
    if not os.path.exists(path):
        raise audio_io.AudioError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise audio_io.AudioError(f"{path}: file is empty (0 bytes)")
    trunc = _wav_truncation(path)
    if trunc:
        raise audio_io.AudioError(f"{path}: {trunc}")
    try:
        import soundfile as sf

        with sf.SoundFile(path) as f:
            sr = f.samplerate
            n = -1 if max_seconds is None else int(np.ceil(max_seconds * sr))
            audio = f.read(frames=n, dtype="float32", always_2d=True)
        return audio, int(sr)
    except Exception as e:  # noqa: BLE001 - fall back to librosa/audioread
        first = e
    try:
        import warnings

        import librosa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y, sr = librosa.load(path, sr=None, mono=False, duration=max_seconds)
        y = np.asarray(y, np.float32)
        return (y[:, None] if y.ndim == 1 else y.T), int(sr)
    except Exception as e:  # noqa: BLE001
        raise audio_io.AudioError(
            f"{path}: could not decode audio (corrupt or not audio): soundfile: {first}; "
            f"librosa: {type(e).__name__}: {e}") from None


def _key_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")


def prepare_audio(ex: Example, cfg: AudioConfig) -> tuple[np.ndarray, int]:
    """-> (audio float32 [round(crop_seconds * sample_rate)], number of valid samples).

    ``ex.audio`` may be an array [T] / [T, C] or a zero-argument callable returning one (decoded only now, e.g. the
    targets of data_pipeline.customized); an AudioError it raises becomes BadExample like a decoding error.
    Raises BadExample(key, reason) for anything unusable (never for fixable rate/channel issues).
    """
    try:
        if ex.audio is not None:
            raw = np.asarray(ex.audio() if callable(ex.audio) else ex.audio, np.float32)
            raw = raw[:, None] if raw.ndim == 1 else raw
            sr = int(ex.sample_rate or cfg.sample_rate)
            if cfg.max_seconds is not None:
                raw = raw[: int(np.ceil(cfg.max_seconds * sr))]
        else:
            raw, sr = decode_audio(ex.path, cfg.max_seconds)
        audio_io.check_audio(raw, ex.path or ex.key)
        if raw.shape[0] < 2:
            raise audio_io.AudioError(f"{ex.path or ex.key}: audio too short ({raw.shape[0]} samples)")
        mono = audio_io.to_mono(raw)
        audio = audio_io.resample(mono, sr, cfg.sample_rate) if sr != cfg.sample_rate else mono
    except audio_io.AudioError as e:
        msg = str(e)
        prefix = f"{ex.path or ex.key}: "
        raise BadExample(ex.key, msg[len(prefix):] if msg.startswith(prefix) else msg) from None
    n = int(round(cfg.crop_seconds * cfg.sample_rate))
    if len(audio) > n:
        if cfg.crop == "random":
            start = int(np.random.default_rng(_key_seed(cfg.seed, ex.key)).integers(len(audio) - n + 1))
        elif cfg.crop == "start":
            start = 0
        else:
            raise ValueError(f"AudioConfig.crop must be 'random' or 'start', got {cfg.crop!r}")
        audio = audio[start:start + n]
    valid = len(audio)
    if cfg.normalize is not None:
        audio = audio_io.peak_normalize(audio, cfg.normalize)
    out = np.zeros(n, np.float32)
    out[:valid] = audio
    return out, valid


def check_caption(ex: Example) -> str:
    """The caption as a stripped string; BadExample for missing/empty/non-text captions."""
    cap = ex.caption
    if cap is None or (isinstance(cap, float) and np.isnan(cap)):
        raise BadExample(ex.key, "caption missing")
    if isinstance(cap, bytes):
        try:
            cap = cap.decode("utf-8")
        except UnicodeDecodeError:
            raise BadExample(ex.key, "caption is not valid UTF-8") from None
    if not isinstance(cap, str):
        raise BadExample(ex.key, f"caption is not text ({type(cap).__name__})")
    cap = " ".join(cap.split())
    if not cap:
        raise BadExample(ex.key, "caption is empty")
    return cap


# -------------------------------------------------------------------------------------- layouts
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, kept by "surrogateescape"


def _bad_utf8(value: str) -> str | None:
    """For text decoded with errors="surrogateescape": where its first non-UTF-8 byte is, or None."""
    m = _UNDECODABLE.search(value)
    if m is None:
        return None
    return f"byte 0x{ord(m.group()) - 0xDC00:02x} at character {m.start() + 1}"


def _utf8_row_error(path: str, line: int, row: dict) -> str | None:
    for col, v in row.items():
        for x in (v if isinstance(v, list) else [v]):
            where = _bad_utf8(x) if isinstance(x, str) else None
            if where:
                name = f"column {col!r}" if col is not None else "an extra field"
                return f"{path}:{line}: {name} is not valid UTF-8 ({where}); fix the file's encoding"
    return None


def _read_table(path: str) -> list[dict[str, Any]]:
    """Rows of a CSV (header row) or JSONL file. A row that cannot be read (broken JSON, bytes that are not
    UTF-8) becomes ``{"_error": "<file>:<line>: <reason>", "_line": line}`` in its place, so it is skipped
    with that reason and the other rows load."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # UTF-8 byte-order mark
    rows: list[dict[str, Any]] = []
    if path.endswith((".jsonl", ".json")):
        for i, bline in enumerate(raw.split(b"\n"), 1):
            try:
                line = bline.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                rows.append({"_error": f"{path}:{i}: not valid UTF-8 (byte 0x{bline[e.start]:02x} at byte "
                                       f"{e.start + 1} of the line); fix the file's encoding", "_line": i})
                continue
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                rows.append({"_error": f"{path}:{i}: unreadable JSON line ({e.msg})", "_line": i})
        return rows
    # surrogateescape keeps undecodable bytes as lone surrogates, so a bad row is found and named, not garbled
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8", errors="surrogateescape"), newline=""))
    header = reader.fieldnames or []
    bad = next((c for c in header if _bad_utf8(c)), None)
    if bad is not None:
        raise ValueError(f"{path}:1: the header is not valid UTF-8 ({_bad_utf8(bad)}); fix the file's encoding")
    last = reader.line_num
    for row in reader:
        line, last = last + 1, reader.line_num  # the row's first line
        err = _utf8_row_error(path, line, row)
        rows.append({"_error": err, "_line": line} if err else row)
    return rows


def _error_example(path: str, i: int, row: dict) -> Example:
    """The placeholder Example of an unreadable row: precompute skips it with the row's reason."""
    return Example(key=f"{os.path.basename(path)}:{row.get('_line', i + 2)}", caption=None,
                   labels={"_error": row["_error"]})


def folder_source(root: str, captions: str | None = None) -> list[Example]:
    """A folder of audio files + captions file (`metadata.csv`/`captions.csv`/`*.jsonl`).

    Columns: path (relative to root), caption, optional split; other columns become labels.
    Audio files in `root` without a caption row are ignored (they are not examples).
    """
    if captions is None:
        for name in ("metadata.csv", "captions.csv", "metadata.jsonl", "captions.jsonl"):
            if os.path.exists(os.path.join(root, name)):
                captions = os.path.join(root, name)
                break
        else:
            raise FileNotFoundError(f"{root}: no metadata.csv/captions.csv/*.jsonl caption file")
    elif not os.path.isabs(captions) and not os.path.exists(captions):
        captions = os.path.join(root, captions)
    rows = _read_table(captions)
    out = []
    for i, row in enumerate(rows):
        if "_error" in row:
            out.append(_error_example(captions, i, row))
            continue
        if "path" not in row:
            raise ValueError(f"{captions}: row {i + 1} has no 'path' column (columns: {sorted(row)})")
        rel = str(row["path"])
        labels = {k: str(v) for k, v in row.items() if k not in ("path", "caption", "split")}
        out.append(Example(key=rel, caption=row.get("caption"), path=os.path.join(root, rel),
                           split=str(row.get("split") or "train"), labels=labels))
    return out


def _index_dir(audio_dir: str) -> dict[str, str]:
    """stem -> path for audio files under audio_dir (recursive)."""
    idx = {}
    for p in sorted(glob.glob(os.path.join(audio_dir, "**", "*"), recursive=True)):
        if p.lower().endswith(AUDIO_EXTS):
            idx.setdefault(os.path.splitext(os.path.basename(p))[0], p)
    return idx


def audiocaps_source(csv_path: str, audio_dir: str, split: str | None = None) -> list[Example]:
    """AudioCaps metadata csv (audiocap_id, youtube_id, start_time, caption) + local audio."""
    split = split or os.path.splitext(os.path.basename(csv_path))[0]
    idx = _index_dir(audio_dir)
    out = []
    for i, row in enumerate(_read_table(csv_path)):
        if "_error" in row:
            out.append(_error_example(csv_path, i, row))
            continue
        yid, aid = str(row.get("youtube_id", "")), str(row.get("audiocap_id", ""))
        st = str(row.get("start_time", ""))
        cands = [yid, "Y" + yid, aid, f"{yid}_{st}", f"Y{yid}_{st}"]
        path = next((idx[c] for c in cands if c in idx),
                    os.path.join(audio_dir, f"{yid}.wav"))  # missing -> reported at decode
        out.append(Example(key=f"audiocaps/{aid}", caption=row.get("caption"), path=path,
                           split=split, labels={"youtube_id": yid, "start_time": st}))
    return out


def clotho_source(csv_path: str, audio_dir: str, split: str | None = None,
                  all_captions: bool = True) -> list[Example]:
    """Clotho captions csv (file_name, caption_1..caption_5) + local audio dir."""
    split = split or os.path.splitext(os.path.basename(csv_path))[0].replace("clotho_captions_", "")
    out = []
    for i, row in enumerate(_read_table(csv_path)):
        if "_error" in row:
            out.append(_error_example(csv_path, i, row))
            continue
        fname = str(row.get("file_name", ""))
        caps = [row.get(f"caption_{k}") for k in range(1, 6) if f"caption_{k}" in row]
        for k, cap in enumerate(caps if all_captions else caps[:1], 1):
            out.append(Example(key=f"clotho/{fname}#{k}", caption=cap,
                               path=os.path.join(audio_dir, fname), split=split))
    return out


def wavcaps_source(json_path: str, audio_dir: str, split: str = "train") -> list[Example]:
    """WavCaps json ({"data": [{"id" or "audio", "caption", ...}]}) + local audio dir."""
    with open(json_path, "rb") as f:
        text = f.read().decode("utf-8", errors="surrogateescape")  # bad bytes kept, found per item below
    data = json.loads(text.lstrip("\ufeff"))
    items = data["data"] if isinstance(data, dict) else data
    bad_lines = iter([text.count("\n", 0, m.start()) + 1 for m in _UNDECODABLE.finditer(text)])
    idx = _index_dir(audio_dir)
    out = []
    for n, item in enumerate(items):
        ident = str(item.get("id", item.get("audio", "")))
        dumped = json.dumps(item, ensure_ascii=False)
        if _UNDECODABLE.search(dumped):  # its bad bytes are the next ones in document order
            lines = [next(bad_lines, None) for _ in _UNDECODABLE.finditer(dumped)]
            where = f":{lines[0]}" if lines[0] is not None else ""
            out.append(Example(key=f"wavcaps/{_UNDECODABLE.sub('?', ident)}", caption=None, split=split, labels={
                "_error": f"{json_path}{where}: item {n} is not valid UTF-8 ({_bad_utf8(dumped)} of the item); "
                          "fix the file's encoding"}))
            continue
        stem = os.path.splitext(os.path.basename(str(item.get("audio", ident))))[0]
        path = idx.get(stem) or idx.get(os.path.splitext(ident)[0]) or os.path.join(audio_dir, stem + ".flac")
        labels = {k: str(v) for k, v in item.items() if k not in ("caption", "audio", "id")}
        out.append(Example(key=f"wavcaps/{ident}", caption=item.get("caption"), path=path,
                           split=split, labels=labels))
    return out


def tfds_source(name: str, manual_dir: str, split: str = "train", data_dir: str | None = None,
                audio_key: str = "audio", caption_key: str = "caption",
                sample_rate: int | None = None, all_captions: bool = True) -> Iterator[Example]:
    """Examples from a tensorflow-datasets builder prepared from `manual_dir` (extra `tfds`).

    `caption_key` may name a string feature or a sequence of strings (one example per caption,
    like Clotho, or only the first with `all_captions=False`);
    `sample_rate` is the builder's audio rate (read from its features when None).
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("tfds_source needs tensorflow-datasets: pip install -e '.[tfds]'") from e
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    if sample_rate is None:
        feat = builder.info.features[audio_key]
        sample_rate = int(getattr(feat, "sample_rate", 0) or 0) or None
    for i, ex in enumerate(tfds.as_numpy(builder.as_dataset(split=split))):
        cap = ex.get(caption_key)
        if isinstance(cap, (list, tuple, np.ndarray)) and not isinstance(cap, (str, bytes)):
            caps = list(cap) if all_captions else list(cap)[:1]
        else:
            caps = [cap]
        audio = np.asarray(ex[audio_key])
        if np.issubdtype(audio.dtype, np.integer):
            audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max)
        for k, c in enumerate(caps or [None]):
            key = f"{name}/{split}/{i}" + (f"#{k + 1}" if len(caps) > 1 else "")
            yield Example(key=key, caption=c, split=split, audio=audio.astype(np.float32),
                          sample_rate=sample_rate)


def build_source(kind: str, **kw) -> Iterable[Example]:
    """Dispatch by name: folder | audiocaps | clotho | wavcaps | tfds."""
    fns = {"folder": folder_source, "audiocaps": audiocaps_source, "clotho": clotho_source,
           "wavcaps": wavcaps_source, "tfds": tfds_source}
    if kind not in fns:
        raise ValueError(f"unknown data source {kind!r}; expected one of {sorted(fns)}")
    return fns[kind](**kw)
