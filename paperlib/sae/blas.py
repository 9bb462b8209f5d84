"""A bfloat16 matrix product with float32 accumulation and output, from the MKL that torch's CPU build carries.

torch's own ``mm`` on bfloat16 tensors rounds its output to bfloat16, which would add an error of 2⁻⁸ of every
product to the screening bound of :mod:`paperlib.sae.screen`. MKL's ``cblas_gemm_bf16bf16f32`` keeps the float32
sums; on CPUs with AMX (or AVX-512 BF16) it runs at several times the float32 rate (measured on this project's
2-core machine: 2.5 ms against 16 ms for [2048, 576] × [576, 2304]). The function is exported by
``libtorch_cpu``, so no further package is needed; where it is missing, or the CPU has no bfloat16 arithmetic
(MKL would emulate it slowly), :func:`available` is False and training computes the full float32 product.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache
from pathlib import Path

import numpy as np
import torch

from paperlib.config.numerics import cpu_flags

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
"""CBLAS enumerators."""
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def _gemm():
    """MKL's ``cblas_gemm_bf16bf16f32`` from torch's CPU library, or ``None``."""
    if os.environ.get("PAPERLIB_BF16_SCREEN", "1") == "0" or not any(f in cpu_flags() for f in BF16_CPU_FLAGS):
        return None
    lib_path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        fn = ctypes.CDLL(str(lib_path)).cblas_gemm_bf16bf16f32
    except (OSError, AttributeError):
        return None
    fn.restype = None
    fn.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                        ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    return fn


def available() -> bool:
    """The bfloat16 product is there and the CPU computes bfloat16 natively (``PAPERLIB_BF16_SCREEN=0``: no)."""
    return _gemm() is not None


def gemm_bf16_nt(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a · bᵀ for bfloat16 a [M, K] and b [N, K] (uint16 bit patterns, C-contiguous), summed and written
    in float32 (out [M, N], C-contiguous)."""
    fn = _gemm()
    if fn is None:
        raise RuntimeError("the bfloat16 product is not available here (see paperlib.sae.blas.available())")
    (M, K), (N, K2) = a.shape, b.shape
    if K != K2 or out.shape != (M, N) or a.dtype != np.uint16 or b.dtype != np.uint16 or out.dtype != np.float32:
        raise ValueError(f"gemm_bf16_nt: shapes/dtypes a {a.shape} {a.dtype}, b {b.shape} {b.dtype}, "
                         f"out {out.shape} {out.dtype} do not form out = a bᵀ")
    if not (a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError("gemm_bf16_nt needs C-contiguous arrays")
    if max(M, N, K) >= 2**31:
        raise ValueError("gemm_bf16_nt: dimensions must be below 2^31 (32-bit BLAS integers)")
    fn(ROW_MAJOR, NO_TRANS, TRANS, M, N, K, 1.0, a.ctypes.data, K, b.ctypes.data, K, 0.0, out.ctypes.data, N)
