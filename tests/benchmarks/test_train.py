"""benchmarks/train.py at a tiny geometry: every implementation runs, every ratio and floor is consistent with the
tokens/s it reports (no timing asserts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

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
