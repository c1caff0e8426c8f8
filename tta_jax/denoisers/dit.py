"""EzAudio-DiT (and its ablation variants) as a flax.linen module.

Reference: docs/reference-architectures.md section 1 and the official code (github.com/haidog-yaqub/EzAudio,
``src/models/udit.py``, ``blocks.py``, ``conditioners.py::MaskDiT``). Shapes are channels-last.

``DiT(config)(x_t [B, T, C], t [B], cond, *, train=False) -> [B, T, out_channels]`` with ``cond`` keys
(all optional; a missing key means "not used"):

- ``text`` [B, L, context_dim] and ``text_mask`` [B, L] (True/1 = real token): cross-attention context.
  Without ``text`` no cross-attention runs at all (stage-1 masked pretraining); ``init`` must see a
  ``text`` to create the cross-attention params.
- ``masked_latent`` [B, T, C]: the clean latent; frames where ``mask`` is 1 are replaced by the learned
  ``mask_embed`` (zero init) inside the model, as MaskDiT does. Missing -> every frame is the embedding.
- ``mask`` [B, T]: 1 = frame to generate (default all ones: plain text-to-audio).
- ``attn_control``: an :class:`tta_jax.nn.attention.AttentionControl` for the cross-attention layers
  (capture / re-weight / replace the probabilities; not with ``remat``).

Input: ``concat[x_t, masked clean latent, mask]`` (2C+1 = 257 channels) -> 1x1 Conv1d. Timestep:
256-d ``[cos, sin]`` embedding -> Linear-SiLU-Linear -> one global SiLU. depth//2 "in" blocks, 1 "mid",
depth//2 "out" blocks; out blocks pop the in-block outputs LIFO and fuse ``Linear(LN(concat[x, skip]))``.
Block: self-attn (LN, FiLM, RoPE + QK-norm, ``(1 - gate)`` residual) -> cross-attn on LN(x) with K/V from
LN(context) (no modulation, no gate) -> GEGLU MLP (LN, FiLM, ``(1 - gate)`` residual). Final: FiLM from a
zero-init Linear(D->2D) on SiLU(t), LN, Linear(D->C), Conv1d(k=3, pad 1).

Param names mirror the official state dict (see ``tta_jax/convert/ezaudio_dit.py``):
``patch_embed``, ``time_embed/linear_{1,2}``, ``time_ada`` (shared), ``time_ada_final``,
``context_embed/linear_{1,2}``, ``in_blocks_i``/``mid_block``/``out_blocks_i`` with ``norm1``, ``attn``,
``norm2``, ``norm_context``, ``cross_attn``, ``norm3``, ``ff/net_0/proj``, ``ff/net_2``,
``adaln/{lora_a,lora_b,scale_shift_table|time_ada}``, ``skip_norm``, ``skip_linear``;
``final_block/{norm,linear,final_layer}``; ``mask_embed``.

Ablations (config): ``modulation`` in {"sola" (EzAudio), "adaln_zero" (per-block Linear(D->6D), as
CrossDiT/DiT), "adaln_single" (PixArt: shared Linear + per-block table)}, ``gate`` in {"one_minus"
(EzAudio: ``x + (1 - g) * f``), "plain" (DiT adaLN-Zero: ``x + g * f``)}, ``long_skips``, ``rope``,
``qk_norm``. ``remat`` wraps each block in ``nn.remat`` with the named ``jax.checkpoint_policies`` policy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from tta_jax.nn.attention import Attention
from tta_jax.nn.embeddings import TimestepMLP, timestep_embedding
from tta_jax.nn.layers import (AdaLNSingle, AdaLNSOLA, AdaLNZero, FeedForward, dense, layer_norm, modulate,
                               split_mod, xavier, zeros)
from tta_jax.nn.sharding import constrain, dense_init

MODULATIONS = ("sola", "adaln_zero", "adaln_single")
GATES = ("one_minus", "plain")


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """EzAudio-DiT hyper-parameters. ``to_dict``/``from_dict`` round-trip (unknown keys fail loudly)."""

    in_channels: int = 128           # latent channels C (x_t); the input conv sees 2C+1 with use_mask_input
    out_channels: int = 128
    width: int = 1024
    depth: int = 24                  # config depth: depth//2 in + 1 mid + depth//2 out blocks
    num_heads: int = 16
    head_dim: int | None = None      # default width // num_heads
    mlp_ratio: float = 4.0
    context_dim: int | None = 1024   # None: no cross-attention layers at all
    modulation: str = "sola"
    gate: str = "one_minus"
    sola_rank: int = 32
    sola_alpha: float | None = None  # default = rank (scale 1)
    sola_table: bool = True          # EzAudio's "ada_sola_bias"
    long_skips: bool = True
    skip_norm: bool = True
    rope: bool = True
    qk_norm: bool = True
    context_norm: bool = True
    pooled_context: bool = False     # add an MLP of the masked mean of the text states to the timestep
    # embedding, a global text path into every AdaLN (not in EzAudio; Stable Audio / SD3-style pooled cond)
    final_conv: bool = True
    use_mask_input: bool = True      # MaskDiT: concat masked latent + mask channel
    time_freq_dim: int = 256
    attention_backend: str = "auto"
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    dtype: str = "float32"           # compute dtype; params stay float32

    def __post_init__(self):
        if self.modulation not in MODULATIONS:
            raise ValueError(f"DiTConfig.modulation must be one of {MODULATIONS}, got {self.modulation!r}")
        if self.gate not in GATES:
            raise ValueError(f"DiTConfig.gate must be one of {GATES}, got {self.gate!r}")
        if self.depth % 2:
            raise ValueError(f"DiTConfig.depth must be even (depth//2 in + mid + depth//2 out), got {self.depth}")
        if self.head_dim is None and self.width % self.num_heads:
            raise ValueError(f"DiTConfig: width {self.width} not divisible by num_heads {self.num_heads}")
        if not hasattr(jax.checkpoint_policies, self.remat_policy):
            raise ValueError(f"DiTConfig.remat_policy {self.remat_policy!r} is not in jax.checkpoint_policies")

    @property
    def hd(self) -> int:
        return self.head_dim or self.width // self.num_heads

    @property
    def num_blocks(self) -> int:
        return self.depth + 1

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DiTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"DiTConfig: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**dict(d))

    def replace(self, **kw) -> "DiTConfig":
        return dataclasses.replace(self, **kw)


def ezaudio_tiny(**kw) -> DiTConfig:
    """A few-second CPU config: width 64, depth 4 (5 blocks), 4 heads, rank 4, 16-d latent, 32-d context."""
    base = dict(in_channels=16, out_channels=16, width=64, depth=4, num_heads=4, context_dim=32, sola_rank=4,
                time_freq_dim=32)
    base.update(kw)
    return DiTConfig(**base)


def ezaudio_l(**kw) -> DiTConfig:
    """EzAudio-L: width 1024, depth 24, 16 heads x 64, SOLA rank 32, FLAN-T5-large context (1024)."""
    base = dict(width=1024, depth=24, num_heads=16, sola_rank=32, context_dim=1024)
    base.update(kw)
    return DiTConfig(**base)


def ezaudio_xl(**kw) -> DiTConfig:
    """EzAudio-XL: width 1152, depth 28, 16 heads x 72, SOLA rank 36, FLAN-T5-XL context (2048)."""
    base = dict(width=1152, depth=28, num_heads=16, sola_rank=36, context_dim=2048)
    base.update(kw)
    return DiTConfig(**base)


PRESETS = {"ezaudio_tiny": ezaudio_tiny, "ezaudio_l": ezaudio_l, "ezaudio_xl": ezaudio_xl}

ACT = ("batch", "length", "act_embed")


class DiTBlock(nn.Module):
    """One EzAudio block. ``(x [B, T, D], temb [B, D] (SiLU'd), shared [B, 6D] | None, skip [B, T, D] | None,
    context [B, L, D] | None, context_mask [B, L] | None, control) -> [B, T, D]``."""

    config: DiTConfig
    has_skip: bool = False

    @nn.compact
    def __call__(self, x, temb, shared, skip, context, context_mask, control=None):
        c = self.config
        dt = c.compute_dtype
        D = c.width
        x = constrain(x, ACT)
        if self.has_skip:
            if skip is None:
                raise ValueError("DiTBlock: an out block with a long skip needs the skip tensor")
            h = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
            if c.skip_norm:
                h = layer_norm("skip_norm", dtype=dt)(h)
            x = dense(D, ("mlp", "embed"), name="skip_linear", dtype=dt)(h)

        if c.modulation == "sola":
            mod = AdaLNSOLA(D, c.sola_rank, c.sola_alpha, use_table=c.sola_table, dtype=dt, name="adaln")(temb, shared)
        elif c.modulation == "adaln_single":
            mod = AdaLNSingle(D, name="adaln")(shared)
        else:
            mod = AdaLNZero(D, dtype=dt, name="adaln")(temb)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = split_mod(mod.astype(dt))

        def gated(x, g, f):
            g = g[:, None, :]
            return x + ((1 - g) if c.gate == "one_minus" else g) * f

        attn = Attention(num_heads=c.num_heads, head_dim=c.hd, qk_norm=c.qk_norm, rope=c.rope,
                         backend=c.attention_backend, dtype=dt, name="attn")
        h = modulate(layer_norm("norm1", dtype=dt)(x), shift_msa, scale_msa)
        x = gated(x, gate_msa, attn(h))

        if context is not None:
            if c.context_dim is None:
                raise ValueError("DiT: cond['text'] given but the config has context_dim=None")
            ctx = layer_norm("norm_context", dtype=dt)(context) if c.context_norm else context
            xattn = Attention(num_heads=c.num_heads, head_dim=c.hd, qk_norm=c.qk_norm, rope=False,
                              backend=c.attention_backend, dtype=dt, out_kernel_init=zeros, name="cross_attn")
            x = x + xattn(layer_norm("norm2", dtype=dt)(x), ctx, context_mask, control=control)

        h = modulate(layer_norm("norm3", dtype=dt)(x), shift_mlp, scale_mlp)
        x = gated(x, gate_mlp, FeedForward(mult=c.mlp_ratio, activation="geglu", dtype=dt, name="ff")(h))
        return constrain(x, ACT)


class DiT(nn.Module):
    """EzAudio-DiT. ``__call__(x_t [B, T, C], t [B], cond: dict, *, train=False) -> [B, T, out_channels]``."""

    config: DiTConfig

    @nn.compact
    def __call__(self, x_t, t, cond: Mapping[str, Any] | None = None, *, train: bool = False):
        c = self.config
        dt = c.compute_dtype
        cond = dict(cond or {})
        B, T, C = x_t.shape
        if C != c.in_channels:
            raise ValueError(f"DiT: x_t has {C} channels, config.in_channels = {c.in_channels}")
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (B,))

        # ---- input: [x_t, masked clean latent, mask] -> 1x1 conv ----
        if c.use_mask_input:
            mask_embed = self.param("mask_embed", dense_init(zeros, ("norm",)), (c.in_channels,))
            mask = cond.get("mask")
            mask = jnp.ones((B, T), x_t.dtype) if mask is None else jnp.asarray(mask).astype(x_t.dtype)
            if mask.shape != (B, T):
                raise ValueError(f"DiT: cond['mask'] must be [B, T] = {(B, T)}, got {mask.shape}")
            gt = cond.get("masked_latent")
            emb = jnp.broadcast_to(mask_embed.astype(x_t.dtype), (B, T, C))
            if gt is None:
                gt = emb
            else:
                if gt.shape != x_t.shape:
                    raise ValueError(f"DiT: cond['masked_latent'] must be {x_t.shape}, got {gt.shape}")
                gt = jnp.where(mask[..., None] > 0.5, emb, gt.astype(x_t.dtype))
            h = jnp.concatenate([x_t, gt, mask[..., None]], axis=-1)
        else:
            h = x_t
        x = nn.Conv(c.width, (1,), dtype=dt, name="patch_embed",
                    kernel_init=dense_init(xavier, (None, "conv_in", "conv_out")),
                    bias_init=dense_init(zeros, ("conv_out",)))(h.astype(dt))
        x = constrain(x, ACT)

        # ---- context ----
        context, context_mask = None, None
        if cond.get("text") is not None:
            if c.context_dim is None:
                raise ValueError("DiT: cond['text'] given but the config has context_dim=None")
            text = jnp.asarray(cond["text"])
            if text.ndim != 3 or text.shape[0] != B or text.shape[-1] != c.context_dim:
                raise ValueError(f"DiT: cond['text'] must be [B={B}, L, {c.context_dim}], got {text.shape}")
            context = TimestepMLP(c.width, dtype=dt, name="context_embed")(text.astype(dt))
            context = constrain(context, ACT)
            if cond.get("text_mask") is not None:
                context_mask = jnp.asarray(cond["text_mask"]).astype(bool)
                if context_mask.shape != text.shape[:2]:
                    raise ValueError(f"DiT: cond['text_mask'] must be {text.shape[:2]}, got {context_mask.shape}")

        # ---- timestep (+ pooled text) ----
        temb = timestep_embedding(t, c.time_freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0.0)
        temb = TimestepMLP(c.width, dtype=dt, name="time_embed")(temb.astype(dt))
        if c.pooled_context and context is not None:
            w = (jnp.ones(text.shape[:2], dt) if context_mask is None else context_mask.astype(dt))[..., None]
            pooled = (text.astype(dt) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)  # [B, context_dim]
            temb = temb + TimestepMLP(c.width, dtype=dt, name="pooled_text_embed")(pooled)
        temb = nn.silu(temb)
        final_mod = dense(2 * c.width, ("embed", "mlp"), name="time_ada_final", dtype=dt, kernel_init=zeros)(temb)
        shared = None
        if c.modulation in ("sola", "adaln_single"):
            shared = dense(6 * c.width, ("embed", "mlp"), name="time_ada", dtype=dt, kernel_init=zeros)(temb)
        control = cond.get("attn_control")

        # ---- blocks ----
        block_cls = DiTBlock
        if c.remat:
            if control is not None:
                raise ValueError("DiT: attn_control is not supported with remat=True")
            block_cls = nn.remat(DiTBlock, policy=getattr(jax.checkpoint_policies, c.remat_policy))
        n_half = c.depth // 2
        skips = []
        for i in range(n_half):
            x = block_cls(c, False, name=f"in_blocks_{i}")(x, temb, shared, None, context, context_mask, control)
            if c.long_skips:
                skips.append(x)
        x = block_cls(c, False, name="mid_block")(x, temb, shared, None, context, context_mask, control)
        for i in range(n_half):
            skip = skips.pop() if c.long_skips else None
            x = block_cls(c, c.long_skips, name=f"out_blocks_{i}")(x, temb, shared, skip, context, context_mask,
                                                                     control)

        # ---- final layer ----
        out = FinalBlock(c, name="final_block")(x, final_mod)
        return out.astype(jnp.float32)


class FinalBlock(nn.Module):
    """``(x [B, T, D], mod [B, 2D] = (shift, scale)) -> [B, T, out_channels]``: LN, FiLM, Linear(D->C),
    Conv1d(C->C, k=3, pad 1)."""

    config: DiTConfig

    @nn.compact
    def __call__(self, x, mod):
        c = self.config
        dt = c.compute_dtype
        shift, scale = jnp.split(mod, 2, axis=-1)
        x = modulate(layer_norm("norm", dtype=dt)(x), shift, scale)
        x = dense(c.out_channels, ("embed", "out_ch"), name="linear", dtype=dt)(x)
        if c.final_conv:
            x = nn.Conv(c.out_channels, (3,), padding=((1, 1),), dtype=dt, name="final_layer",
                        kernel_init=dense_init(xavier, (None, "conv_in", "out_ch")),
                        bias_init=dense_init(zeros, ("out_ch",)))(x)
        return x
