"""T5 encoder: parity with transformers.T5EncoderModel (tiny random configs, padded batches)."""
import jax
import numpy as np
import pytest

from tests.conftest import max_rel_err
from tta_jax.convert.common import ConversionError, torch_state_dict_to_numpy
from tta_jax.convert.text_encoders import convert_t5, t5_from_pretrained_dir
from tta_jax.text import t5 as t5m

TOL = 1e-4


def _hf(cfg: t5m.T5Config, seed=0, full=False):
    torch = pytest.importorskip("torch")
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

    hf_cfg = T5Config(vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
                      num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                      relative_attention_num_buckets=cfg.relative_attention_num_buckets,
                      relative_attention_max_distance=cfg.relative_attention_max_distance,
                      feed_forward_proj=cfg.feed_forward_proj, dropout_rate=0.0, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    cls = T5ForConditionalGeneration if full else T5EncoderModel
    model = cls._from_config(hf_cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "layer_norm" in n:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _batch(vocab, L=24, lengths=(24, 13, 5), seed=0):
    rs = np.random.RandomState(seed)
    ids = rs.randint(2, vocab, size=(len(lengths), L))
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = 0
    return ids.astype(np.int32), mask.astype(np.int32)


def _ref(model, ids, mask):
    import torch

    enc = model.encoder  # the T5Stack of both T5EncoderModel and T5ForConditionalGeneration
    with torch.no_grad():
        out = enc(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    return out.last_hidden_state.numpy()


def _ours(cfg, params, ids, mask):
    return jax.jit(t5m.T5Encoder(cfg).apply)({"params": params}, ids, mask).last_hidden_state


@pytest.mark.parity
@pytest.mark.parametrize("ffn", ["gated-gelu", "relu"])
def test_t5_encoder_matches_transformers(ffn):
    cfg = t5m.T5Config(**{**t5m.CONFIGS["tiny"].__dict__, "feed_forward_proj": ffn})
    model = _hf(cfg)
    params, report = convert_t5(torch_state_dict_to_numpy(model.state_dict()), cfg)
    assert report.ok, report.summary()
    ids, mask = _batch(cfg.vocab_size)  # L = 24 > max_distance 20: exercises the log buckets
    err = max_rel_err(_ours(cfg, params, ids, mask), _ref(model, ids, mask))
    print(f"T5 ({ffn}) hidden max rel err:", err)
    assert err <= TOL


@pytest.mark.parity
def test_t5_full_seq2seq_checkpoint_and_folder(tmp_path):
    cfg = t5m.CONFIGS["tiny"]
    model = _hf(cfg, seed=1, full=True)
    model.save_pretrained(tmp_path)  # config.json + model.safetensors (decoder, lm_head included)
    module, params = t5_from_pretrained_dir(tmp_path)
    assert module.config == cfg
    ids, mask = _batch(cfg.vocab_size, L=9, lengths=(9, 4), seed=2)
    err = max_rel_err(_ours(cfg, params, ids, mask), _ref(model, ids, mask))
    assert err <= TOL


@pytest.mark.parity
def test_t5_converter_errors_name_the_key():
    cfg = t5m.CONFIGS["tiny"]
    sd = torch_state_dict_to_numpy(_hf(cfg).state_dict())
    bad = dict(sd)
    k = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
    bad[k.replace("wi_1", "wi_2")] = bad.pop(k)
    with pytest.raises(ConversionError, match=r"encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_1\.weight"):
        convert_t5(bad, cfg)
    bad = dict(sd)
    k = "encoder.block.0.layer.0.SelfAttention.q.weight"
    bad[k] = bad[k].reshape(16, 64)
    with pytest.raises(ConversionError, match=r"block_0/q/kernel.*SelfAttention\.q\.weight"):
        convert_t5(bad, cfg)


def test_relative_position_buckets_known_values():
    rel = np.arange(-30, 31)[None, :]
    b = t5m.relative_position_bucket(rel, num_buckets=32, max_distance=128)[0]
    assert b[30] == 0 and b[31] == 17 and b[29] == 1  # 0; +1 -> 16 + 1; -1 -> 1
    assert b.max() < 32 and b.min() >= 0
    assert (np.diff(b[30:]) >= 0).all()  # monotone in distance
    far = t5m.relative_position_bucket(np.array([[-1000, 1000]]), num_buckets=32, max_distance=128)
    assert far.tolist() == [[15, 31]]


def test_named_flan_configs():
    expected = {"flan_t5_base": (768, 12, 12, 2048), "flan_t5_large": (1024, 24, 16, 2816),
                "flan_t5_xl": (2048, 24, 32, 5120)}
    for name, (d, layers, heads, ff) in expected.items():
        c = t5m.CONFIGS[name]
        assert (c.d_model, c.num_layers, c.num_heads, c.d_ff) == (d, layers, heads, ff)
        assert c.is_gated and c.act == "gelu_new"


def test_t5_bf16_compute_runs():
    import jax.numpy as jnp

    cfg = t5m.CONFIGS["tiny"]
    ids = np.arange(12, dtype=np.int32).reshape(2, 6) + 2
    module = t5m.T5Encoder(cfg)
    rs = np.random.RandomState(0)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids))["params"]
    params = jax.tree.map(lambda a: jnp.asarray(0.2 * rs.randn(*a.shape), jnp.float32), shapes)
    full = jax.jit(module.apply)({"params": params}, ids).last_hidden_state
    half = jax.jit(t5m.T5Encoder(cfg, dtype=jnp.bfloat16).apply)({"params": params}, ids).last_hidden_state
    assert half.dtype == jnp.float32 and np.isfinite(np.asarray(half)).all()
    assert max_rel_err(half, full) < 0.05


@pytest.mark.parity
def test_t5_sharded_folder(tmp_path):
    cfg = t5m.CONFIGS["tiny"]
    model = _hf(cfg, seed=4)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    _, params = t5_from_pretrained_dir(tmp_path)
    ids, mask = _batch(cfg.vocab_size, L=7, lengths=(7, 3), seed=5)
    assert max_rel_err(_ours(cfg, params, ids, mask), _ref(model, ids, mask)) <= TOL
