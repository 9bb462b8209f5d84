"""Tests for paperlib.sae.screen: the screened BatchTopK selection equals the selection over the full product of
the same float32 dot products (brute force), the bound covers the screen's error, and the declines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paperlib.sae import blas, kernels, screen
from paperlib.sae.models import BatchTopKSAE

pytestmark = pytest.mark.skipif(not (kernels.available() and blas.available()),
                                reason="needs the fused kernels and the bfloat16 product")


def _full_selection(xc: torch.Tensor, W: torch.Tensor, k: int):
    """Brute force: every entry's float32 dot product (the kernel the screen uses for its candidates), then the
    selection rule over all B·n of them."""
    B, d = xc.shape
    n = W.shape[1]
    crow = np.arange(B + 1, dtype=np.int64) * n
    cols = np.tile(np.arange(n, dtype=np.int64), B)
    vals = np.empty(B * n, np.float32)
    kernels.dot_entries(crow, cols, xc.numpy(), np.ascontiguousarray(W.numpy().T), vals)
    np.maximum(vals, 0, out=vals)
    return kernels.keep_top_count(crow, cols, vals, k * B), vals.reshape(B, n)


def _cases():
    g = torch.Generator().manual_seed(0)
    for B, d, n, k in ((256, 64, 192, 8), (100, 17, 50, 3), (64, 576, 320, 16), (300, 33, 31, 4)):
        xc = torch.randn(B, d, generator=g) * 3
        W = torch.randn(d, n, generator=g) / d ** 0.5
        yield "random", xc, W, k
    xc = torch.randn(128, 40, generator=g)
    W = torch.randn(40, 96, generator=g) / 6
    W[:, 10] = W[:, 11] = W[:, 12]  # equal columns: ties inside every row
    xc[5] = xc[6]  # equal rows: ties across rows
    yield "ties", xc, W, 6
    xc = torch.randn(128, 40, generator=g) * torch.logspace(-12, 12, 128)[:, None]  # rows over 24 decades
    W = torch.randn(40, 96, generator=g) * torch.logspace(-6, 6, 96)[None, :]
    yield "dynamic range", xc, W, 5
    xc = torch.randn(128, 40, generator=g)
    W = torch.randn(40, 96, generator=g) / 6
    xc[:20] = 0.0  # zero rows: every entry exactly 0
    xc[20:30] *= 1e-39  # subnormal inputs, flushed by the screen and covered by its bound
    yield "zeros and subnormals", xc, W, 5


PATHS = ["onednn", "amx"] if kernels.amx_ready() else ["onednn"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Each test runs on torch's (oneDNN's) bfloat16 product with the separate screen and, where the CPU has AMX, on
    the fused one;
    ``amx-overflow`` also makes the fused screen run out of slots (it then writes the product and screens it)."""
    if request.param == "onednn":
        monkeypatch.setattr(screen, "uses_amx", lambda *shape: False)
    return request.param


def _shaped_for_amx(xc, W):
    """Zero-padded to AMX's multiples (B, d of 32, n of 16): the padding adds exact zeros to every product; padded
    rows and columns hold zeros, which the tests cut away."""
    B, d = xc.shape
    n = W.shape[1]
    Bp, dp, n_p = -(-B // 32) * 32, -(-d // 32) * 32, -(-n // 16) * 16
    xp, Wp = torch.zeros(Bp, dp), torch.zeros(dp, n_p)
    xp[:B, :d], Wp[:d, :n] = xc, W
    return xp, Wp


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_screened_selection_equals_the_full_product(case, path):
    _, xc, W, k = case
    if path == "amx":
        xc, W = _shaped_for_amx(xc, W)
        assert screen.uses_amx(xc.shape[0], xc.shape[1], W.shape[1])
    B, n = xc.shape[0], W.shape[1]
    got = screen.select(xc, W, k, torch.empty(B, n))
    assert got is not None
    (crow, rows, cols, vals), _ = _full_selection(xc, W, k)
    for a, b in zip(got, (rows, cols, vals, crow), strict=True):
        np.testing.assert_array_equal(a.numpy(), b)
    assert (got[2] > 0).all()


def test_the_bound_covers_the_screen_error_and_the_comparison_can_fail(monkeypatch):
    g = torch.Generator().manual_seed(1)
    xc = torch.randn(256, 576, generator=g) * 2
    W = torch.randn(576, 512, generator=g) / 24
    B, d = xc.shape
    n = W.shape[1]
    x_norm, x_dnorm, w_norm, w_dnorm = np.empty(B), np.empty(B), np.empty(n), np.empty(n)
    xh, WT, WhT = np.empty((B, d), np.uint16), np.empty((n, d), np.float32), np.empty((n, d), np.uint16)
    kernels.rows_to_bf16(xc.numpy(), xh, x_norm, x_dnorm)
    kernels.cols_to_bf16_t(W.numpy(), WT, WhT, w_norm, w_dnorm)
    a, b, c, f = screen.bounds(x_norm, x_dnorm, w_norm, w_dnorm, d)
    Ph = np.empty((B, n), np.uint16)
    blas.gemm_bf16_nt(xh, WhT, Ph)
    P = (Ph.astype(np.uint32) << 16).view(np.float32)
    exact = xc.double().numpy() @ W.double().numpy()  # the bound covers the error to the exact product too
    e = a[:, None] * b + c[:, None] * f + kernels.REL_BFLOAT16 * np.abs(P)
    err = np.abs(P.astype(np.float64) - exact)
    assert (err <= e).all()
    assert err.max() > 0.01 * e.max()  # the bound is not vacuous
    # with a bound 100x too small the screen drops entries of the true selection: the comparison above has teeth
    true_bounds = screen.bounds
    monkeypatch.setattr(screen, "bounds", lambda *args: tuple(v / 100 if i in (0, 2) else v
                                                              for i, v in enumerate(true_bounds(*args))))
    monkeypatch.setattr(kernels, "REL_BFLOAT16", kernels.REL_BFLOAT16 / 100)
    differs = 0
    for seed in range(5):
        gg = torch.Generator().manual_seed(seed)
        x2, W2 = torch.randn(256, 64, generator=gg), torch.randn(64, 192, generator=gg) / 8
        got = screen.select(x2, W2, 8, torch.empty(256, 192))
        (_, _, cols, _), _ = _full_selection(x2, W2, 8)
        differs += got is None or not np.array_equal(got[1].numpy(), cols)
    assert differs > 0


def test_the_fused_screen_out_of_slots_falls_back_to_the_written_product(monkeypatch):
    if not kernels.amx_ready():
        pytest.skip("no AMX")
    g = torch.Generator().manual_seed(3)
    xc, W = torch.randn(256, 64, generator=g), torch.randn(64, 192, generator=g) / 8
    monkeypatch.setattr(screen, "GATHER_SLOTS", 0)  # slots for one row per thread only
    calls = []
    true_screen = kernels.amx_screen
    monkeypatch.setattr(kernels, "amx_screen", lambda *a, **kw: calls.append(kw.get("P") is not None)
                        or true_screen(*a, **kw))
    got = screen.select(xc, W, 8, torch.empty(256, 192))
    (crow, rows, cols, vals), _ = _full_selection(xc, W, 8)
    for a, b in zip(got, (rows, cols, vals, crow), strict=True):
        np.testing.assert_array_equal(a.numpy(), b)
    assert calls == [True, False, True]  # the subsample's product, the fused screen (out of slots), the product


def test_declines_what_it_cannot_decide():
    g = torch.Generator().manual_seed(2)
    xc, W = torch.randn(64, 16, generator=g), torch.randn(16, 40, generator=g)
    assert screen.select(xc, W, 40, torch.empty(64, 40)) is None  # k = n: nothing to select
    assert screen.select(-xc.abs(), W.abs(), 4, torch.empty(64, 40)) is None  # no entry surely positive
    bad = xc.clone()
    bad[3, 2] = float("nan")
    assert screen.select(bad, W, 4, torch.empty(64, 40)) is None  # non-finite: the full product's path decides
    assert not screen.applies(xc.double(), W.double())


def test_training_with_and_without_the_screen_agrees(monkeypatch):
    def run(use_screen: bool):
        monkeypatch.setattr(screen, "applies", (lambda *a: True) if use_screen else (lambda *a: False))
        sae = BatchTopKSAE(48, 192, 8, seed=0, dead_after=3, k_aux=16)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        losses = []
        for _ in range(20):
            out = sae.training_loss(torch.randn(256, 48, generator=g) * 2 + 1)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            losses.append(float(out["loss"].detach()))
        return np.array(losses), sae.W_enc.detach().clone()

    with_screen, W1 = run(True)
    without, W2 = run(False)
    np.testing.assert_allclose(with_screen, without, rtol=1e-4)  # the same selection; sums reassociated
    assert torch.allclose(W1, W2, atol=1e-5)


def test_the_screen_implementation_changes_no_bit_of_training(monkeypatch):
    """The screen decides the cost, never the result: the separate screen over the bfloat16 product, the two passes
    when its slots run out, a bound 4x looser than needed (more candidates) and, where the CPU has AMX, the fused
    screen and its fallback give the same weights and optimiser state, bit for bit."""

    true_bounds = screen.bounds

    def train(amx: bool, slots: int, loosen: float = 1.0) -> bytes:
        monkeypatch.setattr(screen, "uses_amx", lambda *shape: amx)
        monkeypatch.setattr(screen, "GATHER_SLOTS", slots)
        monkeypatch.setattr(screen, "bounds", lambda *args: tuple(v * loosen if i in (0, 2) else v
                                                                  for i, v in enumerate(true_bounds(*args))))
        sae = BatchTopKSAE(64, 192, 8, seed=1, dead_after=2, k_aux=16)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        for _ in range(8):
            out = sae.training_loss(torch.randn(256, 64, generator=g) * 2 + 1)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
        state = [*sae.state_dict().values(), *(v for st in opt.state.values() for v in st.values())]
        return b"".join(t.detach().numpy().tobytes() for t in state)

    reference = train(False, screen.GATHER_SLOTS)
    assert train(False, 0) == reference
    assert train(False, screen.GATHER_SLOTS, loosen=4.0) == reference
    if kernels.amx_ready():
        assert train(True, screen.GATHER_SLOTS) == reference
        assert train(True, 0) == reference
