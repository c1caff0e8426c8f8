"""The evaluation suite: loads two sets of clips, embeds them with each backbone, computes the metrics
and records the full protocol. ``launch/evaluate.py`` is the command-line front end.

Metrics and their backbones (pinned; named in every report):

| metric | backbone | input |
|---|---|---|
| FD, KID | PANNs CNN14 16 kHz (``Cnn14_16k_mAP=0.438.pth``), 2048-d embedding | 16 kHz |
| KL (softmax, sigmoid), IS | same model, 527 AudioSet logits; KL pairs clips by file name | 16 kHz |
| FAD | VGGish (torchvggish ``vggish-10086976.pth``), 128-d per 0.96 s patch, no final ReLU, no PCA | 16 kHz |
| CLAP | LAION CLAP (``larger_clap_general``), text-audio cosine | 48 kHz |
| CLAP_A | same, generated-vs-reference audio cosine (paired by name) | 48 kHz |
| in-domain acc / FD | :mod:`tta_jax.eval.indomain` (embedded demo dataset only) | 22.05 kHz |

A backbone whose weights are absent is skipped with the reason recorded; the rest still runs (the
report's ``missing_weights`` says where each was looked for; :func:`no_metric_message` turns that into
what to pass when nothing could run). The in-domain evaluator knows only General-MIDI renders of the
embedded dataset; its report section says so and states which clips its real-vs-real baseline uses.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tta_jax.eval import metrics as M

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif")
WEIGHTS_ENV = "TTA_JAX_EVAL_WEIGHTS"
DEFAULT_FILES = {"cnn14": "Cnn14_16k_mAP=0.438.pth", "vggish": "vggish-10086976.pth", "clap": "larger_clap_general"}
WEIGHT_FLAGS = {  # flag argument, what it is, the metrics it enables
    "cnn14": ("FILE", "PANNs CNN14 16 kHz checkpoint", "FD, KID, KL, IS"),
    "vggish": ("FILE", "torchvggish checkpoint", "FAD"),
    "clap": ("DIR", "HF-format laion/larger_clap_general folder", "CLAP, CLAP_A"),
}


def weights_root() -> str:
    return os.environ.get(WEIGHTS_ENV, os.path.expanduser("~/.cache/tta_jax/eval_weights"))


# --------------------------------------------------------------------------------------------------
# Clip sets
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ClipSet:
    """Named mono clips at their native rate; optional captions / label rows keyed by name (stem)."""

    names: list  # file stems, unique
    audio: list  # list of float32 [T]
    sample_rates: list
    source: str
    captions: dict = dataclasses.field(default_factory=dict)
    rows: dict = dataclasses.field(default_factory=dict)
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def at(self, sr: int) -> list:
        """All clips resampled to ``sr`` (cached)."""
        if sr not in self._cache:
            from tta_jax.audio.io import resample

            self._cache[sr] = [resample(a, s, sr) for a, s in zip(self.audio, self.sample_rates)]
        return self._cache[sr]

    def __len__(self):
        return len(self.names)


def _read_metadata(directory: str) -> tuple[dict, dict]:
    """captions / rows by stem from ``metadata.csv`` (path/key + caption) or ``captions.json``/``.jsonl``."""
    caps, rows = {}, {}
    for base in (directory, os.path.dirname(os.path.normpath(directory))):
        meta = os.path.join(base, "metadata.csv")
        if os.path.exists(meta):
            with open(meta, newline="") as f:
                for r in csv.DictReader(f):
                    key = os.path.splitext(os.path.basename(r.get("path") or r.get("file") or r.get("key", "")))[0]
                    if key:
                        rows[key] = r
                        if r.get("caption"):
                            caps[key] = r["caption"]
            break
    return caps, rows


def read_captions(path: str) -> dict:
    """Captions file: CSV with (path|file|key|name, caption) columns, JSON {name: caption}, or JSONL."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"captions file not found: {path}")
    out = {}
    stem = lambda s: os.path.splitext(os.path.basename(str(s)))[0]  # noqa: E731
    if path.endswith(".json"):
        with open(path) as f:
            return {stem(k): v for k, v in json.load(f).items()}
    if path.endswith(".jsonl"):
        with open(path) as f:
            for i, line in enumerate(f):
                if line.strip():
                    r = json.loads(line)
                    name = r.get("path") or r.get("file") or r.get("key") or r.get("name")
                    if name is None or "caption" not in r:
                        raise ValueError(f"{path}:{i + 1}: need a path/file/key/name and a caption field")
                    out[stem(name)] = r["caption"]
        return out
    with open(path, newline="") as f:
        for i, r in enumerate(csv.DictReader(f)):
            name = r.get("path") or r.get("file") or r.get("key") or r.get("name")
            if name is None or "caption" not in r:
                raise ValueError(f"{path}: row {i + 1} needs a path/file/key/name column and a caption column")
            out[stem(name)] = r["caption"]
    return out


def load_folder(directory: str, limit: int | None = None) -> ClipSet:
    """All audio files of a folder (recursively if it has an ``audio/`` subfolder), sorted by name."""
    from tta_jax.audio.io import load_audio

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"audio folder not found: {directory}")
    root = os.path.join(directory, "audio") if os.path.isdir(os.path.join(directory, "audio")) else directory
    files = sorted(f for f in os.listdir(root) if f.lower().endswith(AUDIO_EXTS))
    if not files:
        raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_EXTS)}) in {root}")
    if limit:
        files = files[:limit]
    names, audio, srs = [], [], []
    for f in files:
        stem = os.path.splitext(f)[0]
        if stem in names:
            raise ValueError(f"{root}: two files share the name {stem!r}; names must be unique to pair clips")
        a, sr = load_audio(os.path.join(root, f))
        names.append(stem)
        audio.append(a)
        srs.append(sr)
    caps, rows = _read_metadata(root)
    return ClipSet(names, audio, srs, os.path.abspath(directory), caps, rows)


def load_embedded(spec: str = "embedded", split: str = "test", limit: int | None = None) -> ClipSet:
    """``embedded[:NUM_CLIPS[:SEED]]``: the rendered split of the embedded demo dataset."""
    from tta_jax.data import embedded as E

    parts = spec.split(":")
    cfg = E.EmbeddedConfig(num_clips=int(parts[1]) if len(parts) > 1 else E.EmbeddedConfig.num_clips,
                           seed=int(parts[2]) if len(parts) > 2 else 0)
    table = E._split_table(cfg.num_clips, cfg.seed, cfg.valid_frac, cfg.test_frac)
    idx = [i for i, s in enumerate(table) if s == split][: limit or None]
    names, audio, rows, caps = [], [], {}, {}
    for row, a in E.iter_embedded(cfg, indices=idx):
        names.append(row["key"])
        audio.append(a)
        rows[row["key"]] = row
        caps[row["key"]] = row["caption"]
    src = f"tta_jax.data.embedded(num_clips={cfg.num_clips}, seed={cfg.seed}, split={split})"
    return ClipSet(names, audio, [cfg.sample_rate] * len(names), src, caps, rows)


# --------------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------------
def sha256_of(path: str) -> str:
    """sha256 of a file, or of the sorted weight files of a directory."""
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path)
        if f.endswith((".safetensors", ".bin", ".pth", ".pt", ".ckpt")))
    for fp in files:
        with open(fp, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def resolve_weights(name: str, explicit: str | None) -> tuple[str | None, str]:
    """(path or None, how it was looked for)."""
    if explicit:
        return (explicit if os.path.exists(explicit) else None), f"--{name} {explicit}"
    p = os.path.join(weights_root(), DEFAULT_FILES[name])
    return (p if os.path.exists(p) else None), f"{p} (set --{name} or ${WEIGHTS_ENV})"


def _group_by_length(clips: Sequence[np.ndarray]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(clips):
        groups.setdefault(len(c), []).append(i)
    return groups


def embed_batched(fn: Callable, clips: Sequence[np.ndarray], batch: int = 8) -> list:
    """Runs ``fn([B, T]) -> pytree`` on equal-length groups; returns per-clip outputs in input order."""
    import jax

    out: list = [None] * len(clips)
    for _, idx in sorted(_group_by_length(clips).items()):
        for s in range(0, len(idx), batch):
            sel = idx[s:s + batch]
            x = np.stack([clips[i] for i in sel]).astype(np.float32)
            if len(idx) > batch and len(sel) < batch:  # pad the last batch: one compile per clip length
                x = np.concatenate([x, np.zeros((batch - len(sel),) + x.shape[1:], np.float32)], 0)
            r = jax.tree.map(np.asarray, fn(x))
            for j, i in enumerate(sel):
                out[i] = jax.tree.map(lambda x: x[j], r)
    return out


# --------------------------------------------------------------------------------------------------
# Suite
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SuiteConfig:
    cnn14: str | None = None
    vggish: str | None = None
    clap: str | None = None
    captions: str | None = None
    indomain: bool | None = None  # None: on when the reference is the embedded dataset
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    is_splits: int = 10
    seed: int = 2020
    batch: int = 8


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for p in ("tta_jax", "jax", "flax", "numpy", "scipy", "librosa", "soxr", "torch", "transformers"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


BACKBONES = ("cnn14", "vggish", "clap")  # backbones with third-party weights, each loaded by loaders[name]


def run_suite(gen: ClipSet, ref: ClipSet, cfg: SuiteConfig = SuiteConfig(), log=print,
              loaders: Mapping[str, Callable[[str], Any]] | None = None) -> dict:
    """Computes every metric it can; returns the report dict (protocol, metrics, skipped).

    ``loaders[name](path)`` loads backbone ``name`` of :data:`BACKBONES` from its weights: ``"cnn14"`` and
    ``"vggish"`` -> flax variables, ``"clap"`` -> a :class:`tta_jax.eval.clap.ClapEmbedder`. The converters
    that read those checkpoints live in ``tta_jax.convert`` (which this package never imports): pass
    :data:`tta_jax.convert.eval_backbones.LOADERS`, as ``launch.evaluate`` does. Raises ValueError naming
    the backbone when its weights are found but ``loaders`` has no entry for it.
    """
    t0 = time.time()
    found = {name: resolve_weights(name, getattr(cfg, name)) for name in BACKBONES}
    no_loader = [n for n, (path, _) in found.items() if path is not None and n not in (loaders or {})]
    if no_loader:
        raise ValueError(f"run_suite: weights found for {', '.join(no_loader)} but loaders= has no entry for "
                         f"{'it' if len(no_loader) == 1 else 'them'}; pass "
                         "loaders=tta_jax.convert.eval_backbones.LOADERS")
    gi, ri, missing = M.pair_by_name(gen.names, ref.names)
    metrics: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    backbones: dict[str, Any] = {}
    missing_weights: dict[str, str] = {}
    captions = dict(ref.captions)
    captions.update(gen.captions)
    if cfg.captions:
        captions.update(read_captions(cfg.captions))
    protocol = {
        "generated": {"source": gen.source, "clips": len(gen)},
        "reference": {"source": ref.source, "clips": len(ref)},
        "pairing": {"rule": "file stem", "pairs": len(gi), "reference_without_generated": len(missing)},
        "captions": {"source": cfg.captions or ("metadata of the folders" if captions else None),
                     "choice": "one caption per clip, as given by name (no random re-draw)",
                     "available_for_generated": sum(n in captions for n in gen.names)},
        "kid": {"subsets": cfg.kid_subsets, "subset_size": min(cfg.kid_subset_size, len(gen), len(ref)),
                "degree": 3, "gamma": "1/D", "coef0": 1, "seed": cfg.seed},
        "inception_score": {"splits": min(cfg.is_splits, len(gen)), "shuffle_seed": cfg.seed},
        "kl": {"direction": "KL(reference || generated)", "eps": 1e-6, "pairing": "file stem"},
    }

    # ---- PANNs CNN14: FD, KID, KL, IS
    path, how = found["cnn14"]
    if path is None:
        missing_weights["cnn14"] = how
        for k in ("fd_panns", "kid_panns", "kl_softmax", "kl_sigmoid", "is_panns"):
            skipped[k] = f"PANNs CNN14 weights not found at {how}"
    else:
        from tta_jax.eval import panns

        log(f"[evaluate] PANNs CNN14 from {path}")
        fn = panns.make_embed_fn(loaders["cnn14"](path))
        fg = embed_batched(fn, gen.at(16000), cfg.batch)
        fr = embed_batched(fn, ref.at(16000), cfg.batch)
        eg, er = np.stack([o["embedding"] for o in fg]), np.stack([o["logits"] for o in fg])
        rg, rr = np.stack([o["embedding"] for o in fr]), np.stack([o["logits"] for o in fr])
        backbones["panns_cnn14"] = {"checkpoint": os.path.abspath(path), "sha256": sha256_of(path),
                                    "sample_rate": 16000, "front_end": "STFT 512 / hop 160 / 64 mel 50-8000 Hz",
                                    "features": "2048-d embedding (FD, KID), 527 logits (KL, IS)"}
        _try(metrics, skipped, "fd_panns", lambda: M.frechet_distance(eg, rg))
        _try(metrics, skipped, "kid_panns", lambda: M.kernel_distance(
            eg, rg, subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size, seed=cfg.seed))
        if gi:
            kl = M.kl_divergence(er, rr, gen.names, ref.names)
            metrics.update(kl_softmax=kl["kl_softmax"], kl_sigmoid=kl["kl_sigmoid"])
        else:
            skipped["kl_softmax"] = skipped["kl_sigmoid"] = "no generated file name matches a reference name"
        _try(metrics, skipped, "is_panns", lambda: M.inception_score(
            er, splits=min(cfg.is_splits, len(er)), seed=cfg.seed))

    # ---- VGGish: FAD
    path, how = found["vggish"]
    if path is None:
        missing_weights["vggish"] = how
        skipped["fad_vggish"] = f"VGGish weights not found at {how}"
    else:
        from tta_jax.eval import vggish

        log(f"[evaluate] VGGish from {path}")
        fn = vggish.make_embed_fn(loaders["vggish"](path))
        vg = np.concatenate(embed_batched(fn, _min_len(gen.at(16000), 15600), cfg.batch), 0)
        vr = np.concatenate(embed_batched(fn, _min_len(ref.at(16000), 15600), cfg.batch), 0)
        backbones["vggish"] = {"checkpoint": os.path.abspath(path), "sha256": sha256_of(path), "sample_rate": 16000,
                               "features": "128-d per 0.96 s patch, no final ReLU, no PCA (audioldm_eval FAD)",
                               "patches": [int(len(vg)), int(len(vr))]}
        _try(metrics, skipped, "fad_vggish", lambda: M.frechet_audio_distance(vg, vr))

    # ---- CLAP: CLAP score, CLAP_A
    path, how = found["clap"]
    if path is None:
        missing_weights["clap"] = how
        skipped["clap"] = skipped["clap_a"] = f"CLAP checkpoint directory not found at {how}"
    else:
        try:
            from tta_jax.eval.clap import CLAP_SR

            log(f"[evaluate] CLAP from {path}")
            clap = loaders["clap"](path)
            ag = clap.embed_audio(gen.at(CLAP_SR), CLAP_SR, cfg.batch)
            backbones["clap"] = {"checkpoint": os.path.abspath(path), "sha256": sha256_of(path),
                                 "sample_rate": CLAP_SR, "runtime": getattr(clap, "runtime", "tta_jax JAX"),
                                 "crop": "first 10 s, repeat-pad shorter clips"}
            with_cap = [i for i, n in enumerate(gen.names) if n in captions]
            if with_cap:
                te = clap.embed_text([captions[gen.names[i]] for i in with_cap])
                metrics["clap"] = M.clap_score(te, ag[with_cap])
                metrics["clap_clips"] = len(with_cap)
            else:
                skipped["clap"] = "no captions for the generated clips (give --captions or a metadata.csv)"
            if gi:
                ar = clap.embed_audio([ref.at(CLAP_SR)[i] for i in ri], CLAP_SR, cfg.batch)
                metrics["clap_a"] = M.clap_audio_score(ag[gi], ar)
            else:
                skipped["clap_a"] = "no generated file name matches a reference name"
        except Exception as e:  # noqa: BLE001 - report and go on
            skipped.setdefault("clap", f"CLAP failed: {type(e).__name__}: {e}")
            skipped.setdefault("clap_a", skipped["clap"])

    # ---- in-domain evaluator (embedded demo dataset)
    want_indomain = cfg.indomain if cfg.indomain is not None else _is_embedded(ref)
    if want_indomain:
        protocol["indomain"] = _indomain(gen, ref, gi, ri, metrics, skipped, backbones, log, cfg.seed)

    return {"metrics": metrics, "skipped": skipped, "missing_weights": missing_weights,
            "protocol": dict(protocol, backbones=backbones), "versions": versions(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - t0, 1)}


def _min_len(clips, n):
    return [np.pad(c, (0, max(0, n - len(c)))) for c in clips]


def _try(metrics, skipped, name, fn):
    try:
        r = fn()
        if isinstance(r, dict):
            metrics.update({f"{name}_{k.split('_')[-1]}" if k.endswith(("mean", "std")) else k: v
                            for k, v in r.items()})
        else:
            metrics[name] = r
    except ValueError as e:
        skipped[name] = str(e)


def _is_embedded(clips: ClipSet) -> bool:
    return clips.source.startswith("tta_jax.data.embedded(")


def _heldout_real(ref: ClipSet, n: int, log) -> tuple[ClipSet | None, str]:
    """Up to ``n`` real clips disjoint from an embedded reference: the other held-out split of the same
    dataset (valid for a test reference, else test), never seen by the in-domain evaluator's training.
    -> (the clips or None, what they are)."""
    import re

    m = re.match(r"tta_jax\.data\.embedded\(num_clips=(\d+), seed=(\d+), split=(\w+)\)", ref.source)
    if not m or n < 2:
        return None, ""
    num, seed, split = int(m.group(1)), int(m.group(2)), m.group(3)
    other = "valid" if split != "valid" else "test"
    try:
        held = load_embedded(f"embedded:{num}:{seed}", other, n)
    except Exception as e:  # noqa: BLE001 - fall back to the halves of the reference
        log(f"[evaluate] in-domain baseline: could not render the {other} split ({type(e).__name__}: {e}); "
            "using halves of the reference")
        return None, ""
    if len(held) < 2:
        return None, ""
    return held, f"the embedded dataset's {other} split ({held.source})"


def _indomain(gen, ref, gi, ri, metrics, skipped, backbones, log, seed: int = 2020) -> dict:
    """In-domain accuracy and FD (with its real-vs-real baseline) into ``metrics``; -> the protocol entry
    (the domain note, and which clips the comparison, the baseline and the size-matched FD use)."""
    from tta_jax.eval import indomain as I

    info: dict[str, Any] = {"note": I.DOMAIN_NOTE}
    if not _is_embedded(ref):
        info["warning"] = (f"the reference ({ref.source}) is not the embedded dataset: the in-domain accuracies "
                           "and FDs of this report do not measure anything meaningful about this audio")
    try:
        ev = I.get_or_train()
    except Exception as e:  # noqa: BLE001
        skipped["indomain"] = f"in-domain evaluator unavailable: {type(e).__name__}: {e}"
        return info
    log("[evaluate] in-domain evaluator")
    mg = I.logmel(np.stack(_fix_len(gen.at(I.SAMPLE_RATE))))
    mr = I.logmel(np.stack(_fix_len(ref.at(I.SAMPLE_RATE))))
    backbones["indomain"] = {"model": "tta_jax.eval.indomain.InDomainNet", "sample_rate": I.SAMPLE_RATE,
                             "front_end": "80-bin log-mel, hop 256 (HIFIGAN_22K)", **ev.info}
    og, orf = ev.predict(mg), ev.predict(mr)
    rows = [ref.rows.get(gen.names[i]) or gen.rows.get(gen.names[i]) for i in gi]
    if gi and all(rows):
        labels = I.labels_from_rows(rows)
        acc = I.accuracy({k: v[gi] for k, v in og.items()}, labels)
        metrics.update({f"indomain_{k}": v for k, v in acc.items()})
        ref_acc = I.accuracy({k: v[ri] for k, v in orf.items()}, labels)
        metrics.update({f"indomain_reference_{k}": v for k, v in ref_acc.items() if k != "n"})
    else:
        skipped["indomain_acc"] = "generated clips are not named after labelled reference clips"
    real_emb, real_source = None, ""
    if _is_embedded(ref):  # real clips beyond the reference: a baseline of the comparison's own sizes
        held, real_source = _heldout_real(ref, len(gen), log)
        if held is not None:
            real_emb = ev.predict(I.logmel(np.stack(_fix_len(held.at(I.SAMPLE_RATE)))))["embedding"]
    try:
        fd, proto = I.fd_with_baseline(og["embedding"], orf["embedding"], real_emb, real_source=real_source,
                                       seed=seed)
    except ValueError as e:
        skipped["indomain_fd"] = str(e)
        return info
    metrics.update({f"indomain_{k}": v for k, v in fd.items()})
    info.update(proto)
    return info


def _fix_len(clips, seconds: float = 4.0, sr: int = 22050):
    n = int(seconds * sr)
    return [np.pad(c, (0, max(0, n - len(c))))[:n] for c in clips]


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
_NAMES = {"fd_panns": "FD (PANNs CNN14)", "kid_panns_mean": "KID mean (PANNs)", "kid_panns_std": "KID std (PANNs)",
          "kl_softmax": "KL softmax (PANNs)", "kl_sigmoid": "KL sigmoid (PANNs)", "is_panns_mean": "IS mean (PANNs)",
          "is_panns_std": "IS std (PANNs)", "fad_vggish": "FAD (VGGish)", "clap": "CLAP score (LAION CLAP)",
          "clap_a": "CLAP_A (LAION CLAP)", "indomain_fd": "in-domain FD (generated vs reference)",
          "indomain_fd_real_vs_real": "in-domain FD, real-vs-real baseline",
          "indomain_fd_matched": "in-domain FD, generated vs reference at the baseline's sizes"}


def no_metric_message(report: Mapping[str, Any]) -> str:
    """What to pass when no metric could run: the weights not found (flag, file name under
    ``$TTA_JAX_EVAL_WEIGHTS``), or else the reasons the metrics were skipped."""
    missing = report.get("missing_weights", {})
    lines = ["no metric could run."]
    if missing:
        lines.append("Embedder weights not found (nothing is downloaded); give one or more of:")
        for name, (arg, what, enables) in WEIGHT_FLAGS.items():
            if name in missing:
                lines.append(f"  --{name} {arg}   {what} ({DEFAULT_FILES[name]}): {enables}; looked at {missing[name]}")
        names = ", ".join(DEFAULT_FILES[n] + ("/" if n == "clap" else "") for n in WEIGHT_FLAGS if n in missing)
        lines.append(f"or put them in ${WEIGHTS_ENV} (now {weights_root()}) under these names: {names}.")
        lines.append("For the embedded demo dataset, --reference embedded (or --indomain on) also runs the "
                     "in-domain evaluator, which needs no downloaded weights.")
    other = {k: v for k, v in report.get("skipped", {}).items() if not any(h in v for h in missing.values())}
    if other:
        lines.append("Other metrics skipped: " + "; ".join(f"{k}: {v}" for k, v in other.items()))
    return "\n".join(lines)


def to_markdown(report: Mapping[str, Any]) -> str:
    p = report["protocol"]
    lines = ["# Evaluation report", "",
             f"- generated: `{p['generated']['source']}` ({p['generated']['clips']} clips)",
             f"- reference: `{p['reference']['source']}` ({p['reference']['clips']} clips)",
             f"- pairs by {p['pairing']['rule']}: {p['pairing']['pairs']}",
             f"- captions: {p['captions']['source']} ({p['captions']['choice']}); "
             f"{p['captions']['available_for_generated']} generated clips have one",
             f"- date: {report['date']}, {report['seconds']} s", "", "| metric | value |", "|---|---|"]
    names = dict(_NAMES)
    ind = p.get("indomain") or {}
    for key, clips in (("indomain_fd", "comparison_clips"), ("indomain_fd_real_vs_real", "baseline_clips"),
                       ("indomain_fd_matched", "matched_clips")):
        if clips in ind:
            names[key] = f"{names[key]} ({ind[clips][0]} vs {ind[clips][1]} clips)"
    for k, v in report["metrics"].items():
        lines.append(f"| {names.get(k, k)} | {v:.6g} |" if isinstance(v, float) else f"| {names.get(k, k)} | {v} |")
    ind = p.get("indomain")
    if ind:
        lines += ["", "## In-domain evaluator", "", f"- **note**: {ind['note']}"]
        lines += [f"- **{k}**: {ind[k]}" for k in ("warning", "comparison", "baseline", "matched") if k in ind]
    if not report["metrics"]:
        lines += ["", "## No metric could run", "", "```", no_metric_message(report), "```"]
    if report["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- **{k}**: {v}" for k, v in report["skipped"].items()]
    lines += ["", "## Backbones", ""]
    for k, v in p["backbones"].items():
        lines.append(f"- **{k}**: " + ", ".join(f"{a}={b}" for a, b in v.items()))
    if not p["backbones"]:
        lines.append("- none available")
    lines += ["", "## Protocol", "", "```json", json.dumps({k: v for k, v in p.items() if k != "backbones"}, indent=1),
              "```", "", "## Versions", "", ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out: str) -> tuple[str, str]:
    """Writes ``out`` (JSON) and the Markdown next to it (same stem, ``.md``)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1, default=float)
    md = os.path.splitext(out)[0] + ".md"
    with open(md, "w") as f:
        f.write(to_markdown(report))
    return out, md
