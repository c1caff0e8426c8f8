"""Latent text-to-audio on precomputed latents: the one training task and the one jitted sampler.

Every latent-diffusion system runs through this module: the denoiser comes from the factory
(:func:`tta_jax.denoisers.factory.build_denoiser`, ``config.model.name`` = ``dit`` | ``unet``) and follows
``apply(params, x_t, t [B], cond, train=...)`` on sequence latents [B, T, C] or image latents [B, H, T, C]
(time is axis -2 in both); the codec and text encoder come from their registries
(:mod:`tta_jax.codecs.registry`, :mod:`tta_jax.text.registry`); the ``cond`` keys are the ones the denoiser's
configuration declares (:attr:`Denoiser.cond_keys`; ``config.data.cond_keys`` restricts them). The
objective, schedule and sampler come from ``diffusion.*`` / ``sampler.*``; EzAudio's masked-diffusion
training is on when the loader emits span masks (``data.mask_partial_prob``).

A training run is self-contained: ``workdir/config.json``, the checkpoints and ``workdir/assets/`` (the token
PCA when ``data.token_pca`` is on) are all :func:`sample_pipeline` reads; the precomputed data may be gone.
A system is a config (plus, when it needs one, a small module wrapping :func:`build_task`, as
:mod:`tta_jax.pipelines.ezaudio` does for its stages).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tta_jax import diffusion as D
from tta_jax import sections
from tta_jax.denoisers.factory import IMAGE, Denoiser, build_denoiser, dit_config, with_text_adapters
from tta_jax.audio.io import file_stem, save_spectrogram_png, write_samples  # noqa: F401 (re-exported)
from tta_jax.errors import ConfigError
from tta_jax.nn.attention import AttentionControl, captured_maps

log = logging.getLogger(__name__)

# What manifests written before the structured ``codec`` / ``text`` fields say: the id strings of
# data_pipeline/build.py before the registries (``config.codec_id`` / ``config.text_id``), by prefix.
_LEGACY_IDS = {"codec": (("toy-frame-codec(", "toy"), ("mel(", "mel")),
               "text": (("minilm-tokens(", "minilm_tokens"), ("minilm(", "minilm"), ("bytes(", "bytes"),
                        ("none", "none"))}


def check_precomputed(config, manifest: Mapping[str, Any], data_dir: str, *, warn: bool = True) -> list[str]:
    """Refuses data precomputed with another codec or text encoder than the config names: compares
    ``config.codec.name`` / ``config.text.name`` (and every setting both the config section and the manifest
    record, e.g. ``text.max_len``, nested ones such as ``text.encoders[1].max_len`` included;
    :func:`tta_jax.sections.mismatches`) with the manifest's ``codec`` / ``text`` fields, and raises
    :class:`tta_jax.config.ConfigError` naming both sides and the fix. Manifests from before those fields: the
    name is read from their ``codec_id`` / ``text_id`` where it is recognisable, else the data is accepted with
    a warning. A config section without a name is not checked. -> the warnings (also logged if ``warn``)."""
    warnings = []
    where = os.path.join(data_dir, "manifest.json")
    for section in ("codec", "text"):
        want = config.get(section, None) if hasattr(config, "get") else getattr(config, section, None)
        want = dict(want.to_dict() if hasattr(want, "to_dict") else (want or {}))
        if not want.get("name"):
            continue
        have, source = manifest.get(section), "manifest.json"
        if not isinstance(have, Mapping) or "name" not in have:
            ident = str((manifest.get("config") or {}).get(f"{section}_id", ""))
            name = next((n for prefix, n in _LEGACY_IDS[section]
                         if ident == prefix or (prefix.endswith("(") and ident.startswith(prefix))), None)
            if name is None:
                warnings.append(f"{where} does not record the {section} it was made with (precomputed before "
                                f"manifests had a '{section}' field; {section}_id={ident!r}): cannot check it "
                                f"against config.{section}.name={want['name']!r}")
                continue
            have, source = {"name": name}, f"manifest.json config.{section}_id={ident!r}"
            if name == want["name"]:
                warnings.append(f"{where} predates the manifest's '{section}' field: only the {section} name was "
                                f"checked (from {section}_id={ident!r}), not its settings")
        fix = "re-run launch.precompute with --config.{k}={v} or point config.data.precomputed_dir elsewhere"
        if have["name"] != want["name"]:
            raise ConfigError(f"data in {data_dir} was precomputed with {section}={have['name']!r} ({source}), but "
                              f"the config expects {section}={want['name']!r} (config.{section}.name); "
                              + fix.format(k=f"{section}.name", v=want["name"]))
        for key, h, w in sections.mismatches(want, have, section)[:1]:
            raise ConfigError(f"data in {data_dir} was precomputed with {key}={h!r} ({source}), but the config "
                              f"expects {key}={w!r} (config.{key}); " + fix.format(k=key, v=w))
    if warn:
        for w in warnings:
            log.warning(w)
    return warnings


def _check_data_dir(config, data_dir: str) -> None:
    """:func:`check_precomputed` against ``data_dir/manifest.json`` when there is one (errors only)."""
    path = os.path.join(data_dir, "manifest.json")
    if os.path.exists(path):
        with open(path) as f:
            check_precomputed(config, json.load(f), data_dir, warn=False)


def denoiser_of(config) -> Denoiser:
    """``config.model`` -> :class:`tta_jax.denoisers.factory.Denoiser` (``model.name``: dit / unet); with
    ``config.text.name = "multi"`` it reads each encoder's ``text:<i>`` through trainable adapters
    (:func:`tta_jax.denoisers.factory.with_text_adapters`). ``config.model.text_adapters = True`` puts one
    adapter in front of a single encoder's ``text`` too (Auffusion's CLIP-only model);
    ``config.model.text_padding`` (``"mask"`` | ``"zeros"``) is how the adapters see padded positions. These
    two keys are the wrapper's, not the denoiser family's. ``config.conditioner`` (e.g. SERST's reference
    adapter, :mod:`tta_jax.conditioners.registry`) wraps the denoiser inside the text adapters; ``config.lora``
    (:func:`tta_jax.train.lora.with_lora`: low-rank adapters, params ``{"net", "lora"}``) wraps it all."""
    from tta_jax.conditioners.registry import wrap_denoiser

    from tta_jax.train.lora import lora_enabled, with_lora

    lora = dict(config.get("lora") or {})
    if lora_enabled(lora):
        base = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") else dict(config)
        base["lora"] = {}
        return with_lora(denoiser_of(base), lora)

    fields = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
    text = config.get("text") or {}
    conditioner = config.get("conditioner")
    if text.get("name") == "multi":  # one adapter per encoder (text_adapters is implied), outside the conditioner
        padding = fields.pop("text_padding", "mask")
        fields.pop("text_adapters", None)
        return with_text_adapters(wrap_denoiser(build_denoiser(fields), conditioner),
                                  len(text.get("encoders") or ()), padding=padding)
    if fields.get("text_adapters") and text.get("name") in (None, "", "none"):
        raise ConfigError("config.model.text_adapters=True needs a text encoder (config.text.name)")
    return build_denoiser(fields, inner=lambda den: wrap_denoiser(den, conditioner))


def dit_config_from(config):
    """``config.model`` (DiTConfig fields, plus ``preset``) -> DiTConfig (a DiT system's config)."""
    fields = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
    if fields.pop("name", "dit") != "dit":
        raise ConfigError(f"config.model.name={config.model.name!r}: not a DiT config")
    return dit_config(fields)


def schedule_of(config) -> D.DiffusionSchedule:
    return D.schedule_from_config(config.diffusion)


def sampler_of(config, **overrides) -> D.SamplerConfig:
    s = config.sampler
    kw = dict(name=s.name, num_steps=s.num_steps, spacing=s.spacing, eta=s.eta, steps_offset=s.steps_offset,
              set_alpha_to_one=s.set_alpha_to_one, clip_sample=s.clip_sample, flow_shift=s.flow_shift)
    kw.update(overrides)
    return D.SamplerConfig(**kw)


# ------------------------------------------------------------------------------ latent <-> model space
def patchify(x: jax.Array, p: int) -> jax.Array:
    """[B, T, C] -> [B, T/p, p*C]: p consecutive frames per token (T must be divisible by p)."""
    if p == 1:
        return x
    b, t, c = x.shape
    if t % p:
        raise ValueError(f"latent length {t} is not divisible by data.patch_frames={p}")
    return x.reshape(b, t // p, p * c)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    """[B, T/p, p*C] -> [B, T, C]."""
    if p == 1:
        return x
    b, n, pc = x.shape
    return x.reshape(b, n * p, pc // p)


def patch_mask(mask: jax.Array, p: int) -> jax.Array:
    """Frame mask [B, T] -> token mask [B, T/p] (a token counts if any of its frames does)."""
    if p == 1:
        return mask
    b, t = mask.shape
    return mask.reshape(b, t // p, p).max(axis=-1)


def to_tokens(x: jax.Array, p: int, pca=None, *, crop: bool = False) -> jax.Array:
    """Sequence latents [..., T, C] in the codec's space -> the denoiser's tokens [..., T/p, p*C] (or
    [..., T/p, k] through ``pca``, a :class:`tta_jax.codecs.token_pca.TokenPCA`); leading axes are kept
    (e.g. K references [B, K, T, C]). ``crop``: drop the last ``T % p`` frames instead of refusing them (a
    reference clip's length need not be a multiple of the patch)."""
    x = jnp.asarray(x)
    lead, (t, c) = x.shape[:-2], x.shape[-2:]
    if crop:
        if t < p:
            raise ValueError(f"a latent of {t} frames {tuple(x.shape)} is shorter than one {p}-frame token "
                             f"(config.data.patch_frames): give a longer reference clip")
        t -= t % p
        x = x[..., :t, :]
    y = patchify(x.reshape((-1, t, c)), p)
    if pca is not None:
        y = pca.encode(y)
    return y.reshape(lead + y.shape[1:])


def patch_batch(batch: Mapping[str, Any], p: int, pca=None, latent_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Loader batch -> token batch: latent [B, T, C] -> [B, T/p, p*C] (-> [B, T/p, k] through ``pca``, a
    :class:`tta_jax.codecs.token_pca.TokenPCA`), frame masks -> token masks. ``latent_keys``: other keys
    holding sequence latents of the same codec with leading axes (DreamAudio's ``ref_latent`` [B, K, T_r, C];
    the conditioner spec's ``latent_keys``), moved to the same token space (their last ``T_r % p`` frames
    dropped). Image latents [B, H, T, C] pass unchanged (p = 1, no PCA; checked by :func:`check_latent_space`)."""
    out = dict(batch)
    if np.ndim(batch["latent"]) != 3:
        return out
    out["latent"] = to_tokens(batch["latent"], p, pca)
    out = references_to_tokens(out, p, pca, latent_keys)
    for k in ("mask", "latent_valid"):
        if k in batch:
            out[k] = patch_mask(batch[k], p)
    return out


def references_to_tokens(cond: Mapping[str, Any], p: int, pca=None, latent_keys: Sequence[str] = ()
                         ) -> dict[str, Any]:
    """``cond`` with each of ``latent_keys`` it holds (sequence latents of the system codec with leading axes,
    e.g. ``ref_latent`` [B, K, T_r, C]) moved to the denoiser's token space [B, K, T_r // p, p*C or k] (the last
    ``T_r % p`` frames dropped): what the loss (:func:`patch_batch`) and sampling (:func:`generate_audio`) both
    do to references. Sequence latents only."""
    out = dict(cond)
    out.update({k: to_tokens(cond[k], p, pca, crop=True) for k in latent_keys if k in cond})
    return out


def check_latent_space(config, denoiser: Denoiser) -> None:
    """Token patching and the token PCA are for sequence latents; refuse them for image latents by key."""
    if denoiser.layout == IMAGE:
        for key, off in (("patch_frames", 1), ("token_pca", 0)):
            if int(config.data.get(key, off) or off) != off:
                raise ConfigError(f"config.data.{key}={config.data.get(key)} applies to sequence latents; "
                                  f"config.model.name={denoiser.name!r} denoises image latents (set it to {off})")


def reference_latent_keys(config) -> tuple[str, ...]:
    """The conditioner's cond keys that hold codec latents (registry spec ``latent_keys``; DreamAudio's
    ``ref_latent``): the task and the sampler move them to the denoiser's token space with the target."""
    from tta_jax.conditioners.registry import reference_spec_of

    spec = reference_spec_of(config.get("conditioner"))
    return tuple(spec["latent_keys"]) if spec is not None else ()


def time_mask_like(mask: jax.Array, x: jax.Array) -> jax.Array:
    """A per-frame mask [B, T] (or a full-resolution one, x's shape without channels) broadcastable to x
    ([B, T, C] -> [B, T, 1]; [B, H, T, C] -> [B, 1, T, 1]): time is axis -2 in both layouts."""
    mask = jnp.asarray(mask)
    if mask.ndim == x.ndim - 1:
        return mask[..., None]
    if mask.ndim == 2 and x.ndim == 4:
        return mask[:, None, :, None]
    raise ValueError(f"mask {mask.shape} does not fit latents {x.shape} (expected [B, T] or {x.shape[:-1]})")


# ------------------------------------------------------------------------------ conditioning
def cond_keys_of(config, denoiser: Denoiser) -> tuple[str, ...]:
    """The ``cond`` keys the task feeds: ``config.data.cond_keys`` when set (each must be one the denoiser
    reads), else every key the denoiser's configuration declares (:attr:`Denoiser.cond_keys`)."""
    keys = tuple(config.data.get("cond_keys", ()) or ())
    if not keys:
        return denoiser.cond_keys
    bad = [k for k in keys if k not in denoiser.cond_keys]
    if bad:
        raise ConfigError(f"config.data.cond_keys names {bad[0]!r}, which config.model ({denoiser.name}) does "
                          f"not read; it reads {list(denoiser.cond_keys)}")
    return keys


def cond_from_batch(batch: Mapping[str, Any], keys: Sequence[str] = ("text", "text_mask", "mask",
                                                                     "masked_latent")) -> dict[str, Any]:
    """Loader batch -> denoiser ``cond``: every key of ``keys`` the batch has. ``masked_latent`` (EzAudio's
    clean input) is the batch's latent, given whenever the batch has a ``mask``."""
    cond = {}
    for k in keys:
        if k == "masked_latent":
            if "mask" in batch:
                cond[k] = batch["latent"]
        elif k in batch:
            cond[k] = batch[k]
    return cond


# ------------------------------------------------------------------------------ token PCA (sequence latents)
ASSETS = "assets"              # workdir/assets/: what sampling needs besides config.json and the params
TOKEN_PCA_ASSET = "token_pca.npz"


def saved_token_pca(config, workdir: str | None = None) -> str | None:
    """The token PCA file a run samples with: ``workdir/assets/token_pca.npz`` when the run saved one, else that
    of the run it was started from (``config.train.init_from``, a workdir: fine-tuning, e.g. LoRA, on other data
    keeps the base model's token coordinates); None when neither exists."""
    init_from = (config.get("train") or {}).get("init_from")
    for run in (workdir, init_from):
        path = os.path.join(run, ASSETS, TOKEN_PCA_ASSET) if run and os.path.isdir(str(run)) else None
        if path and os.path.exists(path):
            return path
    return None


def token_pca_of(config, workdir: str | None = None):
    """The fitted token PCA when ``config.data.token_pca = k > 0``, its directions fainter than
    ``config.data.token_pca_whiten_below`` scaled to unit variance (:meth:`TokenPCA.whitened`); else None.

    Read from the run's saved asset (:func:`saved_token_pca`: ``workdir``'s, else ``config.train.init_from``'s;
    sampling needs no training data), else fitted from (and cached in) ``data.precomputed_dir``'s training
    split."""
    k = int(config.data.get("token_pca", 0) or 0)
    if k <= 0:
        return None
    from tta_jax.codecs import token_pca

    saved = saved_token_pca(config, workdir)
    if saved:
        pca = token_pca.load(saved)
        if pca.k != k:
            raise ConfigError(f"{saved} holds a {pca.k}-direction token PCA but config.data.token_pca={k}")
        patch = int(config.data.get("patch_frames", 1) or 1)
        if pca.patch_frames != patch:
            raise ConfigError(f"{saved} holds a token PCA of {pca.patch_frames}-frame patches but "
                              f"config.data.patch_frames={patch} (a base run's PCA needs its patch size)")
    else:
        data_dir = config.data.precomputed_dir
        if not data_dir or not os.path.isdir(data_dir):
            where = f"{os.path.join(workdir, ASSETS, TOKEN_PCA_ASSET)} does not exist and " if workdir else ""
            raise FileNotFoundError(f"config.data.token_pca={k}: {where}the precomputed data it is fitted on is "
                                    f"missing (config.data.precomputed_dir={data_dir!r} is not a directory)")
        _check_data_dir(config, data_dir)  # fitting on another codec's latents fails with a puzzling shape error
        pca = token_pca.load_or_fit(data_dir, int(config.data.patch_frames), k)
    return pca.whitened(float(config.data.get("token_pca_whiten_below", 0.0)))


LATENT_ASSET = "latent.json"


def save_assets(config, workdir: str, latent_shape: Sequence[int] | None = None) -> list[str]:
    """Writes what sampling needs besides the params into ``workdir/assets/``, so ``launch.sample --workdir``
    works with the training data deleted: ``latent.json`` (one training example's codec latent shape, [T, C]
    or [H, T, C]: the default sample length) and the unwhitened token PCA when the config uses one (that of
    ``config.train.init_from`` when the run starts from one, see :func:`saved_token_pca`). -> paths."""
    d = os.path.join(workdir, ASSETS)
    os.makedirs(d, exist_ok=True)
    paths = []
    if latent_shape is not None:
        path = os.path.join(d, LATENT_ASSET)
        with open(path, "w") as f:
            json.dump({"latent_shape": [int(x) for x in latent_shape]}, f)
        paths.append(path)
    k = int(config.data.get("token_pca", 0) or 0)
    if k <= 0:
        return paths
    from tta_jax.codecs import token_pca

    path = os.path.join(d, TOKEN_PCA_ASSET)
    if not os.path.exists(path):
        base = saved_token_pca(config)    # a run started from another keeps that run's token PCA
        if base:
            pca = token_pca.load(base)
        else:
            _check_data_dir(config, config.data.precomputed_dir)
            pca = token_pca.load_or_fit(config.data.precomputed_dir, int(config.data.patch_frames), k)
        token_pca.save(pca, path)
    return paths + [path]


def trained_latent_frames(workdir: str | None) -> int | None:
    """The latent length (frames) the run in ``workdir`` trained on (``assets/latent.json``), or None."""
    path = os.path.join(workdir, ASSETS, LATENT_ASSET) if workdir else None
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return int(json.load(f)["latent_shape"][-2])


# ------------------------------------------------------------------------------ Wiener preconditioning
def precondition_var_of(config, pca=None, workdir: str | None = None):
    """Per-channel data variance for ``config.diffusion.precondition = "wiener"`` (else None): the token PCA's
    channel variances [k] when the config names one (``pca``, or :func:`token_pca_of`), else the scalar
    ``diffusion.sigma_data ** 2``. The preconditioned denoiser predicts x0, so it needs
    ``diffusion.prediction_type = "sample"``."""
    d = config.diffusion
    kind = d.get("precondition", "none")
    if kind in (None, "", "none"):
        return None
    if kind != "wiener":
        raise ValueError(f"config key 'diffusion.precondition' = {kind!r} is not one of ['none', 'wiener']")
    if d.prediction_type != "sample":
        raise ValueError(f"config key 'diffusion.precondition' = 'wiener' wraps an x0-predicting denoiser; it "
                         f"needs diffusion.prediction_type = 'sample', got {d.prediction_type!r}")
    pca = token_pca_of(config, workdir) if pca is None else pca
    if pca is not None:
        return jnp.asarray(pca.variances)
    if not float(d.sigma_data) > 0.0:
        raise ValueError(f"config key 'diffusion.sigma_data' = {d.sigma_data} must be > 0 (the data's std)")
    return jnp.float32(float(d.sigma_data) ** 2)


def preconditioned(net_fn: Callable, schedule: D.DiffusionSchedule, data_var) -> Callable:
    """``net_fn(x [B, ..., C], t [B], cond) -> out`` -> the same signature returning the Wiener-preconditioned
    x0 estimate (:func:`tta_jax.diffusion.objectives.precondition_x0`); identity when ``data_var`` is None. The
    clean latent of EzAudio's masked-diffusion input (``cond["masked_latent"]``) is scaled by ``1/sqrt(data_var)``
    too, so everything the network reads has unit variance per channel."""
    if data_var is None:
        return net_fn
    inv_std = jax.lax.rsqrt(jnp.asarray(data_var, jnp.float32))

    def fn(x_t, t, cond):
        if "masked_latent" in cond:
            cond = dict(cond, masked_latent=cond["masked_latent"] * inv_std)
        return D.precondition_x0(schedule, data_var, x_t, t, lambda x_in: net_fn(x_in, t, cond))

    return fn


def precondition_loss_weight(schedule: D.DiffusionSchedule, data_var, power: float):
    """Loss weights of a Wiener-preconditioned denoiser (``diffusion.precondition_loss_power`` p): the x0 error
    times ``c_out^(-2p)``. p = 0 is the plain x0 loss, which weighs each channel by its posterior variance (at
    high t the loud channels dominate); p = 1 is EDM's: the network's own output error, every channel and t
    alike. -> ``(t [B], x0 [B, ..., C]) -> [B, 1.., C]`` weights, or None for p = 0 or no preconditioning."""
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"config key 'diffusion.precondition_loss_power' = {power} must be in [0, 1]")
    if power != 0.0 and data_var is None:
        raise ValueError(f"config key 'diffusion.precondition_loss_power' = {power} weights a preconditioned "
                         f"denoiser's loss; set diffusion.precondition = 'wiener' too (it is 'none')")
    if data_var is None or power == 0.0:
        return None

    def weight(t, x0):
        a = schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (x0.ndim - 1))
        _, _, c_out = D.wiener_coefficients(a, data_var)
        return jnp.power(jnp.square(c_out), -power)

    return weight


# ------------------------------------------------------------------------------ the training objective
def make_loss_fn(denoiser: Denoiser, config, pca=None):
    """-> ``loss_fn(params, batch, rng) -> (loss, metrics)`` for the trainer (pure), for any denoiser and
    latent layout. ``pca``: the token PCA the denoiser works in; by default the one ``config.data.token_pca``
    names (:func:`token_pca_of`). The ``cond`` keys come from :func:`cond_keys_of`."""
    check_latent_space(config, denoiser)
    pca = token_pca_of(config) if pca is None else pca
    schedule = schedule_of(config)
    d = config.diffusion
    flow_time = dict(sampler=d.flow_time_sampler, shift=d.flow_shift)
    keys = cond_keys_of(config, denoiser)

    data_var = precondition_var_of(config, pca)
    error_weight = precondition_loss_weight(schedule, data_var, float(d.get("precondition_loss_power", 0.0)))

    def apply_fn(params, x_t, t, cond, rng):
        def net(x, t_, c):
            return denoiser.apply(params, x, t_, c, train=True, rngs={"dropout": rng})

        return preconditioned(net, schedule, data_var)(x_t, t, cond)

    p = int(config.data.patch_frames)
    if pca is not None and (denoiser.in_channels, denoiser.out_channels) != (pca.k, pca.k):
        raise ValueError(f"config.model.in_channels/out_channels = {denoiser.in_channels}/"
                         f"{denoiser.out_channels}, but config.data.token_pca={pca.k} gives {pca.k}-channel tokens")

    latent_keys = reference_latent_keys(config)
    t_min = int(d.get("train_t_min", 0) or 0)
    if t_min and (d.prediction_type == "flow" or not 0 < t_min < schedule.num_train_timesteps):
        raise ConfigError(f"config.diffusion.train_t_min={t_min}: a DDPM timestep in [1, "
                          f"{schedule.num_train_timesteps}) (not for flow matching)")

    def loss_fn(params, batch, rng):
        batch = patch_batch(batch, p, pca, latent_keys)
        loss_mask = batch.get("latent_valid")
        if "mask" in batch:  # EzAudio: loss only on frames to generate
            loss_mask = batch["mask"] if loss_mask is None else loss_mask * batch["mask"]
        if loss_mask is not None and batch["latent"].ndim == 4:  # image latents: time is axis -2
            loss_mask = loss_mask[:, None, :]
        b = {"latent": batch["latent"], "cond": cond_from_batch(batch, keys), "loss_mask": loss_mask}
        return D.diffusion_loss(apply_fn, params, b, rng, schedule,
                                min_snr_gamma=d.min_snr_gamma or None, min_snr_variant=d.min_snr_variant,
                                flow_time=flow_time if d.prediction_type == "flow" else None,
                                error_weight=error_weight, t_min=t_min)

    return loss_fn


# ------------------------------------------------------------------------------ sampling
def _pad_to(x, length: int, value=0):
    pad = length - x.shape[1]
    if pad <= 0:
        return x
    return jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2), constant_values=value)


def pad_context_pairs(cond: dict, uncond: dict) -> tuple[dict, dict]:
    """One batched CFG call needs equal context lengths in both branches: every sequence context present in
    both (``text`` [B, L, D] with ``text_mask`` [B, L], likewise ``acoustic`` + ``acoustic_mask``, ...) is padded
    to the longer length with zeros that its mask switches off (mask False past L)."""
    cond, uncond = dict(cond), dict(uncond)
    for key in [k for k in cond if f"{k}_mask" in cond and k in uncond and f"{k}_mask" in uncond]:
        mk = f"{key}_mask"
        length = max(cond[key].shape[1], uncond[key].shape[1])
        for c in (cond, uncond):
            c[key] = _pad_to(jnp.asarray(c[key]), length)
            c[mk] = _pad_to(jnp.asarray(c[mk]).astype(bool), length, False)
    return cond, uncond


def _context_len(cond: Mapping[str, Any]) -> int:
    """Length Lk of the text context the denoiser cross-attends to: ``text`` [B, L, D], or the concatenated
    ``text:<i>`` of several encoders."""
    if "text" in cond:
        return int(cond["text"].shape[1])
    lens = [int(v.shape[1]) for k, v in cond.items() if k.startswith("text:")]
    if not lens:
        raise ValueError(f"token_weights need a text context; cond has {sorted(cond)}")
    return sum(lens)


@dataclasses.dataclass(frozen=True)
class EditOptions:
    """The static part of an edit (:meth:`Generator.edit`): first step run (SDEdit), prompt-to-prompt pairs
    (source and edited rows sharing the noise, attention swapped while the model time is above the dynamic
    cut), RePaint on/off/auto (None), capture maps."""

    start_step: int = 0
    pairs: bool = False
    repaint: bool | None = None
    capture: bool = False


@dataclasses.dataclass
class Generator:
    """Jitted conditional sampling for any :class:`Denoiser` (sequence or image latents).

    ``generate(params, cond, uncond, key, shape)`` -> latents [B, *shape] in the denoiser's space.
    ``cond``: the conditioned branch (batch B); ``uncond``: the keys CFG replaces in the unconditioned branch
    (e.g. the empty prompt's ``text``/``text_mask``, batch 1 or B); every other key of ``cond`` (EzAudio's
    ``mask``/``masked_latent``, a style or reference that is kept) is shared by both branches. The sampler
    loop and CFG are one jit per (batch, shape). With ``mask`` (1 = generate; per frame [B, T] or full
    resolution) and ``masked_latent`` the frames not generated are pasted back exactly; a denoiser without a
    mask input keeps them on the source's noisy path during sampling (RePaint). :meth:`edit` adds SDEdit,
    prompt-to-prompt word swap, token re-weighting and cross-attention maps (:mod:`tta_jax.pipelines.editing`
    drives them from audio and prompts).
    """

    denoiser: Denoiser
    schedule: D.DiffusionSchedule
    sampler: D.SamplerConfig
    guidance_scale: float = 3.0
    guidance_rescale: float = 0.0
    guidance_mode: str = "cfg"
    data_var: Any = None   # per-channel data variance of a Wiener-preconditioned denoiser (precondition_var_of)

    def __post_init__(self):
        self._jitted = jax.jit(self._generate, static_argnames=("shape", "opts"))

    def _generate(self, params, cond, uncond, key, shape: tuple, masked_latent=None, mask=None, source=None,
                  token_weights=None, swap_cut=None, opts: EditOptions = EditOptions(), guidance=None,
                  rescale=None):
        b = jax.tree_util.tree_leaves(cond)[0].shape[0]
        n = b // 2 if opts.pairs else b
        shape = tuple(shape)
        k_init, k_loop = jax.random.split(key)
        x_T = jax.random.normal(k_init, (n,) + shape, jnp.float32)
        levels = D.step_levels(self.schedule, self.sampler, opts.start_step)
        noises = None
        if opts.pairs:  # prompt-to-prompt: the source and the edited row of a pair share every noise draw
            x_T = jnp.concatenate([x_T, x_T], 0)
            if D.is_stochastic(self.sampler):
                z = jax.random.normal(k_loop, (len(levels), n) + shape, jnp.float32)
                noises = jnp.concatenate([z, z], 1)
        if source is not None:  # SDEdit: the source at the noise level of the first step that runs
            x_T = D.noise_to_level(self.schedule, source, x_T, levels[0])
        model_mask = mask is not None and "mask" in self.denoiser.cond_keys
        if model_mask:  # EzAudio: the network sees the clean part
            cond = dict(cond, mask=mask, masked_latent=masked_latent)
        uncond = {**cond, **uncond}
        # conditions that depend on neither x_t nor t (reference features): computed once, outside the loop
        cond = self.denoiser.prepare(params, cond, x_T)
        uncond = self.denoiser.prepare(params, uncond, x_T)
        post = None
        if mask is not None and (not model_mask if opts.repaint is None else opts.repaint):
            known = time_mask_like(mask, x_T) < 0.5   # RePaint: keep the known region on the source's path
            k_paint = jax.random.fold_in(k_loop, 1)
            x_T = jnp.where(known, D.noise_to_level(self.schedule, masked_latent, x_T, levels[0]), x_T)

            def post(x, i, level):
                z = jax.random.normal(jax.random.fold_in(k_paint, i), x.shape, x.dtype)
                return jnp.where(known, D.noise_to_level(self.schedule, masked_latent, z, level), x)

        control_for = self._control_fn(b, n, token_weights, swap_cut if opts.pairs else None)

        def net(x, t, cd):
            ctl = control_for(x.shape[0], t)
            return self.denoiser.apply(params, x, t, cd if ctl is None else dict(cd, attn_control=ctl), train=False)

        model_fn = preconditioned(net, self.schedule, self.data_var)
        denoise = D.cfg_denoiser(model_fn, cond, uncond, mode=self.guidance_mode,
                                 scale=self.guidance_scale if guidance is None else guidance,
                                 rescale=self.guidance_rescale if rescale is None else rescale)
        out = D.sample(denoise, x_T, self.schedule, self.sampler, k_loop, noises=noises, post_step=post,
                       start_step=opts.start_step, return_trajectory=opts.capture)
        x0, traj = out if opts.capture else (out, None)
        if mask is not None:  # paste back the frames that were not to be generated
            x0 = jnp.where(time_mask_like(mask, x0) > 0.5, x0, masked_latent)
        if not opts.capture:
            return x0
        return x0, self._attention_maps(params, cond, jnp.concatenate([x_T[None], traj[:-1]], 0), levels, shape)

    def _control_fn(self, b: int, n: int, token_weights, swap_cut):
        """-> ``(rows, t) -> AttentionControl | None`` for a model call on ``rows`` rows ([cond b; uncond b]
        with CFG, the b cond rows without): ``token_weights`` [b, Lk] on the cond rows (uncond rows 1); word
        swap (``swap_cut``, a model time; dynamic, so every tau shares one compilation): while the model time is
        at or above it, the edited rows' (cond rows n..2n) cross-attention probabilities are the source rows'
        (0..n)."""
        if token_weights is None and swap_cut is None:
            return lambda rows, t: None

        def control_for(rows, t):
            w = None
            if token_weights is not None:
                w = token_weights if rows == b else jnp.concatenate([token_weights, jnp.ones_like(token_weights)])
            replace = None
            if swap_cut is not None:
                active = jnp.asarray(t).reshape(-1)[0].astype(jnp.float32) >= swap_cut

                def replace(probs, layer):
                    return jnp.where(active, probs.at[n:2 * n].set(probs[:n]), probs)

            return AttentionControl(token_weights=w, replace_probs=replace)

        return control_for

    def _attention_maps(self, params, cond, inputs, levels, shape):
        """Cross-attention maps of the conditioned branch at every step's input state ``inputs`` [R, B, ...]
        (the sampling trajectory), averaged over heads, layers and steps -> [B, *grid, Lk] (grid: (T,) or
        (H, T)), each position's distribution over the text tokens summing to 1."""
        grid = tuple(shape[:-1])

        def one(args):
            x, t = args
            box = []

            def capture_net(xi, ti, cd):
                out, state = self.denoiser.module.apply(
                    {"params": params}, xi, ti, dict(cd, attn_control=AttentionControl(capture=True)), train=False,
                    mutable=["intermediates"])
                box.append(state["intermediates"])
                return out

            preconditioned(capture_net, self.schedule, self.data_var)(x, jnp.full((x.shape[0],), t), cond)
            return captured_maps(box[0], grid)

        maps = jax.lax.map(one, (inputs, D.model_time(self.schedule, levels))).mean(0)
        return maps / jnp.maximum(maps.sum(-1, keepdims=True), 1e-12)

    @staticmethod
    def _prepare(cond, uncond):
        cond = {k: v if k == "refs" else jnp.asarray(v) for k, v in cond.items()}
        b = jax.tree_util.tree_leaves(cond)[0].shape[0]
        uncond = {k: v if k == "refs" else jnp.broadcast_to(jnp.asarray(v), (b,) + tuple(np.shape(v)[1:]))
                  for k, v in uncond.items()}
        return pad_context_pairs(cond, uncond)

    def traceable(self, params, cond: Mapping[str, Any], uncond: Mapping[str, Any], key, shape: Sequence[int], *,
                  guidance=None, rescale=None):
        """:meth:`generate`'s computation without its jit, to trace inside a larger function (the exported sampler,
        :mod:`tta_jax.pipelines.export`) or to ``jax.jit(...).lower`` (benchmarks/prepare_once.py) -> latents
        [B, *shape]. ``guidance`` / ``rescale`` default to the generator's (values or tracers)."""
        cond, uncond = self._prepare(cond, uncond)
        return self._generate(params, cond, uncond, key, tuple(int(s) for s in shape), guidance=guidance,
                              rescale=rescale)

    def generate(self, params, cond: Mapping[str, Any], uncond: Mapping[str, Any], key, shape: Sequence[int], *,
                 masked_latent=None, mask=None):
        cond, uncond = self._prepare(cond, uncond)
        if mask is not None:
            mask, masked_latent = jnp.asarray(mask, jnp.float32), jnp.asarray(masked_latent, jnp.float32)
        # guidance and rescale enter as run-time values (as in an exported sampler): changing them does not
        # recompile, and the exported sampler runs this very graph (tta_jax.pipelines.export)
        return self._jitted(params, cond, uncond, key, shape=tuple(int(s) for s in shape),
                            masked_latent=masked_latent, mask=mask, guidance=jnp.float32(self.guidance_scale),
                            rescale=jnp.float32(self.guidance_rescale))

    def edit(self, params, cond: Mapping[str, Any], uncond: Mapping[str, Any], key, shape: Sequence[int], *,
             source=None, strength: float | None = None, mask=None, masked_latent=None, repaint: bool | None = None,
             pairs: bool = False, tau: float = 0.0, token_weights=None, attention_maps: bool = False):
        """:meth:`generate` with the editing mechanisms, for any denoiser and layout (latents in its space):

        - SDEdit (``source`` [B, *shape], ``strength`` in [0, 1]): the source is noised to the level of step
          k = :func:`~tta_jax.diffusion.samplers.start_step_for_strength` of the sampler's own grid and only
          steps k.. run with ``cond``'s prompt; strength 0 returns ``source`` unchanged.
        - Inpainting (``mask`` [B, T] or full resolution, 1 = generate; ``masked_latent``, default ``source``):
          with ``repaint`` (default: when the denoiser has no mask input) the known region of x_t is replaced
          by the source noised to x_t's level after every step (RePaint); the known region is pasted back
          exactly at the end either way.
        - Prompt-to-prompt (``pairs``): ``cond`` holds 2n rows, n source prompts then their n edits, sampled
          with the same noise; for the first ``tau`` fraction of the steps the edited rows' cross-attention
          probabilities are replaced by their source rows' (word swap). tau = 0 is plain sampling.
        - Re-weighting (``token_weights`` [B, Lk] or [Lk], Lk the text context length of ``cond``; shorter is
          padded with 1): the conditioned branch's cross-attention probabilities are scaled per token.
        - ``attention_maps``: also return the conditioned branch's cross-attention maps [B, *grid, Lk] (grid
          (T,) for sequences, (H, T) for images), averaged over heads, layers and steps, summing to 1 over Lk.

        -> latents [B, *shape] (and the maps)."""
        cond, uncond = self._prepare(cond, uncond)
        b = jax.tree_util.tree_leaves(cond)[0].shape[0]
        shape = tuple(int(s) for s in shape)
        steps = self.sampler.num_steps
        start = 0
        if source is not None:
            source = jnp.broadcast_to(jnp.asarray(source, jnp.float32), (b,) + shape)
            start = D.start_step_for_strength(steps, 1.0 if strength is None else strength)
            if start >= steps:  # strength 0: nothing to run
                if attention_maps:
                    raise ValueError("strength=0 runs no step: there are no attention maps to capture")
                return source
        elif strength is not None:
            raise ValueError("strength (SDEdit) needs a source latent")
        if mask is not None:
            masked_latent = source if masked_latent is None else masked_latent
            if masked_latent is None:
                raise ValueError("inpainting needs the known latent: pass masked_latent or source")
            mask = jnp.asarray(mask, jnp.float32)
            masked_latent = jnp.broadcast_to(jnp.asarray(masked_latent, jnp.float32), (b,) + shape)
        if not 0.0 <= float(tau) <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        if pairs and b % 2:
            raise ValueError(f"pairs=True needs 2n conditioned rows (n sources, then n edits), got {b}")
        if tau > 0 and not pairs:
            raise ValueError("tau > 0 (word swap) needs pairs=True: source and edited prompts in one batch")
        swap_cut = self._swap_cut(start, tau) if pairs else None
        if token_weights is not None:
            lk = _context_len(cond)
            w = jnp.asarray(token_weights, jnp.float32)
            w = jnp.broadcast_to(w, (b, w.shape[-1]))
            if w.shape[-1] > lk:
                raise ValueError(f"token_weights has {w.shape[-1]} tokens, the text context only {lk}")
            token_weights = jnp.pad(w, ((0, 0), (0, lk - w.shape[-1])), constant_values=1.0)
        opts = EditOptions(start_step=start, pairs=bool(pairs), repaint=repaint, capture=bool(attention_maps))
        return self._jitted(params, cond, uncond, key, shape=shape, masked_latent=masked_latent, mask=mask,
                            source=source, token_weights=token_weights, swap_cut=swap_cut, opts=opts)

    def _swap_cut(self, start: int, tau: float) -> jax.Array:
        """The model time from which on (downwards) the word swap stops: the first floor(tau * R) of the R
        scan rows (from ``start``) swap; +inf (never) for tau = 0. Rows of equal time (PNDM's repeated first
        timestep) swap together."""
        levels = D.step_levels(self.schedule, self.sampler, start)
        mt = np.asarray(levels, np.float64) * (self.schedule.num_train_timesteps
                                                if self.schedule.prediction_type == "flow" else 1)
        k = int(np.floor(float(tau) * len(mt) + 1e-9))
        cut = np.inf if k == 0 else -np.inf if k >= len(mt) else 0.5 * (mt[k - 1] + mt[k])
        return jnp.float32(cut)


def generator_from_config(denoiser: Denoiser, config, workdir: str | None = None, **sampler_overrides) -> Generator:
    s = config.sampler
    return Generator(denoiser=denoiser, schedule=schedule_of(config), sampler=sampler_of(config, **sampler_overrides),
                     guidance_scale=s.guidance_scale, guidance_rescale=s.guidance_rescale,
                     guidance_mode=s.guidance_mode, data_var=precondition_var_of(config, workdir=workdir))


def model_latent_shape(config, denoiser: Denoiser, latent_shape: Sequence[int], pca=None) -> tuple[int, ...]:
    """One example's codec latent shape ([T, C] or [H, T, C]) -> the denoiser's input shape (sequences:
    ``[T/p, p*C]`` or ``[T/p, k]`` with a token PCA; images unchanged)."""
    latent_shape = tuple(int(s) for s in latent_shape)
    denoiser.check_latent_shape(latent_shape)
    if denoiser.layout == IMAGE:
        return latent_shape
    p = int(config.data.patch_frames)
    t, c = latent_shape
    return (t // p, pca.k if pca is not None else p * c)


def example_text_cond(shapes: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A manifest's ``shapes`` -> zero text features of one example, by cond key (``txt:text:0`` [L, D] ->
    ``text:0`` [1, L, D]; masks bool) for :meth:`Denoiser.init`."""
    out = {}
    for k, v in shapes.items():
        if k.startswith("txt:"):
            name = k[4:]
            out[name] = np.zeros((1,) + tuple(v[0]), bool if "mask" in name else np.float32)
    return out


def reference_augment(spec: Mapping[str, Any] | None) -> dict:
    """The conditioner's reference augmentation (registry spec) -> LoaderConfig fields (training only)."""
    if spec is None:
        return {}
    return {"reference_concept_dropout": float(spec["concept_drop"]),
            "reference_content_mask": float(spec["content_mask"]),
            "reference_content_keys": tuple(spec["content_keys"])}


def build_task(config, mesh):
    """Trainer builder (``config.builder = "tta_jax.pipelines.tta:build_task"``): grain loader over
    ``config.data.precomputed_dir``, the denoiser from ``config.model`` (any family) and the configured
    objective. The task saves the sampling assets (:func:`save_assets`) into the workdir."""
    from tta_jax.conditioners.registry import reference_spec_of
    from tta_jax.data.loader import LoaderConfig, make_dataset, read_manifest
    from tta_jax.train.loop import Task

    data_dir = config.data.precomputed_dir
    if not data_dir:
        raise ConfigError("config.data.precomputed_dir is empty: run launch.precompute first and point to it")
    manifest = read_manifest(data_dir)
    check_precomputed(config, manifest, data_dir)  # before anything is built from data of another codec
    shapes = manifest.get("shapes", {})
    den = denoiser_of(config)
    check_latent_space(config, den)
    spec = reference_spec_of(config.get("conditioner"))
    if spec is not None and not any(k.startswith("ref:") for k in shapes):
        raise ConfigError(f"config.conditioner reads reference audio, but {data_dir} was precomputed without "
                          f"references: precompute with --system <this config> and config.references.label set")
    missing = [k for k in (spec or {}).get("features", ()) if f"ref:{k}" not in shapes]
    if missing:
        raise ConfigError(f"config.conditioner reads {missing[0]!r}, but the references in {data_dir} were "
                          f"precomputed for another conditioner (they hold {sorted(k for k in shapes if k.startswith('ref:'))})")
    nproc = jax.process_count()
    lcfg = LoaderConfig.from_experiment(config.data, config.train.batch_size // nproc, config.seed,
                                        caption_dropout=config.diffusion.cond_drop_prob,
                                        reference_dropout=float(config.diffusion.get("ref_drop_prob", 0.0)),
                                        **reference_augment(spec))
    latent = list(shapes["latent"][0])
    den.check_latent_shape(tuple(latent), f"{data_dir}/manifest.json 'latent'")
    if lcfg.crop_frames:
        latent[-2] = lcfg.crop_frames
    text_len = shapes["txt:text"][0][0] if "txt:text" in shapes else 1
    example = example_text_cond(shapes)
    train_iter = iter(make_dataset(data_dir, lcfg))
    pca = token_pca_of(config)
    shape = model_latent_shape(config, den, latent, pca)
    return Task(init_fn=lambda rng: den.init(rng, shape, text_len, example), loss_fn=make_loss_fn(den, config, pca),
                train_iter=train_iter, save_assets=lambda workdir: save_assets(config, workdir, latent))


# --------------------------------------------------------------------------------------------------
# End-to-end sampling: prompts -> text states -> latents -> audio
# --------------------------------------------------------------------------------------------------
def text_conds(encode, prompts: Sequence[str], negative: str = "empty") -> tuple[dict, dict]:
    """A registry text encoder's ``encode(texts) -> {"text": [B, L, D], "text_mask": [B, L]}`` -> the
    conditioned branch for ``prompts`` and the unconditioned one: ``negative="empty"``: the empty prompt's
    encoding (batch 1); ``"zeros"`` (Auffusion): ``text_null`` True, i.e. the conditioned branch's text
    replaced by an all-zero context after the adapters (the conditioned branch gets ``text_null`` False);
    ``"prompt"``: the prompts themselves (a reference-conditioned system then guides on its references alone)."""
    cond = {k: jnp.asarray(v) for k, v in encode(list(prompts)).items()}
    if negative == "prompt":
        return cond, dict(cond)
    if negative == "zeros":
        b = jax.tree_util.tree_leaves(cond)[0].shape[0]
        cond["text_null"] = jnp.zeros((b,), bool)
        return cond, {"text_null": jnp.ones((1,), bool)}
    if negative != "empty":
        raise ConfigError(f"config.sampler.negative={negative!r}; expected 'empty', 'zeros' or 'prompt'")
    uncond = {k: jnp.asarray(v) for k, v in encode([""]).items()}
    return cond, uncond


def check_params(denoiser: Denoiser, params, shape: Sequence[int], context_len: int, where: str,
                 example_cond: Mapping[str, Any] | None = None) -> None:
    """Raises ConfigError naming the first parameter whose path or shape differs between ``params`` (loaded
    from ``where``) and what ``config.model`` builds (evaluated abstractly; nothing is allocated).
    ``example_cond``: as for :meth:`Denoiser.init`."""
    from flax.core import meta

    want = jax.eval_shape(lambda r: meta.unbox(denoiser.init(r, tuple(shape), context_len, example_cond)),
                          jax.random.PRNGKey(0))
    check_param_shapes(params, want, where)


def check_param_shapes(params, want, where: str, what: str = "the model config.model builds") -> None:
    """ConfigError naming the first parameter whose path or shape differs between ``params`` (loaded from
    ``where``) and ``want`` (a tree of arrays or ShapeDtypeStructs: ``what``)."""
    from flax.core import meta

    from tta_jax.train.optim import path_str

    flat_want = {path_str(p): tuple(np.shape(v)) for p, v in jax.tree_util.tree_flatten_with_path(want)[0]}
    flat_have = {path_str(p): tuple(np.shape(v))
                 for p, v in jax.tree_util.tree_flatten_with_path(meta.unbox(params))[0]}
    for name in sorted(set(flat_want) | set(flat_have)):
        a, b = flat_have.get(name), flat_want.get(name)
        if a != b:
            status = ("is missing" if a is None else f"has shape {a}") + " in the checkpoint"
            exp = "is not in" if b is None else f"has shape {b} in"
            raise ConfigError(f"{where}: parameter {name!r} {status}, but {exp} {what} "
                              f"({len(flat_have)} checkpoint / {len(flat_want)} model parameters): the config "
                              f"does not match these params")


@dataclasses.dataclass
class Sampling:
    """Everything a run samples with, built once from its config (:func:`sampling_of`): the denoiser, codec,
    text encoder, token PCA (or None), the generator, the number of latent ``frames`` and the denoiser's
    input ``shape`` for them, and CFG's ``negative`` form ("empty" or "zeros")."""

    config: Any
    denoiser: Denoiser
    codec: Any
    text: Any
    pca: Any
    generator: Generator
    frames: int
    shape: tuple
    negative: str

    def to_audio(self, lat):
        """Latents in the denoiser's space [N, *shape] -> (codec latents [N, T, C] / [N, H, T, C],
        audio [N, S]); traceable."""
        if self.denoiser.layout != IMAGE:
            if self.pca is not None:
                lat = self.pca.decode(lat)
            lat = unpatchify(lat, int(self.config.data.patch_frames))
        return lat, self.codec.decode(lat)


def frames_for_seconds(config, seconds: float) -> int:
    """A clip length in seconds -> codec latent frames: rounded up to the codec's frame and to a multiple of
    the config's token patch (``config.data.patch_frames``)."""
    from tta_jax.codecs.registry import build_codec

    if not seconds or seconds <= 0:
        raise ConfigError(f"seconds must be > 0, got {seconds}")
    codec = build_codec(config.codec)
    frames = max(1, int(np.ceil(seconds * codec.sample_rate / codec.hop_length - 1e-6)))
    patch = int(config.data.get("patch_frames", 1) or 1)
    return -(-frames // patch) * patch


def sampling_of(config, *, workdir: str | None = None, num_frames: int | None = None, steps: int | None = None,
                guidance: float | None = None, rescale: float | None = None) -> Sampling:
    """A run's :class:`Sampling`. ``workdir``: the training run, whose ``assets/`` hold the token PCA and the
    trained length (no training data needed); ``num_frames`` (default: the config's crop or the trained
    length), ``steps``, ``guidance``, ``rescale`` override the config."""
    from tta_jax.codecs.registry import build_codec
    from tta_jax.conditioners.registry import reference_spec_of
    from tta_jax.text.registry import build_text_encoder

    den = denoiser_of(config)
    check_latent_space(config, den)
    codec = build_codec(config.codec)
    frames = int(num_frames or config.data.crop_frames or trained_latent_frames(workdir) or 0)
    if frames <= 0:
        raise ConfigError("the sample length is unknown: config.data.crop_frames is 0 and the workdir has no "
                          "assets/latent.json; pass num_frames")
    pca = token_pca_of(config, workdir)
    shape = model_latent_shape(config, den, codec.latent_shape(frames * codec.hop_length), pca)
    negative = str(config.sampler.get("negative", "empty") or "empty")
    if negative == "zeros" and "text_null" not in den.cond_keys:
        raise ConfigError("config.sampler.negative='zeros' zeroes the context after the text adapters; this "
                          "model has none (set config.model.text_adapters=True or config.text.name='multi')")
    if negative == "prompt" and reference_spec_of(config.get("conditioner")) is None:
        raise ConfigError("config.sampler.negative='prompt' guides on the conditioner's extra inputs alone; this "
                          "system has none (config.conditioner), so the guidance would do nothing")
    text = build_text_encoder(config.text)
    if text is None:  # an unconditional model: the batch size comes from the number of prompts alone
        raise ConfigError("config.text.name is 'none': this system has no prompt to sample from")
    gen = generator_from_config(den, config, workdir, **({"num_steps": int(steps)} if steps else {}))
    if guidance is not None:
        gen.guidance_scale = float(guidance)
    if rescale is not None:
        gen.guidance_rescale = float(rescale)
    return Sampling(config, den, codec, text, pca, gen, frames, tuple(shape), negative)


def generate_audio(config, params, prompts: Sequence[str], *, seed: int = 0, steps: int | None = None,
                   guidance: float | None = None, rescale: float | None = None, num_frames: int | None = None,
                   workdir: str | None = None, references: Sequence[Any] | None = None,
                   reference_captions: Sequence[str] | None = None):
    """All prompts in one batched, jitted sampling call -> (latents [N, T, C] or [N, H, T, C], audio [N, S],
    codec). ``workdir``: the training run, whose ``assets/`` hold the token PCA (no training data needed).
    ``references``: audio files (or arrays) for a system conditioned on reference audio (SERST, DreamAudio),
    the same ones for every prompt or one list per prompt; ``reference_captions`` one per reference (DreamAudio).
    CFG's unconditioned branch drops them with the prompt."""
    from flax.core import meta

    from tta_jax.conditioners.registry import prompt_cond, reference_cond, reference_spec_of

    sm = sampling_of(config, workdir=workdir, num_frames=num_frames, steps=steps, guidance=guidance,
                     rescale=rescale)
    codec, text = sm.codec, sm.text
    cond, uncond = text_conds(text.encode, prompts, sm.negative)
    spec = reference_spec_of(config.get("conditioner"))
    if spec is not None and spec["target"]:   # computed from the prompts (DC-LDM's LM), not from references
        if references or reference_captions:
            raise ConfigError("this system computes its extra condition from the prompt (config.conditioner); "
                              "drop the references")
        rc, ru = prompt_cond(config.conditioner, prompts, sm.frames * codec.hop_length / codec.sample_rate,
                             codec=codec, text=text, seed=seed)
    elif spec is not None:
        rc, ru = reference_cond(config.conditioner, references, len(prompts), codec=codec, text=text,
                                captions=reference_captions)
    if spec is not None:
        if sm.denoiser.layout != IMAGE:   # reference latents in the denoiser's token space, like the target
            p = int(config.data.get("patch_frames", 1) or 1)
            rc = references_to_tokens(rc, p, sm.pca, reference_latent_keys(config))
        cond.update({k: jnp.asarray(v) for k, v in rc.items()})
        uncond.update({k: jnp.asarray(v) for k, v in ru.items()})
    elif references or reference_captions:
        raise ConfigError("references given, but this system reads no reference audio (config.conditioner)")
    params = meta.unbox(params)
    context_len = int(cond["text"].shape[1]) if "text" in cond else 1
    check_params(sm.denoiser, params, sm.shape, context_len, workdir or "params", cond)
    lat = sm.generator.generate(params, cond, uncond, jax.random.PRNGKey(seed), sm.shape)
    lat, audio = sm.to_audio(lat)
    return np.asarray(lat), np.asarray(audio), codec


def sample_pipeline(config, params, prompts, out_dir, *, seed=0, steps=None, guidance=None, rescale=None,
                    workdir=None, references=None, reference_captions=None):
    """``config.sample_pipeline`` entry for launch/sample.py: a WAV and a spectrogram PNG per prompt
    (``references`` / ``reference_captions``: reference audio files and their captions for a
    reference-conditioned system)."""
    lat, audio, codec = generate_audio(config, params, prompts, seed=seed, steps=steps, guidance=guidance,
                                       rescale=rescale, workdir=workdir, references=references,
                                       reference_captions=reference_captions)
    return write_samples(out_dir, prompts, audio, lat, codec.sample_rate)
