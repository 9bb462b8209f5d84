"""What decides the arithmetic of a process, recorded beside every artifact.

MKL picks its matmul kernels by the CPU it runs on (``MKL_CBWR`` unset means automatic), and different
kernels round differently: on the development machine, forcing MKL's AVX2 branch instead of its automatic
AVX-512 choice gives different bits for the same fp32 product, and training amplifies a last-bit
difference into different BatchTopK selections. So a seed fixes results bitwise on one kind of CPU (measured:
byte-identical across machine load, worker order and 1 vs 2 threads), not across CPU generations; the README
gives the measured size of that same-seed spread. :func:`numerics_record` says which setting and CPU made
an artifact. Setting ``MKL_CBWR`` (for example ``AVX2``, which most x86 CPUs support, at about 1.5x lower
matmul speed here) before the first matmul makes MKL take one code path everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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
