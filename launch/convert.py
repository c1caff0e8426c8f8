"""Convert an official PyTorch / Hugging Face checkpoint into a tta-jax param tree.

  python -m launch.convert --family ezaudio_dit --src ezaudio_l.pt --config '{"preset": "ezaudio_l"}' \
      --out ckpt/ezaudio_l
  python -m launch.convert --family diffusers_unet --src auffusion/unet --out ckpt/auffusion_unet
  python -m launch.convert --family oobleck --src ezaudio_vae.pt --config '"ezaudio_24k"' --out ckpt/vae
  python -m launch.convert --family auffusion --src /ckpt/auffusion --out runs/auffusion
  python -m launch.sample --workdir runs/auffusion --prompt "a dog barks" --out samples/

``--config`` is JSON (inline or a path to a .json file): model config fields, a preset name, or nothing
for families whose folders carry their own config.json. Output: ``params.safetensors`` (flat, keys joined
by '/') + ``conversion.json`` (family, source, config, sha256 of the source) or, with ``--format orbax``,
an Orbax ``PyTreeCheckpointer`` directory. Converters are strict: a renamed, missing, unexpected or
mis-shaped key stops the conversion with its name (``--allow_partial`` reports instead).

``--family auffusion`` reads a whole released Auffusion folder (condition_config.json, unet/, vae/, vocoder/,
text_encoder_<i>/, condition_adapter_<i>/) and writes a sampling workdir instead: ``config.json`` (the
``configs/auffusion.py`` system with the folder's architecture and paths; ``--config '{"system":
"configs/auffusion.py:full", "overrides": ["sampler.num_steps=50"]}'`` to change it), ``checkpoints/0``
(adapters + U-Net) and ``assets/``, so ``launch.sample --workdir OUT`` samples from it. ``--family tango`` does
the same for a released Tango folder (main_config.json, pytorch_model_main.bin, pytorch_model_vae.bin with the
CompVis-named VAE and the vocoder, pytorch_model_stft.bin; ``configs/tango.py``); FLAN-T5's tokenizer is not in
the release: ``--config '{"overrides": ["text.path=/models/flan-t5-large"]}'``.

Families: ezaudio_dit, diffusers_unet, oobleck, kl_vae, hifigan, bigvgan, bert, t5, clip_text, clap_text,
clap_audio, encodec (a transformers EncodecModel folder), auffusion, tango.
"""
from __future__ import annotations

from absl import flags

from launch import cli
from tta_jax.convert.registry import FAMILIES, convert, parse_config  # noqa: F401  (re-exported)

_FAMILY = flags.DEFINE_string("family", None, "model family (see module docstring)", required=True)
_SRC = flags.DEFINE_string("src", None, "checkpoint file or folder", required=True)
_CONFIG = flags.DEFINE_string("config", "", "JSON config (inline or path to .json)")
_OUT = flags.DEFINE_string("out", None, "output directory", required=True)
_FORMAT = flags.DEFINE_enum("format", "safetensors", ["safetensors", "orbax"], "output format")
_PARTIAL = flags.DEFINE_bool("allow_partial", False, "report problems instead of refusing a partial load")


def main(argv):
    del argv
    path = convert(_FAMILY.value, _SRC.value, parse_config(_CONFIG.value), _OUT.value, fmt=_FORMAT.value,
                   strict=not _PARTIAL.value)
    print(f"wrote {path}")


if __name__ == "__main__":
    cli.run(main)
