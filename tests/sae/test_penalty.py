"""Tests for paperlib.sae.penalty against brute-force references."""

from __future__ import annotations

import math

import pytest
import torch

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
