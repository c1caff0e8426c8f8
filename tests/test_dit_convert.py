"""EzAudio-DiT converter: official key names/shapes -> our params; clear errors; torch reference forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.convert.common import ConversionError
from tta_jax.convert.ezaudio_dit import convert_ezaudio_dit
from tta_jax.denoisers.dit import DiT, ezaudio_tiny

from benchmarks.torch_dit import official_state_dict, torch_reference  # the faithful PyTorch re-implementation

CFG = ezaudio_tiny()


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
