"""grain loader over precomputed ArrayRecord shards (written by data_pipeline/precompute.py) + global batch assembly.

Pipeline (grain 0.2 dataset API):
  MapDataset.source(ArrayRecordDataSource(manifest shards))
    -> [process_index : per * process_count : process_count]   shard by jax process: disjoint,
                                                                equal size (remainder dropped)
    -> shuffle(seed) -> repeat(num_epochs)       seeded global (per-process) shuffle, new each epoch
    -> map(decode) -> random_map(augment)         latent crop, caption dropout, EzAudio masks;
                                                  the rng is grain's, seeded by (seed, index)
    -> to_iter_dataset -> batch -> [mp_prefetch]
The iterator (`iter(dataset)`) is checkpointable: `it.get_state()` / `it.set_state(state)`;
save the state with the train state (grain.checkpoint handlers work with Orbax).

Batch (per process, numpy): latent [B, T, C] (sequence records) or [B, H, T, C] (image records, e.g.
a KL-VAE over a mel image, H = frequency rows) float32; time is always axis -2 and `crop_frames`
crops / zero-pads along it. Per time frame in both cases: latent_valid [B, T] float32 (1 = real
frame) and mask [B, T] float32 (1 = generate) when masks are on. Also caption_dropped [B] bool, each
text feature the precompute stored (e.g. input_ids [B, L] or text [B, L, D] + text_mask [B, L]), each
reference feature (record field ``ref:<name>`` [K, ...] -> <name> [B, K, ...]) with reference_mask [B, K]
(all False where the example's references were dropped, p = reference_dropout; single references off with
p = reference_concept_dropout; one span of reference_content_mask of the frames zeroed in the features
named by reference_content_keys), and
caption [B] str + key [B] str when `keep_strings`.

Multiprocessing note: parse absl flags (app.run) *before* building the loader; grain's worker
processes (num_workers > 0) read absl flags and fail on unparsed ones. Outside an absl app
`make_dataset` marks the flags parsed with their defaults (`ensure_flags_parsed`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from tta_jax.data import records
from tta_jax.data.masks import sample_mask


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 8                 # per process
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None       # None: repeat forever
    crop_frames: int | None = None      # random crop along the latent's time axis -2 (zero-padded if shorter)
    caption_dropout: float = 0.0        # p of replacing text features with the null caption's (per encoder)
    reference_dropout: float = 0.0      # p of switching an example's references off (reference_mask all False)
    reference_concept_dropout: float = 0.0  # p of switching each reference off on its own (DreamAudio: 0.4)
    reference_content_mask: float = 0.0     # fraction of frames zeroed, one random span per reference, along
    reference_content_keys: tuple = ()      # ... axis -2 of these reference features (DreamAudio: ref_latent)
    mask_partial_prob: float | None = None  # EzAudio masks: None = off, else 0.25
    mask_span: int = 10
    split: str | None = None            # keep only records of this split
    drop_remainder: bool = True
    num_threads: int = 4                # grain ReadOptions threads
    num_workers: int = 0                # grain worker processes (mp_prefetch)
    keep_strings: bool = False          # also return caption strings and keys

    @classmethod
    def from_experiment(cls, data, batch_size: int, seed: int, caption_dropout: float = 0.0,
                        **kw) -> "LoaderConfig":
        """From tta_jax.config's `data` section (crop_frames 0 / mask_partial_prob < 0 mean off)."""
        return cls(batch_size=batch_size, seed=seed, caption_dropout=caption_dropout,
                   crop_frames=int(data.crop_frames) or None,
                   mask_partial_prob=None if data.mask_partial_prob < 0 else float(data.mask_partial_prob),
                   split=data.split or None, num_workers=int(data.num_workers), **kw)


def read_manifest(data_dir: str) -> dict:
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run launch.precompute to completion first")
    with open(path) as f:
        return json.load(f)


def load_null_text(data_dir: str, manifest: dict) -> dict[str, np.ndarray] | None:
    if not manifest.get("null_text"):
        return None
    with open(os.path.join(data_dir, manifest["null_text"]), "rb") as f:
        return records.decode_record(f.read())


class _Decode:
    def __init__(self, keep_strings: bool):
        self.keep_strings = keep_strings

    def __call__(self, raw: bytes) -> dict[str, Any]:
        return records.decode_record(raw)


def crop_time(latent: np.ndarray, valid: np.ndarray, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames [start, start + length) of ``latent`` [..., T, C] along its time axis -2 and of ``valid``
    [T]; zero-padded at the end (latent and valid) where fewer than ``length`` frames remain.
    -> (latent [..., length, C], valid [length])."""
    if length <= 0 or not 0 <= start <= max(latent.shape[-2] - 1, 0):
        raise ValueError(f"crop_frames={length} from frame {start}: expected length > 0 and a start inside "
                         f"the {latent.shape[-2]} frames of the latent")
    z, v = latent[..., start:start + length, :], valid[start:start + length]
    short = length - v.shape[0]
    if short:
        z = np.pad(z, [(0, 0)] * (z.ndim - 2) + [(0, short), (0, 0)])
        v = np.pad(v, (0, short))
    return z, v


def mask_content_span(feats: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Zeroes one random span of ``round(fraction * T)`` frames along axis -2 of each reference:
    ``feats`` [K, ..., T, C] -> a copy with the span set to 0 (its own start per reference)."""
    out = np.array(feats, copy=True)
    t = out.shape[-2]
    n = int(round(float(fraction) * t))
    if n <= 0:
        return out
    for k in range(out.shape[0]):
        s = int(rng.integers(0, t - n + 1))
        out[k, ..., s:s + n, :] = 0
    return out


def text_group(key: str) -> str:
    """The text encoder a record feature belongs to: ``"txt:text:1"`` -> ``"1"``, ``"txt:text"`` -> ``""``."""
    name = key[4:] if key.startswith("txt:") else key
    return name.split(":", 1)[1] if ":" in name else ""


class _Augment:
    """Random transforms of one decoded record (rng from grain, seeded per index)."""

    def __init__(self, cfg: LoaderConfig, null_text: dict | None):
        self.cfg, self.null = cfg, null_text

    def __call__(self, rec: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.cfg
        z = np.asarray(rec["latent"], np.float32)
        t = records.latent_time_len(z.shape, f"record {rec.get('key', '?')!r} field 'latent'")
        frames = int(rec.get("latent_frames", t))
        valid = (np.arange(t) < frames).astype(np.float32)
        if cfg.crop_frames is not None:
            start = int(rng.integers(0, max(frames - cfg.crop_frames, 0) + 1)) if t > cfg.crop_frames else 0
            z, valid = crop_time(z, valid, start, int(cfg.crop_frames))
        out: dict[str, Any] = {"latent": z, "latent_valid": valid}
        # one CFG drop decision per text encoder: features "txt:text:<i>" / "txt:text_mask:<i>" of a multi
        # encoder are encoder i's (Auffusion's per-encoder dropout); a single encoder is one group
        groups = sorted({text_group(k) for k in rec if k.startswith("txt:")})
        dropped = {g: bool(cfg.caption_dropout > 0 and rng.uniform() < cfg.caption_dropout) for g in groups}
        drop = bool(groups) and all(dropped.values())
        out["caption_dropped"] = np.bool_(drop)
        for k, v in rec.items():
            if k.startswith("txt:"):
                name = k[4:]
                out[name] = self.null[name] if (dropped[text_group(k)] and self.null is not None) else v
        refs = [k for k in rec if k.startswith("ref:")]
        if refs:  # K reference features per example (``ref:<name>`` [K, ...]), dropped together for CFG
            k_refs = int(np.shape(rec[refs[0]])[0])
            keep = not (cfg.reference_dropout > 0 and rng.uniform() < cfg.reference_dropout)
            for k in refs:
                out[k[4:]] = np.asarray(rec[k])
            rmask = np.full((k_refs,), keep)
            if cfg.reference_concept_dropout > 0:
                rmask &= rng.uniform(size=k_refs) >= cfg.reference_concept_dropout
            if "reference_mask" in rec:   # slots the example leaves empty stay off
                rmask &= np.asarray(rec["reference_mask"]).astype(bool)
            out["reference_mask"] = rmask
            if cfg.reference_content_mask > 0:
                for name in cfg.reference_content_keys:
                    if name in out:
                        out[name] = mask_content_span(out[name], cfg.reference_content_mask, rng)
        if cfg.mask_partial_prob is not None:
            out["mask"] = sample_mask(valid.shape[0], rng, cfg.mask_partial_prob, cfg.mask_span)
        if cfg.keep_strings:
            out["caption"] = "" if drop else rec["caption"]
            out["key"] = rec["key"]
        return out


def make_dataset(data_dir: str, cfg: LoaderConfig = LoaderConfig(), process_index: int | None = None,
                 process_count: int | None = None):
    """-> grain IterDataset of per-process batches. `iter()` it for a checkpointable iterator."""
    import grain

    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    manifest = read_manifest(data_dir)
    paths = [os.path.join(data_dir, s) for s in manifest["shards"]]
    if not paths:
        raise ValueError(f"{data_dir}: manifest lists no shards (all {manifest['num_examples']} "
                         f"examples skipped?)")
    source = grain.sources.ArrayRecordDataSource(paths)
    ds = grain.MapDataset.source(source)
    per = len(ds) // process_count
    if per == 0:
        raise ValueError(f"{data_dir}: {len(ds)} records cannot be split over {process_count} processes")
    ds = ds[process_index: per * process_count: process_count]
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs)
    ds = ds.map(_Decode(cfg.keep_strings))
    if cfg.split is not None:
        ds = ds.filter(lambda r, s=cfg.split: r["split"] == s)
    ds = ds.random_map(_Augment(cfg, load_null_text(data_dir, manifest)), seed=cfg.seed + 1)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=64))
    ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
    if cfg.num_workers > 0:
        ensure_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
    return ds


def ensure_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app (notebooks, pytest) mark them
    parsed with their defaults. Inside `app.run` this is a no-op (flags are already parsed)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def global_batch(batch: dict[str, Any], mesh, data_axes: tuple[str, ...] = ("data",)) -> dict:
    """Per-process numpy batch -> global jax.Arrays sharded on `data_axes` along the batch dim.

    Non-numeric entries (strings) are dropped. The global batch is process_count * local batch.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype.kind in "USO":
            continue
        spec = P(data_axes if len(data_axes) > 1 else data_axes[0])
        out[k] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), v)
    return out
