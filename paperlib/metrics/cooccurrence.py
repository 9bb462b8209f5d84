"""Feature co-occurrence: exact counts, the φ coefficient and within/cross-SAE statistics (method.md §3.2).

Conventions
-----------
* ``fired`` is a binary firing matrix ``F [T, n]`` (tokens × features). Any nonzero entry counts as
  "fired"; dense numpy/torch arrays (bool or numeric) and scipy.sparse matrices are accepted.
* Counts are exact: ``N1 = Σ_t F[t]`` and ``N11 = FᵀF`` in int64. On CPU the product is a scipy
  sparse product with **int64 data** (scipy keeps the operand dtype, so small int/bool dtypes would
  overflow or saturate); on GPU a dense binary matmul over token chunks in fp32 (every chunk count
  < 2^24, exact) is added to an int64 total. fp16 accumulation of counts is never used.
* ``φ(i,j) = (T·N11 − N1_i·N1_j) / sqrt(N1_i (T−N1_i) N1_j (T−N1_j))`` in float64 from exact integer
  counts; φ = 0 where the denominator is 0 (dead or always-on features).
* Within-SAE statistics run over all unordered pairs i < j, including pairs with a degenerate
  (dead/always-on) feature at φ = 0 unless ``exclude_degenerate=True``. They are computed block-wise
  over rows of N11, so no n×n float64 matrix is ever held (memory ~ a few × ``block_rows·n·8`` bytes).
  The median and tail come from a fixed histogram of φ on [−1, 1] (default 20,000 bins, width 1e-4):
  the median is interpolated within its bin, error ≤ one bin width (reported as ``median_err``).
  The fixed bins make histograms of two SAEs directly subtractable (paper Fig. 1a).

Memory of :class:`SparseFiring`: CSR + CSC copies of F with int32 indices and int64 data,
≈ 24 bytes per firing event (200k tokens × k = 64: ≈ 0.3 GB).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from paperlib.config.checks import NonFiniteError, check_chunk, describe_rows
from paperlib.metrics.firing import as_thresholds, iter_codes
from paperlib.metrics.streaming import StreamingMoments, finite_array

__all__ = [
    "Counts",
    "CrossTopK",
    "SparseFiring",
    "WithinStats",
    "count",
    "count_dense_torch",
    "cross_phi_topk",
    "degenerate_features",
    "firing_from_sae",
    "phi",
    "phi_block",
    "to_csr",
    "within_stats",
    "within_stats_blockwise",
]

DEFAULT_BLOCK_ELEMS = 1 << 25  # ≈ 268 MB per int64/float64 block array
DEFAULT_HIST_BINS = 20_000
MAX_BLOCK_ROWS = 2048


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------
def to_csr(fired: Any) -> sp.csr_matrix:
    """Binary firing matrix ``[T, n]`` (dense numpy/torch or scipy.sparse) → CSR with int64 ones.

    Any nonzero entry counts as fired; explicit zeros are dropped.
    """
    if sp.issparse(fired):
        m = sp.csr_matrix(fired)
        m.eliminate_zeros()
        m = m.astype(bool).astype(np.int64)
    elif isinstance(fired, torch.Tensor):
        if fired.is_sparse or fired.layout != torch.strided:
            fired = fired.to_dense()
        if fired.ndim != 2:
            raise ValueError(f"fired must be 2-D [T, n], got shape {tuple(fired.shape)}")
        return to_csr(fired.detach().cpu().numpy() != 0)
    else:
        arr = np.asarray(fired)
        if arr.ndim != 2:
            raise ValueError(f"fired must be 2-D [T, n], got shape {arr.shape}")
        m = sp.csr_matrix(arr != 0, dtype=np.int64)
    if m.ndim != 2:
        raise ValueError("fired must be 2-D [T, n]")
    m.sort_indices()
    return m


# ----------------------------------------------------------------------------------------------
# full counts
# ----------------------------------------------------------------------------------------------
@dataclass
class Counts:
    """Exact co-occurrence counts over ``T`` tokens: ``N1 [n]`` and ``N11 [n, n]`` (int64)."""

    T: int
    N1: np.ndarray
    N11: np.ndarray

    def __post_init__(self) -> None:
        self.T = int(self.T)
        self.N1 = np.asarray(self.N1, dtype=np.int64)
        self.N11 = np.asarray(self.N11, dtype=np.int64)
        n = self.N1.shape[0]
        if self.N1.ndim != 1 or self.N11.shape != (n, n):
            raise ValueError(f"shape mismatch: N1 {self.N1.shape}, N11 {self.N11.shape}")

    @property
    def n(self) -> int:
        return int(self.N1.shape[0])

    def __add__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        if other.n != self.n:
            raise ValueError(f"cannot add counts over {self.n} and {other.n} features")
        return Counts(self.T + other.T, self.N1 + other.N1, self.N11 + other.N11)

    def __radd__(self, other: Any) -> Counts:  # allows sum([...])
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented


def count(fired: Any, *, chunk_tokens: int = 65536) -> Counts:
    """Exact counts ``T, N1, N11 = FᵀF`` of a firing matrix ``[T, n]`` (full n×n int64 result).

    CUDA tensors use :func:`count_dense_torch`; everything else a sparse int64 product on CPU.
    For n beyond ~20k use :class:`SparseFiring` and the block-wise functions instead.
    """
    if isinstance(fired, torch.Tensor) and fired.is_cuda:
        return count_dense_torch(fired, chunk_tokens=chunk_tokens)
    acc = SparseFiring.from_fired(fired)
    return acc.counts()


def count_dense_torch(fired: torch.Tensor, *, chunk_tokens: int = 65536,
                      dtype: torch.dtype = torch.float32) -> Counts:
    """Dense binary matmul counts (the GPU path), exact.

    Each token chunk is multiplied as 0/1 values in ``dtype``. With fp32 (default; also exact under
    TF32 since 0/1 inputs are representable) chunks of ≤ 2^24 tokens keep every partial count an
    exact integer; with fp16/bf16 (fp16/bf16 output) the chunk is capped at 256 tokens (bf16) or
    2048 tokens (fp16) so the output stays exact. Each chunk is added into an int64 total.
    """
    if fired.ndim != 2:
        raise ValueError(f"fired must be 2-D [T, n], got shape {tuple(fired.shape)}")
    cap = {torch.float32: 1 << 24, torch.float16: 2048, torch.bfloat16: 256}.get(dtype)
    if cap is None:
        raise ValueError(f"unsupported dtype {dtype}")
    chunk_tokens = min(int(chunk_tokens), cap)
    if chunk_tokens <= 0:
        raise ValueError("chunk_tokens must be positive")
    T, n = fired.shape
    N1 = torch.zeros(n, dtype=torch.int64, device=fired.device)
    N11 = torch.zeros(n, n, dtype=torch.int64, device=fired.device)
    for s in range(0, T, chunk_tokens):
        f = (fired[s:s + chunk_tokens] != 0).to(dtype)
        N1 += (fired[s:s + chunk_tokens] != 0).sum(0)
        N11 += (f.T @ f).round().to(torch.int64)
    return Counts(T, N1.cpu().numpy(), N11.cpu().numpy())


def degenerate_features(T: int, N1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (dead, always_on): features with N1 = 0 and N1 = T."""
    N1 = np.asarray(N1)
    return N1 == 0, N1 == T


def _scale(T: int, N1: np.ndarray) -> np.ndarray:
    """sqrt(N1 (T − N1)) in float64 (0 for degenerate features)."""
    N1 = np.asarray(N1, dtype=np.float64)
    return np.sqrt(N1 * (T - N1))


def phi_block(T: int, N1_rows: np.ndarray, N1_cols: np.ndarray, N11_block: np.ndarray, *,
              out: np.ndarray | None = None, tmp: np.ndarray | None = None) -> np.ndarray:
    """φ for a block of N11 ``[r, c]`` given the N1 of its rows and columns (float64).

    Computed as T·N11/(s_r s_c) − (N1_r/s_r)(N1_c/s_c) with s = sqrt(N1 (T − N1)); both terms are
    float64 products of exact integers (< 2^53), so the error is a few ulps of the terms.
    Degenerate rows/columns (s = 0) give φ = 0. ``out``/``tmp`` (float64 ``[r, c]``) avoid allocation.
    """
    N1r = np.asarray(N1_rows, dtype=np.float64)
    N1c = np.asarray(N1_cols, dtype=np.float64)
    sr, sc = _scale(T, N1r), _scale(T, N1c)
    inv_r = np.divide(1.0, sr, out=np.zeros_like(sr), where=sr > 0)
    inv_c = np.divide(1.0, sc, out=np.zeros_like(sc), where=sc > 0)
    blk = np.asarray(N11_block)
    if out is None:
        out = np.empty(blk.shape, dtype=np.float64)
    np.multiply(blk, (T * inv_r)[:, None], out=out)
    out *= inv_c[None, :]
    if tmp is None:
        out -= (N1r * inv_r)[:, None] * (N1c * inv_c)[None, :]
    else:
        np.multiply((N1r * inv_r)[:, None], (N1c * inv_c)[None, :], out=tmp)
        out -= tmp
    return out


def phi(counts: Counts) -> np.ndarray:
    """Full φ matrix ``[n, n]`` float64 (φ = 0 where the denominator is 0). Diagonal is 1 for
    non-degenerate features."""
    return phi_block(counts.T, counts.N1, counts.N1, counts.N11)


# ----------------------------------------------------------------------------------------------
# sparse accumulator for large n
# ----------------------------------------------------------------------------------------------
class SparseFiring:
    """Accumulates a sparse firing matrix over token chunks; serves N11 row blocks on demand.

    >>> acc = SparseFiring(n); acc.add(chunk1); acc.add(chunk2)
    >>> acc.n11_block(0, 1024)   # int64 [1024, n] = F[:, 0:1024]ᵀ F
    """

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self._chunks: list[sp.csr_matrix] = []
        self._csr: sp.csr_matrix | None = None
        self._csc: sp.csc_matrix | None = None

    @classmethod
    def from_fired(cls, fired: Any) -> SparseFiring:
        m = to_csr(fired)
        acc = cls(m.shape[1])
        acc.add(m)
        return acc

    def add(self, fired: Any) -> None:
        m = to_csr(fired)
        if m.shape[1] != self.n:
            raise ValueError(f"chunk has {m.shape[1]} features, expected {self.n}")
        self._chunks.append(m)
        self._csr = self._csc = None

    @property
    def csr(self) -> sp.csr_matrix:
        if self._csr is None:
            if not self._chunks:
                self._chunks = [sp.csr_matrix((0, self.n), dtype=np.int64)]
            self._csr = self._chunks[0] if len(self._chunks) == 1 else sp.vstack(self._chunks, "csr")
            self._chunks = [self._csr]
        return self._csr

    @property
    def csc(self) -> sp.csc_matrix:
        if self._csc is None:
            self._csc = self.csr.tocsc()
            self._csc.sort_indices()
        return self._csc

    @property
    def T(self) -> int:
        return int(sum(c.shape[0] for c in self._chunks))

    @property
    def nnz(self) -> int:
        return int(sum(c.nnz for c in self._chunks))

    @property
    def N1(self) -> np.ndarray:
        return np.bincount(self.csr.indices, minlength=self.n).astype(np.int64)

    def cols_T(self, start: int, stop: int | None = None) -> sp.csr_matrix:
        """``F[:, start:stop]ᵀ`` as CSR ``[stop − start, T]``, zero-copy views of the CSC arrays."""
        stop = self.n if stop is None else stop
        csc = self.csc
        p0, p1 = int(csc.indptr[start]), int(csc.indptr[stop])
        return sp.csr_matrix((csc.data[p0:p1], csc.indices[p0:p1], csc.indptr[start:stop + 1] - p0),
                             shape=(stop - start, self.T), copy=False)

    def cols_csr(self, start: int, stop: int) -> sp.csr_matrix:
        """``F[:, start:stop]`` as CSR ``[T, stop − start]``."""
        return self.cols_T(start, stop).T.tocsr()

    def n11_block(self, start: int, stop: int, col_start: int = 0) -> np.ndarray:
        """int64 ``N11[start:stop, col_start:]`` (a transposed view) from the sparse firing matrix."""
        prod = self.cols_T(col_start) @ self.cols_csr(start, stop)  # [n − col_start, r]
        return prod.toarray().astype(np.int64, copy=False).T

    def counts(self, block_rows: int | None = None) -> Counts:
        """Full counts (n×n int64, for moderate n), filled one row block at a time so the sparse
        intermediate stays bounded (only the n×n int64 result is large)."""
        n = self.n
        N11 = np.empty((n, n), dtype=np.int64)
        br = _block_rows(n, block_rows)
        for s in range(0, n, br):  # upper row blocks, mirrored (N11 is symmetric)
            e = min(n, s + br)
            blk = self.n11_block(s, e, col_start=s)
            N11[s:e, s:] = blk
            N11[s:, s:e] = blk.T
        return Counts(self.T, self.N1, N11)


# ----------------------------------------------------------------------------------------------
# within-SAE statistics
# ----------------------------------------------------------------------------------------------
@dataclass
class WithinStats:
    """Statistics of φ over unordered feature pairs i < j (method.md §3.2).

    ``sum_abs``/``sumsq`` are the Welch sufficient statistics (Σ|φ|, Σφ²); ``var_abs_phi`` uses
    ddof=1 and is computed with Chan's streaming update (no cancellation). ``median_phi`` is
    interpolated from ``hist_counts`` over ``hist_edges`` (fixed bins on [−1, 1]); its error is at
    most ``median_err`` (one bin width).
    """

    T: int
    n_features: int
    n_pairs: int
    sum_abs: float
    sumsq: float
    mean_abs_phi: float
    var_abs_phi: float
    std_abs_phi: float
    n_negative: int
    frac_negative: float
    median_phi: float
    median_err: float
    max_phi: float
    min_phi: float
    mean_phi: float
    n_dead: int
    n_always_on: int
    exclude_degenerate: bool
    hist_edges: np.ndarray = field(repr=False)
    hist_counts: np.ndarray = field(repr=False)

    @property
    def n_degenerate(self) -> int:
        return self.n_dead + self.n_always_on

    def positive_tail(self, start: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) of the φ histogram for bins with left edge ≥ ``start``."""
        i = int(np.searchsorted(self.hist_edges, start - 1e-12, side="left"))
        return self.hist_edges[i:], self.hist_counts[i:]

    def abs_hist(self) -> tuple[np.ndarray, np.ndarray]:
        """Histogram of |φ| on [0, 1] (folds the symmetric φ bins)."""
        nb = len(self.hist_counts)
        if nb % 2:
            raise ValueError("abs_hist needs an even number of symmetric bins")
        h = self.hist_counts
        return self.hist_edges[nb // 2:], h[nb // 2:] + h[: nb // 2][::-1]

    def to_dict(self, with_hist: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("hist_")}
        if with_hist:
            d["hist_edges"] = self.hist_edges.tolist()
            d["hist_counts"] = self.hist_counts.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WithinStats:
        """Inverse of :meth:`to_dict` with ``with_hist=True``."""
        fields = {k: v for k, v in d.items() if not k.startswith("hist_")}
        return cls(**fields, hist_edges=np.asarray(d["hist_edges"], dtype=np.float64),
                   hist_counts=np.asarray(d["hist_counts"], dtype=np.int64))


class _WithinAccumulator:
    def __init__(self, n_bins: int) -> None:
        self.edges = np.linspace(-1.0, 1.0, n_bins + 1)
        self.hist = np.zeros(n_bins, dtype=np.int64)
        self.abs_moments = StreamingMoments("|φ|")
        self.sum_abs = 0.0
        self.sumsq = 0.0
        self.sum = 0.0
        self.n_neg = 0
        self.max = -np.inf
        self.min = np.inf

    def update(self, v: np.ndarray, fbuf: np.ndarray | None = None, ibuf: np.ndarray | None = None,
               bbuf: np.ndarray | None = None) -> None:
        """Add the values of a contiguous 1-D float64 array; optional scratch buffers (≥ v.size, float64 /
        int64 / bool) avoid fresh allocations (page faults dominate at paper scale)."""
        v = np.ascontiguousarray(v, dtype=np.float64).reshape(-1)
        nb = v.size
        if nb == 0:
            return
        f = np.empty_like(v) if fbuf is None else fbuf[:nb]
        i = np.empty(nb, dtype=np.int64) if ibuf is None else ibuf[:nb]
        b = np.empty(nb, dtype=bool) if bbuf is None else bbuf[:nb]
        sq = float(np.dot(v, v))
        np.abs(v, out=f)
        s = float(f.sum())
        # within-block moments from the sums (|φ| has var/mean² = O(1): no cancellation issue)
        self.abs_moments.merge(StreamingMoments.from_sums(nb, s, sq, name="|φ|"))
        self.sum_abs += s
        self.sumsq += sq
        self.sum += float(v.sum())
        np.less(v, 0.0, out=b)
        self.n_neg += int(np.count_nonzero(b))
        self.max = max(self.max, float(v.max()))
        self.min = min(self.min, float(v.min()))
        nbins = len(self.hist)
        np.add(v, 1.0, out=f)
        f *= nbins / 2.0
        np.floor(f, out=f)
        np.copyto(i, f, casting="unsafe")
        np.clip(i, 0, nbins - 1, out=i)
        self.hist += np.bincount(i, minlength=nbins)

    @property
    def n(self) -> int:
        return self.abs_moments.count

    def median(self) -> float:
        if self.n == 0:
            return float("nan")
        c = np.cumsum(self.hist)
        half = self.n / 2.0
        b = int(np.searchsorted(c, half, side="left"))
        before = c[b - 1] if b > 0 else 0
        frac = (half - before) / max(self.hist[b], 1)
        lo, hi = self.edges[b], self.edges[b + 1]
        return float(lo + frac * (hi - lo))


def _within_from_blocks(T: int, N1: np.ndarray, blocks: Iterator[tuple[int, int, np.ndarray, Any]],
                        n_bins: int, exclude_degenerate: bool, block_rows: int) -> WithinStats:
    """Kernel over row blocks. ``blocks`` yields (start, stop, sq, rect) with ``sq = N11[start:stop,
    start:stop]`` and ``rect`` either ``N11[start:stop, stop:]`` or a callable ``rect(flat_int64_buffer)``
    returning the transposed block ``N11[stop:, start:stop]`` written into the buffer (no allocation)."""
    n = len(N1)
    dead, always = degenerate_features(T, N1)
    alive = ~(dead | always)
    acc = _WithinAccumulator(n_bins)
    size = block_rows * n
    ibuf = np.empty(size, dtype=np.int64)
    fbuf = np.empty(size, dtype=np.float64)
    tbuf = np.empty(size, dtype=np.float64)
    bbuf = np.empty(size, dtype=bool)
    for rws, cls, ph, square in _phi_pieces(T, N1, blocks, ibuf, fbuf, tbuf):
        if square:  # strict upper triangle (small, allocating path)
            iu = np.triu_indices(ph.shape[0], 1)
            tri = ph[iu]
            if exclude_degenerate:
                al = alive[rws]
                tri = tri[al[iu[0]] & al[iu[1]]]
            acc.update(tri)
            del tri
        elif exclude_degenerate:
            acc.update(ph[np.ix_(alive[rws], alive[cls])])
        else:
            acc.update(ph.reshape(-1), fbuf=tbuf, ibuf=ibuf, bbuf=bbuf)
        del ph
    var = acc.abs_moments.var(ddof=1)
    width = 2.0 / n_bins
    return WithinStats(
        T=int(T), n_features=n, n_pairs=acc.n, sum_abs=acc.sum_abs, sumsq=acc.sumsq,
        mean_abs_phi=acc.abs_moments.mean, var_abs_phi=var, std_abs_phi=math.sqrt(var),
        n_negative=acc.n_neg, frac_negative=acc.n_neg / acc.n if acc.n else float("nan"),
        median_phi=acc.median(), median_err=width, max_phi=acc.max, min_phi=acc.min,
        mean_phi=acc.sum / acc.n if acc.n else float("nan"),
        n_dead=int(dead.sum()), n_always_on=int(always.sum()), exclude_degenerate=exclude_degenerate,
        hist_edges=acc.edges, hist_counts=acc.hist,
    )


def _phi_pieces(T: int, N1: np.ndarray, blocks: Iterator[tuple[int, int, np.ndarray, Any]], ibuf: np.ndarray,
                fbuf: np.ndarray, tbuf: np.ndarray) -> Iterator[tuple[slice, slice, np.ndarray, bool]]:
    """φ of the upper triangle of N11, one row block at a time: per block of ``blocks`` (see
    ``_within_from_blocks``) yields ``(rows, cols, φ[rows, cols], True)`` for the square diagonal block
    (all of it, freshly allocated; pairs i < j are its strict upper triangle), then, unless the block
    reaches the last column, ``(rows, cols, φ, False)`` for the rectangle right of it: φ[start:stop, stop:]
    or, when ``rect`` is a callable, the transposed φ[stop:, start:stop] (``rows``/``cols`` say which).
    The rectangle is computed into ``fbuf`` (scratch ``tbuf``; ``ibuf`` receives a callable's N11), so
    it is valid only until the next step."""
    n = int(N1.size)
    for start, stop, sq, rect in blocks:  # rect: array [r, c] or callable(buf) -> array [c, r]
        rws = slice(start, stop)
        yield rws, rws, phi_block(T, N1[rws], N1[rws], sq), True
        if stop == n:
            continue
        cls = slice(stop, n)
        if callable(rect):
            n11 = rect(ibuf)
            rws, cls = cls, rws
        else:
            n11 = rect
        size = n11.size
        yield rws, cls, phi_block(T, N1[rws], N1[cls], n11, out=fbuf[:size].reshape(n11.shape),
                                  tmp=tbuf[:size].reshape(n11.shape)), False


def _block_rows(n: int, block_rows: int | None) -> int:
    if block_rows is None:
        block_rows = min(MAX_BLOCK_ROWS, max(1, DEFAULT_BLOCK_ELEMS // max(n, 1)))
    return max(1, min(int(block_rows), n))


def within_stats(counts: Counts, *, n_bins: int = DEFAULT_HIST_BINS, exclude_degenerate: bool = False,
                 block_rows: int | None = None) -> WithinStats:
    """Within-SAE φ statistics over all pairs i < j from full counts (processed in row blocks)."""
    T, N1, br, blocks = _blocks_of(counts, block_rows)
    return _within_from_blocks(T, N1, blocks, n_bins, exclude_degenerate, br)


def within_stats_blockwise(firing: SparseFiring | Any, *, block_rows: int | None = None,
                           n_bins: int = DEFAULT_HIST_BINS, exclude_degenerate: bool = False,
                           progress: bool = True) -> WithinStats:
    """Within-SAE φ statistics from a sparse firing matrix, computing N11 one row block at a time
    (only the columns ≥ the block start, i.e. the upper triangle). Memory is bounded by the firing
    matrix plus a few ``block_rows × n`` arrays; never an n×n matrix."""
    if not isinstance(firing, SparseFiring):
        firing = SparseFiring.from_fired(firing)
    T, N1, br, blocks = _blocks_of(firing, block_rows, progress, "within φ")
    return _within_from_blocks(T, N1, blocks, n_bins, exclude_degenerate, br)


# ----------------------------------------------------------------------------------------------
# cross-SAE φ
# ----------------------------------------------------------------------------------------------
@dataclass
class CrossTopK:
    """Per-row top-k cross-φ partners both ways, sorted by descending φ.

    ``a_idx[i]``/``a_phi[i]``: the k features of B with the largest φ(a_i, b_j);
    ``b_idx[j]``/``b_phi[j]``: the k features of A with the largest φ(a_i, b_j).
    """

    a_idx: np.ndarray
    a_phi: np.ndarray
    b_idx: np.ndarray
    b_phi: np.ndarray
    N1_a: np.ndarray
    N1_b: np.ndarray
    T: int


def _topk_desc(vals: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Indices of the k largest along ``axis`` (unsorted)."""
    size = vals.shape[axis]
    if k >= size:
        return np.indices(vals.shape)[axis]
    return np.argpartition(-vals, k - 1, axis=axis).take(range(k), axis=axis)


def cross_phi_topk(fired_a: Any, fired_b: Any, k: int, *, block_rows: int | None = None,
                   progress: bool = True) -> CrossTopK:
    """Cross-SAE φ between the features of A and B on the same tokens, keeping per-row top-k partners
    both ways (A→B and B→A), computed in row blocks of A (memory ~ ``block_rows × n_b``).

    Ties are broken arbitrarily (argpartition); results are sorted by descending φ.
    """
    fa = fired_a if isinstance(fired_a, SparseFiring) else SparseFiring.from_fired(fired_a)
    fb = fired_b if isinstance(fired_b, SparseFiring) else SparseFiring.from_fired(fired_b)
    if fa.T != fb.T:
        raise ValueError(f"A and B must be on the same tokens (T={fa.T} vs {fb.T})")
    T, na, nb = fa.T, fa.n, fb.n
    ka, kb = min(k, nb), min(k, na)
    N1a, N1b = fa.N1, fb.N1
    a_idx = np.zeros((na, ka), dtype=np.int64)
    a_phi = np.zeros((na, ka), dtype=np.float64)
    best_b_phi = np.full((0, nb), -np.inf)
    best_b_idx = np.zeros((0, nb), dtype=np.int64)
    br = _block_rows(nb, block_rows)
    csc_a, csr_b = fa.csc, fb.csr
    for s in tqdm(range(0, na, br), desc="cross φ", disable=not progress, leave=False):
        e = min(na, s + br)
        n11 = (csc_a[:, s:e].T.tocsr() @ csr_b).toarray()
        ph = phi_block(T, N1a[s:e], N1b, n11)
        del n11
        # A -> B
        ti = _topk_desc(ph, ka, axis=1)
        a_idx[s:e] = ti
        a_phi[s:e] = np.take_along_axis(ph, ti, axis=1)
        # B -> A: merge this block's column top-k with the running best
        tj = _topk_desc(ph, min(kb, e - s), axis=0)
        cand_phi = np.concatenate([best_b_phi, np.take_along_axis(ph, tj, axis=0)], axis=0)
        cand_idx = np.concatenate([best_b_idx, tj + s], axis=0)
        keep = _topk_desc(cand_phi, min(kb, cand_phi.shape[0]), axis=0)
        best_b_phi = np.take_along_axis(cand_phi, keep, axis=0)
        best_b_idx = np.take_along_axis(cand_idx, keep, axis=0)
    o = np.argsort(-a_phi, axis=1, kind="stable")
    a_idx, a_phi = np.take_along_axis(a_idx, o, 1), np.take_along_axis(a_phi, o, 1)
    o = np.argsort(-best_b_phi, axis=0, kind="stable")
    b_idx = np.take_along_axis(best_b_idx, o, 0).T.copy()
    b_phi = np.take_along_axis(best_b_phi, o, 0).T.copy()
    return CrossTopK(a_idx, a_phi, b_idx, b_phi, N1a, N1b, T)


# ----------------------------------------------------------------------------------------------
# SAE convenience
# ----------------------------------------------------------------------------------------------
def _bool_csr(mask: torch.Tensor) -> sp.csr_matrix:
    """CSR (bool data, sorted column indices) of a 2-D bool tensor, built from its flat nonzero indices
    (about 3x faster than scipy's conversion of the dense array)."""
    B, n = mask.shape
    flat = mask.reshape(-1).nonzero().squeeze(1).cpu().numpy()
    rows, cols = np.divmod(flat, n)
    indptr = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=B), out=indptr[1:])
    return sp.csr_matrix((np.ones(cols.size, dtype=bool), cols, indptr), shape=(B, n))


@torch.no_grad()
def firing_from_sae(sae: Any, acts: Any, thresholds: Any, batch_size: int = 4096, *,
                    device: str | torch.device = "cpu", progress: bool = True,
                    what: str = "co-occurrence activations") -> sp.csr_matrix:
    """Binary firing matrix ``[T, n]`` (CSR, bool data) of ``sae.encode(x, thresholds=θ) > 0`` over an
    activation array ``[T, d]`` (e.g. an fp16 memmap), processed in chunks of ``batch_size`` tokens.
    NaN thresholds or non-finite activation rows raise :class:`~paperlib.config.checks.NonFiniteError`
    (naming ``what``, the count and the rows): a NaN never fires, so it would pass as a dead latent."""
    nan_theta = np.flatnonzero(np.isnan(as_thresholds(thresholds).cpu().numpy()))
    if nan_theta.size:
        raise NonFiniteError(f"thresholds: {describe_rows(nan_theta).replace('row', 'latent')} are NaN; "
                             "delete the run's calibration stage folder and recalibrate")
    parts = []
    for _, x, f in iter_codes(sae, acts, thresholds, batch_size, device=device, progress=progress, desc="firing"):
        check_chunk(x, acts, what)
        parts.append(_bool_csr(f > 0))
    if not parts:
        return sp.csr_matrix((0, int(as_thresholds(thresholds).shape[0])), dtype=bool)
    return sp.vstack(parts, "csr").astype(bool)


# ----------------------------------------------------------------------------------------------
# null |φ| under independent firing, and rate-robust within-SAE statistics
# ----------------------------------------------------------------------------------------------
# Everything below is exact-count, float64 and array-in. E₀|φ| is the expectation of |φ| when two
# latents with firing counts n1_a, n1_b over T tokens fire independently, i.e. when their co-firing
# count is hypergeometric: N11 ~ Hypergeometric(population T, n1_a successes, n1_b draws).
__all__ += [
    "excess_abs_phi",
    "mean_null_abs_phi",
    "null_abs_phi",
    "null_abs_phi_many",
    "pooled_rate_regression",
    "rate_matched_delta",
    "rate_robust_stats",
    "rate_robust_stats_blockwise",
    "row_mean_abs_phi",
]

_LN_2PI = math.log(2.0 * math.pi)
# stirlerr(n) = log n! − log(sqrt(2πn) (n/e)^n) for n = 0..15 (0 at n = 0 by convention, as in R)
_STIRLERR_TABLE = np.array([0.0] + [math.lgamma(k + 1.0) - (k + 0.5) * math.log(k) + k - 0.5 * _LN_2PI
                                    for k in range(1, 16)])


def _as_counts(name: str, x: Any) -> np.ndarray:
    """int64 array of non-negative integer counts; ValueError naming ``name`` otherwise."""
    arr = finite_array(name, x)
    if np.any(arr != np.round(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must hold non-negative integers")
    if np.any(arr > 2.0 ** 53):
        raise ValueError(f"{name} must be < 2^53")
    return arr.astype(np.int64)


def _stirlerr(n: np.ndarray) -> np.ndarray:
    """log n! − log(sqrt(2πn)(n/e)^n) for integer n ≥ 0 (Loader 2000; table for n ≤ 15, series above)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.empty_like(n)
    small = n <= 15
    out[small] = _STIRLERR_TABLE[n[small].astype(np.int64)]
    x = n[~small]
    nn = x * x
    s0, s1, s2, s3, s4 = 1 / 12, 1 / 360, 1 / 1260, 1 / 1680, 1 / 1188
    v = np.where(x > 500, (s0 - s1 / nn) / x,
        np.where(x > 80, (s0 - (s1 - s2 / nn) / nn) / x,
        np.where(x > 35, (s0 - (s1 - (s2 - s3 / nn) / nn) / nn) / x,
                 (s0 - (s1 - (s2 - (s3 - s4 / nn) / nn) / nn) / nn) / x)))
    out[~small] = v
    return out


def _bd0(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Deviance term x log(x/m) + m − x without cancellation (Loader 2000), x ≥ 0, m > 0."""
    x = np.asarray(x, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    d = x - m
    near = np.abs(d) < 0.1 * (x + m)
    out = np.empty(np.broadcast(x, m).shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        far = x * np.log(np.where(x > 0, x / m, 1.0)) + m - x
    out[~near] = far[~near]
    if np.any(near):
        xn, dn = x[near], d[near]
        v = dn / (x[near] + m[near])
        s = dn * v
        ej = 2.0 * xn * v
        v2 = v * v
        for j in range(1, 60):  # |v| < 0.1: each term is ≥ 100× smaller than the previous one
            ej = ej * v2
            s_new = s + ej / (2 * j + 1)
            if np.array_equal(s_new, s):
                break
            s = s_new
        out[near] = s
    return out


def _log_dbinom_raw(x: np.ndarray, n: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """log Binomial(n, p) pmf at integer 0 ≤ x ≤ n, with q = 1 − p given separately (R's dbinom_raw)."""
    x, n, p, q = (np.asarray(v, dtype=np.float64) for v in (x, n, p, q))
    x, n, p, q = np.broadcast_arrays(x, n, p, q)
    out = np.empty(x.shape)
    zero, full = x == 0, x == n
    mid = ~(zero | full)
    with np.errstate(divide="ignore"):
        if np.any(zero):  # P(X = 0) = q^n
            z_n, z_p, z_q = n[zero], p[zero], q[zero]
            out[zero] = np.where(z_p < 0.1, -_bd0(z_n, z_n * z_q) - z_n * z_p, z_n * np.log(z_q))
        only_full = full & ~zero
        if np.any(only_full):  # P(X = n) = p^n
            f_n, f_p, f_q = n[only_full], p[only_full], q[only_full]
            out[only_full] = np.where(f_q < 0.1, -_bd0(f_n, f_n * f_p) - f_n * f_q, f_n * np.log(f_p))
    if np.any(mid):
        xm, nm, pm, qm = x[mid], n[mid], p[mid], q[mid]
        lc = (_stirlerr(nm) - _stirlerr(xm) - _stirlerr(nm - xm)
              - _bd0(xm, nm * pm) - _bd0(nm - xm, nm * qm))
        lf = _LN_2PI + np.log(xm) + np.log1p(-xm / nm)
        out[mid] = lc - 0.5 * lf
    return out


def _hypergeom_pmf(k: np.ndarray, T: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(N11 = k) for N11 ~ Hypergeometric(population T, a successes, b draws), 1 ≤ b ≤ T − 1, k in the
    support. Computed as a ratio of three binomial pmfs at p = b/T (R's ``dhyper``; Loader's saddle-point
    form); measured relative error ≤ 7e-13 against 40-digit mpmath for T ≤ 3e8 (plain log-gamma
    differences would lose ~1e-7 at T = 1e7)."""
    k, T, a, b = (np.asarray(v, dtype=np.float64) for v in (k, T, a, b))
    p = b / T
    q = (T - b) / T
    return np.exp(_log_dbinom_raw(k, a, p, q) + _log_dbinom_raw(b - k, T - a, p, q)
                  - _log_dbinom_raw(b, T, p, q))


def null_abs_phi_many(n1_a: Any, n1_b: Any, T: Any) -> np.ndarray:
    """E₀|φ| (unitless, in φ units) for independent firing, element-wise over broadcast arrays of firing
    counts ``n1_a``, ``n1_b`` over ``T`` tokens. See :func:`null_abs_phi`. Returns float64."""
    a = _as_counts("n1_a", n1_a)
    b = _as_counts("n1_b", n1_b)
    Tn = _as_counts("T", T)
    a, b, Tn = np.broadcast_arrays(a, b, Tn)
    if np.any(a > Tn):
        raise ValueError("n1_a must be <= T")
    if np.any(b > Tn):
        raise ValueError("n1_b must be <= T")
    out = np.zeros(a.shape, dtype=np.float64)
    ok = (a > 0) & (a < Tn) & (b > 0) & (b < Tn)
    if not np.any(ok):
        return out
    A, B, TT = a[ok], b[ok], Tn[ok]
    if np.any(TT > 3_000_000_000):  # a·b must not overflow int64
        m = np.array([(int(x) * int(y)) // int(t) for x, y, t in zip(A, B, TT, strict=True)], dtype=np.int64)
    else:
        m = (A * B) // TT
    k = m + 1  # mean-absolute-deviation identity (de Moivre; Diaconis & Zabell 1991)
    pk = _hypergeom_pmf(k, TT, A, B)
    fac = k.astype(np.float64) * (TT - A - B + k).astype(np.float64)
    den = np.sqrt(A * (TT - A).astype(np.float64)) * np.sqrt(B * (TT - B).astype(np.float64))
    out[ok] = 2.0 * fac * pk / den
    return out


def null_abs_phi(n1_a: int, n1_b: int, T: int) -> float:
    """E₀|φ| (φ units): expected |φ| of two latents firing ``n1_a`` and ``n1_b`` times out of ``T`` tokens
    when their firing is independent, i.e. N11 ~ Hypergeometric(T, n1_a, n1_b) and
    φ(N11) = (T·N11 − n1_a·n1_b) / sqrt(n1_a (T−n1_a) n1_b (T−n1_b)).

    Exact at every count (no truncation, no normal approximation), via the closed form of the
    hypergeometric mean absolute deviation (de Moivre's identity; Diaconis & Zabell 1991):
    with μ = n1_a·n1_b/T and m = ⌊μ⌋,  E|N11 − μ| = 2 (m+1)(T − n1_a − n1_b + m + 1)/T · P(N11 = m+1),
    so E₀|φ| = 2 (m+1)(T − n1_a − n1_b + m + 1) P(N11 = m+1) / sqrt(n1_a (T−n1_a) n1_b (T−n1_b)).
    P is evaluated with Loader's saddle-point binomial form (relative error ~1e-13; the tests compare with
    full enumeration of ``scipy.stats.hypergeom`` and with exact rational arithmetic).
    Degenerate counts (0 or T on either side) give φ ≡ 0, hence 0. For large μ, E₀|φ| → sqrt(2/(π(T−1))).
    """
    return float(null_abs_phi_many(n1_a, n1_b, T))


def _log_nodes(x: np.ndarray, n_bins: int) -> np.ndarray:
    """≤ n_bins + 1 distinct integer nodes, log-spaced from min(x) to max(x) (both included)."""
    lo, hi = int(x.min()), int(x.max())
    nodes = np.round(np.exp(np.linspace(math.log(lo), math.log(hi), n_bins + 1))).astype(np.int64)
    nodes[0], nodes[-1] = lo, hi
    return np.unique(nodes)


def mean_null_abs_phi(N1: Any, T: int, *, n_bins: int | None = 64) -> float:
    """Mean of E₀|φ|(N1_i, N1_j, T) over all unordered pairs i < j (φ units); pairs with a degenerate
    (dead or always-on) latent contribute 0 (their φ is 0 by convention), but are counted in the mean.

    With U distinct non-degenerate counts: if ``n_bins is None`` or U ≤ n_bins + 1 the sum runs exactly
    over distinct count pairs (U(U+1)/2 evaluations; identical to the per-pair sum). Otherwise the
    partner counts are binned on a log scale: n_bins + 1 log-spaced integer nodes between the smallest and
    largest count, each latent's unit weight split between its two neighbouring nodes linearly in log count
    ("cloud-in-cell" bins), and E₀ is evaluated between every distinct count and every node (U·(n_bins + 1)
    evaluations), i.e. E₀(N1_i, N1_j) with N1_i exact and N1_j linearly interpolated in log count; the i = j
    diagonal is removed exactly. Measured error at n_bins = 64 on log-normal counts, n = 4608: ≤ 2e-4
    relative, ≤ 2.2e-6 absolute at T = 2,000, 1.2e-7 at T = 102,400; the tests bound it at 1e-3 absolute.
    """
    if n_bins is not None and (isinstance(n_bins, bool) or int(n_bins) < 1):
        raise ValueError("n_bins must be a positive integer or None")
    Tn = int(_as_counts("T", T))
    N1 = _as_counts("N1", N1).reshape(-1)
    if np.any(N1 > Tn):
        raise ValueError("N1 must be <= T")
    n = N1.size
    if n < 2:
        return float("nan")
    x = N1[(N1 > 0) & (N1 < Tn)]
    if x.size < 2:
        return 0.0
    u, w = np.unique(x, return_counts=True)
    w = w.astype(np.float64)
    if n_bins is None or u.size <= int(n_bins) + 1:
        total = 0.0
        step = max(1, (1 << 22) // u.size)  # rows of the upper triangle per chunk
        for s in range(0, u.size, step):
            e = min(u.size, s + step)
            iu, ju = np.triu_indices(e - s, 0, u.size - s)
            vals = null_abs_phi_many(u[s + iu], u[s + ju], Tn)
            wts = w[s + iu] * np.where(iu == ju, (w[s + iu] - 1.0) / 2.0, w[s + ju])
            total += float(np.dot(vals, wts))
        return total / (n * (n - 1) / 2.0)
    nodes = _log_nodes(u, int(n_bins))
    g = np.log(nodes.astype(np.float64))
    j = np.clip(np.searchsorted(nodes, u, side="right") - 1, 0, nodes.size - 2)
    t = (np.log(u.astype(np.float64)) - g[j]) / (g[j + 1] - g[j])
    W = np.bincount(j, weights=w * (1.0 - t), minlength=nodes.size)
    W += np.bincount(j + 1, weights=w * t, minlength=nodes.size)
    full = 0.0  # Σ_i Σ_j E₀(N1_i, N1_j) with N1_i exact and N1_j interpolated between nodes
    step = max(1, (1 << 18) // nodes.size)
    for s in range(0, u.size, step):
        E = null_abs_phi_many(u[s:s + step, None], nodes[None, :], Tn)
        full += float(w[s:s + step] @ E @ W)
    diag = float(np.dot(w, null_abs_phi_many(u, u, Tn)))
    return (full - diag) / 2.0 / (n * (n - 1) / 2.0)


def _rate_alive(T: int, N1: np.ndarray, min_count: int) -> np.ndarray:
    """Latents with at least ``min_count`` firing and at least ``min_count`` non-firing tokens."""
    return (N1 >= min_count) & (T - N1 >= min_count)


class _RateAccumulator:
    """Streams φ blocks (pairs i < j) into the sums behind :func:`rate_robust_stats`."""

    def __init__(self, T: int, N1: np.ndarray, alive: np.ndarray, tail: float, min_expected: float,
                 buf_size: int) -> None:
        self.T, self.N1f, self.alive = T, N1.astype(np.float64), alive.astype(np.float64)
        self.tail, self.exp_thr = float(tail), float(min_expected) * T  # N1_i N1_j ≥ min_expected·T
        self.sum_abs = 0.0
        self.n_gt_tail = 0
        self.sum_phi_exp = 0.0
        self.sum_abs_exp = 0.0
        self.n_exp = 0
        self.row_abs_alive = np.zeros(N1.size, dtype=np.float64)  # Σ_j alive, j ≠ i |φ_ij|
        self.tbuf = np.empty(buf_size, dtype=np.float64)
        self.bbuf = np.empty(buf_size, dtype=bool)

    def update(self, ph: np.ndarray, rows: slice, cols: slice, pair_mask: np.ndarray | None = None) -> None:
        """``ph``: φ[rows, cols] (overwritten with |φ|); ``pair_mask``: which entries are pairs i < j
        (None = all; entries outside the mask must already be 0)."""
        size = ph.size
        if size == 0:
            return
        tmp = self.tbuf[:size].reshape(ph.shape)
        msk = self.bbuf[:size].reshape(ph.shape)
        np.greater(ph, self.tail, out=msk)
        if pair_mask is not None:
            msk &= pair_mask
        self.n_gt_tail += int(np.count_nonzero(msk))
        np.multiply(self.N1f[rows][:, None], self.N1f[cols][None, :], out=tmp)
        np.greater_equal(tmp, self.exp_thr, out=msk)
        if pair_mask is not None:
            msk &= pair_mask
        self.n_exp += int(np.count_nonzero(msk))
        np.multiply(ph, msk, out=tmp)
        self.sum_phi_exp += float(tmp.sum())
        np.abs(ph, out=ph)
        np.multiply(ph, msk, out=tmp)
        self.sum_abs_exp += float(tmp.sum())
        row = ph @ self.alive[cols]
        self.row_abs_alive[rows] += row * self.alive[rows]
        self.row_abs_alive[cols] += (self.alive[rows] @ ph) * self.alive[cols]
        self.sum_abs += float(ph.sum())


def _rate_from_blocks(T: int, N1: np.ndarray, blocks: Iterator[tuple[int, int, np.ndarray, Any]], *,
                      min_count: int, tail: float, min_expected: float, n_bins: int | None,
                      block_rows: int, with_null: bool = True) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Kernel shared by the dense and block-wise forms (``blocks`` as in ``_within_from_blocks``).
    Returns (stats dict, alive mask, row sums of |φ| against the other alive latents)."""
    n = int(N1.size)
    alive = _rate_alive(T, N1, min_count)
    size = block_rows * n
    acc = _RateAccumulator(T, N1, alive, tail, min_expected, size)
    ibuf = np.empty(size, dtype=np.int64)
    fbuf = np.empty(size, dtype=np.float64)
    for rws, cls, ph, square in _phi_pieces(T, N1, blocks, ibuf, fbuf, acc.tbuf):
        if square:
            upper = np.triu(np.ones(ph.shape, dtype=bool), 1)
            ph *= upper
            acc.update(ph, rws, cls, upper)
            del upper
        else:
            acc.update(ph, rws, cls)
        del ph
    n_pairs = n * (n - 1) // 2
    n_alive = int(alive.sum())
    n_pairs_alive = n_alive * (n_alive - 1) // 2
    sum_abs_alive = float(acc.row_abs_alive.sum()) / 2.0
    mean_all = acc.sum_abs / n_pairs if n_pairs else float("nan")
    null_mean = mean_null_abs_phi(N1, T, n_bins=n_bins) if n_pairs and with_null else float("nan")
    out = {
        "T": int(T), "n_features": n, "n_pairs": n_pairs,
        "min_count": int(min_count), "tail": float(tail), "min_expected": float(min_expected),
        "mean_abs_phi_all": mean_all,
        "mean_abs_phi_alive": sum_abs_alive / n_pairs_alive if n_pairs_alive else float("nan"),
        "n_alive": n_alive, "n_pairs_alive": n_pairs_alive,
        "null_abs_phi_mean": null_mean,
        "excess_abs_phi": mean_all - null_mean,
        "n_phi_gt_tail": acc.n_gt_tail,
        "frac_phi_gt_tail": acc.n_gt_tail / n_pairs if n_pairs else float("nan"),
        "mean_phi_expected5": acc.sum_phi_exp / acc.n_exp if acc.n_exp else float("nan"),
        "mean_abs_phi_expected5": acc.sum_abs_exp / acc.n_exp if acc.n_exp else float("nan"),
        "n_pairs_expected5": acc.n_exp,
    }
    return out, alive, acc.row_abs_alive


@dataclass(frozen=True)
class RateRobustStats:
    """The rate-robust statistics of :func:`rate_robust_stats` as a typed record (φ units)."""

    T: int
    n_features: int
    n_pairs: int
    min_count: int
    tail: float
    min_expected: float
    mean_abs_phi_all: float
    mean_abs_phi_alive: float
    n_alive: int
    n_pairs_alive: int
    null_abs_phi_mean: float
    excess_abs_phi: float
    n_phi_gt_tail: int
    frac_phi_gt_tail: float
    mean_phi_expected5: float
    mean_abs_phi_expected5: float
    n_pairs_expected5: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RateRobustStats:
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _check_rate_args(min_count: Any, tail: Any, min_expected: Any) -> None:
    for name, v in (("min_count", min_count), ("tail", tail), ("min_expected", min_expected)):
        finite_array(name, v)
    if int(min_count) != min_count or min_count < 1:
        raise ValueError("min_count must be a positive integer")


def _blocks_of(source: Counts | SparseFiring, block_rows: int | None, progress: bool = False,
               desc: str = "φ") -> tuple[int, np.ndarray, int, Iterator[tuple[int, int, np.ndarray, Any]]]:
    """(T, N1, block rows, row blocks of the upper triangle of N11) of full counts or a sparse firing
    matrix (computed block by block, with a progress bar named ``desc``)."""
    br = _block_rows(source.n, block_rows)
    if isinstance(source, SparseFiring):
        return source.T, source.N1, br, _firing_blocks(source, br, progress, desc)
    return source.T, source.N1, br, _counts_blocks(source, br)


def _counts_blocks(counts: Counts, br: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    n = counts.n
    for s in range(0, n, br):
        e = min(n, s + br)
        yield s, e, counts.N11[s:e, s:e], counts.N11[s:e, e:]


def _firing_blocks(firing: SparseFiring, br: int, progress: bool,
                   desc: str) -> Iterator[tuple[int, int, np.ndarray, Any]]:
    """Row blocks of the upper triangle of N11 from a sparse firing matrix, N11 computed one block at a
    time (only the columns ≥ the block start)."""
    n = firing.n
    for s in tqdm(range(0, n, br), desc=desc, disable=not progress, leave=False):
        e = min(n, s + br)
        B = firing.cols_csr(s, e)  # [T, r]
        sq = (firing.cols_T(s, e) @ B).toarray()

        def rect(buf: np.ndarray, B: sp.csr_matrix = B, e: int = e) -> np.ndarray:
            # N11[e:, s:e] = F[:, e:]ᵀ F[:, s:e]  ([c, r]; avoids converting the big column range)
            prod = firing.cols_T(e) @ B
            return prod.toarray(out=buf[: prod.shape[0] * prod.shape[1]].reshape(prod.shape))

        yield s, e, sq, rect


def rate_robust_stats(counts: Counts, *, min_count: int = 5, tail: float = 0.1, min_expected: float = 5.0,
                      n_bins: int | None = 64, block_rows: int | None = None) -> dict[str, Any]:
    """Rate-robust within-SAE φ statistics over unordered pairs i < j from full counts (float64; φ units
    unless stated), computed in row blocks of N11 (no n×n float matrix):

    * ``mean_abs_phi_all`` — mean |φ| over all n(n−1)/2 pairs, degenerate pairs at φ = 0 (the paper's);
    * ``mean_abs_phi_alive`` over the ``n_pairs_alive`` pairs of the ``n_alive`` latents that fire on at
      least ``min_count`` tokens and stay silent on at least ``min_count`` tokens;
    * ``excess_abs_phi`` = ``mean_abs_phi_all`` − ``null_abs_phi_mean`` (mean of E₀|φ| under independent
      firing given the counts, see :func:`excess_abs_phi`, binned with ``n_bins``);
    * ``frac_phi_gt_tail`` — share of all pairs with φ > ``tail`` (and the count ``n_phi_gt_tail``);
    * ``mean_phi_expected5`` (signed φ), ``mean_abs_phi_expected5`` and ``n_pairs_expected5`` over the pairs
      whose expected co-firing count under independence N1_i·N1_j/T is ≥ ``min_expected`` (default 5;
      the "5" in the key names is the default; a pair with an always-on latent qualifies at φ = 0).

    "Alive" also requires ≥ ``min_count`` silent tokens because φ is symmetric under flipping a latent's
    firing (φ → −φ), so a latent silent on 2 tokens is as poorly estimated as one firing on 2.
    """
    _check_rate_args(min_count, tail, min_expected)
    T, N1, br, blocks = _blocks_of(counts, block_rows)
    out, _, _ = _rate_from_blocks(T, N1, blocks, min_count=int(min_count), tail=tail, min_expected=min_expected,
                                  n_bins=n_bins, block_rows=br)
    return out


def rate_robust_stats_blockwise(firing: SparseFiring | Any, *, min_count: int = 5, tail: float = 0.1,
                                min_expected: float = 5.0, n_bins: int | None = 64,
                                block_rows: int | None = None, progress: bool = True) -> dict[str, Any]:
    """:func:`rate_robust_stats` from a sparse firing matrix ``[T, n]`` (or :class:`SparseFiring`), one
    row block of N11 at a time like :func:`within_stats_blockwise`: memory is the firing matrix plus a
    few ``block_rows × n`` arrays, never n×n. Same keys and values as the dense form."""
    _check_rate_args(min_count, tail, min_expected)
    if not isinstance(firing, SparseFiring):
        firing = SparseFiring.from_fired(firing)
    T, N1, br, blocks = _blocks_of(firing, block_rows, progress, "rate-robust φ")
    out, _, _ = _rate_from_blocks(T, N1, blocks, min_count=int(min_count), tail=tail, min_expected=min_expected,
                                  n_bins=n_bins, block_rows=br)
    return out


def excess_abs_phi(counts: Counts | SparseFiring, *, n_bins: int | None = 64,
                   block_rows: int | None = None) -> float:
    """Excess mean |φ| over independence (φ units): mean over all unordered pairs i < j of
    |φ_ij| − E₀|φ|(N1_i, N1_j, T), with E₀ from :func:`null_abs_phi`.

    Pairs with a degenerate latent (dead or always-on) have φ = 0 and E₀ = 0 and contribute 0 (they are
    still counted in the n(n−1)/2 denominator, as in the paper's mean |φ|). The E₀ mean is
    :func:`mean_null_abs_phi`: exact per distinct count pair when ``n_bins is None`` or there are at
    most n_bins + 1 distinct counts, else with the partner's count interpolated between n_bins + 1
    log-spaced count nodes (relative error ≤ 2e-4 of the E₀ mean at n_bins = 64). The |φ| sum runs over
    row blocks of N11; for n beyond ~20k pass a :class:`SparseFiring` (N11 is then computed block by
    block and never held whole).
    """
    T, N1, br, blocks = _blocks_of(counts, block_rows, False, "excess |φ|")
    n = int(N1.size)
    if n < 2:
        return float("nan")
    total = 0.0
    fbuf = np.empty(br * n, dtype=np.float64)
    tbuf = np.empty(br * n, dtype=np.float64)
    ibuf = np.empty(br * n, dtype=np.int64)
    for _, _, ph, square in _phi_pieces(T, N1, blocks, ibuf, fbuf, tbuf):
        if square:
            total += float(np.abs(ph[np.triu_indices(ph.shape[0], 1)]).sum())
        else:
            np.abs(ph, out=ph)
            total += float(ph.sum())
    return total / (n * (n - 1) / 2.0) - mean_null_abs_phi(N1, T, n_bins=n_bins)


def row_mean_abs_phi(counts: Counts | SparseFiring, *, min_count: int = 5,
                     block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-latent mean |φ| (φ units) against the other alive latents of the same SAE, for the alive
    latents (≥ ``min_count`` firing and ≥ ``min_count`` silent tokens). Returns (alive indices int64,
    row means float64). Accepts full counts or a :class:`SparseFiring` (block-wise)."""
    _check_rate_args(min_count, 0.0, 0.0)
    T, N1, br, blocks = _blocks_of(counts, block_rows, False, "row |φ|")
    _, alive, rows = _rate_from_blocks(T, N1, blocks, min_count=int(min_count), tail=0.0, min_expected=0.0,
                                       n_bins=None, block_rows=br, with_null=False)
    idx = np.flatnonzero(alive)
    k = idx.size
    return idx, (rows[idx] / (k - 1) if k > 1 else np.full(k, np.nan))


def rate_matched_delta(counts_a: Counts | SparseFiring, counts_b: Counts | SparseFiring, *, n_cells: int = 10,
                       min_count: int = 5, cov_type: str = "HC3", confidence: float = 0.95) -> dict[str, Any]:
    """Firing-rate-matched difference in latent-level mean |φ| between arm B and arm A (φ units; ``_pct``
    keys in % of arm A's mean row-mean |φ|).

    For every alive latent (≥ ``min_count`` firing and silent tokens) of each arm, its row-mean |φ| against
    the other alive latents of the same SAE (:func:`row_mean_abs_phi`). Then

    * OLS ``row_mean ~ 1 + arm + log(N1/T)`` (arm = 1 for B) with heteroskedasticity-robust
      (``cov_type``, default HC3) standard errors: ``coef_arm`` (B − A at equal own firing rate), its
      ``ci_low``/``ci_high`` (``confidence``), ``se_arm``, ``p_arm``, ``coef_log_rate``; ``rel_diff_pct``,
      ``rel_ci_low_pct``, ``rel_ci_high_pct`` = 100 × those / mean row-mean of A (A's mean taken as fixed);
    * the unadjusted ``raw_diff`` = mean_B − mean_A (and ``raw_rel_pct``);
    * a stratified check: latents of both arms pooled into ``n_cells`` equal-count cells of log firing rate;
      ``cell_diff`` = Σ_cells w_c (mean_B,c − mean_A,c) / Σ w_c with w_c = latents in the cell, over cells
      holding both arms (``n_cells_used``); per-cell rows in ``cells``.
    """
    from statsmodels.regression.linear_model import OLS  # lazy: statsmodels adds ~0.8 s to import paperlib

    if int(n_cells) != n_cells or n_cells < 1:
        raise ValueError("n_cells must be a positive integer")
    finite_array("confidence", confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    ys, xs, arms = [], [], []
    for arm, c in ((0, counts_a), (1, counts_b)):
        idx, rm = row_mean_abs_phi(c, min_count=min_count)
        T = c.T
        N1 = c.N1
        if idx.size < 2:
            raise ValueError(f"counts_{'ab'[arm]} has fewer than 2 alive latents")
        ys.append(rm)
        xs.append(np.log(N1[idx] / T))
        arms.append(np.full(idx.size, float(arm)))
    y, lr, arm_ind = np.concatenate(ys), np.concatenate(xs), np.concatenate(arms)
    X = np.column_stack([np.ones_like(y), arm_ind, lr])
    fit = OLS(y, X).fit(cov_type=cov_type)
    ci = np.asarray(fit.conf_int(alpha=1.0 - confidence))
    mean_a, mean_b = float(ys[0].mean()), float(ys[1].mean())
    coef = float(fit.params[1])
    # stratified: equal-count cells of pooled log rate
    edges = np.quantile(lr, np.linspace(0.0, 1.0, int(n_cells) + 1))
    cell = np.clip(np.searchsorted(edges, lr, side="right") - 1, 0, int(n_cells) - 1)
    cells, num, den = [], 0.0, 0.0
    for k in range(int(n_cells)):
        in_a = (cell == k) & (arm_ind == 0)
        in_b = (cell == k) & (arm_ind == 1)
        row = {"cell": k, "log_rate_low": float(edges[k]), "log_rate_high": float(edges[k + 1]),
               "n_a": int(in_a.sum()), "n_b": int(in_b.sum()),
               "mean_a": float(y[in_a].mean()) if in_a.any() else float("nan"),
               "mean_b": float(y[in_b].mean()) if in_b.any() else float("nan")}
        if in_a.any() and in_b.any():
            w = float(in_a.sum() + in_b.sum())
            num += w * (row["mean_b"] - row["mean_a"])
            den += w
        cells.append(row)
    cell_diff = num / den if den else float("nan")
    pct = 100.0 / mean_a if mean_a else float("nan")
    return {
        "coef_arm": coef, "se_arm": float(fit.bse[1]), "p_arm": float(fit.pvalues[1]),
        "ci_low": float(ci[1, 0]), "ci_high": float(ci[1, 1]), "confidence": float(confidence),
        "coef_log_rate": float(fit.params[2]), "cov_type": cov_type,
        "rel_diff_pct": coef * pct, "rel_ci_low_pct": float(ci[1, 0]) * pct,
        "rel_ci_high_pct": float(ci[1, 1]) * pct,
        "mean_a": mean_a, "mean_b": mean_b, "raw_diff": mean_b - mean_a, "raw_rel_pct": (mean_b - mean_a) * pct,
        "n_a": int(ys[0].size), "n_b": int(ys[1].size), "min_count": int(min_count),
        "cell_diff": cell_diff, "cell_rel_pct": cell_diff * pct,
        "n_cells_used": int(sum(1 for r in cells if r["n_a"] and r["n_b"])), "cells": cells,
        "latents": {"row_mean": y, "log_rate": lr, "arm": arm_ind},
    }


def pooled_rate_regression(groups: Sequence[Mapping[str, np.ndarray]], *, confidence: float = 0.95) -> dict[str, Any]:
    """One regression over all seed pairs: ``row_mean ~ arm + log(rate) + pair`` (a fixed effect per pair) on the
    latents of every pair (``groups``: each :func:`rate_matched_delta`'s ``latents``), with standard errors
    clustered by pair (statsmodels ``cov_type="cluster"``; t with G − 1 degrees of freedom), since latents of one
    SAE are not independent samples. ``rel_*_pct`` are in % of arm A's mean row-mean |φ| over all pairs."""
    from statsmodels.regression.linear_model import OLS  # lazy, as in rate_matched_delta

    finite_array("confidence", confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    if len(groups) < 2:
        raise ValueError(f"a clustered regression needs at least 2 pairs, got {len(groups)}")
    y = np.concatenate([np.asarray(g["row_mean"], dtype=np.float64) for g in groups])
    arm = np.concatenate([np.asarray(g["arm"], dtype=np.float64) for g in groups])
    lr = np.concatenate([np.asarray(g["log_rate"], dtype=np.float64) for g in groups])
    gid = np.concatenate([np.full(len(g["row_mean"]), k) for k, g in enumerate(groups)])
    dummies = (gid[:, None] == np.arange(1, len(groups))[None, :]).astype(np.float64)
    X = np.column_stack([np.ones_like(y), arm, lr, dummies])
    fit = OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": gid}, use_t=True)
    ci = np.asarray(fit.conf_int(alpha=1.0 - confidence))
    mean_a = float(y[arm == 0].mean())
    pct = 100.0 / mean_a if mean_a else float("nan")
    return {"coef_arm": float(fit.params[1]), "se_arm": float(fit.bse[1]), "p_arm": float(fit.pvalues[1]),
            "ci_low": float(ci[1, 0]), "ci_high": float(ci[1, 1]), "df": float(fit.df_resid_inference),
            "rel_pct": float(fit.params[1]) * pct, "rel_ci_low_pct": float(ci[1, 0]) * pct,
            "rel_ci_high_pct": float(ci[1, 1]) * pct, "n_groups": len(groups), "n_latents": int(y.size),
            "confidence": float(confidence)}
