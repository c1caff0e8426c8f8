"""Editing for every latent text-to-audio system, on the one jitted :class:`tta_jax.pipelines.tta.Generator`:

- :func:`sdedit`: text-guided style transfer (SDEdit): the source audio's latent is noised to ``strength`` of
  the sampler's own timestep grid and only the remaining steps run with the new prompt (strength 0 returns the
  source latent);
- :func:`inpaint`: regenerate the time span [start_s, end_s) of the source for any denoiser (no mask input
  needed): RePaint-style, the known frames of x_t follow the source's noisy path at every step and are pasted
  back exactly at the end (bit-identical in codec-latent space);
- :func:`word_swap`: prompt-to-prompt (Hertz et al. 2022): the source and the edited prompt are sampled in one
  batch from the same noise, the edited prompt's cross-attention probabilities replaced by the source's for
  the first ``tau`` of the steps;
- :func:`reweight`: scales the cross-attention probabilities of chosen text tokens (prompt-to-prompt
  re-weighting; weight 1 is a no-op);
- :func:`attention_maps`: per-token cross-attention maps (heads, layers and steps averaged; time for sequence
  latents, freq x time for image latents; summing to 1 over the text tokens) and :func:`save_attention_png`.

All take an :class:`EditSession` (:func:`session`: the run's denoiser, codec, text encoder, token PCA and
generator) and audio at ``codec.sample_rate``; results are dicts of numpy arrays (``latent`` in the codec's
layout [N, T, C] or [N, H, T, C], ``audio`` [N, S]). ``launch/edit.py`` is the command line.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tta_jax.denoisers.factory import IMAGE, Denoiser
from tta_jax.errors import ConfigError, InvalidArgument
from tta_jax.pipelines import tta


@dataclasses.dataclass
class EditSession:
    """What every edit needs: ``config``, unboxed ``params``, the denoiser, codec, text encoder, token PCA
    (or None), the generator and the token patch size ``patch`` (sequence latents; 1 for images)."""

    config: Any
    params: Any
    denoiser: Denoiser
    codec: Any
    text: Any
    pca: Any
    generator: tta.Generator
    patch: int
    workdir: str | None = None
    checked: bool = False


def session(config, params, *, workdir: str | None = None, steps: int | None = None,
            guidance: float | None = None, rescale: float | None = None) -> EditSession:
    """A trained run (``config``, its params, ``workdir`` for the token PCA asset) -> :class:`EditSession`.
    ``steps`` / ``guidance`` / ``rescale`` override the config's sampler."""
    from flax.core import meta

    from tta_jax.codecs.registry import build_codec
    from tta_jax.text.registry import build_text_encoder

    if config.model.get("remat", False):  # sampling needs no activation checkpointing; attention hooks refuse it
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.model.remat = False
    den = tta.denoiser_of(config)
    tta.check_latent_space(config, den)
    text = build_text_encoder(config.text)
    if text is None:
        raise ConfigError("config.text.name is 'none': editing follows a prompt; this system has none")
    gen = tta.generator_from_config(den, config, workdir, **({"num_steps": int(steps)} if steps else {}))
    if guidance is not None:
        gen.guidance_scale = float(guidance)
    if rescale is not None:
        gen.guidance_rescale = float(rescale)
    patch = 1 if den.layout == IMAGE else int(config.data.patch_frames)
    return EditSession(config, meta.unbox(params), den, build_codec(config.codec), text,
                       tta.token_pca_of(config, workdir), gen, patch, workdir)


# ------------------------------------------------------------------------------ latents <-> model space
def encode_audio(s: EditSession, audio) -> np.ndarray:
    """Audio [S] or [1, S] at ``codec.sample_rate`` -> codec latent [1, T, C] / [1, H, T, C]."""
    a = np.asarray(audio, np.float32)
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[0] != 1 or a.shape[1] < s.codec.hop_length:
        raise InvalidArgument(f"source audio must be [S] or [1, S] with S >= {s.codec.hop_length} samples, got "
                              f"{a.shape}")
    return np.asarray(s.codec.encode(a), np.float32)


def _padded_frames(s: EditSession, frames: int) -> int:
    return -(-int(frames) // s.patch) * s.patch


def to_model(s: EditSession, z) -> jax.Array:
    """Codec latent [N, T, C] (T a multiple of ``patch``) or [N, H, T, C] -> the denoiser's space."""
    z = jnp.asarray(z, jnp.float32)
    if s.denoiser.layout == IMAGE:
        return z
    z = tta.patchify(z, s.patch)
    return s.pca.encode(z) if s.pca is not None else z


def from_model(s: EditSession, x) -> jax.Array:
    """The denoiser's latents -> codec latents (token PCA decoded, tokens unpatched)."""
    if s.denoiser.layout == IMAGE:
        return x
    if s.pca is not None:
        x = s.pca.decode(x)
    return tta.unpatchify(x, s.patch)


def _pad_time(z: np.ndarray, frames: int) -> np.ndarray:
    """Pads axis -2 (time) to ``frames`` by repeating the last frame."""
    pad = frames - z.shape[-2]
    if pad <= 0:
        return z
    widths = [(0, 0)] * z.ndim
    widths[-2] = (0, pad)
    return np.pad(z, widths, mode="edge")


def _conds(s: EditSession, prompts: Sequence[str]):
    negative = str(s.config.sampler.get("negative", "empty") or "empty")
    if negative == "empty":
        cond, uncond = tta.text_conds(s.text.encode, list(prompts))
    else:
        cond, uncond = tta.text_conds(s.text.encode, list(prompts), negative)
    return cond, uncond


def _check(s: EditSession, shape, cond) -> None:
    if s.checked:
        return
    context_len = int(cond["text"].shape[1]) if "text" in cond else 1
    tta.check_params(s.denoiser, s.params, shape, context_len, s.workdir or "params",
                     {k: v[:1] for k, v in cond.items()})
    s.checked = True


def _frames(s: EditSession, num_frames: int | None) -> int:
    frames = int(num_frames or s.config.data.get("crop_frames", 0) or tta.trained_latent_frames(s.workdir) or 0)
    if frames <= 0:
        raise ConfigError("the sample length is unknown: config.data.crop_frames is 0 and the workdir has no "
                          "assets/latent.json; pass num_frames (or a source audio)")
    return frames


def _model_shape(s: EditSession, frames: int) -> tuple[int, ...]:
    latent = s.codec.latent_shape(frames * s.codec.hop_length)
    latent = tuple(latent[:-2]) + (frames, latent[-1])
    return tta.model_latent_shape(s.config, s.denoiser, latent, s.pca)


def _finish(s: EditSession, x, frames: int, **extra) -> dict:
    lat = np.asarray(from_model(s, x))[..., :frames, :]
    return {"latent": lat, "audio": np.asarray(s.codec.decode(jnp.asarray(lat))), **extra}


def _source(s: EditSession, audio):
    """-> (codec latent [1, ..., T, C], frames T, model-space source [1, *shape], shape)."""
    z = encode_audio(s, audio)
    frames = z.shape[-2]
    zp = _pad_time(z, _padded_frames(s, frames))
    x = to_model(s, zp)
    return z, frames, x, tuple(x.shape[1:])


# ------------------------------------------------------------------------------ the edits
def sdedit(s: EditSession, audio, prompt: str, strength: float, *, seed: int = 0) -> dict:
    """SDEdit: ``audio`` re-rendered following ``prompt``; ``strength`` in [0, 1] (0: the source latent
    itself, 1: from (nearly) pure noise). -> {"latent" [1, ...], "audio" [1, S], "source_latent"}."""
    from tta_jax.diffusion import start_step_for_strength

    z, frames, x, shape = _source(s, audio)
    steps = s.generator.sampler.num_steps
    if start_step_for_strength(steps, strength) >= steps:   # nothing to run: the source itself
        return {"latent": z, "audio": np.asarray(s.codec.decode(jnp.asarray(z))), "source_latent": z}
    cond, uncond = _conds(s, [prompt])
    _check(s, shape, cond)
    out = s.generator.edit(s.params, cond, uncond, jax.random.PRNGKey(seed), shape, source=x, strength=strength)
    return _finish(s, out, frames, source_latent=z)


def time_span_mask(s: EditSession, frames: int, start_s: float, end_s: float) -> np.ndarray:
    """[frames] float32: 1 on the codec latent frames overlapping [start_s, end_s) (to generate)."""
    if not 0 <= start_s < end_s:
        raise InvalidArgument(f"inpainting span [{start_s}, {end_s}) s is empty or negative")
    rate = s.codec.sample_rate / s.codec.hop_length
    a, b = int(np.floor(start_s * rate)), min(int(np.ceil(end_s * rate)), frames)
    if a >= frames:
        raise InvalidArgument(f"inpainting span starts at {start_s} s, past the source ({frames / rate:.3f} s)")
    m = np.zeros(frames, np.float32)
    m[a:b] = 1.0
    return m


def inpaint(s: EditSession, audio, prompt: str, start_s: float, end_s: float, *, seed: int = 0) -> dict:
    """Regenerates [start_s, end_s) of ``audio`` following ``prompt``; every other codec latent frame equals
    the source's exactly. -> {"latent", "audio", "source_latent", "mask" [T]}."""
    z, frames, x, shape = _source(s, audio)
    m = time_span_mask(s, frames, start_s, end_s)
    mp = np.ones(_padded_frames(s, frames), np.float32)   # padding frames (if any) are generated, then cut
    mp[:frames] = m
    mm = tta.patch_mask(jnp.asarray(mp)[None], s.patch) if s.denoiser.layout != IMAGE else jnp.asarray(mp)[None]
    cond, uncond = _conds(s, [prompt])
    _check(s, shape, cond)
    out = s.generator.edit(s.params, cond, uncond, jax.random.PRNGKey(seed), shape, mask=mm, masked_latent=x)
    lat = np.asarray(from_model(s, out))[..., :frames, :]
    keep = tta.time_mask_like(jnp.asarray(m)[None], jnp.asarray(lat)) < 0.5
    lat = np.where(np.asarray(keep), z, lat)          # the known frames, bit-identical in codec space
    return {"latent": lat, "audio": np.asarray(s.codec.decode(jnp.asarray(lat))), "source_latent": z, "mask": m}


def _start(s: EditSession, audio, num_frames, rows: int):
    """Generation from noise (``audio`` None) or SDEdit from ``audio``: -> (frames, shape, source or None)."""
    if audio is None:
        frames = _frames(s, num_frames)
        return frames, _model_shape(s, _padded_frames(s, frames)), None
    _, frames, x, shape = _source(s, audio)
    return frames, shape, jnp.broadcast_to(x, (rows,) + shape)


def word_swap(s: EditSession, source_prompt: str, edit_prompt: str, tau: float, *, seed: int = 0,
              num_frames: int | None = None, audio=None, strength: float | None = None) -> dict:
    """Prompt-to-prompt word swap: -> {"latent" [2, ...], "audio" [2, S]} (row 0 the source prompt, row 1
    the edit). The edit keeps the source's cross-attention maps for the first ``tau`` of the steps (tau 0:
    plain sampling of ``edit_prompt`` from the same noise). The prompts should tokenize to the same number of
    tokens (token i of one is swapped for token i of the other). With ``audio`` the pair starts from it
    (SDEdit, ``strength``)."""
    if not 0.0 <= float(tau) <= 1.0:
        raise InvalidArgument(f"tau={tau} must be in [0, 1]")
    frames, shape, src = _start(s, audio, num_frames, 2)
    cond, uncond = _conds(s, [source_prompt, edit_prompt])
    _check(s, shape, cond)
    out = s.generator.edit(s.params, cond, uncond, jax.random.PRNGKey(seed), shape, pairs=True, tau=tau,
                           source=src, strength=strength if src is not None else None)
    return _finish(s, out, frames)


def reweight(s: EditSession, prompt: str, tokens: Sequence[int | str], weight: float, *, seed: int = 0,
             num_frames: int | None = None, audio=None, strength: float | None = None) -> dict:
    """Prompt-to-prompt re-weighting: the cross-attention probabilities of ``tokens`` (context positions, or
    words located through :func:`token_labels`) scaled by ``weight``. -> {"latent", "audio", "positions"}."""
    frames, shape, src = _start(s, audio, num_frames, 1)
    cond, uncond = _conds(s, [prompt])
    _check(s, shape, cond)
    labels, valid = token_labels(s, prompt, cond)
    positions = resolve_tokens(tokens, labels, valid)
    w = np.ones(len(labels), np.float32)
    w[positions] = float(weight)
    out = s.generator.edit(s.params, cond, uncond, jax.random.PRNGKey(seed), shape, token_weights=w,
                           source=src, strength=strength if src is not None else None)
    return _finish(s, out, frames, positions=np.asarray(positions))


def attention_maps(s: EditSession, prompt: str, *, seed: int = 0, num_frames: int | None = None, audio=None,
                   strength: float | None = None) -> dict:
    """Samples ``prompt`` (from noise, or SDEdit from ``audio``) and returns its cross-attention maps per
    text token: {"latent", "audio", "maps" [K, *grid] (K real tokens; grid (T',) model frames for sequence
    latents, (H, T) for images; summing to 1 over the K tokens), "labels" [K], "positions" [K]}."""
    frames, shape, src = _start(s, audio, num_frames, 1)
    cond, uncond = _conds(s, [prompt])
    _check(s, shape, cond)
    out, maps = s.generator.edit(s.params, cond, uncond, jax.random.PRNGKey(seed), shape, attention_maps=True,
                                 source=src, strength=strength if src is not None else None)
    labels, valid = token_labels(s, prompt, cond)
    pos = np.flatnonzero(valid)
    m = np.moveaxis(np.asarray(maps)[0][..., pos], -1, 0)            # [K, *grid]
    m = m / np.maximum(m.sum(0, keepdims=True), 1e-12)               # over the real tokens
    return _finish(s, out, frames, maps=m, labels=[labels[i] for i in pos], positions=pos)


# ------------------------------------------------------------------------------ tokens
def _byte_label(b: int) -> str:
    return "␣" if b == 32 else chr(b) if 32 < b < 127 else f"\\x{b:02x}"


def _section_labels(sec: dict, prompt: str, length: int) -> list[str]:
    """Best-effort token strings of one text encoder section for ``prompt`` (its ``length`` positions)."""
    name = sec.get("name")
    path = ""
    if name in ("t5", "clip", "clap"):
        path = sec.get("path") if sec.get("init", "pretrained") == "pretrained" else sec.get("tokenizer")
    elif name in ("minilm", "minilm_tokens"):
        from tta_jax.text.bert import minilm_dir

        path = minilm_dir()
    if path:
        from tta_jax.text.tokenizer import TextTokenizer

        tok = TextTokenizer(path, max_length=length)
        ids = tok([prompt])["input_ids"][0]
        out = [str(t) for t in tok.tok.convert_ids_to_tokens([int(i) for i in ids])]
    elif name in ("bytes_embed", "t5", "clip", "clap"):   # BOS + one token per UTF-8 byte
        out = ["<s>"] + [_byte_label(b) for b in prompt.encode("utf-8")]
    elif name == "bytes":
        out = [_byte_label(b) for b in prompt.encode("utf-8")]
    else:
        out = []
    out = out[:length]
    return out + [f"#{i}" for i in range(len(out), length)]


def token_labels(s: EditSession, prompt: str, cond) -> tuple[list[str], np.ndarray]:
    """The text context of ``prompt`` (``cond`` of batch 1 from :func:`tta.text_conds`) -> (a label per
    context position [Lk], valid [Lk] bool: the positions that are real tokens (the text mask)). Several
    encoders (``text.name = "multi"``): their contexts in order, labels prefixed ``<i>:``."""
    from tta_jax.text.registry import resolve_text_section

    sec = resolve_text_section(s.config.text)
    if "text" in cond:
        length = int(cond["text"].shape[1])
        valid = np.asarray(cond["text_mask"][0]).astype(bool) if "text_mask" in cond else np.ones(length, bool)
        return _section_labels(sec, prompt, length), valid
    labels, valid = [], []
    for i, sub in enumerate(sec.get("encoders") or ()):
        length = int(cond[f"text:{i}"].shape[1])
        labels += [f"{i}:{t}" for t in _section_labels(sub, prompt, length)]
        mk = cond.get(f"text_mask:{i}")
        valid.append(np.asarray(mk[0]).astype(bool) if mk is not None else np.ones(length, bool))
    return labels, np.concatenate(valid)


_MARKS = ("▁", "Ġ", "␣", "</w>", "##", "<s>")


def _clean(label: str) -> str:
    label = label.split(":", 1)[1] if ":" in label[:3] and label[0].isdigit() else label
    for m in _MARKS:
        label = label.replace(m, "")
    return label.strip().lower()


def resolve_tokens(tokens: Sequence[int | str], labels: Sequence[str], valid) -> list[int]:
    """Context positions for ``tokens``: ints (or digit strings) are positions; a word selects the real
    tokens whose (cleaned) labels spell it, within each encoder's context. Raises an error naming what is
    not found (:class:`tta_jax.errors.InvalidArgument`)."""
    valid = np.asarray(valid, bool)
    out: list[int] = []
    for tok in tokens:
        if isinstance(tok, (int, np.integer)) or (isinstance(tok, str) and tok.lstrip("-").isdigit()):
            i = int(tok)
            if not 0 <= i < len(labels) or not valid[i]:
                raise InvalidArgument(f"token position {i} is not a real token of the prompt "
                                 f"(real positions: {np.flatnonzero(valid).tolist()})")
            out.append(i)
            continue
        word = "".join(str(tok).lower().split())
        found = _find_word(word, labels, valid)
        if not found:
            shown = [labels[i] for i in np.flatnonzero(valid)]
            raise InvalidArgument(f"word {tok!r} is not among the prompt's tokens {shown}")
        out += found
    return sorted(set(out))


def _find_word(word: str, labels: Sequence[str], valid) -> list[int]:
    """Positions of the tokens covering each occurrence of ``word`` in the concatenated cleaned labels of the
    real tokens (per encoder prefix ``<i>:`` when present)."""
    groups: dict[str, list[int]] = {}
    for i in np.flatnonzero(valid):
        lab = labels[i]
        key = lab.split(":", 1)[0] if ":" in lab[:3] and lab[0].isdigit() else ""
        groups.setdefault(key, []).append(int(i))
    found = []
    for idx in groups.values():
        text, owner = "", []
        for i in idx:
            piece = "".join(_clean(labels[i]).split())
            text += piece
            owner += [i] * len(piece)
        at = text.find(word)
        while word and at >= 0:
            found += owner[at:at + len(word)]
            at = text.find(word, at + 1)
    return sorted(set(found))


# ------------------------------------------------------------------------------ pictures
def save_attention_png(path: str, latent: np.ndarray, maps: np.ndarray, labels: Sequence[str],
                       title: str = "", max_tokens: int = 24) -> None:
    """Writes the spectrogram-like latent (``latent`` [T, C] or [H, T, C], its first channel) and, under it,
    one panel per text token: the token's attention map (``maps`` [K, T'] or [K, H', T']) over the latent in
    grey, labelled with the token. At most ``max_tokens`` panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latent = np.asarray(latent)
    spec = latent[..., 0] if latent.ndim == 3 else latent.T
    maps = np.asarray(maps)[:max_tokens]
    k = len(maps)
    fig, axes = plt.subplots(k + 1, 1, figsize=(6, 1.1 * (k + 1) + 0.4), squeeze=False)
    extent = (0, spec.shape[1], 0, spec.shape[0])
    axes[0, 0].imshow(spec, origin="lower", aspect="auto", cmap="magma", extent=extent)
    axes[0, 0].set_title(title[:70], fontsize=8)
    vmax = float(maps.max()) if maps.size else 1.0
    for j in range(k):
        ax = axes[j + 1, 0]
        m = maps[j]
        m = m[None] if m.ndim == 1 else m
        ax.imshow(spec, origin="lower", aspect="auto", cmap="gray", extent=extent)
        ax.imshow(m, origin="lower", aspect="auto", cmap="jet", alpha=0.55, vmin=0.0, vmax=vmax, extent=extent)
        label = str(labels[j])
        ax.set_ylabel((label.strip() or repr(label))[:12], rotation=0, ha="right", va="center", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


__all__ = ["EditSession", "session", "encode_audio", "to_model", "from_model", "sdedit", "inpaint",
           "time_span_mask", "word_swap", "reweight", "attention_maps", "token_labels", "resolve_tokens",
           "save_attention_png"]
