"""Parity: tta_jax UNet vs diffusers UNet2DConditionModel (random weights, float32, tol 1e-4)."""
import numpy as np
import pytest

from conftest import max_rel_err

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tta_jax.convert.common import ConversionError  # noqa: E402
from tta_jax.convert.diffusers_unet import convert_diffusers_unet  # noqa: E402
from tta_jax.denoisers.unet import UNet  # noqa: E402

pytestmark = pytest.mark.parity
TOL = 1e-4

SD_TINY = dict(  # SD v1.5 / Auffusion layout, shrunk
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2, attention_head_dim=8, cross_attention_dim=32, norm_num_groups=8)
# 2 layers per block as in SD (exercises the skip bookkeeping); the Tango configs use 1 to stay fast.
TANGO_TINY = dict(  # Tango layout (8 ch, per-block heads, linear projection), shrunk
    sample_size=16, in_channels=8, out_channels=8, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1, attention_head_dim=(2, 4), cross_attention_dim=32, norm_num_groups=8,
    use_linear_projection=True)
CLASS = dict(class_embed_type="simple_projection", projection_class_embeddings_input_dim=16,
             class_embeddings_concat=True)


def _randomise(module, seed=0):
    """Perturb every 1-D param (norm scales/biases, linear/conv biases) so that swapped or dropped
    affine params cannot pass unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _to_ada_group(unet):
    """diffusers refuses resnet_time_scale_shift='ada_group' in its cross-attention blocks, so the
    reference swaps every ResnetBlock2D for diffusers' own ResnetBlockCondNorm2D(ada_group) with the same
    shapes and the (time ++ class) embedding width -- exactly what the flag means for the other blocks."""
    from diffusers.models.resnet import ResnetBlock2D, ResnetBlockCondNorm2D

    temb = unet.time_embedding.linear_2.out_features * (2 if unet.config.class_embeddings_concat else 1)

    def swap(mod):
        for name, child in mod.named_children():
            if isinstance(child, ResnetBlock2D):
                setattr(mod, name, ResnetBlockCondNorm2D(
                    in_channels=child.in_channels, out_channels=child.out_channels, temb_channels=temb,
                    groups=child.norm1.num_groups, groups_out=child.norm2.num_groups, eps=child.norm1.eps,
                    time_embedding_norm="ada_group", output_scale_factor=child.output_scale_factor))
            else:
                swap(child)

    swap(unet)
    unet.register_to_config(resnet_time_scale_shift="ada_group")
    return unet


def _build(cfg, ada=False, seed=0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**cfg)
    if ada:
        _to_ada_group(unet)
    _randomise(unet, seed)
    return unet.eval()


def _inputs(cfg, B=2, L=7, hw=(16, 16), seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, cfg["in_channels"], *hw)).astype(np.float32)
    t = np.array([10, 637][:B], np.float32)
    text = rng.standard_normal((B, L, cfg["cross_attention_dim"])).astype(np.float32)
    mask = np.ones((B, L), bool)
    mask[-1, 4:] = False
    cls = rng.standard_normal((B, 16)).astype(np.float32)
    return x, t, text, mask, cls


_CASES = {
    "sd15": (SD_TINY, False),
    "tango": (TANGO_TINY, False),
    "tango_ada_class": ({**TANGO_TINY, **CLASS}, True),
    "tango_class": ({**TANGO_TINY, **CLASS}, False),
}
_CACHE = {}


def _case(name):
    """(diffusers unet, our model, converted params, jitted apply), built once per module run."""
    if name not in _CACHE:
        cfg, ada = _CASES[name]
        unet = _build(cfg, ada=ada)
        model = UNet.from_diffusers_config(dict(unet.config))
        params, report = convert_diffusers_unet(unet.state_dict(), model)
        assert report.ok, report.summary()
        fn = jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c))
        _CACHE[name] = (unet, model, params, fn)
    return _CACHE[name]


def _run(name, *, use_mask, use_class=False, hw=(16, 16)):
    unet, model, params, fn = _case(name)
    x, t, text, mask, cls = _inputs(dict(unet.config), hw=hw)
    kw = {}
    cond = {"text": jnp.asarray(text)}
    if use_mask:
        kw["encoder_attention_mask"] = torch.from_numpy(mask)
        cond["text_mask"] = jnp.asarray(mask)
    if use_class:
        kw["class_labels"] = torch.from_numpy(cls)
        cond["class_labels"] = jnp.asarray(cls)
    with torch.no_grad():
        ref = unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(text), **kw).sample.numpy()
    out = fn(params, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t), cond)
    return np.asarray(out).transpose(0, 3, 1, 2), ref


def _check(name, **kw):
    out, ref = _run(name, **kw)
    err = max_rel_err(out, ref)
    print(f"\n[{name} {kw}] max_rel_err={err:.3e}")
    assert err <= TOL
    return out


@pytest.mark.parametrize("use_mask", [False, True])
def test_sd15_tiny(use_mask):
    _check("sd15", use_mask=use_mask)


@pytest.mark.parametrize("use_mask", [False, True])
def test_tango_tiny(use_mask):
    _check("tango", use_mask=use_mask)


@pytest.mark.parametrize("use_mask", [False, True])
def test_tango_tiny_ada_group_class_concat(use_mask):
    _check("tango_ada_class", use_mask=use_mask, use_class=True)


def test_tango_tiny_class_concat_default_norm():
    _check("tango_class", use_mask=True, use_class=True)


def test_sd15_tiny_odd_size():
    """H, W not divisible by 2**num_upsamplers: diffusers forwards upsample_size; so do we."""
    _check("sd15", use_mask=True, hw=(15, 13))


def test_mask_changes_output():
    """The text mask matters (guards against both sides ignoring it): sample 1 has 3 masked tokens."""
    a, _ = _run("sd15", use_mask=False)
    b, _ = _run("sd15", use_mask=True)
    assert np.allclose(a[0], b[0], atol=1e-5) and max_rel_err(a[1], b[1]) > 1e-3


def test_converter_names_bad_keys():
    unet = _build(SD_TINY)
    model = UNet.from_diffusers_config(dict(unet.config))
    sd = {k: v for k, v in unet.state_dict().items() if k != "up_blocks.1.attentions.0.proj_in.weight"}
    sd["extra.weight"] = torch.zeros(3)
    sd["conv_in.weight"] = torch.zeros(32, 4, 3, 1)
    with pytest.raises(ConversionError) as e:
        convert_diffusers_unet(sd, model)
    msg = str(e.value)
    assert "up_blocks_1/attentions_0/proj_in/kernel" in msg
    assert "extra.weight" in msg
    assert "conv_in/kernel" in msg and "(3, 1, 4, 32)" in msg
    params, report = convert_diffusers_unet(sd, model, strict=False)
    assert not report.ok and "kernel" not in params["conv_in"]
    assert report.missing == ["up_blocks_1/attentions_0/proj_in/kernel"]
    assert report.unexpected == ["extra.weight"] and len(report.mismatched) == 1


def test_pretrained_tango_into_serst_adapter():
    """A pretrained (default-norm, no class embedding) Tango U-Net loads into the SERST variant
    (default_ada + style projection, concat): adapter params come from init_params, everything else from
    the checkpoint, and at init the adapted model reproduces diffusers' output."""
    unet, _, _, _ = _case("tango")
    cfg = dict(unet.config)
    serst = UNet.from_diffusers_config(cfg, resnet_time_scale_shift="default_ada", **CLASS)
    x, t, text, mask, cls = _inputs(cfg)
    cond = {"text": jnp.asarray(text), "text_mask": jnp.asarray(mask), "style": jnp.asarray(cls)}
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    fast = {"xla_backend_optimization_level": 0}  # compile-bound test; numerics are unaffected
    init = jax.jit(lambda k: serst.init(k, xj, jnp.asarray(t), cond)["params"],
                   compiler_options=fast)(jax.random.key(0))
    with pytest.raises(ConversionError, match="ada1"):
        convert_diffusers_unet(unet.state_dict(), serst)
    params, report = convert_diffusers_unet(unet.state_dict(), serst, init_params=init)
    assert report.ok and any(v == "(init_params)" for v in report.mapping.values())
    with torch.no_grad():
        ref = unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(text),
                   encoder_attention_mask=torch.from_numpy(mask)).sample.numpy()
    out = jax.jit(lambda p: serst.apply({"params": p}, xj, jnp.asarray(t), cond), compiler_options=fast)(params)
    err = max_rel_err(np.asarray(out).transpose(0, 3, 1, 2), ref)
    print(f"\n[serst from pretrained tango] max_rel_err={err:.3e}")
    assert err <= TOL


def test_load_diffusers_folder(tmp_path):
    """save_pretrained folder (config.json + safetensors) -> (model, params) without torch-side glue."""
    from tta_jax.convert.common import flatten_params
    from tta_jax.convert.diffusers_unet import load_diffusers_unet

    unet, model, params, _ = _case("sd15")
    unet.save_pretrained(tmp_path, safe_serialization=True)
    model2, params2, report = load_diffusers_unet(tmp_path)
    assert report.ok and model2 == model
    a, b = flatten_params(params), flatten_params(params2)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_diffusers_unet(tmp_path / "nope")
