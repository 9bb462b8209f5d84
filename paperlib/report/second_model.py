"""The §6 table and figure of the second-model experiment (docs/method.md §3.6; paper §6).

Built from :func:`paperlib.stages.select.grid_table` and :func:`paperlib.stages.second_model.fuzz_table`.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["GEMMA_COLUMNS", "gemma_figure", "gemma_table"]

GEMMA_COLUMNS = ["run", "lambda2", "sigma2", "mean_abs_phi", "dphi_pct", "delta_phi_alive_pct", "delta_excess_pct",
                 "frac_phi_gt_tail", "l2", "dl2_pct", "l0", "ce_overhead_pct", "dead_latents", "converged",
                 "welch_p", "n_fuzz", "fuzz_mean", "fuzz_sem", "dfuzz",
                 "dfuzz_se", "dfuzz_pct"]
"""Columns of :func:`gemma_table`. ``dfuzz`` = fuzz_mean − solo's (absolute, 2·acc−1 units), ``dfuzz_se``
its standard error (independent feature samples); ``dfuzz_pct`` is the paper's relative ΔFuzz %,
meaningless when solo's mean is near 0."""

FUZZ_COLUMNS = ("n_fuzz", "fuzz_mean", "fuzz_sem", "dfuzz", "dfuzz_se", "dfuzz_pct")
"""The columns :func:`gemma_table` takes from :func:`paperlib.stages.second_model.fuzz_table`."""


def gemma_table(grid: pd.DataFrame, fuzz: pd.DataFrame | None = None) -> pd.DataFrame:
    """§6 table: the grid table with short column names, joined with the fuzz table (without one, or
    with an empty one, ``n_fuzz`` is 0 and the fuzz columns NaN)."""
    t = grid.rename(columns={"delta_phi_pct": "dphi_pct", "delta_l2_pct": "dl2_pct"}).copy()
    if fuzz is not None and len(fuzz):
        t = t.merge(fuzz[["run", *FUZZ_COLUMNS]], on="run", how="left")
    else:
        for c in FUZZ_COLUMNS:
            t[c] = 0 if c == "n_fuzz" else math.nan
    return t[GEMMA_COLUMNS].reset_index(drop=True)


def gemma_figure(table: pd.DataFrame, title: str = "") -> plt.Figure:
    """Left: ΔL2 % vs Δ mean |φ| % per configuration (λ₂ colour, σ² marker); right: absolute Δ mean fuzz
    vs solo per configuration with ± 1 standard error (the relative ΔFuzz % explodes near a 0 mean)."""
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
