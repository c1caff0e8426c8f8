"""Precompute latents (+ text features) into ArrayRecord shards.

  python -m launch.precompute --config data_pipeline/precompute_config.py --out DIR \
      [--config.source=folder --config.source_args.root=/data/x] [--process_index i --process_count n]
  python -m launch.precompute --system configs/ezaudio.py:xl --out DIR --config.source=audiocaps ... \
      [--system.codec.weights=/ckpt/vae/1m.pt --system.text.path=/models/flan-t5-xl]

``--system configs/X.py[:variant]``: the codec and text encoder of that experiment config (its ``codec`` and
``text`` sections, any registry entry: tta_jax/codecs/registry.py, tta_jax/text/registry.py) replace the
precompute config's, and the audio is resampled to that codec's rate; the data then matches what
``launch.train --config configs/X.py`` checks in manifest.json.

Multi-host: every host runs the same command; by default process_index/count come from jax (call
jax.distributed.initialize() first on real multi-host setups, --distributed does it). Each process
encodes its shards; whoever finishes last writes manifest.json. Re-running resumes (finished shards
are kept). Flags are parsed by absl before anything else starts (grain/multiprocessing safe).
"""
from __future__ import annotations

import logging
import os

from absl import flags

from launch import cli

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "data_pipeline", "precompute_config.py")
_CONFIG = cli.define_config_file("config", _DEFAULT_CONFIG, "precompute config file")
_SYSTEM = cli.define_config_file("system", None, "experiment config (configs/X.py[:variant]) whose codec and "
                                 "text sections replace the precompute config's")
_OUT = flags.DEFINE_string("out", None, "output directory", required=True)
_PI = flags.DEFINE_integer("process_index", -1, "this process (-1: jax.process_index())")
_PC = flags.DEFINE_integer("process_count", -1, "number of processes (-1: jax.process_count())")
_DIST = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first")
_PROGRESS = flags.DEFINE_bool("progress", True, "tqdm progress bar")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import jax

    from data_pipeline import build
    from data_pipeline.precompute_config import get_config
    from tta_jax.config import validate_config

    if _DIST.value:
        jax.distributed.initialize()
    c = _CONFIG.value
    validate_config(c, schema=get_config())  # unknown keys / wrong types fail loudly, by name
    pi = jax.process_index() if _PI.value < 0 else _PI.value
    pc = jax.process_count() if _PC.value < 0 else _PC.value
    out = _OUT.value
    cli.check_output_dir(out, "--out")
    os.makedirs(out, exist_ok=True)
    m = build.run(c, out, system=_SYSTEM.value, process_index=pi, process_count=pc, progress=_PROGRESS.value)
    if m is None:
        logging.info("process %d done; manifest waits for other processes", pi)
    else:
        logging.info("done: %d records in %d shards, %d skipped -> %s", m["num_records"],
                     len(m["shards"]), m["num_skipped"], os.path.join(out, "manifest.json"))
        for s in m["skipped"]:
            logging.info("skipped %s: %s", s["key"], s["reason"])


if __name__ == "__main__":
    cli.run(main)
