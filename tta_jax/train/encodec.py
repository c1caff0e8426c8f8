r"""Train an EnCodec (:mod:`tta_jax.codecs.encodec`) from scratch through the shared loop.

Run:  python -m launch.train --config configs/dcldm_codec.py:tiny --workdir runs/codec_tiny
Then: ``build_codec({"name": "encodec_tokens", "workdir": "runs/codec_tiny"})`` (or ``"encodec"``) reads the run:
      the architecture from its ``config.json`` (``model``), the params (codebooks included) of its latest
      checkpoint.

Recipe (EnCodec / SoundStream without the adversary):

- training pass = :meth:`EncodecModel.__call__` (encode, residual VQ with the straight-through estimator over
  all ``num_quantizers`` codebooks, decode);
- loss = ``w_l1 * mean|x - y| + w_stft * MRSTFT(x, y) (+ w_mel * log-mel L1) + commitment_weight *
  commitment`` (:mod:`tta_jax.codecs.vae_losses`; ``extra.*``). **No GAN**: no discriminator, adversarial or
  feature-matching term -- at the CPU sizes this trains for, reconstruction losses alone give intelligible
  (if muffled) audio, and one network keeps the step cheap; the GAN pieces of :mod:`tta_jax.train.gan` can be
  added later;
- optimizer = ``config.optimizer`` (:func:`tta_jax.train.optim.make_optimizer`) on every param; the codebooks
  get no gradient (``rvq_quantize`` stops it) and whatever the optimizer does to them is overwritten after each
  step by :func:`~tta_jax.codecs.encodec.rvq_ema_update` (``extra.ema_decay``, default 0.99) from the
  residuals each stage saw;
- codebook init: **from the first batch** (k-means-free): stage ``q``'s codes are random frames of the
  residual left by stages ``< q`` on the first batch's encoder output (:func:`codebooks_from_frames`), with
  EMA counts 1 per code; the random N(0, 1) init of ``init_params`` is only a placeholder until then (a flag in
  the state; a skipped non-finite first step retries). Dead codes are not re-seeded (the EMA update has no
  expiry): ``codebook_usage`` shows it.

Metrics per step: ``loss``, ``l1``, ``mrstft`` (``sc``, ``logmag``), ``log_mel_l1`` (when ``w_mel > 0``),
``commitment``, ``grad_norm``, ``lr``, ``codebook_perplexity`` (exp entropy of each stage's code histogram on
the batch, mean over stages; at most ``codebook_size``) and ``codebook_usage`` (fraction of codes used in the
batch, mean over stages). Eval (every ``extra.eval_every`` and at the end): ``eval/{mrstft,si_sdr,log_mel_l1}``
of the quantised reconstruction of a fixed batch of held-out crops.

Audio (``extra.audio_source``): ``"embedded"`` (the package's General-MIDI clips, ``extra.num_clips``;
split ``data.split`` (default ``train``) trains, the ``valid``/``test`` clips evaluate), ``"wav_glob"``
(``extra.wav_glob``) or ``"toy"`` (synthetic tones, :func:`tta_jax.train.gan.toy_waveforms`); the last two hold
out their first ``min(8, N // 8)`` clips. Crops of ``extra.crop_seconds`` (rounded to whole code frames).

Outputs besides the loop's: ``workdir/assets/encodec_config.json`` (the architecture, transformers
``EncodecConfig`` field names: :func:`tta_jax.codecs.encodec.from_hf_config` reads it) and the codebook usage of
the final params on a training batch.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tta_jax.codecs import encodec as E
from tta_jax.codecs import vae_losses as VL
from tta_jax.errors import ConfigError

ASSET = "encodec_config.json"
PRESET_KEYS = ("encodec_preset", "preset")   # config.model key naming a tta_jax.codecs.encodec.CONFIGS preset


@flax.struct.dataclass
class EncodecState:
    """EnCodec train state: params (codebooks at ``quantizer/codebooks`` [Nq, K, D]), optimizer state, the EMA
    codebook statistics and the loop's fields (step, rng, non-finite counters)."""
    step: jax.Array              # int32 scalar
    params: Any
    opt_state: Any
    ema_counts: jax.Array        # [Nq, K]
    ema_sums: jax.Array          # [Nq, K, D]
    codebooks_ready: jax.Array   # int32 scalar: 0 until the codebooks were seeded from a batch
    rng: jax.Array
    nonfinite_total: jax.Array
    nonfinite_streak: jax.Array


@dataclasses.dataclass(frozen=True)
class LossWeights:
    l1: float = 1.0
    stft: float = 1.0
    mel: float = 0.0
    commitment: float = 1.0
    fft_sizes: tuple[int, ...] = (2048, 1024, 512, 256, 128, 64)


def _get(section, key, default):
    return section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)


def encodec_config_of(model_section, where: str = "config.model") -> E.EncodecConfig:
    """``config.model`` (``encodec_preset``: a :data:`tta_jax.codecs.encodec.CONFIGS` name, + EncodecConfig
    field overrides) -> EncodecConfig. Unknown fields / bad values raise ConfigError naming ``where``."""
    fields = dict(model_section.to_dict() if hasattr(model_section, "to_dict") else model_section)
    name = ""
    for k in PRESET_KEYS:
        name = fields.pop(k, "") or name
    if name and name not in E.CONFIGS:
        raise ConfigError(f"{where}.encodec_preset={name!r}; expected one of {sorted(E.CONFIGS)}")
    base = E.CONFIGS[name] if name else E.EncodecConfig()
    known = {f.name for f in dataclasses.fields(E.EncodecConfig)}
    bad = sorted(set(fields) - known)
    if bad:
        raise ConfigError(f"{where}.{bad[0]} is not an EncodecConfig field; they are {sorted(known)}")
    fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in fields.items()}
    if "hidden_size" in fields and "codebook_dim" not in fields and base.codebook_dim == base.hidden_size:
        fields["codebook_dim"] = None    # follow the new hidden_size (the preset's dim was its hidden_size)
    try:
        return dataclasses.replace(base, **fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def loss_weights(config) -> LossWeights:
    e = config.extra
    return LossWeights(l1=float(_get(e, "w_l1", 1.0)), stft=float(_get(e, "w_stft", 1.0)),
                       mel=float(_get(e, "w_mel", 0.0)), commitment=float(_get(e, "commitment_weight", 1.0)),
                       fft_sizes=tuple(int(n) for n in _get(e, "stft_fft_sizes", LossWeights.fft_sizes)))


# ------------------------------------------------------------------------------------------- pure pieces
def codebooks_from_frames(emb: jax.Array, codebooks: jax.Array, rng: jax.Array) -> jax.Array:
    """k-means-free RVQ init: stage ``q`` takes ``K`` random frames (with replacement when the batch has fewer
    than ``K``) of the residual left by stages ``< q`` (themselves seeded this way).
    emb [B, T, D], codebooks [Nq, K, D] (shape donor) -> [Nq, K, D]."""
    nq, k, d = codebooks.shape
    flat = emb.reshape(-1, d).astype(jnp.float32)
    out = []
    for q, key in enumerate(jax.random.split(rng, nq)):
        idx = jax.random.choice(key, flat.shape[0], (k,), replace=flat.shape[0] < k)
        cb = flat[idx]
        out.append(cb)
        flat = flat - cb[E.vq_nearest(flat, cb)]
    return jnp.stack(out).astype(codebooks.dtype)


def code_usage(codes: jax.Array, codebook_size: int) -> tuple[jax.Array, jax.Array]:
    """codes [B, T, n] -> (perplexity, fraction of codes used), each the mean over the n stages."""
    hist = jnp.sum(jax.nn.one_hot(codes.reshape(-1, codes.shape[-1]), codebook_size), axis=0)   # [n, K]
    p = hist / jnp.maximum(jnp.sum(hist, -1, keepdims=True), 1.0)
    perplexity = jnp.exp(-jnp.sum(jax.scipy.special.xlogy(p, p), -1))
    return jnp.mean(perplexity), jnp.mean(jnp.mean((hist > 0).astype(jnp.float32), -1))


def _with_codebooks(params, codebooks):
    q = dict(params["quantizer"], codebooks=codebooks)
    return {**params, "quantizer": q}


def init_encodec_state(cfg: E.EncodecConfig, tx: optax.GradientTransformation, rng) -> EncodecState:
    kp, kb = jax.random.split(rng)
    params = E.EncodecModel(cfg).init(kp, jnp.zeros((1, 2 * cfg.hop_length, cfg.audio_channels)))["params"]
    nq, k, d = params["quantizer"]["codebooks"].shape
    z = jnp.zeros((), jnp.int32)
    return EncodecState(step=z, params=params, opt_state=tx.init(params), ema_counts=jnp.zeros((nq, k)),
                        ema_sums=jnp.zeros((nq, k, d)), codebooks_ready=z, rng=kb, nonfinite_total=z,
                        nonfinite_streak=z)


def make_encodec_train_step(cfg: E.EncodecConfig, tx: optax.GradientTransformation, w: LossWeights = LossWeights(),
                            *, ema_decay: float = 0.99, lr_schedule=None):
    """-> pure ``step(state: EncodecState, audio [B, S] or [B, S, C], rng) -> (state, metrics)`` (a
    :data:`tta_jax.train.step.TrainStep`; the loop wraps it in ``make_guarded_step``). Seeds the codebooks
    from this batch while ``state.codebooks_ready == 0``, takes one optimizer step on the reconstruction +
    commitment loss, then replaces the codebooks with the EMA update from this step's stage inputs."""
    model = E.EncodecModel(cfg)
    sr = cfg.sampling_rate

    def seed_codebooks(state, audio, rng):
        emb, _ = model.apply({"params": state.params}, audio, method="embed")
        cb = codebooks_from_frames(emb, state.params["quantizer"]["codebooks"], rng)
        return _with_codebooks(state.params, cb), jnp.ones(cb.shape[:2]), cb.astype(jnp.float32)

    def step(state: EncodecState, audio, rng):
        audio = jnp.asarray(audio, jnp.float32)
        if audio.ndim == 2:
            audio = audio[..., None]
        params, counts, sums = jax.lax.cond(state.codebooks_ready > 0,
                                            lambda: (state.params, state.ema_counts, state.ema_sums),
                                            lambda: seed_codebooks(state, audio, rng))

        def loss_fn(p):
            out = model.apply({"params": p}, audio)
            n = min(out["audio"].shape[1], audio.shape[1])
            y = out["audio"][:, :n].reshape(audio.shape[0], n, -1)
            x = audio[:, :n]
            l1 = jnp.mean(jnp.abs(y - x))
            mr, parts = VL.multi_resolution_stft_loss(y, x, w.fft_sizes)
            total = w.l1 * l1 + w.stft * mr + w.commitment * out["commitment"]
            m = dict(l1=l1, mrstft=mr, sc=parts["sc"], logmag=parts["mag"], commitment=out["commitment"])
            if w.mel:
                m["log_mel_l1"] = VL.log_mel_l1(y, x, sr)
                total = total + w.mel * m["log_mel_l1"]
            return total, (m, out["stage_inputs"], out["codes"])

        (loss, (m, stage_inputs, codes)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        codebooks, counts, sums = E.rvq_ema_update(counts, sums, stage_inputs, codes, decay=ema_decay)
        new_params = _with_codebooks(new_params, codebooks.astype(params["quantizer"]["codebooks"].dtype))
        perplexity, usage = code_usage(codes, cfg.codebook_size)
        metrics = dict(m, loss=loss, grad_norm=optax.global_norm(grads), codebook_perplexity=perplexity,
                       codebook_usage=usage)
        if lr_schedule is not None:
            metrics["lr"] = jnp.asarray(lr_schedule(state.step - state.nonfinite_total), jnp.float32)
        new_state = state.replace(params=new_params, opt_state=opt_state, ema_counts=counts, ema_sums=sums,
                                  codebooks_ready=jnp.ones((), jnp.int32))
        return new_state, metrics

    return step


def make_eval_fn(cfg: E.EncodecConfig, fft_sizes=LossWeights.fft_sizes):
    """-> jitted ``eval(params, audio [B, S]) -> {"mrstft", "si_sdr", "log_mel_l1"}`` of the quantised
    reconstruction (all codebooks)."""
    model = E.EncodecModel(cfg)

    def ev(params, audio):
        y = model.apply({"params": params}, audio)["audio"]
        return VL.reconstruction_metrics(y, audio, cfg.sampling_rate, fft_sizes)
    return jax.jit(ev)


# ------------------------------------------------------------------------------------------------- data
def training_clips(config, sample_rate: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(train clips, held-out clips), float32 [N] each, from ``config.extra.audio_source`` (module docstring)."""
    from tta_jax.train import gan, kl_vae

    e = config.extra
    source = str(_get(e, "audio_source", "embedded"))
    if source == "embedded":
        from tta_jax.data.embedded import EmbeddedConfig, iter_embedded

        cfg = EmbeddedConfig(num_clips=int(_get(e, "num_clips", 200)), seed=int(config.seed), sample_rate=sample_rate)
        split = config.data.get("split", "") or "train"
        rows = [(row["split"], a.astype(np.float32)) for row, a in iter_embedded(cfg, num_workers=2)]
        train = [a for s, a in rows if s == split]
        held = [a for s, a in rows if s != split][:8]
        if not train:
            raise ConfigError(f"config.extra.num_clips={cfg.num_clips}: no clip of split {split!r}")
        return train, held or train[:1]
    if source == "toy":
        waves = gan.toy_waveforms(int(_get(e, "num_clips", 64)), float(_get(e, "clip_seconds", 2.0)), sample_rate,
                                  seed=int(config.seed))
    elif source == "wav_glob":
        waves = kl_vae.training_audio(config, sample_rate)
    else:
        raise ConfigError(f"config.extra.audio_source={source!r}: expected 'embedded', 'wav_glob' or 'toy'")
    n = max(1, min(len(waves) // 8, 8))
    return (waves[n:], waves[:n]) if len(waves) > 1 else (waves, waves)


def crop_samples(config, cfg: E.EncodecConfig) -> int:
    """``extra.crop_seconds`` in samples, rounded down to whole code frames (at least one)."""
    secs = float(_get(config.extra, "crop_seconds", 1.0))
    if secs <= 0:
        raise ConfigError(f"config.extra.crop_seconds={secs}: expected > 0")
    hop = cfg.hop_length
    return max(hop, int(round(secs * cfg.sampling_rate)) // hop * hop)


def write_assets(workdir: str, cfg: E.EncodecConfig, extra: dict | None = None) -> str:
    """``workdir/assets/encodec_config.json``: the architecture (transformers field names) + ``extra``."""
    path = os.path.join(workdir, "assets", ASSET)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    d = {"model_type": "encodec", **{k: list(v) if isinstance(v, tuple) else v
                                     for k, v in dataclasses.asdict(cfg).items()}, **(extra or {})}
    with open(path, "w") as fh:
        json.dump(d, fh, indent=1)
    return path


def build_task(config, mesh=None):  # noqa: ARG001 - the loop shards the batch over the mesh
    """``config.builder`` entry (``configs/dcldm_codec.py``): a :class:`tta_jax.train.loop.Task` with its own
    state (:class:`EncodecState`) and step (:func:`make_encodec_train_step`), random crops of the training
    clips, :func:`make_eval_fn` on a fixed batch of held-out crops, and ``save_assets`` (:func:`write_assets`)."""
    from tta_jax.train.gan import SegmentIterator
    from tta_jax.train.loop import Task
    from tta_jax.train.optim import make_optimizer

    cfg = encodec_config_of(config.model)
    if cfg.chunk_length_s is not None or cfg.normalize:
        raise ConfigError("config.model: chunked (chunk_length_s) and normalize=True EnCodecs are not trained here")
    w = loss_weights(config)
    seg = crop_samples(config, cfg)
    if not w.fft_sizes or max(w.fft_sizes) // 2 >= seg:
        raise ConfigError(f"config.extra.stft_fft_sizes={list(w.fft_sizes)}: each must be < 2 x the crop "
                          f"({seg} samples, config.extra.crop_seconds)")
    tx, sched = make_optimizer(config.optimizer, config.train.total_steps)
    step = make_encodec_train_step(cfg, tx, w, ema_decay=float(_get(config.extra, "ema_decay", 0.99)),
                                   lr_schedule=sched)
    train, held = training_clips(config, cfg.sampling_rate)
    it = SegmentIterator(train, config.train.batch_size // jax.process_count(), seg,
                         seed=config.seed + 1000 * jax.process_index())
    eval_batch = jnp.asarray(next(SegmentIterator(held, max(len(held), 2), seg, seed=config.seed + 999)))
    eval_fn = make_eval_fn(cfg, tuple(f for f in w.fft_sizes if f // 2 < seg))

    def evaluate(params, step_):  # noqa: ARG001
        return {f"eval/{k}": v for k, v in eval_fn(params, eval_batch).items()}

    def save_assets(workdir):
        extra = {}
        if os.path.isdir(os.path.join(workdir, "checkpoints")):
            from tta_jax.train.checkpoint import load_params

            try:
                params, at = load_params(workdir, ema=False)
            except FileNotFoundError:
                params = None
            if params is not None:
                batch = jnp.asarray(next(SegmentIterator(train, 8, seg, seed=12345)))
                codes = E.EncodecModel(cfg).apply({"params": params}, batch, num_quantizers=cfg.num_quantizers,
                                                  method="encode")
                ppl, use = code_usage(codes, cfg.codebook_size)
                extra = {"step": int(at), "codebook_perplexity": float(ppl), "codebook_usage": float(use)}
        return [write_assets(workdir, cfg, extra)]

    return Task(train_iter=it, init_state=lambda rng: init_encodec_state(cfg, tx, rng), step_fn=step,
                eval_fn=evaluate, eval_every=int(_get(config.extra, "eval_every", 100)), save_assets=save_assets)


def run_architecture(workdir: str, where: str = "config.codec.workdir") -> E.EncodecConfig:
    """The EncodecConfig of a run of this task: its ``config.json``'s ``model`` section. ConfigError when
    ``workdir`` is not such a run."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"{where}={workdir!r} has no config.json: not a tta_jax.train.encodec run "
                          f"(python -m launch.train --config configs/dcldm_codec.py:tiny --workdir ...)")
    with open(path) as fh:
        c = json.load(fh)
    if c.get("builder") != "tta_jax.train.encodec:build_task":
        raise ConfigError(f"{where}={workdir!r}: {path} has builder={c.get('builder')!r}, not "
                          "'tta_jax.train.encodec:build_task' (not an EnCodec training run)")
    return encodec_config_of(c.get("model") or {}, f"{path} model")


__all__ = ["EncodecState", "LossWeights", "encodec_config_of", "loss_weights", "codebooks_from_frames", "code_usage",
           "init_encodec_state", "make_encodec_train_step", "make_eval_fn", "training_clips", "crop_samples",
           "write_assets", "build_task", "run_architecture", "ASSET"]
