"""Test fixtures: a folder of WAV clips with a ``metadata.csv`` (``path,caption[,label columns]``), the layout
``data_pipeline``'s folder source reads."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np


def write_audio_folder(folder, clips: Sequence[tuple[np.ndarray, Mapping[str, str]]], sample_rate: int) -> str:
    """``clips``: (mono audio [S], {"caption": ..., other columns}) -> ``folder/c{i}.wav`` + ``metadata.csv``
    (columns ``path`` then the first clip's keys, in order). -> ``str(folder)``."""
    import soundfile as sf

    folder = str(folder)
    cols = list(clips[0][1])
    rows = [",".join(["path"] + cols)]
    for i, (audio, meta) in enumerate(clips):
        sf.write(os.path.join(folder, f"c{i}.wav"), np.asarray(audio, np.float32), sample_rate)
        rows.append(",".join([f"c{i}.wav"] + [str(meta[c]) for c in cols]))
    with open(os.path.join(folder, "metadata.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return folder
