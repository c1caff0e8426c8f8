"""Default config for `python -m launch.precompute --config data_pipeline/precompute_config.py --out DIR`.

Tiny CPU run (embedded demo set, toy codec, byte tokens; ~1 min on 2 cores):
  python -m launch.precompute --config data_pipeline/precompute_config.py --out /tmp/pre \
      --config.embedded.num_clips=200
Real data: --config.source=folder --config.source_args.root=/data/mydir (metadata.csv inside), or
source=audiocaps|clotho (csv_path, audio_dir), wavcaps (json_path, audio_dir), tfds (name,
manual_dir).

Codec and text encoder: any entry of the registries (tta_jax/codecs/registry.py: toy, mel, oobleck,
kl_mel_image, audioldm_mel_vae; tta_jax/text/registry.py: none, bytes, bytes_embed, minilm, minilm_tokens,
t5, clip, clap, multi). The sections below hold the settings of toy + mel and of the byte / MiniLM
encoders (--config.codec.name=mel --config.text.name=minilm --config.text.max_len=32); a system's own
sections come with --system configs/<system>.py[:variant] (e.g. Oobleck + FLAN-T5 for configs/ezaudio.py),
overridden as --system.codec.weights=/ckpt/1m.pt. audio.sample_rate 0 follows the codec's rate.
"""
import ml_collections
from ml_collections import config_dict


def get_config():
    c = ml_collections.ConfigDict()
    c.source = "embedded"
    c.source_args = ml_collections.ConfigDict(dict(
        root="", captions="", csv_path="", json_path="", audio_dir="", split="", name="",
        manual_dir="", all_captions=True))
    c.embedded = ml_collections.ConfigDict(dict(num_clips=3000, seed=0, duration=4.0, workers=1,
                                                two_event_prob=0.25))
    c.audio = ml_collections.ConfigDict(dict(
        sample_rate=0, max_seconds=30.0, crop_seconds=10.0, crop="random",
        normalize=config_dict.placeholder(float), seed=0))
    c.audio.normalize = 0.95
    c.codec = ml_collections.ConfigDict(dict(name="toy", sample_rate=22050, hop=256, bands=7,  # toy codec
                                              model="universal", mean=-5.0, std=2.5))  # mel
    c.text = ml_collections.ConfigDict(dict(name="bytes", max_len=64))
    # references, on when the --system config's conditioner reads reference audio (K = its reference.count):
    # mode "pairs" (SERST): each clip gets K other clips with the same `label` (data_pipeline/references.py);
    # "concatenate" / "overlay" (DreamAudio): each target is built from K clips of distinct labels, in sequence
    # or mixed into a background (data_pipeline/customized.py; background_gain for overlay).
    # caption_prob of the target captions become the source's label-free caption (embedded: no instrument named)
    c.references = ml_collections.ConfigDict(dict(label="family", caption_prob=0.0, seed=0, mode="pairs",
                                                  background_gain=0.5))
    c.shard_size = 256
    c.batch_size = 16
    c.latent_dtype = "float32"
    c.decode_threads = 2
    c.throttle_s = 0.0
    return c
