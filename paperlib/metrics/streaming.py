"""Streaming mean and variance in fp64: the one implementation behind every streamed moment of the
metrics (reconstruction norms and L0, the within-SAE |φ| variance, Welch's test from sums).

:class:`StreamingMoments` keeps the count, the mean and M2 = Σ (x − mean)² of a stream of batches,
reduced over the first axis (1-D batches give scalar moments; ``[b, d]`` batches give per-column
moments), plus the running min and max. Batches are combined with the pairwise update of Chan, Golub
& LeVeque (1979): for two parts (n_a, mean_a, M2_a) and (n_b, mean_b, M2_b), with δ = mean_b − mean_a
and n = n_a + n_b,

    M2 = M2_a + M2_b + δ² · n_a · n_b / n,    mean = mean_a + δ · n_b / n,

which has no E[x²] − E[x]² cancellation. Within a batch the moments are two-pass (mean, then
Σ (x − mean)²); :meth:`StreamingMoments.from_sums` builds a part from (count, Σx, Σx²) instead, for
callers that already hold those sums (cheaper, exact enough when the variance is not small against
the squared mean). Non-finite input raises ValueError naming the stream.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["StreamingMoments", "finite_array"]


def finite_array(name: str, x: Any) -> np.ndarray:
    """``x`` (numpy, torch, nested lists, scalar) as a float64 array; ValueError naming ``name`` if it is
    not numeric or holds NaN/±inf."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric") from err
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (got NaN or inf)")
    return arr


class StreamingMoments:
    """Count, mean, M2, min and max of a stream of batches ``[b, *shape]`` (fp64, Chan merge).

    ``name`` is used in error messages (e.g. ``"input norm"``). ``shape`` is the shape of one item
    (``()`` for a stream of numbers). ``mean``, ``min``, ``max``, ``var()`` and ``std()`` are Python
    floats for scalar streams and arrays otherwise; before any data ``mean``/``var``/``std`` are NaN,
    ``min``/``max`` are +inf/−inf.
    """

    def __init__(self, name: str = "values", shape: tuple[int, ...] = ()) -> None:
        self.name = str(name)
        self.shape = tuple(int(s) for s in shape)
        self.count = 0
        self._mean = np.zeros(self.shape, dtype=np.float64)
        self._m2 = np.zeros(self.shape, dtype=np.float64)
        self._min = np.full(self.shape, np.inf)
        self._max = np.full(self.shape, -np.inf)

    # -- building -----------------------------------------------------------------------------
    def update(self, batch: Any) -> StreamingMoments:
        """Add a batch ``[b, *shape]`` (numpy, torch or nested lists; converted to fp64)."""
        v = finite_array(self.name, batch)
        if v.ndim == 0 or v.shape[1:] != self.shape:
            raise ValueError(f"{self.name}: batch must have shape [b, *{self.shape}], got {v.shape}")
        if v.shape[0] == 0:
            return self
        mb = v.mean(axis=0)
        return self._merge(v.shape[0], mb, np.square(v - mb).sum(axis=0), v.min(axis=0), v.max(axis=0))

    @classmethod
    def from_sums(cls, count: int, total: Any, total_sq: Any, *, name: str = "values") -> StreamingMoments:
        """A part from its count, Σx and Σx² (mean = Σx / n, M2 = max(0, Σx² − Σx · mean)).

        Min and max are unknown (±inf). One-pass: loses precision when the variance is tiny against
        mean²; prefer :meth:`update` on the values themselves where they are at hand.
        """
        s, ss = finite_array(f"{name} Σx", total), finite_array(f"{name} Σx²", total_sq)
        if s.shape != ss.shape:
            raise ValueError(f"{name}: Σx {s.shape} and Σx² {ss.shape} must have the same shape")
        out = cls(name, s.shape)
        if int(count) != count or count < 0:
            raise ValueError(f"{name}: count must be a non-negative integer, got {count!r}")
        if count == 0:
            return out
        mean = s / count
        m2 = ss - s * mean
        out.count = int(count)
        out._mean = mean
        out._m2 = np.where(m2 > 0, m2, 0.0)
        return out

    def merge(self, other: StreamingMoments) -> StreamingMoments:
        """Fold ``other`` (same item shape) into this accumulator; returns ``self``."""
        if other.shape != self.shape:
            raise ValueError(f"{self.name}: cannot merge moments of shape {other.shape} into {self.shape}")
        if other.count == 0:
            return self
        return self._merge(other.count, other._mean, other._m2, other._min, other._max)

    def _merge(self, nb: int, mb: np.ndarray, m2b: np.ndarray, mn: np.ndarray, mx: np.ndarray
               ) -> StreamingMoments:
        tot = self.count + nb
        delta = mb - self._mean
        self._m2 = self._m2 + (m2b + delta * delta * self.count * nb / tot)
        self._mean = self._mean + delta * nb / tot
        self.count = tot
        self._min = np.minimum(self._min, mn)
        self._max = np.maximum(self._max, mx)
        return self

    # -- reading ------------------------------------------------------------------------------
    def _out(self, a: np.ndarray) -> float | np.ndarray:
        return float(a) if a.ndim == 0 else a.copy()

    @property
    def mean(self) -> float | np.ndarray:
        return self._out(self._mean if self.count else np.full(self.shape, np.nan))

    @property
    def m2(self) -> float | np.ndarray:
        """Σ (x − mean)² (0 before any data)."""
        return self._out(self._m2)

    @property
    def min(self) -> float | np.ndarray:
        return self._out(self._min)

    @property
    def max(self) -> float | np.ndarray:
        return self._out(self._max)

    def var(self, ddof: int = 0) -> float | np.ndarray:
        """M2 / (count − ddof); NaN when count ≤ ddof."""
        if self.count <= ddof:
            return self._out(np.full(self.shape, np.nan))
        return self._out(self._m2 / (self.count - ddof))

    def std(self, ddof: int = 0) -> float | np.ndarray:
        v = self.var(ddof)
        return math.sqrt(v) if isinstance(v, float) else np.sqrt(v)

    def __repr__(self) -> str:
        return f"StreamingMoments({self.name!r}, count={self.count}, mean={self.mean}, var={self.var()})"
