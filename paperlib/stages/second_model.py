"""Generalisation to a second model family (paper §6): the λ₂ × σ² grid on Gemma.

The paper runs Gemma 2 9B (layer 23, n = 65,536, k = 100, λ₂ ∈ {0.1, 0.3, 1.0} × σ² ∈ {1, 3}); the
offline default is Gemma 3 270M (profile ``gemma-3-270m``). Per configuration vs solo: mean |φ| and
Δ%, L2 and Δ%, CE overhead (:func:`paperlib.stages.evaluate.grid_table`), and mean fuzz score on a seeded
random sample of alive features per run (:func:`paperlib.stages.interp.ensure_scores`) with Δfuzz vs solo,
absolute and the paper's relative %.

Outputs of the ``gemma-3-270m`` profile belong to the default run and go to the committed
``figures/`` and ``tables/`` (:func:`output_dirs`); other profiles write under their artifacts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paperlib.config import paths
from paperlib.config.profiles import Profile, get_profile
from paperlib.stages.interp import ensure_scores
from paperlib.stages.recon import ensure_reconstruction
from paperlib.stages.run import Run, as_runs
from paperlib.stages.select import training_plan

__all__ = [
    "GEMMA_COLUMNS",
    "SMOKE_GRID",
    "add_fuzz_deltas",
    "fuzz_table",
    "gemma_figure",
    "gemma_plan",
    "gemma_table",
    "output_dirs",
    "sample_features",
]

SMOKE_GRID = ("0.3", "1.0")
"""(λ₂, σ²) used on the ``smoke`` profile (a single configuration keeps it fast)."""

GEMMA_COLUMNS = ["run", "lambda2", "sigma2", "mean_abs_phi", "dphi_pct", "l2", "dl2_pct", "l0",
                 "ce_overhead_pct", "dead_latents", "welch_p", "n_fuzz", "fuzz_mean", "fuzz_sem", "dfuzz",
                 "dfuzz_se", "dfuzz_pct"]
"""``dfuzz`` = fuzz_mean − solo's (absolute, 2·acc−1 units), ``dfuzz_se`` its standard error (independent
feature samples); ``dfuzz_pct`` is the paper's relative ΔFuzz %, meaningless when solo's mean is near 0."""


def output_dirs(profile: str | Profile) -> tuple[Path, Path]:
    """(figures, tables): the default run's committed dirs for ``gemma-3-270m``, else the profile's."""
    p = get_profile(profile)
    return paths.second_model_output_dirs(p)


def gemma_plan(profile: str | Profile, lambda2: Any = "0.1,0.3,1.0", sigma2: Any = "1.0,3.0") -> list[Run]:
    """solo + the λ₂ × σ² joint grid (on ``smoke``: the single configuration :data:`SMOKE_GRID`)."""
    p = get_profile(profile)
    if p.name == "smoke":
        lambda2, sigma2 = SMOKE_GRID
    return training_plan(p, "solo", lambda2=lambda2, sigma2=sigma2)


def sample_features(run: Run, n: int, seed: int = 0) -> list[int]:
    """``n`` alive features of ``run`` (fired on the co-occurrence range), uniform without replacement,
    seeded by (seed, run name) so each run gets its own independent sample. Prefix-stable: the
    sample of n is the first n of one seeded permutation, so a larger n reuses cached scores."""

    counts = np.asarray(ensure_reconstruction(run, progress=False)["firing_counts"])
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
            v = pd.to_numeric(df.get("fuzz_score"), errors="coerce").dropna().to_numpy(np.float64)
            if len(v):
                row.update(n_fuzz=len(v), fuzz_mean=float(v.mean()),
                           fuzz_sem=float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan)
        rows.append(row)
    return add_fuzz_deltas(pd.DataFrame(rows))


def add_fuzz_deltas(out: pd.DataFrame) -> pd.DataFrame:
    """Add ``dfuzz``, ``dfuzz_se`` and ``dfuzz_pct`` vs the ``solo`` row to a per-run fuzz table with
    ``fuzz_mean`` and ``fuzz_sem`` (see :data:`GEMMA_COLUMNS`)."""
    out = out.copy()
    base = out.loc[out["run"] == "solo", ["fuzz_mean", "fuzz_sem"]]
    b, b_se = (float(base.iloc[0, 0]), float(base.iloc[0, 1])) if len(base) else (math.nan, math.nan)
    out["dfuzz"] = out["fuzz_mean"] - b
    out["dfuzz_se"] = np.sqrt(out["fuzz_sem"] ** 2 + b_se ** 2)
    out.loc[out["run"] == "solo", "dfuzz_se"] = math.nan
    out["dfuzz_pct"] = 100.0 * (out["fuzz_mean"] - b) / abs(b) if b and np.isfinite(b) else math.nan
    return out


FUZZ_COLUMNS = ("n_fuzz", "fuzz_mean", "fuzz_sem", "dfuzz", "dfuzz_se", "dfuzz_pct")


def gemma_table(grid: pd.DataFrame, fuzz: pd.DataFrame | None = None) -> pd.DataFrame:
    """§6 table from :func:`paperlib.stages.evaluate.grid_table` (and :func:`fuzz_table`) with short names."""
    t = grid.rename(columns={"delta_phi_pct": "dphi_pct", "delta_l2_pct": "dl2_pct"}).copy()
    if fuzz is not None and len(fuzz):
        t = t.merge(fuzz[[c for c in ("run", *FUZZ_COLUMNS) if c in fuzz]], on="run", how="left")
    for c in FUZZ_COLUMNS:
        if c not in t:
            t[c] = 0 if c == "n_fuzz" else math.nan
    return t[GEMMA_COLUMNS].reset_index(drop=True)


def gemma_figure(table: pd.DataFrame, title: str = ""):
    """Left: ΔL2 % vs Δ mean |φ| % per configuration (λ₂ colour, σ² marker); right: absolute Δ mean fuzz
    vs solo per configuration with ± 1 standard error (the relative ΔFuzz % explodes near a 0 mean)."""
    import matplotlib.pyplot as plt

    joint = table[table["run"] != "solo"].reset_index(drop=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    l2s = sorted(joint["lambda2"].dropna().unique())
    cmap = plt.get_cmap("viridis", max(len(l2s), 2))
    markers = dict(zip(sorted(joint["sigma2"].dropna().unique()), "os^Dv<>", strict=False))
    for _, r in joint.iterrows():
        c = cmap(l2s.index(r["lambda2"])) if r["lambda2"] in l2s else "grey"
        a.scatter(r["dphi_pct"], r["dl2_pct"], color=c, marker=markers.get(r["sigma2"], "o"), s=60,
                  edgecolor="k", label=f"λ₂={r['lambda2']:g}, σ²={r['sigma2']:g}")
    a.axhline(0, color="grey", lw=0.8)
    a.axvline(0, color="grey", lw=0.8)
    a.set_xlabel("Δ mean |φ| vs solo (%)")
    a.set_ylabel("ΔL2 vs solo (%)")
    a.set_title("reconstruction cost vs co-occurrence change")
    if len(joint):
        a.legend(fontsize=7, loc="best")
    labels = [f"λ₂={r.lambda2:g}\nσ²={r.sigma2:g}" for r in joint.itertuples()]
    vals = joint["dfuzz"].to_numpy(np.float64)
    if np.isfinite(vals).any():
        err = joint["dfuzz_se"].to_numpy(np.float64)
        b.bar(range(len(vals)), np.nan_to_num(vals), yerr=np.where(np.isfinite(err), err, 0.0), capsize=3,
              color=["tab:green" if v > 0 else "tab:red" for v in vals])
        b.axhline(0, color="grey", lw=0.8)
        b.set_ylabel("Δ mean fuzz vs solo (2·acc−1, ± 1 s.e.)")
        n_solo = table.loc[table["run"] == "solo", "n_fuzz"]
        for i, (v, n) in enumerate(zip(vals, joint["n_fuzz"], strict=True)):
            if np.isfinite(v):
                b.annotate(f"n={int(n)}", (i, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=7)
        if len(n_solo):
            solo_mean = table.loc[table["run"] == "solo", "fuzz_mean"].iloc[0]
            b.text(0.01, 0.99, f"solo: mean fuzz {solo_mean:.3f} on n={int(n_solo.iloc[0])} features",
                   transform=b.transAxes, ha="left", va="top", fontsize=7)
    else:
        b.text(0.5, 0.5, "no fuzz scores (judge disabled or auto-interp unavailable)",
               ha="center", va="center", transform=b.transAxes, fontsize=8)
    b.set_xticks(range(len(labels)), labels, fontsize=7)
    b.set_title("fuzz score change per configuration")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
