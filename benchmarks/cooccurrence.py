"""Benchmark: exact co-occurrence counts and within-SAE φ statistics at paper width on CPU.

n = 20480 features, k ≈ 64 firings per token, 200k tokens of synthetic firing with skewed
(log-normal) per-feature rates and some dead features. Measures wall time and peak memory of

* ours: sparse firing accumulator → ``within_stats_blockwise`` (N11 upper-triangle row blocks,
  φ and the streamed statistics; never an n×n float matrix), and separately the full int64
  ``count`` (n×n int64 = 3.4 GB, the full-matrix API);
* baseline (same process, afterwards): naive dense fp32 matmul ``FᵀF`` on a token subset,
  scaled linearly to all tokens (the dense cost is exactly linear in T). This is a lower bound on a
  dense pipeline, which still needs the φ pass on top.

Peak memory is the process high-water mark (``ru_maxrss``) read right after our stages, before
the baseline allocates anything; tracemalloc peaks (numpy allocations only) are reported too.

Usage: ``.venv/bin/python benchmarks/cooccurrence.py [--tokens 200000] [--n 20480] [--k 64]``.
Acceptance: peak < 8 GiB and ≥ 5× faster than the dense baseline.

Last run (2 CPU threads, T = 200k, n = 20480, mean L0 = 64.2, 210 dead): within_stats_blockwise
52 s incl. accumulation (peak RSS 1.5 GiB); full int64 count 90 s (peak RSS 4.6 GiB, dominated by
the 3.4 GB n×n result); dense fp32 baseline 33 s on 1024 tokens ≈ 26 GFLOP/s → 6440 s scaled to
200k tokens: 124× (within) / 71× (full count). Even at the 113 GFLOP/s peak quoted in method.md §6 the
dense baseline would take ≈ 1500 s (≥ 16×).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import tracemalloc

import numpy as np
import scipy.sparse as sp
import torch

from paperlib.metrics import cooccurrence as co


def rss_peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def synthetic_firing(T: int, n: int, k: int, seed: int = 0, n_dead: int = 200,
                     sigma: float = 1.5) -> sp.csr_matrix:
    """Per token, draw ~k features (with replacement, de-duplicated) from log-normal feature weights."""
    rng = np.random.default_rng(seed)
    w = rng.lognormal(0.0, sigma, size=n)
    w[rng.choice(n, n_dead, replace=False)] = 0.0
    p = w / w.sum()
    cdf = np.cumsum(p)
    draws = k + 1  # with replacement; after de-duplication the mean unique count is ≈ k
    rows = []
    for s in range(0, T, 20_000):
        m = min(20_000, T - s)
        idx = np.searchsorted(cdf, rng.random((m, draws)) * cdf[-1], side="right").clip(0, n - 1)
        idx.sort(axis=1)
        keep = np.ones_like(idx, dtype=bool)
        keep[:, 1:] = idx[:, 1:] != idx[:, :-1]
        counts = keep.sum(1)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        rows.append(sp.csr_matrix((np.ones(int(indptr[-1]), dtype=bool), idx[keep], indptr), shape=(m, n)))
    return sp.vstack(rows, "csr")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--n", type=int, default=20_480)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--baseline-tokens", type=int, default=1024)
    ap.add_argument("--skip-full-count", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)

    t0 = time.perf_counter()
    F = synthetic_firing(args.tokens, args.n, args.k)
    t_gen = time.perf_counter() - t0
    rates = np.bincount(F.indices, minlength=args.n) / args.tokens
    print(f"synthetic firing: T={args.tokens} n={args.n} mean L0={F.nnz / args.tokens:.1f} "
          f"max rate={rates.max():.3f} median rate={np.median(rates):.2e} dead={(rates == 0).sum()} "
          f"({t_gen:.1f}s)")

    tracemalloc.start()
    t0 = time.perf_counter()
    acc = co.SparseFiring.from_fired(F)
    _ = acc.csc
    t_acc = time.perf_counter() - t0
    t0 = time.perf_counter()
    ws = co.within_stats_blockwise(acc, progress=True)
    t_within = time.perf_counter() - t0
    tm_within = tracemalloc.get_traced_memory()[1] / 2**30
    rss_within = rss_peak_gib()
    print(f"ours: accumulate {t_acc:.1f}s, within_stats_blockwise {t_within:.1f}s, "
          f"peak RSS {rss_within:.2f} GiB (tracemalloc peak {tm_within:.2f} GiB)")
    print(f"  n_pairs={ws.n_pairs} mean|φ|={ws.mean_abs_phi:.6e} std={ws.std_abs_phi:.4e} "
          f"frac<0={ws.frac_negative:.4f} median={ws.median_phi:.2e} max={ws.max_phi:.4f} dead={ws.n_dead}")

    t_count = float("nan")
    rss_count = rss_within
    if not args.skip_full_count:
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        counts = co.count(F)
        t_count = time.perf_counter() - t0
        rss_count = rss_peak_gib()
        assert counts.N11.dtype == np.int64 and int(counts.N11.trace()) == F.nnz
        print(f"ours: full count (n×n int64) {t_count:.1f}s, peak RSS {rss_count:.2f} GiB")
        del counts
    tracemalloc.stop()
    ours_peak = max(rss_within, rss_count)

    # ---- dense baseline on a token subset, scaled ----
    Tb = min(args.baseline_tokens, args.tokens)
    Fd = torch.from_numpy(F[:Tb].toarray().astype(np.float32))
    FdT = Fd.T.contiguous()
    N11_dense = torch.empty(args.n, args.n)
    torch.mm(FdT[:, :64], Fd[:64], out=N11_dense)  # warm-up (also touches the output pages)
    t0 = time.perf_counter()
    torch.mm(FdT, Fd, out=N11_dense)
    t_dense_sub = time.perf_counter() - t0
    t_dense = t_dense_sub * args.tokens / Tb
    ref = co.count(F[:Tb]).N11
    assert np.array_equal(N11_dense.numpy().astype(np.int64), ref), "dense baseline disagrees"
    del N11_dense, ref
    print(f"baseline: dense fp32 FᵀF on {Tb} tokens {t_dense_sub:.2f}s → scaled to {args.tokens} tokens "
          f"{t_dense:.1f}s ({2 * Tb * args.n**2 / t_dense_sub / 1e9:.0f} GFLOP/s)")

    ours = t_acc + t_within
    res = {
        "T": args.tokens, "n": args.n, "k": args.k, "mean_L0": F.nnz / args.tokens,
        "ours_within_s": ours, "ours_full_count_s": t_count, "ours_peak_rss_gib": ours_peak,
        "dense_baseline_counts_s_scaled": t_dense, "baseline_tokens": Tb,
        "speedup_within_vs_dense_counts": t_dense / ours,
        "speedup_full_count_vs_dense": t_dense / t_count if t_count == t_count else None,
        "accept_memory_lt_8gib": ours_peak < 8.0, "accept_speedup_ge_5x": t_dense / ours >= 5.0,
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
