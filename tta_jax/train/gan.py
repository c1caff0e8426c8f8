r"""GAN training of the waveform VAE (EzAudio / stable-audio-tools recipe).

Run:  python -m tta_jax.train.gan --config configs/ezaudio_vae.py --workdir /tmp/vae [--config.k=v ...]
      (tiny CPU smoke run: --config configs/ezaudio_vae_tiny.py; see each config's docstring.)

Recipe (docs/reference-architectures.md section 1, "Waveform VAE"):

- generator = :class:`tta_jax.codecs.oobleck.OobleckVAE` (encode -> sample -> decode);
  loss = ``w_stft * MRSTFT(7 scales) + w_kl * KL + w_adv * adv + w_fm * feature matching`` with
  KL 1e-4, adversarial 0.1, feature matching 5.0 (:mod:`tta_jax.codecs.vae_losses`);
- discriminator = EnCodec multi-scale STFT discriminator, hinge (or least-squares) loss;
- AdamW: generator lr 1.5e-4, betas (0.8, 0.99); discriminator lr 3e-4, betas (0.8, 0.99); weight decay
  1e-3 on conv kernels (not snake params/biases); stable-audio-tools' ``InverseLR`` schedule
  ``lr * (1 - warmup ** (step + 1)) * (1 + step / inv_gamma) ** -power`` (:func:`inverse_lr`);
- short random segments (0.5 s) of the training audio (:class:`SegmentIterator`).

:func:`make_gan_train_step` returns ONE pure function ``step(state, audio) -> (state, metrics)`` that
updates both networks (generator gradients use the discriminator before its update; the discriminator
sees the detached reconstruction); jit it once. The :class:`GANState` holds both param sets and both
optimizer states; its generator params are called ``params`` so
``tta_jax.train.checkpoint.load_params(workdir, ema=False)`` returns the VAE params of a run.

Config (``configs/ezaudio_vae*.py``, on :func:`tta_jax.config.base_config`): ``codec`` = OobleckConfig
fields or ``codec.preset``; ``optimizer.{lr,b1,b2,weight_decay,clip_norm}`` = generator;
``extra`` = discriminator and loss settings (see :func:`gan_settings`), ``extra.audio_source``
("toy" synthetic tones or "wav_glob" with ``extra.wav_glob``), ``extra.segment_seconds``,
``extra.eval_every``; ``train.{total_steps,batch_size,log_every,ckpt_every,keep_ckpts}``.
Outputs: ``workdir/checkpoints`` (resumable), ``workdir/metrics.jsonl`` (train losses every
``log_every``, ``eval/{mrstft,si_sdr,log_mel_l1}`` on a fixed held-out batch every ``eval_every``).
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tta_jax.codecs import vae_losses as VL
from tta_jax.codecs.oobleck import OobleckConfig, OobleckVAE, get_config as oobleck_preset, kl_loss
from tta_jax.train.optim import decay_mask
from tta_jax.train.step import all_finite, select_tree

log = logging.getLogger(__name__)


@flax.struct.dataclass
class GANState:
    step: jax.Array          # int32 scalar
    params: Any              # generator (VAE) params
    disc_params: Any
    opt_state: Any           # generator optimizer state
    disc_opt_state: Any
    rng: jax.Array           # uint32[2]
    nonfinite_total: jax.Array


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
                    disc_opt_state=disc_tx.init(dp), rng=kb, nonfinite_total=jnp.zeros((), jnp.int32))


def _as_channels(audio, c):
    audio = jnp.asarray(audio, jnp.float32)
    return audio[..., None] if audio.ndim == 2 and c == 1 else audio


def make_gan_train_step(vae: OobleckVAE, disc: VL.MultiScaleSTFTDiscriminator, gen_tx, disc_tx,
                        loss_cfg: GANLossConfig = GANLossConfig()):
    """-> ``step(state: GANState, audio [B, T] or [B, T, C]) -> (state, metrics)``; pure, jit it.

    Both networks are updated in the same call. A non-finite loss/gradient skips both updates.
    """
    lc = loss_cfg

    def step(state: GANState, audio):
        audio = _as_channels(audio, vae.config.audio_channels)
        rng = jax.random.fold_in(state.rng, state.step)
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
        finite = all_finite((g_total, g_grads, d_total, d_grads))

        g_up, g_opt = gen_tx.update(g_grads, state.opt_state, state.params)
        g_new = optax.apply_updates(state.params, g_up)
        d_up, d_opt = disc_tx.update(d_grads, state.disc_opt_state, state.disc_params)
        d_new = optax.apply_updates(state.disc_params, d_up)
        d_ok = finite & (adv_on > 0)

        g_params, g_opt = select_tree(finite, (g_new, g_opt), (state.params, state.opt_state))
        d_params, d_opt = select_tree(d_ok, (d_new, d_opt), (state.disc_params, state.disc_opt_state))
        new_state = state.replace(
            step=state.step + 1, params=g_params, opt_state=g_opt, disc_params=d_params, disc_opt_state=d_opt,
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
        metrics = dict(gm, gen_loss=g_total, disc_loss=d_total, finite=finite.astype(jnp.float32),
                       gen_grad_norm=optax.global_norm(g_grads), disc_grad_norm=optax.global_norm(d_grads))
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


def build_vae_training(config):
    """(vae, disc, gen_tx, disc_tx, step_fn, settings, segment length) from a VAE config."""
    vcfg = vae_config_of(config)
    s = gan_settings(config)
    vae = OobleckVAE(vcfg)
    disc = VL.MultiScaleSTFTDiscriminator(n_ffts=s["disc_ffts"], filters=s["disc_filters"])
    gen_tx, disc_tx, sched = make_gan_optimizers(config)
    seg = int(round(s["segment_seconds"] * vcfg.sample_rate))
    seg = max(vcfg.hop_length, seg // vcfg.hop_length * vcfg.hop_length)
    step_fn = make_gan_train_step(vae, disc, gen_tx, disc_tx, s["loss"])
    return vae, disc, gen_tx, disc_tx, step_fn, s, seg, sched


def train_vae(config, workdir: str) -> dict:
    """Trains (resuming from ``workdir/checkpoints``) and returns {"state", "history", "eval"}."""
    from tta_jax.train.checkpoint import Checkpointer
    from tta_jax.train.observe import JsonlWriter

    vae, disc, gen_tx, disc_tx, step_fn, s, seg, sched = build_vae_training(config)
    sr = vae.config.sample_rate
    if s["audio_source"] == "toy":
        waves = toy_waveforms(s["num_clips"], s["clip_seconds"], sr, seed=config.seed)
    elif s["audio_source"] == "wav_glob":
        waves = wav_waveforms(s["wav_glob"], sr)
    else:
        raise ValueError(f"config.extra.audio_source={s['audio_source']!r}: expected 'toy' or 'wav_glob'")
    n_eval = max(1, min(len(waves) // 8, 8))
    train_waves, eval_waves = (waves[n_eval:], waves[:n_eval]) if len(waves) > 1 else (waves, waves)
    it = SegmentIterator(train_waves, config.train.batch_size, seg, seed=config.seed)
    eval_batch = next(SegmentIterator(eval_waves, max(len(eval_waves), 2), seg, seed=config.seed + 999))
    eval_fn = make_eval_fn(vae, sr, s["loss"].fft_sizes)

    os.makedirs(workdir, exist_ok=True)
    tc = config.train
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.keep_ckpts or None,
                        async_save=False)
    init = lambda k: init_gan_state(vae, disc, gen_tx, disc_tx, k, seg)  # noqa: E731
    latest = ckpt.latest_step()
    if latest is not None:
        abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
        state, data_state, _ = ckpt.restore(abstract, latest)
        it.set_state(data_state)
        log.info("resumed VAE training at step %d", latest)
    else:
        state = jax.jit(init)(jax.random.PRNGKey(config.seed))
    jitted = jax.jit(step_fn, donate_argnums=(0,))
    writer = JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
    history, evals = [], []
    step = int(state.step)
    acc: dict[str, list] = {}
    try:
        while step < tc.total_steps:
            state, m = jitted(state, next(it))
            step += 1
            for k, v in m.items():
                acc.setdefault(k, []).append(v)
            if step % tc.log_every == 0 or step == tc.total_steps:
                vals = {k: float(np.mean(jax.device_get(v))) for k, v in acc.items()}
                vals["lr"] = float(sched(step - 1))
                acc = {}
                history.append(dict(vals, step=step))
                writer.write(step, vals)
                log.info("vae step %d: %s", step, {k: round(v, 4) for k, v in vals.items()})
            if step % s["eval_every"] == 0 or step == tc.total_steps:
                ev = {f"eval/{k}": float(v) for k, v in eval_fn(state.params, eval_batch).items()}
                evals.append(dict(ev, step=step))
                writer.write(step, ev)
                log.info("vae eval %d: %s", step, ev)
            if step % tc.ckpt_every == 0 and step != tc.total_steps:
                ckpt.save(step, state, it.get_state(), force=True)
        ckpt.save(step, state, it.get_state(), force=True)
        ckpt.wait()
    finally:
        ckpt.close()
        writer.close()
    return {"state": state, "history": history, "eval": evals}


def main(argv):
    del argv
    from absl import flags

    logging.basicConfig(level=logging.INFO)
    cfg = flags.FLAGS["config"].value
    out = train_vae(cfg, flags.FLAGS["workdir"].value)
    if out["eval"]:
        print({k: round(v, 4) for k, v in out["eval"][-1].items()})


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "VAE config file (configs/ezaudio_vae*.py)")
    flags.DEFINE_string("workdir", None, "output directory")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
