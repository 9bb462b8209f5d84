"""Co-occurrence stage: within-SAE φ statistics of a run on the co-occurrence range, and its firing matrix."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from paperlib.config.io import atomic_path, damaged, read_json, write_json
from paperlib.config.profiles import Profile
from paperlib.data.activations import load_cache
from paperlib.metrics.cooccurrence import (
    RateRobustStats,
    SparseFiring,
    WithinStats,
    firing_from_sae,
    rate_robust_stats_blockwise,
    within_stats_blockwise,
)
from paperlib.stages import cache
from paperlib.stages.calibrate import thresholds
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


def alive_columns(fired: sp.spmatrix) -> sp.csr_matrix:
    """The firing matrix restricted to alive latents (fire on, and stay silent on, ≥ ALIVE_MIN_COUNT tokens)."""
    fired = fired.tocsc()
    n1 = np.asarray(fired.sum(axis=0)).ravel()
    keep = np.flatnonzero((n1 >= ALIVE_MIN_COUNT) & (fired.shape[0] - n1 >= ALIVE_MIN_COUNT))
    return fired[:, keep].tocsr()


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
    d = cache.stage_dir("cooccurrence", run)
    if cache.is_fresh("cooccurrence", run):
        return CooccurrenceResult.from_json(read_json(d / "result.json", delete=d))
    theta = thresholds(run, progress=progress)
    sae = load_run(run)
    acts = load_cache(run.profile).acts("cooccurrence")
    fired = firing_from_sae(sae, acts, theta, batch_size=run.profile.sae.batch_size, progress=progress,
                           what=acts_label(run.profile, "cooccurrence"))
    firing = SparseFiring.from_fired(fired)
    res = CooccurrenceResult(
        run=run.name, range="cooccurrence", all=within_stats_blockwise(firing, progress=progress),
        alive=within_stats_blockwise(SparseFiring.from_fired(alive_columns(fired)), progress=False),
        halves=tuple(within_stats_blockwise(SparseFiring.from_fired(h), progress=False) for h in split_halves(fired)),
        robust=RateRobustStats.from_dict(rate_robust_stats_blockwise(firing, min_count=ALIVE_MIN_COUNT, tail=TAIL,
                                                                     progress=progress)))
    d = cache.begin("cooccurrence", run)
    with atomic_path(d / "firing.npz") as tmp, open(tmp, "wb") as fh:
        sp.save_npz(fh, fired.tocsr())
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
