"""Tests for paperlib.config.numerics: the record of what decides a process's arithmetic."""

from __future__ import annotations

from paperlib.config import numerics
from paperlib.config.io import provenance


def test_record_names_the_mkl_setting(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert numerics.numerics_record()["mkl_cbwr"] == "AUTO (unset)"
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    assert numerics.numerics_record()["mkl_cbwr"] == "AVX2"
    assert provenance()["numerics"]["mkl_cbwr"] == "AVX2"


def test_cpu_flags_reads_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert {"avx2", "avx512f"} <= numerics.cpu_flags(str(f))
    assert numerics.cpu_flags(str(tmp_path / "missing")) == set()
