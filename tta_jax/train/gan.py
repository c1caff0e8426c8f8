r"""GAN training of the waveform VAE (EzAudio / stable-audio-tools recipe).

Run:  python -m tta_jax.train.gan --config configs/ezaudio_vae.py --workdir /tmp/vae [--config.k=v ...]
      (tiny CPU smoke run: --config configs/ezaudio_vae.py:tiny; see each config's docstring.)
      ``python -m launch.train`` with the same arguments trains it the same way (config.builder).

Recipe (docs/reference-architectures.md section 1, "Waveform VAE"):

- generator = :class:`tta_jax.codecs.oobleck.OobleckVAE` (encode -> sample -> decode);
  loss = ``w_stft * MRSTFT(7 scales) + w_kl * KL + w_adv * adv + w_fm * feature matching`` with
  KL 1e-4, adversarial 0.1, feature matching 5.0 (:mod:`tta_jax.codecs.vae_losses`);
- discriminator = EnCodec multi-scale STFT discriminator, hinge (or least-squares) loss;
- AdamW: generator lr 1.5e-4, betas (0.8, 0.99); discriminator lr 3e-4, betas (0.8, 0.99); weight decay
  1e-3 on conv kernels (not snake params/biases); stable-audio-tools' ``InverseLR`` schedule
  ``lr * (1 - warmup ** (step + 1)) * (1 + step / inv_gamma) ** -power`` (:func:`inverse_lr`);
- short random segments (0.5 s) of the training audio (:class:`SegmentIterator`).

:func:`make_gan_train_step` returns ONE pure update ``step(state, audio, rng) -> (state, metrics)`` (a
:data:`tta_jax.train.step.TrainStep`) that updates both networks (generator gradients use the discriminator
before its update; the discriminator sees the detached reconstruction). The :class:`GANState` holds both
param sets and both optimizer states; its generator params are called ``params`` so
``tta_jax.train.checkpoint.load_params(workdir, ema=False)`` returns the VAE params of a run.

Training runs through the general loop (:func:`tta_jax.train.loop.train`): :func:`build_vae_training`
(``config.builder``) returns a Task with this state and step, so the VAE gets the loop's mesh (data
parallel; the batch is split over ``config.mesh``), Orbax resume of both networks, both optimizers and the
data position, SIGTERM handling, the non-finite guard (a NaN/inf loss or gradient skips both updates; abort
after ``train.max_consecutive_nonfinite``) and its logging (metrics.jsonl, TensorBoard, progress bar).

Config (``configs/ezaudio_vae*.py``, on :func:`tta_jax.config.base_config`): ``codec`` = OobleckConfig
fields or ``codec.preset``; ``optimizer.{lr,b1,b2,weight_decay,clip_norm}`` = generator;
``extra`` = discriminator and loss settings (see :func:`gan_settings`), ``extra.audio_source``
("toy" synthetic tones or "wav_glob" with ``extra.wav_glob``), ``extra.segment_seconds``,
``extra.eval_every``; the loop's ``train.*`` and ``mesh.*`` (``train.ema_decay`` must be 0: no EMA).
Outputs: ``workdir/checkpoints`` (resumable), ``workdir/metrics.jsonl`` (train losses averaged over every
``log_every`` steps, ``eval/{mrstft,si_sdr,log_mel_l1}`` on a fixed held-out batch every ``eval_every`` and at
the last step), ``workdir/tb`` (TensorBoard).
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import sys
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tta_jax.codecs import vae_losses as VL
from tta_jax.codecs.oobleck import OobleckConfig, OobleckVAE, get_config as oobleck_preset, kl_loss
from tta_jax.train.optim import decay_mask
from tta_jax.train.step import TrainStep, select_tree


@flax.struct.dataclass
class GANState:
    """The VAE GAN's train state: both networks and both optimizer states, with the fields every train state
    of ``tta_jax.train.loop`` has (step, params, rng, non-finite counters)."""
    step: jax.Array          # int32 scalar: train iterations done (skipped ones included)
    params: Any              # generator (VAE) params
    disc_params: Any
    opt_state: Any           # generator optimizer state
    disc_opt_state: Any
    rng: jax.Array           # uint32[2]
    nonfinite_total: jax.Array   # int32: iterations skipped as non-finite
    nonfinite_streak: jax.Array  # int32: consecutive skipped iterations


@dataclasses.dataclass(frozen=True)
class GANLossConfig:
    fft_sizes: tuple[int, ...] = VL.EZAUDIO_FFT_SIZES
    adv_kind: str = "hinge"          # "hinge" | "ls"
    w_stft: float = 1.0
    w_kl: float = 1e-4
    w_adv: float = 0.1
    w_fm: float = 5.0
    adv_start_step: int = 0          # adversarial terms (and discriminator updates) from this step


def inverse_lr(lr: float, inv_gamma: float = 200_000.0, power: float = 0.5, warmup: float = 0.999):
    """stable-audio-tools ``InverseLR`` as an optax schedule:
    ``lr * (1 - warmup ** (step + 1)) * (1 + step / inv_gamma) ** -power`` (``warmup=0`` disables the
    exponential warm-up)."""
    def sched(step):
        s = jnp.asarray(step, jnp.float32)
        warm = 1.0 - jnp.power(jnp.float32(warmup), s + 1.0)
        return lr * warm * jnp.power(1.0 + s / inv_gamma, -power)
    return sched


def _adamw(lr, b1, b2, wd, clip, inv_gamma, power, warmup):
    sched = inverse_lr(lr, inv_gamma, power, warmup)
    parts = [optax.clip_by_global_norm(clip)] if clip else []
    parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=1e-8, weight_decay=wd, mask=decay_mask))
    return optax.chain(*parts), sched


def gan_settings(config) -> dict:
    """Discriminator / loss / optimizer settings from ``config.extra`` with the recipe's defaults."""
    e = config.extra
    g = (lambda k, d: e.get(k, d)) if hasattr(e, "get") else (lambda k, d: getattr(e, k, d))
    return dict(
        disc_ffts=tuple(g("disc_ffts", VL.ENCODEC_DISC_FFTS)), disc_filters=int(g("disc_filters", 32)),
        disc_lr=float(g("disc_lr", 3e-4)), disc_b1=float(g("disc_b1", 0.8)), disc_b2=float(g("disc_b2", 0.99)),
        disc_weight_decay=float(g("disc_weight_decay", 1e-3)),
        inv_gamma=float(g("inv_gamma", 200_000.0)), inv_power=float(g("inv_power", 0.5)),
        lr_warmup=float(g("lr_warmup", 0.999)),
        loss=GANLossConfig(fft_sizes=tuple(g("stft_fft_sizes", VL.EZAUDIO_FFT_SIZES)),
                           adv_kind=str(g("adv_kind", "hinge")), w_stft=float(g("w_stft", 1.0)),
                           w_kl=float(g("w_kl", 1e-4)), w_adv=float(g("w_adv", 0.1)),
                           w_fm=float(g("w_fm", 5.0)), adv_start_step=int(g("adv_start_step", 0))),
        segment_seconds=float(g("segment_seconds", 0.5)), eval_every=int(g("eval_every", 100)),
        audio_source=str(g("audio_source", "toy")), wav_glob=str(g("wav_glob", "")),
        num_clips=int(g("num_clips", 64)), clip_seconds=float(g("clip_seconds", 2.0)))


def make_gan_optimizers(config) -> tuple[optax.GradientTransformation, optax.GradientTransformation, Any]:
    """(generator tx, discriminator tx, generator lr schedule) from ``config.optimizer``/``config.extra``."""
    o, s = config.optimizer, gan_settings(config)
    gen_tx, sched = _adamw(float(o.lr), float(o.b1), float(o.b2), float(o.weight_decay),
                           float(o.clip_norm or 0.0), s["inv_gamma"], s["inv_power"], s["lr_warmup"])
    disc_tx, _ = _adamw(s["disc_lr"], s["disc_b1"], s["disc_b2"], s["disc_weight_decay"], 0.0,
                        s["inv_gamma"], s["inv_power"], s["lr_warmup"])
    return gen_tx, disc_tx, sched


def vae_config_of(config) -> OobleckConfig:
    fields = dict(config.codec.to_dict() if hasattr(config.codec, "to_dict") else config.codec)
    preset = fields.pop("preset", None)
    base = oobleck_preset(preset) if preset else OobleckConfig()
    for k in ("channel_multiples", "strides"):
        if k in fields:
            fields[k] = tuple(fields[k])
    try:
        return dataclasses.replace(base, **fields)
    except TypeError as e:
        raise ValueError(f"config.codec: {e}; known fields: "
                         f"{[f.name for f in dataclasses.fields(OobleckConfig)]}") from e


def init_gan_state(vae: OobleckVAE, disc: VL.MultiScaleSTFTDiscriminator, gen_tx, disc_tx, rng,
                   num_samples: int) -> GANState:
    kg, kd, kb = jax.random.split(rng, 3)
    x = jnp.zeros((1, num_samples, vae.config.audio_channels), jnp.float32)
    gp = vae.init(kg, x)["params"]
    dp = disc.init(kd, x)["params"]
    return GANState(step=jnp.zeros((), jnp.int32), params=gp, disc_params=dp, opt_state=gen_tx.init(gp),
                    disc_opt_state=disc_tx.init(dp), rng=kb, nonfinite_total=jnp.zeros((), jnp.int32),
                    nonfinite_streak=jnp.zeros((), jnp.int32))


def _as_channels(audio, c):
    audio = jnp.asarray(audio, jnp.float32)
    return audio[..., None] if audio.ndim == 2 and c == 1 else audio


def make_gan_train_step(vae: OobleckVAE, disc: VL.MultiScaleSTFTDiscriminator, gen_tx, disc_tx,
                        loss_cfg: GANLossConfig = GANLossConfig(), lr_schedule=None) -> TrainStep:
    """-> ``step(state: GANState, audio [B, T] or [B, T, C], rng) -> (state, metrics)``, pure.

    Both networks are updated in the same call; the discriminator (and the generator's adversarial and
    feature-matching terms) from step ``loss_cfg.adv_start_step`` on. Run it through
    :func:`tta_jax.train.step.make_guarded_step` (the loop does): it supplies ``rng`` (the VAE's latent
    sample), advances the step counters and skips both updates when a loss or gradient is not finite
    (every metric is checked, the gradient norms included). ``lr_schedule`` (the generator's): adds
    the ``lr`` of each update to the metrics.
    """
    lc = loss_cfg

    def step(state: GANState, audio, rng):
        audio = _as_channels(audio, vae.config.audio_channels)
        adv_on = (state.step >= lc.adv_start_step).astype(jnp.float32)

        def gen_loss(gp):
            recon, mean, std = vae.apply({"params": gp}, audio, rng)
            n = min(recon.shape[1], audio.shape[1])
            recon_c, real = recon[:, :n], audio[:, :n]
            mr, parts = VL.multi_resolution_stft_loss(recon_c, real, lc.fft_sizes)
            kl = kl_loss(mean, std)
            fake_logits, fake_feats = disc.apply({"params": state.disc_params}, recon_c)
            _, real_feats = disc.apply({"params": state.disc_params}, real)
            adv = VL.generator_adv_loss(fake_logits, lc.adv_kind)
            fm = VL.feature_matching_loss(real_feats, fake_feats)
            total = lc.w_stft * mr + lc.w_kl * kl + adv_on * (lc.w_adv * adv + lc.w_fm * fm)
            return total, (recon_c, real, dict(mrstft=mr, sc=parts["sc"], logmag=parts["mag"], kl=kl,
                                               gen_adv=adv, feat_match=fm,
                                               latent_std=jnp.mean(std), latent_mean_abs=jnp.mean(jnp.abs(mean))))

        (g_total, (recon, real, gm)), g_grads = jax.value_and_grad(gen_loss, has_aux=True)(state.params)
        fake = jax.lax.stop_gradient(recon)

        def disc_loss(dp):
            rl, _ = disc.apply({"params": dp}, real)
            fl, _ = disc.apply({"params": dp}, fake)
            return VL.discriminator_loss(rl, fl, lc.adv_kind)

        d_total, d_grads = jax.value_and_grad(disc_loss)(state.disc_params)

        g_up, g_opt = gen_tx.update(g_grads, state.opt_state, state.params)
        g_new = optax.apply_updates(state.params, g_up)
        d_up, d_opt = disc_tx.update(d_grads, state.disc_opt_state, state.disc_params)
        d_new = optax.apply_updates(state.disc_params, d_up)
        d_params, d_opt = select_tree(adv_on > 0, (d_new, d_opt), (state.disc_params, state.disc_opt_state))
        new_state = state.replace(params=g_new, opt_state=g_opt, disc_params=d_params, disc_opt_state=d_opt)
        metrics = dict(gm, gen_loss=g_total, disc_loss=d_total,
                       gen_grad_norm=optax.global_norm(g_grads), disc_grad_norm=optax.global_norm(d_grads))
        if lr_schedule is not None:  # optax's count: the generator updates applied so far
            metrics["lr"] = jnp.asarray(lr_schedule(state.step - state.nonfinite_total), jnp.float32)
        return new_state, metrics

    return step


def make_eval_fn(vae: OobleckVAE, sample_rate: int, fft_sizes: Sequence[int] = VL.EZAUDIO_FFT_SIZES):
    """-> jitted ``eval(params, audio) -> {"mrstft", "si_sdr", "log_mel_l1"}`` (mean latent, no sampling)."""
    def ev(params, audio):
        audio = _as_channels(audio, vae.config.audio_channels)
        recon, _, _ = vae.apply({"params": params}, audio, None)
        return VL.reconstruction_metrics(recon, audio, sample_rate, fft_sizes)
    return jax.jit(ev)


# -------------------------------------------------------------------------------------------- data
def toy_waveforms(num: int, seconds: float, sample_rate: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic synthetic training audio: harmonic tones with vibrato/decay, chirps and filtered
    noise bursts, peak 0.5. list of float32 [T]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    out = []
    for i in range(num):
        kind = i % 3
        f0 = rng.uniform(80, sample_rate / 8)
        if kind == 0:
            ph = 2 * np.pi * f0 * t + rng.uniform(0.5, 3) * np.sin(2 * np.pi * rng.uniform(2, 7) * t)
            x = sum(rng.uniform(0.2, 1) / k * np.sin(k * ph) for k in range(1, 5))
            x = x * np.exp(-t * rng.uniform(0.2, 3))
        elif kind == 1:
            f1 = rng.uniform(80, sample_rate / 6)
            x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
        else:
            n = rng.standard_normal(t.size)
            k = int(rng.integers(2, 16))
            x = np.convolve(n, np.ones(k) / k, mode="same")
            env = np.zeros_like(t)
            for s in rng.uniform(0, seconds, size=4):
                env += np.exp(-np.maximum(t - s, 0) * 20) * (t >= s)
            x = x * env
        x = x / (np.max(np.abs(x)) + 1e-9) * 0.5
        out.append(x.astype(np.float32))
    return out


def wav_waveforms(pattern: str, sample_rate: int, max_files: int | None = None) -> list[np.ndarray]:
    import librosa

    paths = sorted(glob.glob(pattern, recursive=True))[:max_files]
    if not paths:
        raise FileNotFoundError(f"config.extra.wav_glob={pattern!r} matches no file")
    return [librosa.load(p, sr=sample_rate, mono=True)[0].astype(np.float32) for p in paths]


class SegmentIterator:
    """Random fixed-length segments [B, seg] from a list of waveforms (zero-padded when shorter);
    checkpointable (``get_state``/``set_state``): batch i is drawn from ``default_rng([seed, i])``."""

    def __init__(self, waves: Sequence[np.ndarray], batch_size: int, segment: int, seed: int = 0):
        if not waves:
            raise ValueError("SegmentIterator: no waveforms")
        self.waves, self.batch, self.seg, self.seed, self.index = list(waves), batch_size, segment, seed, 0

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        r = np.random.default_rng([self.seed, self.index])
        self.index += 1
        out = np.zeros((self.batch, self.seg), np.float32)
        for b in range(self.batch):
            w = self.waves[int(r.integers(len(self.waves)))]
            s = int(r.integers(0, max(w.size - self.seg, 0) + 1))
            piece = w[s:s + self.seg]
            out[b, :piece.size] = piece
        return out

    def get_state(self):
        return {"index": self.index}

    def set_state(self, s):
        self.index = int(s["index"])


@dataclasses.dataclass(frozen=True)
class VAETraining:
    """The pieces of a VAE GAN run (:func:`vae_training`): both networks, both optimizers, the generator's
    lr schedule, :func:`gan_settings`, the training segment length (samples, a multiple of the hop) and
    the update ``step`` (:func:`make_gan_train_step`)."""
    vae: OobleckVAE
    disc: VL.MultiScaleSTFTDiscriminator
    gen_tx: optax.GradientTransformation
    disc_tx: optax.GradientTransformation
    lr_schedule: Any
    settings: dict
    segment: int
    step: TrainStep

    def init_state(self, rng) -> GANState:
        """Fresh :class:`GANState` (``rng`` split into generator, discriminator and base keys)."""
        return init_gan_state(self.vae, self.disc, self.gen_tx, self.disc_tx, rng, self.segment)


def vae_training(config) -> VAETraining:
    """The networks, optimizers and update of a VAE config (``configs/ezaudio_vae.py``)."""
    vcfg = vae_config_of(config)
    s = gan_settings(config)
    vae = OobleckVAE(vcfg)
    disc = VL.MultiScaleSTFTDiscriminator(n_ffts=s["disc_ffts"], filters=s["disc_filters"])
    gen_tx, disc_tx, sched = make_gan_optimizers(config)
    seg = int(round(s["segment_seconds"] * vcfg.sample_rate))
    seg = max(vcfg.hop_length, seg // vcfg.hop_length * vcfg.hop_length)
    step = make_gan_train_step(vae, disc, gen_tx, disc_tx, s["loss"], lr_schedule=sched)
    return VAETraining(vae, disc, gen_tx, disc_tx, sched, s, seg, step)


def training_waveforms(settings: dict, sample_rate: int, seed: int) -> list[np.ndarray]:
    """The run's audio from ``config.extra.audio_source`` ("toy" or "wav_glob"), list of float32 [T]."""
    if settings["audio_source"] == "toy":
        return toy_waveforms(settings["num_clips"], settings["clip_seconds"], sample_rate, seed=seed)
    if settings["audio_source"] == "wav_glob":
        return wav_waveforms(settings["wav_glob"], sample_rate)
    raise ValueError(f"config.extra.audio_source={settings['audio_source']!r}: expected 'toy' or 'wav_glob'")


def build_vae_training(config, mesh=None):  # noqa: ARG001 - the loop shards the batch over the mesh
    """``config.builder`` entry: the VAE GAN as a :class:`tta_jax.train.loop.Task` with its own state and
    step (:class:`VAETraining`), random segments of the training audio (each process draws its own,
    ``train.batch_size / processes`` a batch) and, as ``eval_fn`` every ``extra.eval_every`` steps,
    :func:`make_eval_fn` on a fixed batch of held-out clips (the first ``min(8, N // 8)``, at least 1)."""
    from tta_jax.train.loop import Task

    t = vae_training(config)
    s, sr = t.settings, t.vae.config.sample_rate
    waves = training_waveforms(s, sr, config.seed)
    n_eval = max(1, min(len(waves) // 8, 8))
    train_waves, eval_waves = (waves[n_eval:], waves[:n_eval]) if len(waves) > 1 else (waves, waves)
    it = SegmentIterator(train_waves, config.train.batch_size // jax.process_count(), t.segment,
                         seed=config.seed + 1000 * jax.process_index())
    eval_batch = next(SegmentIterator(eval_waves, max(len(eval_waves), 2), t.segment, seed=config.seed + 999))
    eval_fn = make_eval_fn(t.vae, sr, s["loss"].fft_sizes)

    def evaluate(params, step):  # noqa: ARG001
        return {f"eval/{k}": v for k, v in eval_fn(params, eval_batch).items()}

    return Task(train_iter=it, init_state=t.init_state, step_fn=t.step, eval_fn=evaluate,
                eval_every=s["eval_every"])


def train_vae(config, workdir: str, *, guard=None) -> dict:
    """Trains through :func:`tta_jax.train.loop.train` (resuming from ``workdir/checkpoints``) and returns
    {"state", "history" (this run's logged train metrics), "eval" (this run's evaluations), "result"}."""
    from tta_jax.train import loop

    mesh = loop.make_mesh_from_config(config.mesh)
    res = loop.train(config, workdir, build_vae_training(config, mesh), mesh=mesh, guard=guard)
    return {"state": res.state, "history": res.history, "eval": res.evals, "result": res}


def main(argv):
    del argv
    from absl import flags

    from tta_jax.train.loop import NonFiniteError

    logging.basicConfig(level=logging.INFO)
    cfg = flags.FLAGS["config"].value
    try:
        out = train_vae(cfg, flags.FLAGS["workdir"].value)
    except NonFiniteError as e:  # the last good checkpoint is kept; same exit status as launch.train
        logging.error("%s", e)
        sys.exit(3)
    if out["eval"]:
        print({k: round(v, 4) for k, v in out["eval"][-1].items()})


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "VAE config file (configs/ezaudio_vae*.py)")
    flags.DEFINE_string("workdir", None, "output directory")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
