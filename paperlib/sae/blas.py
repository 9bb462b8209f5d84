"""The bfloat16 matrix product of the screened encoder: torch's CPU ``mm`` on bfloat16 operands (oneDNN).

oneDNN multiplies bfloat16 operands with float32 sums (AVX-512 BF16's pairwise dot products, or AMX tiles) and
rounds each result once to bfloat16. :mod:`paperlib.sae.screen` bounds both: the float32 sums by the summation
bound for any order, the final rounding by a relative term (``kernels.REL_BFLOAT16``). On CPUs with bfloat16
arithmetic it runs at several times the float32 rate (measured on this project's 2-core AMD EPYC machine: 887
against 178 GFLOP/s for [2048, 576] × [576, 2304], where MKL's float32 product takes its AVX2 path). Where the
CPU has no bfloat16 arithmetic (oneDNN would emulate it slowly) or torch was built without oneDNN,
:func:`available` is False and training computes the full float32 product. ``PAPERLIB_BF16_SCREEN=0`` switches
it off too.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
import torch

from paperlib.config.numerics import cpu_flags

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def _available() -> bool:
    if os.environ.get("PAPERLIB_BF16_SCREEN", "1") == "0":
        return False
    return torch.backends.mkldnn.is_available() and any(f in cpu_flags() for f in BF16_CPU_FLAGS)


def available() -> bool:
    """The bfloat16 product is there and the CPU computes bfloat16 natively (``PAPERLIB_BF16_SCREEN=0``: no)."""
    return _available()


def _bf16(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)


def gemm_bf16_nt(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a · bᵀ for bfloat16 a [M, K] and b [N, K] (uint16 bit patterns, C-contiguous), summed in float32 and
    rounded to bfloat16 (out [M, N], uint16 bits, C-contiguous)."""
    if not available():
        raise RuntimeError("the bfloat16 product is not available here (see paperlib.sae.blas.available())")
    (M, K), (N, K2) = a.shape, b.shape
    if K != K2 or out.shape != (M, N) or a.dtype != np.uint16 or b.dtype != np.uint16 or out.dtype != np.uint16:
        raise ValueError(f"gemm_bf16_nt: shapes/dtypes a {a.shape} {a.dtype}, b {b.shape} {b.dtype}, "
                         f"out {out.shape} {out.dtype} do not form out = a bᵀ (all bfloat16 bits as uint16)")
    if not (a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError("gemm_bf16_nt needs C-contiguous arrays")
    torch.mm(_bf16(a), _bf16(b).t(), out=_bf16(out))
