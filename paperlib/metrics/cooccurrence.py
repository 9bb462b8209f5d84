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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

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


class _WithinAccumulator:
    def __init__(self, n_bins: int) -> None:
        self.edges = np.linspace(-1.0, 1.0, n_bins + 1)
        self.hist = np.zeros(n_bins, dtype=np.int64)
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
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
        mb = s / nb
        m2b = max(0.0, sq - s * mb)  # within-block; |φ| has var/mean² = O(1): no cancellation issue
        tot = self.n + nb
        delta = mb - self.mean
        self.m2 += m2b + delta * delta * self.n * nb / tot
        self.mean += delta * nb / tot
        self.n = tot
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
    for start, stop, sq, rect in blocks:  # rect: array [r, c] or callable(buf) -> array [c, r]
        r, c = stop - start, n - stop
        # square part: strict upper triangle (small, allocating path)
        ph_sq = phi_block(T, N1[start:stop], N1[start:stop], sq)
        iu = np.triu_indices(r, 1)
        tri = ph_sq[iu]
        if exclude_degenerate:
            al = alive[start:stop]
            tri = tri[al[iu[0]] & al[iu[1]]]
        acc.update(tri)
        del ph_sq, tri
        if c == 0:
            continue
        rws, cls = slice(start, stop), slice(stop, n)
        if callable(rect):
            n11 = rect(ibuf)
            rws, cls = cls, rws
        else:
            n11 = rect
        shape = n11.shape
        ph = phi_block(T, N1[rws], N1[cls], n11, out=fbuf[: r * c].reshape(shape),
                       tmp=tbuf[: r * c].reshape(shape))
        del n11
        if exclude_degenerate:
            acc.update(ph[np.ix_(alive[rws], alive[cls])])
        else:
            acc.update(ph.reshape(-1), fbuf=tbuf, ibuf=ibuf, bbuf=bbuf)
        del ph
    var = acc.m2 / (acc.n - 1) if acc.n > 1 else float("nan")
    width = 2.0 / n_bins
    return WithinStats(
        T=int(T), n_features=n, n_pairs=acc.n, sum_abs=acc.sum_abs, sumsq=acc.sumsq,
        mean_abs_phi=acc.mean if acc.n else float("nan"), var_abs_phi=var, std_abs_phi=math.sqrt(var),
        n_negative=acc.n_neg, frac_negative=acc.n_neg / acc.n if acc.n else float("nan"),
        median_phi=acc.median(), median_err=width, max_phi=acc.max, min_phi=acc.min,
        mean_phi=acc.sum / acc.n if acc.n else float("nan"),
        n_dead=int(dead.sum()), n_always_on=int(always.sum()), exclude_degenerate=exclude_degenerate,
        hist_edges=acc.edges, hist_counts=acc.hist,
    )


def _block_rows(n: int, block_rows: int | None) -> int:
    if block_rows is None:
        block_rows = min(MAX_BLOCK_ROWS, max(1, DEFAULT_BLOCK_ELEMS // max(n, 1)))
    return max(1, min(int(block_rows), n))


def within_stats(counts: Counts, *, n_bins: int = DEFAULT_HIST_BINS, exclude_degenerate: bool = False,
                 block_rows: int | None = None) -> WithinStats:
    """Within-SAE φ statistics over all pairs i < j from full counts (processed in row blocks)."""
    n = counts.n
    br = _block_rows(n, block_rows)

    def blocks() -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        for s in range(0, n, br):
            e = min(n, s + br)
            yield s, e, counts.N11[s:e, s:e], counts.N11[s:e, e:]

    return _within_from_blocks(counts.T, counts.N1, blocks(), n_bins, exclude_degenerate, br)


def within_stats_blockwise(firing: SparseFiring | Any, *, block_rows: int | None = None,
                           n_bins: int = DEFAULT_HIST_BINS, exclude_degenerate: bool = False,
                           progress: bool = True) -> WithinStats:
    """Within-SAE φ statistics from a sparse firing matrix, computing N11 one row block at a time
    (only the columns ≥ the block start, i.e. the upper triangle). Memory is bounded by the firing
    matrix plus a few ``block_rows × n`` arrays; never an n×n matrix."""
    if not isinstance(firing, SparseFiring):
        firing = SparseFiring.from_fired(firing)
    n, T, N1 = firing.n, firing.T, firing.N1
    br = _block_rows(n, block_rows)
    starts = range(0, n, br)

    def blocks() -> Iterator[tuple[int, int, np.ndarray, Any]]:
        for s in tqdm(starts, desc="within φ", disable=not progress, leave=False):
            e = min(n, s + br)
            B = firing.cols_csr(s, e)  # [T, r]
            sq = (firing.cols_T(s, e) @ B).toarray()

            def rect(buf: np.ndarray, B: sp.csr_matrix = B, e: int = e) -> np.ndarray:
                # N11[e:, s:e] = F[:, e:]ᵀ F[:, s:e]  ([c, r]; avoids converting the big column range)
                prod = firing.cols_T(e) @ B
                return prod.toarray(out=buf[: prod.shape[0] * prod.shape[1]].reshape(prod.shape))

            yield s, e, sq, rect

    return _within_from_blocks(T, N1, blocks(), n_bins, exclude_degenerate, br)


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
@torch.no_grad()
def firing_from_sae(sae: Any, acts: Any, thresholds: Any, batch_size: int = 4096, *,
                    device: str | torch.device = "cpu", progress: bool = True) -> sp.csr_matrix:
    """Binary firing matrix ``[T, n]`` (CSR, bool data) of ``sae.encode(x, thresholds=θ) > 0`` over an
    activation array ``[T, d]`` (e.g. an fp16 memmap), processed in chunks of ``batch_size`` tokens."""
    T = len(acts)
    theta = torch.as_tensor(np.asarray(thresholds), dtype=torch.float32, device=device)
    parts = []
    for s in tqdm(range(0, T, batch_size), desc="firing", disable=not progress, leave=False):
        x = torch.as_tensor(np.asarray(acts[s:s + batch_size]), device=device).float()
        f = sae.encode(x, thresholds=theta)
        parts.append(sp.csr_matrix((f > 0).cpu().numpy()))
    if not parts:
        n = int(theta.shape[0])
        return sp.csr_matrix((0, n), dtype=bool)
    return sp.vstack(parts, "csr").astype(bool)
