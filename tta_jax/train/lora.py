"""LoRA adapters for the denoisers (U-Net and DiT): pure functions over param trees + a denoiser wrapper.

An adapter on a kernel ``W`` (Dense ``[in, out]``; Conv ``[*k, in, out]``, seen as ``[prod(k) * in, out]``) is
``{"a": A [in', r], "b": B [r, out]}``; the adapted kernel is ``W + scale * (alpha / r) * (A @ B)`` reshaped
to ``W``'s shape. ``A`` starts kaiming-uniform as PEFT's default (``U(-1/sqrt(in'), 1/sqrt(in'))``), ``B`` at 0,
so a fresh adapter leaves the network exactly as it was.

Adapters (what the pure functions take and return) are flat ``{path: {"a", "b"}}`` dicts; ``path`` is the
kernel's ``/``-joined param path (:func:`tta_jax.train.optim.path_str`, e.g.
``"down_blocks_0/attentions_0/transformer_blocks_0/attn1/to_q/kernel"``), relative to the params they adapt.

- :func:`lora_targets` / :func:`init_lora` / :func:`merge_lora`: which kernels, fresh adapters, the merged params
  (several adapter sets stack: ``W + sum_i scale_i * alpha_i / r_i * A_i @ B_i``; pure and jit-able).
- :func:`save_lora` / :func:`load_lora`: one ``.safetensors`` file, keys ``lora/<path>/a`` and ``lora/<path>/b``
  (the same keys :func:`tta_jax.train.partial.export_subset` writes for ``("lora/.*",)`` from a LoRA run, so
  such an export loads too), metadata: rank, alpha, targets, the base model's config hash (caller's).
- :func:`from_peft_state_dict`: a diffusers / PEFT / kohya LoRA state dict -> adapters on our param paths.
- :func:`with_lora`: a :class:`tta_jax.denoisers.factory.Denoiser` with trainable adapters (``config.lora``).
- :func:`apply_lora_files`: ``--lora file.safetensors:scale`` at sampling: adapters merged once into the params.

Training (``with_lora``): :class:`LoRADenoiser` holds the denoiser as ``net`` and its own adapters as one param
``lora`` (a nested tree mirroring the adapted kernels: ``lora/<path>/a``, ``lora/<path>/b``). Its params are
``{"net": <the base denoiser's params>, "lora": ...}``. Each call merges ``lora`` into ``net``'s params with
``flax.linen.map_variables`` (``trans_in_fn`` = :func:`merge_lora`) and runs ``net`` on the merged kernels, so
the base network's code is untouched and any Dense/Conv kernel can be adapted. Hence:

- ``config.optimizer.trainable = ("lora/.*",)``: only the adapters train; every ``net/...`` leaf stays
  bit-identical (:func:`tta_jax.train.optim.freeze`). The base params enter the merge through
  ``jax.lax.stop_gradient`` (``config.lora.train_base = False``, the default), so the backward pass computes no
  gradient for the frozen kernels at all (measured in ``launch/bench.py --suite lora``); set it True to train
  base and adapters together.
- ``config.train.init_from = <base run>`` with ``config.train.init_prefix = "net"`` loads the pretrained model
  (the adapters keep their initialisation, ``B = 0``: step 0 is the base model exactly).
- The trained adapters: ``export_subset(params, ("lora/.*",), path)`` or :func:`save_lora` of
  ``flat_adapters(params["lora"])``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.errors import ConfigError
from tta_jax.train.optim import _compile, path_str

log = logging.getLogger(__name__)

SECTION_KEYS = ("rank", "alpha", "targets", "train_base")
FORMAT = "tta_jax.lora"


# ---------------------------------------------------------------------------------------------- param trees
def _unbox(tree):
    from flax.core import meta

    return meta.unbox(tree)


def _kernels(params) -> dict[str, Any]:
    """Every ``kernel`` leaf with ndim >= 2 -> {path: leaf} (unboxed)."""
    flat = jax.tree_util.tree_flatten_with_path(_unbox(params))[0]
    out = {}
    for p, leaf in flat:
        s = path_str(p)
        if s.split("/")[-1] == "kernel" and getattr(leaf, "ndim", 0) >= 2:
            out[s] = leaf
    return out


def lora_targets(params, patterns: Sequence[str], where: str = "config.lora.targets") -> list[str]:
    """The Dense / Conv kernels (``.../kernel``, ndim >= 2) whose path -- with or without the trailing
    ``/kernel`` -- fully matches one of ``patterns`` (regexes), sorted. A pattern matching no kernel raises
    :class:`ConfigError` naming it (a typo would silently train nothing)."""
    if not patterns:
        raise ConfigError(f"{where} is empty: list regexes of the kernels to adapt (e.g. '.*/attn[12]/to_[qkv]')")
    regs = _compile(patterns, where)
    kernels = sorted(_kernels(params))
    hit = [False] * len(regs)
    out = []
    for k in kernels:
        module = k[: -len("/kernel")]
        m = [bool(r.fullmatch(k) or r.fullmatch(module)) for r in regs]
        if any(m):
            out.append(k)
            hit = [h or x for h, x in zip(hit, m)]
    for p, h in zip(patterns, hit):
        if not h:
            raise ConfigError(f"{where}: {p!r} matches no Dense/Conv kernel (kernels look like "
                              f"{[k[:-len('/kernel')] for k in kernels[:3]]})")
    return out


def _flat_in(shape) -> int:
    return int(np.prod(shape[:-1]))


def init_lora(params, patterns: Sequence[str], rank: int, rng, dtype=jnp.float32) -> dict[str, dict]:
    """Fresh adapters ``{path: {"a": [in', rank], "b": [rank, out]}}`` on :func:`lora_targets`:
    ``A ~ U(-1/sqrt(in'), 1/sqrt(in'))`` (PEFT's ``kaiming_uniform_(a=sqrt(5))``), ``B = 0``;
    ``in' = prod(kernel.shape[:-1])``; one uniform draw from ``rng`` cut in sorted path order."""
    rank = int(rank)
    if rank < 1:
        raise ConfigError(f"config.lora.rank={rank}: expected a positive integer")
    kernels = _kernels(params)
    shapes = {p: tuple(kernels[p].shape) for p in lora_targets(params, patterns)}

    sizes = [_flat_in(shape) * rank for shape in shapes.values()]

    def draw(key):   # one uniform draw for every adapter (one small program, whatever the kernel shapes)
        u = jax.random.uniform(key, (max(sum(sizes), 1),), jnp.float32, -1.0, 1.0)
        out, start = {}, 0
        for (p, shape), n in zip(shapes.items(), sizes):
            n_in = _flat_in(shape)
            a = u[start:start + n].reshape(n_in, rank) / math.sqrt(n_in)
            out[p] = {"a": a.astype(dtype), "b": jnp.zeros((rank, shape[-1]), dtype)}
            start += n
        return out

    return jax.jit(draw)(rng)


def nest_adapters(adapters: Mapping[str, Mapping[str, Any]]) -> dict:
    """Flat ``{path: {"a", "b"}}`` -> nested ``{k1: {k2: ... {"kernel": {"a", "b"}}}}`` (the ``lora`` param)."""
    out: dict = {}
    for path, ab in adapters.items():
        node = out
        for k in path.split("/"):
            node = node.setdefault(k, {})
        node.update({"a": ab["a"], "b": ab["b"]})
    return out


def flat_adapters(tree) -> dict[str, dict]:
    """Nested ``lora`` param (or ``{path: {"a", "b"}}``) -> flat ``{path: {"a", "b"}}``."""
    out: dict[str, dict] = {}
    for p, leaf in jax.tree_util.tree_flatten_with_path(_unbox(tree))[0]:
        s = path_str(p)
        path, _, ab = s.rpartition("/")
        if ab not in ("a", "b") or not path:
            raise ValueError(f"LoRA adapters: leaf {s!r} is not '<kernel path>/a' or '<kernel path>/b'")
        out.setdefault(path, {})[ab] = leaf
    bad = [p for p, v in out.items() if set(v) != {"a", "b"}]
    if bad:
        raise ValueError(f"LoRA adapters: {bad[0]!r} has only {sorted(out[bad[0]])} (needs both 'a' and 'b')")
    return out


def lora_delta(kernel_shape, a, b, factor=1.0):
    """``factor * (A [in', r] @ B [r, out])`` reshaped to ``kernel_shape`` (float32)."""
    d = jnp.matmul(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
    return (factor * d).reshape(tuple(kernel_shape))


def _get(tree, keys: list[str], path: str):
    node = tree
    for k in keys:
        if not isinstance(node, Mapping) or k not in node:
            raise ValueError(f"LoRA adapter {path!r}: the params have no {k!r} there "
                             f"({sorted(node) if isinstance(node, Mapping) else type(node).__name__})")
        node = node[k]
    return node


def _set(tree, keys: list[str], value):
    if not keys:
        return value
    out = dict(tree)
    out[keys[0]] = _set(tree[keys[0]], keys[1:], value)
    return out


def merge_lora(params, adapters_list, scales: Sequence[float] | None = None,
               alphas: Sequence[float | None] | None = None):
    """``params`` with every adapted kernel replaced by ``W + sum_i scale_i * (alpha_i / r) * A_i @ B_i``
    (``r``: that adapter's rank, ``A.shape[-1]``; ``alpha_i=None``: ``alpha = r``, i.e. factor 1), reshaped to
    ``W``'s shape and cast to its dtype. Pure and jit-able; other leaves pass through unchanged.

    Args:
      params: nested param dict (plain arrays; logical boxes are kept around the new values).
      adapters_list: one adapters dict (``{path: {"a", "b"}}`` or the nested ``lora`` param) or a list of them.
      scales: one per adapter set (default 1).
      alphas: one per adapter set (default None each).
    Raises ValueError naming the path when an adapter's kernel is absent or its shapes do not fit it."""
    from flax.core import meta

    if isinstance(adapters_list, Mapping):
        adapters_list = [adapters_list]
    n = len(adapters_list)
    scales = [1.0] * n if scales is None else list(scales)
    alphas = [None] * n if alphas is None else list(alphas)
    if len(scales) != n or len(alphas) != n:
        raise ValueError(f"merge_lora: {n} adapter sets but {len(scales)} scales and {len(alphas)} alphas")
    deltas: dict[str, list] = {}
    for ads, s, al in zip(adapters_list, scales, alphas):
        for path, ab in flat_adapters(ads).items():
            deltas.setdefault(path, []).append((ab["a"], ab["b"], s, al))
    out = params
    for path, items in deltas.items():
        keys = path.split("/")
        box = _get(params, keys, path)
        w = box.unbox() if isinstance(box, meta.AxisMetadata) else box
        shape = tuple(w.shape)
        total = None
        for a, b, s, al in items:
            r = a.shape[-1]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != _flat_in(shape) or b.shape != (r, shape[-1]):
                raise ValueError(f"LoRA adapter {path!r}: a {tuple(a.shape)} / b {tuple(b.shape)} do not fit the "
                                 f"kernel {shape} (expected a [{_flat_in(shape)}, r], b [r, {shape[-1]}])")
            factor = s * ((al / r) if al is not None else 1.0)
            d = lora_delta(shape, a, b, factor)
            total = d if total is None else total + d
        new = (w.astype(jnp.float32) + total).astype(w.dtype) if w.dtype != jnp.float32 else w + total
        out = _set(out, keys, box.replace_boxed(new) if isinstance(box, meta.AxisMetadata) else new)
    return out


def unmerged_apply(apply_fn, params, adapters_list, scales=None, alphas=None):
    """``apply_fn`` (``(params, *args, **kw) -> out``) that merges the adapters at every call (training-time
    view; :func:`merge_lora` once and the plain ``apply_fn`` give the same outputs)."""
    def fn(*args, **kw):
        return apply_fn(merge_lora(params, adapters_list, scales, alphas), *args, **kw)

    return fn


# ---------------------------------------------------------------------------------------------- files
def config_hash(model_section) -> str:
    """A short hash of ``config.model`` (sorted JSON) to record which base a LoRA file was trained on."""
    d = model_section.to_dict() if hasattr(model_section, "to_dict") else dict(model_section or {})
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_lora(path: str, adapters, meta: Mapping[str, Any] | None = None) -> dict[str, tuple]:
    """Adapters (flat or nested) -> ``path`` (safetensors; keys ``lora/<kernel path>/a|b``, float32).
    ``meta`` (e.g. ``{"rank", "alpha", "targets", "base"}``) is stored JSON-encoded in the file's metadata.
    -> {key: shape} written."""
    from safetensors.numpy import save_file

    flat = {}
    for p, ab in flat_adapters(adapters).items():
        for k in ("a", "b"):
            flat[f"lora/{p}/{k}"] = np.ascontiguousarray(np.asarray(ab[k], np.float32))
    md = {"format": FORMAT}
    md.update({str(k): json.dumps(v, default=lambda x: list(x) if isinstance(x, (tuple, set)) else str(x))
               for k, v in dict(meta or {}).items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(flat, path, metadata=md)
    return {k: v.shape for k, v in flat.items()}


def load_lora(path: str, where: str = "--lora") -> tuple[dict[str, dict], dict]:
    """A file of :func:`save_lora` (or ``export_subset(params, ("lora/.*",), path)``) -> (adapters
    ``{path: {"a", "b"}}`` of numpy arrays, metadata dict; ``{}`` when the file has none)."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ConfigError(f"{where}={path!r} does not exist (a LoRA .safetensors file)")
    with safe_open(path, framework="numpy") as f:
        raw = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    meta = {}
    for k, v in raw.items():
        if k == "format":
            continue
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    flat = {}
    for k, v in sd.items():
        if not k.startswith("lora/") or k.rsplit("/", 1)[-1] not in ("a", "b"):
            raise ConfigError(f"{where}={path!r}: key {k!r} is not 'lora/<kernel path>/a|b' (a tta_jax LoRA "
                              f"file; a diffusers/PEFT one goes through from_peft_state_dict)")
        flat[k[len("lora/"):]] = v
    from tta_jax.convert.common import unflatten_params

    return flat_adapters(unflatten_params(flat)), meta


# ---------------------------------------------------------------------------------------------- PEFT / kohya
_PEFT_SUFFIXES = (
    (re.compile(r"^(?P<m>.+)\.lora_A(?:\.default)?\.weight$"), "a"),      # PEFT / diffusers >= 0.22
    (re.compile(r"^(?P<m>.+)\.lora_B(?:\.default)?\.weight$"), "b"),
    (re.compile(r"^(?P<m>.+)\.lora\.down\.weight$"), "a"),                # diffusers LoRACompatibleLinear
    (re.compile(r"^(?P<m>.+)\.lora\.up\.weight$"), "b"),
    (re.compile(r"^(?P<m>.+)\.lora_down\.weight$"), "a"),                 # kohya
    (re.compile(r"^(?P<m>.+)\.lora_up\.weight$"), "b"),
    (re.compile(r"^(?P<m>.+)\.alpha$"), "alpha"),                         # kohya per-module alpha
)
_PREFIXES = ("base_model.model.", "unet.", "transformer.", "model.", "module.", "lora_unet_", "lora_transformer_")
_PROCESSOR = re.compile(r"^(?P<pre>.+)\.processor\.(?P<p>to_q|to_k|to_v|to_out)_lora$")  # diffusers attn-procs
# torch module names that our param paths spell differently (diffusers U-Net / EzAudio DiT converters)
_ALIASES = ((re.compile(r"(^|/)to_out_0$"), r"\1to_out"),
            (re.compile(r"(^|/)(downsamplers|upsamplers)_0/conv$"), r"\1\2_0"),
            (re.compile(r"(^|/)(attn|cross_attn|acoustic_attn|ref_attn)/proj$"), r"\1\2/to_out"),
            (re.compile(r"(^|/)mlp/net_"), r"\1ff/net_"),
            (re.compile(r"(^|/)time_embed/mlp_0$"), r"\1time_embed/linear_1"),
            (re.compile(r"(^|/)time_embed/mlp_2$"), r"\1time_embed/linear_2"),
            (re.compile(r"(^|/)context_embed_0$"), r"\1context_embed/linear_1"),
            (re.compile(r"(^|/)context_embed_2$"), r"\1context_embed/linear_2"))


# our path -> the torch spelling of the same module (for separator-free kohya names)
_TORCH_SPELLINGS = ((re.compile(r"(^|/)to_out$"), r"\1to_out_0"),
                    (re.compile(r"(^|/)(downsamplers|upsamplers)_0$"), r"\1\2_0/conv"),
                    (re.compile(r"(^|/)(attn|cross_attn|acoustic_attn|ref_attn)/to_out$"), r"\1\2/proj"),
                    (re.compile(r"(^|/)ff/net_"), r"\1mlp/net_"))


def _squash(s: str) -> str:
    return re.sub(r"[./_]", "", s)


def _spellings(module: str) -> set[str]:
    """Separator-free spellings of one of our module paths (ours and the torch ones)."""
    out = {_squash(module)}
    for r, rep in _TORCH_SPELLINGS:
        out.add(_squash(r.sub(rep, module)))
    return out


def torch_module_to_path(name: str) -> str:
    """A torch module name -> our param path without ``/kernel`` (see :func:`from_peft_state_dict`)."""
    for p in _PREFIXES:
        if name.startswith(p):
            name = name[len(p):]
            break
    m = _PROCESSOR.match(name)
    if m:
        name = f"{m['pre']}.{m['p']}" + (".0" if m["p"] == "to_out" else "")
    path = re.sub(r"\.(\d+)(?=\.|$)", r"_\1", name).replace(".", "/")
    for r, rep in _ALIASES:
        path = r.sub(rep, path)
    return path


def from_peft_state_dict(sd: Mapping[str, Any], params, alpha: float | None = None,
                         where: str = "LoRA state dict") -> tuple[dict[str, dict], float | None]:
    """A diffusers / PEFT / kohya LoRA state dict -> (adapters on ``params``' kernel paths, alpha).

    Keys: ``<module>.lora_A.weight`` [r, in] / ``<module>.lora_B.weight`` [out, r] (PEFT, diffusers; also
    ``.lora_A.default.weight``), ``<module>.lora.down|up.weight`` and ``<attn>.processor.to_q_lora.down|up.weight``
    (older diffusers), ``<module>.lora_down|lora_up.weight`` + ``<module>.alpha`` (kohya). Conv LoRA:
    ``lora_A`` [r, in, *k], ``lora_B`` [out, r, 1, ...]; a 1x1 conv onto one of our Dense kernels (diffusers'
    conv ``proj_in``/``proj_out``) is squeezed. Layout: torch Linear [out, in] -> ours [in, out], i.e.
    ``a = lora_A.T`` [in, r], ``b = lora_B.T`` [r, out]; conv ``a = lora_A`` as [*k, in, r] flattened to
    ``[prod(k) * in, r]`` (the kernel layout ``[*k, in, out]``).

    Name rule (our U-Net keeps diffusers' module names): strip a prefix ``base_model.model.`` / ``unet.`` /
    ``transformer.`` / ``model.`` / ``module.``; ``<name>.<i>`` -> ``<name>_<i>``; ``.`` -> ``/``; then
    ``to_out_0`` -> ``to_out``, ``downsamplers_0/conv`` -> ``downsamplers_0`` (same for upsamplers), and for the
    EzAudio DiT ``attn/proj`` -> ``attn/to_out``, ``mlp/net_*`` -> ``ff/net_*``, ``time_embed/mlp_0|2`` ->
    ``time_embed/linear_1|2``. E.g. ``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0`` ->
    ``down_blocks_1/attentions_0/transformer_blocks_0/attn1/to_out/kernel``. Kohya names
    (``lora_unet_down_blocks_1_attentions_0_..._attn1_to_q``) lose the separators; they are matched to the
    kernel whose path equals them with every ``.``/``/``/``_`` removed (must be unique).

    ``alpha``: PEFT's ``lora_alpha`` (from ``adapter_config.json``; None: ``alpha = r``). Kohya's per-module
    ``.alpha``: when all equal it is returned as the alpha; when they differ, each module's ``alpha_m / r_m`` is
    folded into its ``b`` and None is returned. Raises ValueError naming the key for a key of no known form,
    a module that matches no kernel of ``params``, a missing A/B half, or shapes that do not fit.
    """
    kernels = _kernels(params)
    squashed: dict[str, list[str]] = {}
    for k in kernels:
        for sp in _spellings(k[: -len("/kernel")]):
            squashed.setdefault(sp, []).append(k)
    parts: dict[str, dict] = {}
    for key, v in sd.items():
        for r, kind in _PEFT_SUFFIXES:
            m = r.match(key)
            if m:
                break
        else:
            raise ValueError(f"{where}: key {key!r} is not a LoRA weight (<module>.lora_A/lora_B.weight, "
                             f".lora.down/up.weight, .lora_down/lora_up.weight or .alpha)")
        mod = m["m"]
        path = torch_module_to_path(mod) + "/kernel"
        if path not in kernels:
            cands = squashed.get(_squash(path[: -len("/kernel")]), [])
            if len(cands) != 1:
                why = "matches no kernel" if not cands else f"is ambiguous ({cands})"
                raise ValueError(f"{where}: key {key!r} (module {mod!r} -> {path!r}) {why} of the model "
                                 f"(kernels look like {sorted(kernels)[:3]})")
            path = cands[0]
        ent = parts.setdefault(path, {"key": key})
        if kind in ent:
            raise ValueError(f"{where}: key {key!r} repeats the {kind!r} of {path!r} (also {ent['key']!r})")
        ent[kind] = np.asarray(v, np.float32)
    out, module_alphas = {}, {}
    for path, ent in parts.items():
        if "a" not in ent or "b" not in ent:
            raise ValueError(f"{where}: key {ent['key']!r}: {path!r} has no "
                             f"{'lora_A/down' if 'a' not in ent else 'lora_B/up'} weight")
        shape = tuple(kernels[path].shape)
        ta, tb = ent["a"], ent["b"]
        r = ta.shape[0]
        if tb.ndim > 2:
            if any(s != 1 for s in tb.shape[2:]):
                raise ValueError(f"{where}: key {ent['key']!r}: lora_B {tb.shape} is not a 1x1 conv")
            tb = tb.reshape(tb.shape[:2])
        if ta.ndim > 2 and len(shape) == 2:  # 1x1 conv LoRA onto one of our Dense kernels
            if any(s != 1 for s in ta.shape[2:]):
                raise ValueError(f"{where}: key {ent['key']!r}: lora_A {ta.shape} onto Dense kernel {shape}")
            ta = ta.reshape(ta.shape[:2])
        a = np.transpose(ta, tuple(range(2, ta.ndim)) + (1, 0)).reshape(-1, r)   # [*k, in, r] -> [in', r]
        b = np.ascontiguousarray(tb.T)
        if a.shape[0] != _flat_in(shape) or b.shape != (r, shape[-1]):
            raise ValueError(f"{where}: key {ent['key']!r}: A {ent['a'].shape} / B {ent['b'].shape} do not fit "
                             f"{path!r} {shape}")
        out[path] = {"a": np.ascontiguousarray(a), "b": b}
        if "alpha" in ent:
            module_alphas[path] = float(np.asarray(ent["alpha"]).reshape(()))
    if module_alphas:
        vals = set(module_alphas.values())
        if len(vals) == 1 and len(module_alphas) == len(out):
            return out, vals.pop()
        for path, ab in out.items():   # fold alpha_m / r_m (or alpha / r) into b
            al = module_alphas.get(path, alpha)
            if al is not None:
                ab["b"] = ab["b"] * (al / ab["a"].shape[-1])
        return out, None
    return out, alpha


def to_peft_state_dict(adapters, prefix: str = "") -> dict[str, np.ndarray]:
    """Adapters on Dense kernels -> ``{<prefix><module>.lora_A.weight: [r, in], ...lora_B.weight: [out, r]}``
    with our path's ``/`` as ``.`` and ``<name>_<i>`` as ``<name>.<i>`` (``to_out`` -> ``to_out.0``): the
    inverse of :func:`from_peft_state_dict` for the U-Net's attention / feed-forward / projection kernels."""
    out = {}
    for path, ab in flat_adapters(adapters).items():
        a, b = np.asarray(ab["a"], np.float32), np.asarray(ab["b"], np.float32)
        mod = path[: -len("/kernel")] if path.endswith("/kernel") else path
        mod = re.sub(r"(^|/)to_out$", r"\1to_out/0", mod)
        mod = re.sub(r"_(\d+)(?=/|$)", r"/\1", mod).replace("/", ".")
        out[f"{prefix}{mod}.lora_A.weight"] = np.ascontiguousarray(a.T)
        out[f"{prefix}{mod}.lora_B.weight"] = np.ascontiguousarray(b.T)
    return out


# ---------------------------------------------------------------------------------------------- denoiser wrapper
class LoRADenoiser(nn.Module):
    """``net`` with LoRA adapters on the kernels matching ``targets`` (see the module docstring).

    Params: ``{"net": <net's params>, "lora": {<kernel path>: {"a": [in', rank], "b": [rank, out]}} (nested)}``.
    ``__call__(x, t, cond, train)`` -> ``net``'s output with ``W + scale * alpha / rank * A @ B`` for every
    adapted ``W`` (merged at every call; the base kernels are read, never changed). ``train_base=False``: the
    base params are a constant for autodiff (their gradient is 0 and is not computed)."""

    net: nn.Module
    targets: tuple[str, ...]
    rank: int
    alpha: float | None = None
    scale: float = 1.0
    train_base: bool = False

    @nn.compact
    def __call__(self, x, t, cond, train: bool = False):
        if self.is_initializing():   # create the net's params, then adapters of their shapes
            out = self.net(x, t, cond, train=train)
            base = self.net.variables["params"]
            self.param("lora", lambda rng: nest_adapters(init_lora(base, self.targets, self.rank, rng)))
            return out
        lora = self.param("lora", lambda rng: {})
        alphas = [None if self.alpha is None else float(self.alpha)]

        def merged(variables):
            base = variables["params"] if self.train_base else jax.lax.stop_gradient(variables["params"])
            return dict(variables, params=merge_lora(base, lora, [self.scale], alphas))

        call = nn.map_variables(lambda m, *a, **k: m(*a, **k), "params", trans_in_fn=merged, mutable=False)
        return call(self.net, x, t, cond, train=train)


def lora_enabled(section) -> bool:
    """Whether ``config.lora`` asks for adapters: its ``targets`` is non-empty (the default section, rank 8 and no
    targets, and the ``{}`` of older configs are off)."""
    d = section.to_dict() if hasattr(section, "to_dict") else dict(section or {})
    return bool(d.get("targets"))


def lora_section(section) -> dict:
    """``config.lora`` -> ``{"rank": int, "alpha": float | None, "targets": tuple[str, ...]}`` (ConfigError
    naming ``config.lora.<key>`` on an unknown key or a bad value)."""
    d = section.to_dict() if hasattr(section, "to_dict") else dict(section or {})
    bad = sorted(set(d) - set(SECTION_KEYS))
    if bad:
        raise ConfigError(f"config.lora.{bad[0]} is not a LoRA option ({list(SECTION_KEYS)})")
    rank = d.get("rank", 8)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"config.lora.rank={rank!r}: expected a positive integer")
    targets = d.get("targets") or ()
    if isinstance(targets, str) or not targets:
        raise ConfigError(f"config.lora.targets={targets!r}: expected a non-empty list of regexes over kernel "
                          f"paths (e.g. ['.*/attn[12]/to_(q|k|v|out)'])")
    alpha = d.get("alpha")
    train_base = d.get("train_base", False)
    if not isinstance(train_base, bool):
        raise ConfigError(f"config.lora.train_base={train_base!r}: expected True or False")
    return {"rank": int(rank), "alpha": None if alpha is None else float(alpha),
            "targets": tuple(str(t) for t in targets), "train_base": train_base}


def with_lora(den, section):
    """A :class:`tta_jax.denoisers.factory.Denoiser` -> the same denoiser with trainable LoRA adapters
    (:class:`LoRADenoiser`; ``section`` = ``config.lora``: ``rank`` (default 8), ``alpha`` (default rank),
    ``targets`` (regexes over the base params' kernel paths, with or without ``/kernel``), ``train_base`` (default
False: no gradient flows into the base params)). Params become
    ``{"net": base, "lora": adapters}``: train with ``config.optimizer.trainable = ("lora/.*",)``, load a base
    run with ``config.train.init_prefix = "net"``."""
    s = lora_section(section)
    module = LoRADenoiser(den.module.clone(parent=None), s["targets"], s["rank"], s["alpha"],
                          train_base=s["train_base"])
    return dataclasses.replace(den, module=module)


# ---------------------------------------------------------------------------------------------- sampling
def parse_lora_spec(spec: str, where: str = "--lora") -> tuple[str, float]:
    """``"file.safetensors"`` or ``"file.safetensors:scale"`` -> (path, scale)."""
    path, sep, scale = str(spec).rpartition(":")
    if not sep or not path.endswith(".safetensors"):
        return str(spec), 1.0
    try:
        return path, float(scale)
    except ValueError:
        raise ConfigError(f"{where}={spec!r}: expected FILE.safetensors[:SCALE] with a number as SCALE") from None


def apply_lora_files(params, specs: Sequence[str], base_hash: str | None = None, where: str = "--lora"):
    """``params`` with the adapters of every ``FILE.safetensors[:SCALE]`` in ``specs`` merged once
    (:func:`merge_lora`, each file's ``alpha`` from its metadata; none recorded, e.g. a ``launch.export
    --trainable_only`` file: ``alpha = rank``). Params of a LoRA run (``{"net", "lora"}``)
    get the files merged into ``net``. ``base_hash`` (:func:`config_hash` of the sampling config's
    ``config.model``): a file recorded for another base logs a warning (the shapes are checked anyway)."""
    if not specs:
        return params
    sets, scales, alphas = [], [], []
    for spec in specs:
        path, scale = parse_lora_spec(spec, where)
        ads, meta = load_lora(path, where)
        if base_hash and meta.get("base") and meta["base"] != base_hash:
            log.warning("%s=%s was trained on config.model hash %s, this model's is %s", where, path,
                        meta["base"], base_hash)
        if meta.get("alpha") is None:
            log.info("%s=%s records no alpha: using alpha = rank (factor 1)", where, path)
        sets.append(ads)
        scales.append(scale)
        alphas.append(meta.get("alpha"))
    wrapped = isinstance(params, Mapping) and set(params) == {"net", "lora"}
    target = params["net"] if wrapped else params
    try:
        merged = merge_lora(target, sets, scales, alphas)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    return dict(params, net=merged) if wrapped else merged


__all__ = ["lora_targets", "init_lora", "merge_lora", "unmerged_apply", "nest_adapters", "flat_adapters",
           "save_lora", "load_lora", "config_hash", "from_peft_state_dict", "to_peft_state_dict",
           "torch_module_to_path", "LoRADenoiser", "with_lora", "lora_section", "parse_lora_spec",
           "apply_lora_files"]
