"""Feed-forward layers and adaptive-norm (AdaLN family) modulation helpers.

Shapes: tokens ``x`` [B, L, D]; conditioning vectors ``emb`` [B, E]; modulation tensors [B, n, D].
Names follow diffusers where a diffusers counterpart exists (``ff/net_0/proj``, ``ff/net_2``,
AdaGroupNorm ``linear``) and the EzAudio code otherwise (``lora_a``, ``lora_b``, ``scale_shift_table``,
``time_ada``), which keeps converters one-to-one.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from tta_jax.nn.sharding import dense_init

xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros
# PyTorch nn.Linear default (kaiming_uniform(a=sqrt(5))): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_default = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dense(features: int, names, *, name: str, use_bias: bool = True, dtype=jnp.float32,
          kernel_init=xavier, bias_init=zeros) -> nn.Dense:
    """A Dense with logical names on kernel ([in, out] = ``names``) and bias (``names[1]``)."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=dense_init(kernel_init, names),
                    bias_init=dense_init(bias_init, tuple(names)[1:]))


def layer_norm(name: str, *, eps: float = 1e-5, dtype=jnp.float32, affine: bool = True) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name, use_scale=affine, use_bias=affine,
                        scale_init=dense_init(nn.initializers.ones, ("norm",)),
                        bias_init=dense_init(zeros, ("norm",)))


# --------------------------------------------------------------------------------------------------
# Feed-forward
# --------------------------------------------------------------------------------------------------
class GEGLU(nn.Module):
    """``proj`` Linear(D -> 2F); ``h, gate = split``; ``h * gelu(gate)`` (exact erf GELU). [B, L, D] -> [B, L, F]."""

    features: int
    dtype: Any = jnp.float32
    kernel_init: Any = xavier

    @nn.compact
    def __call__(self, x):
        h = dense(2 * self.features, ("embed", "mlp"), name="proj", dtype=self.dtype,
                  kernel_init=self.kernel_init)(x)
        h, gate = jnp.split(h, 2, axis=-1)
        return h * nn.gelu(gate, approximate=False)


class GELUProj(nn.Module):
    """``proj`` Linear(D -> F) then GELU (diffusers ``GELU``; ``approximate`` = tanh variant)."""

    features: int
    approximate: bool = False
    dtype: Any = jnp.float32
    kernel_init: Any = xavier

    @nn.compact
    def __call__(self, x):
        h = dense(self.features, ("embed", "mlp"), name="proj", dtype=self.dtype,
                  kernel_init=self.kernel_init)(x)
        return nn.gelu(h, approximate=self.approximate)


class FeedForward(nn.Module):
    """diffusers ``FeedForward``: ``net_0`` (GEGLU / GELU with a ``proj``), then ``net_2`` Linear(F -> out).

    [B, L, D] -> [B, L, dim_out or D]; ``F = inner_dim or int(D * mult)``.
    ``activation`` in {"geglu", "gelu", "gelu-approximate"}.
    """

    mult: float = 4.0
    dim_out: int | None = None
    inner_dim: int | None = None
    activation: str = "geglu"
    dtype: Any = jnp.float32
    kernel_init: Any = xavier

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        inner = self.inner_dim or int(d * self.mult)
        if self.activation == "geglu":
            h = GEGLU(inner, dtype=self.dtype, kernel_init=self.kernel_init, name="net_0")(x)
        elif self.activation in ("gelu", "gelu-approximate"):
            h = GELUProj(inner, approximate=self.activation == "gelu-approximate", dtype=self.dtype,
                         kernel_init=self.kernel_init, name="net_0")(x)
        else:
            raise ValueError(f"FeedForward.activation must be geglu/gelu/gelu-approximate, got {self.activation!r}")
        h = nn.with_logical_constraint(h, ("batch", "length", "act_mlp")) if h.ndim == 3 else h
        return dense(self.dim_out or d, ("mlp", "embed"), name="net_2", dtype=self.dtype,
                     kernel_init=self.kernel_init)(h)


class MLP(nn.Module):
    """Plain ``linear_1`` (D -> hidden), activation, ``linear_2`` (hidden -> out or D)."""

    hidden: int
    out_features: int | None = None
    act: Callable = nn.silu
    dtype: Any = jnp.float32
    kernel_init: Any = xavier

    @nn.compact
    def __call__(self, x):
        h = self.act(dense(self.hidden, ("embed", "mlp"), name="linear_1", dtype=self.dtype,
                           kernel_init=self.kernel_init)(x))
        return dense(self.out_features or x.shape[-1], ("mlp", "embed"), name="linear_2", dtype=self.dtype,
                     kernel_init=self.kernel_init)(h)


# --------------------------------------------------------------------------------------------------
# Adaptive norms
# --------------------------------------------------------------------------------------------------
def modulate(x, shift, scale):
    """FiLM ``x * (1 + scale) + shift``; shift/scale [B, D] broadcast over the token axes of x [B, ..., D]."""
    while shift.ndim < x.ndim:
        shift = jnp.expand_dims(shift, 1)
        scale = jnp.expand_dims(scale, 1)
    return x * (1 + scale) + shift


def split_mod(mod, n: int = 6):
    """[B, n, D] -> tuple of n [B, D] (EzAudio order: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp,
    gate_mlp)."""
    if mod.ndim != 3 or mod.shape[1] != n:
        raise ValueError(f"modulation must be [B, {n}, D], got {mod.shape}")
    return tuple(mod[:, i] for i in range(n))


class AdaLNZero(nn.Module):
    """Per-block adaLN(-zero) (DiT / EzAudio ``ada``): ``time_ada`` Linear(E -> nD), zero-init.

    ``emb`` [B, E] must already be activated (EzAudio applies one global SiLU). Returns [B, n, D].
    """

    dim: int
    n: int = 6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, emb):
        out = dense(self.n * self.dim, ("embed", "mlp"), name="time_ada", dtype=self.dtype,
                    kernel_init=zeros)(emb)
        return out.reshape(emb.shape[0], self.n, self.dim)


class AdaLNSingle(nn.Module):
    """Per-block part of adaLN-single (PixArt-alpha): ``shared [B, nD] + scale_shift_table [n, D]``.

    The shared Linear(D -> nD) on SiLU(t) lives once in the parent. EzAudio zero-inits the table
    (``table_init``); PixArt uses ``randn / sqrt(D)``. Returns [B, n, D].
    """

    dim: int
    n: int = 6
    table_init: Any = zeros

    @nn.compact
    def __call__(self, shared):
        table = self.param("scale_shift_table", dense_init(self.table_init, (None, "norm")), (self.n, self.dim))
        return shared.reshape(shared.shape[0], self.n, self.dim) + table[None].astype(shared.dtype)


class AdaLNSOLA(nn.Module):
    """Per-block AdaLN-SOLA (EzAudio): ``shared + (alpha/r) * lora_b(lora_a(emb)) [+ scale_shift_table]``.

    ``lora_a`` Linear(D -> n*r, no bias, PyTorch default init), ``lora_b`` Linear(n*r -> n*D, no bias,
    zero-init), ``scale_shift_table`` [n, D] zero-init (EzAudio's ``ada_sola_bias``; ``use_table=False``
    gives plain ``ada_sola``). ``emb`` [B, D] is the (already SiLU'd) time token, ``shared`` [B, nD] the
    shared zero-init Linear(D -> nD) output. Returns [B, n, D].
    """

    dim: int
    rank: int
    alpha: float | None = None
    n: int = 6
    use_table: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, emb, shared):
        B = emb.shape[0]
        scaling = (self.alpha if self.alpha is not None else self.rank) / self.rank
        a = dense(self.n * self.rank, ("embed", "mlp"), name="lora_a", use_bias=False, dtype=self.dtype,
                  kernel_init=torch_linear_default)(emb)
        b = dense(self.n * self.dim, ("mlp", "embed"), name="lora_b", use_bias=False, dtype=self.dtype,
                  kernel_init=zeros)(a)
        mod = (shared + b * scaling).reshape(B, self.n, self.dim)
        if self.use_table:
            table = self.param("scale_shift_table", dense_init(zeros, (None, "norm")), (self.n, self.dim))
            mod = mod + table[None].astype(mod.dtype)
        return mod


class AdaGroupNorm(nn.Module):
    """diffusers ``AdaGroupNorm``: ``scale, shift = split(linear(act(emb)))``; ``GN(x) * (1 + scale) + shift``.

    x [B, ..., C] channels-last; emb [B, E]; ``act`` in {None, "silu", "mish", "gelu"}; GN without affine.
    """

    out_dim: int
    num_groups: int
    act: str | None = None
    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb):
        acts = {None: lambda z: z, "silu": nn.silu, "swish": nn.silu, "gelu": nn.gelu,
                "mish": lambda z: z * jnp.tanh(nn.softplus(z))}
        if self.act not in acts:
            raise ValueError(f"AdaGroupNorm.act must be one of {list(acts)}, got {self.act!r}")
        e = dense(2 * self.out_dim, ("embed", "mlp"), name="linear", dtype=self.dtype,
                  kernel_init=torch_linear_default)(acts[self.act](emb))
        scale, shift = jnp.split(e, 2, axis=-1)
        h = nn.GroupNorm(num_groups=self.num_groups, epsilon=self.eps, use_scale=False, use_bias=False,
                         dtype=self.dtype, name="norm")(x)
        return modulate(h, shift, scale)
