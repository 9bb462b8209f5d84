"""Tests for paperlib.sae.blas: the bfloat16 product against float64 arithmetic on the same bfloat16 inputs (float32
sums, one rounding to bfloat16, within the screen's bound), and its argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paperlib.sae import blas

pytestmark = pytest.mark.skipif(not blas.available(), reason="no bfloat16 product on this CPU / torch build")


def _bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)


def _float(h: np.ndarray) -> np.ndarray:
    return (h.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("shape", [(64, 576, 96), (33, 17, 5), (1, 1, 1)])
def test_product_sums_in_float32_and_rounds_once_within_the_screen_bound(shape):
    M, K, N = shape
    rng = np.random.default_rng(0)
    a = _bf16(rng.standard_normal((M, K)).astype(np.float32))
    b = _bf16(rng.standard_normal((N, K)).astype(np.float32))
    out = np.empty((M, N), np.uint16)
    blas.gemm_bf16_nt(a, b, out)
    got, exact = _float(out), _float(a) @ _float(b).T
    gamma = K * 2.0 ** -24 / (1 - K * 2.0 ** -24)
    summed = 2 * gamma * (np.abs(_float(a)) @ np.abs(_float(b)).T)
    assert np.all(np.abs(got - exact) <= summed + 2.0 ** -7 * np.abs(got))  # the screen's bound (kernels.REL_BFLOAT16)
    # rounded once, to nearest: within bfloat16's unit roundoff 2⁻⁸ of the float32 sums (not summed in bfloat16)
    assert np.all(np.abs(got - exact) <= summed * (1 + 2.0 ** -7) + 2.0 ** -8 * np.abs(exact) * (1 + 2.0 ** -7))
    if K > 1:  # and rounded: not float32 results
        assert np.abs(got - exact).max() > 2.0 ** -10 * np.abs(exact).max()


def test_bad_operands_are_refused_with_their_shapes():
    a, b = np.zeros((4, 3), np.uint16), np.zeros((5, 2), np.uint16)
    with pytest.raises(ValueError, match="do not form"):
        blas.gemm_bf16_nt(a, b, np.empty((4, 5), np.uint16))
    with pytest.raises(ValueError, match="do not form"):
        blas.gemm_bf16_nt(a, np.zeros((5, 3), np.float32), np.empty((4, 5), np.uint16))
    with pytest.raises(ValueError, match="do not form"):
        blas.gemm_bf16_nt(a, np.zeros((5, 3), np.uint16), np.empty((4, 5), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        blas.gemm_bf16_nt(np.zeros((3, 4), np.uint16).T, np.zeros((5, 3), np.uint16), np.empty((4, 5), np.uint16))


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("PAPERLIB_BF16_SCREEN", "0")
    blas._available.cache_clear()
    try:
        assert not blas.available()
        with pytest.raises(RuntimeError, match="not available"):
            blas.gemm_bf16_nt(np.zeros((1, 1), np.uint16), np.zeros((1, 1), np.uint16), np.empty((1, 1), np.uint16))
    finally:
        monkeypatch.delenv("PAPERLIB_BF16_SCREEN")
        blas._available.cache_clear()
    assert blas.available()
