"""benchmarks/multirun.py runs (--tiny) and prints the one-pass / per-run ratio for cache and stream mode (no timing
asserts: the machine is shared)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "multirun.py"
_spec = importlib.util.spec_from_file_location("bench_multirun", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_multirun"] = bench
_spec.loader.exec_module(bench)


def test_tiny_benchmark_prints_the_ratio_of_both_modes(tmp_artifacts, capsys):
    n = torch.get_num_threads()
    try:
        rows = bench.main(["--tiny", "--steps", "1"])
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert [r["mode"] for r in rows] == ["cache", "stream (LM on the fly)"]
    assert all(r["ratio"] > 0 and r["one_pass_steps"] >= r["runs"] for r in rows)
    assert "ratio" in out and (tmp_artifacts / "artifacts" / "bench" / "multirun.json").exists()
