"""benchmarks/selection.py on small vectors: both implementations run and agree, and a wrong selection is caught
(no timing asserts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from paperlib.sae import kernels

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "selection.py"
_spec = importlib.util.spec_from_file_location("bench_selection", _PATH)
selection = importlib.util.module_from_spec(_spec)
sys.modules["bench_selection"] = selection
_spec.loader.exec_module(selection)

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler for the fused kernels")


def test_bench_times_both_and_checks_they_agree():
    rows = selection.bench(reps=2, calls=2, sizes={"small": (5_000, 100), "large": (20_000, 9_000)})
    assert [r["name"] for r in rows] == ["small", "large"]
    for r in rows:
        assert r["numpy_ms"] > 0 and r["radix_ms"] > 0
        assert r["speedup"] > 0


def test_bench_refuses_a_wrong_selection(monkeypatch):
    monkeypatch.setattr(selection.kernels, "kth_largest", lambda v, k: np.partition(v, v.size - k)[v.size - k + 1])
    with pytest.raises(AssertionError, match="kth_largest gave"):
        selection.bench(reps=1, calls=1, sizes={"small": (5_000, 100)})
