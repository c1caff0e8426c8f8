"""Reference-style data (SERST): pair each target clip with *other* clips of the same sound event.

    examples = pair_references(examples, label="family", count=1, seed=0)

For every example whose ``labels[label]`` is set, ``count`` different clips with the same label are drawn
(seeded by the example's key, so the pairing does not depend on the order or the number of processes) and
attached as ``Example.refs``; precompute then stores their features (e.g. 2 s log-mels) as ``ref:<name>``
[K, ...] next to the target's latents. Examples without the label, with a second event (``labels["2_" +
label]`` set: the reference would be ambiguous), or whose event has fewer than ``count + 1`` clips are left
out (counted in the returned report). Works for any source with event labels (a folder's metadata.csv
columns, the embedded dataset's ``family``).

``caption_fn`` / ``caption_prob``: with probability ``caption_prob`` (seeded by key) the target's caption is
replaced by ``caption_fn(labels)`` (e.g. the embedded set's :func:`tta_jax.data.embedded.neutral_caption`,
which leaves the instrument out), so that only the reference says what the event sounds like and the adapter
has something to learn from it.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from typing import Callable, Sequence

import numpy as np

from data_pipeline.sources import Example


def _seed(key: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{key}".encode()).digest()[:8], "little")


def _ref(target: Example, ref: Example, j: int) -> Example:
    """The reference clip as its own Example; its key names the pair so each target gets its own crop."""
    return dataclasses.replace(ref, key=f"{target.key}~ref{j}~{ref.key}", refs=(), split=target.split)


def pair_references(examples: Sequence[Example], *, label: str, count: int = 1, seed: int = 0,
                    caption_fn: Callable[[dict], str] | None = None, caption_prob: float = 0.0
                    ) -> tuple[list[Example], dict]:
    """-> (examples with ``refs`` attached, report {"kept", "no_label", "two_events", "alone"})."""
    if count < 1:
        raise ValueError(f"count={count}: expected at least one reference per example")
    if caption_prob > 0 and caption_fn is None:
        raise ValueError("caption_prob > 0 needs caption_fn")
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    report = {"kept": 0, "no_label": 0, "two_events": 0, "alone": 0}
    usable = []
    for i, ex in enumerate(examples):
        value = str(ex.labels.get(label, "") or "")
        if not value:
            report["no_label"] += 1
        elif ex.labels.get("2_" + label):
            report["two_events"] += 1
        else:
            groups[(ex.split, value)].append(i)   # references come from the target's own split
            usable.append(i)
    out = []
    for i in usable:
        ex = examples[i]
        pool = sorted((j for j in groups[(ex.split, str(ex.labels[label]))] if j != i),
                      key=lambda j: examples[j].key)   # by key: the draw does not depend on the input order
        if len(pool) < count:
            report["alone"] += 1
            continue
        rng = np.random.default_rng(_seed(ex.key, f"ref{seed}"))
        picks = rng.choice(len(pool), size=count, replace=False)
        refs = tuple(_ref(ex, examples[pool[p]], j) for j, p in enumerate(picks))
        caption = ex.caption
        if caption_prob > 0 and np.random.default_rng(_seed(ex.key, f"cap{seed}")).uniform() < caption_prob:
            caption = caption_fn(dict(ex.labels))
        out.append(dataclasses.replace(ex, refs=refs, caption=caption))
        report["kept"] += 1
    return out, report


__all__ = ["pair_references"]
