"""Selection of one threshold: ``kernels.kth_largest`` (radix selection) against numpy's ``np.partition``, same process.

The training step selects a k-th largest value three times per screened encoder (the screen's first guess on a
subsample, t* among the gathered lower bounds, the final k·B-th largest exact value) and once per unscreened
BatchTopK selection. The sizes below are those of the default profile's step (n = 2304, B = 2048, k = 32) and of
its meta SAE's encoder over the 2,304 decoder rows (m = 208, k = 8), on positive, right-skewed float32 values like
the step's. Each round times both implementations on the same vector (the median
of ``--calls`` calls each); the table gives each one's median time over rounds and the median of the rounds'
ratios. Both must return the same value (checked on every vector).

Usage: ``.venv/bin/python benchmarks/selection.py [--threads 2] [--reps 9] [--calls 20]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from paperlib.sae import kernels

SIZES = {  # (values, rank k): the default step's selections. The guesses take every (B // 32)-th row; the gathered
    # entries and the candidates are 2.0x and 1.5x k·B (primary), 2.2x and 2.0x (meta), as the screen's docstring says
    "primary guess (32 rows × 2304)": (73_728, 1_024),
    "primary t* (gathered)": (131_072, 65_536),
    "primary final (candidates)": (98_304, 65_536),
    "meta guess (32 rows × 208)": (6_656, 256),
    "meta t* (gathered)": (40_000, 18_432),
    "meta final (candidates)": (36_864, 18_432),
}


def step_like(m: int, rng: np.random.Generator) -> np.ndarray:
    """Positive, right-skewed float32 values, like the ReLU pre-activations and bounds the step selects among."""
    return rng.gamma(2.0, 1.0, m).astype(np.float32)


def time_calls(fn, calls: int) -> float:
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def bench(reps: int, calls: int, sizes: dict[str, tuple[int, int]] = SIZES, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for name, (m, k) in sizes.items():
        v = step_like(m, rng)
        ref = np.partition(v, m - k)[m - k]
        got = kernels.kth_largest(v, k)
        if got != ref:
            raise AssertionError(f"{name}: kth_largest gave {got}, np.partition {ref}")
        t_np, t_rx = [], []
        for _ in range(reps):
            t_np.append(time_calls(lambda v=v, m=m, k=k: np.partition(v, m - k), calls))
            t_rx.append(time_calls(lambda v=v, k=k: kernels.kth_largest(v, k), calls))
        t_np, t_rx = np.array(t_np), np.array(t_rx)
        out.append(dict(name=name, m=m, k=k, numpy_ms=float(np.median(t_np)) * 1e3,
                        radix_ms=float(np.median(t_rx)) * 1e3, speedup=float(np.median(t_np / t_rx))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    if min(args.threads, args.reps, args.calls) < 1:
        ap.error("--threads, --reps and --calls must be >= 1")
    if not kernels.available():
        ap.error("the fused kernels are not available here (no C compiler, or PAPERLIB_FUSED=0): nothing to compare")
    torch.set_num_threads(args.threads)
    print(f"{time.strftime('%F %T')} threads {kernels.threads()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'selection':<32} {'values':>8} {'k':>7} {'np.partition ms':>16} {'kth_largest ms':>15} {'speed-up':>9}")
    for r in bench(args.reps, args.calls):
        print(f"{r['name']:<32} {r['m']:>8,} {r['k']:>7,} {r['numpy_ms']:>16.3f} {r['radix_ms']:>15.3f} "
              f"{r['speedup']:>8.2f}x")


if __name__ == "__main__":
    main()
