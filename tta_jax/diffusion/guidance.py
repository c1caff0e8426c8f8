"""Classifier-free guidance as a wrapper that turns a conditional model into a ``denoise_fn``.

One batched model call per step: ``x`` is duplicated, ``cond`` and ``uncond`` (dicts of arrays with
equal shapes, e.g. text states of the prompt and of the empty/negative prompt) are concatenated along
the batch axis, and the output is split back. Negative prompts are simply a different ``uncond``.

Guidance forms (``mode``), all ``uncond + s * (cond - uncond)`` with an effective scale ``s``:
- ``"cfg"``: s = w (Ho & Salimans; diffusers, EzAudio, Tango);
- ``"dcldm"``: ``w * cond + (1 - w) * uncond`` as DC-LDM writes it (algebraically the same as cfg);
- ``"auffusion"``: s = 1 + w, i.e. ``cond + w * (cond - uncond)`` (the "(1 + w)" form).

CFG rescale (Lin et al. 2023; diffusers ``rescale_noise_cfg``): the guided output's per-sample std (over
all non-batch axes, unbiased like torch) is matched to the conditional output's, blended by ``rescale``.
Guidance interval: guidance is applied only for model timesteps in ``[lo, hi]``; outside it the
conditional output is used (saves nothing in compute here, the batched call is kept static).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

GUIDANCE_MODES = ("cfg", "dcldm", "auffusion")

ModelFn = Callable[[jax.Array, jax.Array, Mapping[str, Any]], jax.Array]


def effective_scale(mode: str, w: float):
    """The scale s in ``uncond + s * (cond - uncond)`` for a named guidance form."""
    if mode in ("cfg", "dcldm"):
        return w
    if mode == "auffusion":
        return 1.0 + w
    raise ValueError(f"unknown guidance mode {mode!r}; expected one of {GUIDANCE_MODES}")


def rescale_noise_cfg(guided: jax.Array, cond_out: jax.Array, rescale: float) -> jax.Array:
    """``rescale * guided * std(cond)/std(guided) + (1 - rescale) * guided``; std per sample, ddof=1."""
    axes = tuple(range(1, guided.ndim))
    std_c = jnp.std(cond_out, axis=axes, keepdims=True, ddof=1)
    std_g = jnp.std(guided, axis=axes, keepdims=True, ddof=1)
    rescaled = guided * (std_c / std_g)
    return rescale * rescaled + (1.0 - rescale) * guided


def combine(cond_out: jax.Array, uncond_out: jax.Array, scale: float, *, mode: str = "cfg",
            rescale: float = 0.0) -> jax.Array:
    """Guided output from the two branches (pure)."""
    s = effective_scale(mode, scale)
    if mode == "dcldm":
        out = scale * cond_out + (1.0 - scale) * uncond_out
    else:
        out = uncond_out + s * (cond_out - uncond_out)
    if _traced(rescale):   # an exported sampler's input: the branch below, taken at run time
        out = jnp.where(rescale == 0, out, rescale_noise_cfg(out, cond_out, rescale))
    elif rescale:
        out = rescale_noise_cfg(out, cond_out, rescale)
    return out


def _traced(v) -> bool:
    """True for a value known only at run time (a jit / export input): no Python branch may read it."""
    return isinstance(v, jax.core.Tracer)


def concat_conds(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> dict[str, Any]:
    """Concatenates two condition dicts along the batch axis; keys and shapes must agree."""
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond)} vs {sorted(uncond)}")

    def cat(path, a, b):
        if jnp.shape(a) != jnp.shape(b):
            name = jax.tree_util.keystr(path)
            raise ValueError(f"cond{name} has shape {jnp.shape(a)} but uncond{name} has {jnp.shape(b)}; "
                             "pad them to the same length (e.g. tokenizer max_length)")
        return jnp.concatenate([a, b], axis=0)

    return jax.tree_util.tree_map_with_path(cat, dict(cond), dict(uncond))


def cfg_denoiser(model_fn: ModelFn, cond: Mapping[str, Any], uncond: Mapping[str, Any] | None, *,
                 scale: float, mode: str = "cfg", rescale: float = 0.0,
                 interval: tuple[float, float] | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Wraps ``model_fn(x [B, ...], t [B], cond) -> out`` into a guided ``denoise_fn(x, t) -> out``.

    With ``uncond=None`` or ``scale`` such that guidance is the identity (cfg/dcldm w=1), the model is
    called once on the conditional batch.
    """
    effective_scale(mode, scale)  # validates mode
    if uncond is None or (mode != "auffusion" and not _traced(scale) and not _traced(rescale)
                          and scale == 1.0 and not rescale):
        return lambda x, t: model_fn(x, t, cond)
    both = concat_conds(cond, uncond)

    def denoise(x, t):
        b = x.shape[0]
        out = model_fn(jnp.concatenate([x, x], 0), jnp.concatenate([t, t], 0), both)
        c, u = out[:b], out[b:]
        guided = combine(c, u, scale, mode=mode, rescale=rescale)
        if mode != "auffusion" and (_traced(scale) or _traced(rescale)):   # the identity case above, at run time
            guided = jnp.where((scale == 1.0) & (rescale == 0), c, guided)
        if interval is not None:
            lo, hi = interval
            inside = (t >= lo) & (t <= hi)
            guided = jnp.where(inside.reshape((b,) + (1,) * (x.ndim - 1)), guided, c)
        return guided

    return denoise
