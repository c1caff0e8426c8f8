"""Denoiser factory: ``config.model`` -> a :class:`Denoiser` (the network plus the facts the task needs).

Every denoiser follows ``module.apply({"params": p}, x_t, t [B], cond, train=...) -> [same shape as x_t]``
and declares its latent layout and the ``cond`` keys it reads, so one latent-diffusion task and one
:class:`tta_jax.pipelines.tta.Generator` serve them all:

========  ==============================  ===========================================================
name      latent layout                   cond keys it can read
========  ==============================  ===========================================================
``dit``   sequence ``[B, T, C]``          text, text_mask; mask, masked_latent (EzAudio); style;
                                          acoustic, acoustic_mask; refs
``unet``  image ``[B, H, T, C]``          text, text_mask; style (class_labels); any ExtraContext key
          (channels last, time = W)       (+ its mask, e.g. acoustic); refs
========  ==============================  ===========================================================

``config.model.name`` picks the family (default ``"dit"``, so configs written before the factory keep
working); the other keys are the family's config fields (DiT: :class:`tta_jax.denoisers.dit.DiTConfig` or a
``preset``; U-Net: the fields of :class:`tta_jax.denoisers.unet.UNet`, ``extra_contexts`` as a list of
``{"key", "dim", "blocks", "zero_init"}`` dicts). A key the family does not know fails as a
:class:`tta_jax.errors.ConfigError` naming ``config.model.<key>``.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from tta_jax.errors import ConfigError

SEQUENCE = "sequence"   # latents [B, T, C]
IMAGE = "image"         # latents [B, H, T, C] (channels last; time is axis -2 as for sequences)


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """A denoiser network and what the task, the sampler and ``init`` need to know about it.

    Attributes:
      name: family (``"dit"`` / ``"unet"``).
      module: the flax module; ``module.apply(v, x_t, t, cond, train=...)``.
      layout: ``"sequence"`` (x [B, T, C]) or ``"image"`` (x [B, H, T, C]).
      in_channels / out_channels: C of x_t / of the output.
      cond_keys: the ``cond`` keys this configuration reads (others are refused by the module).
      dummy_cond: ``(batch, latent_shape, context_len) -> cond`` with every configured condition, for init.
      context_dim: width D of the ``text`` context it cross-attends to (0: none).
    """

    name: str
    module: nn.Module
    layout: str
    in_channels: int
    out_channels: int
    cond_keys: tuple[str, ...]
    dummy_cond: Callable[[int, tuple, int], dict] = dataclasses.field(compare=False, repr=False)
    context_dim: int = 0

    def apply(self, params, x_t, t, cond, *, train: bool = False, rngs=None, method=None):
        """``x_t`` [B, T, C] or [B, H, T, C], ``t`` [B] -> output of the same shape (float32)."""
        kw = {"rngs": rngs} if rngs is not None else {}
        if method is not None:
            kw["method"] = method
        return self.module.apply({"params": params}, x_t, t, cond, train=train, **kw)

    def prepare(self, params, cond, x=None):
        """``cond`` -> the same condition with its parts that depend on neither x_t nor t computed once (a
        conditioner's reference features: modules with a ``prepare(cond, train, like)`` method), so that
        ``apply(params, x, t, prepare(params, cond))`` equals ``apply(params, x, t, cond)`` and a sampler pays
        for them once, not at every step. ``x``: an x_t [B, ...] (its shape only)."""
        if not callable(getattr(self.module, "prepare", None)):
            return dict(cond)
        return self.module.apply({"params": params}, cond, train=False, like=x, method="prepare")

    def init(self, rng, latent_shape: tuple, context_len: int = 1, example_cond: Mapping[str, Any] | None = None):
        """Params (logically boxed) for one example of ``latent_shape`` ([T, C] or [H, T, C]) and a text
        context of ``context_len`` tokens, with every configured conditioning path created.
        ``example_cond``: real conditions of one example (batch 1) that replace the dummy ones by key; a
        denoiser whose input widths come from the data (per-encoder text adapters) needs them."""
        x = jnp.zeros((1,) + tuple(latent_shape), jnp.float32)
        cond = self.dummy_cond(1, tuple(latent_shape), int(context_len))
        if example_cond:
            cond.update({k: jnp.asarray(v)[:1] for k, v in example_cond.items() if k in self.cond_keys})
        missing = [k for k in self.cond_keys if k not in cond and k.startswith("text")]
        if missing:
            raise ConfigError(f"initialising the {self.name} denoiser needs an example of cond[{missing[0]!r}] "
                              f"(its width comes from the text encoder)")
        return self.module.init({"params": rng}, x, jnp.zeros((1,), jnp.int32), cond)["params"]

    def check_latent_shape(self, latent_shape: tuple, where: str = "latent") -> None:
        """Raises ConfigError when one example's latent shape does not fit this denoiser."""
        want = 2 if self.layout == SEQUENCE else 3
        if len(latent_shape) != want:
            raise ConfigError(f"{where} has per-example shape {tuple(latent_shape)}, but config.model.name="
                              f"{self.name!r} denoises {self.layout} latents "
                              f"({'[T, C]' if want == 2 else '[H, T, C]'})")


def _fields(section) -> dict:
    d = section.to_dict() if hasattr(section, "to_dict") else dict(section or {})
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}


def _unknown(name: str, keys, known) -> None:
    bad = sorted(set(keys) - set(known))
    if bad:
        close = difflib.get_close_matches(bad[0], sorted(known), n=1)
        hint = f" (did you mean 'config.model.{close[0]}'?)" if close else ""
        raise ConfigError(f"config.model.{bad[0]} is not a field of the {name!r} denoiser{hint}")


# ---------------------------------------------------------------------------------------------- DiT
def dit_config(fields: Mapping[str, Any]):
    """``config.model`` fields (DiTConfig fields, optionally a ``preset`` they override) -> DiTConfig."""
    from tta_jax.denoisers import dit as dit_mod

    fields = dict(fields)
    preset = fields.pop("preset", None)
    _unknown("dit", fields, {f.name for f in dataclasses.fields(dit_mod.DiTConfig)})
    if preset:
        if preset not in dit_mod.PRESETS:
            raise ConfigError(f"config.model.preset={preset!r}; expected one of {sorted(dit_mod.PRESETS)}")
        try:
            return dit_mod.PRESETS[preset](**fields)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config.model: {e}") from e
    try:
        return dit_mod.DiTConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.model: {e}") from e


def _build_dit(fields) -> Denoiser:
    return dit_denoiser(dit_config(fields))


def dit_denoiser(c) -> Denoiser:
    """A :class:`tta_jax.denoisers.dit.DiTConfig` -> :class:`Denoiser` (the DiT family's facts)."""
    from tta_jax.denoisers.dit import DiT

    keys = []
    if c.context_dim:
        keys += ["text", "text_mask"]
    if c.use_mask_input:
        keys += ["mask", "masked_latent"]
    style_dim = getattr(c, "style_dim", None)
    acoustic_dim = getattr(c, "acoustic_dim", None)
    ref_blocks = tuple(getattr(c, "ref_blocks", ()) or ())
    if style_dim:
        keys.append("style")
    if acoustic_dim:
        keys += ["acoustic", "acoustic_mask"]
    if ref_blocks:
        keys.append("refs")

    def dummy_cond(b, shape, length):
        t, _ = shape
        cond = {}
        if c.context_dim:
            cond.update(text=jnp.zeros((b, length, c.context_dim)), text_mask=jnp.ones((b, length), bool))
        if c.use_mask_input:
            cond.update(mask=jnp.ones((b, t)), masked_latent=jnp.zeros((b, t, c.in_channels)))
        if style_dim:
            cond["style"] = jnp.zeros((b, style_dim))
        if acoustic_dim:
            cond.update(acoustic=jnp.zeros((b, 1, acoustic_dim)), acoustic_mask=jnp.ones((b, 1), bool))
        if ref_blocks:
            cond["refs"] = [jnp.zeros((b, 1, c.width)) if i in ref_blocks else None
                            for i in range(c.depth // 2)]
        return cond

    return Denoiser("dit", DiT(c), SEQUENCE, c.in_channels, c.out_channels, tuple(keys), dummy_cond,
                    int(c.context_dim or 0))


# ---------------------------------------------------------------------------------------------- U-Net
def unet_module(fields: Mapping[str, Any]):
    """``config.model`` fields (UNet fields; ``extra_contexts`` as dicts) -> :class:`UNet`."""
    from tta_jax.denoisers.unet import ExtraContext, UNet

    fields = dict(fields)
    _unknown("unet", fields, {f.name for f in dataclasses.fields(UNet)} - {"parent", "name"})
    extras = []
    for i, ec in enumerate(fields.pop("extra_contexts", ()) or ()):
        ec = dict(ec.to_dict() if hasattr(ec, "to_dict") else ec)
        ec["blocks"] = tuple(ec.get("blocks", ()))
        try:
            extras.append(ExtraContext(**ec))
        except TypeError as e:
            raise ConfigError(f"config.model.extra_contexts[{i}]: {e}") from e
    if "dtype" in fields and isinstance(fields["dtype"], str):
        fields["dtype"] = jnp.dtype(fields["dtype"])
    m = UNet(extra_contexts=tuple(extras), **fields)
    try:
        m._validate()
    except ValueError as e:
        raise ConfigError(f"config.model: {e}") from e
    return m


def _build_unet(fields) -> Denoiser:
    m = unet_module(fields)
    keys = ["text", "text_mask"] if m._attn_blocks() else []
    if m.class_embed_type:
        keys.append("style")
    for ec in m.extra_contexts:
        keys += [ec.key, ec.mask_name]
    if m.ref_blocks:
        keys.append("refs")

    def dummy_cond(b, shape, length):
        h, t, _ = shape
        _, _, cond = m.dummy_inputs(b, h, t, length)
        if "text" in cond:
            cond["text_mask"] = jnp.ones((b, length), bool)
        return cond    # extra contexts and refs create their params at init when absent

    return Denoiser("unet", m, IMAGE, m.in_channels, m.out_channels, tuple(keys), dummy_cond,
                    int(m.cross_attention_dim) if "text" in keys else 0)


# ---------------------------------------------------------------------------------------------- several text encoders
class TextAdapted(nn.Module):
    """A denoiser behind per-encoder text adapters (Auffusion's condition adapters, one per text encoder).

    Encoder i's states ``cond[inputs[i]]`` [B, L_i, D_i] (default key ``text:<i>``; a single-encoder model
    reads ``text``) with its mask ``cond[<mask key>]`` [B, L_i] (``text_mask:<i>`` / ``text_mask``; absent:
    all True) go through a trainable ``Linear(D_i -> dim) + LayerNorm`` (:class:`tta_jax.text.conditioner.
    TextAdapters`, params ``adapter_<i>`` / ``adapter_<i>_norm``) and are concatenated along the sequence ->
    ``text`` [B, sum L_i, dim] / ``text_mask``; every other key is passed through. Params:
    ``{"text_adapters": ..., "net": <the denoiser's>}``.

    ``padding="zeros"`` (Auffusion's pipeline: each prompt is encoded without padding, its states are
    zero-padded to ``L_i`` and every position is attended to): states where the mask is False become zeros
    before the adapter and the mask becomes all True. ``"mask"``: padded positions are masked out.

    ``cond["text_null"]`` [B] bool (optional): rows where True get an all-zero context after the adapters,
    every key attendable (Auffusion's negative embedding, ``config.sampler.negative = "zeros"``). A dropped
    encoder in training arrives as the empty caption's features (the loader) and is adapted like any other.
    """

    net: nn.Module
    num_encoders: int
    dim: int
    inputs: tuple[str, ...] = ()
    padding: str = "mask"

    def _keys(self) -> list[tuple[str, str]]:
        keys = self.inputs or tuple(f"text:{i}" for i in range(self.num_encoders))
        return [(k, k.replace("text", "text_mask", 1)) for k in keys]

    @nn.compact
    def __call__(self, x, t, cond, train: bool = False):
        from tta_jax.text.conditioner import TextAdapters

        keys = self._keys()
        absent = [k for k, _ in keys if k not in cond]
        if absent:
            raise ValueError(f"cond has no {absent[0]!r}: this denoiser reads {len(keys)} text encoder(s) "
                             f"({[k for k, _ in keys]}); cond has {sorted(cond)}")
        names = [str(i) for i in range(len(keys))]
        states, masks = {}, []
        for n, (k, mk) in zip(names, keys):
            s = jnp.asarray(cond[k])
            m = jnp.asarray(cond[mk]).astype(bool) if mk in cond else jnp.ones(s.shape[:2], bool)
            if self.padding == "zeros":
                s, m = jnp.where(m[..., None], s, 0.0), jnp.ones_like(m)
            states[n] = s
            masks.append(m)
        adapted = TextAdapters({n: 0 for n in names}, self.dim, name="text_adapters")(states)
        context = jnp.concatenate([adapted[n] for n in names], axis=1)
        mask = jnp.concatenate(masks, axis=1)
        if "text_null" in cond:  # [B] True: zero context, every key attendable
            null = jnp.asarray(cond["text_null"]).astype(bool)
            context = jnp.where(null[:, None, None], jnp.zeros_like(context), context)
            mask = jnp.where(null[:, None], True, mask)
        rest = {k: v for k, v in cond.items() if not k.startswith("text")}
        rest["text"], rest["text_mask"] = context, mask
        return self.net(x, t, rest, train=train)


TEXT_PADDINGS = ("mask", "zeros")


def with_text_adapters(den: Denoiser, num_encoders: int, *, single: bool = False,
                       padding: str = "mask") -> Denoiser:
    """``den`` behind :class:`TextAdapted`: ``num_encoders`` text encoders, each mapped to the denoiser's
    context width by its own adapter. Inputs: ``text:<i>`` / ``text_mask:<i>`` (``config.text.name =
    "multi"``) or, with ``single`` (one encoder, e.g. Auffusion's CLIP-only model), ``text`` / ``text_mask``.
    ``padding``: see :class:`TextAdapted`. The denoiser also reads ``text_null`` ([B] bool, optional)."""
    if "text" not in den.cond_keys or not den.context_dim:
        raise ConfigError(f"text adapters need a denoiser that cross-attends to text; this {den.name} has no "
                          f"text context (config.model)")
    if num_encoders < 1:
        raise ConfigError("config.text.encoders is empty: list the text encoders to combine")
    if single and num_encoders != 1:
        raise ConfigError(f"single-input text adapters read one encoder, got {num_encoders}")
    if padding not in TEXT_PADDINGS:
        raise ConfigError(f"config.model.text_padding={padding!r}; expected one of {list(TEXT_PADDINGS)}")
    inputs = ("text",) if single else tuple(f"text:{i}" for i in range(num_encoders))
    keys = [k for k in den.cond_keys if k not in ("text", "text_mask")]
    keys += [m for k in inputs for m in (k, k.replace("text", "text_mask", 1))] + ["text_null"]
    inner = den.dummy_cond

    def dummy_cond(b, shape, length):
        cond = {k: v for k, v in inner(b, shape, length).items() if k not in ("text", "text_mask")}
        cond["text_null"] = jnp.zeros((b,), bool)
        return cond

    module = TextAdapted(den.module.clone(parent=None), int(num_encoders), den.context_dim, inputs, padding)
    return dataclasses.replace(den, module=module, cond_keys=tuple(keys), dummy_cond=dummy_cond)


DENOISERS: dict[str, Callable[[Mapping[str, Any]], Denoiser]] = {"dit": _build_dit, "unet": _build_unet}


def build_denoiser(model_section, inner: Callable[[Denoiser], Denoiser] | None = None) -> Denoiser:
    """``config.model`` -> :class:`Denoiser`; ``name`` (default ``"dit"``) picks the family.
    ``text_adapters=True`` puts one text adapter in front of the denoiser's ``text`` (a single-encoder
    Auffusion model; :func:`with_text_adapters`), ``text_padding`` says how it sees padded positions.
    (Several encoders: :func:`tta_jax.pipelines.tta.denoiser_of` wraps with one adapter per encoder.)
    ``inner``: a wrapper applied to the network inside the text adapters (a conditioner that reads the
    adapted text, e.g. SERST's)."""
    fields = _fields(model_section)
    adapters = fields.pop("text_adapters", False)
    padding = fields.pop("text_padding", "mask")
    name = fields.pop("name", "dit") or "dit"
    if name not in DENOISERS:
        raise ConfigError(f"config.model.name={name!r}; expected one of {sorted(DENOISERS)}")
    if not isinstance(adapters, bool):
        raise ConfigError(f"config.model.text_adapters={adapters!r}; expected true or false")
    den = DENOISERS[name](fields)
    if inner is not None:
        den = inner(den)
    if adapters:
        return with_text_adapters(den, 1, single=True, padding=padding)
    if padding != "mask":
        raise ConfigError(f"config.model.text_padding={padding!r} applies to text adapters: set "
                          f"config.model.text_adapters=True (or config.text.name='multi')")
    return den
