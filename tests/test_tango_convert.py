"""Released Tango folder -> workdir (issue #19, part 1): a tiny random-weight folder in the released layout
(main_config.json, pytorch_model_main.bin with unet.* + text_encoder.*, pytorch_model_vae.bin with the
CompVis/LDM-named VAE + vocoder.*, pytorch_model_stft.bin, vae_config.json, stft_config.json; config.json: the
tiny U-Net's diffusers config) loads with our loaders at parity with the torch references (U-Net vs diffusers,
VAE encode/decode vs diffusers AutoencoderKL, vocoder vs transformers SpeechT5HifiGan); a renamed or reshaped
tensor in each file fails naming it; ``convert("tango", ...)`` writes a workdir whose config has the codec paths.

The LDM names of the test VAE come from a test-only diffusers -> LDM renaming, itself checked against
diffusers' own ``convert_ldm_vae_checkpoint`` (LDM -> diffusers). Writing the folder needs torch, diffusers
and transformers (the parity extra).
"""
import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from tta_jax.convert.common import ConversionError

try:
    import diffusers
    import torch
    import transformers  # noqa: F401
except ImportError:  # pragma: no cover - depends on install
    torch = diffusers = None
pytestmark = [pytest.mark.parity,
              pytest.mark.skipif(torch is None, reason="writing a released folder needs torch, diffusers, "
                                 "transformers (pip install -e '.[parity]')")]

N_MELS, LEN, CTX = 32, 6, 32               # mel bins, text tokens, cross-attention width (configs/tango.py:tiny)
UNET = dict(sample_size=8, in_channels=8, out_channels=8, block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, attention_head_dim=2,
            cross_attention_dim=CTX, norm_num_groups=8, use_linear_projection=True, upcast_attention=True)
VAE = "audioldm_tiny"                       # tta_jax.codecs.kl_vae.CONFIGS: 1 channel, (8, 8, 16), latent 8
ATOL = 1e-4
TINY = "configs/tango.py:tiny"
# paths inside the Tango repository (what its main_config.json names), not files of this one
TANGO_REPO_CONFIG = "/".join(("configs", "diffusion_model_config.json"))
OTHER_CONFIG = "/".join(("configs", "other.json"))
OVERRIDES = ["data.crop_frames=16"]


def _randomise(module, seed, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 or "norm" in name:
                p.add_(scale * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------ diffusers -> LDM (test-only)
def ldm_vae_state_dict(sd, n_levels):
    """diffusers AutoencoderKL state dict -> CompVis/LDM names (Tango's audioldm AutoencoderKL, without the
    vocoder): down_blocks/resnets -> down.{i}.block.{j}, decoder up_blocks.{i} -> up.{n-1-i}, mid_block ->
    mid.block_1/attn_1/block_2 (attention Linears as 1x1 convs), conv_shortcut -> nin_shortcut,
    conv_norm_out -> norm_out."""
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for k, v in sd.items():
        new = k
        m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(\w+)$", k)
        if m:
            part, name, leaf = m.groups()
            new = f"{part}.mid.attn_1.{attn[name]}.{leaf}"
            if leaf == "weight" and name != "group_norm":
                v = v[:, :, None, None]
        else:
            new = re.sub(r"mid_block\.resnets\.0\.", "mid.block_1.", new)
            new = re.sub(r"mid_block\.resnets\.1\.", "mid.block_2.", new)
            new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", new)
            new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"encoder.down.\1.downsample.conv.",
                         new)
            new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                         lambda mm: f"decoder.up.{n_levels - 1 - int(mm[1])}.block.{mm[2]}.", new)
            new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
                         lambda mm: f"decoder.up.{n_levels - 1 - int(mm[1])}.upsample.conv.", new)
            new = new.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
        assert new not in out, new
        out[new] = v
    return out


# ------------------------------------------------------------------------------ the released folder
def _unet():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**UNET).eval()
    _randomise(unet, 0)
    return unet


def _vae():
    from tta_jax.codecs.kl_vae import get_config

    cfg = get_config(VAE)
    n = len(cfg.block_out_channels)
    torch.manual_seed(1)
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * n,
                                  up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.block_out_channels,
                                  layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
                                  norm_num_groups=cfg.norm_num_groups, scaling_factor=cfg.scaling_factor).eval()
    _randomise(vae, 1, 0.2)
    return vae, cfg


def _vocoder_cfg():
    from tta_jax.codecs.registry import vocoder_presets

    return dataclasses.replace(vocoder_presets()["tiny"], num_mels=N_MELS)


def _vocoder():
    """transformers SpeechT5HifiGan of the codec registry's ``tiny`` preset at N_MELS, random O(1) weights."""
    from test_vocoder_hifigan import _speecht5

    return _speecht5(_vocoder_cfg(), seed=3)


def make_folder(root):
    """-> (folder, torch unet, diffusers vae, torch vocoder)."""
    from tta_jax.audio.mel import TANGO
    from tta_jax.codecs.kl_vae import get_config

    root = str(root)
    os.makedirs(root, exist_ok=True)
    unet, (vae, vcfg), voc = _unet(), _vae(), _vocoder()
    main = {f"unet.{k}": v.detach().clone() for k, v in unet.state_dict().items()}
    g = torch.Generator().manual_seed(4)
    main["text_encoder.shared.weight"] = torch.randn(11, 8, generator=g)
    main["text_encoder.encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.randn(8, 8, generator=g)
    torch.save(main, os.path.join(root, "pytorch_model_main.bin"))
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(dict(unet.config), f)
    with open(os.path.join(root, "main_config.json"), "w") as f:
        json.dump({"text_encoder_name": "google/flan-t5-large", "scheduler_name": "stabilityai/stable-diffusion-2-1",
                   "unet_model_name": None, "unet_model_config_path": TANGO_REPO_CONFIG,
                   "snr_gamma": 5.0}, f)
    sd = ldm_vae_state_dict({k: v.detach().clone() for k, v in vae.state_dict().items()},
                            len(vcfg.block_out_channels))
    sd.update({f"vocoder.{k.replace('upsampler.', 'ups.')}": v.detach().clone()
               for k, v in voc.state_dict().items() if k not in ("mean", "scale")})
    torch.save(sd, os.path.join(root, "pytorch_model_vae.bin"))
    cfg = get_config(VAE)
    ch = cfg.block_out_channels[0]
    with open(os.path.join(root, "vae_config.json"), "w") as f:
        json.dump({"image_key": "fbank", "subband": 1, "embed_dim": cfg.latent_channels, "time_shuffle": 1,
                   "ddconfig": {"double_z": True, "z_channels": cfg.latent_channels, "resolution": 256,
                                "downsample_time": False, "in_channels": 1, "out_ch": 1, "ch": ch,
                                "ch_mult": [c // ch for c in cfg.block_out_channels],
                                "num_res_blocks": cfg.layers_per_block, "attn_resolutions": [], "dropout": 0.0},
                   "scale_factor": cfg.scaling_factor}, f)
    mel = TANGO.replace(n_mels=N_MELS)
    with open(os.path.join(root, "stft_config.json"), "w") as f:
        json.dump({"filter_length": mel.n_fft, "hop_length": mel.hop_length, "win_length": mel.win_length,
                   "n_mel_channels": N_MELS, "sampling_rate": mel.sample_rate, "mel_fmin": 0, "mel_fmax": 8000}, f)
    import librosa   # TacotronSTFT's buffer: librosa's Slaney filterbank (positional sr, n_fft, n_mels, fmin, fmax)

    basis = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=N_MELS, fmin=0, fmax=8000)
    torch.save({"mel_basis": torch.from_numpy(basis).float(), "stft_fn.forward_basis": torch.zeros(1026, 1, 1024),
                "stft_fn.inverse_basis": torch.zeros(1026, 1, 1024)}, os.path.join(root, "pytorch_model_stft.bin"))
    return root, unet, vae, voc


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("tango"))


def _copy(released, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(released[0], dst)
    return dst


def _edit(path, fn):
    sd = torch.load(path)
    fn(sd)
    torch.save(sd, path)


# ------------------------------------------------------------------------------ parity
def test_ldm_renaming_agrees_with_diffusers_converter():
    """The test's LDM names map back onto diffusers' through diffusers' own convert_ldm_vae_checkpoint."""
    from diffusers.pipelines.stable_diffusion.convert_from_ckpt import convert_ldm_vae_checkpoint

    vae, cfg = _vae()
    sd = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    ldm = ldm_vae_state_dict(sd, len(cfg.block_out_channels))
    assert "encoder.down.0.block.0.norm1.weight" in ldm and "decoder.up.2.block.0.conv1.weight" in ldm
    back = convert_ldm_vae_checkpoint(ldm, {"layers_per_block": cfg.layers_per_block})
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k].reshape(v.shape), v), k


def test_unet_matches_diffusers(released):
    """pytorch_model_main.bin's unet.* (text_encoder.* ignored) vs the diffusers U-Net, with a text mask."""
    from tta_jax.convert import tango as T
    from tta_jax.denoisers.factory import unet_module

    folder, unet, _, _ = released
    fields = T.unet_fields(folder)
    assert fields["use_linear_projection"] and fields["cross_attention_dim"] == CTX
    model = unet_module({k: v for k, v in fields.items() if k != "name"})
    params = T.load_tango_unet(os.path.join(folder, "pytorch_model_main.bin"), model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, N_MELS // 4, 16)).astype(np.float32)      # [B, C, H (mel/4), T]
    t = np.array([999, 37], np.int64)
    ctx = rng.standard_normal((2, LEN, CTX)).astype(np.float32)
    mask = np.ones((2, LEN), bool)
    mask[0, 4:] = False
    ours = jax.jit(model.apply)({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t),
                                {"text": jnp.asarray(ctx), "text_mask": jnp.asarray(mask)})
    with torch.no_grad():
        ref = unet(torch.from_numpy(x), torch.from_numpy(t), encoder_hidden_states=torch.from_numpy(ctx),
                   encoder_attention_mask=torch.from_numpy(mask)).sample.numpy()
    err = float(np.abs(np.asarray(ours).transpose(0, 3, 1, 2) - ref).max())
    print(f"\n[tango U-Net vs diffusers] max abs err {err:.2e} (output max {np.abs(ref).max():.2f})")
    assert err <= ATOL and np.abs(ref).max() > 0.1


def test_vae_matches_diffusers(released):
    """pytorch_model_vae.bin (LDM names + vocoder.*) -> our KLVAE: encode mean/std and decode vs diffusers."""
    from tta_jax.codecs.kl_vae import KLVAE, get_config
    from tta_jax.convert.kl_vae import load_kl_vae

    folder, _, vae, _ = released
    cfg = get_config(VAE)
    params = load_kl_vae(os.path.join(folder, "pytorch_model_vae.bin"), cfg)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, 32, N_MELS)).astype(np.float32)            # [B, 1, T, mel]
    z = rng.standard_normal((2, 8, 8, N_MELS // 4)).astype(np.float32)
    with torch.no_grad():
        post = vae.encode(torch.from_numpy(x)).latent_dist
        ref_mean, ref_std = post.mean.numpy(), post.std.numpy()
        ref_dec = vae.decode(torch.from_numpy(z)).sample.numpy()
    model = KLVAE(cfg)
    mean, std = jax.jit(lambda p, a: model.apply({"params": p}, a, method="encode"))(params, x.transpose(0, 2, 3, 1))
    dec = jax.jit(lambda p, a: model.apply({"params": p}, a, method="decode"))(params, z.transpose(0, 2, 3, 1))
    errs = {name: float(np.abs(np.asarray(a).transpose(0, 3, 1, 2) - b).max())
            for name, a, b in (("mean", mean, ref_mean), ("std", std, ref_std), ("decode", dec, ref_dec))}
    print(f"\n[tango VAE (LDM layout) vs diffusers] max abs err {errs}")
    assert max(errs.values()) <= ATOL and np.abs(ref_dec).max() > 0.1


def test_vocoder_matches_torch(released):
    """The HiFi-GAN under vocoder.* of pytorch_model_vae.bin (jik876 names, no weight norm) vs SpeechT5HifiGan."""
    from tta_jax.convert.hifigan import load_hifigan

    folder, _, _, voc = released
    module, params, _ = load_hifigan(os.path.join(folder, "pytorch_model_vae.bin"), _vocoder_cfg())
    mel = np.random.default_rng(2).standard_normal((2, 7, N_MELS)).astype(np.float32)
    ours = np.asarray(jax.jit(module.apply)({"params": params}, mel))
    with torch.no_grad():
        ref = voc(torch.from_numpy(mel)).numpy()
    err = float(np.abs(ours - ref).max())
    print(f"\n[tango vocoder vs SpeechT5HifiGan] max abs err {err:.2e} (output max {np.abs(ref).max():.2f})")
    assert ours.shape == ref.shape == (2, 7 * 160) and err <= ATOL and np.std(ref) > 0.05


# ------------------------------------------------------------------------------ errors name the key
def test_main_bin_errors_name_the_tensor(released, tmp_path):
    from tta_jax.convert import tango as T

    src = _copy(released, tmp_path)
    f = os.path.join(src, "pytorch_model_main.bin")
    fields = T.unet_fields(src)
    victim = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    _edit(f, lambda sd: sd.__setitem__(victim.replace("to_k", "to_kk"), sd.pop(victim)))
    with pytest.raises(ConversionError, match=r"pytorch_model_main\.bin: .*unexpected source keys: "
                       r"down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2\.to_kk\.weight.*missing "
                       r"target params: down_blocks_0/attentions_0/transformer_blocks_0/attn2/to_k/kernel"):
        T.load_tango_unet(f, fields)
    shutil.copy(os.path.join(released[0], "pytorch_model_main.bin"), f)
    _edit(f, lambda sd: sd.__setitem__("unet.conv_in.weight", sd["unet.conv_in.weight"][:8].clone()))
    with pytest.raises(ConversionError, match=r"pytorch_model_main\.bin: .*conv_in/kernel \(from conv_in\.weight\): "
                       r"got \(3, 3, 8, 8\), expected \(3, 3, 8, 16\)"):
        T.load_tango_unet(f, fields)
    shutil.copy(os.path.join(released[0], "pytorch_model_main.bin"), f)
    _edit(f, lambda sd: sd.__setitem__("group_in.0.weight", torch.zeros(512, 8)))
    with pytest.raises(ConversionError, match=r"pytorch_model_main\.bin: unexpected tensor 'group_in\.0\.weight'"):
        T.load_tango_unet(f, fields)


def test_vae_bin_errors_name_the_tensor(released, tmp_path):
    from tta_jax.convert.hifigan import load_hifigan
    from tta_jax.convert.kl_vae import load_kl_vae

    src = _copy(released, tmp_path)
    f = os.path.join(src, "pytorch_model_vae.bin")
    _edit(f, lambda sd: sd.__setitem__("encoder.mid.attn_1.qq.weight", sd.pop("encoder.mid.attn_1.q.weight")))
    with pytest.raises(ConversionError, match=r"pytorch_model_vae\.bin: .*'encoder\.mid\.attn_1\.q\.weight'.*ldm"):
        load_kl_vae(f, VAE)
    shutil.copy(os.path.join(released[0], "pytorch_model_vae.bin"), f)
    _edit(f, lambda sd: sd.__setitem__("decoder.up.0.block.2.conv2.weight",
                                       sd["decoder.up.0.block.2.conv2.weight"][:4].clone()))
    with pytest.raises(ConversionError, match=r"pytorch_model_vae\.bin: .*decoder/up_blocks_2/resnets_2/conv2/kernel "
                       r"\(from decoder\.up\.0\.block\.2\.conv2\.weight\): got \(3, 3, 8, 4\), "
                       r"expected \(3, 3, 8, 8\)"):
        load_kl_vae(f, VAE)
    shutil.copy(os.path.join(released[0], "pytorch_model_vae.bin"), f)
    _edit(f, lambda sd: sd.__setitem__("loss.logvar", torch.zeros(())))     # not the VAE's, not another component's
    with pytest.raises(ConversionError, match=r"pytorch_model_vae\.bin: .*unexpected source keys: loss\.logvar"):
        load_kl_vae(f, VAE)
    shutil.copy(os.path.join(released[0], "pytorch_model_vae.bin"), f)
    _edit(f, lambda sd: sd.__setitem__("vocoder.conv_postt.weight", sd.pop("vocoder.conv_post.weight")))
    with pytest.raises(ConversionError, match=r"pytorch_model_vae\.bin: no key 'conv_post\.weight'"):
        load_hifigan(f, _vocoder_cfg())
    load_kl_vae(f, VAE)   # the VAE does not read the vocoder's keys


def test_folder_facts_are_checked(released, tmp_path):
    from tta_jax.audio.mel import TANGO
    from tta_jax.codecs.kl_vae import get_config
    from tta_jax.convert import tango as T

    folder = released[0]
    mel = TANGO.replace(n_mels=N_MELS)
    assert T.stft_basis_error(folder, mel) <= T.MEL_BASIS_ATOL
    T.check_stft_config(folder, mel)
    T.check_vae_config(folder, get_config(VAE))
    with pytest.raises(ConversionError, match=r"stft_config\.json: n_mel_channels=32 but .* has 64"):
        T.check_stft_config(folder, TANGO)
    with pytest.raises(ConversionError, match=r"vae_config\.json: block_out_channels=\(8, 8, 16\) .*"
                       r"the preset 'audioldm_tiny' fits the file"):
        T.check_vae_config(folder, get_config("audioldm"))
    src = _copy(released, tmp_path)
    f = os.path.join(src, "pytorch_model_stft.bin")
    _edit(f, lambda sd: sd.__setitem__("mel_basis", sd["mel_basis"] * 1.01))
    with pytest.raises(ConversionError, match=r"pytorch_model_stft\.bin: tensor 'mel_basis' differs"):
        T.stft_basis_error(src, mel)
    with open(os.path.join(src, "main_config.json"), "w") as fh:
        json.dump({"unet_model_name": None, "unet_model_config_path": OTHER_CONFIG}, fh)
    os.remove(os.path.join(src, "config.json"))
    with pytest.raises(ConversionError, match=r"main_config\.json: unet_model_config_path='configs/other\.json'"):
        T.unet_fields(src)


def test_released_unet_facts():
    """TANGO_UNET is the Tango repository's diffusion_model_config.json read by our config reader, and what
    configs/tango.py uses."""
    from configs.tango import TANGO_UNET as LEAD
    from tta_jax.convert import tango as T
    from tta_jax.convert.auffusion import unet_fields_from_config

    raw = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
           "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 1024,
           "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
           "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8,
           "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
           "num_class_embeds": None, "only_cross_attention": False, "out_channels": 8, "sample_size": [32, 2],
           "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "use_linear_projection": True,
           "upcast_attention": True}
    assert unet_fields_from_config(raw, "x") == T.TANGO_UNET
    norm = {k: list(v) if isinstance(v, tuple) else v for k, v in LEAD.items()}
    assert {k: norm[k] for k in T.TANGO_UNET} == T.TANGO_UNET


# ------------------------------------------------------------------------------ launch.convert --family tango
def test_convert_writes_a_workdir(released, tmp_path):
    from tta_jax.convert import tango as T
    from tta_jax.convert.common import flatten_params
    from tta_jax.convert.registry import convert
    from tta_jax.train.checkpoint import load_params

    folder = released[0]
    out = str(tmp_path / "run")
    convert("tango", folder, {"system": TINY, "overrides": OVERRIDES}, out)
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    vae_bin = os.path.join(folder, "pytorch_model_vae.bin")
    assert cfg["codec"]["vae"] == cfg["codec"]["vocoder"] == vae_bin and cfg["codec"]["init"] == "pretrained"
    assert cfg["codec"]["mel"] == "tango" and cfg["model"]["use_linear_projection"] is True
    with open(os.path.join(out, "assets", "latent.json")) as f:
        assert json.load(f)["latent_shape"] == [N_MELS // 4, 16, 8]
    params, step = load_params(out, ema=True)
    want = flatten_params(T.load_tango_unet(os.path.join(folder, "pytorch_model_main.bin"), T.unet_fields(folder)))
    have = flatten_params(params)
    assert step == 0 and set(have) == set(want)
    assert all(np.array_equal(np.asarray(have[k]), want[k]) for k in want)
    with open(os.path.join(out, "conversion.json")) as f:
        assert json.load(f)["family"] == "tango"
    from launch import sample as S

    S.check_checkpoint(out, None)
    config = S.load_config(out)
    assert config.codec.vae == vae_bin
    # launch.sample's pipeline samples from it (2 steps; the tiny config's random tiny T5, the folder's codec)
    fn = S.resolve(config.sample_pipeline, "sample_pipeline")
    os.makedirs(tmp_path / "wav")
    paths = fn(config, params, ["a dog barks"], str(tmp_path / "wav"), seed=0, steps=2, guidance=None,
               rescale=None, workdir=out)
    import soundfile as sf

    audio, sr = sf.read([p for p in paths if p.endswith(".wav")][0])
    assert sr == 16000 and audio.shape[0] >= 16 * 4 * 160 and np.isfinite(audio).all() and np.abs(audio).max() > 0
    # a reshaped VAE tensor stops the conversion naming the file
    src = _copy(released, tmp_path)
    _edit(os.path.join(src, "pytorch_model_vae.bin"),
          lambda sd: sd.__setitem__("decoder.conv_out.weight", sd["decoder.conv_out.weight"][:, :4].clone()))
    with pytest.raises(ConversionError, match=r"pytorch_model_vae\.bin: .*decoder/conv_out/kernel"):
        convert("tango", src, {"system": TINY, "overrides": OVERRIDES}, str(tmp_path / "bad"))


def test_serst_adapter_on_the_converted_unet_is_bit_identical(released):
    """The converted Tango U-Net inside the SERST system (configs/tango.py:tiny_serst: reference encoder + text x
    reference attention -> style -> zero-initialised AdaLN in every ResNet): at init the output is bit-identical
    to the converted U-Net alone, whatever the reference."""
    from flax.core import meta

    from configs.tango import SERST_UNET, get_config
    from tta_jax.convert import tango as T
    from tta_jax.denoisers.factory import unet_module
    from tta_jax.pipelines.tta import denoiser_of
    from tta_jax.train.partial import merge_pretrained

    folder = released[0]
    fields = T.unet_fields(folder)
    base = unet_module({k: v for k, v in fields.items() if k != "name"})
    params = T.load_tango_unet(os.path.join(folder, "pytorch_model_main.bin"), base)
    c = get_config("tiny_serst")
    c.model = dict(fields, **SERST_UNET, projection_class_embeddings_input_dim=CTX)
    den = denoiser_of(c)
    shape = (N_MELS // 4, 16, 8)
    example = {"text": np.zeros((1, LEN, CTX), np.float32), "text_mask": np.ones((1, LEN), bool)}
    init = meta.unbox(den.init(jax.random.PRNGKey(0), shape, LEN, example))
    merged, n = merge_pretrained(init, params, "net")
    assert n == len(jax.tree.leaves(params)) and "conditioner" in merged
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2,) + shape).astype(np.float32))
    t = jnp.array([999, 37])
    text = {"text": jnp.asarray(rng.standard_normal((2, LEN, CTX)).astype(np.float32)),
            "text_mask": jnp.ones((2, LEN), bool).at[0, 4:].set(False)}
    ref = {"reference": jnp.asarray(rng.standard_normal((2, 1, 201, 80)).astype(np.float32)),
           "reference_mask": jnp.array([[True], [False]])}
    # op by op (no jit) the two computations are the same floating-point ops plus an exact x * (1 + 0) + 0;
    # jitted, XLA fuses the two graphs differently and they agree to float32 rounding (measured 6e-7)
    with jax.disable_jit():
        want = base.apply({"params": params}, x, t, text)
        got = den.apply(merged, x, t, dict(text, **ref))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    jitted = jax.jit(lambda p, x, t, c: den.apply(p, x, t, c))(merged, x, t, dict(text, **ref))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(want), atol=5e-6)
