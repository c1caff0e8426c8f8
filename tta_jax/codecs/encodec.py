"""EnCodec (SEANet encoder/decoder + residual vector quantiser), channels-last ``[B, T, C]``.

Architecture (the facts of ``transformers.EncodecModel`` / audiocraft's ``EncodecModel``):

- every conv is an "EnCodec conv": pad (causal: all ``k_eff - stride`` on the left; otherwise split with the
  extra sample on the left) with ``pad_mode`` plus ``(-T) % stride`` extra samples on the right (so every input
  sample is covered), then a VALID conv; ``time_group_norm`` adds ``GroupNorm(1, C)`` after it. Transposed
  convs (kernel ``2r``, stride ``r``) are unpadded and trim ``k - r`` samples afterwards (causal: the right
  ``ceil((k - r) * trim_right_ratio)``; otherwise ``(k - r) // 2`` on the right); the norm comes before the trim;
- residual block: ELU, conv(k=residual_kernel_size, dilation growth**j, C -> C/compress), ELU, conv1(-> C), plus
  a 1x1 conv shortcut (``use_conv_shortcut``) or identity;
- encoder: conv(k=kernel_size, audio -> F) -> per ratio in reversed(upsampling_ratios): residual blocks, ELU,
  conv(k=2r, stride r, C -> 2C) -> LSTM (``num_lstm_layers``, + skip) -> ELU -> conv(k=last_kernel_size, ->
  hidden_size);
- decoder: conv(k=kernel_size, hidden_size -> F * 2^n) -> LSTM -> per ratio: ELU, transposed conv (C -> C/2),
  residual blocks -> ELU -> conv(k=last_kernel_size, F -> audio_channels);
- RVQ: ``num_quantizers`` codebooks ``[codebook_size, codebook_dim]``; stage ``q`` picks the nearest
  (Euclidean) code of the residual left by stages ``< q``; the latent is the sum of the chosen vectors.
  Bandwidth ``b`` kbps uses ``max(1, floor(1000 b / (log2(codebook_size) * frame_rate)))`` codebooks.

The PyTorch convs are weight-normalised; here every conv is plain (:mod:`tta_jax.convert.encodec` folds
the norm). Training pieces (straight-through estimator, commitment loss, EMA codebook update with Laplace
smoothing, as SoundStream / EnCodec) are pure functions below; codebooks live in ``params`` as
``quantizer/codebooks`` ``[num_quantizers, codebook_size, codebook_dim]`` and get no gradient: a training
step replaces them with :func:`rvq_ema_update`'s output.

Parameter names: ``encoder/conv_in``, ``encoder/block_{i}_res_{j}/{conv1,conv2,shortcut}``,
``encoder/block_{i}_down``, ``encoder/lstm/layer_{l}_{kernel_ih,kernel_hh,bias}``, ``encoder/conv_out``;
``decoder/conv_in``, ``decoder/lstm``, ``decoder/block_{i}_up``, ``decoder/block_{i}_res_{j}``,
``decoder/conv_out``; ``quantizer/codebooks``. Each conv holds ``conv/{kernel,bias}`` (+ ``norm/{scale,bias}``
for time_group_norm).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

_PAD_MODES = {"reflect": "reflect", "constant": "constant", "zero": "constant", "replicate": "edge",
              "circular": "wrap"}


@dataclasses.dataclass(frozen=True)
class EncodecConfig:
    """Static facts of an EnCodec model (field names as ``transformers.EncodecConfig``).

    Attributes:
      sampling_rate: audio sample rate in Hz.
      audio_channels: 1 (mono) or 2 (stereo).
      target_bandwidths: kbps the model supports; the last one sets ``num_quantizers``.
      normalize: divide the input by its RMS (+1e-8) before encoding and multiply the decoded audio back.
      hidden_size: encoder output / decoder input channels.
      num_filters: base width ``F`` of the SEANet stacks.
      num_residual_layers: residual blocks per stage.
      upsampling_ratios: decoder up-sampling ratios (the encoder uses them reversed).
      norm_type: "weight_norm" (folded: plain convs) or "time_group_norm" (GroupNorm(1, C) after each conv).
      kernel_size / last_kernel_size / residual_kernel_size: kernel of the first / last / residual convs.
      dilation_growth_rate: residual block ``j`` dilates by ``growth ** j``.
      use_causal_conv: causal padding (24 kHz model) or symmetric (48 kHz, MusicGen 32 kHz, AudioGen 16 kHz).
      pad_mode: "reflect", "constant", "replicate" or "circular".
      compress: channel reduction in the residual branch.
      num_lstm_layers: LSTM layers after the encoder / before the decoder (0: none).
      trim_right_ratio: share of the transposed-conv trim taken on the right (causal only).
      codebook_size: codes per codebook (a power of 2).
      codebook_dim: code vector width (None: ``hidden_size``, filled in at construction).
      use_conv_shortcut: 1x1 conv skip in residual blocks (False: identity).
      chunk_length_s / overlap: chunked encoding (48 kHz model); not supported here (ValueError at use).
    """

    sampling_rate: int = 24000
    audio_channels: int = 1
    target_bandwidths: tuple[float, ...] = (1.5, 3.0, 6.0, 12.0, 24.0)
    normalize: bool = False
    hidden_size: int = 128
    num_filters: int = 32
    num_residual_layers: int = 1
    upsampling_ratios: tuple[int, ...] = (8, 5, 4, 2)
    norm_type: str = "weight_norm"
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "reflect"
    compress: int = 2
    num_lstm_layers: int = 2
    trim_right_ratio: float = 1.0
    codebook_size: int = 1024
    codebook_dim: int | None = None
    use_conv_shortcut: bool = True
    chunk_length_s: float | None = None
    overlap: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "target_bandwidths", tuple(float(b) for b in self.target_bandwidths))
        object.__setattr__(self, "upsampling_ratios", tuple(int(r) for r in self.upsampling_ratios))
        if self.codebook_dim is None:  # as transformers: defaults to hidden_size
            object.__setattr__(self, "codebook_dim", self.hidden_size)
        if self.norm_type not in ("weight_norm", "time_group_norm"):
            raise ValueError(f"EncodecConfig.norm_type must be 'weight_norm' or 'time_group_norm', "
                             f"got {self.norm_type!r}")
        if self.pad_mode not in _PAD_MODES:
            raise ValueError(f"EncodecConfig.pad_mode must be one of {sorted(_PAD_MODES)}, got {self.pad_mode!r}")
        if self.codebook_size < 1 or 2 ** int(math.log2(self.codebook_size)) != self.codebook_size:
            raise ValueError(f"EncodecConfig.codebook_size must be a power of 2, got {self.codebook_size}")
        if not self.target_bandwidths:
            raise ValueError("EncodecConfig.target_bandwidths must not be empty")
        if not (self.use_causal_conv or self.trim_right_ratio == 1.0):
            raise ValueError("EncodecConfig.trim_right_ratio != 1.0 only makes sense with use_causal_conv")

    @property
    def dim(self) -> int:
        """Code vector width (``codebook_dim`` or ``hidden_size``)."""
        return self.codebook_dim if self.codebook_dim is not None else self.hidden_size

    @property
    def hop_length(self) -> int:
        """Audio samples per code frame."""
        return int(math.prod(self.upsampling_ratios))

    @property
    def frame_rate(self) -> int:
        """Code frames per second, rounded up (as transformers)."""
        return math.ceil(self.sampling_rate / self.hop_length)

    @property
    def codebook_nbits(self) -> int:
        return math.ceil(math.log2(self.codebook_size))

    @property
    def num_quantizers(self) -> int:
        """Codebooks of the model (the largest target bandwidth's)."""
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * self.codebook_nbits))

    def quantizers_for_bandwidth(self, bandwidth: float | None) -> int:
        """Codebooks used at ``bandwidth`` kbps (None or <= 0: all of them)."""
        if bandwidth is None or bandwidth <= 0:
            return self.num_quantizers
        bw_per_q = math.log2(self.codebook_size) * self.frame_rate
        return int(max(1, math.floor(bandwidth * 1000 / bw_per_q)))


_HF_FIELDS = tuple(f.name for f in dataclasses.fields(EncodecConfig))


def from_hf_config(d: Mapping[str, Any]) -> EncodecConfig:
    """``transformers.EncodecConfig.to_dict()`` / a ``config.json`` dict -> :class:`EncodecConfig`
    (unknown keys such as ``model_type`` or ``architectures`` are ignored)."""
    if d.get("model_type", "encodec") != "encodec":
        raise ValueError(f"not an EnCodec config: model_type={d.get('model_type')!r}")
    kw = {k: d[k] for k in _HF_FIELDS if k in d}
    for k in ("target_bandwidths", "upsampling_ratios"):
        if k in kw:
            kw[k] = tuple(kw[k])
    return EncodecConfig(**kw)


CONFIGS: dict[str, EncodecConfig] = {
    # facebook/encodec_24khz (= transformers EncodecConfig defaults): causal, 75 Hz, 32 x 1024 codebooks.
    "encodec_24khz": EncodecConfig(),
    # facebook/encodec_32khz (MusicGen): non-causal, 50 Hz, 4 x 2048 codebooks, identity shortcut.
    "encodec_32khz": EncodecConfig(sampling_rate=32000, target_bandwidths=(2.2,), num_filters=64,
                                   upsampling_ratios=(8, 5, 4, 4), use_causal_conv=False, codebook_size=2048,
                                   use_conv_shortcut=False),
    # AudioGen's 16 kHz compression model (DC-LDM's token source) as audiocraft configures it: non-causal,
    # 50 Hz, 4 x 2048 codebooks (2.2 kbps). Weights ship in audiocraft's layout, not transformers'.
    "audiogen_16khz": EncodecConfig(sampling_rate=16000, target_bandwidths=(2.2,), num_filters=64,
                                    upsampling_ratios=(8, 5, 4, 2), use_causal_conv=False, codebook_size=2048,
                                    use_conv_shortcut=False),
    # Tiny config for tests: hop 4, 100 Hz at 400 Hz audio, 4 bits per code -> 4 codebooks at 1.6 kbps.
    "tiny": EncodecConfig(sampling_rate=400, target_bandwidths=(0.4, 0.8, 1.6), hidden_size=8, num_filters=4,
                          upsampling_ratios=(2, 2), codebook_size=16, num_lstm_layers=1),
}


def get_config(name: str) -> EncodecConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown EnCodec config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name]


# --------------------------------------------------------------------------------------------------
# RVQ: pure functions
# --------------------------------------------------------------------------------------------------
def vq_nearest(x: Array, codebook: Array) -> Array:
    """Index of the nearest (Euclidean) code. x: [..., D], codebook: [K, D] -> int32 [...]."""
    x = x.astype(jnp.float32)
    e = codebook.astype(jnp.float32)
    dist = (jnp.sum(x * x, axis=-1, keepdims=True) - 2.0 * jnp.einsum("...d,kd->...k", x, e,
                                                                    precision=jax.lax.Precision.HIGHEST)
            + jnp.sum(e * e, axis=-1))
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)


def straight_through(x: Array, quantized: Array) -> Array:
    """``x + stop_gradient(quantized - x)``: the value of ``quantized``, the gradient of the identity in x."""
    return x + jax.lax.stop_gradient(quantized - x)


def commitment_loss(x: Array, quantized: Array) -> Array:
    """``mean((x - stop_gradient(quantized))^2)`` (EnCodec's per-stage commitment term). Scalar."""
    return jnp.mean(jnp.square(x.astype(jnp.float32) - jax.lax.stop_gradient(quantized).astype(jnp.float32)))


def rvq_encode(x: Array, codebooks: Array, num_quantizers: int | None = None) -> Array:
    """Codes of ``x`` [B, T, D] with the first ``num_quantizers`` of ``codebooks`` [Nq, K, D] -> [B, T, n]."""
    n = codebooks.shape[0] if num_quantizers is None else num_quantizers
    if not 1 <= n <= codebooks.shape[0]:
        raise ValueError(f"num_quantizers must be in [1, {codebooks.shape[0]}], got {n}")
    residual = x.astype(jnp.float32)
    codes = []
    for q in range(n):
        idx = vq_nearest(residual, codebooks[q])
        residual = residual - jnp.take(codebooks[q], idx, axis=0).astype(jnp.float32)
        codes.append(idx)
    return jnp.stack(codes, axis=-1)


def rvq_decode(codes: Array, codebooks: Array) -> Array:
    """Sum of the chosen code vectors. codes: [B, T, n] (n <= Nq), codebooks: [Nq, K, D] -> [B, T, D]."""
    n = codes.shape[-1]
    if n > codebooks.shape[0]:
        raise ValueError(f"codes have {n} codebooks, the model has {codebooks.shape[0]}")
    out = jnp.zeros(codes.shape[:-1] + (codebooks.shape[-1],), jnp.float32)
    for q in range(n):
        out = out + jnp.take(codebooks[q], codes[..., q], axis=0).astype(jnp.float32)
    return out


def rvq_quantize(x: Array, codebooks: Array, num_quantizers: int | None = None) -> dict[str, Array]:
    """Training-time RVQ (EnCodec's ``ResidualVectorQuantization.forward``).

    Each stage quantises the residual, applies the straight-through estimator and subtracts its output.

    Args:
      x: encoder output [B, T, D].
      codebooks: [Nq, K, D] (no gradient flows into them).
      num_quantizers: stages to use (None: all).
    Returns:
      ``quantized`` [B, T, D] (straight-through: gradient identity to ``x``), ``codes`` [B, T, n] int32,
      ``commitment`` scalar (mean over stages of :func:`commitment_loss`), ``stage_inputs`` [n, B, T, D]
      (the residual each stage saw, stop-gradient: what :func:`rvq_ema_update` clusters).
    """
    n = codebooks.shape[0] if num_quantizers is None else num_quantizers
    if not 1 <= n <= codebooks.shape[0]:
        raise ValueError(f"num_quantizers must be in [1, {codebooks.shape[0]}], got {n}")
    codebooks = jax.lax.stop_gradient(codebooks)
    residual = x.astype(jnp.float32)
    out = jnp.zeros_like(residual)
    codes, losses, inputs = [], [], []
    for q in range(n):
        idx = vq_nearest(jax.lax.stop_gradient(residual), codebooks[q])
        qv = jnp.take(codebooks[q], idx, axis=0).astype(jnp.float32)
        inputs.append(jax.lax.stop_gradient(residual))
        losses.append(commitment_loss(residual, qv))
        qst = straight_through(residual, qv)
        residual = residual - qst
        out = out + qst
        codes.append(idx)
    return {"quantized": out, "codes": jnp.stack(codes, -1), "commitment": jnp.mean(jnp.stack(losses)),
            "stage_inputs": jnp.stack(inputs)}


def laplace_smoothing(counts: Array, epsilon: float = 1e-5) -> Array:
    """``(counts + eps) / (sum(counts) + K eps)`` over the last axis [..., K]."""
    k = counts.shape[-1]
    return (counts + epsilon) / (jnp.sum(counts, axis=-1, keepdims=True) + k * epsilon)


def codebook_from_ema(ema_counts: Array, ema_sums: Array, epsilon: float = 1e-5) -> Array:
    """EMA statistics -> codebook: ``sums / (laplace(counts) * sum(counts))``.

    ema_counts: [..., K] (EnCodec's ``cluster_size``), ema_sums: [..., K, D] (``embed_avg``) -> [..., K, D].
    Laplace smoothing keeps unused codes finite (they shrink towards 0 instead of dividing by 0).
    """
    n = jnp.sum(ema_counts, axis=-1, keepdims=True)
    smoothed = laplace_smoothing(ema_counts, epsilon) * n
    return ema_sums / smoothed[..., None]


def ema_statistics(x: Array, codes: Array, codebook_size: int) -> tuple[Array, Array]:
    """Batch cluster statistics: x [..., D], codes [...] -> (counts [K], sums [K, D])."""
    d = x.shape[-1]
    onehot = jax.nn.one_hot(codes.reshape(-1), codebook_size, dtype=jnp.float32)
    flat = x.reshape(-1, d).astype(jnp.float32)
    return jnp.sum(onehot, axis=0), onehot.T @ flat


def rvq_ema_update(ema_counts: Array, ema_sums: Array, stage_inputs: Array, codes: Array, *,
                   decay: float = 0.99, epsilon: float = 1e-5) -> tuple[Array, Array, Array]:
    """One EMA step of every used RVQ stage (EnCodec's ``EuclideanCodebook`` update, dead-code expiry left
    out). Stages beyond ``codes.shape[-1]`` keep their statistics.

    Args:
      ema_counts: [Nq, K]; ema_sums: [Nq, K, D] (running EMA statistics).
      stage_inputs: [n, B, T, D] and codes [B, T, n] from :func:`rvq_quantize` (n <= Nq).
    Returns:
      (codebooks [Nq, K, D], new ema_counts, new ema_sums); ``codebooks`` = :func:`codebook_from_ema`.
    """
    n, k = codes.shape[-1], ema_counts.shape[-1]
    counts, sums = [], []
    for q in range(n):
        c, s = ema_statistics(stage_inputs[q], codes[..., q], k)
        counts.append(c)
        sums.append(s)
    new_counts = ema_counts.at[:n].set(decay * ema_counts[:n] + (1 - decay) * jnp.stack(counts))
    new_sums = ema_sums.at[:n].set(decay * ema_sums[:n] + (1 - decay) * jnp.stack(sums))
    return codebook_from_ema(new_counts, new_sums, epsilon), new_counts, new_sums


def audio_scale(audio: Array) -> Array:
    """EnCodec's input normalisation scale: RMS of the channel mean + 1e-8. audio [B, S, C] -> [B]."""
    mono = jnp.mean(audio.astype(jnp.float32), axis=-1)
    return jnp.sqrt(jnp.mean(jnp.square(mono), axis=-1)) + 1e-8


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------
def _pad_time(x: Array, left: int, right: int, mode: str) -> Array:
    """Pads axis 1 of [B, T, C]; reflect on a too-short input zero-extends first (as transformers)."""
    if left == 0 and right == 0:
        return x
    jmode = _PAD_MODES[mode]
    widths = [(0, 0), (left, right), (0, 0)]
    if jmode != "reflect":
        return jnp.pad(x, widths, mode=jmode)
    length = x.shape[1]
    extra = max(left, right) - length + 1 if length <= max(left, right) else 0
    if extra:
        x = jnp.pad(x, [(0, 0), (0, extra), (0, 0)])
    y = jnp.pad(x, widths, mode="reflect")
    return y[:, : y.shape[1] - extra] if extra else y


class EncodecConv(nn.Module):
    """Padded conv (+ GroupNorm for time_group_norm). [B, T, Cin] -> [B, ceil(T / stride), Cout]."""

    config: EncodecConfig
    features: int
    kernel: int
    stride: int = 1
    dilation: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        k_eff = (self.kernel - 1) * self.dilation + 1
        total = k_eff - self.stride
        extra = (-x.shape[1]) % self.stride
        if cfg.use_causal_conv:
            left, right = total, extra
        else:
            right = total // 2
            left, right = total - right, right + extra
        x = _pad_time(x, left, right, cfg.pad_mode)
        x = nn.Conv(self.features, (self.kernel,), strides=(self.stride,), padding="VALID",
                    kernel_dilation=(self.dilation,), name="conv")(x)
        if cfg.norm_type == "time_group_norm":
            x = nn.GroupNorm(num_groups=1, epsilon=1e-5, name="norm")(x)
        return x


class EncodecConvTranspose(nn.Module):
    """Transposed conv (kernel 2r, stride r) with EnCodec's trim. [B, T, Cin] -> [B, T * stride, Cout]."""

    config: EncodecConfig
    features: int
    kernel: int
    stride: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        k, s = self.kernel, self.stride
        # PyTorch ConvTranspose1d(k, s) == dilate by s, pad k-1 both sides, convolve with the flipped kernel
        # (the converter flips it); length (T - 1) s + k.
        x = nn.ConvTranspose(self.features, (k,), strides=(s,), padding=[(k - 1, k - 1)],
                             transpose_kernel=False, name="conv")(x)
        if cfg.norm_type == "time_group_norm":
            x = nn.GroupNorm(num_groups=1, epsilon=1e-5, name="norm")(x)
        total = k - s
        right = math.ceil(total * cfg.trim_right_ratio) if cfg.use_causal_conv else total // 2
        left = total - right
        return x[:, left: x.shape[1] - right]


def _torch_lstm_init(key: Array, shape: tuple[int, int], dtype: Any = jnp.float32) -> Array:
    """PyTorch's LSTM init: U(-1/sqrt(H), 1/sqrt(H)) for a [H, 4H] kernel."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class LSTM(nn.Module):
    """Multi-layer LSTM (PyTorch gate order i, f, g, o; zero initial state) plus a skip. [B, T, C] -> [B, T, C].

    Params per layer ``l``: ``layer_{l}_kernel_ih`` [C, 4C], ``layer_{l}_kernel_hh`` [C, 4C], ``layer_{l}_bias`` [4C]
    (PyTorch's ``bias_ih + bias_hh``).
    """

    num_layers: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        h_seq = x.astype(jnp.float32)
        for layer in range(self.num_layers):
            w_ih = self.param(f"layer_{layer}_kernel_ih", _torch_lstm_init, (c, 4 * c))
            w_hh = self.param(f"layer_{layer}_kernel_hh", _torch_lstm_init, (c, 4 * c))
            b = self.param(f"layer_{layer}_bias", nn.initializers.zeros, (4 * c,))
            xw = jnp.einsum("btc,cg->tbg", h_seq, w_ih) + b

            def step(carry, xw_t, w_hh=w_hh):
                h, cell = carry
                g = xw_t + h @ w_hh
                i, f, gg, o = jnp.split(g, 4, axis=-1)
                cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(gg)
                h = jax.nn.sigmoid(o) * jnp.tanh(cell)
                return (h, cell), h

            zeros = jnp.zeros((x.shape[0], c), jnp.float32)
            _, hs = jax.lax.scan(step, (zeros, zeros), xw)
            h_seq = jnp.transpose(hs, (1, 0, 2))
        return h_seq + x


class ResnetBlock(nn.Module):
    """ELU, conv(k, dilation) to C/compress, ELU, conv1 to C, + shortcut. [B, T, C] -> [B, T, C]."""

    config: EncodecConfig
    dilation: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        c = x.shape[-1]
        h = nn.elu(x)
        h = EncodecConv(cfg, c // cfg.compress, cfg.residual_kernel_size, dilation=self.dilation, name="conv1")(h)
        h = nn.elu(h)
        h = EncodecConv(cfg, c, 1, name="conv2")(h)
        skip = EncodecConv(cfg, c, 1, name="shortcut")(x) if cfg.use_conv_shortcut else x
        return skip + h


class EncodecEncoder(nn.Module):
    """audio [B, S, audio_channels] -> embeddings [B, ceil(S / hop), hidden_size] (up to per-stage rounding)."""

    config: EncodecConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        f = cfg.num_filters
        x = EncodecConv(cfg, f, cfg.kernel_size, name="conv_in")(x)
        for i, r in enumerate(reversed(cfg.upsampling_ratios)):
            c = f * 2 ** i
            for j in range(cfg.num_residual_layers):
                x = ResnetBlock(cfg, cfg.dilation_growth_rate ** j, name=f"block_{i}_res_{j}")(x)
            x = nn.elu(x)
            x = EncodecConv(cfg, 2 * c, 2 * r, stride=r, name=f"block_{i}_down")(x)
        if cfg.num_lstm_layers:
            x = LSTM(cfg.num_lstm_layers, name="lstm")(x)
        x = nn.elu(x)
        return EncodecConv(cfg, cfg.hidden_size, cfg.last_kernel_size, name="conv_out")(x)


class EncodecDecoder(nn.Module):
    """embeddings [B, T, hidden_size] -> audio [B, T * hop, audio_channels]."""

    config: EncodecConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        n = len(cfg.upsampling_ratios)
        c = cfg.num_filters * 2 ** n
        x = EncodecConv(cfg, c, cfg.kernel_size, name="conv_in")(x)
        if cfg.num_lstm_layers:
            x = LSTM(cfg.num_lstm_layers, name="lstm")(x)
        for i, r in enumerate(cfg.upsampling_ratios):
            x = nn.elu(x)
            x = EncodecConvTranspose(cfg, c // 2, 2 * r, r, name=f"block_{i}_up")(x)
            for j in range(cfg.num_residual_layers):
                x = ResnetBlock(cfg, cfg.dilation_growth_rate ** j, name=f"block_{i}_res_{j}")(x)
            c //= 2
        x = nn.elu(x)
        return EncodecConv(cfg, cfg.audio_channels, cfg.last_kernel_size, name="conv_out")(x)


class ResidualVectorQuantizer(nn.Module):
    """Holds ``codebooks`` [num_quantizers, codebook_size, dim]; returns them (the math is in pure functions)."""

    config: EncodecConfig

    @nn.compact
    def __call__(self) -> Array:
        cfg = self.config
        return self.param("codebooks", nn.initializers.normal(1.0),
                          (cfg.num_quantizers, cfg.codebook_size, cfg.dim))


class EncodecModel(nn.Module):
    """EnCodec. Layout [B, T, C] throughout; mono audio may be [B, S].

    ``apply(params, audio, method="encode", bandwidth=..)`` -> codes [B, T, n] int32;
    ``apply(params, codes, method="decode")`` -> audio [B, T * hop] (mono) or [B, T * hop, C];
    ``apply(params, codes, method="codes_to_latents")`` -> [B, T, dim] (sum of the chosen code vectors);
    ``apply(params, audio)`` (``__call__``) -> training dict (see :meth:`__call__`).
    Only ``chunk_length_s=None`` models (24 kHz, 32 kHz, 16 kHz) are supported.
    """

    config: EncodecConfig

    def setup(self):
        self.encoder = EncodecEncoder(self.config)
        self.decoder = EncodecDecoder(self.config)
        self.quantizer = ResidualVectorQuantizer(self.config)

    # --- facts
    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    # --- helpers
    def _check_audio(self, audio: Array) -> Array:
        cfg = self.config
        if cfg.chunk_length_s is not None:
            raise ValueError(f"EncodecModel: chunked models (chunk_length_s={cfg.chunk_length_s}, the 48 kHz "
                             "EnCodec) are not supported")
        if audio.ndim == 2 and cfg.audio_channels == 1:
            audio = audio[..., None]
        if audio.ndim != 3 or audio.shape[-1] != cfg.audio_channels:
            raise ValueError(f"EncodecModel expects audio [B, S, {cfg.audio_channels}] (or [B, S] for mono), "
                             f"got shape {tuple(audio.shape)}")
        return audio.astype(jnp.float32)

    def _num_quantizers(self, bandwidth: float | None, num_quantizers: int | None) -> int:
        cfg = self.config
        if num_quantizers is None:
            bw = cfg.target_bandwidths[0] if bandwidth is None else bandwidth
            num_quantizers = cfg.quantizers_for_bandwidth(bw)
        if not 1 <= num_quantizers <= cfg.num_quantizers:
            raise ValueError(f"EncodecModel: num_quantizers must be in [1, {cfg.num_quantizers}], "
                             f"got {num_quantizers} (bandwidth={bandwidth})")
        return num_quantizers

    def _check_codes(self, codes: Array) -> Array:
        if codes.ndim != 3 or codes.shape[-1] > self.config.num_quantizers:
            raise ValueError(f"EncodecModel expects codes [B, T, n] with n <= {self.config.num_quantizers}, "
                             f"got shape {tuple(codes.shape)}")
        return codes

    # --- API
    def embed(self, audio: Array) -> tuple[Array, Array | None]:
        """Continuous encoder output before quantisation: (embeddings [B, T, hidden_size], scale [B] or None)."""
        audio = self._check_audio(audio)
        scale = None
        if self.config.normalize:
            scale = audio_scale(audio)
            audio = audio / scale[:, None, None]
        return self.encoder(audio), scale

    def encode_with_scale(self, audio: Array, bandwidth: float | None = None,
                          num_quantizers: int | None = None) -> tuple[Array, Array | None]:
        """(codes [B, T, n] int32, scale [B] or None for ``normalize=False``)."""
        n = self._num_quantizers(bandwidth, num_quantizers)
        emb, scale = self.embed(audio)
        return rvq_encode(emb, self.quantizer(), n), scale

    def encode(self, audio: Array, bandwidth: float | None = None, num_quantizers: int | None = None) -> Array:
        """audio [B, S] / [B, S, C] -> codes [B, ceil(S / hop), n] int32.

        ``num_quantizers`` wins over ``bandwidth`` (kbps); neither: the smallest target bandwidth (as
        transformers). A ``normalize`` model also needs the scale: use :meth:`encode_with_scale`.
        """
        return self.encode_with_scale(audio, bandwidth, num_quantizers)[0]

    def codes_to_latents(self, codes: Array) -> Array:
        """codes [B, T, n] -> latents [B, T, dim]: the sum of the chosen code vectors (decoder input)."""
        return rvq_decode(self._check_codes(codes), self.quantizer())

    def decode_latents(self, latents: Array, scale: Array | None = None) -> Array:
        """latents [B, T, hidden_size] -> audio [B, T * hop] (mono) or [B, T * hop, C]."""
        y = self.decoder(latents).astype(jnp.float32)
        if scale is not None:
            y = y * scale[:, None, None]
        return y[..., 0] if self.config.audio_channels == 1 else y

    def decode(self, codes: Array, scale: Array | None = None) -> Array:
        """codes [B, T, n] -> audio [B, T * hop] (mono) or [B, T * hop, C]; ``scale`` [B] for normalize models."""
        return self.decode_latents(self.codes_to_latents(codes), scale)

    def __call__(self, audio: Array, num_quantizers: int | None = None) -> dict[str, Array]:
        """Training pass: encode, RVQ with straight-through, decode.

        Returns ``audio`` (reconstruction, as :meth:`decode`), ``codes`` [B, T, n], ``commitment`` (scalar),
        ``stage_inputs`` [n, B, T, D] (for :func:`rvq_ema_update`), ``embeddings`` [B, T, D].
        """
        emb, scale = self.embed(audio)
        q = rvq_quantize(emb, self.quantizer(), num_quantizers)
        return {"audio": self.decode_latents(q["quantized"], scale), "codes": q["codes"],
                "commitment": q["commitment"], "stage_inputs": q["stage_inputs"], "embeddings": emb}


def init_params(config: EncodecConfig | str, rng: Array, num_samples: int | None = None) -> dict:
    """Random params for ``config`` (plain convs; flax default init; codebooks N(0, 1))."""
    cfg = get_config(config) if isinstance(config, str) else config
    n = num_samples or 2 * cfg.hop_length
    # jitted: eager init runs the LSTM scans and initialisers op by op (tens of seconds on CPU)
    init = jax.jit(lambda r: EncodecModel(cfg).init(r, jnp.zeros((1, n, cfg.audio_channels), jnp.float32)))
    return init(rng)["params"]


def abstract_params(config: EncodecConfig | str) -> Any:
    """Shape-only param tree (no compute)."""
    cfg = get_config(config) if isinstance(config, str) else config
    return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))


__all__ = ["EncodecConfig", "CONFIGS", "get_config", "from_hf_config", "EncodecModel", "EncodecEncoder",
           "EncodecDecoder", "vq_nearest", "straight_through", "commitment_loss", "rvq_encode", "rvq_decode",
           "rvq_quantize", "laplace_smoothing", "codebook_from_ema", "ema_statistics", "rvq_ema_update",
           "audio_scale", "init_params", "abstract_params"]
