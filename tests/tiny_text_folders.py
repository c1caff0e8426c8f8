"""Test fixtures: tiny random transformers text models saved as released folders (config.json,
model.safetensors, tokenizer.json), what the text registry loads through tta_jax.convert.text_encoders.

Needs torch + transformers (the parity extra); callers skip without them.
"""
from __future__ import annotations

import os

WORDS = ("a dog barks in the rain car engine idles bird sings loud quiet piano music plays wind blows "
         "water flows people talk door slams").split()


def save_tokenizer(folder: str, pad_id: int) -> None:
    """A word-level tokenizer (the words above, ``</s>`` appended) with ``<pad>`` at ``pad_id`` (0 or 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "</s>", "<unk>"] if pad_id == 0 else ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(special + list(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                            eos_token="</s>").save_pretrained(folder)


def save_text_model(kind: str, folder: str, seed: int = 0):
    """A tiny random ``t5`` / ``clip`` / ``clap`` text model + tokenizer in ``folder``. -> the torch model."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "t5":
        cfg = tf.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                          relative_attention_num_buckets=8, relative_attention_max_distance=20,
                          feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0,
                          pad_token_id=0, eos_token_id=1)
        model, pad = tf.T5EncoderModel(cfg), 0
    elif kind == "clip":
        cfg = tf.CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=16, pad_token_id=0,
                                bos_token_id=0, eos_token_id=1)
        model, pad = tf.CLIPTextModel(cfg), 0
    elif kind == "clap":
        cfg = tf.ClapTextConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=37, max_position_embeddings=40, projection_dim=16,
                                pad_token_id=1)
        model, pad = tf.ClapTextModelWithProjection(cfg), 1
    else:
        raise ValueError(kind)
    model = model.eval()
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    save_tokenizer(folder, pad)
    return model
