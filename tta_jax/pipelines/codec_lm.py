"""The codec-token LM (DC-LDM's AudioGen-style acoustic prior) as a trainer task and a sampling pipeline.

Training (``config.builder = "tta_jax.pipelines.codec_lm:build_task"``): the grain loader over
``config.data.precomputed_dir``, whose record ``latent`` [T, K] holds integer codec tokens stored as float32
(the ``encodec_tokens`` codec; K = codebooks) and whose text features are ``text`` [L, D] / ``text_mask`` [L]
(one text encoder). Per batch: tokens = the latent cast to int32, frames past ``latent_valid`` set to the
special id V (:func:`tokens_from_batch`) -> :func:`tta_jax.lm.delay.delayed_lm_batch` -> :class:`CodecLM` logits
-> :func:`tta_jax.lm.transformer.lm_loss` over the valid delayed positions (delay corners and padded frames
excluded, :func:`lm_batch`). Text dropout for classifier-free guidance is the loader's caption dropout
(``config.diffusion.cond_drop_prob``, as :func:`tta_jax.pipelines.tta.build_task`): the text is replaced by the
empty caption's features, which is also the unconditioned branch at sampling time.

Config: ``config.model`` holds :class:`CodecLMConfig` fields, or ``preset`` (``tiny`` | ``audiogen_base``) plus
fields overriding it (:func:`lm_config_of`); the sampling options live in ``config.extra`` (``temperature``,
``top_k``, ``top_p``; :func:`sampling_options_of`), the CFG scale is ``config.sampler.guidance_scale`` and the
length is ``config.data.crop_frames`` or the trained length (``workdir/assets/latent.json``).

Sampling: :func:`generate_tokens` (prompts -> registry text encoder -> one jitted
:func:`tta_jax.lm.generate.generate`) and :func:`sample_pipeline` (``config.sample_pipeline`` for
``launch.sample``: tokens -> the registry codec's decode -> a WAV and the tokens ``.npy`` per prompt).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.errors import ConfigError
from tta_jax.lm import transformer as lm_t
from tta_jax.lm.delay import delay_interleave, delayed_lm_batch
from tta_jax.lm.options import (PRESETS, SAMPLING_DEFAULTS, check_sampling, lm_config_of,  # noqa: F401 (re-exported)
                                sampling_options_of)
from tta_jax.lm.transformer import CodecLM, CodecLMConfig, lm_loss

# ------------------------------------------------------------------------------ batches
def tokens_from_batch(latent, latent_valid, special_id: int):
    """latent [B, T, K] (integer codes stored as float) + latent_valid [B, T] -> (tokens [B, T, K] int32 with
    the frames past ``latent_valid`` set to ``special_id``, frame_valid [B, T] bool)."""
    frame_valid = jnp.asarray(latent_valid) > 0
    tokens = jnp.round(jnp.asarray(latent)).astype(jnp.int32)
    return jnp.where(frame_valid[..., None], tokens, special_id), frame_valid


def lm_batch(latent, latent_valid, special_id: int):
    """Loader arrays -> the teacher-forcing batch (inputs [B, S, K], targets [B, S, K], valid [B, S, K] bool),
    S = T + K - 1: :func:`delayed_lm_batch` of :func:`tokens_from_batch`, with ``valid`` also False at the
    delayed positions of padded frames."""
    tokens, frame_valid = tokens_from_batch(latent, latent_valid, special_id)
    inputs, targets, valid = delayed_lm_batch(tokens, special_id)
    frames = jnp.broadcast_to(frame_valid[..., None], tokens.shape).astype(jnp.int32)
    delayed_frames, _ = delay_interleave(frames, 0)
    return inputs, targets, valid & (delayed_frames > 0)


def make_loss_fn(lm_cfg: CodecLMConfig):
    """-> ``loss_fn(params, batch, rng) -> (loss, metrics)`` for the trainer (pure): the masked CE of
    :func:`lm_loss` over :func:`lm_batch`; metrics ``accuracy``, ``ce_cb{k}`` (per codebook), ``num_valid``."""
    model = CodecLM(lm_cfg)

    def loss_fn(params, batch, rng):
        inputs, targets, valid = lm_batch(batch["latent"], batch["latent_valid"], lm_cfg.special_id)
        logits = model.apply(params, inputs, batch["text"], batch.get("text_mask"), deterministic=False,
                             rngs={"dropout": rng})
        loss, m = lm_loss(logits, targets, valid)
        metrics = {"accuracy": m["accuracy"], "num_valid": m["num_valid"]}
        metrics.update({f"ce_cb{k}": m["ce_per_codebook"][k] for k in range(lm_cfg.num_codebooks)})
        return loss, metrics

    return loss_fn


def check_tokens(latent: np.ndarray, codebook_size: int, where: str) -> None:
    """A record's ``latent`` [T, K] must hold integer codes in [0, codebook_size): ConfigError naming ``where``
    and config.model.codebook_size otherwise (continuous latents of another codec, a larger codebook)."""
    z = np.asarray(latent)
    if z.size and not np.array_equal(z, np.round(z)):
        raise ConfigError(f"{where} holds non-integer values: the codec LM trains on codec tokens (precompute "
                          f"with config.codec.name='encodec_tokens'), not continuous latents")
    if z.size and (z.min() < 0 or z.max() >= codebook_size):
        raise ConfigError(f"{where} holds codes in [{int(z.min())}, {int(z.max())}], outside "
                          f"[0, config.model.codebook_size={codebook_size})")


def _first_record(data_dir: str, manifest: Mapping[str, Any]) -> dict:
    import grain

    from tta_jax.data import records

    src = grain.sources.ArrayRecordDataSource([os.path.join(data_dir, manifest["shards"][0])])
    return records.decode_record(src[0])


def check_data(lm_cfg: CodecLMConfig, shapes: Mapping[str, Any], frames: int, where: str) -> int:
    """Manifest ``shapes`` against the LM: latent [T, K] with K = num_codebooks, text [L, text_dim] present,
    ``frames + K - 1 <= max_len``. -> the text length L. ConfigError naming the config key otherwise."""
    latent = list(shapes["latent"][0]) if "latent" in shapes else None
    if latent is None or len(latent) != 2:
        raise ConfigError(f"{where}: the codec LM trains on token latents [T, K]; the data's latent is {latent}")
    if latent[1] != lm_cfg.num_codebooks:
        raise ConfigError(f"{where}: the tokens have K={latent[1]} codebooks, config.model.num_codebooks is "
                          f"{lm_cfg.num_codebooks}")
    if "txt:text" not in shapes:
        have = sorted(k for k in shapes if k.startswith("txt:"))
        raise ConfigError(f"{where}: no 'text' features (has {have}); the codec LM cross-attends to one text "
                          f"encoder's states (config.text: a feature encoder such as t5, not 'multi' or tokens)")
    L, D = shapes["txt:text"][0]
    if D != lm_cfg.text_dim:
        raise ConfigError(f"{where}: the text states are {D}-d, config.model.text_dim is {lm_cfg.text_dim}")
    if frames + lm_cfg.num_codebooks - 1 > lm_cfg.max_len:
        raise ConfigError(f"{frames} frames + {lm_cfg.num_codebooks - 1} delay steps exceed config.model.max_len="
                          f"{lm_cfg.max_len} (set config.data.crop_frames or raise max_len)")
    return int(L)


def build_task(config, mesh):
    """Trainer builder (``config.builder = "tta_jax.pipelines.codec_lm:build_task"``): see the module
    docstring. The task saves ``assets/latent.json`` (the trained length) into the workdir."""
    from tta_jax.data.loader import LoaderConfig, make_dataset, read_manifest
    from tta_jax.pipelines.tta import check_precomputed, save_assets
    from tta_jax.train.loop import Task

    del mesh
    lm_cfg = lm_config_of(config)
    data_dir = config.data.precomputed_dir
    if not data_dir:
        raise ConfigError("config.data.precomputed_dir is empty: run launch.precompute first and point to it")
    for key, off in (("patch_frames", 1), ("token_pca", 0)):
        if int(config.data.get(key, off) or off) != off:
            raise ConfigError(f"config.data.{key}={config.data.get(key)} applies to diffusion latents; the codec "
                              f"LM reads the tokens as they are (set it to {off})")
    manifest = read_manifest(data_dir)
    check_precomputed(config, manifest, data_dir)
    where = os.path.join(data_dir, "manifest.json")
    shapes = manifest.get("shapes", {})
    latent = list(shapes.get("latent", [[0, 0]])[0])
    frames = int(config.data.crop_frames) or int(latent[0] if latent else 0)
    text_len = check_data(lm_cfg, shapes, frames, where)
    check_tokens(_first_record(data_dir, manifest)["latent"], lm_cfg.codebook_size,
                 f"{data_dir}/{manifest['shards'][0]} record 0 'latent'")
    nproc = jax.process_count()
    lcfg = LoaderConfig.from_experiment(config.data, config.train.batch_size // nproc, config.seed,
                                        caption_dropout=config.diffusion.cond_drop_prob)
    if lcfg.mask_partial_prob is not None:
        raise ConfigError("config.data.mask_partial_prob >= 0 turns on EzAudio's span masks; the codec LM does "
                          "not read them (set -1)")
    latent[0] = frames
    S = frames + lm_cfg.num_codebooks - 1
    model = CodecLM(lm_cfg)

    def init_fn(rng):
        return model.init(rng, jnp.zeros((1, S, lm_cfg.num_codebooks), jnp.int32),
                          jnp.zeros((1, text_len, lm_cfg.text_dim), jnp.float32), jnp.ones((1, text_len), bool))

    return Task(init_fn=init_fn, loss_fn=make_loss_fn(lm_cfg), train_iter=iter(make_dataset(data_dir, lcfg)),
                save_assets=lambda workdir: save_assets(config, workdir, latent))


# ------------------------------------------------------------------------------ sampling
def check_lm_params(lm_cfg: CodecLMConfig, params, where: str) -> None:
    """ConfigError naming the first parameter whose path or shape differs between ``params`` (from ``where``)
    and what ``config.model`` builds (evaluated abstractly)."""
    from flax.core import meta

    from tta_jax.pipelines.tta import check_param_shapes

    K = lm_cfg.num_codebooks
    want = jax.eval_shape(lambda r: meta.unbox(CodecLM(lm_cfg).init(
        r, jnp.zeros((1, K, K), jnp.int32), jnp.zeros((1, 1, lm_cfg.text_dim)), None)), jax.random.PRNGKey(0))
    check_param_shapes(lm_t.as_variables(meta.unbox(params)), want, where, "the LM config.model builds")


def frames_of(config, workdir: str | None = None, steps: int | None = None) -> int:
    """Frames to generate: ``steps``, else ``config.data.crop_frames``, else the trained length
    (``workdir/assets/latent.json``); ConfigError when none is known."""
    from tta_jax.pipelines.tta import trained_latent_frames

    frames = int(steps or config.data.crop_frames or trained_latent_frames(workdir) or 0)
    if frames <= 0:
        raise ConfigError("the sample length is unknown: config.data.crop_frames is 0 and the workdir has no "
                          "assets/latent.json; pass steps (frames)")
    return frames


def generate_tokens(config, params, prompts: Sequence[str], *, seed: int = 0, steps: int | None = None,
                    temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                    cfg_scale: float | None = None, workdir: str | None = None) -> np.ndarray:
    """All prompts in one jitted decode -> tokens [N, T, K] int32 in [0, codebook_size).

    ``steps``: frames T (default :func:`frames_of`); ``temperature`` / ``top_k`` / ``top_p`` default to
    :func:`sampling_options_of`, ``cfg_scale`` to ``config.sampler.guidance_scale`` (1: no CFG). The text comes
    from the registry encoder (``config.text``); CFG's unconditioned branch is the empty prompt's encoding (what
    the caption dropout trained on)."""
    from flax.core import meta

    from tta_jax.lm.generate import generate
    from tta_jax.pipelines.tta import text_conds
    from tta_jax.text.registry import build_text_encoder

    lm_cfg = lm_config_of(config)
    opts = sampling_options_of(config)
    given = {k: v for k, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)) if v is not None}
    if given:
        opts = check_sampling(**{**opts, **given}, where="generate_tokens")
    scale = float(config.sampler.guidance_scale if cfg_scale is None else cfg_scale)
    frames = frames_of(config, workdir, steps)
    if not prompts:
        raise ValueError("generate_tokens: no prompts")
    text = build_text_encoder(config.text)
    if text is None or "text" not in text.dims:
        raise ConfigError(f"config.text.name={config.text.get('name')!r}: the codec LM needs text states "
                          f"('text' [B, L, D]), e.g. t5")
    cond, uncond = text_conds(text.encode, prompts, "empty")
    if cond["text"].shape[-1] != lm_cfg.text_dim:
        raise ConfigError(f"config.text gives {cond['text'].shape[-1]}-d states, config.model.text_dim is "
                          f"{lm_cfg.text_dim}")
    params = meta.unbox(params)
    check_lm_params(lm_cfg, params, workdir or "params")
    null = {} if scale == 1.0 else {"null_text": uncond["text"], "null_mask": uncond.get("text_mask")}
    tokens = generate(params, lm_cfg, cond["text"], cond.get("text_mask"), jax.random.PRNGKey(seed), steps=frames,
                      cfg_scale=scale, **opts, **null)
    return np.asarray(tokens)


def sample_pipeline(config, params, prompts, out_dir, *, seed=0, steps=None, guidance=None, rescale=None,
                    workdir=None, **kw):
    """``config.sample_pipeline`` entry for launch/sample.py: per prompt a WAV (the tokens decoded by the
    registry codec, ``config.codec``, e.g. ``encodec_tokens``) and the tokens ``.npy`` [T, K]. ``steps``: frames
    to generate; ``guidance``: the CFG scale; ``rescale`` does not apply (must be None or 0); ``kw``:
    ``temperature`` / ``top_k`` / ``top_p`` (:func:`generate_tokens`). -> paths written."""
    import soundfile as sf

    from tta_jax.codecs.registry import build_codec
    from tta_jax.pipelines.tta import file_stem

    unknown = sorted(set(kw) - set(SAMPLING_DEFAULTS))
    if unknown:
        raise ConfigError(f"the codec LM's sample_pipeline takes no {unknown} (references are for "
                          f"reference-conditioned systems); it takes {sorted(SAMPLING_DEFAULTS)}")
    if rescale:
        raise ConfigError(f"rescale={rescale}: CFG rescale is a diffusion-sampler option; the codec LM has none")
    codec = build_codec(config.codec)
    lm_cfg = lm_config_of(config)
    if codec.latent_channels != lm_cfg.num_codebooks:
        raise ConfigError(f"config.codec ({codec.name}) has {codec.latent_channels} token channels, "
                          f"config.model.num_codebooks is {lm_cfg.num_codebooks}")
    tokens = generate_tokens(config, params, prompts, seed=seed, steps=steps, cfg_scale=guidance, workdir=workdir,
                             **kw)
    audio = np.asarray(codec.decode(jnp.asarray(tokens, jnp.float32)))
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i, (prompt, a, tok) in enumerate(zip(prompts, audio, tokens)):
        stem = os.path.join(out_dir, file_stem(i, prompt))
        sf.write(stem + ".wav", a, codec.sample_rate)
        np.save(stem + ".npy", tok)
        paths += [stem + ".wav", stem + ".npy"]
    return paths
