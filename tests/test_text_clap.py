"""CLAP text tower: parity with transformers.ClapTextModelWithProjection, padded batches."""
import jax
import numpy as np
import pytest

from tests.conftest import max_rel_err
from tta_jax.convert.common import ConversionError, torch_state_dict_to_numpy
from tta_jax.convert.text_encoders import clap_text_from_pretrained_dir, convert_clap_text
from tta_jax.text import clap as clapm

TOL = 1e-4


def _hf(cfg: clapm.ClapTextConfig, seed=0):
    torch = pytest.importorskip("torch")
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    hf_cfg = ClapTextConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                            num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                            intermediate_size=cfg.intermediate_size,
                            max_position_embeddings=cfg.max_position_embeddings,
                            projection_dim=cfg.projection_dim, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = ClapTextModelWithProjection._from_config(hf_cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "LayerNorm" in n:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _batch(cfg, L=14, lengths=(14, 9, 4), seed=0):
    rs = np.random.RandomState(seed)
    ids = rs.randint(3, cfg.vocab_size, size=(len(lengths), L))
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, 0], ids[b, n - 1] = 0, 2  # <s> ... </s>
        ids[b, n:] = cfg.pad_token_id
        mask[b, :n] = 1
    return ids.astype(np.int32), mask.astype(np.int32)


@pytest.mark.parity
def test_clap_text_matches_transformers(tmp_path):
    import torch

    cfg = clapm.CONFIGS["tiny"]
    model = _hf(cfg)
    params, report = convert_clap_text(torch_state_dict_to_numpy(model.state_dict()), cfg)
    assert report.ok, report.summary()
    ids, mask = _batch(cfg)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                    output_hidden_states=True)
        ref_features = torch.nn.functional.normalize(ref.text_embeds, dim=-1).numpy()  # = get_text_features
    module = clapm.ClapTextEncoder(cfg)
    apply = jax.jit(module.apply)
    out = apply({"params": params}, ids, mask)
    errs = {"hidden": max_rel_err(out.last_hidden_state, ref.last_hidden_state.numpy()),
            "text_embeds": max_rel_err(out.text_embeds, ref.text_embeds.numpy()),
            "features": max_rel_err(clapm.normalize(out.text_embeds), ref_features)}
    print("CLAP text max rel err:", errs)
    assert max(errs.values()) <= TOL, errs
    # folder loader (config.json + model.safetensors)
    model.save_pretrained(tmp_path)
    module2, params2 = clap_text_from_pretrained_dir(tmp_path)
    assert module2.config == cfg
    out2 = apply({"params": params2}, ids, mask)
    assert max_rel_err(out2.text_embeds, ref.text_embeds.numpy()) <= TOL


@pytest.mark.parity
def test_clap_converter_errors_name_the_key():
    cfg = clapm.CONFIGS["tiny"]
    sd = torch_state_dict_to_numpy(_hf(cfg).state_dict())
    bad = dict(sd)
    k = "text_model.encoder.layer.1.attention.output.LayerNorm.weight"
    bad[k.replace("LayerNorm", "layer_norm")] = bad.pop(k)
    with pytest.raises(ConversionError, match=k.replace(".", r"\.")):
        convert_clap_text(bad, cfg)
    bad = dict(sd)
    bad["text_projection.linear2.weight"] = bad["text_projection.linear2.weight"].reshape(-1)
    with pytest.raises(ConversionError, match=r"text_projection\.linear2\.weight"):
        convert_clap_text(bad, cfg)
    # a full ClapModel checkpoint: audio tower ignored
    full = {**sd, "audio_model.audio_encoder.norm.weight": np.ones(4, np.float32),
            "audio_projection.linear1.weight": np.ones((2, 2), np.float32), "logit_scale_a": np.zeros(())}
    assert convert_clap_text(full, cfg)[1].ok


def test_roberta_position_ids():
    ids = np.array([[0, 5, 6, 2, 1, 1], [0, 2, 1, 1, 1, 1]])
    assert clapm.roberta_position_ids(ids, 1).tolist() == [[2, 3, 4, 5, 1, 1], [2, 3, 1, 1, 1, 1]]
