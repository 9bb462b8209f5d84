"""Reconstruction stage: L2, FVE, L0, dead latents and firing-rate statistics of a run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from paperlib.config.io import read_json, write_json
from paperlib.config.profiles import Profile
from paperlib.data.activations import load_cache
from paperlib.metrics.reconstruction import RATE_LOG10_EDGES, ReconMetrics, firing_summary, reconstruction_metrics_pair
from paperlib.stages import cache
from paperlib.stages.calibrate import thresholds
from paperlib.stages.cooccur import load_firing
from paperlib.stages.pool import ensure_each
from paperlib.stages.run import Run, acts_label, range_settings
from paperlib.stages.train import load_run


def _settings(p: Profile) -> dict:
    return {"data": range_settings(p, "cooccurrence"), "recon_tokens": p.eval.recon_tokens,
            "batch_size": p.sae.batch_size}


cache.declare("reconstruction", __name__, _settings, deps=("calibration", "cooccurrence"))


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


@dataclass(frozen=True)
class ReconstructionResult:
    """Reconstruction metrics of one run (see :func:`ensure_reconstruction`)."""

    run: str
    thresholded: ReconMetrics
    """Per-token thresholded encoder on the first ``n_tokens_evaluated`` co-occurrence tokens."""
    batchtopk: ReconMetrics
    """The training-time BatchTopK encoder on the same tokens."""
    n_tokens_evaluated: int
    firing_n_tokens: int
    """Tokens that dead latents, firing counts and rates are counted on (the whole co-occurrence range)."""
    n_dead: int
    dead_frac: float
    firing_rate_quantiles: dict[str, float]
    firing_counts: np.ndarray = field(repr=False)
    rate_hist_counts: np.ndarray = field(repr=False)

    @property
    def mse(self) -> float:
        """L2: MSE in the normalised space (thresholded encoder)."""
        return self.thresholded.mse

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (arrays as lists)."""
        return _plain({"run": self.run, "thresholded": _plain(self.thresholded.to_dict(with_arrays=True)),
                       "batchtopk": _plain(self.batchtopk.to_dict(with_arrays=True)),
                       "n_tokens_evaluated": self.n_tokens_evaluated, "firing_n_tokens": self.firing_n_tokens,
                       "n_dead": int(self.n_dead), "dead_frac": float(self.dead_frac),
                       "firing_rate_quantiles": self.firing_rate_quantiles, "firing_counts": self.firing_counts,
                       "rate_hist_counts": self.rate_hist_counts, "rate_hist_edges": RATE_LOG10_EDGES})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReconstructionResult:
        def metrics(m: dict[str, Any]) -> ReconMetrics:
            return ReconMetrics(**{**m, "firing_counts": np.asarray(m["firing_counts"], dtype=np.int64),
                                   "rate_hist_counts": np.asarray(m["rate_hist_counts"], dtype=np.int64)})

        return cls(run=d["run"], thresholded=metrics(d["thresholded"]), batchtopk=metrics(d["batchtopk"]),
                   n_tokens_evaluated=d["n_tokens_evaluated"], firing_n_tokens=d["firing_n_tokens"],
                   n_dead=d["n_dead"], dead_frac=d["dead_frac"], firing_rate_quantiles=d["firing_rate_quantiles"],
                   firing_counts=np.asarray(d["firing_counts"], dtype=np.int64),
                   rate_hist_counts=np.asarray(d["rate_hist_counts"], dtype=np.int64))


def ensure_reconstruction(run: Run, *, progress: bool = True) -> ReconstructionResult:
    """Reconstruction metrics of ``run`` on the co-occurrence range (its first ``profile.eval.recon_tokens`` tokens
    when set) with the calibrated per-token thresholds (``thresholded``: L2 in the normalised space, FVE,
    L0, norm statistics; :class:`~paperlib.metrics.reconstruction.ReconMetrics`) and with the training-time
    BatchTopK encoder (``batchtopk``). Dead latents, firing counts and rate statistics always cover the whole
    co-occurrence range (``firing_n_tokens``), taken from the co-occurrence firing matrix when a subset is used.
    """
    return cache.ensure("reconstruction", run, _load_result, lambda: _reconstruction(run, progress))


def _load_result(d: Path) -> ReconstructionResult:
    return ReconstructionResult.from_json(read_json(d / "result.json", delete=d))


def _reconstruction(run: Run, progress: bool) -> ReconstructionResult:
    p = run.profile
    theta = thresholds(run, progress=progress)
    sae = load_run(run)
    full = load_cache(p).acts("cooccurrence")
    n_tok = len(full) if p.eval.recon_tokens is None else min(len(full), int(p.eval.recon_tokens))
    acts = full[:n_tok]
    what = acts_label(p, "cooccurrence")
    m, b = reconstruction_metrics_pair(sae, acts, theta, batch_size=p.sae.batch_size, progress=progress, what=what)
    firing = {"firing_n_tokens": n_tok, "n_dead": m.n_dead, "dead_frac": m.dead_frac,
              "firing_rate_quantiles": m.firing_rate_quantiles, "firing_counts": m.firing_counts,
              "rate_hist_counts": m.rate_hist_counts}
    if n_tok < len(full):  # firing statistics over the whole range
        fired = load_firing(run)
        counts = np.asarray(fired.sum(axis=0), dtype=np.int64).ravel()
        fs = firing_summary(counts, fired.shape[0])
        firing = {"firing_n_tokens": int(fired.shape[0]), "n_dead": fs["n_dead"], "dead_frac": fs["dead_frac"],
                  "firing_rate_quantiles": fs["firing_rate_quantiles"], "firing_counts": counts,
                  "rate_hist_counts": np.asarray(fs["rate_hist_counts"], dtype=np.int64)}
    res = ReconstructionResult(run=run.name, thresholded=m, batchtopk=b, n_tokens_evaluated=n_tok, **firing)
    d = cache.begin("reconstruction", run)
    write_json(d / "result.json", res.to_json())
    cache.commit("reconstruction", run)
    return res


def ensure_reconstructions(runs: Iterable[Run], *, n_workers: int | None = None,
                           progress: bool = True) -> dict[str, ReconstructionResult]:
    """:func:`ensure_reconstruction` of every run, the missing ones computed in ``n_workers`` processes
    (:func:`paperlib.stages.pool.ensure_each`); results are the same either way."""
    return ensure_each("reconstruction", ensure_reconstruction, list(runs), n_workers=n_workers, desc="reconstruction",
                       progress=progress)
