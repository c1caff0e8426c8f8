"""The reference encoder pretrained as an event classifier (tta_jax/train/reference_encoder.py) and loaded into a
SERST adapter through ``config.train.init_parts``."""
import json
import os

import jax
import numpy as np
import pytest
from flax.core import meta

from tta_jax.errors import ConfigError
from tta_jax.train import partial
from tta_jax.data.crops import MelCropIterator


def test_labelled_crops_keep_each_clip_with_its_label():
    mels = [np.full((30 + 5 * i, 4), float(i), np.float32) for i in range(6)]
    it = MelCropIterator(mels, 8, 20, seed=3, labels=list(range(6)))
    batch = next(it)
    assert batch["mel"].shape == (8, 20, 4) and batch["label"].shape == (8,)
    np.testing.assert_array_equal(batch["mel"][:, 0, 0], batch["label"].astype(np.float32))
    plain = MelCropIterator(mels, 8, 20, seed=3)          # labels do not change the crops drawn
    np.testing.assert_array_equal(next(plain), batch["mel"])
    with pytest.raises(ValueError, match="5 labels for 6 clips"):
        MelCropIterator(mels, 8, 20, labels=[0] * 5)


def test_loss_separates_two_classes():
    """The normalised-softmax classifier learns two trivially different classes (a loud and a quiet band)."""
    import optax

    from tta_jax.conditioners.serst import encoder_config
    from tta_jax.train.reference_encoder import EncoderClassifier, make_loss_fn

    enc = encoder_config({"preset": "tiny", "out_dim": 16, "input_norm": "none"})
    model = EncoderClassifier(enc, 2)
    rng = np.random.default_rng(0)
    mel = rng.normal(size=(8, 16, 80)).astype(np.float32)
    label = np.arange(8) % 2
    mel[label == 1, :, :20] += 4.0
    batch = {"mel": mel, "label": label}
    params = model.init(jax.random.PRNGKey(0), mel[:1])["params"]
    loss_fn = make_loss_fn(model)
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(p, o):
        (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(p, batch, None)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss, m

    first = None
    for _ in range(30):
        params, opt, loss, m = step(params, opt)
        first = float(loss) if first is None else first
    assert float(loss) < 0.5 * first and float(m["accuracy"]) == 1.0


@pytest.mark.slow  # ~40 s: renders 80 embedded clips, 3 training steps, then the SERST init from the run
def test_pretrained_encoder_run_loads_into_a_serst_adapter(tmp_path):
    from configs.serst_encoder import get_config
    from configs.tango import get_config as tango
    from tta_jax.pipelines.tta import denoiser_of
    from tta_jax.train.loop import train

    c = get_config()
    c.extra.num_clips = 80
    c.model.encoder = {"preset": "tiny", "input_norm": "global"}   # configs/tango.py:tiny_serst's encoder
    c.train.total_steps, c.train.batch_size = 3, 4
    work = str(tmp_path / "enc")
    assert train(c, work).step == 3
    labels = json.load(open(os.path.join(work, "assets", "labels.json")))
    assert labels["label"] == "family" and len(labels["classes"]) >= 2

    s = tango("tiny_serst")
    den = denoiser_of(s)
    fresh = meta.unbox(den.init(jax.random.PRNGKey(0), (8, 16, 8), 8))
    sub, prefix = partial.read_part(f"{work}#encoder@conditioner/encoder")
    merged, n = partial.merge_pretrained(fresh, sub, prefix, "config.train.init_parts")
    assert n == len(jax.tree_util.tree_leaves(fresh["conditioner"]["encoder"]))
    got = jax.tree_util.tree_leaves(merged["conditioner"]["encoder"])
    want = jax.tree_util.tree_leaves(sub)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(merged["net"]),
                                                  jax.tree_util.tree_leaves(fresh["net"])))

    s.conditioner.encoder.out_dim = 32                              # another encoder: refused, naming the leaf
    bad = meta.unbox(denoiser_of(s).init(jax.random.PRNGKey(0), (8, 16, 8), 8))
    with pytest.raises(ConfigError, match="'fc/bias' has shape"):
        partial.merge_pretrained(bad, sub, prefix, "config.train.init_parts")

    c.extra.label = "colour"
    with pytest.raises(ConfigError, match="config.extra.label='colour' is not a column"):
        from tta_jax.train.reference_encoder import build_task
        build_task(c)
