"""Precompute: examples -> (frozen codec, frozen text encoder) -> ArrayRecord shards + manifest.json.

Layout of `out_dir`:
  shard-00003-of-00010.array_record   records of shard 3 (msgpack, see records.py)
  shard-00003-of-00010.json           its sidecar: count, skipped (key, path, reason), stats, hash
  null_text.msgpack                   text features of the empty caption (for CFG dropout)
  manifest.json                       written once every sidecar exists (by whichever process
                                      finishes last): counts, shapes, latent stats, config hash,
                                      all skipped examples with reasons, and the codec and text
                                      encoder as structured fields (`codec`: {"name": "mel", "model":
                                      ..., ...}, `text`: {"name": "minilm", "max_len": 32}) that
                                      training compares with its config by name

Sharding: the example list is cut into contiguous shards of `shard_size`; shard s belongs to
process s % process_count, so each process encodes its share and shard contents do not depend on
the number of processes. Resume: a shard whose sidecar exists with the same config hash is kept.
Atomicity: shard and sidecar are written to `*.tmp-<pid>` and `os.replace`d (shard first, then
sidecar), so a killed run never leaves a half shard under a name a reader or a resume accepts
(the loader only opens the shards that manifest.json lists).

Encoders are plain callables so tests can use toy ones:
  encode_audio(audio float32 [B, T]) -> latent [B, T', C] or [B, H, T', C]   (e.g. jax.jit of
                                        codec.encode; time is axis -2, see tta_jax.data.records)
  encode_text(list of B captions) -> {name: array [B, ...]}  (embeddings, or token ids) or None
Record fields: key, caption, split, labels (dict), latent, num_samples (valid audio samples),
latent_frames (valid frames along the time axis -2 of latent), `txt:<name>` for each text feature, and
`ref:<name>` [K, ...] for each feature of the example's K reference clips (Example.refs; `labels["_refs"]` names
them) when `PrecomputeConfig.reference` is set.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from tta_jax.data import records
from data_pipeline.sources import AudioConfig, BadExample, Example, check_caption, prepare_audio

log = logging.getLogger("data_pipeline.precompute")

EncodeAudio = Callable[[np.ndarray], Any]
EncodeText = Callable[[list], dict]


@dataclasses.dataclass(frozen=True)
class PrecomputeConfig:
    audio: AudioConfig = AudioConfig()
    shard_size: int = 256
    batch_size: int = 16
    codec_id: str = "codec"           # identity of the codec (name + params hash): part of the hash
    text_id: str = "none"             # identity of the text encoder / tokenizer
    latent_dtype: str = "float32"     # stored dtype (float16 halves disk)
    # The codec / text encoder as structured fields, written to the manifest (e.g. {"name": "toy", "hop": 256}
    # and {"name": "bytes", "max_len": 64}; see data_pipeline/build.py). Not part of the config hash:
    # codec_id / text_id already identify them, so data made before these fields existed still resumes.
    codec: dict = dataclasses.field(default_factory=dict)
    text: dict = dataclasses.field(default_factory=dict)
    decode_threads: int = 1           # threads decoding/resampling audio (output is order-stable)
    # reference clips (Example.refs): decoded with this AudioConfig (e.g. 2 s at 16 kHz), encoded by
    # ``encode_reference`` and stored as ``ref:<name>`` [K, ...]; None: examples carry no references
    reference: AudioConfig | None = None
    reference_count: int = 0          # K references per example (every example must have exactly K)
    throttle_s: float = 0.0           # sleep after each batch (only to test kill/resume)


def config_hash(cfg: PrecomputeConfig, keys: Sequence[str]) -> str:
    d = dataclasses.asdict(cfg)
    d.pop("throttle_s"), d.pop("decode_threads")  # do not change the output
    d.pop("codec"), d.pop("text")  # descriptions of codec_id / text_id (see PrecomputeConfig)
    if d.get("reference") is None:  # data made before references existed keeps its hash
        d.pop("reference"), d.pop("reference_count")
    d["keys_sha"] = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    d["num_examples"] = len(keys)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def shard_name(s: int, n: int) -> str:
    return f"shard-{s:05d}-of-{n:05d}"


def plan_shards(num_examples: int, shard_size: int) -> list[range]:
    return [range(i, min(i + shard_size, num_examples)) for i in range(0, num_examples, shard_size)]


def shards_of_process(num_shards: int, process_index: int, process_count: int) -> list[int]:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return [s for s in range(num_shards) if s % process_count == process_index]


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _skip(skipped: list, ex: Example, reason: str) -> None:
    skipped.append({"key": ex.key, "path": ex.path, "reason": reason})
    log.warning("skipping %s (%s): %s", ex.key, ex.path, reason)


def _prepare(ex: Example, cfg: PrecomputeConfig):
    """-> (caption, audio, valid, reference audio [K, S] | None, reference captions [K] | None) or a reason
    string."""
    if "_error" in ex.labels:
        return ex.labels["_error"]
    try:
        cap = check_caption(ex)
        audio, valid = prepare_audio(ex, cfg.audio)
        refs, ref_caps = None, None
        if cfg.reference is not None:
            if len(ex.refs) != cfg.reference_count:
                return f"has {len(ex.refs)} reference clips, expected {cfg.reference_count}"
            refs = []
            for r in ex.refs:
                if r is ex and cfg.reference == cfg.audio:   # the example is its own reference: decoded once
                    refs.append(audio)
                    continue
                try:
                    refs.append(prepare_audio(r, cfg.reference)[0])
                except BadExample as e:
                    return f"reference {r.path or r.key}: {e.reason}"
            refs = np.stack(refs)
            ref_caps = [str(r.caption or "") for r in ex.refs]
    except BadExample as e:
        return e.reason
    except Exception as e:  # noqa: BLE001 - never stop the run for one example
        return f"unexpected error: {type(e).__name__}: {e}"
    return cap, audio, valid, refs, ref_caps


def _encode_shard(exs: list[Example], cfg: PrecomputeConfig, encode_audio: EncodeAudio,
                  encode_text: EncodeText | None, encode_reference: EncodeText | None = None
                  ) -> tuple[list[bytes], list[dict], dict]:
    skipped: list[dict] = []
    good: list[tuple[Example, str, np.ndarray, int, np.ndarray | None, list | None]] = []
    if cfg.decode_threads > 1:  # map() keeps order: output does not depend on thread timing
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(cfg.decode_threads) as pool:
            prepared = list(pool.map(lambda e: _prepare(e, cfg), exs))
    else:
        prepared = [_prepare(e, cfg) for e in exs]
    for ex, res in zip(exs, prepared):
        if isinstance(res, str):
            _skip(skipped, ex, res)
        else:
            good.append((ex, *res))
    out: list[bytes] = []
    stats = {"count": 0, "sum": None, "sumsq": None}
    bs = cfg.batch_size
    for b0 in range(0, len(good), bs):
        chunk = good[b0:b0 + bs]
        batch = np.zeros((bs, len(chunk[0][2])), np.float32)  # padded: one compiled shape
        for i, c in enumerate(chunk):
            batch[i] = c[2]
        lat = np.asarray(encode_audio(batch))[: len(chunk)]
        txt = encode_text([c[1] for c in chunk]) if encode_text is not None else {}
        txt = {k: np.asarray(v) for k, v in (txt or {}).items()}
        refs = {}
        if cfg.reference is not None:  # [n * K, S] (+ n * K captions) in one call -> {name: [n, K, ...]}
            k = cfg.reference_count
            flat = np.concatenate([c[4] for c in chunk], 0)
            caps = [t for c in chunk for t in c[5]]
            refs = {name: np.asarray(v).reshape((len(chunk), k) + np.shape(v)[1:])
                    for name, v in encode_reference(flat, caps).items()}
        for i, (ex, cap, audio, valid, _, _) in enumerate(chunk):
            z = lat[i].astype(cfg.latent_dtype)
            if not np.all(np.isfinite(z)):
                _skip(skipped, ex, "codec produced non-finite latents")
                continue
            t = records.latent_time_len(z.shape, f"codec output for example {ex.key!r}")
            frames = int(np.ceil(valid / len(audio) * t))
            rec = {"key": ex.key, "caption": cap, "split": ex.split, "labels": dict(ex.labels),
                   "latent": z, "num_samples": int(valid), "latent_frames": frames}
            for k, v in txt.items():
                rec[f"txt:{k}"] = v[i]
            for k, v in refs.items():
                rec[f"ref:{k}"] = v[i]
            if ex.refs:
                rec["labels"]["_refs"] = ",".join(r.key for r in ex.refs)
            out.append(records.encode_record(rec))
            zf = z.astype(np.float64).reshape(-1, z.shape[-1])  # per-channel stats over (H,) T
            stats["count"] += zf.shape[0]
            stats["sum"] = zf.sum(0) if stats["sum"] is None else stats["sum"] + zf.sum(0)
            sq = (zf**2).sum(0)
            stats["sumsq"] = sq if stats["sumsq"] is None else stats["sumsq"] + sq
        if cfg.throttle_s:
            time.sleep(cfg.throttle_s)
    stats = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in stats.items()}
    return out, skipped, stats


def run_precompute(examples: Sequence[Example], out_dir: str, encode_audio: EncodeAudio,
                   encode_text: EncodeText | None = None, cfg: PrecomputeConfig = PrecomputeConfig(),
                   process_index: int = 0, process_count: int = 1, progress: bool = True,
                   finalize: bool = True, encode_reference: EncodeText | None = None) -> dict | None:
    """Encode this process's shards (skipping finished ones); returns the manifest if complete.
    ``encode_reference(audio [N, S], captions [N]) -> {name: [N, ...]}`` encodes the examples' reference clips
    (needs ``cfg.reference``)."""
    examples = list(examples)
    os.makedirs(out_dir, exist_ok=True)
    if (cfg.reference is None) != (encode_reference is None):
        raise ValueError("PrecomputeConfig.reference and encode_reference go together (both or neither)")
    keys = [e.key if not e.refs else e.key + "<" + ",".join(r.key for r in e.refs) for e in examples]
    chash = config_hash(cfg, keys)
    plan = plan_shards(len(examples), cfg.shard_size)
    n = len(plan)
    mine = shards_of_process(n, process_index, process_count)
    if process_index == 0 and encode_text is not None:
        null = {k: np.asarray(v)[0] for k, v in encode_text([""]).items()}
        null_path = os.path.join(out_dir, "null_text.msgpack")
        _atomic_write(null_path, records.encode_record(null))
    todo = []
    for s in mine:
        for stale in glob.glob(os.path.join(out_dir, shard_name(s, n) + ".*.tmp-*")):
            os.remove(stale)  # left by a killed run of this shard's owner
        side = _read_json(os.path.join(out_dir, shard_name(s, n) + ".json"))
        if side is not None and side.get("config_hash") == chash:
            continue
        if side is not None:
            raise ValueError(
                f"{out_dir}: {shard_name(s, n)} was made with a different config/data "
                f"(hash {side.get('config_hash')} != {chash}); use a fresh --out directory")
        todo.append(s)
    log.info("precompute: %d examples, %d shards; process %d/%d owns %d, %d left to do",
             len(examples), n, process_index, process_count, len(mine), len(todo))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(plan[s]) for s in todo), desc=f"precompute[{process_index}]",
                   unit="clip")
    for s in todo:
        exs = [examples[i] for i in plan[s]]
        recs, skipped, stats = _encode_shard(exs, cfg, encode_audio, encode_text, encode_reference)
        base = os.path.join(out_dir, shard_name(s, n))
        tmp = f"{base}.array_record.tmp-{os.getpid()}"
        records.write_shard(tmp, recs)
        os.replace(tmp, base + ".array_record")
        first = records.decode_record(recs[0]) if recs else None
        side = {"shard": s, "file": shard_name(s, n) + ".array_record", "num_records": len(recs),
                "num_examples": len(exs), "skipped": skipped, "stats": stats, "config_hash": chash,
                "shapes": {k: [list(v.shape), str(v.dtype)] for k, v in (first or {}).items()
                           if isinstance(v, np.ndarray)}}
        _atomic_write(base + ".json", json.dumps(side, indent=1, sort_keys=True).encode())
        if bar is not None:
            bar.update(len(exs))
    if bar is not None:
        bar.close()
    return try_finalize(out_dir, n, chash, cfg) if finalize else None


def try_finalize(out_dir: str, num_shards: int, chash: str, cfg: PrecomputeConfig) -> dict | None:
    """Merge the sidecars into manifest.json if all shards are done; else return None."""
    sides = []
    for s in range(num_shards):
        side = _read_json(os.path.join(out_dir, shard_name(s, num_shards) + ".json"))
        if side is None or side.get("config_hash") != chash:
            log.info("manifest not written yet: %s not finished", shard_name(s, num_shards))
            return None
        sides.append(side)
    count = sum(sd["stats"]["count"] for sd in sides)
    ch_sum = sum(np.asarray(sd["stats"]["sum"]) for sd in sides if sd["stats"]["sum"] is not None)
    ch_sq = sum(np.asarray(sd["stats"]["sumsq"]) for sd in sides if sd["stats"]["sumsq"] is not None)
    stats = {}
    if count:
        ch_mean = ch_sum / count
        ch_std = np.sqrt(np.maximum(ch_sq / count - ch_mean**2, 0.0))
        mean = float(np.sum(ch_sum) / (count * len(ch_sum)))
        std = float(np.sqrt(max(np.sum(ch_sq) / (count * len(ch_sq)) - mean**2, 0.0)))
        stats = {"mean": mean, "std": std, "channel_mean": ch_mean.tolist(),
                 "channel_std": ch_std.tolist()}
    shapes = next((sd["shapes"] for sd in sides if sd["num_records"]), {})
    skipped = [x for sd in sides for x in sd["skipped"]]
    described = {k: dict(v) for k, v in (("codec", cfg.codec), ("text", cfg.text)) if v}
    manifest = {
        "format": "tta_jax.precompute/1",
        "shards": [sd["file"] for sd in sides if sd["num_records"]],
        "shard_counts": [sd["num_records"] for sd in sides if sd["num_records"]],
        "num_records": sum(sd["num_records"] for sd in sides),
        "num_examples": sum(sd["num_examples"] for sd in sides),
        "num_skipped": len(skipped), "skipped": skipped,
        "shapes": shapes, "latent_stats": stats, "config_hash": chash,
        "config": {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(cfg))).items()
                   if k not in ("throttle_s", "decode_threads")},
        "null_text": "null_text.msgpack" if os.path.exists(
            os.path.join(out_dir, "null_text.msgpack")) else None,
        **json.loads(json.dumps(described)),
    }
    _atomic_write(os.path.join(out_dir, "manifest.json"),
                  json.dumps(manifest, indent=1, sort_keys=True).encode())
    log.info("manifest: %d records, %d skipped", manifest["num_records"], len(skipped))
    return manifest
