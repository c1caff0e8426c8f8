"""SERST reference-audio encoder: masked SE-ResNet-34 + attentive statistics pooling (H/ASP) over log-mels.

The SERST prompt adapter (``shared/papers/serst_prompt_adapter.txt``; ``shared/docs/reference-architectures.md``
section 4) embeds a reference clip with a ResNet-34 speaker-encoder-style network with H/ASP pooling ("In defence
of metric learning for speaker recognition", Chung et al. 2020), projects to 1024-d and L2-normalises; it is
trained from scratch jointly with the adapter. The paper gives no further detail, so the shape follows the public
H/ASP model, ``ResNetSE34V2`` in clovaai/voxceleb_trainer (``models/ResNetSE34V2.py``, ``models/ResNetBlocks.py``;
read for facts only, no code taken from it):

- widths: ResNetSE34V2 (the README's ``ResNetSE34Half``) uses ``num_filters = [32, 64, 128, 256]``, i.e. half
  the torchvision ResNet-34 widths (64, 128, 256, 512); ``ResNetSE34L`` ("Fast ResNet-34") uses a quarter,
  ``[16, 32, 64, 128]``. Blocks per stage ``[3, 4, 6, 3]``. Our defaults are the V2 ones.
- stem: one 3x3 conv, stride 1, with bias, then ReLU then norm (ReLU *before* the norm, as in the code).
- ``SEBasicBlock``: 3x3 conv (stride of the stage, no bias) -> ReLU -> norm -> 3x3 conv (no bias) -> norm ->
  squeeze-and-excitation (global average -> Linear(C, C // 8) -> ReLU -> Linear(C // 8, C) -> sigmoid, scales
  channels) -> + shortcut -> ReLU. The shortcut is a 1x1 conv with the stage stride (no bias) + norm when the
  stride or width changes. Stage strides: 1, 2, 2, 2 in both the frequency and the time axis (padding 1), so the
  frequency axis ends at ``ceil(M / 8)`` bins (10 for 80 mels) and time at ``ceil(T / 8)`` frames.
- input: log-mel with a per-utterance per-mel-bin mean/variance normalisation over time (``InstanceNorm1d``,
  no affine, eps 1e-5). This is our default (``input_norm="per_bin"``); note it removes each clip's long-term
  spectral envelope, which is what speaker encoders want (channel normalisation) but is part of a sound event's
  "style". ``input_norm="global"`` (one mean/variance per clip, envelope kept) and ``"none"`` are available; the
  paper does not say, so the choice is left to the SERST training config.
- ASP: features [C, F', T'] flattened to ``C * F'`` per frame; attention = Conv1d(k=1, -> 128) -> ReLU ->
  BatchNorm1d -> Conv1d(k=1, 128 -> C * F') -> softmax over time (one weight per feature and frame); pooled
  ``mu = sum_t w x``, ``sigma = sqrt(clamp(sum_t w x^2 - mu^2, 1e-5))``, concat -> Linear(2 C F', nOut).
  The model does not normalise (its losses do); SERST L2-normalises, so we do.
- init: convs kaiming-normal (fan_out, ReLU gain); Linear layers at the PyTorch default.

Deviations (all deliberate):

- Norm: the clovaai model uses BatchNorm everywhere. Our trainer (``tta_jax/train``: ``loop.py``/``step.py``
  apply ``model.apply(params, ...)`` on a params-only tree; nothing handles a ``batch_stats`` collection or
  ``mutable=``) cannot carry running statistics, so 2-D norms are GroupNorm (``norm_groups`` groups, eps 1e-5)
  and the attention MLP's BatchNorm1d(128) is a LayerNorm over the 128 features (per frame). Parameter counts are
  unchanged (scale + bias per channel either way).
- Masking: references are padded to a common ``T`` with a frame mask [B, T]. Every statistic over time (the input
  normalisation, GroupNorm, SE pooling, ASP softmax/moments) uses valid frames only, and activations at masked
  frames are zeroed before every convolution, so a convolution near the end of a clip sees the same zeros as the
  unpadded clip's zero padding. Convs use explicit padding 1 (as PyTorch) rather than ``"SAME"``, whose split
  depends on the parity of ``T``. A stride-2 stage keeps frame ``i`` valid iff input frame ``2 i`` was. Hence
  appending masked frames (any values) leaves the output unchanged up to float reduction order.
- Front end (:func:`reference_log_mel`): reuses ``tta_jax.audio.mel`` (periodic Hann, |STFT| magnitude, Slaney mel
  filterbank, ``log(max(x, 1e-5))``, reflect centre padding) with 80 bins, 16 kHz, n_fft 512, win 400, hop 160,
  fmin 20, fmax 7600; the clovaai front end is torchaudio's (Hamming window, power spectrum, HTK mel scale, no
  fmin/fmax, ``log(x + 1e-6)``; 40/64 mels). Pre-emphasis 0.97 is kept (as clovaai's ``PreEmphasis``). The
  per-bin input normalisation inside the model absorbs most of the remaining per-bin offset/scale difference.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tta_jax.audio.mel import MelConfig, log_mel_spectrogram
from tta_jax.nn.layers import dense, layer_norm, torch_linear_default
from tta_jax.nn.sharding import dense_init

Array = jax.Array

INPUT_NORM_EPS = 1e-5  # InstanceNorm1d default
ASP_VAR_FLOOR = 1e-5   # clamp(min=1e-5) before the sqrt in ASP
# torch kaiming_normal_(mode="fan_out", nonlinearity="relu") has variance 2 / fan_out; flax's "normal" here is the
# truncated normal rescaled to that variance (torch's is untruncated).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# 80-bin log-mel at 16 kHz with speaker-encoder framing (25 ms Hann window, 10 ms hop), centre padding.
REFERENCE_MEL = MelConfig(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=80, fmin=20.0,
                          fmax=7600.0, padding="tacotron")
PREEMPHASIS = 0.97
INPUT_NORMS = ("per_bin", "global", "none")


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ReferenceEncoderConfig:
    """Static facts of the reference encoder.

    Attributes:
      n_mels: mel bins M of the input [B, T, M].
      layers: SE basic blocks per stage ((3, 4, 6, 3) = ResNet-34).
      channels: width per stage ((32, 64, 128, 256) = ResNetSE34V2 half widths).
      se_reduction: squeeze-and-excitation reduction r (hidden width ``max(1, C // r)``).
      attention_dim: hidden width of the ASP attention MLP (128 in clovaai).
      norm_groups: GroupNorm groups (BatchNorm replacement); must divide every stage width.
      out_dim: embedding size (1024 in SERST).
      input_norm: masked normalisation of the input log-mel over valid frames: ``"per_bin"`` (mean/variance per
        mel bin over time, clovaai's InstanceNorm1d), ``"global"`` (one mean/variance over time and bins: keeps
        the spectral envelope) or ``"none"``.
      dtype: compute dtype of convs / denses (params stay float32; statistics and the output are float32).
    """

    n_mels: int = 80
    layers: tuple[int, ...] = (3, 4, 6, 3)
    channels: tuple[int, ...] = (32, 64, 128, 256)
    se_reduction: int = 8
    attention_dim: int = 128
    norm_groups: int = 8
    out_dim: int = 1024
    input_norm: str = "per_bin"
    dtype: Any = jnp.float32

    def __post_init__(self):
        # lists from a config file become tuples (hashable, comparable)
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"ReferenceEncoderConfig.input_norm must be one of {INPUT_NORMS}, got {self.input_norm!r}")
        if len(self.layers) != len(self.channels) or not self.layers:
            raise ValueError(f"ReferenceEncoderConfig: layers {self.layers} and channels {self.channels} must be "
                             f"non-empty and of equal length")
        if any(n < 1 for n in self.layers):
            raise ValueError(f"ReferenceEncoderConfig.layers must be >= 1 per stage, got {self.layers}")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"ReferenceEncoderConfig.norm_groups={self.norm_groups} does not divide channels {bad}")

    @property
    def strides(self) -> tuple[int, ...]:
        """Per-stage stride (both axes): 1 for the first stage, 2 after."""
        return (1,) + (2,) * (len(self.layers) - 1)

    @property
    def out_freq(self) -> int:
        """Frequency bins F' after the stages (``ceil`` halving per stride-2 stage)."""
        f = self.n_mels
        for s in self.strides:
            f = -(-f // s)
        return f

    @property
    def pooled_dim(self) -> int:
        """Per-frame feature size ``C_last * F'`` fed to ASP (its output is twice this)."""
        return self.channels[-1] * self.out_freq

    def replace(self, **kw) -> "ReferenceEncoderConfig":
        return dataclasses.replace(self, **kw)


CONFIGS: dict[str, ReferenceEncoderConfig] = {
    # SERST: ResNet-34 (ResNetSE34V2 widths), 80 mels, 1024-d.
    "serst": ReferenceEncoderConfig(),
    # Tiny config for CPU tests / toy training.
    "tiny": ReferenceEncoderConfig(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), se_reduction=4, attention_dim=32,
                                   norm_groups=4, out_dim=64),
}


def get_config(name: str, **overrides) -> ReferenceEncoderConfig:
    """A named config (``serst``, ``tiny``), with field overrides."""
    if name not in CONFIGS:
        raise KeyError(f"unknown reference-encoder config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name].replace(**overrides) if overrides else CONFIGS[name]


# --------------------------------------------------------------------------------------------------
# Front end
# --------------------------------------------------------------------------------------------------
def preemphasis(audio: Array, coef: float = PREEMPHASIS) -> Array:
    """[B, N] -> [B, N]: ``y[t] = x[t] - coef * x[t-1]`` with ``x[-1]`` taken as ``x[1]`` (reflect)."""
    prev = jnp.concatenate([audio[:, 1:2], audio[:, :-1]], axis=1)
    return audio - coef * prev


def reference_log_mel(audio: Array, sample_rate: int, *, cfg: MelConfig = REFERENCE_MEL,
                      preemph: float | None = PREEMPHASIS) -> Array:
    """Reference clip -> log-mel: audio [B, N] at ``sample_rate`` -> [B, N // hop + 1, n_mels] float32.

    ``cfg`` (default :data:`REFERENCE_MEL`: 16 kHz, n_fft 512, Hann 400, hop 160, 80 Slaney mels 20-7600 Hz,
    centre reflect padding) goes through :func:`tta_jax.audio.mel.log_mel_spectrogram`; ``preemph`` (None skips)
    is applied to the waveform first. Pure and jit-able; no resampling here (``tta_jax.audio.io.resample``).
    """
    if sample_rate != cfg.sample_rate:
        raise ValueError(f"reference_log_mel: audio at {sample_rate} Hz but the mel config expects "
                         f"{cfg.sample_rate} Hz; resample first (tta_jax.audio.io.resample)")
    audio = jnp.asarray(audio, jnp.float32)
    if audio.ndim != 2:
        raise ValueError(f"reference_log_mel: expected audio [B, N], got shape {audio.shape}")
    if preemph is not None:
        audio = preemphasis(audio, preemph)
    return log_mel_spectrogram(audio, cfg)


def reference_frame_mask(num_samples: Array, num_frames: int, cfg: MelConfig = REFERENCE_MEL) -> Array:
    """Frame mask [B, num_frames] (bool) for clips of ``num_samples`` [B] valid samples zero-padded to a common
    length: frame ``t`` is valid iff ``t < cfg.num_frames(n)`` (centre padding: ``n // hop + 1``)."""
    n = jnp.asarray(num_samples)
    if cfg.padding == "tacotron":
        valid = n // cfg.hop_length + 1
    else:
        valid = n // cfg.hop_length
    return jnp.arange(num_frames)[None, :] < valid[:, None]


# --------------------------------------------------------------------------------------------------
# Masked helpers (pure)
# --------------------------------------------------------------------------------------------------
def _zero_masked(x: Array, mask: Array) -> Array:
    """x [B, T, ...], mask [B, T] -> x with masked frames set to 0 (``where``, so junk/NaN does not leak)."""
    m = mask.reshape(mask.shape + (1,) * (x.ndim - 2))
    return jnp.where(m, x, jnp.zeros((), x.dtype))


def _downsample_mask(mask: Array, stride: int) -> Array:
    """[B, T] -> [B, ceil(T / stride)]: output frame i is valid iff input frame ``stride * i`` was."""
    return mask[:, ::stride]


def masked_time_normalize(x: Array, mask: Array, *, per_bin: bool = True, eps: float = INPUT_NORM_EPS) -> Array:
    """Mean/variance normalisation over valid frames: x [B, T, M], mask [B, T] -> [B, T, M] float32 (biased
    variance). ``per_bin``: statistics per (batch, bin) over time (InstanceNorm1d); else per batch row over
    (time, bins). Masked frames come back as 0."""
    x = x.astype(jnp.float32)
    m = mask[:, :, None]
    axes = (1,) if per_bin else (1, 2)
    cnt = jnp.sum(mask, axis=1)[:, None, None].astype(jnp.float32) * (1 if per_bin else x.shape[2])
    cnt = jnp.maximum(cnt, 1.0)
    mean = jnp.sum(jnp.where(m, x, 0.0), axis=axes, keepdims=True) / cnt
    var = jnp.sum(jnp.where(m, jnp.square(x - mean), 0.0), axis=axes, keepdims=True) / cnt
    return jnp.where(m, (x - mean) * jax.lax.rsqrt(var + eps), 0.0)


def attentive_stats(x: Array, logits: Array, mask: Array, floor: float = ASP_VAR_FLOOR) -> Array:
    """Masked attentive statistics: x, logits [B, T, D], mask [B, T] -> [B, 2 D] = concat(mu, sigma) (float32).

    ``w = softmax_t(logits)`` over valid frames only; ``mu = sum_t w x``; ``sigma = sqrt(max(sum_t w x^2 - mu^2,
    floor))``. A row with no valid frame gives ``mu = 0``, ``sigma = sqrt(floor)`` (finite, meaningless).
    """
    x = x.astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    m = mask[:, :, None]
    x = jnp.where(m, x, 0.0)
    logits = jnp.where(m, logits, -jnp.inf)
    top = jnp.max(logits, axis=1, keepdims=True)
    e = jnp.where(m, jnp.exp(logits - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    w = e / jnp.maximum(jnp.sum(e, axis=1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    mu = jnp.sum(w * x, axis=1)
    var = jnp.sum(w * jnp.square(x), axis=1) - jnp.square(mu)
    return jnp.concatenate([mu, jnp.sqrt(jnp.maximum(var, floor))], axis=-1)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """[B, D] -> [B, D] float32 with unit L2 norm per row (rows of norm < sqrt(eps) are divided by sqrt(eps))."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps))


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------
def _conv(features: int, *, kernel: int, stride: int, use_bias: bool, name: str, dtype) -> nn.Conv:
    """Channels-last conv [B, T, M, C] with PyTorch-style symmetric padding ``(kernel - 1) // 2``."""
    pad = (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=use_bias, dtype=dtype, name=name,
                   kernel_init=dense_init(kaiming_fan_out, (None, None, "conv_in", "conv_out")),
                   bias_init=dense_init(nn.initializers.zeros, ("conv_out",)))


class MaskedGroupNorm(nn.Module):
    """GroupNorm over (time, freq, channels-in-group) of valid frames: x [B, T, M, C], mask [B, T]."""

    groups: int
    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        full = jnp.broadcast_to(mask[:, :, None, None], x.shape)
        return nn.GroupNorm(num_groups=self.groups, epsilon=self.eps, dtype=self.dtype, use_fast_variance=False,
                            scale_init=dense_init(nn.initializers.ones, ("norm",)),
                            bias_init=dense_init(nn.initializers.zeros, ("norm",)), name="norm")(x, mask=full)


class SqueezeExcite(nn.Module):
    """Channel gating from the masked mean over (time, freq): x [B, T, M, C], mask [B, T] -> [B, T, M, C]."""

    reduction: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        c = x.shape[-1]
        cnt = jnp.maximum(jnp.sum(mask, axis=1).astype(jnp.float32), 1.0) * x.shape[2]
        pooled = jnp.sum(_zero_masked(x, mask).astype(jnp.float32), axis=(1, 2)) / cnt[:, None]   # [B, C]
        h = dense(max(1, c // self.reduction), ("embed", "mlp"), name="fc1", dtype=self.dtype,
                  kernel_init=torch_linear_default)(pooled.astype(self.dtype))
        g = dense(c, ("mlp", "embed"), name="fc2", dtype=self.dtype, kernel_init=torch_linear_default)(nn.relu(h))
        return x * nn.sigmoid(g)[:, None, None, :].astype(x.dtype)


class SEBasicBlock(nn.Module):
    """Masked SE basic block: x [B, T, M, Cin], mask [B, T] -> ([B, T', M', C], mask [B, T'])."""

    channels: int
    stride: int
    se_reduction: int
    norm_groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        out_mask = _downsample_mask(mask, self.stride)
        x = _zero_masked(x, mask)
        h = _conv(self.channels, kernel=3, stride=self.stride, use_bias=False, name="conv1", dtype=self.dtype)(x)
        h = MaskedGroupNorm(self.norm_groups, dtype=self.dtype, name="norm1")(nn.relu(h), out_mask)
        h = _conv(self.channels, kernel=3, stride=1, use_bias=False, name="conv2",
                  dtype=self.dtype)(_zero_masked(h, out_mask))
        h = MaskedGroupNorm(self.norm_groups, dtype=self.dtype, name="norm2")(h, out_mask)
        h = SqueezeExcite(self.se_reduction, dtype=self.dtype, name="se")(h, out_mask)
        if self.stride != 1 or x.shape[-1] != self.channels:
            res = _conv(self.channels, kernel=1, stride=self.stride, use_bias=False, name="downsample_conv",
                        dtype=self.dtype)(x)
            res = MaskedGroupNorm(self.norm_groups, dtype=self.dtype, name="downsample_norm")(res, out_mask)
        else:
            res = x
        return nn.relu(h + res), out_mask


class ReferenceEncoder(nn.Module):
    """Reference clip log-mel -> unit-norm embedding.

    ``__call__(mel [B, T, M], mask [B, T] bool or None) -> [B, out_dim]`` float32, unit L2 norm per row.
    ``mask=None`` means every frame is valid; masked frames may hold anything (they are never read).
    """

    cfg: ReferenceEncoderConfig = ReferenceEncoderConfig()

    @nn.compact
    def __call__(self, mel, mask=None):
        cfg = self.cfg
        if mel.ndim != 3 or mel.shape[-1] != cfg.n_mels:
            raise ValueError(f"ReferenceEncoder: expected log-mel [B, T, {cfg.n_mels}], got shape {mel.shape}")
        b, t, _ = mel.shape
        if mask is None:
            mask = jnp.ones((b, t), bool)
        elif mask.shape != (b, t):
            raise ValueError(f"ReferenceEncoder: mask shape {mask.shape} != [B, T] = {(b, t)}")
        mask = mask.astype(bool)
        if cfg.input_norm == "none":
            x = _zero_masked(mel.astype(jnp.float32), mask)
        else:
            x = masked_time_normalize(mel, mask, per_bin=cfg.input_norm == "per_bin")
        x = x[..., None].astype(cfg.dtype)                                       # [B, T, M, 1]

        x = _conv(cfg.channels[0], kernel=3, stride=1, use_bias=True, name="conv_in", dtype=cfg.dtype)(x)
        x = MaskedGroupNorm(cfg.norm_groups, dtype=cfg.dtype, name="norm_in")(nn.relu(x), mask)
        for s, (n, c, stride) in enumerate(zip(cfg.layers, cfg.channels, cfg.strides)):
            for i in range(n):
                x, mask = SEBasicBlock(c, stride if i == 0 else 1, cfg.se_reduction, cfg.norm_groups,
                                       dtype=cfg.dtype, name=f"layer{s + 1}_{i}")(x, mask)

        bq, tq, fq, cq = x.shape                                                 # [B, T', F', C]
        feats = _zero_masked(x, mask).reshape(bq, tq, fq * cq)                   # [B, T', F' C]
        a = dense(cfg.attention_dim, ("embed", "mlp"), name="attention_in", dtype=cfg.dtype,
                  kernel_init=torch_linear_default)(feats)
        a = layer_norm("attention_norm", dtype=cfg.dtype)(nn.relu(a))
        logits = dense(fq * cq, ("mlp", "embed"), name="attention_out", dtype=cfg.dtype,
                       kernel_init=torch_linear_default)(a)
        pooled = attentive_stats(feats, logits, mask)                            # [B, 2 F' C] float32
        emb = dense(cfg.out_dim, ("embed", "mlp"), name="fc", dtype=cfg.dtype,
                    kernel_init=torch_linear_default)(pooled.astype(cfg.dtype))
        return l2_normalize(emb)


def param_count(cfg: ReferenceEncoderConfig) -> int:
    """Number of parameters of ``ReferenceEncoder(cfg)`` from ``jax.eval_shape`` (no init compute)."""
    shapes = jax.eval_shape(ReferenceEncoder(cfg).init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, 16, cfg.n_mels), jnp.float32))
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(nn.meta.unbox(shapes))))
