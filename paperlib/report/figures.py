"""Paper figures from the cached evaluation results of the stages in :mod:`paperlib.stages` (matplotlib).

Each function returns a :class:`matplotlib.figure.Figure`; notebooks save them with
``paperlib.report.notebook.save_figure``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paperlib.metrics.cooccurrence import WithinStats
from paperlib.metrics.reconstruction import RATE_LOG10_EDGES
from paperlib.stages.recon import ReconstructionResult

__all__ = ["appb_firing_rates", "calibration_firing_rates", "fig1a_phi_density", "fig1b_grid_scatter",
           "rebin"]


def calibration_firing_rates(calibrations: Mapping[str, Any]) -> plt.Figure:
    """BatchTopK vs threshold firing rate per feature (log-log, identity line), one panel per run
    (``calibrations``: run name → :class:`paperlib.metrics.calibration.Calibration`); dead features omitted."""
    names = list(calibrations)
    ncol = min(4, len(names))
    nrow = int(np.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        c = calibrations[name]
        alive = ~c.dead
        bt, th = c.batchtopk_rate[alive], c.threshold_rate[alive]
        floor = 0.5 / max(c.n_tokens, 1)
        ax.scatter(np.maximum(bt, floor), np.maximum(th, floor), s=3, alpha=0.5)
        lo = floor
        ax.plot([lo, 1], [lo, 1], "k--", lw=0.8, label="identity")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name} (dead {int(c.dead.sum())})", fontsize=9)
        ax.set_xlabel("BatchTopK firing rate")
        ax.set_ylabel("threshold firing rate")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def rebin(edges: np.ndarray, counts: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge ``factor`` adjacent histogram bins (drops a ragged tail)."""
    edges, counts = np.asarray(edges, dtype=float), np.asarray(counts, dtype=float)
    m = (len(counts) // factor) * factor
    return edges[: m + 1: factor], counts[:m].reshape(-1, factor).sum(1)


def _density(co: WithinStats, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e, c = rebin(co.hist_edges, co.hist_counts, factor)
    width = np.diff(e)
    return e, 0.5 * (e[1:] + e[:-1]), c / (c.sum() * width)


def fig1a_phi_density(solo: WithinStats, joint: WithinStats, *, joint_label: str = "joint",
                      rebin_factor: int = 50, xlim: tuple[float, float] = (-0.1, 0.3),
                      tail_start: float = 0.1, pairs: str = "all pairs") -> plt.Figure:
    """Fig. 1a: within-SAE φ densities (solo, joint), their difference joint − solo, and the positive
    tail (pair counts for φ ≥ ``tail_start``, log scale). Inputs are :func:`ensure_cooccurrence` dicts
    (same fixed bins for every run)."""
    if not np.array_equal(solo.hist_edges, joint.hist_edges):
        raise ValueError("solo and joint histograms use different bins")
    e, mid, ds = _density(solo, rebin_factor)
    _, _, dj = _density(joint, rebin_factor)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(mid, ds, label=f"solo (mean|φ|={solo.mean_abs_phi:.4g})")
    ax.plot(mid, dj, label=f"{joint_label} (mean|φ|={joint.mean_abs_phi:.4g})")
    ax.set_yscale("log")
    ax.set_xlim(*xlim)
    ax.set_xlabel("φ")
    ax.set_ylabel("density")
    ax.set_title(f"within-SAE φ distribution ({pairs})")
    ax.legend(fontsize=8)
    ax = axes[1]
    diff = dj - ds
    ax.bar(mid, diff, width=np.diff(e), color=np.where(diff >= 0, "tab:red", "tab:blue"))
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlim(*xlim)
    ax.set_xlabel("φ")
    ax.set_ylabel("density difference")
    ax.set_title(f"{joint_label} − solo")
    ax = axes[2]
    for co, lab in ((solo, "solo"), (joint, joint_label)):
        et, ct = rebin(co.hist_edges, co.hist_counts, rebin_factor)
        keep = et[:-1] >= tail_start - 1e-12
        ax.step(et[:-1][keep], ct[keep], where="post", label=lab)
    ax.set_yscale("log")
    ax.set_xlabel("φ")
    ax.set_ylabel("pairs per bin")
    ax.set_title(f"positive tail (φ ≥ {tail_start:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig1b_grid_scatter(table: pd.DataFrame, *, selected: str | None = None,
                       noise_floor: Mapping[str, Any] | None = None, paper: str | None = None) -> plt.Figure:
    """Fig. 1b (exploratory, one seed per configuration): Δ mean |φ| (%) vs ΔL2 (%) of every seed-0
    configuration against solo seed 0 (colour = λ₂, marker = σ²), the OrtSAE arm, the other seeds of the
    paper's configuration against their paired solo seed (small dots), the selected configuration circled,
    and the solo seeds' mean with the 95% prediction band of a new solo seed (grey): a configuration inside
    the band is indistinguishable from run-to-run noise."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    seed0 = table[table["seed"] == 0]
    joint = seed0[seed0["arm"] == "joint"]
    markers = dict(zip(sorted(joint["sigma2"].unique()), "os^vPX", strict=False))
    lams = sorted(joint["lambda2"].unique())
    cmap = plt.get_cmap("viridis")
    colors = {lam: cmap(i / max(1, len(lams) - 1)) for i, lam in enumerate(lams)}
    if noise_floor and "pi_low_pct" in noise_floor:
        k = len(noise_floor.get("runs", []))
        ax.axhspan(noise_floor["pi_low_pct"], noise_floor["pi_high_pct"], color="0.85", zorder=0,
                   label=f"95% prediction band, new solo seed (K={k})")
        ax.axhline(noise_floor["seed_mean_pct"], color="0.5", lw=0.8, ls="--", label="solo seed mean")
    for _, r in joint.iterrows():
        ax.scatter(r["delta_l2_pct"], r["delta_phi_pct"], marker=markers[r["sigma2"]],
                   color=colors[r["lambda2"]], s=50, zorder=3)
    for lam in lams:
        ax.scatter([], [], color=colors[lam], marker="o", label=f"λ₂={lam:g}")
    for s2, m in markers.items():
        ax.scatter([], [], color="0.4", marker=m, label=f"σ²={s2:g}")
    other = {"ortho": ("tab:red", "D", "OrtSAE"), "randcritic": ("tab:orange", "x", "random critic")}
    for arm, (c, m, lab) in other.items():
        sub = seed0[seed0["arm"] == arm]
        if len(sub):
            ax.scatter(sub["delta_l2_pct"], sub["delta_phi_pct"], color=c, marker=m, s=60, label=lab, zorder=3)
    if paper is not None:
        more = table[(table["seed"] > 0) & table["run"].str.startswith(paper + "-seed")]
        if len(more):
            ax.scatter(more["delta_l2_pct"], more["delta_phi_pct"], color="k", marker=".", s=30, zorder=3,
                       label=f"{paper}, seeds 1–{int(more['seed'].max())} vs paired solo")
    ax.scatter([0], [0], color="k", marker="*", s=90, label="solo (seed 0)", zorder=4)
    if selected is not None and selected in set(seed0["run"]):
        r = seed0[seed0["run"] == selected].iloc[0]
        ax.scatter(r["delta_l2_pct"], r["delta_phi_pct"], s=260, facecolors="none", edgecolors="tab:red",
                   linewidths=1.8, label=f"selected: {selected}", zorder=5)
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("ΔL2 vs solo (%)")
    ax.set_ylabel("Δ mean |φ| vs solo (%)")
    ax.set_title("Exploratory grid (one seed per configuration)", fontsize=10)
    ax.legend(fontsize=6.5, loc="best", ncol=2)
    fig.tight_layout()
    return fig


def appb_firing_rates(recons: Mapping[str, ReconstructionResult]) -> plt.Figure:
    """App. B: distribution of log10 firing rates (thresholded encoder, co-occurrence range) per run;
    inputs are :func:`~paperlib.stages.recon.ensure_reconstruction` results (dead latents in the legend)."""
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    for name, r in recons.items():
        ax.step(RATE_LOG10_EDGES[:-1], r.rate_hist_counts, where="post",
                label=f"{name} (dead {r.n_dead} on {r.firing_n_tokens:,} tokens, L0 {r.thresholded.l0:.1f})")
    ax.set_xlabel("log10 firing rate")
    ax.set_ylabel("latents per bin")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
