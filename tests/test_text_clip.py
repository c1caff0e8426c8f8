"""CLIP text tower: parity with transformers.CLIPTextModel(WithProjection), padded batches."""
import dataclasses

import jax
import numpy as np
import pytest

from tests.conftest import max_rel_err
from tta_jax.convert.common import ConversionError, torch_state_dict_to_numpy
from tta_jax.convert.text_encoders import clip_text_from_pretrained_dir, convert_clip_text
from tta_jax.text import clip as clipm

TOL = 1e-4


def _hf(cfg: clipm.CLIPTextConfig, seed=0, with_projection=True):
    torch = pytest.importorskip("torch")
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    hf_cfg = CLIPTextConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                            intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
                            num_attention_heads=cfg.num_attention_heads,
                            max_position_embeddings=cfg.max_position_embeddings, hidden_act=cfg.hidden_act,
                            projection_dim=cfg.projection_dim or 8, eos_token_id=cfg.eos_token_id,
                            bos_token_id=1, pad_token_id=0)
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = cls._from_config(hf_cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _batch(cfg, L=12, lengths=(12, 7, 3), seed=0):
    rs = np.random.RandomState(seed)
    ids = rs.randint(3, cfg.vocab_size - 2, size=(len(lengths), L))
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, 0] = 1  # bos
        ids[b, n - 1] = cfg.eos_token_id
        ids[b, n:] = cfg.eos_token_id if cfg.eos_token_id != 2 else 0  # CLIP pads with eos (or 0)
        mask[b, :n] = 1
    return ids.astype(np.int32), mask.astype(np.int32)


def _compare(cfg, model, params, ids, mask):
    import torch

    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    out = jax.jit(clipm.CLIPTextEncoder(cfg).apply)({"params": params}, ids, mask)
    errs = {"hidden": max_rel_err(out.last_hidden_state, ref.last_hidden_state.numpy())}
    if cfg.projection_dim:
        errs["text_embeds"] = max_rel_err(out.text_embeds, ref.text_embeds.numpy())
    else:
        errs["pooled"] = max_rel_err(out.pooler_output, ref.pooler_output.numpy())
    return errs


@pytest.mark.parity
def test_clip_text_with_projection_matches_transformers():
    cfg = clipm.CONFIGS["tiny"]
    model = _hf(cfg)
    params, report = convert_clip_text(torch_state_dict_to_numpy(model.state_dict()), cfg)
    assert report.ok, report.summary()
    ids, mask = _batch(cfg)
    errs = _compare(cfg, model, params, ids, mask)
    print("CLIP text max rel err:", errs)
    assert max(errs.values()) <= TOL, errs


@pytest.mark.parity
def test_clip_text_legacy_eos_argmax_pooling_and_folder(tmp_path):
    # eos_token_id == 2 (openai/clip-vit-large-patch14 config): pooled at the arg-max token id.
    cfg = dataclasses.replace(clipm.CONFIGS["tiny"], eos_token_id=2, projection_dim=None, hidden_act="gelu")
    model = _hf(cfg, seed=1, with_projection=False)
    model.save_pretrained(tmp_path)
    module, params = clip_text_from_pretrained_dir(tmp_path)
    assert module.config.projection_dim is None and module.config.eos_token_id == 2
    ids, mask = _batch(cfg, seed=3)
    ids[:, 0], ids[1, 4] = 1, cfg.vocab_size - 1  # a largest id mid-sequence decides the pooled position
    errs = _compare(cfg, model, params, ids, mask)
    assert max(errs.values()) <= TOL, errs


@pytest.mark.parity
def test_clip_converter_errors_name_the_key():
    cfg = clipm.CONFIGS["tiny"]
    sd = torch_state_dict_to_numpy(_hf(cfg).state_dict())
    bad = dict(sd)
    bad["text_model.encoder.layers.1.mlp.fc3.weight"] = bad.pop("text_model.encoder.layers.1.mlp.fc1.weight")
    with pytest.raises(ConversionError, match=r"encoder\.layers\.1\.mlp\.fc1\.weight"):
        convert_clip_text(bad, cfg)
    bad = dict(sd)
    bad["text_model.embeddings.position_embedding.weight"] = bad["text_model.embeddings.position_embedding.weight"][:8]
    with pytest.raises(ConversionError, match=r"position_embedding.*got \(8, 32\)"):
        convert_clip_text(bad, cfg)
    # a CLIPModel checkpoint: vision tower ignored
    full = {**sd, "vision_model.embeddings.patch_embedding.weight": np.zeros((2, 3, 4, 4), np.float32),
            "visual_projection.weight": np.zeros((8, 4), np.float32), "logit_scale": np.zeros(())}
    assert convert_clip_text(full, cfg)[1].ok


def test_clip_l14_config_shapes():
    cfg = clipm.CONFIGS["clip_l14"]
    ids = jax.ShapeDtypeStruct((1, 77), np.int32)
    shapes = jax.eval_shape(lambda i: clipm.CLIPTextEncoder(cfg).init(jax.random.PRNGKey(0), i), ids)["params"]
    assert shapes["position_embedding"].shape == (77, 768)
    assert shapes["text_projection"]["kernel"].shape == (768, 768)
    assert len([k for k in shapes if k.startswith("layers_")]) == 12


def test_tower_text_encoder_callable():
    import jax.numpy as jnp

    cfg = clipm.CONFIGS["tiny"]
    module = clipm.CLIPTextEncoder(cfg)
    rs = np.random.RandomState(0)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32)))["params"]
    params = jax.tree.map(lambda a: jnp.asarray(0.2 * rs.randn(*a.shape), jnp.float32), shapes)

    def tokenizer(texts):  # fixed-length toy tokenizer
        ids = np.full((len(texts), 6), cfg.eos_token_id, np.int32)
        mask = np.zeros((len(texts), 6), np.int32)
        for b, t in enumerate(texts):
            toks = [1] + [3 + (ord(c) % 50) for c in t[:4]] + [cfg.eos_token_id]
            ids[b, :len(toks)], mask[b, :len(toks)] = toks, 1
        return {"input_ids": ids, "attention_mask": mask}

    states, mask = clipm.TowerTextEncoder(module, params, tokenizer)(["a dog", "hi"])
    assert states.shape == (2, 6, 32) and mask.dtype == bool and mask.sum(1).tolist() == [6, 4]
    emb, m1 = clipm.TowerTextEncoder(module, params, tokenizer, output="text_embeds")(["a dog"])
    assert emb.shape == (1, 1, 8) and bool(m1.all())
