"""DC-LDM's acoustic prior (arXiv DC-LDM, section 2.2): an AudioGen-style autoregressive LM over EnCodec tokens,
conditioned on text (tta_jax/lm/, trained and sampled by tta_jax/pipelines/codec_lm.py).

Variants (``--config configs/dcldm_lm.py:<variant>``):

- ``full`` (default): the AudioGen-base-sized decoder (:func:`tta_jax.lm.transformer.audiogen_base`: width
  1024, 24 layers, 16 heads, MLP x4, cross-attention to FLAN-T5-Large states, 1024-d) over the tokens of
  AudioGen's 16 kHz EnCodec (``encodec_tokens`` codec, preset ``audiogen_16khz``: 4 codebooks x 2048 codes at
  50 Hz, 2.2 kbps), 10 s clips = 500 frames (503 delayed steps). DC-LDM gives no LM training details; ours
  follow audiocraft's MusicGen/AudioGen recipe: AdamW (b2 0.95, weight decay 0.1), lr 1e-4 with 4000 warm-up
  steps and a cosine decay, clipping 1.0, bf16 compute, 10% caption dropout for CFG; sampling with top-k 250 at
  temperature 1 and CFG 3 (audiocraft's AudioGen defaults). Not run here.
- ``demo`` (CPU experiment, docs/experiments.md): a 4-layer width-128 LM over the tokens of an EnCodec trained
  here (``configs/dcldm_codec.py:tiny``, set ``codec.workdir``), MiniLM text, 4 s clips (200 frames). Measured
  (docs/experiments.md, 2000 embedded clips, 15 min): 2559 steps, masked CE 3.02 (first 50 steps; ln 64 = 4.16
  at chance) -> 2.02, token accuracy 0.33 -> 0.42.
- ``tiny`` (CPU tests): a 2-layer, width-32 LM over 4 codebooks x 16 codes of a random tiny EnCodec
  (400 Hz audio, 100 Hz frames; bandwidth 1.6 kbps -> 4 codebooks), random tiny T5 text (32-d), 12 frames.

Run (accelerator scale; the FLAN-T5 and EnCodec folders converted beforehand):
          python -m launch.precompute --system configs/dcldm_lm.py --out /data/audiocaps_encodec_tokens \\
              --system.codec.weights=/ckpt/encodec_16khz --system.text.path=/ckpt/flan-t5-large \\
              --config.source=audiocaps ...
          python -m launch.train --config configs/dcldm_lm.py --workdir /runs/dcldm_lm \\
              --config.data.precomputed_dir=/data/audiocaps_encodec_tokens \\
              --config.codec.weights=/ckpt/encodec_16khz --config.text.path=/ckpt/flan-t5-large
          python -m launch.sample --workdir /runs/dcldm_lm --prompt "a dog barks" --out /tmp/lm_samples
(the weights paths go into the run's config.json, which sampling reads to encode prompts and decode tokens).
Expected: no published number for this LM alone (DC-LDM reports the diffusion model it conditions: AudioCaps
FD 21.86, KL 1.22 with the AudioGen tokens; the AudioGen paper's base model:
FAD 3.13, KL 2.09 on AudioCaps).
Tiny (tests/test_codec_lm_task.py, 8 random-token clips, batch 4): the masked CE (ln 16 = 2.77 at chance) falls
from ~3.0 (steps 1-5) to ~2.4 (steps 16-20) as the LM memorises the set; ~50 s on a shared 2-core CPU.
"""
import ml_collections

from configs.common import cpu_tiny_trainer, latent_system, variant
from tta_jax.lm.transformer import audiogen_base, tiny

VARIANTS = ("full", "tiny", "demo")


def get_config(arg=None):
    size = variant(arg, VARIANTS, "full", "configs/dcldm_lm.py")
    # config.model holds the CodecLMConfig fields spelled out (no ``preset``/``name`` key: those name a
    # diffusion denoiser to the config checks)
    c = latent_system(f"dcldm_lm_{size}", builder="tta_jax.pipelines.codec_lm:build_task",
                      model=audiogen_base().to_dict(), text={"name": "t5", "path": "", "max_len": 512},
                      codec={"name": "encodec_tokens", "preset": "audiogen_16khz", "weights": "", "bandwidth": 2.2})
    c.sample_pipeline = "tta_jax.pipelines.codec_lm:sample_pipeline"
    c.diffusion.cond_drop_prob = 0.1          # the loader's caption dropout (CFG); no diffusion here
    c.sampler.guidance_scale = 3.0            # the LM's CFG scale
    c.extra.temperature = 1.0
    c.extra.top_k = 250
    c.extra.top_p = 0.0
    c.data.crop_frames = 500                  # 10 s at 50 Hz

    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-4
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 0.1
    c.optimizer.clip_norm = 1.0
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 4000
    c.train.total_steps = 200_000
    c.train.batch_size = 128
    c.train.ema_decay = 0.0
    c.train.compute_dtype = "bfloat16"
    if size == "tiny":
        c.model = ml_collections.ConfigDict(tiny(num_codebooks=4, text_dim=32).to_dict())
        c.codec = ml_collections.ConfigDict({"name": "encodec_tokens", "init": "random", "preset": "tiny",
                                             "bandwidth": 1.6})
        c.text = ml_collections.ConfigDict({"name": "t5", "init": "random", "preset": "tiny", "max_len": 8})
        c.data.crop_frames = 12
        c.extra.top_k = 0
        cpu_tiny_trainer(c, total_steps=200, batch_size=8, lr=3e-3)
        c.optimizer.schedule = "constant"
        c.optimizer.weight_decay = 0.0
    if size == "demo":
        # the CPU experiment's LM (docs/experiments.md): a 4-layer, width-128 decoder over the tokens of the
        # EnCodec trained by configs/dcldm_codec.py:tiny (16 kHz, 50 Hz, 4 x 64 codes), MiniLM text; 4 s clips
        c.model = ml_collections.ConfigDict(tiny(num_codebooks=4, codebook_size=64, width=128, depth=4, heads=4,
                                                 text_dim=384, max_len=256, dropout=0.1).to_dict())
        c.codec = ml_collections.ConfigDict({"name": "encodec_tokens", "workdir": "", "bandwidth": 0.0})
        c.text = ml_collections.ConfigDict({"name": "minilm", "max_len": 32})
        c.data.crop_frames = 200
        c.extra.top_k = 0
        cpu_tiny_trainer(c, total_steps=100_000, batch_size=8, lr=1e-3)   # stopped by time (launch.demo.train)
        c.optimizer.schedule = "constant"
        c.optimizer.weight_decay = 0.0
        c.train.log_every = 50
        c.train.ckpt_every = 500
    return c
