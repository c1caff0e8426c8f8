"""Text -> audio on precomputed latents: the training task and the jitted sampling pipeline.

One task serves every latent-sequence system whose denoiser follows the interface
``model.apply({"params": p}, x_t [B, T, C], t [B], cond, train=...)``: the EzAudio-DiT on mel-codec or
waveform-VAE latents (the demo), and its ablation variants. The objective, schedule and sampler come
from the config (``diffusion.*``, ``sampler.*``); EzAudio's masked-diffusion training is on when the
loader emits span masks (``data.mask_partial_prob``).

Config keys used (see ``configs/ezaudio_demo.py``): ``model`` (DiTConfig fields), ``diffusion``,
``sampler``, ``data.precomputed_dir``, ``data.crop_frames``, ``data.mask_partial_prob``,
``diffusion.cond_drop_prob``, ``diffusion.precondition``, ``train.batch_size``, ``seed``.
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
from tta_jax.denoisers.dit import DiT, DiTConfig

TextEncodeFn = Callable[[Sequence[str]], Mapping[str, np.ndarray]]
log = logging.getLogger(__name__)

# What manifests written before the structured ``codec`` / ``text`` fields say: the id strings of
# data_pipeline/build.py (``config.codec_id`` / ``config.text_id``), by prefix.
_LEGACY_IDS = {"codec": (("toy-frame-codec(", "toy"), ("mel(", "mel")),
               "text": (("minilm-tokens(", "minilm_tokens"), ("minilm(", "minilm"), ("bytes(", "bytes"),
                        ("none", "none"))}


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def check_precomputed(config, manifest: Mapping[str, Any], data_dir: str, *, warn: bool = True) -> list[str]:
    """Refuses data precomputed with another codec or text encoder than the config names: compares
    ``config.codec.name`` / ``config.text.name`` (and every setting both the config section and the manifest
    record, e.g. ``text.max_len``) with the manifest's ``codec`` / ``text`` fields, and raises
    :class:`tta_jax.config.ConfigError` naming both sides and the fix. Manifests from before those fields: the
    name is read from their ``codec_id`` / ``text_id`` where it is recognisable, else the data is accepted with
    a warning. A config section without a name is not checked. -> the warnings (also logged if ``warn``)."""
    from tta_jax.config import ConfigError

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
        for key in sorted(set(want) & set(have) - {"name"}):
            if not _same(have[key], want[key]):
                raise ConfigError(f"data in {data_dir} was precomputed with {section}.{key}={have[key]!r} "
                                  f"({source}), but the config expects {section}.{key}={want[key]!r} "
                                  f"(config.{section}.{key}); " + fix.format(k=f"{section}.{key}", v=want[key]))
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


def dit_config_from(config) -> DiTConfig:
    """``config.model`` (ConfigDict of DiTConfig fields, plus ``preset``) -> DiTConfig."""
    from tta_jax.denoisers import dit as dit_mod

    fields = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
    preset = fields.pop("preset", None)
    if preset:
        if preset not in dit_mod.PRESETS:
            raise ValueError(f"config.model.preset={preset!r}; expected one of {sorted(dit_mod.PRESETS)}")
        return dit_mod.PRESETS[preset](**fields)
    try:
        return DiTConfig.from_dict(fields)
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from e


def schedule_of(config) -> D.DiffusionSchedule:
    return D.schedule_from_config(config.diffusion)


def sampler_of(config, **overrides) -> D.SamplerConfig:
    s = config.sampler
    kw = dict(name=s.name, num_steps=s.num_steps, spacing=s.spacing, eta=s.eta, steps_offset=s.steps_offset,
              set_alpha_to_one=s.set_alpha_to_one, clip_sample=s.clip_sample, flow_shift=s.flow_shift)
    kw.update(overrides)
    return D.SamplerConfig(**kw)


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


def patch_batch(batch: Mapping[str, Any], p: int, pca=None) -> dict[str, Any]:
    """Loader batch -> token batch: latent [B, T, C] -> [B, T/p, p*C] (-> [B, T/p, k] through ``pca``, a
    :class:`tta_jax.codecs.token_pca.TokenPCA`), frame masks -> token masks."""
    out = dict(batch)
    out["latent"] = patchify(batch["latent"], p)
    if pca is not None:
        out["latent"] = pca.encode(out["latent"])
    for k in ("mask", "latent_valid"):
        if k in batch:
            out[k] = patch_mask(batch[k], p)
    return out


def cond_from_batch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Loader batch -> denoiser cond dict (text states + mask, EzAudio mask + masked latent)."""
    cond = {}
    if "text" in batch:
        cond["text"] = batch["text"]
        if "text_mask" in batch:
            cond["text_mask"] = batch["text_mask"]
    if "mask" in batch:
        cond["mask"] = batch["mask"]
        cond["masked_latent"] = batch["latent"]
    return cond


def token_pca_of(config):
    """The fitted token PCA when ``config.data.token_pca = k > 0`` (cached in ``data.precomputed_dir``, fitted
    from its training split on first use), its directions fainter than ``config.data.token_pca_whiten_below``
    scaled to unit variance (:meth:`TokenPCA.whitened`); else None."""
    k = int(config.data.get("token_pca", 0) or 0)
    if k <= 0:
        return None
    from tta_jax.codecs import token_pca

    data_dir = config.data.precomputed_dir
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"config.data.token_pca={k} needs the precomputed data it was fitted on "
                                f"(config.data.precomputed_dir={data_dir!r} is not a directory)")
    _check_data_dir(config, data_dir)  # fitting on another codec's latents fails with a puzzling shape error
    pca = token_pca.load_or_fit(data_dir, int(config.data.patch_frames), k)
    return pca.whitened(float(config.data.get("token_pca_whiten_below", 0.0)))


def precondition_var_of(config, pca=None):
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
    pca = token_pca_of(config) if pca is None else pca
    if pca is not None:
        return jnp.asarray(pca.variances)
    if not float(d.sigma_data) > 0.0:
        raise ValueError(f"config key 'diffusion.sigma_data' = {d.sigma_data} must be > 0 (the data's std)")
    return jnp.float32(float(d.sigma_data) ** 2)


def preconditioned(net_fn: Callable, schedule: D.DiffusionSchedule, data_var) -> Callable:
    """``net_fn(x [B, T, C], t [B], cond) -> out`` -> the same signature returning the Wiener-preconditioned x0
    estimate (:func:`tta_jax.diffusion.objectives.precondition_x0`); identity when ``data_var`` is None. The
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
    alike. -> ``(t [B], x0 [B, T, C]) -> [B, 1, C]`` weights, or None for p = 0 or no preconditioning."""
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


def make_loss_fn(model: DiT, config, pca=None):
    """-> ``loss_fn(params, batch, rng) -> (loss, metrics)`` for the trainer (pure). ``pca``: the token PCA
    the denoiser works in; by default the one ``config.data.token_pca`` names (:func:`token_pca_of`)."""
    pca = token_pca_of(config) if pca is None else pca
    schedule = schedule_of(config)
    d = config.diffusion
    flow_time = dict(sampler=d.flow_time_sampler, shift=d.flow_shift)

    data_var = precondition_var_of(config, pca)
    error_weight = precondition_loss_weight(schedule, data_var, float(d.get("precondition_loss_power", 0.0)))

    def apply_fn(params, x_t, t, cond, rng):
        def net(x, t_, c):
            return model.apply({"params": params}, x, t_, c, train=True, rngs={"dropout": rng})

        return preconditioned(net, schedule, data_var)(x_t, t, cond)

    p = int(config.data.patch_frames)
    if pca is not None and (model.config.in_channels, model.config.out_channels) != (pca.k, pca.k):
        raise ValueError(f"config.model.in_channels/out_channels = {model.config.in_channels}/"
                         f"{model.config.out_channels}, but config.data.token_pca={pca.k} gives {pca.k}-channel tokens")

    def loss_fn(params, batch, rng):
        batch = patch_batch(batch, p, pca)
        loss_mask = batch.get("latent_valid")
        if "mask" in batch:  # EzAudio: loss only on frames to generate
            loss_mask = batch["mask"] if loss_mask is None else loss_mask * batch["mask"]
        b = {"latent": batch["latent"], "cond": cond_from_batch(batch), "loss_mask": loss_mask}
        return D.diffusion_loss(apply_fn, params, b, rng, schedule,
                                min_snr_gamma=d.min_snr_gamma or None, min_snr_variant=d.min_snr_variant,
                                flow_time=flow_time if d.prediction_type == "flow" else None,
                                error_weight=error_weight)

    return loss_fn


@dataclasses.dataclass
class Generator:
    """Jitted text-conditioned sampling for a latent-sequence denoiser.

    ``generate(params, text, text_mask, null_text, null_mask, key, num_frames)`` -> latents
    [B, num_frames, C]. The sampler loop and CFG live inside one jit per (batch, frames) shape.
    """

    model: DiT
    schedule: D.DiffusionSchedule
    sampler: D.SamplerConfig
    guidance_scale: float = 3.0
    guidance_rescale: float = 0.0
    guidance_mode: str = "cfg"
    data_var: Any = None   # per-channel data variance of a Wiener-preconditioned denoiser (precondition_var_of)

    def __post_init__(self):
        self._jitted = jax.jit(self._generate, static_argnames=("num_frames",))

    def _generate(self, params, text, text_mask, null_text, null_mask, key, num_frames: int,
                  masked_latent=None, mask=None):
        b = text.shape[0]
        c = self.model.config.out_channels
        k_init, k_loop = jax.random.split(key)
        x_T = jax.random.normal(k_init, (b, num_frames, c), jnp.float32)
        cond = {"text": text, "text_mask": text_mask}
        uncond = {"text": null_text, "text_mask": null_mask}
        if mask is not None:  # editing / inpainting: same clean latent and mask in both branches
            cond.update(mask=mask, masked_latent=masked_latent)
            uncond.update(mask=mask, masked_latent=masked_latent)

        def net(x, t, cd):
            return self.model.apply({"params": params}, x, t, cd, train=False)

        model_fn = preconditioned(net, self.schedule, self.data_var)

        denoise = D.cfg_denoiser(model_fn, cond, uncond, scale=self.guidance_scale,
                                 rescale=self.guidance_rescale, mode=self.guidance_mode)
        x0 = D.sample(denoise, x_T, self.schedule, self.sampler, k_loop)
        if mask is not None:  # paste back the frames that were not to be generated
            x0 = jnp.where(mask[..., None] > 0.5, x0, masked_latent)
        return x0

    def generate(self, params, text, text_mask, null_text, null_mask, key, num_frames: int,
                 masked_latent=None, mask=None):
        b = text.shape[0]
        text, text_mask = jnp.asarray(text), jnp.asarray(text_mask)
        null_text = jnp.broadcast_to(null_text, (b,) + tuple(null_text.shape[-2:]))
        null_mask = jnp.broadcast_to(null_mask, (b,) + tuple(null_mask.shape[-1:]))
        # one batched CFG call needs equal lengths: pad the shorter context with masked-out zeros
        length = max(text.shape[1], null_text.shape[1])
        text, text_mask = _pad_context(text, text_mask, length)
        null_text, null_mask = _pad_context(null_text, null_mask, length)
        return self._jitted(params, text, text_mask, null_text, null_mask, key,
                            num_frames=num_frames, masked_latent=masked_latent, mask=mask)


def _pad_context(states, mask, length: int):
    """[B, L, D], [B, L] -> [B, length, D], [B, length] (zeros, mask False past L)."""
    pad = length - states.shape[1]
    if pad <= 0:
        return states, mask
    return (jnp.pad(states, ((0, 0), (0, pad), (0, 0))),
            jnp.pad(mask.astype(bool), ((0, 0), (0, pad)), constant_values=False))


def generator_from_config(model: DiT, config, **sampler_overrides) -> Generator:
    s = config.sampler
    return Generator(model=model, schedule=schedule_of(config), sampler=sampler_of(config, **sampler_overrides),
                     guidance_scale=s.guidance_scale, guidance_rescale=s.guidance_rescale,
                     guidance_mode=s.guidance_mode, data_var=precondition_var_of(config))


def init_params(model: DiT, rng, num_frames: int, context_len: int):
    """Boxed (logically partitioned) params for a [1, num_frames, C] input and a context of context_len."""
    c = model.config
    x = jnp.zeros((1, num_frames, c.in_channels))
    cond = {}
    if c.context_dim:
        cond = {"text": jnp.zeros((1, context_len, c.context_dim)), "text_mask": jnp.ones((1, context_len), bool)}
    if c.use_mask_input:
        cond.update(mask=jnp.ones((1, num_frames)), masked_latent=x)
    return model.init({"params": rng}, x, jnp.zeros((1,), jnp.int32), cond)["params"]


def build_task(config, mesh):
    """Trainer builder (``config.builder = "tta_jax.pipelines.tta:build_task"``): grain loader over
    ``config.data.precomputed_dir``, the DiT from ``config.model`` and the configured objective."""
    from data_pipeline.loader import LoaderConfig, make_dataset, read_manifest
    from tta_jax.train.loop import Task

    data_dir = config.data.precomputed_dir
    if not data_dir:
        raise ValueError("config.data.precomputed_dir is empty: run launch.precompute first and point to it")
    manifest = read_manifest(data_dir)
    check_precomputed(config, manifest, data_dir)  # before anything is built from data of another codec
    shapes = manifest.get("shapes", {})
    model = DiT(dit_config_from(config))
    nproc = jax.process_count()
    lcfg = LoaderConfig.from_experiment(config.data, config.train.batch_size // nproc, config.seed,
                                        caption_dropout=config.diffusion.cond_drop_prob)
    frames = (lcfg.crop_frames or shapes["latent"][0][0]) // int(config.data.patch_frames)
    text_len = shapes["txt:text"][0][0] if "txt:text" in shapes else 1
    train_iter = iter(make_dataset(data_dir, lcfg))
    pca = token_pca_of(config)
    return Task(init_fn=lambda rng: init_params(model, rng, frames, text_len),
                loss_fn=make_loss_fn(model, config, pca), train_iter=train_iter)


# --------------------------------------------------------------------------------------------------
# End-to-end sampling: prompts -> text states -> latents -> audio
# --------------------------------------------------------------------------------------------------
def text_encoder_from_config(config):
    """``config.text`` -> callable ``texts -> (states [B, L, D], mask [B, L])``."""
    name = config.text.get("name", "minilm")
    if name == "minilm":
        from tta_jax.text.bert import BertTextEncoder

        return BertTextEncoder.minilm(max_length=int(config.text.get("max_len", 32)))
    raise ValueError(f"config.text.name={name!r}: only 'minilm' is wired into this pipeline")


def codec_from_config(config):
    """``config.codec`` -> a codec with ``decode(params, latent)``, ``params`` and ``sample_rate``."""
    name = config.codec.get("name", "mel")
    if name == "mel":
        from tta_jax.codecs.mel_codec import load_pretrained_mel_codec

        return load_pretrained_mel_codec()
    raise ValueError(f"config.codec.name={name!r}: only 'mel' is wired into this pipeline")


def generate_audio(config, params, prompts: Sequence[str], *, seed: int = 0, steps: int | None = None,
                   guidance: float | None = None, rescale: float | None = None, num_frames: int | None = None):
    """All prompts in one batched, jitted sampling call -> (latents [N, T, C], audio [N, S], codec)."""
    from flax.core import meta

    p = int(config.data.patch_frames)
    model = DiT(dit_config_from(config))
    gen = generator_from_config(model, config, **({"num_steps": int(steps)} if steps else {}))
    if guidance is not None:
        gen.guidance_scale = float(guidance)
    if rescale is not None:
        gen.guidance_rescale = float(rescale)
    enc = text_encoder_from_config(config)
    text, mask = enc(list(prompts))
    null, null_mask = enc([""])
    frames = (num_frames or config.data.crop_frames) // p
    lat = gen.generate(meta.unbox(params), text, mask, null, null_mask, jax.random.PRNGKey(seed),
                       num_frames=frames)
    pca = token_pca_of(config)
    if pca is not None:
        lat = pca.decode(lat)
    lat = unpatchify(lat, p)
    codec = codec_from_config(config)
    audio = jax.jit(codec.decode)(codec.params, lat)
    return np.asarray(lat), np.asarray(audio), codec


def save_spectrogram_png(path: str, spec: np.ndarray, title: str = "") -> None:
    """Writes a [T, F] (log-)spectrogram as a PNG, low frequencies at the bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.4))
    ax.imshow(np.asarray(spec).T, origin="lower", aspect="auto", cmap="magma")
    ax.set_title(title[:60], fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def file_stem(i: int, prompt: str) -> str:
    return f"{i:02d}_" + "".join(ch if ch.isalnum() else "_" for ch in prompt)[:48]


def sample_pipeline(config, params, prompts, out_dir, *, seed=0, steps=None, guidance=None, rescale=None):
    """``config.sample_pipeline`` entry for launch/sample.py: a WAV and a spectrogram PNG per prompt."""
    import os

    import soundfile as sf

    lat, audio, codec = generate_audio(config, params, prompts, seed=seed, steps=steps, guidance=guidance,
                                       rescale=rescale)
    paths = []
    for i, (prompt, a, z) in enumerate(zip(prompts, audio, lat)):
        stem = os.path.join(out_dir, file_stem(i, prompt))
        sf.write(stem + ".wav", a, codec.sample_rate)
        save_spectrogram_png(stem + ".png", z, prompt)
        paths += [stem + ".wav", stem + ".png"]
    return paths
