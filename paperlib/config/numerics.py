"""Which code path MKL's matrix multiplies take, fixed so that a seed fixes results on every AVX-512 machine.

MKL picks its matmul kernels by the CPU it runs on (``MKL_CBWR=AUTO``), and different kernels round
differently: on the development machine the AVX2 and the AVX-512 branch give different bits for the same
fp32 product. Training amplifies a last-bit difference into different BatchTopK selections, so the same
commit and seed would give different numbers on two CPU generations. :func:`pin_mkl_branch` sets
``MKL_CBWR`` (unless the user set it) before the first matmul of a process; worker processes and notebook
kernels inherit it. ``AVX512`` is the branch the development machine uses by default (measured: same bits
as ``AUTO`` and the same speed); forcing ``AVX2`` everywhere would cost about 1.5x in matmul speed there.
On a CPU without AVX-512, MKL ignores the setting and uses its automatic choice, so results there can
differ in the last bits and, after training, by about the same-seed spread the README reports.
Thread count does not matter here: 1- and 2-thread extraction and training gave byte-identical results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MKL_BRANCH = "AVX512"


def pin_mkl_branch() -> str:
    """Set ``MKL_CBWR`` to :data:`MKL_BRANCH` unless already set; return the value in effect. Call it
    before the process's first matrix multiply (MKL reads it then)."""
    return os.environ.setdefault("MKL_CBWR", MKL_BRANCH)


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def numerics_record() -> dict[str, Any]:
    """What decides the arithmetic of this process: MKL's branch setting and whether the CPU has AVX-512."""
    return {"mkl_cbwr": os.environ.get("MKL_CBWR", "AUTO (unset)"), "cpu_avx512f": "avx512f" in cpu_flags()}
