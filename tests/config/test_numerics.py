"""Tests for paperlib.config.numerics: MKL's branch pin and the record of it."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from paperlib.config import numerics

PRODUCT = ("import hashlib, torch; torch.manual_seed(0); x = torch.randn(256, 96); w = torch.randn(96, 300); "
           "print(hashlib.sha256((x @ w).numpy().tobytes()).hexdigest())")


def _product_digest(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", PRODUCT], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_pin_respects_a_user_setting(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert numerics.pin_mkl_branch() == numerics.MKL_BRANCH
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    assert numerics.pin_mkl_branch() == "AVX2"
    assert numerics.numerics_record()["mkl_cbwr"] == "AVX2"


def test_cpu_flags_reads_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert {"avx2", "avx512f"} <= numerics.cpu_flags(str(f))
    assert numerics.cpu_flags(str(tmp_path / "missing")) == set()


def test_pinned_branch_gives_the_same_bits_in_every_process(monkeypatch):
    """The pin is deterministic across processes; on an AVX-512 machine it is also the automatic choice."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "MKL_CBWR"}
    pinned = _product_digest({**env, "MKL_CBWR": numerics.MKL_BRANCH})
    assert pinned == _product_digest({**env, "MKL_CBWR": numerics.MKL_BRANCH})
    if "avx512f" in numerics.cpu_flags():
        assert pinned == _product_digest(env)
    assert len(pinned) == len(hashlib.sha256().hexdigest())
