r"""EzAudio end to end: the 3-stage training recipe, and inference (generation, editing, inpainting,
outpainting / continuation) on any codec with encode/decode.

Training (docs/reference-architectures.md section 1; EzAudio paper, arXiv:2409.10819, section II-C)::

  0. waveform VAE:   python -m tta_jax.train.gan --config configs/ezaudio_vae.py --workdir W_VAE
  1. masked pretraining, no text (model.context_dim=None -> no cross-attention params):
                     python -m launch.train --config configs/ezaudio_stage1.py --workdir W1
  2. + cross-attention (output projections zero-initialised), 10% empty captions, from stage 1:
                     python -m launch.train --config configs/ezaudio_stage2.py --workdir W2 \
                         --config.extra.init_from=W1
  3. fine-tune (AudioCaps), from stage 2:
                     python -m launch.train --config configs/ezaudio_stage3.py --workdir W3 \
                         --config.extra.init_from=W2

The stage configs use ``config.builder = "tta_jax.pipelines.ezaudio:build_stage_task"``
(:func:`build_stage_task`): it wraps :func:`tta_jax.pipelines.tta.build_task` and

- drops text features from the batch when the model has no cross-attention (stage 1);
- when ``config.extra.init_from`` names a workdir and the run starts fresh (no checkpoint in its own
  workdir), initialises from that run's params (EMA if ``extra.init_from_ema``, default True) with
  :func:`expand_params`: every parameter present in both with the same shape is copied, new ones
  (stage 2's cross-attention, context projection) keep their fresh initialisation. The report (copied
  / new / dropped names) is logged and kept as ``task.expand_report``.

Masked diffusion: masks come from ``tta_jax/data/masks.py`` (``data.mask_partial_prob``); the DiT
replaces masked frames of the clean latent by its learned ``mask_embed``; ``tta.make_loss_fn`` restricts
the v-MSE to ``mask * latent_valid`` (per sample ``sum(err * m) / sum(m)``, then the batch mean).

Inference (:class:`EzAudio`): v-prediction, zero terminal SNR, DDIM trailing eta=1, 100 steps,
CFG 5 with rescale 0.75 for generation; editing/inpainting (:meth:`EzAudio.edit`) masks a time range
[start_s, end_s) in latent frames, gives the same clean latent + mask to both CFG branches (CFG 3.5, no
rescale) and pastes back the unmasked frames, so they are bit-identical to the encoded input;
outpainting (:meth:`EzAudio.outpaint`) extends a clip beyond the training length by chaining windows:
each window keeps the tail (``overlap``) of what exists so far as its clean part and generates the rest.

Official checkpoints (github.com/haidog-yaqub/EzAudio, huggingface.co/OpenSound/EzAudio)::

  ckpts/s3/ezaudio_s3_l.pt    EzAudio-L DiT  (stage 3; state dict under ["model"])
  ckpts/s3/ezaudio_s3_xl.pt   EzAudio-XL DiT
  ckpts/vae/1m.pt             the 24 kHz Oobleck VAE (stable-audio-tools layout, "autoencoder." prefix
                              or bare encoder./decoder. keys; weight norm folded by the converter)
  text encoder: google/flan-t5-large (L) / google/flan-t5-xl (XL), transformers folder

  >>> from tta_jax.pipelines.ezaudio import load_ezaudio
  >>> ez = load_ezaudio("ckpts/s3/ezaudio_s3_xl.pt", "ckpts/vae/1m.pt", size="xl",
  ...                   t5_dir="/models/flan-t5-xl")
  >>> out = ez.generate(["a dog barks in the rain"], seconds=10.0, key=jax.random.PRNGKey(0))
  >>> out["audio"].shape        # [1, 240000] at 24 kHz
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tta_jax import diffusion as D
from tta_jax.denoisers.dit import DiT, DiTConfig
from tta_jax.denoisers.factory import dit_denoiser
from tta_jax.pipelines import tta

log = logging.getLogger(__name__)

TextEncodeFn = Callable[[Sequence[str]], Mapping[str, Any]]


# ================================================================================ expand_params
@dataclasses.dataclass
class ExpandReport:
    """Names ('/'-joined param paths) of what :func:`expand_params` did."""

    copied: list[str]
    new: list[str]
    dropped: list[str]        # in the old tree, not in the new one
    mismatched: list[str]     # same name, different shape ("name: old -> new")

    def summary(self) -> str:
        def show(xs, n=8):
            return ", ".join(xs[:n]) + (f", ... (+{len(xs) - n})" if len(xs) > n else "")
        return (f"expand_params: copied {len(self.copied)}, new {len(self.new)} [{show(self.new)}], "
                f"dropped {len(self.dropped)} [{show(self.dropped)}], mismatched {len(self.mismatched)} "
                f"[{show(self.mismatched)}]")


def _is_box(x) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def _flat(tree) -> dict[str, Any]:
    from tta_jax.train.optim import path_str

    return {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_box)[0]}


def expand_params(old_params, new_params_init, *, strict: bool = True):
    """Merge trained ``old_params`` into a freshly initialised (possibly larger) ``new_params_init``.

    Every leaf of ``new_params_init`` whose path exists in ``old_params`` with the same shape takes the
    old value (boxed/logically-partitioned leaves keep their metadata); the others keep their init.
    Pure (no side effects); works on concrete arrays and on ShapeDtypeStructs (reporting only).

    Returns ``(merged, ExpandReport)``. ``strict``: raise ``ValueError`` naming them when a shared name
    has a different shape or an old param has no place in the new tree (nothing would be lost silently).
    """
    old = {k: (v.unbox() if _is_box(v) else v) for k, v in _flat(old_params).items()}
    new_flat = _flat(new_params_init)
    copied, new, mismatched = [], [], []
    for name, leaf in new_flat.items():
        val = leaf.unbox() if _is_box(leaf) else leaf
        if name in old:
            if tuple(old[name].shape) == tuple(val.shape):
                copied.append(name)
            else:
                mismatched.append(f"{name}: {tuple(old[name].shape)} -> {tuple(val.shape)}")
        else:
            new.append(name)
    dropped = sorted(set(old) - set(new_flat))
    report = ExpandReport(copied=copied, new=new, dropped=dropped, mismatched=mismatched)
    if strict and (mismatched or dropped):
        raise ValueError(f"expand_params: cannot expand without losing weights: {report.summary()}")
    copy = set(copied)

    def merge(path, leaf):
        from tta_jax.train.optim import path_str
        name = path_str(path)
        if name not in copy:
            return leaf
        v = old[name]
        if _is_box(leaf):
            return leaf.replace_boxed(jnp.asarray(v, leaf.unbox().dtype) if hasattr(leaf.unbox(), "dtype")
                                      else v)
        return jnp.asarray(v, getattr(leaf, "dtype", None)) if hasattr(leaf, "dtype") else v

    merged = jax.tree_util.tree_map_with_path(merge, new_params_init, is_leaf=_is_box)
    return merged, report


# ================================================================================ stage task
def _extra(config, key, default=None):
    e = config.get("extra", None) if hasattr(config, "get") else getattr(config, "extra", None)
    if e is None:
        return default
    return e.get(key, default) if hasattr(e, "get") else getattr(e, key, default)


def build_stage_task(config, mesh):
    """Trainer builder for the EzAudio stages (see module docstring). Wraps ``tta.build_task``."""
    from tta_jax.train.checkpoint import load_params
    from tta_jax.train.loop import Task

    base = tta.build_task(config, mesh)
    dit_cfg = tta.dit_config_from(config)
    loss_fn = base.loss_fn
    if dit_cfg.context_dim is None:
        inner = base.loss_fn

        def loss_fn(params, batch, rng):  # stage 1: no text at all
            batch = {k: v for k, v in batch.items() if k not in ("text", "text_mask")}
            return inner(params, batch, rng)

    init_fn = base.init_fn
    report = None
    src = _extra(config, "init_from", "")
    if src:
        old, step = load_params(src, ema=bool(_extra(config, "init_from_ema", True)))
        _, report = expand_params(old, jax.eval_shape(base.init_fn, jax.random.PRNGKey(0)),
                                  strict=bool(_extra(config, "init_strict", True)))
        log.info("init_from %s (step %d): %s", src, step, report.summary())
        base_init = base.init_fn

        def init_fn(rng):
            return expand_params(old, base_init(rng), strict=False)[0]

    task = Task(init_fn=init_fn, loss_fn=loss_fn, train_iter=base.train_iter, sample_fn=base.sample_fn,
                decay_mask_fn=base.decay_mask_fn, save_assets=base.save_assets)
    task.expand_report = report
    return task


# ================================================================================ inference
def default_schedule() -> D.DiffusionSchedule:
    return D.make_schedule("scaled_linear", zero_terminal_snr=True, prediction_type="v_prediction")


def default_sampler(num_steps: int = 100) -> D.SamplerConfig:
    return D.SamplerConfig("ddim", num_steps, spacing="trailing", eta=1.0)


@dataclasses.dataclass
class EzAudio:
    """Text-to-audio, editing, inpainting and outpainting with an EzAudio-DiT + a codec.

    ``codec``: a :class:`tta_jax.codecs.registry.Codec` (or anything with ``encode(audio [B, N]) -> [B, F, C]``,
    ``decode``, ``sample_rate``, ``hop_length`` and ``latent_rate``), e.g. ``build_codec(config.codec)``.
    ``text_encode(prompts) -> {"text": [B, L, D], "text_mask": [B, L]}`` (the empty prompt is the
    unconditional branch), e.g. ``build_text_encoder(config.text).encode``. ``window_frames``: the latent length the DiT was trained on (outpainting
    window); ``patch_frames``: frames per DiT token (1 for EzAudio).
    """

    model: DiT
    params: Any
    codec: Any
    text_encode: TextEncodeFn
    schedule: D.DiffusionSchedule = dataclasses.field(default_factory=default_schedule)
    sampler: D.SamplerConfig = dataclasses.field(default_factory=default_sampler)
    window_frames: int = 500
    patch_frames: int = 1
    guidance_scale: float = 5.0
    guidance_rescale: float = 0.75
    edit_guidance_scale: float = 3.5
    edit_guidance_rescale: float = 0.0

    def __post_init__(self):
        if self.model.config.context_dim is None:
            raise ValueError("EzAudio inference needs a text-conditioned DiT (model.context_dim is None: "
                             "a stage-1 checkpoint)")
        self._gens: dict[tuple[float, float], tta.Generator] = {}

    # ---- helpers -------------------------------------------------------------------------------
    def generator(self, scale: float, rescale: float) -> tta.Generator:
        k = (float(scale), float(rescale))
        if k not in self._gens:
            self._gens[k] = tta.Generator(dit_denoiser(self.model.config), self.schedule, self.sampler,
                                          guidance_scale=k[0], guidance_rescale=k[1])
        return self._gens[k]

    def frames_of(self, seconds: float) -> int:
        f = int(np.ceil(seconds * self.codec.latent_rate - 1e-6))
        p = self.patch_frames
        return -(-f // p) * p

    def encode(self, audio) -> jax.Array:
        audio = jnp.asarray(audio, jnp.float32)
        return self.codec.encode(audio[None] if audio.ndim == 1 else audio)

    def generate_latents(self, prompts: Sequence[str], num_frames: int, key, *, masked_latent=None,
                         mask=None, guidance_scale: float | None = None,
                         guidance_rescale: float | None = None) -> jax.Array:
        """Latents [B, num_frames, C]. With ``mask`` [B, F] (1 = generate) and ``masked_latent`` [B, F, C]
        the unmasked frames are pasted back exactly (frame level)."""
        p = self.patch_frames
        if num_frames % p:
            raise ValueError(f"num_frames={num_frames} is not a multiple of patch_frames={p}")
        gen = self.generator(self.guidance_scale if guidance_scale is None else guidance_scale,
                             self.guidance_rescale if guidance_rescale is None else guidance_rescale)
        cond, uncond = tta.text_conds(self.text_encode, prompts)
        ml = mk = None
        if mask is not None:
            mask = jnp.asarray(mask, jnp.float32)
            masked_latent = jnp.asarray(masked_latent, jnp.float32)
            if mask.shape != masked_latent.shape[:2] or mask.shape[1] != num_frames:
                raise ValueError(f"mask {mask.shape} / masked_latent {masked_latent.shape} must be "
                                 f"[B, {num_frames}] / [B, {num_frames}, C]")
            ml, mk = tta.patchify(masked_latent, p), tta.patch_mask(mask, p)
        z = gen.generate(self.params, cond, uncond, key, (num_frames // p, self.model.config.out_channels),
                         masked_latent=ml, mask=mk)
        z = tta.unpatchify(z, p)
        if mask is not None:
            z = jnp.where(mask[..., None] > 0.5, z, masked_latent)
        return z

    def _decode(self, z, num_samples: int) -> jax.Array:
        audio = jnp.asarray(self.codec.decode(z), jnp.float32)
        n = audio.shape[1]
        if n >= num_samples:
            return audio[:, :num_samples]
        return jnp.pad(audio, ((0, 0), (0, num_samples - n)) + ((0, 0),) * (audio.ndim - 2))

    # ---- public API ----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], seconds: float, key, *, guidance_scale: float | None = None,
                 guidance_rescale: float | None = None) -> dict:
        """Text-to-audio. -> {"audio" [B, T], "latent" [B, F, C]}."""
        f = self.frames_of(seconds)
        z = self.generate_latents(prompts, f, key, guidance_scale=guidance_scale,
                                  guidance_rescale=guidance_rescale)
        return {"audio": self._decode(z, int(round(seconds * self.codec.sample_rate))), "latent": z}

    def time_mask(self, num_frames: int, start_s: float, end_s: float) -> np.ndarray:
        """[num_frames] float32, 1 on latent frames overlapping [start_s, end_s)."""
        if not 0 <= start_s < end_s:
            raise ValueError(f"edit range [{start_s}, {end_s}) s is empty or negative")
        r = self.codec.latent_rate
        a = int(np.floor(start_s * r))
        b = min(int(np.ceil(end_s * r)), num_frames)
        if a >= num_frames:
            raise ValueError(f"edit range starts at {start_s} s, past the clip ({num_frames / r:.3f} s)")
        m = np.zeros(num_frames, np.float32)
        m[a:b] = 1.0
        return m

    def edit(self, audio, prompt: str, start_s: float, end_s: float, key, *,
             guidance_scale: float | None = None, guidance_rescale: float | None = None) -> dict:
        """Regenerate [start_s, end_s) of ``audio`` [T] (or [1, T]) following ``prompt`` (the original or
        a new caption). -> {"audio", "latent", "source_latent", "mask"}; the latent's unmasked frames
        equal ``source_latent``'s exactly."""
        src = self.encode(audio)
        f = src.shape[1]
        p = self.patch_frames
        fp = -(-f // p) * p
        src_p = jnp.pad(src, ((0, 0), (0, fp - f), (0, 0)))
        m = self.time_mask(fp, start_s, end_s)
        m[f:] = 1.0  # padding frames (if any) are generated, then cut
        z = self.generate_latents([prompt], fp, key, masked_latent=src_p, mask=jnp.asarray(m)[None],
                                  guidance_scale=self.edit_guidance_scale if guidance_scale is None
                                  else guidance_scale,
                                  guidance_rescale=self.edit_guidance_rescale if guidance_rescale is None
                                  else guidance_rescale)[:, :f]
        n = int(np.asarray(audio).shape[-1])
        return {"audio": self._decode(z, n), "latent": z, "source_latent": src, "mask": m[:f]}

    inpaint = edit

    def outpaint(self, audio, prompt: str, total_seconds: float, key, *, overlap_frames: int | None = None,
                 guidance_scale: float | None = None, guidance_rescale: float | None = None,
                 paste_source_audio: bool = False) -> dict:
        """Continue ``audio`` to ``total_seconds`` by chaining ``window_frames`` windows: each keeps the
        last ``overlap_frames`` (default window/2) of the latent so far as its clean context and
        generates the rest. -> {"audio" [1, total samples], "latent" [1, F_total, C], "source_latent",
        "windows" (number of generated windows)}. The first ``F_src`` latent frames equal the source
        latent exactly; ``paste_source_audio`` also copies the source waveform into the output's start."""
        W, p = self.window_frames, self.patch_frames
        if W % p:
            raise ValueError(f"window_frames={W} is not a multiple of patch_frames={p}")
        ov = W // 2 if overlap_frames is None else int(overlap_frames)
        if not 0 < ov < W:
            raise ValueError(f"overlap_frames={ov} must be in (0, window_frames={W})")
        src = self.encode(audio)
        total = self.frames_of(total_seconds)
        out = src
        keys = iter(jax.random.split(key, 1 + total // max(W - ov, 1) + 1))
        windows = 0
        while out.shape[1] < total:
            ctx = min(out.shape[1], ov)
            masked = jnp.zeros((1, W, out.shape[2]), jnp.float32).at[:, :ctx].set(out[:, -ctx:])
            mask = jnp.asarray(np.r_[np.zeros(ctx), np.ones(W - ctx)].astype(np.float32))[None]
            z = self.generate_latents([prompt], W, next(keys), masked_latent=masked, mask=mask,
                                      guidance_scale=guidance_scale, guidance_rescale=guidance_rescale)
            out = jnp.concatenate([out, z[:, ctx:]], axis=1)
            windows += 1
        out = out[:, :max(total, src.shape[1])]
        n = int(round(total_seconds * self.codec.sample_rate))
        wav = self._decode(out, n)
        if paste_source_audio:
            a = jnp.asarray(audio, jnp.float32).reshape(1, -1)[:, :n]
            wav = wav.at[:, :a.shape[1]].set(a)
        return {"audio": wav, "latent": out, "source_latent": src, "windows": windows}


# ================================================================================ official weights
def load_ezaudio(dit_path: str, vae_path: str, size: str = "xl", *, text_encode: TextEncodeFn | None = None,
                 t5_dir: str | None = None, vae_key: str | None = None, num_steps: int = 100,
                 strict: bool = True, max_length: int = 128) -> EzAudio:
    """Released EzAudio DiT (``ezaudio_s3_{l,xl}.pt``) + VAE (``vae/1m.pt``) -> :class:`EzAudio`.

    ``size``: "l" or "xl". Text: ``text_encode`` or ``t5_dir`` (FLAN-T5-large for L, -XL for XL; the T5 entry
    of :mod:`tta_jax.text.registry`, ``max_length`` tokens). The VAE through the ``oobleck`` codec entry
    (:mod:`tta_jax.codecs.registry`; ``vae_key``: a nested state dict's key).
    """
    from tta_jax.codecs.registry import build_codec
    from tta_jax.convert.ezaudio_dit import load_ezaudio_dit
    from tta_jax.denoisers import dit as dit_mod
    from tta_jax.text.registry import build_text_encoder

    name = f"ezaudio_{size.lower()}"
    if name not in dit_mod.PRESETS:
        raise ValueError(f"size={size!r}: expected 'l' or 'xl'")
    cfg: DiTConfig = dit_mod.PRESETS[name]()
    tree, _ = load_ezaudio_dit(dit_path, cfg, strict=strict)
    codec = build_codec({"name": "oobleck", "preset": "ezaudio_24k", "weights": vae_path,
                         "weights_key": vae_key or ""}, "load_ezaudio(vae_path)")
    if text_encode is None:
        if t5_dir is None:
            raise ValueError("load_ezaudio needs text_encode=... or t5_dir=<FLAN-T5 folder>")
        text_encode = build_text_encoder({"name": "t5", "path": t5_dir, "max_len": max_length},
                                         "load_ezaudio(t5_dir)").encode
    return EzAudio(model=DiT(cfg), params=tree["params"], codec=codec, text_encode=text_encode,
                   sampler=default_sampler(num_steps), window_frames=500)


__all__ = ["ExpandReport", "expand_params", "build_stage_task", "EzAudio", "load_ezaudio", "default_schedule",
           "default_sampler"]
