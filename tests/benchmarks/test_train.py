"""benchmarks/train.py at a tiny geometry: every implementation runs, every ratio and floor is consistent with the
tokens/s it reports (no timing asserts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "train.py"
_spec = importlib.util.spec_from_file_location("bench_train", _PATH)
train = importlib.util.module_from_spec(_spec)
sys.modules["bench_train"] = train
_spec.loader.exec_module(train)


@pytest.mark.parametrize("dead", [0.0, 0.25])
def test_bench_reports_consistent_ratios_and_floors(monkeypatch, dead):
    monkeypatch.setitem(train.GEOMETRIES, "tiny", (128, 64))
    r = train.bench("tiny", reps=1, dead_frac=dead, d=16, k=4)
    assert (r["n"], r["batch"], r["d"], r["k"]) == (128, 64, 16, 4)
    for name in ("bound", "naive", "solo", *train.ARMS):
        assert r[name] > 0
    for name in ("naive", *train.ARMS):
        assert r[f"{name}_cost"] == pytest.approx(r["solo"] / r[name])
    assert r["solo_vs_bound"] == pytest.approx(r["solo"] / r["bound"])
    for arm in train.ARMS:
        assert r[f"{arm}_floor"] > 1 and r[f"{arm}_floor75"] > 1
    # the joint arm's dense floor adds its meta steps' matmuls (n_m per n_p primary steps) to the random critic's
    meta = train.get_profile("default").meta
    assert r["joint_floor"] - 1 == pytest.approx((1 + meta.n_meta_steps / meta.n_primary_steps)
                                                 * (r["randcritic_floor"] - 1))
    assert r["joint_floor"] > r["randcritic_floor"]


def test_trained_batches_are_consecutive_rows_of_the_runs_activations(tmp_path):
    acts = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float16)
    (tmp_path / "activations").mkdir()
    np.save(tmp_path / "activations" / "train.npy", acts)
    batches = train.trained_batches(tmp_path, 64, 3)
    assert len(batches) == 3
    for b in batches:
        assert b.dtype == torch.float32 and tuple(b.shape) == (64, 16)
        start = int(np.flatnonzero((acts[:, 0] == b[0, 0].numpy()) & (acts[:, 1] == b[0, 1].numpy()))[0])
        np.testing.assert_array_equal(b.numpy(), acts[start:start + 64].astype(np.float32))
    with pytest.raises(FileNotFoundError, match="train.npy"):
        train.trained_batches(tmp_path / "nowhere", 64, 3)


def test_load_trained_takes_the_runs_weights_state_and_meta(tmp_path):
    prof = train.get_profile("default")
    src = train._trainer(prof, train.ARMS["joint"], 16)
    with torch.no_grad():
        for t in (src.primary.W_enc, src.primary.W_dec, src.meta.W_enc):
            t.add_(1.0)
    src.primary.steps_since_fired[:3] = 10**6  # three dead latents
    run = tmp_path / "runs" / train.TRAINED_RUNS["joint"]
    src.primary.save(run / "sae")
    src.meta.save(run / "meta")
    (run / "done.json").write_text("{}")
    dst = train._trainer(prof, train.ARMS["joint"], 16)
    train.load_trained(dst, tmp_path, "joint")
    for a, b in ((dst.primary, src.primary), (dst.meta, src.meta)):
        for k, v in b.state_dict().items():
            assert torch.equal(a.state_dict()[k], v), k
    assert int(dst.primary.dead_mask().sum()) == 3
    other = train._trainer(prof, train.ARMS["joint"], 8)
    with pytest.raises(ValueError, match="d=16"):
        train.load_trained(other, tmp_path, "joint")
