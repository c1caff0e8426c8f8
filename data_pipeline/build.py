"""Builders shared by the precompute CLI and the demo: examples, frozen codec and text encoder from a
precompute config (``data_pipeline/precompute_config.py``)."""
from __future__ import annotations

import os


def build_examples(c, out_dir: str, progress: bool = True):
    from data_pipeline import embedded, sources

    if c.source == "embedded":
        e = c.embedded
        ecfg = embedded.EmbeddedConfig(num_clips=e.num_clips, seed=e.seed, duration=e.duration,
                                       sample_rate=c.audio.sample_rate,
                                       two_event_prob=e.two_event_prob)
        raw = os.path.join(out_dir, "embedded_audio")
        if not os.path.exists(os.path.join(raw, "metadata.csv")):
            embedded.export_embedded(raw, ecfg, num_workers=e.workers, progress=progress)
        return sources.folder_source(raw)
    args = {k: v for k, v in c.source_args.items() if v not in ("", None)}
    allowed = {
        "folder": ("root", "captions"), "audiocaps": ("csv_path", "audio_dir", "split"),
        "clotho": ("csv_path", "audio_dir", "split", "all_captions"),
        "wavcaps": ("json_path", "audio_dir", "split"),
        "tfds": ("name", "manual_dir", "split", "all_captions"),
    }
    if c.source not in allowed:
        raise ValueError(f"config.source={c.source!r}; expected embedded or one of {sorted(allowed)}")
    return list(sources.build_source(c.source, **{k: args[k] for k in allowed[c.source] if k in args}))


def build_codec(c):
    """-> (encode_audio callable [B, T] -> [B, ...], codec_id)."""
    import jax

    if c.codec.name == "toy":
        from data_pipeline.toy import FrameCodec

        codec = FrameCodec(sample_rate=c.audio.sample_rate, hop=c.codec.hop, bands=c.codec.bands)
        return jax.jit(codec.encode), codec.codec_id
    if c.codec.name == "mel":
        from tta_jax.codecs.mel_codec import load_pretrained_mel_codec

        codec = load_pretrained_mel_codec(c.codec.model, mean=c.codec.mean, std=c.codec.std)
        if codec.sample_rate != c.audio.sample_rate:
            raise ValueError(f"mel codec '{c.codec.model}' runs at {codec.sample_rate} Hz but "
                             f"config.audio.sample_rate={c.audio.sample_rate}; set them equal")
        params = codec.params
        codec_id = (f"mel(model={c.codec.model},mean={c.codec.mean},std={c.codec.std},"
                    f"{codec.mel})")
        return (lambda audio: codec.encode(params, audio)), codec_id  # jitted inside MelCodec
    raise ValueError(f"config.codec.name={c.codec.name!r}; expected toy or mel")


def build_text(c):
    """-> (encode_text callable list[str] -> {name: [B, ...]} or None, text_id)."""
    if c.text.name == "none":
        return None, "none"
    if c.text.name == "bytes":
        import functools

        from data_pipeline.toy import byte_tokens

        return functools.partial(byte_tokens, max_len=c.text.max_len), f"bytes(max_len={c.text.max_len})"
    if c.text.name == "minilm":  # frozen all-MiniLM-L6-v2 states: text [B, L, 384], text_mask [B, L]
        import numpy as np

        from tta_jax.text.bert import BertTextEncoder

        enc = BertTextEncoder.minilm(max_length=c.text.max_len)

        def encode_text(captions):
            states, mask = enc(list(captions))
            return {"text": np.asarray(states, np.float32), "text_mask": np.asarray(mask)}

        return encode_text, f"minilm(all-MiniLM-L6-v2,max_len={c.text.max_len})"
    if c.text.name == "minilm_tokens":  # token ids only (encoder runs in the train step)
        import numpy as np

        from tta_jax.text.bert import minilm_dir
        from tta_jax.text.tokenizer import TextTokenizer

        tok = TextTokenizer(minilm_dir(), max_length=c.text.max_len)

        def encode_tokens(captions):
            t = tok(list(captions))
            return {"input_ids": np.asarray(t["input_ids"], np.int32),
                    "attention_mask": np.asarray(t["attention_mask"], np.int32)}

        return encode_tokens, f"minilm-tokens(max_len={c.text.max_len})"
    raise ValueError(f"config.text.name={c.text.name!r}; expected none, bytes, minilm or minilm_tokens")


def codec_info(c) -> dict:
    """The codec as structured manifest fields (``manifest["codec"]``): its name and the settings it used."""
    name = c.codec.name
    if name == "toy":
        return {"name": "toy", "sample_rate": int(c.audio.sample_rate), "hop": int(c.codec.hop),
                "bands": int(c.codec.bands)}
    if name == "mel":
        return {"name": "mel", "sample_rate": int(c.audio.sample_rate), "model": str(c.codec.model),
                "mean": float(c.codec.mean), "std": float(c.codec.std)}
    return {"name": str(name)}


def text_info(c) -> dict:
    """The text encoder as structured manifest fields (``manifest["text"]``): its name and settings."""
    name = c.text.name
    if name == "none":
        return {"name": "none"}
    out = {"name": str(name), "max_len": int(c.text.max_len)}
    if name in ("minilm", "minilm_tokens"):
        out["model"] = "all-MiniLM-L6-v2"
    return out


def precompute_config(c, codec_id: str, text_id: str):
    """ConfigDict -> data_pipeline.precompute.PrecomputeConfig."""
    from data_pipeline.precompute import PrecomputeConfig
    from data_pipeline.sources import AudioConfig

    a = c.audio
    crop, norm = a.crop_seconds, a.normalize
    if c.source == "embedded":  # whole clips, levels kept (dynamics are labels)
        crop, norm = min(crop, c.embedded.duration), None
    return PrecomputeConfig(
        audio=AudioConfig(sample_rate=a.sample_rate, max_seconds=a.max_seconds, crop_seconds=crop,
                          crop=a.crop, normalize=norm, seed=a.seed),
        shard_size=c.shard_size, batch_size=c.batch_size, codec_id=codec_id, text_id=text_id,
        latent_dtype=c.latent_dtype, throttle_s=c.throttle_s,
        decode_threads=c.decode_threads, codec=codec_info(c), text=text_info(c))
