"""The second-model experiment (docs/method.md §3.6; paper §6): solo plus a λ₂ × σ² joint grid,
with the mean fuzz score of a random sample of alive features per run.

The paper uses Gemma 2 9B; the offline default is Gemma 3 270M (profile ``gemma-3-270m``). The grid's
co-occurrence, reconstruction and CE numbers come from :func:`paperlib.stages.select.grid_table`;
:mod:`paperlib.report.second_model` builds the §6 table and figure.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from paperlib.config.profiles import Profile, get_profile
from paperlib.sae.arms import primary_runs
from paperlib.stages.interp import ensure_scores
from paperlib.stages.recon import ensure_reconstruction
from paperlib.stages.run import Run, as_runs
from paperlib.stages.select import training_plan

__all__ = ["SMOKE_GRID", "add_fuzz_deltas", "fuzz_table", "gemma_plan", "sample_features"]

SMOKE_GRID = ("0.3", "1.0")
"""(λ₂, σ²) used on the ``smoke`` profile (a single configuration keeps it fast)."""


def gemma_plan(profile: str | Profile, lambda2: Any = "0.1,0.3,1.0", sigma2: Any = "1.0,3.0") -> list[Run]:
    """solo + the λ₂ × σ² joint grid at seed 0 (on ``smoke``: the single configuration :data:`SMOKE_GRID`),
    then the profile's paired seeds of the primary comparison (solo and the paper's configuration)."""
    p = get_profile(profile)
    if p.name == "smoke":
        lambda2, sigma2 = SMOKE_GRID
    grid = training_plan(p, "solo", lambda2=lambda2, sigma2=sigma2)
    return as_runs(p, grid + [Run(p, s) for specs in primary_runs(p).values() for s in specs])


def sample_features(run: Run, n: int, seed: int = 0) -> list[int]:
    """``n`` alive features of ``run`` (fired on the co-occurrence range), uniform without replacement,
    seeded by (seed, run name) so each run gets its own independent sample. Prefix-stable: the
    sample of n is the first n of one seeded permutation, so a larger n reuses cached scores."""
    counts = np.asarray(ensure_reconstruction(run, progress=False).firing_counts)
    alive = np.flatnonzero(counts > 0)
    rng = np.random.default_rng([seed, *run.name.encode()])
    take = min(n, len(alive))
    return sorted(int(f) for f in rng.permutation(alive)[:take])


def fuzz_table(profile: str | Profile, runs: list[Any], n_features: int, judge: Any, seed: int = 0,
               progress: bool = True) -> pd.DataFrame:
    """Per run: ``n_fuzz`` scored features, ``fuzz_mean``, ``fuzz_sem`` and the differences vs ``solo``
    of :func:`add_fuzz_deltas`. Empty (NaN) when ``judge`` is None."""
    rows = []
    for run in as_runs(profile, runs):
        row = {"run": run.name, "n_fuzz": 0, "fuzz_mean": math.nan, "fuzz_sem": math.nan}
        if judge is not None and n_features > 0:
            feats = sample_features(run, n_features, seed)
            df = ensure_scores(run, feats, judge, seed=seed, show_progress=progress)
            v = pd.to_numeric(df["fuzz_score"], errors="coerce").dropna().to_numpy(np.float64)
            if len(v):
                row.update(n_fuzz=len(v), fuzz_mean=float(v.mean()),
                           fuzz_sem=float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan)
        rows.append(row)
    return add_fuzz_deltas(pd.DataFrame(rows))


def add_fuzz_deltas(out: pd.DataFrame) -> pd.DataFrame:
    """Add ``dfuzz``, ``dfuzz_se`` and ``dfuzz_pct`` vs the ``solo`` row to a per-run fuzz table with
    ``fuzz_mean`` and ``fuzz_sem`` (see :data:`paperlib.report.second_model.GEMMA_COLUMNS`)."""
    out = out.copy()
    base = out.loc[out["run"] == "solo", ["fuzz_mean", "fuzz_sem"]]
    b, b_se = (float(base.iloc[0, 0]), float(base.iloc[0, 1])) if len(base) else (math.nan, math.nan)
    out["dfuzz"] = out["fuzz_mean"] - b
    out["dfuzz_se"] = np.sqrt(out["fuzz_sem"] ** 2 + b_se ** 2)
    out.loc[out["run"] == "solo", "dfuzz_se"] = math.nan
    out["dfuzz_pct"] = 100.0 * (out["fuzz_mean"] - b) / abs(b) if b and np.isfinite(b) else math.nan
    return out
