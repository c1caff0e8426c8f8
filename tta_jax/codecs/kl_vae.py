"""2-D KL autoencoder (= ``diffusers.AutoencoderKL``), channels-last ``[B, H, W, C]``.

Used as the Stable Diffusion v1.5 pixel VAE (Auffusion: 3 -> 4 channels, /8, scaling factor 0.18215)
and the AudioLDM mel VAE (1-channel mel ``[B, T, M, 1]``, z = 8 channels, /4, scaling factor
0.9227914214134216; Tango / SERST / DC-LDM latents).

Structure (diffusers ``Encoder``/``Decoder`` with DownEncoderBlock2D / UpDecoderBlock2D):

- encoder: conv_in -> per level: ``layers_per_block`` ResNet blocks (+ stride-2 conv after asymmetric
  (0, 1) padding, except the last level) -> mid (ResNet, single-head self-attention, ResNet) ->
  GroupNorm, SiLU, conv_out to ``2 * latent_channels`` -> ``quant_conv`` (1x1);
- decoder: ``post_quant_conv`` (1x1) -> conv_in -> mid -> per level (reversed): ``layers_per_block + 1``
  ResNet blocks (+ nearest x2 upsample and conv3, except the last) -> GroupNorm, SiLU, conv_out;
- posterior: ``mean, logvar = split(moments)``, ``logvar = clip(logvar, -30, 20)``, ``std = exp(logvar/2)``.
  GroupNorm eps 1e-6 everywhere.

Parameter names mirror diffusers with ``_`` indices (``encoder/down_blocks_0/resnets_1/conv2``), see
:mod:`tta_jax.convert.kl_vae`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class KLVAEConfig:
    """Static facts of a 2-D KL VAE (diffusers ``AutoencoderKL`` config names)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


CONFIGS: dict[str, KLVAEConfig] = {
    # runwayml/stable-diffusion-v1-5 vae/config.json (Auffusion's VAE).
    "sd_v1_5": KLVAEConfig(),
    # cvssp/audioldm-s-full-v2 vae/config.json (also Tango's VAE): 1-ch mel, z=8, /4.
    "audioldm": KLVAEConfig(in_channels=1, out_channels=1, block_out_channels=(128, 256, 512),
                            layers_per_block=2, latent_channels=8, scaling_factor=0.9227914214134216),
    # Tiny configs for tests.
    "sd_tiny": KLVAEConfig(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                           norm_num_groups=4),
    "audioldm_tiny": KLVAEConfig(in_channels=1, out_channels=1, block_out_channels=(8, 8, 16),
                                 layers_per_block=2, latent_channels=8, norm_num_groups=4,
                                 scaling_factor=0.9227914214134216),
}


def get_config(name: str) -> KLVAEConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown KL-VAE config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name]


# --------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------
def posterior_stats(moments: Array) -> tuple[Array, Array]:
    """moments [..., 2C] -> (mean, std) [..., C] with diffusers' logvar clamp to [-30, 20]."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    logvar = jnp.clip(logvar, -30.0, 20.0)
    return mean, jnp.exp(0.5 * logvar)


def sample_latent(rng: Array, mean: Array, std: Array) -> Array:
    return mean + std * jax.random.normal(rng, mean.shape, mean.dtype)


def kl_loss(mean: Array, std: Array) -> Array:
    """diffusers ``DiagonalGaussianDistribution.kl()``: 0.5 * sum over (H, W, C), per sample -> [B]."""
    var = jnp.square(std)
    return 0.5 * jnp.sum(jnp.square(mean) + var - 1.0 - jnp.log(var), axis=tuple(range(1, mean.ndim)))


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------
def _gn(groups: int, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, epsilon=1e-6, use_fast_variance=False, name=name)


def _conv3(features: int, name: str, dtype: Any = None, stride: int = 1, padding: Any = 1) -> nn.Conv:
    pad = [(padding, padding)] * 2 if isinstance(padding, int) else padding
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=pad, dtype=dtype, name=name)


class ResnetBlock(nn.Module):
    """GN, SiLU, conv3, GN, SiLU, conv3 (+ 1x1 shortcut when widths differ). [B, H, W, Cin] -> [..., Cout]."""

    out_channels: int
    groups: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.silu(_gn(self.groups, "norm1")(x))
        h = _conv3(self.out_channels, "conv1", self.dtype)(h)
        h = nn.silu(_gn(self.groups, "norm2")(h))
        h = _conv3(self.out_channels, "conv2", self.dtype)(h)
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="conv_shortcut")(x)
        return x + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over H*W positions with GroupNorm and a residual. [B, H, W, C]."""

    groups: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        y = _gn(self.groups, "group_norm")(x).reshape(b, h * w, c)
        q = nn.Dense(c, dtype=self.dtype, name="to_q")(y)
        k = nn.Dense(c, dtype=self.dtype, name="to_k")(y)
        v = nn.Dense(c, dtype=self.dtype, name="to_v")(y)
        logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) * (c ** -0.5)
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        y = jnp.einsum("bqk,bkc->bqc", attn, v)
        y = nn.Dense(c, dtype=self.dtype, name="to_out_0")(y)
        return x + y.reshape(b, h, w, c)


class MidBlock(nn.Module):
    groups: int
    add_attention: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        x = ResnetBlock(c, self.groups, self.dtype, name="resnets_0")(x)
        if self.add_attention:
            x = SpatialSelfAttention(self.groups, self.dtype, name="attentions_0")(x)
        return ResnetBlock(c, self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
    """diffusers Downsample2D(padding=0): pad right/bottom by one, 3x3 stride-2 conv."""

    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _conv3(x.shape[-1], "conv", self.dtype, stride=2, padding=[(0, 1), (0, 1)])(x)


class Upsample(nn.Module):
    """Nearest x2, 3x3 conv."""

    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv3(x.shape[-1], "conv", self.dtype)(x)


class DownEncoderBlock(nn.Module):
    out_channels: int
    num_layers: int
    groups: int
    add_downsample: bool
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for j in range(self.num_layers):
            x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"resnets_{j}")(x)
        if self.add_downsample:
            x = Downsample(self.dtype, name="downsamplers_0")(x)
        return x


class UpDecoderBlock(nn.Module):
    out_channels: int
    num_layers: int
    groups: int
    add_upsample: bool
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for j in range(self.num_layers):
            x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"resnets_{j}")(x)
        if self.add_upsample:
            x = Upsample(self.dtype, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    """x [B, H, W, in_channels] -> moments [B, H/f, W/f, 2 * latent_channels] (before quant_conv)."""

    config: KLVAEConfig
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, g = self.config, self.config.norm_num_groups
        chans = cfg.block_out_channels
        x = _conv3(chans[0], "conv_in", self.dtype)(x)
        for i, c in enumerate(chans):
            x = DownEncoderBlock(c, cfg.layers_per_block, g, i != len(chans) - 1, self.dtype,
                                 name=f"down_blocks_{i}")(x)
        x = MidBlock(g, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
        x = nn.silu(_gn(g, "conv_norm_out")(x))
        return _conv3(2 * cfg.latent_channels, "conv_out", self.dtype)(x)


class Decoder(nn.Module):
    """z [B, h, w, latent_channels] -> x [B, h*f, w*f, out_channels] (after post_quant_conv)."""

    config: KLVAEConfig
    dtype: Any = None

    @nn.compact
    def __call__(self, z: Array) -> Array:
        cfg, g = self.config, self.config.norm_num_groups
        chans = tuple(reversed(cfg.block_out_channels))
        x = _conv3(chans[0], "conv_in", self.dtype)(z)
        x = MidBlock(g, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
        for i, c in enumerate(chans):
            x = UpDecoderBlock(c, cfg.layers_per_block + 1, g, i != len(chans) - 1, self.dtype,
                               name=f"up_blocks_{i}")(x)
        x = nn.silu(_gn(g, "conv_norm_out")(x))
        return _conv3(cfg.out_channels, "conv_out", self.dtype)(x)


class KLVAE(nn.Module):
    """diffusers-compatible AutoencoderKL, NHWC.

    ``apply(p, x, method="encode")`` -> (mean, std) [B, H/f, W/f, latent_channels];
    ``apply(p, z, method="decode")`` -> x [B, H, W, out_channels]; ``__call__(x, rng)`` ->
    (recon, mean, std). Latents are unscaled: multiply by ``scaling_factor`` for the diffusion model
    (:meth:`scale_latents` / :meth:`unscale_latents`).
    """

    config: KLVAEConfig
    dtype: Any = None

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg, self.dtype)
        self.decoder = Decoder(cfg, self.dtype)
        if cfg.use_quant_conv:
            self.quant_conv = nn.Conv(2 * cfg.latent_channels, (1, 1), dtype=self.dtype)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = nn.Conv(cfg.latent_channels, (1, 1), dtype=self.dtype)

    def encode(self, x: Array) -> tuple[Array, Array]:
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"KLVAE.encode expects x [B, H, W, {cfg.in_channels}], got {tuple(x.shape)}")
        f = cfg.downsample_factor
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"KLVAE.encode: H, W = {x.shape[1:3]} must be multiples of {f}")
        h = self.encoder(x)
        if cfg.use_quant_conv:
            h = self.quant_conv(h)
        return posterior_stats(h.astype(jnp.float32))

    def decode(self, z: Array) -> Array:
        cfg = self.config
        if z.ndim != 4 or z.shape[-1] != cfg.latent_channels:
            raise ValueError(f"KLVAE.decode expects z [B, h, w, {cfg.latent_channels}], got {tuple(z.shape)}")
        if cfg.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x: Array, rng: Array | None = None) -> tuple[Array, Array, Array]:
        mean, std = self.encode(x)
        z = mean if rng is None else sample_latent(rng, mean, std)
        return self.decode(z), mean, std

    def scale_latents(self, z: Array) -> Array:
        shift = self.config.shift_factor or 0.0
        return (z - shift) * self.config.scaling_factor

    def unscale_latents(self, z: Array) -> Array:
        shift = self.config.shift_factor or 0.0
        return z / self.config.scaling_factor + shift


def abstract_params(config: KLVAEConfig) -> Any:
    """Shape-only param tree."""
    f = config.downsample_factor
    x = jax.ShapeDtypeStruct((1, f, f, config.in_channels), jnp.float32)
    return jax.eval_shape(lambda a: KLVAE(config).init(jax.random.PRNGKey(0), a), x)["params"]


def init_params(config: KLVAEConfig | str, rng: Array) -> dict:
    cfg = get_config(config) if isinstance(config, str) else config
    f = cfg.downsample_factor
    return KLVAE(cfg).init(rng, jnp.zeros((1, f, f, cfg.in_channels), jnp.float32))["params"]


__all__ = ["KLVAEConfig", "CONFIGS", "get_config", "KLVAE", "Encoder", "Decoder", "posterior_stats",
           "sample_latent", "kl_loss", "abstract_params", "init_params"]
