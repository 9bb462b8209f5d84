"""benchmarks/gpu_check.py: runs on a CPU-only machine with --tiny (CUDA parts skipped, exit 0), and its
agreement check compares exact counts and φ (no timing asserts)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("bench_gpu_check", _PATH)
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["bench_gpu_check"] = gpu_check
_spec.loader.exec_module(gpu_check)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_tiny_run_on_cpu_skips_cuda_and_exits_0(tmp_artifacts):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(_PATH), "--tiny", "--seconds", "0.2", "--cpu-seconds", "0.2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for stage in ("extraction (nnsight)", "training (joint macro-step)", "co-occurrence (counts)"):
        assert stage in out and "skipped" in out.split(stage)[1].splitlines()[0]
    assert "N1 equal, N11 equal, phi equal" in out and "CUDA measurements and the CPU/CUDA agreement" in out


def test_firing_has_k_latents_per_token_and_counts_match_dense_reference():
    fired = gpu_check.firing(64, 128, 8)
    assert (np.diff(fired.indptr) == 8).all()
    F = fired.toarray().astype(np.int64)
    assert gpu_check.agreement(fired, "cpu") == {"N1": True, "N11": True, "phi": True}
    np.testing.assert_array_equal(gpu_check.count(fired).N11, F.T @ F)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_counts_and_phi_equal_cpu():
    assert gpu_check.agreement(gpu_check.firing(512, 1024, 64), "cuda") == {"N1": True, "N11": True, "phi": True}
