"""Builders shared by the precompute CLI and the demo: examples, and the frozen codec and text encoder from
the registries (:mod:`tta_jax.codecs.registry`, :mod:`tta_jax.text.registry`), from a precompute config
(``data_pipeline/precompute_config.py``) whose ``codec`` / ``text`` sections may come from a system config.

    manifest = run(c, out_dir)                    # codec + text encoder + examples -> shards + manifest.json
    manifest = run(c, out_dir, system=system_cfg) # the system's codec and text sections replace c's

The audio is resampled to the codec's sample rate: ``config.audio.sample_rate`` 0 (the default) follows
the codec, any other value must equal it. The manifest's ``codec`` / ``text`` fields are the registries'
``info`` (what training and sampling compare their config with).
"""
from __future__ import annotations

import os
from typing import Any

from tta_jax import sections
from tta_jax.errors import ConfigError


def build_examples(c, out_dir: str, progress: bool = True, sample_rate: int | None = None):
    """The examples of ``c.source``; the embedded set is rendered at ``sample_rate`` (default
    ``c.audio.sample_rate``)."""
    from data_pipeline import sources
    from tta_jax.data import embedded

    if c.source == "embedded":
        e = c.embedded
        ecfg = embedded.EmbeddedConfig(num_clips=e.num_clips, seed=e.seed, duration=e.duration,
                                       sample_rate=int(sample_rate or c.audio.sample_rate),
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


# ------------------------------------------------------------------------------------------------ sections
def _defaults() -> Any:
    from data_pipeline.precompute_config import get_config

    return get_config()


def section_of(c, key: str) -> dict:
    """``c.codec`` / ``c.text`` for the registry. The default precompute config carries the settings of
    several entries (toy's ``hop``, mel's ``model``, ...); keys the chosen entry does not take are dropped
    while they still hold the default config's value, so only a key the user set for the wrong entry is
    refused (by the registry, naming it)."""
    from tta_jax.codecs.registry import CODECS
    from tta_jax.text.registry import TEXT_ENCODERS

    d = sections.as_dict(c[key])
    table = CODECS if key == "codec" else TEXT_ENCODERS
    entry = table.get(d.get("name"))
    if entry is None:  # the registry names the bad name
        return d
    default = sections.as_dict(_defaults()[key])
    return {k: v for k, v in d.items()
            if k == "name" or k in entry.settings or k not in default or v != default[k]}


def system_sections(c, system) -> dict[str, dict]:
    """The ``codec`` and ``text`` sections of ``system`` (an experiment config, e.g. ``configs/ezaudio.py:xl``),
    which replace ``c``'s; ``c``'s own codec / text settings must be untouched (set them on the system config
    instead: ``--system.codec.KEY=VALUE``)."""
    default = _defaults()
    out = {}
    for key in ("codec", "text"):
        if key not in system or not sections.as_dict(system[key]).get("name"):
            raise ConfigError(f"the system config has no {key} section with a name (system.{key}.name); "
                              f"it cannot say what to precompute")
        mine, base = sections.as_dict(c[key]), sections.as_dict(default[key])
        changed = [k for k in sorted(mine) if k not in base or sections.mismatches(mine[k], base[k], k)]
        if changed:
            raise ConfigError(f"config.{key}.{changed[0]} is set, but --system replaces the whole {key} section; "
                              f"set --system.{key}.{changed[0]} instead")
        out[key] = sections.as_dict(system[key])
    return out


def build_encoders(c, system=None):
    """-> (:class:`tta_jax.codecs.registry.Codec`, :class:`tta_jax.text.registry.TextEncoder` or None), from
    ``c``'s sections or, when given, from ``system``'s (errors then name ``system.codec.KEY``)."""
    from tta_jax.codecs.registry import build_codec
    from tta_jax.text.registry import build_text_encoder

    if system is None:
        return (build_codec(section_of(c, "codec"), "config.codec"),
                build_text_encoder(section_of(c, "text"), "config.text"))
    s = system_sections(c, system)
    return build_codec(s["codec"], "system.codec"), build_text_encoder(s["text"], "system.text")


def sample_rate_of(c, codec) -> int:
    """The audio rate: the codec's. ``config.audio.sample_rate`` 0 follows it; another value must equal it."""
    want = int(c.audio.sample_rate or 0)
    if want and want != codec.sample_rate:
        raise ConfigError(f"config.audio.sample_rate={want} but the codec ({codec.name!r}) runs "
                          f"at {codec.sample_rate} Hz; set config.audio.sample_rate=0 (follow the codec) or "
                          f"{codec.sample_rate}")
    return int(codec.sample_rate)


def precompute_config(c, codec, text):
    """ConfigDict + the registries' codec and text encoder -> data_pipeline.precompute.PrecomputeConfig."""
    from data_pipeline.precompute import PrecomputeConfig
    from data_pipeline.sources import AudioConfig

    a = c.audio
    crop, norm = a.crop_seconds, a.normalize
    if c.source == "embedded":  # whole clips, levels kept (dynamics are labels)
        crop, norm = min(crop, c.embedded.duration), None
    return PrecomputeConfig(
        audio=AudioConfig(sample_rate=sample_rate_of(c, codec), max_seconds=a.max_seconds, crop_seconds=crop,
                          crop=a.crop, normalize=norm, seed=a.seed),
        shard_size=c.shard_size, batch_size=c.batch_size, codec_id=codec.ident,
        text_id=text.ident if text is not None else "none", latent_dtype=c.latent_dtype,
        throttle_s=c.throttle_s, decode_threads=c.decode_threads, codec=dict(codec.info),
        text=dict(text.info) if text is not None else {"name": "none"})


def run(c, out_dir: str, *, system=None, process_index: int = 0, process_count: int = 1, progress: bool = True):
    """Precompute ``c`` into ``out_dir``: codec and text encoder from the registries (``system``'s sections
    when given), the examples of ``c.source`` at the codec's rate -> shards + manifest.json. -> the manifest,
    or None while other processes still work."""
    from data_pipeline.precompute import run_precompute

    codec, text = build_encoders(c, system)
    cfg = precompute_config(c, codec, text)
    examples = build_examples(c, out_dir, progress=progress, sample_rate=cfg.audio.sample_rate)
    cfg, examples, encode_reference = with_references(c, cfg, examples, system, codec, text)
    return run_precompute(examples, out_dir, codec.encode, text.encode if text is not None else None, cfg,
                          process_index=process_index, process_count=process_count, progress=progress,
                          encode_reference=encode_reference)


REFERENCE_MODES = ("pairs", "concatenate", "overlay")


def with_references(c, cfg, examples, system=None, codec=None, text=None):
    """When the system's conditioner reads reference audio (``system.conditioner``: SERST, DreamAudio) ->
    (cfg, examples, encode_reference), else (cfg, examples, None).

    ``c.references.mode``: ``pairs`` (SERST) pairs each example with other clips of the same
    ``c.references.label`` (:func:`data_pipeline.references.pair_references`); ``concatenate`` / ``overlay``
    (DreamAudio) build each target from K clips of distinct labels (:mod:`data_pipeline.customized`); a
    ``target`` conditioner (DC-LDM) gets each example as its own single reference (no label needed). The
    returned PrecomputeConfig decodes the references at the conditioner's length and rate (the codec's when it
    encodes them with the system codec); ``encode_reference(audio, captions)`` is the conditioner's feature
    function, with the system's ``codec`` and ``text`` encoder."""
    import dataclasses
    import logging

    from data_pipeline.sources import AudioConfig
    from tta_jax.conditioners.registry import reference_features_of, reference_spec_of

    section = system.get("conditioner") if system is not None else None
    spec = reference_spec_of(section, "system.conditioner", sample_rate=cfg.audio.sample_rate)
    if spec is None:
        return cfg, examples, None
    encode = reference_features_of(section, "system.conditioner", codec=codec, text=text)
    if spec["target"]:   # the condition is computed from the example itself (DC-LDM's teacher-forced tokens)
        built = [dataclasses.replace(ex, refs=(ex,)) for ex in examples]
        return dataclasses.replace(cfg, reference=cfg.audio, reference_count=1), built, encode
    r = c.references
    mode = str(r.get("mode", "pairs") or "pairs")
    if mode not in REFERENCE_MODES:
        raise ConfigError(f"config.references.mode={mode!r}; expected one of {list(REFERENCE_MODES)}")
    if not r.label:
        raise ConfigError("the system's conditioner reads reference audio: set config.references.label to the "
                          "label column that names the sound event (e.g. family)")
    caption_fn = None
    if float(r.caption_prob) > 0:
        if c.source != "embedded":
            raise ConfigError("config.references.caption_prob needs label-free captions, which only the embedded "
                              "source can write; set 0 for other sources")
        from tta_jax.data.embedded import neutral_caption

        caption_fn = neutral_caption
    kw = dict(label=r.label, count=spec["count"], seed=int(r.seed), caption_fn=caption_fn,
              caption_prob=float(r.caption_prob))
    audio = cfg.audio
    if mode == "pairs":
        from data_pipeline.references import pair_references

        built, report = pair_references(examples, **kw)
        ref_audio = AudioConfig(sample_rate=spec["sample_rate"], max_seconds=audio.max_seconds,
                                crop_seconds=spec["seconds"], crop="random", normalize=audio.normalize,
                                seed=audio.seed)
    else:
        from data_pipeline import customized

        sr, seg = int(audio.sample_rate), float(spec["seconds"])
        if int(spec["sample_rate"]) != sr:
            raise ConfigError(f"config.references.mode={mode!r} builds targets from the references: they must run "
                              f"at the codec's rate ({sr} Hz), the conditioner reads {spec['sample_rate']} Hz")
        if mode == "concatenate":
            built, report = customized.concatenate_targets(examples, segment_seconds=seg, sample_rate=sr, **kw)
            target_seconds = spec["count"] * seg
        else:
            target_seconds = float(audio.crop_seconds)
            built, report = customized.overlay_targets(examples, segment_seconds=seg, target_seconds=target_seconds,
                                                       sample_rate=sr, background_gain=float(r.background_gain),
                                                       **kw)
        # the targets are exact: decoded from the start, levels as built (the builder keeps them in [-1, 1])
        cfg = dataclasses.replace(cfg, audio=dataclasses.replace(audio, crop_seconds=target_seconds, crop="start",
                                                                 normalize=None))
        ref_audio = AudioConfig(sample_rate=sr, max_seconds=audio.max_seconds, crop_seconds=seg, crop="start",
                                normalize=None, seed=audio.seed)
    logging.getLogger("data_pipeline.build").info("references (%s) by %r: %s", mode, r.label, report)
    if not built:
        raise ConfigError(f"no example could get {spec['count']} references by {r.label!r} in mode {mode!r} "
                          f"({report}); check config.references.label")
    cfg = dataclasses.replace(cfg, reference=ref_audio, reference_count=spec["count"])
    return cfg, built, encode
