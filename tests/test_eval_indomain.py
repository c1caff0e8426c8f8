"""In-domain evaluator: trainer on arrays (through the general train loop: deterministic, resumable),
accuracy definition, cache round trip, and (slow) the real embedded-dataset accuracy (trains on first use;
the slow test)."""
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import optimised_env
from test_train_loop import compile_cache  # noqa: F401 - module-scoped autouse fixture (repeated compiles)

from tta_jax.eval import indomain as I


def _toy(n, seed):
    """Synthetic log-mel: the family is a bright band at a class-specific mel bin."""
    rng = np.random.default_rng(seed)
    fam = rng.integers(0, 4, size=n)
    x = rng.normal(size=(n, 32, I.N_MELS)).astype(np.float32)
    for i, f in enumerate(fam):
        x[i, :, 10 + 15 * f: 14 + 15 * f] += 3.0
    labels = I.Labels([[int(f)] for f in fam], fam % 3, fam % 2)
    return x, labels


def test_accuracy_definition_multi_event():
    fam = np.full((3, len(I.SOURCES)), -5.0)
    fam[0, 2] = 5  # clip 0: one event {2} -> correct
    fam[1, [1, 4]] = 5  # clip 1: two events {1, 4} -> correct
    fam[2, [1, 5]] = 5  # clip 2: two events {1, 4} but predicts {1, 5} -> wrong
    out = {"family": fam, "pattern": np.zeros((3, 8)), "register": np.zeros((3, 4))}
    lab = I.Labels([[2], [1, 4], [1, 4]], [0, -1, -1], [0, -1, -1])
    acc = I.accuracy(out, lab)
    assert acc["family_acc"] == pytest.approx(2 / 3)
    assert acc["family_acc_single_event"] == 1.0 and acc["pattern_acc"] == 1.0


def test_train_learns_round_trips_and_resumes_exactly(tmp_path, monkeypatch):
    """The default net (frame-level family logits pooled over time) learns the toy task with SpecAugment and
    mel shifts; an evaluator rebuilt from its saved params and JSON info (tuples -> lists) predicts the
    same; FD of a set with itself is ~0 and a shifted set is far. A training stopped by SIGTERM mid-epoch
    resumes from its workdir to exactly the same params (the augmentation draws too)."""
    x, lab = _toy(160, 0)
    xt, labt = _toy(64, 1)
    cfg = I.TrainConfig(epochs=5, batch_size=32, lr=3e-3, time_masks=1, freq_masks=1, freq_shift=2)
    ev = I.train(x, lab, cfg, verbose=False)
    acc = ev.accuracy(xt, labt)
    assert acc["family_acc"] >= 0.9, acc
    out = ev.predict(xt)
    assert out["family"].shape == (64, len(I.SOURCES)) and out["embedding"].shape == (64, 128)
    ev2 = I.load(I.save(ev, str(tmp_path / "m")))
    out2 = ev2.predict(xt)
    for k in ("family", "embedding"):
        np.testing.assert_allclose(out2[k], out[k], rtol=1e-5, atol=1e-5)
    # FD of a set with itself is ~0 (sqrtm round-off on a rank-deficient 128-d covariance), a shifted
    # set is far
    assert abs(ev.frechet(xt, xt)) < 1e-3
    assert ev.frechet(xt, xt + 1.0) > 1.0

    drawn, draw = [0], I.ClipBatches.__next__

    def draw_then_sigterm(self):                 # SIGTERM while batch 8 of 25 (epoch 2) is drawn
        drawn[0] += 1
        if drawn[0] == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        return draw(self)
    monkeypatch.setattr(I.ClipBatches, "__next__", draw_then_sigterm)
    with pytest.raises(I.TrainingInterrupted, match="stopped at step 8 of 25"):
        I.train(x, lab, cfg, verbose=False, workdir=str(tmp_path / "run"))
    monkeypatch.undo()
    resumed = I.train(x, lab, cfg, verbose=False, workdir=str(tmp_path / "run"))
    for a, b in zip(jax.tree.leaves(ev.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)


def test_labels_from_rows_and_bad_rows():
    rows = [{"family": "piano", "pattern": "chord", "register": "low", "num_events": "1", "2_family": ""},
            {"family": "drums", "pattern": "drum beat", "register": "none", "num_events": "2", "2_family": "bass"}]
    lab = I.labels_from_rows(rows)
    assert lab.family_sets == [[0], [4, 16]]
    assert list(lab.pattern) == [3, -1]
    with pytest.raises(ValueError, match="bad label row"):
        I.labels_from_rows([{"family": "kazoo", "pattern": "chord", "register": "low"}])
    with pytest.raises(ValueError, match="log-mel"):
        I.train(np.zeros((2, 10, 7), np.float32), lab)


def test_extra_training_clips_are_disjoint_from_held_out_clips():
    I._check_disjoint(3000, 0, 200)  # the extra-render seed shares no spec with the valid/test clips
    I._check_disjoint(3000, 0, 200, which=1, two_event_prob=1.0)  # nor does the two-event render
    assert len({I.extra_seed(0), I.extra_seed(0, 1), 0}) == 3


def test_two_family_decision_uses_the_two_halves():
    """A two-family clip is judged by the best pair (a in one half, b != a in the other), so a source
    that dominates the pooled logits in both halves cannot take both places."""
    frames = np.full((1, 10, len(I.SOURCES)), -5.0, np.float32)
    frames[0, :5, 3] = 4.0  # first half: guitar, clearly
    frames[0, 5:, 3] = 2.0  # second half: guitar a bit, bass more
    frames[0, 5:, 4] = 3.0
    frames[0, :, 0] = 2.5  # piano in both halves: in the pooled top-2 but best in neither half
    out = {"family": np.log(np.exp(frames).mean(1)), "family_frames": frames,
           "pattern": np.zeros((1, 8)), "register": np.zeros((1, 4))}
    assert I.predicted_family_sets(out, [2]) == [[3, 4]]
    assert sorted(np.argsort(-out["family"][0])[:2].tolist()) == [0, 3]  # the pooled top-2 would be wrong
    assert I.predicted_family_sets(out, [1]) == [[int(out["family"][0].argmax())]]
    lab = I.Labels([[3, 4]], np.array([-1]), np.array([-1]))
    assert I.accuracy(out, lab)["family_acc_two_family"] == 1.0
    assert I.predicted_family_sets(dict(out, family_frames=frames[:, :1]), [2]) == [[0, 3]]  # 1 frame
    del out["family_frames"]  # without frame logits: pooled top-2
    assert I.predicted_family_sets(out, [2]) == [[0, 3]]
    with pytest.raises(ValueError, match="T' >= 2"):
        I.half_scores(frames[:, :1])


@pytest.mark.slow
def test_embedded_test_split_family_accuracy():
    """Acceptance: >= 90 % family accuracy on the real renders of the embedded test split (150 clips,
    37 of them with two families). Measured 0.927 (one-family 0.947, two-family 0.865).
    Trains when there is no cached evaluator (renders 6000 extra clips and trains 18 epochs; the training
    took 498 s on the 2-core machine under load), else loads the cache. Training is run-time bound, so it runs
    in a subprocess at full XLA optimisation; this process then loads what it cached."""
    p = subprocess.run([sys.executable, "-c", "from tta_jax.eval import indomain as I; I.get_or_train()"],
                       capture_output=True, text=True, timeout=3000, env=optimised_env())
    assert p.returncode == 0, p.stderr[-3000:]
    ev = I.get_or_train()
    _, mels, labels, _ = I.embedded_arrays(3000, 0, ("test",))
    assert len(mels) == 150
    acc = ev.accuracy(mels, labels)
    print("in-domain test accuracy", acc, "train seconds", ev.info.get("train_seconds"))
    assert acc["family_acc"] >= 0.90, acc


def test_fd_baseline_states_its_clips_and_matches_sizes():
    rng = np.random.default_rng(0)
    gen, ref = rng.normal(size=(30, 3)), rng.normal(size=(10, 3))
    fd, proto = I.fd_with_baseline(gen, ref, seed=1)
    assert proto["comparison_clips"] == [30, 10] and proto["baseline_clips"] == [5, 5] == proto["matched_clips"]
    assert "two disjoint parts of the reference set" in proto["baseline"] and set(fd) == {
        "fd", "fd_real_vs_real", "fd_matched"}
    fd, proto = I.fd_with_baseline(gen[:3], ref, seed=1)  # fewer generated clips: the baseline's first part too
    assert proto["baseline_clips"] == [3, 5] and "cut to the 3 generated clips" in proto["baseline"]
    fd, proto = I.fd_with_baseline(gen, ref, rng.normal(size=(40, 3)), real_source="held-out renders")
    assert proto["baseline_clips"] == [30, 10] == proto["comparison_clips"] and "fd_matched" not in fd
    assert "30 real clips of held-out renders" in proto["baseline"]
    fd, proto = I.fd_with_baseline(gen, ref[:3])
    assert set(fd) == {"fd"} and proto["baseline"].startswith("none")
    assert "General-MIDI" in I.DOMAIN_NOTE
