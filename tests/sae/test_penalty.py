"""Tests for paperlib.sae.penalty against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from paperlib.sae import kernels, penalty, screen
from paperlib.sae.models import MetaSAE
from paperlib.sae.penalty import decomposability_penalty, orthogonality_penalty, partition_chunks


def _rows(n=30, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=g, dtype=torch.float64)
    return W / W.norm(dim=1, keepdim=True)


def test_decomposability_penalty_formula():
    W, W_hat = _rows(seed=0), _rows(seed=1) * 0.7
    for s2 in (0.3, 1.0, 3.0):
        ref = sum(math.exp(-float(((W[i] - W_hat[i]) ** 2).sum()) / s2) for i in range(30)) / 30
        assert abs(float(decomposability_penalty(W, W_hat, s2)) - ref) < 1e-12


def test_decomposability_penalty_gradient_on_W_dec_only():
    W = _rows().requires_grad_()
    W_hat = (_rows(seed=2) * 0.5).requires_grad_()
    pen = decomposability_penalty(W, W_hat, 0.7)
    pen.backward()
    assert W_hat.grad is None  # W_hat is a constant
    W2 = W.detach().clone().requires_grad_()
    Wh = W_hat.detach()
    ref = torch.exp(-((W2 - Wh) ** 2).sum(1) / 0.7).mean()
    ref.backward()
    assert torch.allclose(W.grad, W2.grad, atol=1e-14)
    # closed form: d/dW_i = -(2/(n σ²)) p_i (W_i - Ŵ_i)
    p = torch.exp(-((W2 - Wh) ** 2).sum(1) / 0.7)
    closed = -(2 / (30 * 0.7)) * p[:, None] * (W2.detach() - Wh)
    assert torch.allclose(W.grad, closed, atol=1e-14)


def test_penalty_with_meta_sae_no_grad_to_meta():
    meta = MetaSAE(10, 6, 2, seed=0).double()
    W = _rows().requires_grad_()
    W_hat = meta.reconstruct_rows(W)
    decomposability_penalty(W, W_hat, 1.0).backward()
    assert all(p.grad is None for p in meta.parameters())
    assert W.grad is not None


def test_decomposability_penalty_bad_input():
    with pytest.raises(ValueError, match="sigma2"):
        decomposability_penalty(_rows(), _rows(), 0.0)
    with pytest.raises(ValueError, match="must be equal"):
        decomposability_penalty(_rows(), _rows(n=5), 1.0)


def test_partition_is_a_partition():
    chunks = partition_chunks(31, 4, torch.Generator().manual_seed(0))
    allidx = torch.cat(chunks).sort().values
    assert torch.equal(allidx, torch.arange(31))
    assert max(c.numel() for c in chunks) - min(c.numel() for c in chunks) <= 1


@pytest.mark.parametrize("n_chunks", [1, 3, 7, 30])
def test_orthogonality_penalty_brute_force(n_chunks):
    W = _rows(n=30, d=6, seed=3) * (1 + torch.rand(30, 1, dtype=torch.float64))  # not unit norm
    got = orthogonality_penalty(W, n_chunks, torch.Generator().manual_seed(5))
    chunks = partition_chunks(30, n_chunks, torch.Generator().manual_seed(5))
    total = 0.0
    for c in chunks:
        for i in c.tolist():
            best = 0.0
            for j in c.tolist():
                if j != i:
                    cos = float(W[i] @ W[j] / (W[i].norm() * W[j].norm()))
                    best = max(best, cos * cos)
            total += best
    assert abs(float(got) - total / 30) < 1e-12


def test_orthogonality_penalty_gradient_and_orthogonal_zero():
    Q = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))[0]
    assert float(orthogonality_penalty(Q, 2, torch.Generator().manual_seed(0))) < 1e-20
    W = _rows(n=12, d=5).requires_grad_()
    torch.autograd.gradcheck(
        lambda w: orthogonality_penalty(w, 3, torch.Generator().manual_seed(1)), (W,)
    )


def _dense_orthogonality_penalty(W, n_chunks, generator):
    """The penalty written densely (every Gram entry in the autograd graph): the reference for the gradient."""
    Wn = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    total = W.new_zeros(())
    for idx in partition_chunks(W.shape[0], n_chunks, generator):
        if idx.numel() < 2:
            continue
        cos2 = (Wn[idx] @ Wn[idx].t()).pow(2)
        total = total + (cos2 - torch.diag_embed(torch.diagonal(cos2))).max(dim=1).values.sum()
    return total / W.shape[0]


@pytest.mark.parametrize("n_chunks", [1, 4, 14])
def test_orthogonality_gradient_through_the_maximising_pairs_equals_the_dense_autograd(n_chunks):
    W = (_rows(n=29, d=6, seed=8) * (0.5 + torch.rand(29, 1, dtype=torch.float64))).detach()
    W[4] = 0.0  # a zero row: the norm is clamped and its cosines are 0
    grads = []
    for fn in (orthogonality_penalty, _dense_orthogonality_penalty):
        w = W.clone().requires_grad_()
        (0.7 * fn(w, n_chunks, torch.Generator().manual_seed(2))).backward()
        grads.append(w.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-13)


needs_screen = pytest.mark.skipif(not screen.applies(torch.zeros(1, 1), torch.zeros(1, 1)),
                                  reason="no bfloat16 product or no fused kernels: the screened Gram does not run")


def _hard_rows(case: str, n=240, d=64, seed=0) -> torch.Tensor:
    """float32 rows whose largest cosines are hard to tell apart in bfloat16."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=g)
    if case == "near":  # pairs of rows a hair apart: their cosines to every row differ by far less than bf16 resolves
        W[1::2] = W[0::2] + 1e-4 * torch.randn(n // 2, d, generator=g)
    elif case == "cluster":  # rows around one direction: every cosine near 1, apart by less than bf16 resolves
        W = torch.randn(d, generator=g) + 0.05 * W
    elif case == "ties":  # exact duplicates and negated ones: equal cos², the first index wins
        W[1::3] = W[0::3][: W[1::3].shape[0]]
        W[2::3] = -W[0::3][: W[2::3].shape[0]]
        W[7] = 0.0  # a zero row: clamped norm, every cosine 0
        W[9] *= 1e-20  # tiny, but normalised like any other
    return W


def _normalised(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)  # as _OrthoPenalty.forward


def _pairs_over_full_matrices(Wn: torch.Tensor, chunks):
    """Each chunk's full matrix of the same float32 dot products (kernels.dot_entries), then argmax of cos² with
    the diagonal excluded, ties to the first: what the screen must reproduce bit for bit."""
    rows, partners, cosines = [], [], []
    for idx in chunks:
        m = idx.numel()
        if m < 2:
            continue
        x = Wn[idx].contiguous().numpy()
        crow = (np.arange(m + 1) * m).astype(np.int64)
        V = np.empty(m * m, np.float32)
        kernels.dot_entries(crow, np.tile(np.arange(m, dtype=np.int64), m), x, x, V)
        V = torch.from_numpy(V.reshape(m, m))
        cos2 = V * V
        cos2.diagonal().fill_(-1.0)
        j = cos2.argmax(dim=1)
        rows.append(idx)
        partners.append(idx[j])
        cosines.append(V.gather(1, j[:, None]).squeeze(1))
    return torch.cat(rows), torch.cat(partners), torch.cat(cosines)


@needs_screen
@pytest.mark.parametrize("case", ["random", "near", "cluster", "ties"])
@pytest.mark.parametrize("n_chunks", [1, 3, 239])  # 239: chunks of one and two rows
def test_screened_gram_pairs_equal_argmax_over_the_full_matrix_of_the_same_dot_products(case, n_chunks):
    Wn = _normalised(_hard_rows(case))
    chunks = partition_chunks(Wn.shape[0], n_chunks, torch.Generator().manual_seed(4))
    got = penalty._ortho_pairs(Wn, chunks)
    ref = _pairs_over_full_matrices(Wn, chunks)
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)


@needs_screen
def test_the_screened_gram_needs_its_bound(monkeypatch):
    """Without the bound (only the rows' bfloat16 product decides) rows of a tight cluster get wrong partners: the
    comparison above can fail."""
    Wn = _normalised(_hard_rows("cluster"))
    chunks = partition_chunks(Wn.shape[0], 1, torch.Generator().manual_seed(4))
    ref = _pairs_over_full_matrices(Wn, chunks)
    monkeypatch.setattr(kernels, "REL_BFLOAT16", 0.0)
    monkeypatch.setattr(screen, "bounds", lambda *a: tuple(np.zeros(a[0].size, np.float32) for _ in range(4)))
    got = penalty._ortho_pairs(Wn, chunks)
    assert not torch.equal(got[1], ref[1])


@needs_screen
def test_a_row_without_candidates_stops_with_an_error(monkeypatch):
    """A row of a chunk of two or more rows must get a partner; a screen that gives none stops instead of
    indexing a wrong one."""
    Wn = _normalised(_hard_rows("random", n=20, d=8))
    real = kernels.gram_candidates

    def drop_first(G, starts, bound):
        crow, cols = real(G, starts, bound)
        return np.concatenate([[0], crow[1:] - crow[1]]).astype(np.int64), cols[crow[1]:].copy()

    monkeypatch.setattr(kernels, "gram_candidates", drop_first)
    with pytest.raises(RuntimeError, match="no candidate partner"):
        penalty._ortho_pairs(Wn, partition_chunks(20, 2, torch.Generator().manual_seed(0)))


@needs_screen
def test_float32_orthogonality_penalty_and_gradient_against_float64_dense():
    W32 = _hard_rows("random", n=90, d=24, seed=3)  # no near-ties: float32 and float64 pick the same partners
    out = []
    for W, fn in ((W32, orthogonality_penalty), (W32.double(), _dense_orthogonality_penalty)):
        w = W.clone().requires_grad_()
        val = fn(w, 4, torch.Generator().manual_seed(6))
        (0.7 * val).backward()
        out.append((float(val.detach()), w.grad.double()))
    assert abs(out[0][0] - out[1][0]) < 1e-5
    assert torch.allclose(out[0][1], out[1][1], atol=1e-4)


QS = (0.05, 0.25, 0.5, 0.75, 0.95)


def _quantile_inputs(rng: np.random.Generator, t: int) -> np.ndarray:
    n = int(rng.integers(1, 2500))
    kind = t % 3
    if kind == 0:
        return rng.random(n, dtype=np.float32)
    if kind == 1:  # penalty-like: exp(−e/σ²) over several orders of magnitude
        return np.exp(-rng.random(n).astype(np.float32) * 30)
    return (rng.integers(0, 5, n) / 7).astype(np.float32)  # many ties


def test_row_quantiles_equal_torch_quantile_bit_for_bit():
    """The wrapper's dispatch (the kernel itself is checked on 1,500 vectors in test_kernels)."""
    rng = np.random.default_rng(0)
    for t in range(300):
        v = torch.from_numpy(_quantile_inputs(rng, t))
        ref = torch.quantile(v.double(), torch.tensor(QS, dtype=torch.float64))
        got = penalty.row_quantiles(v, QS)
        assert got.dtype == torch.float64
        assert torch.equal(got.view(torch.int64), ref.view(torch.int64)), (t, got, ref)


def test_row_quantiles_need_the_single_rounding():
    """The comparison above can fail: interpolating with two roundings (a + w·(b − a) in float64) differs from
    torch on some of the same inputs, so equality there is not a matter of luck."""
    rng = np.random.default_rng(0)
    differs = 0
    for t in range(1500):
        v = _quantile_inputs(rng, t).astype(np.float64)
        ref = torch.quantile(torch.from_numpy(v), torch.tensor(QS, dtype=torch.float64)).numpy()
        ranks = np.asarray(QS) * (v.size - 1)
        lo, hi = ranks.astype(np.int64), np.ceil(ranks).astype(np.int64)
        s = np.sort(v)
        w = ranks - lo
        naive = np.where(w < 0.5, s[lo] + w * (s[hi] - s[lo]), s[hi] + (w - 1) * (s[hi] - s[lo]))
        differs += int(not np.array_equal(naive, ref))
    assert differs > 0


@pytest.mark.parametrize("v", [[1.0, float("nan"), 2.0], [0.5, float("inf")], [3.0]])
def test_row_quantiles_edge_inputs_follow_torch(v):
    t = torch.tensor(v, dtype=torch.float32)
    ref = torch.quantile(t.double(), torch.tensor(QS, dtype=torch.float64))
    torch.testing.assert_close(penalty.row_quantiles(t, QS), ref, equal_nan=True, rtol=0, atol=0)


def test_row_quantiles_of_nothing_is_torch_error():
    with pytest.raises(RuntimeError):
        penalty.row_quantiles(torch.zeros(0), QS)
