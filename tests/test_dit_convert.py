"""EzAudio-DiT converter: official key names/shapes -> our params; clear errors; torch reference forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.convert.common import ConversionError
from tta_jax.convert.ezaudio_dit import convert_ezaudio_dit
from tta_jax.denoisers.dit import DiT, ezaudio_tiny

CFG = ezaudio_tiny()


def official_state_dict(c, seed=0):
    """Synthetic MaskDiT state dict with the official EzAudio names and PyTorch shapes (ada_sola_bias,
    qk_norm=layernorm, rope 'shared', context 'cross', context_norm, skip + skip_norm, use_conv)."""
    rng = np.random.default_rng(seed)
    D, C, r, hd = c.width, c.in_channels, c.sola_rank, c.hd
    sd = {}

    def put(name, *shape):
        sd[name] = (0.2 * rng.standard_normal(shape)).astype(np.float32)

    def lin(name, o, i, bias=True):
        put(f"{name}.weight", o, i)
        if bias:
            put(f"{name}.bias", o)

    def ln(name, d):
        sd[f"{name}.weight"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        put(f"{name}.bias", d)

    put("mask_embed", C)
    put("model.patch_embed.proj.weight", D, 2 * C + 1, 1)
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
    put("model.final_block.final_layer.weight", C, C, 3)
    put("model.final_block.final_layer.bias", C)
    return sd


def test_converter_maps_every_key():
    sd = official_state_dict(CFG)
    variables, report = convert_ezaudio_dit(sd, CFG)
    assert report.ok, report.summary()
    p = variables["params"]
    np.testing.assert_array_equal(p["in_blocks_1"]["attn"]["to_q"]["kernel"], sd["model.in_blocks.1.attn.to_q.weight"].T)
    np.testing.assert_array_equal(p["out_blocks_0"]["cross_attn"]["to_out"]["bias"],
                                  sd["model.out_blocks.0.cross_attn.proj.bias"])
    np.testing.assert_array_equal(p["final_block"]["final_layer"]["kernel"][:, 2, 5],
                                  sd["model.final_block.final_layer.weight"][5, 2, :])
    assert p["patch_embed"]["kernel"].shape == (1, 2 * CFG.in_channels + 1, CFG.width)
    # DDP prefix is accepted
    _, report = convert_ezaudio_dit({"module." + k: v for k, v in sd.items()}, CFG)
    assert report.ok


def test_converter_fails_clearly():
    sd = official_state_dict(CFG)
    bad = dict(sd)
    bad["model.mid_block.attn.to_qq.weight"] = bad.pop("model.mid_block.attn.to_q.weight")
    with pytest.raises(ConversionError, match=r"model\.mid_block\.attn\.to_q\.weight") as e:
        convert_ezaudio_dit(bad, CFG)
    assert "to_qq" in str(e.value)  # the leftover renamed key is named too
    bad = dict(sd)
    bad["model.out_blocks.1.skip_linear.weight"] = np.zeros((CFG.width, CFG.width), np.float32)
    with pytest.raises(ConversionError, match=r"out_blocks_1/skip_linear/kernel .*model\.out_blocks\.1\.skip_linear"):
        convert_ezaudio_dit(bad, CFG)
    bad = dict(sd, **{"model.mid_block.attn.to_q.bias": np.zeros(CFG.width, np.float32)})
    with pytest.raises(ConversionError, match="to_q"):
        convert_ezaudio_dit(bad, CFG)
    # non-strict returns the partial tree and the report
    bad = dict(sd)
    bad.pop("model.final_block.linear.bias")
    _, report = convert_ezaudio_dit(bad, CFG, strict=False)
    assert not report.ok and "final_block/linear/bias" in report.missing


def torch_reference(sd, x, t, text, text_mask, clean, mask, c):
    """EzAudio forward written from the reference description, in PyTorch, on the official state dict."""
    import torch
    import torch.nn.functional as F

    W = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
    P = "model."
    D, H, hd = c.width, c.num_heads, c.hd
    lin = lambda h, n, b=True: F.linear(h, W[n + ".weight"], W[n + ".bias"] if b else None)  # noqa: E731
    ln = lambda h, n: F.layer_norm(h, (h.shape[-1],), W[n + ".weight"], W[n + ".bias"], 1e-5)  # noqa: E731
    film = lambda h, shift, scale: h * (1 + scale) + shift  # noqa: E731
    x, text, clean = (torch.from_numpy(np.asarray(a)) for a in (x, text, clean))
    mask = torch.from_numpy(np.asarray(mask, np.float32))
    tm = torch.from_numpy(np.asarray(text_mask, bool))
    B, T, C = x.shape
    gt = torch.where(mask[..., None] > 0, W["mask_embed"][None, None], clean)
    h = torch.cat([x, gt, mask[..., None]], -1).transpose(1, 2)
    h = F.conv1d(h, W[P + "patch_embed.proj.weight"], W[P + "patch_embed.proj.bias"]).transpose(1, 2)
    half = c.time_freq_dim // 2
    freqs = torch.exp(-np.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.from_numpy(np.asarray(t, np.float32))[:, None] * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    temb = F.silu(lin(F.silu(lin(temb, P + "time_embed.mlp.0")), P + "time_embed.mlp.2"))
    final_mod = lin(temb, P + "time_ada_final")
    shared = lin(temb, P + "time_ada")
    ctx = lin(F.silu(lin(text, P + "context_embed.0")), P + "context_embed.2")

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
    return h.transpose(1, 2).numpy()


@pytest.mark.parity
def test_converted_forward_matches_torch_reference(rel_err):
    pytest.importorskip("torch")
    c = CFG
    sd = official_state_dict(c, seed=1)
    variables, _ = convert_ezaudio_dit(sd, c)
    rng = np.random.default_rng(2)
    B, T, L = 2, 10, 6
    x = rng.standard_normal((B, T, c.in_channels)).astype(np.float32)
    clean = rng.standard_normal((B, T, c.in_channels)).astype(np.float32)
    text = rng.standard_normal((B, L, c.context_dim)).astype(np.float32)
    text_mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    mask = np.zeros((B, T), np.float32)
    mask[0, 3:7] = 1
    mask[1] = 1
    t = np.array([17, 900])
    cond = {"text": text, "text_mask": text_mask, "masked_latent": clean, "mask": mask}
    ours = jax.jit(DiT(c).apply)(variables, jnp.asarray(x), jnp.asarray(t), cond)
    ref = torch_reference(sd, x, t, text, text_mask, clean, mask, c)
    err = rel_err(np.asarray(ours), ref)
    print(f"max_rel_err vs torch reference: {err:.2e}")
    assert err < 1e-4
