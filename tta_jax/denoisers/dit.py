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
  (capture / re-weight / replace the probabilities; not with ``remat``). Only the text cross-attention
  sees it.
- ``style`` [B, style_dim] (needs ``style_dim``): SERST-style global condition. ``style_embed``
  (Linear(style_dim -> D), SiLU, Linear(D -> D) with the last layer zero-initialised) is added to the
  timestep embedding before the global SiLU, so it drives every block's AdaLN and the final FiLM
  (``style_path="pooled"``: added to the pooled text instead, see below).
- ``acoustic`` [B, La, acoustic_dim] and ``acoustic_mask`` [B, La] (needs ``acoustic_dim``): DC-LDM
  auxiliary sequence. Projected once by ``acoustic_embed`` (Linear-SiLU-Linear to D, like
  ``context_embed``); in every block of ``acoustic_blocks`` an extra cross-attention right after the text
  one: ``x + acoustic_attn(LN_acoustic(x), LN_acoustic_context(a), acoustic_mask)`` (zero-init output
  projection: the skip connection keeps the pretrained path).
- ``refs`` (needs ``ref_blocks``): a list with one entry per out block (``depth // 2`` entries), each
  ``None``, [B, Lr, D] or a tuple (features [B, Lr, D], mask [B, Lr]): DreamAudio multi-reference
  context. Out block ``i`` in ``ref_blocks`` gets an extra cross-attention after the text one (and after
  the acoustic one): ``x + ref_attn(LN_ref(x), LN_ref_context(r), mask)`` (zero-init output projection).
  :meth:`DiT.encode` on a second (reference) DiT + :func:`dit_refs_from_encoder_features` produce it; K
  references are concatenated along the sequence axis (Lr = K * T_ref) with a [B, K * T_ref] mask.

A missing (or ``None``) ``style``/``acoustic``/``refs`` contributes exactly nothing. A batch row whose
``acoustic_mask`` / reference mask is all False also gets exactly zero from that layer (dropped condition
for CFG / DreamAudio reference dropping). Giving one of these keys to a model whose config does not have
the path raises ``ValueError`` naming the key, as does a wrong shape. All new layers are zero-initialised
at the output, so a pretrained checkpoint with a path added (the new params freshly initialised) gives
bit-identical outputs until the new params train.

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
``attention_backend="auto"`` picks per pass: ``deferred`` when ``train=True`` (its backward is cheaper: train step
-19 % at the benchmark size on CPU), ``xla`` otherwise (the fused forward: 20 sampler steps 1.10 s vs 1.31 s).

Extra conditioning paths (config; all off by default, so the EzAudio configs, checkpoints and
``tta_jax/convert/ezaudio_dit.py`` are unchanged):

- ``style_dim``: enables ``cond["style"]``; params ``style_embed/linear_{1,2}``. With ``style_path="pooled"``
  (needs ``pooled_context`` and ``style_dim == context_dim``) the style is instead a residual in the text-state
  space, added to the masked mean of the text before the (pretrained) ``pooled_text_embed``: no new params, and a
  zero style is exactly the base. SERST then reaches every AdaLN through the global text path the base already
  learnt (the adapter returns its residual, :mod:`tta_jax.conditioners.serst`).
- ``acoustic_dim`` (+ ``acoustic_blocks``): enables ``cond["acoustic"]``; params ``acoustic_embed/linear_{1,2}``
  and, per host block, ``norm_acoustic``, ``norm_acoustic_context``, ``acoustic_attn``. ``acoustic_blocks``
  indexes the blocks in order ``in_blocks_0..n-1`` (0..n-1), ``mid_block`` (n), ``out_blocks_0..n-1``
  (n+1..2n), n = depth // 2; ``None`` = every block. DC-LDM's best U-Net placement (first down + last up
  block) is ``(0, depth)``.
- ``ref_blocks``: out-block indices (0..n-1) that take ``cond["refs"][i]``; params per host block
  ``norm_ref``, ``norm_ref_context``, ``ref_attn``. Reference features have the model width D.

The new cross-attentions are the same :class:`~tta_jax.nn.attention.Attention` as ``cross_attn`` (heads,
head_dim, QK-norm, no RoPE, ``out_kernel_init=zeros``).

``DiT.encode(x_t, t, cond, train=False)`` (``model.apply(v, ..., method=DiT.encode)``) returns the
in-block outputs (what the long skips carry), a list of n arrays [B, T, D]; with
:func:`dit_refs_from_encoder_features` in-block ``i`` feeds out block ``n - 1 - i`` (LIFO, like the skips).
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tta_jax.nn.attention import Attention
from tta_jax.nn.embeddings import TimestepMLP, timestep_embedding
from tta_jax.nn.layers import (AdaLNSingle, AdaLNSOLA, AdaLNZero, FeedForward, dense, layer_norm, modulate,
                               split_mod, xavier, zeros)
from tta_jax.nn.sharding import constrain, dense_init
from tta_jax.sections import DictConfig

MODULATIONS = ("sola", "adaln_zero", "adaln_single")
GATES = ("one_minus", "plain")
STYLE_PATHS = ("embed", "pooled")


@dataclasses.dataclass(frozen=True)
class DiTConfig(DictConfig):
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
    # extra conditioning paths (all zero-init at the output; default off = plain EzAudio)
    style_dim: int | None = None     # cond["style"] [B, style_dim] -> timestep embedding (SERST)
    style_path: str = "embed"        # "embed": own zero-init MLP; "pooled": a residual of the pooled text
    acoustic_dim: int | None = None  # cond["acoustic"] [B, La, acoustic_dim] extra cross-attention (DC-LDM)
    acoustic_blocks: tuple[int, ...] | None = None  # host blocks: in 0..n-1, mid n, out n+1..2n; None = all
    ref_blocks: tuple[int, ...] = ()  # out blocks taking cond["refs"][i] [B, Lr, width] (DreamAudio)

    def __post_init__(self):
        # lists (ConfigDict / JSON) -> tuples: the config stays hashable and round-trips
        if self.acoustic_blocks is not None:
            object.__setattr__(self, "acoustic_blocks", _int_tuple("acoustic_blocks", self.acoustic_blocks))
        refs = () if self.ref_blocks is None else self.ref_blocks
        object.__setattr__(self, "ref_blocks", _int_tuple("ref_blocks", refs))
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
        for f in ("style_dim", "acoustic_dim"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"DiTConfig.{f} must be None or a positive int, got {v!r}")
        if self.style_path not in STYLE_PATHS:
            raise ValueError(f"DiTConfig.style_path must be one of {STYLE_PATHS}, got {self.style_path!r}")
        if self.style_path == "pooled" and self.style_dim is not None and not (
                self.pooled_context and self.style_dim == self.context_dim):
            raise ValueError(f"DiTConfig.style_path='pooled' adds the style to the pooled text: it needs "
                             f"pooled_context=True and style_dim == context_dim, got pooled_context="
                             f"{self.pooled_context}, style_dim={self.style_dim}, context_dim={self.context_dim}")
        n_half = self.depth // 2
        if self.acoustic_blocks is not None:
            if self.acoustic_dim is None:
                raise ValueError("DiTConfig.acoustic_blocks is set but acoustic_dim is None")
            if not self.acoustic_blocks:
                raise ValueError("DiTConfig.acoustic_blocks is empty: name at least one host block "
                                 "(None = every block; acoustic_dim=None turns the path off)")
            bad = [i for i in self.acoustic_blocks if not 0 <= i <= self.depth]
            if bad or len(set(self.acoustic_blocks)) != len(self.acoustic_blocks):
                raise ValueError(f"DiTConfig.acoustic_blocks must be unique block indices in 0..{self.depth} "
                                 f"(in 0..{n_half - 1}, mid {n_half}, out {n_half + 1}..{self.depth}), "
                                 f"got {self.acoustic_blocks}")
        bad = [i for i in self.ref_blocks if not 0 <= i < n_half]
        if bad or len(set(self.ref_blocks)) != len(self.ref_blocks):
            raise ValueError(f"DiTConfig.ref_blocks must be unique out-block indices in 0..{n_half - 1}, "
                             f"got {self.ref_blocks}")

    @property
    def hd(self) -> int:
        return self.head_dim or self.width // self.num_heads

    @property
    def num_blocks(self) -> int:
        return self.depth + 1

    def has_acoustic(self, block_index: int) -> bool:
        """Whether block ``block_index`` (in 0..n-1, mid n, out n+1..2n) hosts the acoustic cross-attention."""
        if self.acoustic_dim is None:
            return False
        return self.acoustic_blocks is None or block_index in self.acoustic_blocks

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


def _int_tuple(field: str, v) -> tuple[int, ...]:
    """A block-index field given as a tuple/list of ints (ConfigDict / JSON give lists) -> tuple of ints."""
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise ValueError(f"DiTConfig.{field} must be a list/tuple of block indices, got {v!r}")
    out = []
    for i in v:
        try:
            if isinstance(i, bool):
                raise TypeError
            out.append(operator.index(i))
        except TypeError:
            raise ValueError(f"DiTConfig.{field} must hold int block indices, got {v!r}") from None
    return tuple(out)


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
    context [B, L, D] | None, context_mask [B, L] | None, control, acoustic [B, La, D] | None,
    acoustic_mask [B, La] | None, ref [B, Lr, D] | None, ref_mask [B, Lr] | None) -> [B, T, D]``.

    ``has_acoustic`` / ``has_ref``: the block owns the extra (zero-init output) cross-attention over the
    projected acoustic sequence / the reference features; it runs only when that context is given.
    """

    config: DiTConfig
    has_skip: bool = False
    has_acoustic: bool = False
    has_ref: bool = False

    def _cross_attn(self, name):
        c = self.config
        return Attention(num_heads=c.num_heads, head_dim=c.hd, qk_norm=c.qk_norm, rope=False,
                         backend=c.attention_backend, dtype=c.compute_dtype, out_kernel_init=zeros, name=name)

    def _extra_xattn(self, key, x, ctx, mask):
        """``x + {key}_attn(LN_{key}(x), LN_{key}_context(ctx), mask)``; rows whose mask is all False add 0."""
        dt = self.config.compute_dtype
        ctx = layer_norm(f"norm_{key}_context", dtype=dt)(ctx)
        y = self._cross_attn(f"{key}_attn")(layer_norm(f"norm_{key}", dtype=dt)(x), ctx, mask)
        if mask is not None:
            y = y * jnp.any(mask, axis=-1)[:, None, None].astype(y.dtype)
        return x + y

    @nn.compact
    def __call__(self, x, temb, shared, skip, context, context_mask, control=None, acoustic=None,
                 acoustic_mask=None, ref=None, ref_mask=None):
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
            xattn = self._cross_attn("cross_attn")
            x = x + xattn(layer_norm("norm2", dtype=dt)(x), ctx, context_mask, control=control)

        # DC-LDM: extra cross-attention right after the text one, skip connection around it
        if self.has_acoustic and acoustic is not None:
            x = self._extra_xattn("acoustic", x, acoustic, acoustic_mask)
        # DreamAudio MRC: reference features of the matching encoder scale as an extra context
        if self.has_ref and ref is not None:
            x = self._extra_xattn("ref", x, ref, ref_mask)

        h = modulate(layer_norm("norm3", dtype=dt)(x), shift_mlp, scale_mlp)
        x = gated(x, gate_mlp, FeedForward(mult=c.mlp_ratio, activation="geglu", dtype=dt, name="ff")(h))
        return constrain(x, ACT)


class StyleEmbed(nn.Module):
    """``linear_1`` Linear(style_dim -> D) (xavier), SiLU, ``linear_2`` Linear(D -> D) (zero-init): the
    style vector's contribution to the timestep embedding, exactly zero at init. [B, S] -> [B, D]."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, s):
        h = nn.silu(dense(self.features, ("embed_in", "embed"), name="linear_1", dtype=self.dtype)(s))
        return dense(self.features, ("embed_in", "embed"), name="linear_2", dtype=self.dtype, kernel_init=zeros)(h)


def _key_mask(m, shape, what):
    """Optional [B, L] boolean mask for a context of ``shape`` [B, L, ...]; ``what`` names it in errors."""
    if m is None:
        return None
    m = jnp.asarray(m)
    if m.shape != tuple(shape[:2]):
        raise ValueError(f"DiT: {what} must be [B, L] = {tuple(shape[:2])}, got {m.shape}")
    return m.astype(bool)


class DiT(nn.Module):
    """EzAudio-DiT. ``__call__(x_t [B, T, C], t [B], cond: dict, *, train=False) -> [B, T, out_channels]``;
    ``encode(x_t, t, cond, *, train=False) -> list of depth//2 [B, T, width]`` (in-block outputs)."""

    config: DiTConfig

    def __call__(self, x_t, t, cond: Mapping[str, Any] | None = None, *, train: bool = False):
        return self._forward(x_t, t, cond, train=train, encode_only=False)

    def encode(self, x_t, t, cond: Mapping[str, Any] | None = None, *, train: bool = False):
        """The in-block outputs (the features the long skips carry): a list of ``depth // 2`` arrays
        [B, T, width], in-block 0 first. DreamAudio reference features for a generation DiT, see
        :func:`dit_refs_from_encoder_features`. ``model.apply(variables, x, t, cond, method=DiT.encode)``;
        only the in-block params are used (initialise with ``__call__``)."""
        return self._forward(x_t, t, cond, train=train, encode_only=True)

    def _extra_conditions(self, cond, B, dt):
        """(style [B, D] | None, acoustic [B, La, D] | None, acoustic_mask, refs: list per out block of
        (features [B, Lr, D], mask [B, Lr] | None) | None). At init the configured paths get dummy inputs so
        that their params exist even when the key is missing."""
        c = self.config
        init = self.is_initializing()
        n_half = c.depth // 2

        style = cond.get("style")
        style_emb = None
        if style is not None and c.style_dim is None:
            raise ValueError("DiT: cond['style'] given but the config has style_dim=None")
        if c.style_dim is not None:
            if style is None and init:
                style = jnp.zeros((B, c.style_dim), dt)
            if style is not None:
                style = jnp.asarray(style)
                if style.shape != (B, c.style_dim):
                    raise ValueError(f"DiT: cond['style'] must be [B, style_dim] = {(B, c.style_dim)}, "
                                     f"got {style.shape}")
                if c.style_path == "pooled":   # a residual of the text states: joins them before pooling
                    style_emb = style.astype(dt)
                else:
                    style_emb = StyleEmbed(c.width, dtype=dt, name="style_embed")(style.astype(dt))

        acoustic = cond.get("acoustic")
        acoustic_ctx, acoustic_mask = None, cond.get("acoustic_mask")
        if c.acoustic_dim is None:
            for k in ("acoustic", "acoustic_mask"):
                if cond.get(k) is not None:
                    raise ValueError(f"DiT: cond[{k!r}] given but the config has acoustic_dim=None")
        else:
            if acoustic is None and init:  # dummy context: create the params (no mask: it fits no dummy)
                acoustic, acoustic_mask = jnp.zeros((B, 1, c.acoustic_dim), dt), None
            if acoustic is not None:
                acoustic = jnp.asarray(acoustic)
                if acoustic.ndim != 3 or acoustic.shape[0] != B or acoustic.shape[-1] != c.acoustic_dim:
                    raise ValueError(f"DiT: cond['acoustic'] must be [B={B}, La, acoustic_dim={c.acoustic_dim}], "
                                     f"got {acoustic.shape}")
                acoustic_mask = _key_mask(acoustic_mask, acoustic.shape, "cond['acoustic_mask']")
                acoustic_ctx = TimestepMLP(c.width, dtype=dt, name="acoustic_embed")(acoustic.astype(dt))
                acoustic_ctx = constrain(acoustic_ctx, ACT)
            else:  # a dropped acoustic condition: its mask (if any) has nothing to mask
                acoustic_mask = None

        refs = cond.get("refs")
        ref_ctx = [None] * n_half
        if refs is not None:
            if not isinstance(refs, (list, tuple)) or len(refs) != n_half:
                got = f"length {len(refs)}" if isinstance(refs, (list, tuple)) else type(refs).__name__
                raise ValueError(f"DiT: cond['refs'] must be a list with one entry (None, [B, Lr, {c.width}] or "
                                 f"(features, mask [B, Lr])) per out block ({n_half}), got {got}")
            for i, r in enumerate(refs):
                if r is not None and i not in c.ref_blocks:
                    raise ValueError(f"DiT: cond['refs'][{i}] given but out block {i} is not in "
                                     f"ref_blocks {c.ref_blocks}")
        for i in c.ref_blocks:
            r = None if refs is None else refs[i]
            if r is None:
                if init:
                    ref_ctx[i] = (jnp.zeros((B, 1, c.width), dt), None)
                continue
            rm = None
            if isinstance(r, (tuple, list)):
                if len(r) != 2:
                    raise ValueError(f"DiT: cond['refs'][{i}] as a tuple must be (features, mask)")
                r, rm = r
            r = jnp.asarray(r)
            if r.ndim != 3 or r.shape[0] != B or r.shape[-1] != c.width:
                raise ValueError(f"DiT: cond['refs'][{i}] must be [B={B}, Lr, width={c.width}], got {r.shape}")
            rm = _key_mask(rm, r.shape, f"the mask of cond['refs'][{i}]")
            ref_ctx[i] = (constrain(r.astype(dt), ACT), rm)
        return style_emb, acoustic_ctx, acoustic_mask, ref_ctx

    @nn.compact
    def _forward(self, x_t, t, cond, *, train: bool, encode_only: bool):
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
        style_emb, acoustic, acoustic_mask, ref_ctx = self._extra_conditions(cond, B, dt)

        # ---- timestep (+ pooled text, + style) ----
        temb = timestep_embedding(t, c.time_freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0.0)
        temb = TimestepMLP(c.width, dtype=dt, name="time_embed")(temb.astype(dt))
        if c.pooled_context and context is not None:
            w = (jnp.ones(text.shape[:2], dt) if context_mask is None else context_mask.astype(dt))[..., None]
            pooled = (text.astype(dt) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)  # [B, context_dim]
            if style_emb is not None and c.style_path == "pooled":
                pooled = pooled + style_emb
            temb = temb + TimestepMLP(c.width, dtype=dt, name="pooled_text_embed")(pooled)
        elif style_emb is not None and c.style_path == "pooled":
            raise ValueError("DiT: style_path='pooled' adds cond['style'] to the pooled text, but cond has no 'text'")
        if style_emb is not None and c.style_path == "embed":
            temb = temb + style_emb
        temb = nn.silu(temb)
        final_mod = dense(2 * c.width, ("embed", "mlp"), name="time_ada_final", dtype=dt, kernel_init=zeros)(temb)
        shared = None
        if c.modulation in ("sola", "adaln_single"):
            shared = dense(6 * c.width, ("embed", "mlp"), name="time_ada", dtype=dt, kernel_init=zeros)(temb)
        control = cond.get("attn_control")

        # ---- blocks ----
        if c.attention_backend == "auto" and not (control is not None and control.active):
            # measured on CPU (docs/experiments.md): the deferred-softmax core has the cheaper backward, XLA's
            # fused kernel the faster forward-only pass (sampling)
            c = dataclasses.replace(c, attention_backend="deferred" if train else "xla")
        block_cls = DiTBlock
        if c.remat:
            if control is not None:
                raise ValueError("DiT: attn_control is not supported with remat=True")
            block_cls = nn.remat(DiTBlock, policy=getattr(jax.checkpoint_policies, c.remat_policy))
        n_half = c.depth // 2
        skips, feats = [], []
        for i in range(n_half):
            x = block_cls(c, False, c.has_acoustic(i), False, name=f"in_blocks_{i}")(
                x, temb, shared, None, context, context_mask, control, acoustic, acoustic_mask)
            feats.append(x)
            if c.long_skips:
                skips.append(x)
        if encode_only:
            return feats
        x = block_cls(c, False, c.has_acoustic(n_half), False, name="mid_block")(
            x, temb, shared, None, context, context_mask, control, acoustic, acoustic_mask)
        for i in range(n_half):
            skip = skips.pop() if c.long_skips else None
            ref, ref_mask = ref_ctx[i] if ref_ctx[i] is not None else (None, None)
            x = block_cls(c, c.long_skips, c.has_acoustic(n_half + 1 + i), i in c.ref_blocks,
                          name=f"out_blocks_{i}")(x, temb, shared, skip, context, context_mask, control, acoustic,
                                                  acoustic_mask, ref, ref_mask)

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


def dit_refs_from_encoder_features(feats: Sequence[Any], ref_blocks: Sequence[int] | None = None, *,
                                   mask=None) -> list:
    """In-block features of a reference DiT (:meth:`DiT.encode`) -> ``cond["refs"]`` for a generation DiT.

    ``feats``: ``n = depth // 2`` arrays, in-block 0 first, each [B, T_ref, D] (one reference) or
    [B, K, T_ref, D] (K references per example; run the reference DiT on the [B * K, T_ref, C] latents and
    reshape). Out block ``i`` gets in-block ``n - 1 - i`` (LIFO, like the long skips); entries not in
    ``ref_blocks`` (default: all) are ``None``. K references are concatenated along the sequence axis:
    [B, K * T_ref, D] (reference k occupies rows k * T_ref .. (k + 1) * T_ref - 1).

    ``mask`` (optional, True = attend): [B, T_ref] for 3-D features; for 4-D features [B, K] (reference k
    present; dropped references keep their slot, so a jitted caller does not retrace) or [B, K, T_ref]
    (per frame). With a mask each entry is a tuple (features, mask [B, K * T_ref]); without, the features.
    """
    n = len(feats)
    out = []
    for i in range(n):
        if ref_blocks is not None and i not in ref_blocks:
            out.append(None)
            continue
        f = jnp.asarray(feats[n - 1 - i])
        m = None if mask is None else jnp.asarray(mask).astype(bool)
        if f.ndim == 4:
            Bf, K, Tr, D = f.shape
            if m is not None:
                if m.shape == (Bf, K):
                    m = jnp.broadcast_to(m[:, :, None], (Bf, K, Tr))
                if m.shape != (Bf, K, Tr):
                    raise ValueError(f"dit_refs_from_encoder_features: mask must be [B, K] = {(Bf, K)} or "
                                     f"[B, K, T_ref] = {(Bf, K, Tr)} for features {f.shape}, got {m.shape}")
                m = m.reshape(Bf, K * Tr)
            f = f.reshape(Bf, K * Tr, D)
        elif f.ndim == 3:
            if m is not None and m.shape != f.shape[:2]:
                raise ValueError(f"dit_refs_from_encoder_features: mask must be [B, T_ref] = {f.shape[:2]} for "
                                 f"features {f.shape}, got {m.shape}")
        else:
            raise ValueError(f"dit_refs_from_encoder_features: features must be [B, T_ref, D] or "
                             f"[B, K, T_ref, D], got {f.shape}")
        out.append(f if m is None else (f, m))
    return out
