"""EzAudio-DiT in plain PyTorch, written from docs/reference-architectures.md section 1.

A faithful functional re-implementation on the *official* ``MaskDiT`` state-dict names (the same one
tests/test_dit_convert.py uses for converter parity; that test could import it from here). Used by
``launch/bench.py`` to time the PyTorch side with exactly the function our JAX DiT computes once the
state dict is converted by :func:`tta_jax.convert.ezaudio_dit.convert_ezaudio_dit`.

- :func:`official_state_dict(c, seed, init)`: synthetic state dict with the official names and shapes
  (``init="test"``: N(0, 0.2^2) like the converter test; ``"fan_in"``: N(0, 1/fan_in) so deep/wide
  configs stay finite during training benchmarks).
- :func:`dit_forward(W, x, t, text, text_mask, clean, mask, c)`: torch tensors in/out ([B, T, C]).
- :func:`torch_reference(sd, ...)`: numpy in/out wrapper (the test's signature).
"""
from __future__ import annotations

import math

import numpy as np


def official_state_dict(c, seed: int = 0, init: str = "test") -> dict[str, np.ndarray]:
    """Synthetic MaskDiT state dict with the official EzAudio names and PyTorch shapes (ada_sola_bias,
    qk_norm=layernorm, rope 'shared', context 'cross', context_norm, skip + skip_norm, use_conv)."""
    if init not in ("test", "fan_in"):
        raise ValueError(f"init must be 'test' or 'fan_in', got {init!r}")
    rng = np.random.default_rng(seed)
    D, C, r, hd = c.width, c.in_channels, c.sola_rank, c.hd
    sd = {}

    def put(name, *shape, fan_in=None):
        std = 0.2 if init == "test" or fan_in is None else 1.0 / math.sqrt(fan_in)
        if init == "fan_in" and fan_in is None:
            std = 0.02
        sd[name] = (std * rng.standard_normal(shape)).astype(np.float32)

    def lin(name, o, i, bias=True):
        put(f"{name}.weight", o, i, fan_in=i)
        if bias:
            put(f"{name}.bias", o)

    def ln(name, d):
        sd[f"{name}.weight"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        put(f"{name}.bias", d)

    put("mask_embed", C)
    put("model.patch_embed.proj.weight", D, 2 * C + 1, 1, fan_in=2 * C + 1)
    put("model.patch_embed.proj.bias", D)
    lin("model.time_embed.mlp.0", D, c.time_freq_dim)
    lin("model.time_embed.mlp.2", D, D)
    lin("model.time_ada_final", 2 * D, D)
    lin("model.time_ada", 6 * D, D)
    lin("model.context_embed.0", D, c.context_dim)
    lin("model.context_embed.2", D, D)
    blocks = [f"model.in_blocks.{i}" for i in range(c.depth // 2)] + ["model.mid_block"] + \
             [f"model.out_blocks.{i}" for i in range(c.depth // 2)]
    for b in blocks:
        for n in ("norm1", "norm2", "norm3", "norm_context"):
            ln(f"{b}.{n}", D)
        for a in ("attn", "cross_attn"):
            for p in ("to_q", "to_k", "to_v"):
                lin(f"{b}.{a}.{p}", D, D, bias=False)
            ln(f"{b}.{a}.norm_q", hd)
            ln(f"{b}.{a}.norm_k", hd)
            lin(f"{b}.{a}.proj", D, D)
        sd[f"{b}.attn.rotary.inv_freq"] = (1.0 / 10000 ** (np.arange(0, hd, 2) / hd)).astype(np.float32)
        lin(f"{b}.mlp.net.0.proj", 2 * 4 * D, D)
        lin(f"{b}.mlp.net.2", D, 4 * D)
        lin(f"{b}.adaln.lora_a", 6 * r, D, bias=False)
        lin(f"{b}.adaln.lora_b", 6 * D, 6 * r, bias=False)
        put(f"{b}.adaln.scale_shift_table", 6, D)
        if ".out_blocks." in b:
            ln(f"{b}.skip_norm", 2 * D)
            lin(f"{b}.skip_linear", D, 2 * D)
    ln("model.final_block.norm", D)
    lin("model.final_block.linear", C, D)
    put("model.final_block.final_layer.weight", C, C, 3, fan_in=3 * C)
    put("model.final_block.final_layer.bias", C)
    return sd


def torch_weights(sd, *, requires_grad: bool = False) -> dict:
    """numpy state dict -> {name: torch float32 tensor} (leaf tensors; trainable if requires_grad)."""
    import torch

    return {k: torch.from_numpy(np.array(v, np.float32, copy=True)).requires_grad_(requires_grad)
            for k, v in sd.items()}


def dit_forward(W, x, t, text, text_mask, clean, mask, c):
    """EzAudio forward in PyTorch on the official state dict ``W`` (torch tensors).

    x [B, T, C], t [B] (timesteps, any numeric dtype), text [B, L, ctx], text_mask [B, L] bool,
    clean [B, T, C] or None (-> mask embedding everywhere), mask [B, T] or None (-> all ones).
    Returns [B, T, C].
    """
    import torch
    import torch.nn.functional as F

    P = "model."
    D, H, hd = c.width, c.num_heads, c.hd
    lin = lambda h, n, b=True: F.linear(h, W[n + ".weight"], W[n + ".bias"] if b else None)  # noqa: E731
    ln = lambda h, n: F.layer_norm(h, (h.shape[-1],), W[n + ".weight"], W[n + ".bias"], 1e-5)  # noqa: E731
    film = lambda h, shift, scale: h * (1 + scale) + shift  # noqa: E731
    B, T, C = x.shape
    if mask is None:
        mask = torch.ones((B, T), dtype=x.dtype)
    mask = mask.to(x.dtype)
    if clean is None:
        gt = W["mask_embed"][None, None].expand(B, T, C)
    else:
        gt = torch.where(mask[..., None] > 0, W["mask_embed"][None, None], clean)
    h = torch.cat([x, gt, mask[..., None]], -1).transpose(1, 2)
    h = F.conv1d(h, W[P + "patch_embed.proj.weight"], W[P + "patch_embed.proj.bias"]).transpose(1, 2)
    half = c.time_freq_dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    temb = F.silu(lin(F.silu(lin(temb, P + "time_embed.mlp.0")), P + "time_embed.mlp.2"))
    final_mod = lin(temb, P + "time_ada_final")
    shared = lin(temb, P + "time_ada")
    ctx = lin(F.silu(lin(text, P + "context_embed.0")), P + "context_embed.2")
    tm = None if text_mask is None else text_mask.to(torch.bool)

    def attention(pre, q_in, kv_in, key_mask, rope):
        kv_in = q_in if kv_in is None else kv_in
        q = lin(q_in, pre + ".to_q", False).view(B, -1, H, hd).transpose(1, 2)
        k = lin(kv_in, pre + ".to_k", False).view(B, -1, H, hd).transpose(1, 2)
        v = lin(kv_in, pre + ".to_v", False).view(B, -1, H, hd).transpose(1, 2)
        q, k = ln(q, pre + ".norm_q"), ln(k, pre + ".norm_k")
        if rope:
            f = torch.outer(torch.arange(q.shape[2], dtype=torch.float32), W[pre + ".rotary.inv_freq"])
            emb = torch.cat([f, f], -1)
            rot = lambda z: torch.cat([-z[..., hd // 2:], z[..., : hd // 2]], -1)  # noqa: E731
            q = q * emb.cos() + rot(q) * emb.sin()
            k = k * emb.cos() + rot(k) * emb.sin()
        am = None if key_mask is None else key_mask[:, None, None, :]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=am)
        return lin(o.transpose(1, 2).reshape(B, -1, H * hd), pre + ".proj")

    def block(pre, x, skip):
        if skip is not None:
            x = lin(ln(torch.cat([x, skip], -1), pre + ".skip_norm"), pre + ".skip_linear")
        lora = F.linear(F.linear(temb, W[pre + ".adaln.lora_a.weight"]), W[pre + ".adaln.lora_b.weight"])
        mod = (shared + lora * (c.sola_alpha or c.sola_rank) / c.sola_rank).view(B, 6, D)
        mod = mod + W[pre + ".adaln.scale_shift_table"][None]
        s1, sc1, g1, s2, sc2, g2 = mod.chunk(6, dim=1)
        x = x + (1 - g1) * attention(pre + ".attn", film(ln(x, pre + ".norm1"), s1, sc1), None, None, True)
        x = x + attention(pre + ".cross_attn", ln(x, pre + ".norm2"), ln(ctx, pre + ".norm_context"), tm, False)
        hh = lin(film(ln(x, pre + ".norm3"), s2, sc2), pre + ".mlp.net.0.proj")
        a, gate = hh.chunk(2, -1)
        return x + (1 - g2) * lin(a * F.gelu(gate), pre + ".mlp.net.2")

    skips = []
    for i in range(c.depth // 2):
        h = block(f"{P}in_blocks.{i}", h, None)
        skips.append(h)
    h = block(f"{P}mid_block", h, None)
    for i in range(c.depth // 2):
        h = block(f"{P}out_blocks.{i}", h, skips.pop())
    shift, scale = final_mod.view(B, 2, D).chunk(2, dim=1)
    h = lin(film(ln(h, P + "final_block.norm"), shift, scale), P + "final_block.linear")
    h = F.conv1d(h.transpose(1, 2), W[P + "final_block.final_layer.weight"], W[P + "final_block.final_layer.bias"],
                 padding=1)
    return h.transpose(1, 2)


def torch_reference(sd, x, t, text, text_mask, clean, mask, c):
    """numpy-in / numpy-out wrapper of :func:`dit_forward` (the converter test's signature)."""
    import torch

    W = torch_weights(sd)
    tt = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    with torch.no_grad():
        out = dit_forward(W, tt(x), tt(np.asarray(t, np.float32)), tt(text), tt(np.asarray(text_mask, bool)),
                          tt(clean), tt(np.asarray(mask, np.float32)), c)
    return out.numpy()
