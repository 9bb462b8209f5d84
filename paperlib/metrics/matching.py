"""Hungarian matching of two SAEs' features on decoder cosine similarity (method.md §3.5).

The assignment maximises the summed cosine similarity between decoder rows of SAE A and SAE B
(``scipy.optimize.linear_sum_assignment`` on ``-cos``), restricted to features that are alive in
both dictionaries (dead features are removed *before* the assignment, so they never take a
partner away from a live feature).

Cost: the similarity matrix is dense ``[n_a_alive, n_b_alive]``. At the default profile
(n = 4608) it is 4608² float64 ≈ 170 MB and the assignment takes seconds to tens of seconds on
one CPU core (measured: 1.5–2.6 s at n = 4608, d = 576).
At paper scale (n = 20480) use ``dtype=np.float32`` (≈ 1.7 GB); the Jonker–Volgenant
solver in scipy is O(n³) worst case, typically minutes for dense cosine matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment


@dataclass
class MatchResult:
    """Matched pairs and summary counts.

    ``pairs`` has columns ``i`` (feature of A), ``j`` (feature of B), ``cosine`` (float64),
    one row per matched pair of alive features, sorted by ``i``.
    """

    pairs: pd.DataFrame
    n_alive_a: int
    n_alive_b: int
    threshold: float | None
    n_above_threshold: int | None

    @property
    def n_pairs(self) -> int:
        return int(len(self.pairs))

    def above(self, threshold: float | None = None) -> pd.DataFrame:
        """Pairs with cosine ≥ ``threshold`` (default: the threshold given at matching time)."""
        thr = self.threshold if threshold is None else threshold
        if thr is None:
            return self.pairs
        return self.pairs[self.pairs["cosine"] >= thr].reset_index(drop=True)

    def summary(self) -> dict:
        c = self.pairs["cosine"].to_numpy()
        return {
            "n_pairs": self.n_pairs, "n_alive_a": self.n_alive_a, "n_alive_b": self.n_alive_b,
            "threshold": self.threshold, "n_above_threshold": self.n_above_threshold,
            "mean_cosine": float(c.mean()) if len(c) else float("nan"),
            "median_cosine": float(np.median(c)) if len(c) else float("nan"),
        }


def _as_numpy(w) -> np.ndarray:
    if hasattr(w, "detach"):
        w = w.detach().cpu().float().numpy()
    return np.asarray(w)


def _normalise_rows(w: np.ndarray, dtype) -> np.ndarray:
    w = np.asarray(w, dtype=dtype)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    return w / np.where(norms > 0, norms, 1.0)


def cosine_matrix(W_a, W_b, dtype=np.float64) -> np.ndarray:
    """Cosine similarity of every decoder row of A with every decoder row of B, ``[n_a, n_b]``."""
    a, b = _as_numpy(W_a), _as_numpy(W_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"decoders must be [n, d] with the same d; got {a.shape} and {b.shape}")
    return _normalise_rows(a, dtype) @ _normalise_rows(b, dtype).T


def hungarian_match(
    W_dec_a, W_dec_b, alive_a=None, alive_b=None, threshold: float | None = None,
    dtype=np.float64,
) -> MatchResult:
    """Match features of A to features of B maximising total decoder cosine similarity.

    Args:
        W_dec_a, W_dec_b: decoders ``[n_a, d]`` and ``[n_b, d]`` (numpy or torch).
        alive_a, alive_b: boolean masks ``[n_a]``/``[n_b]``; ``None`` means all alive.
        threshold: if given, ``n_above_threshold`` counts pairs with cosine ≥ threshold
            (all pairs are still returned; use ``MatchResult.above()`` to filter).
        dtype: dtype of the similarity matrix (float32 halves memory at paper scale).
    """
    a, b = _as_numpy(W_dec_a), _as_numpy(W_dec_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"decoders must be [n, d] with the same d; got {a.shape} and {b.shape}")
    ma = np.ones(a.shape[0], bool) if alive_a is None else np.asarray(_as_numpy(alive_a), bool)
    mb = np.ones(b.shape[0], bool) if alive_b is None else np.asarray(_as_numpy(alive_b), bool)
    if ma.shape != (a.shape[0],) or mb.shape != (b.shape[0],):
        raise ValueError("alive masks must have one entry per decoder row")
    ia, ib = np.flatnonzero(ma), np.flatnonzero(mb)
    if len(ia) == 0 or len(ib) == 0:
        pairs = pd.DataFrame({"i": np.zeros(0, np.int64), "j": np.zeros(0, np.int64),
                              "cosine": np.zeros(0, np.float64)})
    else:
        cos = cosine_matrix(a[ia], b[ib], dtype=dtype)
        rows, cols = linear_sum_assignment(cos, maximize=True)
        pairs = pd.DataFrame({"i": ia[rows].astype(np.int64), "j": ib[cols].astype(np.int64),
                              "cosine": cos[rows, cols].astype(np.float64)})
        del cos
        pairs = pairs.sort_values("i").reset_index(drop=True)
    n_above = None if threshold is None else int((pairs["cosine"] >= threshold).sum())
    return MatchResult(pairs=pairs, n_alive_a=int(len(ia)), n_alive_b=int(len(ib)),
                       threshold=threshold, n_above_threshold=n_above)
