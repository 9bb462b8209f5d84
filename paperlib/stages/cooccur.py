"""Co-occurrence stage: within-SAE φ statistics of a run on the co-occurrence range, and its firing matrix."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from paperlib.config.io import atomic_path, damaged, read_json, write_json
from paperlib.config.profiles import Profile
from paperlib.data.activations import load_cache
from paperlib.metrics.cooccurrence import (
    Counts,
    RateRobustStats,
    SparseFiring,
    WithinStats,
    firing_from_sae,
    rate_robust_stats,
    rate_robust_stats_blockwise,
    within_stats,
    within_stats_blockwise,
)
from paperlib.stages import cache
from paperlib.stages.calibrate import thresholds
from paperlib.stages.pool import ensure_each
from paperlib.stages.run import Run, acts_label, range_settings
from paperlib.stages.train import load_run


def _settings(p: Profile) -> dict:
    return {"data": range_settings(p, "cooccurrence"), "batch_size": p.sae.batch_size}


ALIVE_MIN_COUNT = 5
"""A latent is alive on the co-occurrence range when it fires on, and stays silent on, at least this many tokens."""
TAIL = 0.1
"""Positive-tail threshold: share of pairs with φ above it."""


def split_halves(fired: sp.spmatrix) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The first and second half of the co-occurrence tokens (rows): a configuration is *selected* on the
    first half and *reported* on the second, so the selection does not grade itself."""
    fired = fired.tocsr()
    mid = fired.shape[0] // 2
    return fired[:mid], fired[mid:]


def alive_index(N1: np.ndarray, T: int) -> np.ndarray:
    """Indices of the alive latents: fire on, and stay silent on, at least ALIVE_MIN_COUNT of the T tokens."""
    N1 = np.asarray(N1)
    return np.flatnonzero((N1 >= ALIVE_MIN_COUNT) & (T - N1 >= ALIVE_MIN_COUNT))


def alive_columns(fired: sp.spmatrix) -> sp.csr_matrix:
    """The firing matrix restricted to alive latents (:func:`alive_index`)."""
    fired = fired.tocsc()
    return fired[:, alive_index(np.asarray(fired.sum(axis=0)).ravel(), fired.shape[0])].tocsr()


COUNTS_MAX_N = 8192
"""Up to this many latents the stage holds full n×n int64 counts (512 MB at 8192): the two half-range
counts are computed once and every statistic is derived from them (all = half₁ + half₂; alive = a
sub-matrix), two sparse products per run instead of five. Above it, each statistic streams N11 in row
blocks and memory stays bounded by the firing matrix."""


def within_results(fired: sp.spmatrix, progress: bool = False) -> tuple[WithinStats, WithinStats,
                                                                          tuple[WithinStats, WithinStats], dict]:
    """(all pairs, alive pairs, (first half, second half), rate-robust dict) of a firing matrix [T, n]."""
    halves = split_halves(fired)
    if fired.shape[1] > COUNTS_MAX_N:
        firing = SparseFiring.from_fired(fired)
        return (within_stats_blockwise(firing, progress=progress),
                within_stats_blockwise(SparseFiring.from_fired(alive_columns(fired)), progress=False),
                tuple(within_stats_blockwise(SparseFiring.from_fired(h), progress=False) for h in halves),
                rate_robust_stats_blockwise(firing, min_count=ALIVE_MIN_COUNT, tail=TAIL, progress=progress))
    c1, c2 = (SparseFiring.from_fired(h).counts() for h in halves)
    c = c1 + c2
    keep = alive_index(c.N1, c.T)
    alive = Counts(c.T, c.N1[keep], c.N11[np.ix_(keep, keep)])
    return (within_stats(c), within_stats(alive), (within_stats(c1), within_stats(c2)),
            rate_robust_stats(c, min_count=ALIVE_MIN_COUNT, tail=TAIL))


cache.declare("cooccurrence", __name__, _settings, deps=("calibration",), outputs=("result.json", "firing.npz"))


@dataclass(frozen=True)
class CooccurrenceResult:
    """Within-SAE φ statistics of one run on the co-occurrence range (see :func:`ensure_cooccurrence`)."""

    run: str
    range: str
    all: WithinStats
    """Over all pairs i < j (the paper's statistic; dead latents count as φ = 0)."""
    alive: WithinStats
    """Over the pairs of alive latents (:func:`alive_columns`)."""
    halves: tuple[WithinStats, WithinStats]
    """Over the first and the second half of the tokens (:func:`split_halves`)."""
    robust: RateRobustStats
    """Rate-robust statistics (alive pairs, excess over independent firing, positive tail)."""

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "range": self.range, "all": self.all.to_dict(with_hist=True),
                "alive": self.alive.to_dict(with_hist=True),
                "halves": [h.to_dict(with_hist=True) for h in self.halves], "robust": self.robust.to_dict()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CooccurrenceResult:
        return cls(run=d["run"], range=d["range"], all=WithinStats.from_dict(d["all"]),
                   alive=WithinStats.from_dict(d["alive"]),
                   halves=tuple(WithinStats.from_dict(h) for h in d["halves"]),
                   robust=RateRobustStats.from_dict(d["robust"]))


def ensure_cooccurrence(run: Run, *, progress: bool = True) -> CooccurrenceResult:
    """Within-SAE φ statistics of ``run`` on the co-occurrence range (per-token thresholded firing), as a
    :class:`CooccurrenceResult` (stored as ``result.json``); the firing matrix is kept (:func:`load_firing`)."""
    return cache.ensure("cooccurrence", run, _load_result, lambda: _cooccurrence(run, progress))


def _load_result(d: Path) -> CooccurrenceResult:
    return CooccurrenceResult.from_json(read_json(d / "result.json", delete=d))


def _cooccurrence(run: Run, progress: bool) -> CooccurrenceResult:
    theta = thresholds(run, progress=progress)
    sae = load_run(run)
    acts = load_cache(run.profile).acts("cooccurrence")
    fired = firing_from_sae(sae, acts, theta, batch_size=run.profile.sae.batch_size, progress=progress,
                           what=acts_label(run.profile, "cooccurrence"))
    all_pairs, alive, halves, robust = within_results(fired, progress=progress)
    res = CooccurrenceResult(run=run.name, range="cooccurrence", all=all_pairs, alive=alive, halves=halves,
                             robust=RateRobustStats.from_dict(robust))
    d = cache.begin("cooccurrence", run)
    with atomic_path(d / "firing.npz") as tmp, open(tmp, "wb") as fh:
        sp.save_npz(fh, fired.tocsr(), compressed=False)  # zlib would only save disk, at a CPU cost per run
    write_json(d / "result.json", res.to_json())
    cache.commit("cooccurrence", run)
    return res


def load_firing(run: Run) -> sp.csr_matrix:
    """The binary firing matrix [T, n] of ``run`` on the co-occurrence range (CSR, bool)."""
    ensure_cooccurrence(run, progress=False)
    d = cache.stage_dir("cooccurrence", run)
    try:
        return sp.load_npz(d / "firing.npz").tocsr()
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as err:
        raise damaged(d / "firing.npz", f"unreadable firing matrix ({err})", d) from None


def ensure_cooccurrences(runs: Iterable[Run], *, n_workers: int | None = None,
                         progress: bool = True) -> dict[str, CooccurrenceResult]:
    """:func:`ensure_cooccurrence` of every run, the missing ones computed in ``n_workers`` processes
    (:func:`paperlib.stages.pool.ensure_each`); results are the same either way."""
    return ensure_each("cooccurrence", ensure_cooccurrence, list(runs), n_workers=n_workers, desc="co-occurrence",
                       progress=progress)
