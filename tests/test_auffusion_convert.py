"""Released Auffusion folder -> sampling workdir (issue #18): a random-weight folder in the released layout
(condition_config.json, unet/, vae/, vocoder/{config.json, vocoder.pt}, text_encoder_0/, condition_adapter_0/
{config.json, condition_adapter.pt}) loads end to end and samples; a renamed or reshaped tensor fails naming
it; one CFG step (adapter + U-Net, zero negative, guidance 7.5) matches diffusers + a torch adapter.

Writing the folder needs torch, diffusers and transformers (the parity extra); those tests are skipped
without them. The adapter wrapper's own behaviour (text_null, zero padding, config keys) is tested without.
"""
import json
import os

import numpy as np
import pytest

from conftest import max_rel_err

import jax
import jax.numpy as jnp

from tta_jax.convert.common import ConversionError
from tta_jax.errors import ConfigError

try:
    import diffusers
    import torch
    import transformers  # noqa: F401
except ImportError:  # pragma: no cover - depends on install
    torch = diffusers = None
needs_torch = pytest.mark.skipif(torch is None, reason="writing a released folder needs torch, diffusers, "
                                 "transformers (pip install -e '.[parity]')")

UNET = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, attention_head_dim=4,
            cross_attention_dim=24, norm_num_groups=8)
N_MELS, MAX_LEN, WIDTH = 32, 8, 32        # mel bins, tokens per prompt, CLIP width (tiny_text_folders)
OVERRIDES = ["data.crop_frames=16"]


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _vocoder(folder):
    """A HiFi-GAN of the codec registry's 'tiny' architecture in Auffusion's format: config.json with the
    jik876 keys and vocoder.pt = {"generator": state dict with weight_g / weight_v pairs}."""
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    cfg = dict(resblock="1", num_mels=N_MELS, upsample_rates=[10, 4, 4], upsample_kernel_sizes=[20, 8, 8],
               upsample_initial_channel=16, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]],
               sampling_rate=16000, num_gpus=1, batch_size=16)
    torch.manual_seed(3)
    m = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=N_MELS, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[10, 4, 4],
        upsample_kernel_sizes=[20, 8, 8], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]],
        normalize_before=False)).eval()
    m.apply_weight_norm()
    sd = {k.replace("upsampler.", "ups.").replace(".parametrizations.weight.original0", ".weight_g")
          .replace(".parametrizations.weight.original1", ".weight_v"): v.detach().clone()
          for k, v in m.state_dict().items() if k not in ("mean", "scale")}
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    torch.save({"generator": sd}, os.path.join(folder, "vocoder.pt"))


def _adapter(folder, seed=5):
    torch.manual_seed(seed)
    proj, norm = torch.nn.Linear(WIDTH, UNET["cross_attention_dim"]), torch.nn.LayerNorm(UNET["cross_attention_dim"])
    _randomise(norm, seed)
    sd = {f"proj.{k}": v for k, v in proj.state_dict().items()}
    sd.update({f"norm.{k}": v for k, v in norm.state_dict().items()})
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"condition_type": "clip-vit-large-patch14_text", "condition_dim": WIDTH,
                   "cross_attention_dim": UNET["cross_attention_dim"], "condition_max_length": MAX_LEN}, f)
    torch.save(sd, os.path.join(folder, "condition_adapter.pt"))
    return sd


def make_folder(root):
    """A released-layout Auffusion folder with tiny random weights -> (path, torch unet, adapter state dict)."""
    from tiny_text_folders import save_text_model

    root = str(root)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**UNET).eval()
    _randomise(unet, 0)
    unet.save_pretrained(os.path.join(root, "unet"), safe_serialization=True)
    torch.manual_seed(1)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                                  latent_channels=4, norm_num_groups=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2).eval()
    vae.save_pretrained(os.path.join(root, "vae"), safe_serialization=True)
    _vocoder(os.path.join(root, "vocoder"))
    save_text_model("clip", os.path.join(root, "text_encoder_0"), seed=2)
    with open(os.path.join(root, "text_encoder_0", "config.json")) as f:
        assert "CLIPTextModel" in json.load(f)["architectures"]
    adapter = _adapter(os.path.join(root, "condition_adapter_0"))
    with open(os.path.join(root, "condition_config.json"), "w") as f:
        json.dump([{"text_encoder_name": "text_encoder_0", "condition_adapter_name": "condition_adapter_0",
                    "condition_type": "clip-vit-large-patch14_text", "condition_max_length": MAX_LEN,
                    "condition_dim": WIDTH, "cross_attention_dim": UNET["cross_attention_dim"]}], f)
    return root, unet, adapter


# ------------------------------------------------------------------------------ the adapter wrapper
TINY_UNET = {"name": "unet", "in_channels": 4, "out_channels": 4, "block_out_channels": [8, 16],
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1,
             "attention_head_dim": 2, "cross_attention_dim": 8, "norm_num_groups": 4}


def test_text_null_and_zero_padding():
    """text_null rows see an all-zero, fully attended context (= the inner U-Net on zeros); padding='zeros'
    zeroes states past the mask and attends to them, 'mask' masks them out."""
    from tta_jax.denoisers.factory import build_denoiser

    zeros = build_denoiser({**TINY_UNET, "text_adapters": True, "text_padding": "zeros"})
    masked = build_denoiser({**TINY_UNET, "text_adapters": True})
    assert zeros.cond_keys == ("text", "text_mask", "text_null") and zeros.context_dim == 8
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 4)), jnp.float32)
    t = jnp.array([3, 700])
    states = jnp.asarray(rng.standard_normal((2, 5, 6)), jnp.float32)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    no = jnp.array([False, False])
    cond = {"text": states, "text_mask": mask, "text_null": no}
    # random values in the initialised tree's shapes (abstract init: compiling the initialisers is slow)
    from flax.core import meta

    shapes = jax.eval_shape(lambda r: meta.unbox(zeros.init(r, (4, 4, 4), 5, cond)), jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), jnp.float32), shapes)
    assert set(params["text_adapters"]) == {"adapter_0", "adapter_0_norm"}
    junk = {**cond, "text": states.at[0, 3:].set(50.0)}   # other states past row 0's mask
    ctx0 = {"text": jnp.zeros((2, 5, 8)), "text_mask": jnp.ones((2, 5), bool)}

    @jax.jit  # every call in one program: one compile
    def run():
        return (zeros.apply(params, x, t, {**cond, "text_null": jnp.array([True, False])}),
                zeros.module.net.apply({"params": params["net"]}, x, t, ctx0),
                zeros.apply(params, x, t, cond), zeros.apply(params, x, t, junk),
                masked.apply(params, x, t, cond), masked.apply(params, x, t, junk))

    null, inner, plain, plain_junk, other, other_junk = (np.asarray(a) for a in run())
    np.testing.assert_allclose(null[0], inner[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(null[1], plain[1], rtol=1e-5, atol=1e-6)
    assert np.abs(null[0] - plain[0]).max() > 1e-3
    # states past the mask do not matter to either padding; the two paddings differ where the mask is False
    np.testing.assert_allclose(plain_junk, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(other_junk, other, rtol=1e-5, atol=1e-6)
    assert np.abs(other[0] - plain[0]).max() > 1e-4
    np.testing.assert_allclose(other[1], plain[1], rtol=1e-5, atol=1e-6)


def test_adapter_config_keys_are_checked():
    import ml_collections

    from tta_jax.config import load_config
    from tta_jax.denoisers.factory import build_denoiser
    from tta_jax.pipelines import tta

    with pytest.raises(ConfigError, match=r"text_padding='zeros' applies to text adapters"):
        build_denoiser({**TINY_UNET, "text_padding": "zeros"})
    with pytest.raises(ConfigError, match=r"config.model.text_padding='pad'"):
        build_denoiser({**TINY_UNET, "text_adapters": True, "text_padding": "pad"})
    c = ml_collections.ConfigDict({"model": {**TINY_UNET, "text_adapters": True}, "text": {"name": "none"}})
    with pytest.raises(ConfigError, match="needs a text encoder"):
        tta.denoiser_of(c)
    with pytest.raises(ConfigError, match=r"config.sampler.negative='nothing'"):
        tta.text_conds(lambda texts: {"text": np.zeros((len(texts), 2, 3))}, ["a"], "nothing")
    cond, uncond = tta.text_conds(lambda texts: {"text": np.zeros((len(texts), 2, 3))}, ["a", "b"], "zeros")
    assert cond["text_null"].tolist() == [False, False] and uncond == {"text_null": uncond["text_null"]}
    assert uncond["text_null"].tolist() == [True]
    with pytest.raises(ConfigError, match=r"sampler.negative.*not one of"):
        load_config("configs/auffusion.py:full", ["sampler.negative=none"])
    full = load_config("configs/auffusion.py:full")
    assert full.sampler.negative == "zeros" and tta.denoiser_of(full).cond_keys[-1] == "text_null"
    assert load_config("configs/auffusion.py:tiny").sampler.negative == "empty"


# ------------------------------------------------------------------------------ a released folder
@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("auffusion"))


@pytest.fixture(scope="module")
def workdir(released, tmp_path_factory):
    from tta_jax.convert.registry import convert

    out = str(tmp_path_factory.mktemp("run"))
    convert("auffusion", released[0], {"overrides": OVERRIDES}, out)
    return out


@needs_torch
def test_convert_writes_a_workdir_that_samples(workdir, released, tmp_path):
    """config.json names the folder's parts; launch.sample's own steps (config, checkpoint, pipeline) sample."""
    from launch import sample as S
    from tta_jax.train.checkpoint import load_params

    config = S.load_config(workdir)
    assert config.model.text_adapters and config.model.text_padding == "zeros"
    assert config.sampler.negative == "zeros" and config.model.cross_attention_dim == UNET["cross_attention_dim"]
    assert config.text.name == "clip" and config.text.path.endswith("text_encoder_0")
    assert config.codec.vae_config == "sd_tiny" and config.codec.n_mels == N_MELS
    # the folder when the HiFi-GAN loader reads vocoder.pt there, else the file with the matching preset
    assert config.codec.vocoder.endswith("vocoder") or (config.codec.vocoder.endswith("vocoder.pt")
                                                        and config.codec.vocoder_config == "tiny")
    S.check_checkpoint(workdir, None)
    params, step = load_params(workdir, ema=True)
    assert step == 0 and set(params) == {"text_adapters", "net"}
    k = np.asarray(params["text_adapters"]["adapter_0"]["kernel"])
    np.testing.assert_array_equal(k, released[2]["proj.weight"].numpy().T)
    fn = S.resolve(config.sample_pipeline, "sample_pipeline")
    paths = fn(config, params, ["a dog barks", "rain"], str(tmp_path), seed=0, steps=2, guidance=None,
               rescale=None, workdir=workdir)
    wavs = [p for p in paths if p.endswith(".wav")]
    assert len(wavs) == 2
    import soundfile as sf

    audio, sr = sf.read(wavs[0])
    assert sr == 16000 and audio.shape[0] == 16 * 2 * 160 and np.isfinite(audio).all() and np.abs(audio).max() > 0


def _copy(released, tmp_path):
    import shutil

    dst = str(tmp_path / "copy")
    shutil.copytree(released[0], dst)
    return dst


@needs_torch
def test_renamed_or_reshaped_unet_tensor_fails_naming_file_and_tensor(released, tmp_path):
    from safetensors.numpy import load_file, save_file

    from tta_jax.convert.registry import convert

    src = _copy(released, tmp_path)
    f = os.path.join(src, "unet", "diffusion_pytorch_model.safetensors")
    orig = load_file(f)
    sd = dict(orig)
    victim = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    sd[victim.replace("to_k", "to_kk")] = sd.pop(victim)
    save_file(sd, f)
    want = (r"unet/diffusion_pytorch_model\.safetensors: .*unexpected source keys: "
            r"down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2\.to_kk\.weight.*"
            r"missing target params: down_blocks_0/attentions_0/transformer_blocks_0/attn2/to_k/kernel")
    with pytest.raises(ConversionError, match=want):
        convert("auffusion", src, {"overrides": OVERRIDES}, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "checkpoints")
    sd = dict(orig)
    sd["conv_in.weight"] = sd["conv_in.weight"][:8]
    save_file(sd, f)
    want = (r"unet/diffusion_pytorch_model\.safetensors: .*conv_in/kernel \(from conv_in\.weight\): "
            r"got \(3, 3, 4, 8\), expected \(3, 3, 4, 16\)")
    with pytest.raises(ConversionError, match=want):
        convert("auffusion", src, {"overrides": OVERRIDES}, str(tmp_path / "out"))


@needs_torch
def test_reshaped_adapter_tensor_fails_naming_file_tensor_and_shape(released, tmp_path):
    from tta_jax.convert.registry import convert

    src = _copy(released, tmp_path)
    f = os.path.join(src, "condition_adapter_0", "condition_adapter.pt")
    sd = torch.load(f)
    sd["proj.weight"] = sd["proj.weight"][:, :-1].clone()
    torch.save(sd, f)
    want = rf"condition_adapter\.pt: tensor 'proj\.weight' has shape \(24, 31\), expected \(24, {WIDTH}\)"
    with pytest.raises(ConversionError, match=want):
        convert("auffusion", src, {"overrides": OVERRIDES}, str(tmp_path / "out"))


@needs_torch
def test_reshaped_vae_tensor_fails_naming_its_file(released, tmp_path):
    from safetensors.numpy import load_file, save_file

    from tta_jax.convert.registry import convert

    src = _copy(released, tmp_path)
    f = os.path.join(src, "vae", "diffusion_pytorch_model.safetensors")
    sd = load_file(f)
    sd["decoder.conv_out.weight"] = sd["decoder.conv_out.weight"][:2]
    save_file(sd, f)
    with pytest.raises(ConversionError, match=r"vae/diffusion_pytorch_model\.safetensors: .*conv_out"):
        convert("auffusion", src, {"overrides": OVERRIDES}, str(tmp_path / "out"))


@needs_torch
def test_renamed_adapter_tensor_and_missing_file(released, tmp_path):
    from tta_jax.convert.auffusion import read_conditions

    src = _copy(released, tmp_path)
    f = os.path.join(src, "condition_adapter_0", "condition_adapter.pt")
    sd = torch.load(f)
    sd["norm.gamma"] = sd.pop("norm.weight")
    torch.save(sd, f)
    from tta_jax.convert.auffusion import load_adapter

    with pytest.raises(ConversionError, match=r"condition_adapter\.pt: tensor 'norm\.weight' is missing"):
        load_adapter(read_conditions(src)[0], UNET["cross_attention_dim"])
    os.remove(os.path.join(src, "condition_config.json"))
    with pytest.raises(ConversionError, match=r"condition_config\.json: missing"):
        read_conditions(src)


@pytest.mark.parity
@needs_torch
def test_cfg_step_matches_diffusers_with_zero_negative(workdir, released):
    """One guided denoising step (guidance 7.5): prompts' states zero-padded past their tokens -> adapter ->
    U-Net, the negative branch an all-zero context after the adapter; vs diffusers + a torch adapter."""
    from launch import sample as S
    from tta_jax import diffusion as D
    from tta_jax.pipelines import tta
    from tta_jax.train.checkpoint import load_params

    config = S.load_config(workdir)
    params, _ = load_params(workdir)
    den = tta.denoiser_of(config)
    _, unet, sd = released
    rng = np.random.default_rng(0)
    b, h, w = 2, 8, 16
    x = rng.standard_normal((b, 4, h, w)).astype(np.float32)
    t = np.array([999, 421], np.int32)
    states = rng.standard_normal((b, MAX_LEN, WIDTH)).astype(np.float32)
    mask = np.ones((b, MAX_LEN), bool)
    mask[0, 5:] = False
    mask[1, 3:] = False

    def encode(texts):
        assert len(texts) == b
        return {"text": states, "text_mask": mask}

    cond, uncond = tta.text_conds(encode, ["p0", "p1"], "zeros")
    uncond = {**cond, **{k: jnp.broadcast_to(v, (b,)) for k, v in uncond.items()}}  # as Generator does
    denoise = D.cfg_denoiser(lambda xx, tt, c: den.apply(params, xx, tt, c), cond, uncond, scale=7.5)
    ours = np.asarray(jax.jit(denoise)(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t)))

    proj = torch.nn.Linear(WIDTH, UNET["cross_attention_dim"])
    norm = torch.nn.LayerNorm(UNET["cross_attention_dim"])
    proj.load_state_dict({"weight": sd["proj.weight"], "bias": sd["proj.bias"]})
    norm.load_state_dict({"weight": sd["norm.weight"], "bias": sd["norm.bias"]})
    with torch.no_grad():
        padded = torch.from_numpy(np.where(mask[..., None], states, 0.0).astype(np.float32))
        prompt = norm(proj(padded))
        negative = torch.zeros_like(prompt)
        xt = torch.from_numpy(x)
        out = unet(torch.cat([xt, xt]), torch.from_numpy(np.concatenate([t, t])).long(),
                   encoder_hidden_states=torch.cat([negative, prompt])).sample.numpy()
    u, c = out[:b], out[b:]
    ref = u + 7.5 * (c - u)
    err = max_rel_err(ours.transpose(0, 3, 1, 2), ref)
    print(f"\n[auffusion CFG step vs diffusers] max_rel_err={err:.3e}")
    assert err <= 1e-4
    # text_null reaches the model: guidance moves the output away from the conditioned branch alone
    assert max_rel_err(ours.transpose(0, 3, 1, 2), c + 7.5 * (c - c)) > 1e-2
