"""Penalties on the primary decoder: the MetaSAE decomposability penalty and OrtSAE's orthogonality.

- :func:`decomposability_penalty` (paper §3.2, method.md §1): mean_i exp(−‖W_dec[i] − Ŵ[i]‖² / σ²),
  Ŵ = meta(W_dec.detach()) computed under ``torch.no_grad`` and treated as a constant, so only
  W_dec receives a gradient.
- :func:`orthogonality_penalty` (OrtSAE comparison arm, method.md §8).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from paperlib.sae import blas, kernels, screen


def decomposability_penalty(W_dec: torch.Tensor, W_hat: torch.Tensor, sigma2: float) -> torch.Tensor:
    """Scalar mean_i exp(−e_i / σ²) with e_i = ‖W_dec[i] − Ŵ[i]‖² (squared L2 over d).

    ``W_hat`` is detached here (a constant): the gradient reaches ``W_dec`` only.
    """
    return row_penalty_terms(W_dec, W_hat, sigma2)[0].mean()


def row_penalty_terms(W_dec: torch.Tensor, W_hat: torch.Tensor, sigma2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (p_i, e_i): e_i = ‖W_dec[i] − Ŵ[i]‖² and p_i = exp(−e_i / σ²); Ŵ is a constant."""
    if sigma2 <= 0:
        raise ValueError(f"sigma2 must be > 0, got {sigma2}")
    if W_dec.shape != W_hat.shape or W_dec.ndim != 2:
        raise ValueError(f"W_dec {tuple(W_dec.shape)} and W_hat {tuple(W_hat.shape)} must be equal [n, d]")
    if kernels.applies(W_dec, W_hat):
        return _FusedRowPenalty.apply(W_dec, W_hat.detach(), float(sigma2))
    diff = W_dec - W_hat.detach()
    e = (diff * diff).sum(dim=1)
    return torch.exp(-e / sigma2), e


class _FusedRowPenalty(torch.autograd.Function):
    """(p, e) of :func:`row_penalty_terms` in one pass over the rows (fused CPU kernel); the backward is one more:
    dW[i] = g_p[i] · p[i] · (−2/σ²) · (W[i] − Ŵ[i]) (Ŵ a constant; ``e`` carries no gradient)."""

    @staticmethod
    def forward(ctx, W, H, sigma2):  # noqa: D102
        n = W.shape[0]
        p, e = W.new_empty(n), W.new_empty(n)
        kernels.row_penalty(W.detach().numpy(), H.numpy(), sigma2, p.numpy(), e.numpy())
        ctx.save_for_backward(W, H, p)
        ctx.sigma2 = sigma2
        ctx.mark_non_differentiable(e)
        ctx.set_materialize_grads(False)  # e is not differentiable: no zero gradient for it
        return p, e

    @staticmethod
    def backward(ctx, g_p, g_e):  # noqa: D102
        W, H, p = ctx.saved_tensors
        coef = (g_p * p * (-2.0 / ctx.sigma2)).contiguous()
        G = torch.empty_like(W)
        kernels.row_penalty_grad(W.detach().numpy(), H.numpy(), coef.numpy(), G.numpy())
        return G, None, None


def row_quantiles(values: torch.Tensor, qs: Sequence[float] | np.ndarray) -> torch.Tensor:
    """``torch.quantile(values.double(), qs)`` (linear interpolation, float64) of a 1-D tensor, bit for bit; on the
    fused path by selection in one kernel call (:func:`kernels.quantiles`) instead of torch's sort and a dozen small
    ops, which cost the trainer's per-step log as much as the penalty itself. Otherwise, and for values that are
    not finite, ``torch.quantile``. ``qs`` as a float64 array saves a conversion per call."""
    q = np.asarray(qs, dtype=np.float64)
    v = values.detach().reshape(-1)
    if v.dtype == torch.float32 and v.numel() and q.ndim == 1 and kernels.applies(v):
        out = kernels.quantiles(v.numpy(), q)
        if out is not None:
            return torch.from_numpy(out)
    return torch.quantile(v.double(), torch.from_numpy(q))


def partition_chunks(n: int, n_chunks: int, generator: torch.Generator | None = None,
                     device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Random partition of range(n) into ``n_chunks`` near-equal index chunks (sizes differ by ≤ 1)."""
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    perm = torch.randperm(n, generator=generator).to(device)
    return [c for c in torch.tensor_split(perm, min(n_chunks, n)) if c.numel() > 0]


def orthogonality_penalty(W_dec: torch.Tensor, n_chunks: int,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """OrtSAE-style orthogonality penalty, the exact form used here (method.md §8):

    1. randomly partition the n latents into ``n_chunks`` chunks (``torch.randperm`` with
       ``generator``, then ``tensor_split`` into near-equal parts; a new partition every call);
    2. for each latent i in chunk C, m_i = max_{j ∈ C, j ≠ i} cos²(W_dec[i], W_dec[j]) (squared cosine
       similarity of decoder rows; 0 for a latent alone in its chunk);
    3. L_orth = (1/n) Σ_i m_i  (mean over all latents).

    The trainer uses L = L_SAE + γ · L_orth with γ = ``RunSpec.gamma`` and K = ``profile.grid.ortho_chunks``.
    The forward finds each row's maximising pair from its chunk's Gram matrix, screened by a bfloat16 product where
    the CPU has one (:func:`_screened_pairs`: the same pairs and cosines as the full matrix of float32 dot
    products); the gradient reaches only the maximising pair of each row (:class:`_OrthoPenalty`), so the backward
    costs O(n·d) instead of two more Gram-sized products.
    """
    chunks = partition_chunks(W_dec.shape[0], n_chunks, generator, W_dec.device)
    return _OrthoPenalty.apply(W_dec, chunks)


def _ortho_pairs(Wn: torch.Tensor, chunks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i, j*, cos(i, j*)) for every latent i in a chunk of at least 2, j* = argmax_{j ≠ i in its chunk} cos²
    (the first such j in the chunk's order among equal cos²), chunk after chunk."""
    order = torch.cat(chunks)
    P = _gathered_rows(Wn, order)  # every chunk is then a contiguous block of rows
    sizes = [c.numel() for c in chunks]
    screened = _screened_pairs(P, sizes)
    if screened is not None:
        j, cos = screened
        keep = j >= 0  # every row has a partner except in chunks of one row
        if int(keep.sum()) != sum(m for m in sizes if m > 1):
            raise RuntimeError("screened Gram: a row of a chunk of two or more rows got no candidate partner, which "
                               "the screen's bound rules out (a defect); PAPERLIB_BF16_SCREEN=0 takes the float32 path")
        return order[keep], order[j[keep]], cos[keep]
    rows, partners, cosines = [], [], []
    start = 0
    for idx, m in zip(chunks, sizes, strict=True):
        Wc = P[start:start + m]
        start += m
        if m < 2:
            continue
        gram = Wc @ Wc.t()
        cos2 = gram * gram
        cos2.diagonal().fill_(-1.0)  # never the maximum (every other entry is ≥ 0)
        j = cos2.argmax(dim=1)
        rows.append(idx)
        partners.append(idx[j])
        cosines.append(gram.gather(1, j[:, None]).squeeze(1))
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=Wn.device)
        return empty, empty, Wn.new_zeros(0)
    return torch.cat(rows), torch.cat(partners), torch.cat(cosines)


def _gathered_rows(Wn: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Wn[order]; on the fused path into a kept work array (valid until the next call; a fresh [n, d] array costs a
    page fault per 4 KiB)."""
    if not kernels.applies(Wn):
        return Wn[order]
    P = torch.from_numpy(kernels.scratch("ortho_rows", Wn.numel(), Wn.numpy().dtype).reshape(Wn.shape))
    return torch.index_select(Wn, 0, order, out=P)


def _screened_pairs(P: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(j*, cos(i, j*)) for every row i of P, j* a row of P in i's chunk (the chunks: consecutive blocks of
    ``sizes`` rows; −1 and 0 in chunks of one row), by the screened encoder's method (:mod:`paperlib.sae.screen`):
    each chunk's Gram matrix is a bfloat16 product (several times the float32 rate where the CPU has bfloat16
    arithmetic) with a rigorous bound on every entry; only the j whose |cos| can reach the largest lower bound of
    its row get an exact float32 dot product in one fixed order (:func:`kernels.gram_candidates`,
    :func:`kernels.dot_entries`), and the choice among them is that of ``argmax`` of cos² over the full matrix of
    those dot products, ties to the first (:func:`kernels.max_square_pick`). ``None`` where it does not run (not
    float32 on CPU, no bfloat16 product, a norm not finite): then each chunk's Gram matrix is the float32 product."""
    if not screen.applies(P, P):
        return None
    x = P.numpy()
    n, d = x.shape
    xh = kernels.scratch("gram_xh", n * d, np.uint16).reshape(n, d)
    norm, dnorm = np.empty(n), np.empty(n)
    kernels.rows_to_bf16(x, xh, norm, dnorm)
    bound = screen.bounds(norm, dnorm, norm, dnorm, d)
    if bound is None:
        return None
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    G = kernels.scratch("gram_g", sum(m * m for m in sizes), np.uint16)
    off = 0
    for r0, m in zip(starts[:-1], sizes, strict=True):
        blas.gemm_bf16_nt(xh[r0:r0 + m], xh[r0:r0 + m], G[off:off + m * m].reshape(m, m))
        off += m * m
    crow, cols = kernels.gram_candidates(G, starts, bound)
    vals = np.empty(cols.size, dtype=np.float32)
    kernels.dot_entries(crow, cols, x, x, vals)
    j, cos = kernels.max_square_pick(crow, cols, vals)
    return torch.from_numpy(j), torch.from_numpy(cos)


class _OrthoPenalty(torch.autograd.Function):
    """L_orth = (1/n) Σ_i cos²(i, j*_i) with a backward through the maximising pairs only: with u = W / max(‖W‖,
    1e-12) and c_i = cos(i, j*_i), ∂L/∂u_i gets (2/n)·c_i·u_{j*} and ∂L/∂u_{j*} gets (2/n)·c_i·u_i, then the
    row normalisation's backward (what autograd of the dense form computes, whose max passes its gradient to
    the selected entry only)."""

    @staticmethod
    def forward(ctx, W, chunks):  # noqa: D102
        n = W.shape[0]
        norm = W.detach().norm(dim=1, keepdim=True)
        r = norm.clamp_min(1e-12)
        Wn = W.detach() / r
        i, j, c = _ortho_pairs(Wn, chunks)
        ctx.save_for_backward(Wn, r, norm, i, j, c)
        return (c * c).sum() / n

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        Wn, r, norm, i, j, c = ctx.saved_tensors
        if kernels.applies(Wn):
            return _ortho_backward_fused(Wn, r, norm, i, j, c, float(g) * 2.0 / Wn.shape[0]), None
        coef = (2.0 / Wn.shape[0]) * g * c
        dWn = torch.zeros_like(Wn)
        dWn.index_add_(0, i, coef[:, None] * Wn[j])
        dWn.index_add_(0, j, coef[:, None] * Wn[i])
        radial = (dWn * Wn).sum(dim=1, keepdim=True)
        dW = torch.where(norm > 1e-12, dWn - radial * Wn, dWn) / r
        return dW, None


def _ortho_backward_fused(Wn, r, norm, i, j, c, scale: float) -> torch.Tensor:
    """:class:`_OrthoPenalty`'s backward by the fused CPU kernel (one pass over the rows)."""
    n = Wn.shape[0]
    partner = torch.full((n,), -1, dtype=torch.long)
    partner[i] = j
    cos = Wn.new_zeros(n)
    cos[i] = c
    crow_r, _, src = kernels.by_latent(i.numpy(), j.numpy(), n)
    dW = torch.empty_like(Wn)
    clamped = (norm.squeeze(1) <= 1e-12).to(torch.uint8)
    kernels.ortho_backward(Wn.numpy(), r.squeeze(1).contiguous().numpy(), clamped.numpy(), partner.numpy(),
                           cos.numpy(), crow_r, src, scale, dW.numpy())
    return dW
