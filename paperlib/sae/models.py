"""BatchTopK sparse autoencoders (method.md §1): primary SAE and meta SAE, with a sparse training path.

Conventions (all from method.md §1):

- Input x [B, d] is standardised per token, x̃ = (x − mean) / (std + 1e-5) over d (``std`` is the
  unbiased standard deviation, as in the reference). Every loss lives in this normalised space;
  :meth:`BatchTopKSAE.decode` can map back to the raw scale given the per-token statistics.
- Optional per-dimension input standardisation (not in the reference; off by default): buffers
  ``input_mean`` [d] and ``input_scale`` [d] (identity: zeros / ones), set with
  :meth:`BatchTopKSAE.set_input_standardisation`. When set, x ← (x − input_mean) / input_scale is
  applied *before* the per-token standardisation everywhere a raw x enters (``normalize``,
  ``pre_acts``, ``encode``, ``reconstruct``, ``training_loss``), and raw-scale outputs
  (``reconstruct``, ``decode`` with mean/scale) invert it: x̂_raw = (x̂·scale + mean)·input_scale +
  input_mean, where mean/scale are the per-token statistics of the per-dim standardised input
  (:meth:`BatchTopKSAE.normalize_with_stats`). It exists for residual streams with massive outlier
  dimensions (Gemma 3), where the per-token standardised input is essentially one coordinate.
  With identity buffers every computation is exactly the reference one (bitwise).
- pre = ReLU((x̃ − b_dec) W_enc); training encode keeps the top k·B entries of the flattened [B, n]
  batch (exact batch L0 = k, ties included: the selection is a ``torch.topk`` over candidates that
  provably contain the global top k·B, see :func:`batch_topk_indices`).
- Inference encode is per token, f_i = pre_i · 1[pre_i > θ_i]; before calibration a running global
  threshold (EMA of the batch's minimum selected activation, β = 0.99) is the fallback.
- Decode x̂ = f W_dec + b_dec. W_dec rows are kept at unit norm (:meth:`project_decoder_grad`
  before the optimiser step, :meth:`renorm_decoder` after it).
- AuxK: a latent is dead once it went ``dead_after`` consecutive training batches without being
  selected. Per token the top min(k_aux, #dead) dead pre-activations are decoded without b_dec and
  regress the *detached* residual x̃ − x̂; loss = MSE + α_aux · MSE_aux (both means over B and d).

Speed: the training path (:meth:`BatchTopKSAE.training_loss`) never forms the dense [B, n] code
matrix for the decoder. After the (dense, no-grad) encoder product, the only dense O(B·n·d) operation of
a step (in float32 on CPUs with bfloat16 arithmetic a bfloat16 screen plus exact float32 dot products for its
candidates, :mod:`paperlib.sae.screen`), the BatchTopK selection keeps the chosen (token, latent) pairs as a
CSR pattern. On CPU the fused
kernels of :mod:`paperlib.sae.kernels` (C with OpenMP, built on first use) then do the selection, the decode
and every gradient in a few passes (:class:`_FusedSparseMSE`); elsewhere (CUDA, or no C compiler) two custom
autograd Functions do the decode (``embedding_bag``) and both backwards (sampled dense-dense products and
sparse-transpose matmuls). Both agree up to floating-point reassociation.
:meth:`BatchTopKSAE.dense_training_loss` is the naive dense reference with identical semantics.
"""

from __future__ import annotations

import json
import math
import warnings
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from paperlib.config.io import atomic_path
from paperlib.sae import kernels, screen

EPS = 1e-5
THRESHOLD_BETA = 0.99

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


# ---------------------------------------------------------------------------------------------
# BatchTopK selection
# ---------------------------------------------------------------------------------------------


def batch_topk_indices(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted flat indices (into ``pre.view(-1)``) of the top ``k·B`` entries of ``pre`` [B, n].

    Exact: the count is exactly ``min(k·B, B·n)``. The per-row top-k values form a set of k·B
    entries whose minimum t0 is ≤ the global (k·B)-th largest value, so every entry of the global
    top k·B is ≥ t0, so the candidates ``pre ≥ t0`` (found in ascending index order) contain it.
    This avoids a full-size top-k over B·n entries. For B ≥ 64 a cheaper candidate threshold is
    first tried (0.75 × the selection threshold of a strided subsample of ~32 rows); it is used only
    when at least k·B entries pass it, so the result is exact either way. Among the candidates, the
    (k·B)-th largest value v is found by linear-time selection (:func:`kth_largest`); every candidate
    above v is kept, then the lowest-index candidates equal to v up to k·B in all (:func:`top_count_mask`).
    The candidates stay in index order, so no sort is needed, and ties break deterministically.
    """
    if pre.ndim != 2:
        raise ValueError(f"pre must be [B, n], got shape {tuple(pre.shape)}")
    if 0 < k < pre.shape[1] and kernels.applies(pre):
        sel = batch_topk_select(pre, k)
        if sel is not None:
            return sel[0] * pre.shape[1] + sel[1]
    return _batch_topk_indices_torch(pre, k)


def _batch_topk_indices_torch(pre: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`batch_topk_indices` in torch ops (any device and dtype)."""
    B, n = pre.shape
    total = k * B
    flat = pre.reshape(-1)
    if k >= n:
        return torch.arange(B * n, device=pre.device)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=pre.device)
    cand = None
    if B >= 64:
        # cheap guess from a strided subsample of rows, accepted only if it keeps >= k·B candidates
        # (a deterministic function of ``pre``; any accepted candidate set contains the top k·B)
        sub = pre[:: max(1, B // 32)]
        t_guess = sub.reshape(-1).topk(k * sub.shape[0], sorted=False).values.min() * 0.75
        if t_guess > 0:
            c = (flat >= t_guess).nonzero().squeeze(1)
            if c.numel() >= total:
                cand = c
    if cand is None:
        t0 = pre.topk(k, dim=1, sorted=False).values.min()
        cand = (flat >= t0).nonzero().squeeze(1)
    if cand.numel() > total:
        cand = cand[top_count_mask(flat[cand], total)]
    return cand


SELECT_FACTORS = (0.97, 0.75)
"""Candidate thresholds of :func:`batch_topk_select`, as multiples of the selection threshold of a strided
subsample of about 32 rows, tried in turn until at least k·B entries pass (a counting pass each)."""


def batch_topk_select(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, ...] | None:
    """The BatchTopK selection of :func:`batch_topk_indices` of ``relu(pre)`` by the fused kernels: (rows, cols,
    vals, crow) of the top k·B entries in row-major order (``crow`` [B + 1] indexes them by row), all values
    positive. ``None`` when fewer than k·B entries are positive enough for the kernels' candidate threshold
    (then use the torch path on ``relu(pre)``). Exact: a candidate threshold is accepted only when at least k·B
    entries pass it, and the final choice (above the (k·B)-th largest value, then the lowest-index ties) is
    the torch path's."""
    B, n = pre.shape
    total = k * B
    a = pre.detach().numpy()
    stride = max(1, B // 32)
    sub = a[::stride].reshape(-1)
    count = min(k * -(-B // stride), sub.size)
    t_sub = kernels.kth_largest(sub, count)
    counts = np.empty(B, dtype=np.int64)
    offsets = np.zeros(B + 1, dtype=np.int64)
    for factor in SELECT_FACTORS if stride > 1 else (1.0,):
        t = t_sub * a.dtype.type(factor)
        if not t > 0:
            return None
        once = kernels.gather_at_least_once(a, t, counts, 2 * total)  # one pass; None: more than ~2·k·B pass
        if once is None:
            kernels.count_at_least(a, t, counts)
        np.cumsum(counts, out=offsets[1:])
        if offsets[-1] >= total:
            break
    else:
        return None
    if once is None:
        m = int(offsets[-1])
        cols, vals = np.empty(m, dtype=np.int64), np.empty(m, dtype=a.dtype)
        kernels.gather_at_least(a, t, offsets, cols, vals)
    else:
        cols, vals = once
    crow, rows, cols, vals = kernels.keep_top_count(offsets, cols, vals, total)
    return tuple(torch.from_numpy(v) for v in (rows, cols, vals, crow))


def select_pattern(pre: torch.Tensor, k: int) -> tuple[SparsePattern, torch.Tensor]:
    """The BatchTopK selection of ``relu(pre)`` as (pattern, values): by the fused kernels, or by the torch path
    when they decline (few positive entries, k = n). ``pre`` may be ReLU'd in place on the torch path."""
    B, n = pre.shape
    sel = batch_topk_select(pre, k) if k < n else None
    if sel is not None:
        rows, cols, vals, crow = sel
        return SparsePattern(rows, cols, (B, n), crow), vals
    pre.relu_()
    flat = _batch_topk_indices_torch(pre, k)
    return SparsePattern.from_flat(flat, (B, n)), pre.view(-1)[flat]


def kth_largest(vals: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count``-th largest entry of the 1-D ``vals`` (1 ≤ count ≤ len), as a 0-d tensor. On CPU by
    :func:`kernels.kth_largest` (linear time: radix selection for float32, else numpy's introselect; an order of
    magnitude faster than ``torch.topk`` here)."""
    m = vals.numel()
    if not 1 <= count <= m:
        raise ValueError(f"count must be in [1, {m}], got {count}")
    if vals.device.type == "cpu":
        return torch.as_tensor(kernels.kth_largest(vals.detach().numpy(), count))
    return vals.kthvalue(m - count + 1).values


def top_count_mask(vals: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of exactly ``count`` entries of the 1-D ``vals``: every entry above the
    ``count``-th largest value, then the first entries (in order) equal to it."""
    v = kth_largest(vals, count)
    keep = vals > v
    need = count - int(keep.sum())
    if need > 0:
        eq = vals == v
        keep |= eq & (eq.cumsum(0) <= need)
    return keep


def batch_topk_mask(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask [B, n] of the top k·B entries of the flattened batch (exactly k·B True)."""
    mask = torch.zeros(pre.numel(), dtype=torch.bool, device=pre.device)
    mask[batch_topk_indices(pre, k)] = True
    return mask.view_as(pre)


def _csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]):
    return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def _crow(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
    return crow


def fired_entries(vals: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(latent of every selected entry with a positive value, the smallest such value or ``None``): what the dead
    counters and the running threshold are advanced with. When every value is positive (always on the fused
    path) no boolean indexing is needed (~1 ms per step for the default profile's 65,536 entries)."""
    if vals.numel() == 0:
        return cols, None
    low = vals.min()
    if low > 0:
        return cols, low
    positive = vals > 0
    pos = vals[positive]
    return cols[positive], (pos.min() if pos.numel() else None)


class SparsePattern:
    """The selected (token, latent) entries of a batch, in two CSR layouts.

    ``rows``/``cols`` are sorted row-major (token, then latent; as :func:`batch_topk_indices` gives
    them) and ``crow`` [B + 1] indexes them by token. The transpose (latent-major) layout is kept too:
    ``perm`` orders the entries by latent (stable), ``crow_t`` [n + 1] indexes them by latent and
    ``rows_t = rows[perm]`` (computed on first use: inference never needs them). Gradients of W_enc
    and W_dec are then one CSR [n, B] × dense [B, d] product each, with no sparse transpose or format
    conversion inside the backward pass.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int],
                 crow: torch.Tensor | None = None) -> None:
        self.rows, self.cols, self.shape = rows, cols, (int(shape[0]), int(shape[1]))
        self.crow = _crow(rows, self.shape[0]) if crow is None else crow

    @cached_property
    def _by_latent(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(crow_t, perm, rows_t): a stable sort of the entries by latent."""
        if self.cols.device.type == "cpu" and kernels.applies():
            return tuple(torch.from_numpy(a) for a in kernels.by_latent(
                self.rows.numpy(), self.cols.numpy(), self.shape[1]))
        perm = torch.argsort(self.cols, stable=True)
        return _crow(self.cols, self.shape[1]), perm, self.rows[perm]

    @property
    def perm(self) -> torch.Tensor:
        return self._by_latent[1]

    @property
    def crow_t(self) -> torch.Tensor:
        return self._by_latent[0]

    @property
    def rows_t(self) -> torch.Tensor:
        return self._by_latent[2]

    @classmethod
    def from_flat(cls, flat: torch.Tensor, shape: tuple[int, int]) -> SparsePattern:
        """Pattern of sorted flat indices into a row-major [B, n] matrix."""
        n = int(shape[1])
        return cls(flat // n, flat % n, shape)

    def transposed_times(self, vals: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Sᵀ @ dense [n, d] for the sparse S [B, n] holding ``vals`` (row-major order) at the pattern."""
        return _csr(self.crow_t, self.rows_t, vals[self.perm], (self.shape[1], self.shape[0])) @ dense


class _SparseEncode(torch.autograd.Function):
    """vals[e] = ReLU((x̃ − b_dec) W_enc)[rows[e], cols[e]] with a sparse backward.

    The forward receives the already computed values (from the no-grad dense encoder) and only
    attaches the gradient: dW_enc = x_cᵀ S_g (S_g sparse [B, n] holding the upstream gradient at the
    selected entries, masked by ReLU'), db_dec = −W_enc · colsum(S_g).
    """

    @staticmethod
    def forward(ctx, W_enc, b_dec, xc, vals, pattern):  # noqa: D102
        ctx.save_for_backward(W_enc, xc, vals)
        ctx.pattern = pattern
        return vals.clone()

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        W_enc, xc, vals = ctx.saved_tensors
        pattern = ctx.pattern
        g = torch.where(vals > 0, g, torch.zeros_like(g))
        gW = gb = None
        if ctx.needs_input_grad[0]:
            gW = pattern.transposed_times(g, xc).t()
        if ctx.needs_input_grad[1]:
            colsum = torch.zeros(W_enc.shape[1], dtype=g.dtype, device=g.device).index_add_(0, pattern.cols, g)
            gb = -(W_enc @ colsum)
        return gW, gb, None, None, None


class _SparseDecode(torch.autograd.Function):
    """out[b] = Σ_{e: rows[e]=b} vals[e] · W_dec[cols[e]]  (no bias), with a sparse backward."""

    @staticmethod
    def forward(ctx, vals, W_dec, pattern):  # noqa: D102
        ctx.save_for_backward(vals, W_dec)
        ctx.pattern = pattern
        return F.embedding_bag(pattern.cols, W_dec, pattern.crow[:-1], mode="sum", per_sample_weights=vals)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        vals, W_dec = ctx.saved_tensors
        p = ctx.pattern
        g = g.contiguous()
        gv = gW = None
        if ctx.needs_input_grad[0]:
            mask = _csr(p.crow, p.cols, torch.zeros_like(vals), p.shape)
            gv = torch.sparse.sampled_addmm(mask, g, W_dec.t(), beta=0.0).values()
        if ctx.needs_input_grad[1]:
            gW = p.transposed_times(vals, g)
        return gv, gW, None


class _FusedSparseMSE(torch.autograd.Function):
    """mse = mean((b_dec + S W_dec − x̃)²) with S the selected codes, by the fused kernels.

    The forward computes the loss and, when a gradient is wanted, every gradient it implies
    (:func:`kernels.decode_residual`, :func:`kernels.latent_grads`): dW_dec = Sᵀg, dW_enc = x_cᵀ S_g,
    db_dec = Σ_b g_b − W_enc · colsum(S_g), where g = 2(x̂ − x̃)/(B·d) and S_g holds the codes' gradients
    masked by ReLU'. The backward only scales them by the upstream gradient. Also returns the
    reconstruction (no gradient; AuxK regresses its residual).
    """

    @staticmethod
    def forward(ctx, W_enc, W_dec, b_dec, xn, xc, vals, pattern):  # noqa: D102
        B, d = xn.shape
        want = ctx.needs_input_grad[:3]
        with_grad = any(want)
        dt = xn.dtype
        recon = torch.empty_like(xn)
        np_dt = vals.numpy().dtype
        g = torch.from_numpy(kernels.scratch("g", B * d, np_dt)).view(B, d) if with_grad else recon
        gv = torch.from_numpy(kernels.scratch("gv", vals.numel(), np_dt))
        sq = np.empty(B, dtype=np.float64)
        scale = np.array(2.0 / (B * d), dtype=np_dt)[()]
        kernels.decode_residual(pattern.crow.numpy(), pattern.cols.numpy(), vals.numpy(), W_dec.detach().numpy(),
                                b_dec.detach().numpy(), xn.numpy(), scale, recon.numpy(), g.numpy(), gv.numpy(),
                                sq, with_grad)
        ctx.grads = None
        if with_grad:
            n = W_dec.shape[0]
            gW_dec = torch.empty_like(W_dec)
            gW_enc = torch.empty_like(W_enc)
            colsum = np.empty(n, dtype=np.float64)
            crow_t, perm, rows_t = pattern.crow_t, pattern.perm, pattern.rows_t
            kernels.latent_grads(crow_t.numpy(), perm.numpy(), rows_t.numpy(), vals.numpy(), gv.numpy(), g.numpy(),
                                 xc.numpy(), gW_dec.detach().numpy(), gW_enc.detach().numpy(), colsum)
            gb = g.sum(0) - W_enc.detach() @ torch.from_numpy(colsum).to(dt)
            ctx.grads = (gW_enc, gW_dec, gb)
        ctx.mark_non_differentiable(recon)
        ctx.set_materialize_grads(False)  # recon is not differentiable: no [B, d] zero gradient for it (~1 ms a step)
        return torch.tensor(float(sq.sum()) / (B * d), dtype=dt), recon

    @staticmethod
    def backward(ctx, g_mse, g_recon):  # noqa: D102
        gW_enc, gW_dec, gb = ctx.grads
        ctx.grads = None
        if not bool(g_mse == 1):
            gW_enc, gW_dec, gb = (t * g_mse for t in (gW_enc, gW_dec, gb))
        want = ctx.needs_input_grad
        return (gW_enc if want[0] else None, gW_dec if want[1] else None, gb if want[2] else None,
                None, None, None, None)


class _FusedAuxK(torch.autograd.Function):
    """The AuxK term of :meth:`BatchTopKSAE._aux_loss`, mean((top-k_aux ReLU(x_c W_enc[:, D]) W_dec[D] − r)²) over
    the dead latents D with the detached residual r = x̃ − x̂, by two fused kernels (:func:`kernels.auxk_rows`,
    :func:`kernels.auxk_grads`): the same values and gradients as autograd of that expression up to floating-point
    reassociation (tested). The forward computes the loss and every gradient it implies in one pass over the tokens
    and one over the dead latents, instead of a dozen [B, d] passes and temporaries; the residual is formed row by
    row (no [B, d] array) and x_c is only read during the call (no copy kept). The backward scales the gradients by
    the upstream one; the dead columns' and rows' gradients are sparse tensors that autograd adds in place (a dense
    [d, n] / [n, d] gradient of a gather would be built and added every step otherwise)."""

    @staticmethod
    def forward(ctx, W_enc, W_dec, b_dec, xc, xn, recon, dead_idx, ka):  # noqa: D102
        B, d = xc.shape
        D = dead_idx.numel()
        We = W_enc.detach()[:, dead_idx].t().contiguous()  # [D, d]
        Wd = W_dec.detach()[dead_idx].contiguous()
        dt = xc.dtype
        ge = torch.from_numpy(kernels.scratch("auxk_ge", B * d, xc.numpy().dtype)).view(B, d)
        act, gpre = torch.empty(B, D, dtype=dt), torch.empty(B, D, dtype=dt)
        sq = np.empty(B, dtype=np.float64)
        N = B * d
        kernels.auxk_rows(xc.numpy(), xn.numpy(), recon.numpy(), We.numpy(), Wd.numpy(), int(ka), 2.0 / N,
                          ge.numpy(), act.numpy(), gpre.numpy(), sq)
        gWe, gWd = torch.empty(D, d, dtype=dt), torch.empty(D, d, dtype=dt)
        colsum = np.empty(D, dtype=np.float64)
        kernels.auxk_grads(xc.numpy(), ge.numpy(), act.numpy(), gpre.numpy(), gWe.numpy(), gWd.numpy(), colsum)
        gb = -(We.t() @ torch.from_numpy(colsum).to(dt))  # b_dec enters through x_c = x̃ − b_dec
        ctx.grads = (gWe, gWd, gb)
        ctx.dead_idx, ctx.n = dead_idx, W_enc.shape[1]
        return torch.tensor(float(sq.sum()) / N, dtype=dt)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        gWe, gWd, gb = ctx.grads  # kept ([D, d] each): a retained graph may run this backward again
        if not bool(g == 1):
            gWe, gWd, gb = (t * g for t in (gWe, gWd, gb))
        dead_idx, n = ctx.dead_idx, ctx.n
        D, d = gWe.shape
        rows = torch.arange(d).repeat_interleave(D)
        gW_enc = torch.sparse_coo_tensor(torch.stack([rows, dead_idx.repeat(d)]), gWe.t().reshape(-1), (d, n),
                                         is_coalesced=True)
        gW_dec = torch.sparse_coo_tensor(dead_idx[None], gWd, (n, d), is_coalesced=True)
        return gW_enc, gW_dec, gb, None, None, None, None, None


def fused_sparse_mse(W_enc, W_dec, b_dec, xn, xc, vals, pattern: SparsePattern):
    """(mse, reconstruction) of the selected codes ``vals`` at ``pattern`` (see :class:`_FusedSparseMSE`)."""
    return _FusedSparseMSE.apply(W_enc, W_dec, b_dec, xn, xc, vals, pattern)


def sparse_encode_values(W_enc, b_dec, xc, vals, pattern: SparsePattern) -> torch.Tensor:
    """Differentiable selected encoder values (see :class:`_SparseEncode`)."""
    return _SparseEncode.apply(W_enc, b_dec, xc, vals, pattern)


def sparse_decode(vals, W_dec, pattern: SparsePattern) -> torch.Tensor:
    """Differentiable sparse decode without bias (see :class:`_SparseDecode`)."""
    return _SparseDecode.apply(vals, W_dec, pattern)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class BatchTopKSAE(nn.Module):
    """BatchTopK SAE (method.md §1). Also used as the meta SAE (input = primary decoder rows)."""

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        k: int,
        seed: int = 0,
        *,
        dead_after: int = 5,
        k_aux: int = 512,
        aux_alpha: float = 1 / 32,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if d_in < 1 or n_latents < 1:
            raise ValueError(f"d_in and n_latents must be positive, got {d_in}, {n_latents}")
        if not 1 <= k <= n_latents:
            raise ValueError(f"k={k} must be in [1, n_latents={n_latents}]")
        if dead_after < 1 or k_aux < 0 or aux_alpha < 0:
            raise ValueError("dead_after must be >= 1, k_aux and aux_alpha >= 0")
        self.d_in, self.n_latents, self.k = int(d_in), int(n_latents), int(k)
        self.dead_after, self.k_aux, self.aux_alpha = int(dead_after), int(k_aux), float(aux_alpha)
        self.seed = int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        W_enc = torch.empty(d_in, n_latents, dtype=torch.float32)
        # kaiming-uniform as nn.init.kaiming_uniform_ on the [n, d] (Linear-style) weight, a=√5
        bound = 1.0 / math.sqrt(d_in)
        W_enc.uniform_(-bound, bound, generator=gen)
        W_dec = W_enc.t().contiguous()
        W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_enc = nn.Parameter(W_enc.to(dtype))
        self.W_dec = nn.Parameter(W_dec.to(dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        self.register_buffer("steps_since_fired", torch.zeros(n_latents, dtype=torch.long))
        self.register_buffer("threshold", torch.full((), -1.0, dtype=dtype))
        # optional per-dimension input standardisation (identity = off, see module docstring)
        self.register_buffer("input_mean", torch.zeros(d_in, dtype=dtype))
        self.register_buffer("input_scale", torch.ones(d_in, dtype=dtype))
        self._per_dim = False
        self.to(device)

    # -- config / io -------------------------------------------------------------------------
    def config(self) -> dict:
        return dict(
            d_in=self.d_in, n_latents=self.n_latents, k=self.k, seed=self.seed,
            dead_after=self.dead_after, k_aux=self.k_aux, aux_alpha=self.aux_alpha,
            eps=EPS, normalisation="per-token (x - mean) / (std + eps)",
            input_standardisation=self.input_standardisation,
        )

    @property
    def input_standardisation(self) -> str:
        """``"none"`` (identity buffers, the reference) or ``"per-dim"``."""
        return "per-dim" if self._per_dim else "none"

    @torch.no_grad()
    def set_input_standardisation(self, mean: torch.Tensor | np.ndarray | None,
                                  scale: torch.Tensor | np.ndarray | None) -> None:
        """Set the per-dimension standardisation x ← (x − mean) / scale (``None, None`` → identity).

        ``mean`` and ``scale`` are [d] (any float dtype; stored in the model dtype), finite, scale > 0.
        """
        if mean is None and scale is None:
            self.input_mean.zero_()
            self.input_scale.fill_(1.0)
            self._per_dim = False
            return
        if mean is None or scale is None:
            raise ValueError("give both mean and scale (or neither, for the identity)")
        m = torch.as_tensor(np.asarray(mean) if not isinstance(mean, torch.Tensor) else mean)
        sc = torch.as_tensor(np.asarray(scale) if not isinstance(scale, torch.Tensor) else scale)
        for name, t in (("mean", m), ("scale", sc)):
            if tuple(t.shape) != (self.d_in,):
                raise ValueError(f"input {name} must have shape [{self.d_in}], got {tuple(t.shape)}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"input {name} contains non-finite values")
        if not bool((sc > 0).all()):
            raise ValueError("input scale must be > 0 in every dimension")
        self.input_mean.copy_(m.to(self.input_mean.dtype))
        self.input_scale.copy_(sc.to(self.input_scale.dtype))
        if not bool((self.input_scale > 0).all()):  # positive in fp64 but underflowed in the model dtype
            raise ValueError("input scale underflows to 0 in the model dtype")
        self._per_dim = self._buffers_non_identity()

    def _buffers_non_identity(self) -> bool:
        return bool((self.input_mean != 0).any() or (self.input_scale != 1).any())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # SAEs saved before the per-dim standardisation existed have no such buffers: identity
        for name in ("input_mean", "input_scale"):
            if prefix + name not in state_dict:
                state_dict[prefix + name] = getattr(self, name).detach().clone().fill_(
                    0.0 if name == "input_mean" else 1.0)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._per_dim = self._buffers_non_identity()

    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (atomic files)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(directory / "config.json") as tmp:
            tmp.write_text(json.dumps(self.config(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> BatchTopKSAE:
        directory = Path(directory)
        if not (directory / "config.json").exists():
            raise FileNotFoundError(f"no SAE saved in {directory} (config.json missing)")
        cfg = json.loads((directory / "config.json").read_text())
        model = cls(cfg["d_in"], cfg["n_latents"], cfg["k"], cfg.get("seed", 0),
                    dead_after=cfg["dead_after"], k_aux=cfg["k_aux"], aux_alpha=cfg["aux_alpha"])
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        recorded = cfg.get("input_standardisation", "none")
        if recorded != model.input_standardisation:
            raise ValueError(f"{directory}: config.json says input_standardisation={recorded!r} but the "
                             f"weights imply {model.input_standardisation!r} (corrupt or mixed files)")
        return model.to(device)

    # -- basic maps ----------------------------------------------------------------------------
    @staticmethod
    def normalize_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x̃, mean, scale) with x̃ = (x − mean) / scale, scale = std + 1e-5, per row."""
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean = x.mean(dim=-1, keepdim=True)
        xc = x - mean
        # unbiased std, computed explicitly (torch.std is ~5x slower on CPU here)
        scale = (xc * xc).sum(dim=-1, keepdim=True).div_(max(x.shape[-1] - 1, 1)).sqrt_() + EPS
        return xc / scale, mean, scale

    def _dim_standardise(self, x: torch.Tensor) -> torch.Tensor:
        """x ← (x − input_mean) / input_scale when per-dim standardisation is on (else x itself)."""
        if not self._per_dim:
            return x
        return (x - self.input_mean) / self.input_scale

    def _dim_unstandardise(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_dim_standardise`."""
        if not self._per_dim:
            return x
        return x * self.input_scale + self.input_mean

    def normalize_with_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x̃, mean, scale) of raw x: per-dim standardisation (if set), then :meth:`normalize_stats`.

        ``mean``/``scale`` are what :meth:`decode` needs to map a reconstruction back to raw x.
        """
        self._check_input(x)
        return self.normalize_stats(self._dim_standardise(x.to(self.W_enc.dtype)))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised input x̃ (per-dim standardisation if set, then per-token)."""
        return self.normalize_with_stats(x)[0]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"expected input [B, {self.d_in}], got {tuple(x.shape)}")

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU pre-activations [B, n] of raw input x (normalised inside)."""
        return torch.relu((self.normalize(x) - self.b_dec) @ self.W_enc)

    def encode(self, x: torch.Tensor, thresholds: torch.Tensor | float | str | None = None):
        """Dense codes [B, n].

        ``thresholds=None``: BatchTopK over the batch (training semantics, batch L0 = k).
        ``thresholds=θ`` (tensor [n] or float): per-token f = pre · 1[pre > θ], batch independent.
        ``thresholds="running"``: the running global threshold estimated during training.
        """
        pre = self.pre_acts(x)
        if thresholds is None:
            return pre * batch_topk_mask(pre, self.k)
        if isinstance(thresholds, str):
            if thresholds != "running":
                raise ValueError(f"thresholds must be a tensor, float, 'running' or None, got {thresholds!r}")
            if float(self.threshold) < 0:
                raise ValueError("running threshold not estimated yet (model never trained)")
            thresholds = self.threshold
        th = torch.as_tensor(thresholds, dtype=pre.dtype, device=pre.device)
        return pre * (pre > th)

    def decode(self, f: torch.Tensor, mean: torch.Tensor | None = None,
               scale: torch.Tensor | None = None) -> torch.Tensor:
        """x̂ = f W_dec + b_dec in normalised space; with ``mean``/``scale`` mapped back to raw.

        ``mean``/``scale`` are the per-token statistics from :meth:`normalize_with_stats` (equal to
        :meth:`normalize_stats` of raw x when there is no per-dim standardisation); when either is
        given, the per-dim standardisation (if set) is inverted as well.
        """
        out = f @ self.W_dec + self.b_dec
        if scale is not None:
            out = out * scale
        if mean is not None:
            out = out + mean
        if mean is not None or scale is not None:
            out = self._dim_unstandardise(out)
        return out

    def reconstruct(self, x: torch.Tensor, thresholds=None) -> torch.Tensor:
        """Raw-scale reconstruction of raw x (normalise, encode, decode, map back)."""
        if thresholds is None and 0 < self.k < self.n_latents and kernels.applies(self.W_enc, self.W_dec, self.b_dec):
            with torch.no_grad():
                return self._fused_reconstruct(x)
        xn, mean, scale = self.normalize_with_stats(x)
        pre = torch.relu((xn - self.b_dec) @ self.W_enc)
        if thresholds is None:  # sparse decode of the BatchTopK codes
            flat = batch_topk_indices(pre, self.k)
            pattern = SparsePattern.from_flat(flat, pre.shape)
            out = sparse_decode(pre.reshape(-1)[flat], self.W_dec, pattern)
            return self._dim_unstandardise((out + self.b_dec) * scale + mean)
        th = self.threshold if isinstance(thresholds, str) else thresholds
        f = pre * (pre > torch.as_tensor(th, dtype=pre.dtype, device=pre.device))
        return self.decode(f, mean, scale)

    def _fused_reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """BatchTopK reconstruction of raw x by the fused kernels (no gradient)."""
        self._check_input(x)
        _, xc, mean, scale = self._fused_normalize(x, with_xn=False)
        pattern, vals = self._encode_select(xc)
        out = torch.empty_like(xc)
        kernels.decode_rows(pattern.crow.numpy(), pattern.cols.numpy(), vals.numpy(), self.W_dec.detach().numpy(),
                            self.b_dec.detach().numpy(), mean.squeeze(1).numpy(), scale.squeeze(1).numpy(), out.numpy())
        return self._dim_unstandardise(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.reconstruct(x)

    # -- decoder constraint -------------------------------------------------------------------
    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from W_dec.grad the component parallel to each (unit-norm) row."""
        if self.W_dec.grad is None:
            return
        if kernels.applies(self.W_dec, self.W_dec.grad):
            kernels.project_rows(self.W_dec.detach().numpy(), self.W_dec.grad.numpy())
            return
        W = self.W_dec
        Wn = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec.grad -= (self.W_dec.grad * Wn).sum(dim=1, keepdim=True) * Wn

    @torch.no_grad()
    def renorm_decoder(self) -> None:
        """Renormalise W_dec rows to unit norm."""
        if kernels.applies(self.W_dec):
            kernels.renorm_rows(self.W_dec.detach().numpy())
            return
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    # -- training losses ----------------------------------------------------------------------
    def dead_mask(self) -> torch.Tensor:
        return self.steps_since_fired >= self.dead_after

    @torch.no_grad()
    def _update_state(self, rows_sel_cols: torch.Tensor, min_selected: torch.Tensor | None) -> None:
        """Advance the dead counters (``rows_sel_cols``: the latent of every entry selected with a positive value,
        repeats allowed) and the running threshold."""
        fired = torch.bincount(rows_sel_cols, minlength=self.n_latents) > 0  # faster than a boolean index_put
        self.steps_since_fired.add_(1).masked_fill_(fired, 0)
        if min_selected is not None:
            if float(self.threshold) < 0:
                self.threshold.fill_(float(min_selected))
            else:
                self.threshold.mul_(THRESHOLD_BETA).add_((1 - THRESHOLD_BETA) * min_selected)

    def training_loss(self, x: torch.Tensor, *, normalized: bool = False,
                      update_state: bool = True) -> dict[str, torch.Tensor]:
        """Sparse-path training loss on a batch.

        Returns a dict with ``loss`` (differentiable), ``mse``, ``aux``, ``l0`` (mean selected per
        token), ``n_dead`` (dead before this batch) and ``recon`` (normalised reconstruction,
        detached). ``normalized=True`` means x is already standardised (:meth:`normalize`, incl. the
        per-dim step). ``update_state`` advances the dead counters and the running threshold.
        """
        if kernels.applies(self.W_enc, self.W_dec, self.b_dec):
            return self._fused_training_loss(x, normalized, update_state)
        if normalized:
            xn = x.to(self.W_enc.dtype)
        else:
            xn = self.normalize(x)
        B, n = xn.shape[0], self.n_latents
        with torch.no_grad():
            xc = xn - self.b_dec
            pre = (xc @ self.W_enc).relu_()
            flat = batch_topk_indices(pre, self.k)
            pattern = SparsePattern.from_flat(flat, (B, n))
            sel_vals = pre.view(-1)[flat]
            dead = self.dead_mask()
        vals = sparse_encode_values(self.W_enc, self.b_dec, xc, sel_vals, pattern)
        recon = sparse_decode(vals, self.W_dec, pattern) + self.b_dec
        mse = (recon - xn).pow(2).mean()
        n_dead = int(dead.sum())
        aux = torch.zeros((), dtype=mse.dtype, device=mse.device)
        if n_dead > 0 and self.k_aux > 0 and self.aux_alpha > 0:
            aux = self._aux_loss(xn, (xn - recon).detach(), dead)
        if update_state:  # a latent "fires" when selected with a positive activation
            self._update_state(*fired_entries(sel_vals, pattern.cols))
        return dict(loss=mse + self.aux_alpha * aux, mse=mse.detach(), aux=aux.detach(),
                    l0=torch.tensor(flat.numel() / B), n_dead=torch.tensor(n_dead),
                    recon=recon.detach())

    def _normalize_center(self, x: torch.Tensor, normalized: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̃, x̃ − b_dec) of raw (or, with ``normalized``, already standardised) x, by the fused kernel."""
        self._check_input(x)
        dt = self.W_enc.dtype
        b = self.b_dec.detach()
        if normalized:
            xn = x.to(dt).contiguous()
            return xn, torch.sub(xn, b, out=self._work("xc", tuple(xn.shape), dt))
        return self._fused_normalize(x)[:2]

    def _work(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A work array of the fused training path, kept between steps (a fresh one costs a page fault per 4 KiB:
        ~2 ms per step for the default profile's [B, n] pre-activations). Never part of the model's state."""
        work = self.__dict__.setdefault("_work_arrays", {})
        t = work.get(name)
        if t is None or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            t = work[name] = torch.empty(shape, dtype=dtype)
        return t

    def _fused_normalize(self, x: torch.Tensor, with_xn: bool = True) -> tuple[torch.Tensor | None, ...]:
        """(x̃, x̃ − b_dec, mean [B, 1], scale [B, 1]) of raw x by the fused kernel (cf. :meth:`normalize_with_stats`).
        x̃ and x̃ − b_dec are work arrays, valid until the next such call (no autograd graph may keep them);
        ``with_xn=False`` skips writing x̃ (``None`` in its place)."""
        xs = self._dim_standardise(x.to(self.W_enc.dtype)).contiguous()
        xc = self._work("xc", tuple(xs.shape), xs.dtype)
        xn = self._work("xn", tuple(xs.shape), xs.dtype) if with_xn else None
        mean, scale = xs.new_empty(xs.shape[0], 1), xs.new_empty(xs.shape[0], 1)
        kernels.normalize_center(xs.numpy(), self.b_dec.detach().numpy(), None if xn is None else xn.numpy(),
                                 xc.numpy(), mean.numpy(), scale.numpy(), EPS)
        return xn, xc, mean, scale

    def _fused_training_loss(self, x: torch.Tensor, normalized: bool, update_state: bool) -> dict[str, torch.Tensor]:
        """:meth:`training_loss` by the fused CPU kernels (same semantics up to floating-point reassociation)."""
        xn, xc = self._normalize_center(x, normalized)
        B = xn.shape[0]
        with torch.no_grad():
            pattern, vals = self._encode_select(xc)
            dead = self.dead_mask()
        mse, recon = fused_sparse_mse(self.W_enc, self.W_dec, self.b_dec, xn, xc, vals, pattern)
        n_dead = int(dead.sum())
        aux = torch.zeros((), dtype=mse.dtype, device=mse.device)
        if n_dead > 0 and self.k_aux > 0 and self.aux_alpha > 0:
            dead_idx = dead.nonzero().squeeze(1)
            aux = _FusedAuxK.apply(self.W_enc, self.W_dec, self.b_dec, xc, xn, recon, dead_idx,
                                   min(self.k_aux, dead_idx.numel()))
        if update_state:  # a latent "fires" when selected with a positive activation
            self._update_state(*fired_entries(vals, pattern.cols))
        return dict(loss=mse + self.aux_alpha * aux, mse=mse.detach(), aux=aux.detach(),
                    l0=torch.tensor(vals.numel() / B), n_dead=torch.tensor(n_dead), recon=recon)

    def _encode_select(self, xc: torch.Tensor) -> tuple[SparsePattern, torch.Tensor]:
        """The BatchTopK selection of ReLU(x_c W_enc) on the fused path: by the screened encoder
        (:mod:`paperlib.sae.screen`) where it runs, else from the full product."""
        B, n = xc.shape[0], self.n_latents
        work = self._work("pre", (B, n), xc.dtype)
        sel = screen.select(xc, self.W_enc, self.k, work) if screen.applies(xc, self.W_enc) else None
        if sel is not None:
            rows, cols, vals, crow = sel
            return SparsePattern(rows, cols, (B, n), crow), vals
        return select_pattern(torch.mm(xc, self.W_enc, out=work), self.k)

    def _aux_loss(self, xn: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """AuxK term on the dead latents' columns only, densely: per token the top min(k_aux, #dead) dead
        pre-activations decode (without b_dec) the detached residual. The dead columns' encoder and decoder
        are gathered into [d, #dead] / [#dead, d] matrices, so the work is two small dense products
        (2·B·#dead·d FLOPs each); a sparse path would handle B·k_aux entries at a fraction of GEMM speed."""
        dead_idx = dead.nonzero().squeeze(1)
        ka = min(self.k_aux, dead_idx.numel())
        pre = torch.relu((xn - self.b_dec) @ self.W_enc[:, dead_idx])
        if ka < dead_idx.numel():
            with torch.no_grad():
                keep = torch.zeros_like(pre, dtype=torch.bool)
                keep.scatter_(1, pre.topk(ka, dim=1, sorted=False).indices, True)
            pre = pre * keep
        return (pre @ self.W_dec[dead_idx] - residual).pow(2).mean()

    def dense_training_loss(self, x: torch.Tensor, *, normalized: bool = False,
                            update_state: bool = True) -> dict[str, torch.Tensor]:
        """Naive dense reference of :meth:`training_loss` (same selection, dense autograd)."""
        xn = x.to(self.W_enc.dtype) if normalized else self.normalize(x)
        pre = torch.relu((xn - self.b_dec) @ self.W_enc)
        with torch.no_grad():
            mask = batch_topk_mask(pre, self.k)
            dead = self.dead_mask()
        f = pre * mask
        recon = f @ self.W_dec + self.b_dec
        mse = (recon - xn).pow(2).mean()
        n_dead = int(dead.sum())
        aux = torch.zeros((), dtype=mse.dtype, device=mse.device)
        if n_dead > 0 and self.k_aux > 0 and self.aux_alpha > 0:
            ka = min(self.k_aux, n_dead)
            pd = pre.masked_fill(~dead, float("-inf"))
            with torch.no_grad():
                idx = pd.topk(ka, dim=1).indices
                amask = torch.zeros_like(mask).scatter_(1, idx, True)
            arecon = (pre * amask) @ self.W_dec
            aux = (arecon - (xn - recon).detach()).pow(2).mean()
        if update_state:
            active = mask & (pre.detach() > 0)
            pos = pre.detach()[active]
            self._update_state(active.nonzero()[:, 1], pos.min() if pos.numel() else None)
        return dict(loss=mse + self.aux_alpha * aux, mse=mse.detach(), aux=aux.detach(),
                    l0=mask.sum() / xn.shape[0], n_dead=torch.tensor(n_dead), recon=recon.detach())


class MetaSAE(BatchTopKSAE):
    """Meta SAE over the primary decoder rows (method.md §1): a BatchTopK SAE whose batch is the n rows.

    Rows are standardised like tokens before encoding and the reconstruction is mapped back to each
    row's scale (:meth:`reconstruct_rows`). No per-dimension input standardisation (its buffers stay
    the identity).
    """

    def set_input_standardisation(self, mean, scale) -> None:  # noqa: D102
        if mean is not None or scale is not None:
            raise ValueError("the meta SAE takes decoder rows as input; per-dim input standardisation is "
                             "not supported for it")
        super().set_input_standardisation(None, None)

    @torch.no_grad()
    def reconstruct_rows(self, W_dec: torch.Tensor) -> torch.Tensor:
        """Ŵ [n, d]: BatchTopK (over all rows) reconstruction of the rows, in the rows' raw scale; a constant (no
        autograd graph: the penalty's gradient reaches W_dec only)."""
        return self.reconstruct(W_dec.detach())

    @torch.no_grad()
    def standardise_rows(self, W_dec: torch.Tensor) -> torch.Tensor:
        """The rows standardised exactly as :meth:`rows_loss` standardises them (a new tensor): steps on unchanged
        rows can share it (``rows_loss(..., standardised=)``) instead of recomputing it every step."""
        W = W_dec.detach()
        if kernels.applies(self.W_enc, self.W_dec, self.b_dec):
            return self._fused_normalize(W)[0].clone()
        return self.normalize(W)

    def rows_loss(self, W_dec: torch.Tensor, update_state: bool = True,
                  standardised: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training loss of the meta SAE on the detached primary decoder rows; ``standardised``: those rows'
        :meth:`standardise_rows`, when the caller has it (the same loss, one pass over the rows fewer)."""
        if standardised is None:
            return self.training_loss(W_dec.detach(), update_state=update_state)
        if standardised.shape != W_dec.shape:
            raise ValueError(f"standardised rows {tuple(standardised.shape)} do not match W_dec {tuple(W_dec.shape)}")
        return self.training_loss(standardised, normalized=True, update_state=update_state)
