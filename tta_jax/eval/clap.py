"""LAION CLAP embedder for the CLAP score (text-audio) and CLAP_A (audio-audio, DreamAudio).

Protocol: ``laion/larger_clap_general`` (HTSAT audio tower + RoBERTa text tower, 512-d joint space),
audio resampled to 48 kHz, features from the checkpoint's own ``ClapFeatureExtractor`` config
(repeat-padding to 10 s; clips longer than 10 s are cut to their first 10 s here so the score is
deterministic, instead of the extractor's random crop), embeddings L2-normalised.

Status: this backend runs the model with PyTorch ``transformers.ClapModel`` loaded from a local
directory in Hugging Face format (nothing is downloaded). A linen port of the HTSAT tower is not done
yet; the JAX-side protocol (resampling, cropping, pairing, scores) is independent of that choice.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

CLAP_SR = 48000
CLAP_MAX_S = 10.0


def _require_torch():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on install
        raise ImportError("the CLAP backend needs torch + transformers (pip install 'tta_jax[parity]')") from e


class ClapEmbedder:
    """``embed_audio(list of [T] arrays, sr) -> [N, D]``, ``embed_text(list of str) -> [N, D]`` (unit norm)."""

    def __init__(self, model, feature_extractor, tokenizer, name: str = "clap"):
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def from_pretrained(cls, directory: str) -> "ClapEmbedder":
        """Loads a local HF-format CLAP directory (config.json, model weights, preprocessor and tokenizer
        files), e.g. a snapshot of ``laion/larger_clap_general``."""
        _require_torch()
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        if not os.path.isdir(directory):
            raise FileNotFoundError(f"CLAP checkpoint directory not found: {directory}")
        model = ClapModel.from_pretrained(directory, local_files_only=True)
        fe = ClapFeatureExtractor.from_pretrained(directory, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        return cls(model, fe, tok, name=os.path.basename(os.path.normpath(directory)))

    def prepare_audio(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """Mono [T] at ``sr`` -> float32 [T'] at 48 kHz, cut to the first 10 s."""
        from tta_jax.audio.io import resample

        x = resample(np.asarray(wav, np.float32), sr, CLAP_SR)
        return x[: int(CLAP_MAX_S * CLAP_SR)]

    def embed_audio(self, wavs: Sequence[np.ndarray], sr: int, batch: int = 8) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(wavs), batch):
            xs = [self.prepare_audio(w, sr) for w in wavs[i:i + batch]]
            feats = self.feature_extractor(xs, sampling_rate=CLAP_SR, return_tensors="pt")
            with torch.no_grad():
                r = self.model.get_audio_features(**feats)
            emb = r.pooler_output if hasattr(r, "pooler_output") else r
            out.append(emb.float().numpy())
        return np.concatenate(out, 0)

    def embed_text(self, texts: Sequence[str], batch: int = 32) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), batch):
            tok = self.tokenizer(list(texts[i:i + batch]), padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                r = self.model.get_text_features(**tok)
            emb = r.pooler_output if hasattr(r, "pooler_output") else r
            out.append(emb.float().numpy())
        return np.concatenate(out, 0)
