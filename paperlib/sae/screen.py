"""The exact BatchTopK encoder of a float32 training step, screened by a bfloat16 product.

The selection keeps the k·B largest of ReLU(x_c W_enc) over the batch. Only those entries enter the rest of the
step, yet the full float32 product (2·B·d·n FLOPs) is most of a step's time. Here a bfloat16 product with float32
sums (:mod:`paperlib.sae.blas`, several times faster where the CPU has bfloat16 arithmetic) gives every entry a
value p̃ and a rigorous error bound e, so the exact float32 value p = x_c[i] · W_enc[:, j] lies in [p̃ − e, p̃ + e].
Then:

1. a threshold t is accepted when at least k·B entries have p̃ − e ≥ t (so the k·B-th largest exact value is
   ≥ t); the entries with p̃ + e ≥ t are gathered;
2. t* = the k·B-th largest lower bound among them (≥ t, and again a lower bound of the k·B-th largest exact
   value); every entry that can reach t* (p̃ + e ≥ t*) is a candidate, and no other entry can be selected;
3. the candidates' exact values are float32 dot products in one fixed summation order
   (:func:`kernels.dot_entries`), and the selection among them is that of the full product: every value above
   the k·B-th largest v, then the first ones equal to v in row-major order (:func:`kernels.keep_top_count`).

So the selected entries and values are those of the full float32 product whose entries are these dot products:
the same as the unscreened path up to floating-point reassociation, whatever the screen let through. The screen
only decides the cost: with oneDNN's bfloat16-rounded product it gathers 1.4–2.1·k·B entries, of which 1.4–1.7·k·B
need a dot product, in trained and freshly initialised SAEs of the default profile (2.0–2.5 and 1.8–2.2 for its
meta SAE, k = 8 of 208); with the AMX kernel's float32 output, 1.5–1.9 and 1.3–1.6 (2.5 and 2.0).

Where the kernels were built with AMX and Linux grants the tile state, the product and the screen run fused
(:func:`kernels.amx_screen`): 32 × 32 blocks of the product are screened while in L1, so the [B, n] values are
never written (B and d multiples of 32, n of 16). Elsewhere torch's bfloat16 ``mm`` (oneDNN, :mod:`paperlib.sae.blas`)
writes the product, rounded to bfloat16, into the first half of the work array and the screen reads it. Both give
the same selection, bit for bit (tested): the screen decides what is computed exactly, never the result.

The bound. With x̂, Ŵ the bfloat16 roundings (unit roundoff u = 2⁻⁸; subnormals flushed to zero, so their whole
value counts as rounding error), Δx = x − x̂, ΔW = W − Ŵ and γ = d·2⁻²⁴ / (1 − d·2⁻²⁴):

    |p̃ − p| ≤ ‖Δx_i‖‖W_j‖ + ‖x̂_i‖‖ΔW_j‖ + 2γ‖x̂_i‖‖Ŵ_j‖ + γ‖x_i‖‖W_j‖ + (flushed underflow),

by x·W − x̂·Ŵ = Δx·W + x̂·ΔW, Cauchy–Schwarz, and the float32 summation bound γ·Σ|terms| for any order (applied
twice to the library's sums, whose order and pairing are not documented, and once to ours). The code uses
e = a_i b_j + c_i f_j + rel·|p̃| + 2⁻¹⁰⁰ with a_i = (‖Δx_i‖ + 5γ(1 + u)²‖x_i‖)(1 + 2⁻¹⁶), b_j = ‖W_j‖,
c_i = (1 + u)‖x_i‖(1 + 2⁻¹⁶) and f_j = ‖ΔW_j‖ (norms in float64): the factor 1 + 2⁻¹⁶ and rel = 2⁻²⁰ cover the
float32 rounding of e and of p̃ ± e, and 2⁻¹⁰⁰ covers products and sums below float32's normal range. Where the
product's sums are rounded to bfloat16 (oneDNN, to nearest: a move of at most 2⁻⁸/(1 − 2⁻⁸)·|p̃|),
rel = 2⁻⁷ + 2⁻²⁰ (``kernels.REL_BFLOAT16``).

:func:`select` returns ``None`` (the caller then takes the full float32 product) when the product is not
available, the dtype is not float32, a norm is not finite, or no positive threshold passes: fewer than k·B
entries are surely positive.
"""

from __future__ import annotations

import numpy as np
import torch

from paperlib.sae import blas, kernels

U_BF16 = 2.0 ** -8
GUESS_FACTORS = (0.97, 0.75, 0.5)
"""Thresholds tried, as multiples of the k·rows-th largest lower bound in a strided subsample of ~32 rows."""
GATHER_SLOTS = 4
"""Slots of the one-pass gather, in multiples of k·B (the two passes run when more entries pass)."""


def applies(xc: torch.Tensor, W_enc: torch.Tensor) -> bool:
    """The screened encoder can run: float32 CPU tensors, the kernels and the bfloat16 product are available."""
    return (xc.dtype == torch.float32 and W_enc.dtype == torch.float32 and kernels.applies(xc, W_enc)
            and blas.available())


def bounds(x_norm: np.ndarray, x_dnorm: np.ndarray, w_norm: np.ndarray, w_dnorm: np.ndarray,
           d: int) -> tuple[np.ndarray, ...] | None:
    """(a, b, c, f) of the screening bound e = a_i b_j + c_i f_j + … (float32), or ``None`` if a norm is not
    finite."""
    if not (np.isfinite(x_norm).all() and np.isfinite(x_dnorm).all() and np.isfinite(w_norm).all()
            and np.isfinite(w_dnorm).all()):
        return None
    gamma = d * 2.0 ** -24 / (1 - d * 2.0 ** -24)
    inflate = 1 + 2.0 ** -16
    a = ((x_dnorm + 5 * gamma * (1 + U_BF16) ** 2 * x_norm) * inflate).astype(np.float32)
    c = ((1 + U_BF16) * x_norm * inflate).astype(np.float32)
    return a, w_norm.astype(np.float32), c, w_dnorm.astype(np.float32)


def _guess(P_sub: np.ndarray, rows: np.ndarray, bound: tuple[np.ndarray, ...], k: int, rel: float) -> float:
    """The k·len(rows)-th largest lower bound p̃ − e among the screened values P_sub (float32) of the given rows,
    ``rel`` the bound's relative term."""
    a, b, c, f = bound
    low = P_sub - (a[rows, None] * b + c[rows, None] * f + np.float32(rel) * np.abs(P_sub))
    low = low.reshape(-1)
    count = min(k * len(rows), low.size)
    return float(kernels.kth_largest(low, count))


def uses_amx(B: int, d: int, n: int) -> bool:
    """The screen runs fused with its product on AMX (:func:`kernels.amx_screen`) at this shape."""
    return kernels.amx_ready() and B % 32 == 0 and d % 32 == 0 and n % 16 == 0


def select(xc: torch.Tensor, W_enc: torch.Tensor, k: int, P_work: torch.Tensor):
    """The BatchTopK selection of ReLU(xc W_enc) (k·B entries) as (rows, cols, vals, crow) in row-major order,
    all values positive, or ``None`` (see the module docstring). ``P_work`` is a float32 [B, n] work array (the
    screened product is written there unless the screen runs fused with it on AMX)."""
    B, d = xc.shape
    n = W_enc.shape[1]
    total = k * B
    if not 0 < k < n:
        return None
    amx = uses_amx(B, d, n)
    x, W, P = xc.detach().numpy(), W_enc.detach().numpy(), P_work.numpy()
    xh = kernels.scratch("screen_xh", B * d, np.uint16).reshape(B, d)
    WT = kernels.scratch("screen_WT", n * d, np.float32).reshape(n, d)
    Wh = kernels.scratch("screen_WhT", n * d, np.uint16)  # [n, d], or [d / 2, n, 2] for AMX
    x_norm, x_dnorm, w_norm, w_dnorm = (np.empty(m) for m in (B, B, n, n))
    kernels.rows_to_bf16(x, xh, x_norm, x_dnorm)
    kernels.cols_to_bf16_t(W, WT, Wh, w_norm, w_dnorm, vnni=amx)
    bound = bounds(x_norm, x_dnorm, w_norm, w_dnorm, d)
    if bound is None:
        return None
    rows = np.arange(0, B, max(1, B // 32))
    if amx:
        sub = kernels.scratch("screen_sub", -(-len(rows) // 32) * 32 * d, np.uint16).reshape(-1, d)
        sub[:len(rows)], sub[len(rows):] = xh[rows], 0
        P_sub = np.empty((sub.shape[0], n), np.float32)
        kernels.amx_screen(sub, Wh, n, None, 0, None, None, 0, P=P_sub)
        t_sub = _guess(P_sub[:len(rows)], rows, bound, k, kernels.REL_FLOAT32)
    else:  # the product rounded to bfloat16, in the first half of the work array
        P = P.view(np.uint16).reshape(-1)[:B * n].reshape(B, n)
        blas.gemm_bf16_nt(xh, Wh.reshape(n, d), P)
        P_sub = (P[rows].astype(np.uint32) << 16).view(np.float32)
        t_sub = _guess(P_sub, rows, bound, k, kernels.REL_BFLOAT16)
    cu, cl = np.empty(B, dtype=np.int64), np.empty(B, dtype=np.int64)
    for factor in GUESS_FACTORS:
        t = np.float32(t_sub * factor)
        if not (np.isfinite(t) and t > 0):
            return None
        if amx:
            once = kernels.amx_screen(xh, Wh, n, bound, t, cu, cl, GATHER_SLOTS * total)
            if once is None:  # more entries than slots: the product written out, then the two passes
                kernels.amx_screen(xh, Wh, n, None, 0, None, None, 0, P=P)
                amx = False
        else:
            once = kernels.screen_gather_once(P, bound, t, cu, cl, GATHER_SLOTS * total)
        if once is None:
            kernels.screen_count(P, bound, t, cu, cl)
        if int(cl.sum()) >= total:
            break
    else:
        return None
    offsets = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(cu, out=offsets[1:])
    if once is None:
        m = int(offsets[-1])
        cols = kernels.scratch("screen_cols", m, np.int64)
        lo, hi = kernels.scratch("screen_lo", m, np.float32), kernels.scratch("screen_hi", m, np.float32)
        kernels.screen_gather(P, bound, t, offsets, cols, lo, hi)
    else:
        cols, lo, hi = once
    return _exact_top(offsets, cols, lo, hi, x, WT, total)


def _exact_top(offsets, cols, lo, hi, x, WT, total):
    """Steps 2–3 of the module docstring on the gathered entries (row i: [offsets[i], offsets[i + 1]))."""
    t_star = kernels.kth_largest(lo, total)
    crow, cols = kernels.screen_compact(offsets, cols, hi, t_star)
    vals = np.empty(cols.size, dtype=np.float32)
    kernels.dot_entries(crow, cols, x, WT, vals)
    np.maximum(vals, 0, out=vals)
    crow, rows, cols, vals = kernels.keep_top_count(crow, cols, vals, total)
    return tuple(torch.from_numpy(v) for v in (rows, cols, vals, crow))
