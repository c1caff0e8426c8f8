"""Record (de)serialization for the precomputed ArrayRecord shards.

A record is a flat dict of str -> (str | int | float | np.ndarray | dict of str). It is stored as
msgpack; numpy arrays become {"__nd__": True, "dtype": str, "shape": [..], "data": bytes} (C order),
so encoding is deterministic (same dict -> same bytes; keys are written sorted).

A record's ``latent`` is either a sequence [T, C] or an image [H, T, C] (e.g. a KL-VAE over a mel
image, H = frequency rows); time is always axis -2 (``LATENT_TIME_AXIS``), and ``latent_frames`` counts
the valid frames along it.
"""
from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

ARRAY_RECORD_OPTIONS = "group_size:1"  # random access per record (what grain's global shuffle needs)
LATENT_TIME_AXIS = -2                   # [T, C] and [H, T, C] latents: time is the second-to-last axis


def latent_time_len(shape, where: str = "latent") -> int:
    """Number of time frames T of a record latent of ``shape`` [T, C] or [H, T, C].

    Raises ValueError naming ``where`` for any other rank."""
    shape = tuple(shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"{where}: expected a latent [T, C] (sequence) or [H, T, C] (image), got shape "
                         f"{list(shape)}")
    return int(shape[LATENT_TIME_AXIS])


def _pack(x: Any) -> Any:
    if isinstance(x, np.ndarray) or isinstance(x, np.generic):
        a = np.ascontiguousarray(x)
        if a.dtype == object:
            raise TypeError("object arrays cannot be stored in a record")
        return {"__nd__": True, "dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}
    if isinstance(x, dict):
        return {str(k): _pack(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
        return [_pack(v) for v in x]
    if hasattr(x, "__array__"):  # jax arrays
        return _pack(np.asarray(x))
    return x


def _unpack(x: Any) -> Any:
    if isinstance(x, dict):
        if x.get("__nd__") is True:
            return np.frombuffer(x["data"], dtype=np.dtype(x["dtype"])).reshape(x["shape"]).copy()
        return {k: _unpack(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unpack(v) for v in x]
    return x


def encode_record(record: dict[str, Any]) -> bytes:
    """dict -> deterministic msgpack bytes."""
    return msgpack.packb(_pack(record), use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
    """msgpack bytes -> dict with numpy arrays."""
    return _unpack(msgpack.unpackb(data, raw=False))


def write_shard(path: str, records: list[bytes]) -> None:
    """Write serialized records to an ArrayRecord file at `path` (not atomic; see precompute)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    w = ArrayRecordWriter(path, ARRAY_RECORD_OPTIONS)
    try:
        for r in records:
            w.write(r)
    finally:
        w.close()


def read_shard(path: str) -> list[dict[str, Any]]:
    """All records of one shard, decoded (for tests and tools)."""
    from array_record.python.array_record_module import ArrayRecordReader

    r = ArrayRecordReader(path)
    try:
        return [decode_record(b) for b in r.read_all()]
    finally:
        r.close()
