"""Paper figures from the cached evaluation results of the stages in :mod:`paperlib.stages` (seaborn).

Every figure is drawn in one style (:data:`STYLE`: seaborn ``whitegrid``, ``paper`` context) and with one
colour per arm (:data:`ARM_COLORS`, from seaborn's colour-blind palette): the same colour means the same arm in
every figure, and in difference panels a bar takes the colour of the arm that has more. Joint configurations
of different λ₂ are shades of the joint colour. Each function takes a ``caption`` (use
:func:`figure_caption`: profile, model and layer) drawn as the figure's title. Each returns a
:class:`matplotlib.figure.Figure`; notebooks save them with ``paperlib.report.notebook.save_figure``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from paperlib.config.profiles import Profile, get_profile
from paperlib.metrics.cooccurrence import WithinStats
from paperlib.sae.arms import parse_run
from paperlib.stages.recon import ReconstructionResult

__all__ = ["ARM_COLORS", "STYLE", "add_caption", "appb_firing_rates", "arm_color", "arm_of",
           "calibration_firing_rates", "fig1a_phi_density", "fig1b_grid_scatter", "fig2_autointerp", "figure_caption",
           "gemma_grid_figure", "ground_truth_figure", "lambda_shades", "rebin", "styled"]

_CB = sns.color_palette("colorblind")
ARM_COLORS: dict[str, tuple[float, float, float]] = {
    "solo": _CB[0], "joint": _CB[1], "randcritic": _CB[2], "ortho": _CB[4], "control": _CB[7],
}
"""One colour per arm, the same in every figure (seaborn colour-blind palette)."""
OTHER_COLOR = (0.25, 0.25, 0.25)
STYLE: dict[str, Any] = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.15),
                         "figure.dpi": 110, "legend.frameon": True}
"""Matplotlib rc settings every figure of this module is drawn with."""


def styled(fn: Callable[..., plt.Figure]) -> Callable[..., plt.Figure]:
    """Decorator: draw the figure under :data:`STYLE` (every figure of the package uses it)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> plt.Figure:
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def arm_of(run: str) -> str:
    """The arm of a run name (``joint-l0.3-s1-seed2`` → ``joint``); unknown names map to themselves."""
    try:
        return parse_run(run).arm
    except (ValueError, TypeError):
        return str(run).split("-")[0]


def arm_color(run_or_arm: str) -> tuple[float, float, float]:
    """The colour of a run's arm (:data:`ARM_COLORS`), grey for anything else."""
    return ARM_COLORS.get(run_or_arm, ARM_COLORS.get(arm_of(run_or_arm), OTHER_COLOR))


def lambda_shades(lambdas: list[float]) -> dict[float, tuple[float, float, float]]:
    """Shades of the joint arm's colour for joint configurations: light for the smallest λ₂, dark for the
    largest (a single λ₂ gets the joint colour itself)."""
    lams = sorted(set(lambdas))
    if len(lams) <= 1:
        return {lam: ARM_COLORS["joint"] for lam in lams}
    base = np.asarray(ARM_COLORS["joint"])
    pal = sns.blend_palette([tuple(0.45 * base + 0.55), tuple(base), tuple(0.5 * base)], n_colors=len(lams))
    return {lam: tuple(c) for lam, c in zip(lams, pal, strict=True)}


def figure_caption(profile: str | Profile, extra: str = "") -> str:
    """``profile P · model M · layer L`` (+ ``extra``): what every figure names in its title."""
    p = get_profile(profile)
    s = f"profile {p.name} · model {p.data.model} · layer {p.data.layer} (resid_pre)"
    return f"{s} · {extra}" if extra else s


def add_caption(fig: plt.Figure, caption: str | None, what: str) -> None:
    """Title the figure with ``what`` and, on a second line, ``caption`` (:func:`figure_caption`)."""
    fig.suptitle(f"{what}\n{caption}" if caption else what, fontsize=10)


@styled
def calibration_firing_rates(calibrations: Mapping[str, Any], *, caption: str | None = None) -> plt.Figure:
    """BatchTopK vs threshold firing rate per feature (log-log, identity line), one panel per run
    (``calibrations``: run name → :class:`paperlib.metrics.calibration.Calibration`); dead features omitted."""
    names = list(calibrations)
    ncol = min(4, len(names))
    nrow = int(np.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 3.1 * nrow + 0.6), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        c = calibrations[name]
        alive = ~c.dead
        bt, th = c.batchtopk_rate[alive], c.threshold_rate[alive]
        floor = 0.5 / max(c.n_tokens, 1)
        ax.scatter(np.maximum(bt, floor), np.maximum(th, floor), s=3, alpha=0.5, color=arm_color(name),
                   rasterized=True)
        ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="identity")
        ax.set(xscale="log", yscale="log", xlabel="BatchTopK firing rate", ylabel="threshold firing rate")
        ax.set_title(f"{name} (dead {int(c.dead.sum())})", fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    add_caption(fig, caption, "EER thresholds: firing rate per latent, threshold vs BatchTopK")
    fig.tight_layout()
    return fig


def rebin(edges: np.ndarray, counts: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge ``factor`` adjacent histogram bins (drops a ragged tail)."""
    edges, counts = np.asarray(edges, dtype=float), np.asarray(counts, dtype=float)
    m = (len(counts) // factor) * factor
    return edges[: m + 1: factor], counts[:m].reshape(-1, factor).sum(1)


def _density(edges: np.ndarray, counts: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e, c = rebin(edges, counts, factor)
    width = np.diff(e)
    return e, 0.5 * (e[1:] + e[:-1]), c / (max(c.sum(), 1.0) * width)


def _diff_bars(ax: plt.Axes, mid: np.ndarray, width: np.ndarray, diff: np.ndarray, pos: str, neg: str) -> None:
    ax.bar(mid, diff, width=width, color=[arm_color(pos) if d >= 0 else arm_color(neg) for d in diff],
           linewidth=0)
    ax.axhline(0, color="k", lw=0.6)


@styled
def fig1a_phi_density(solo: WithinStats, joint: WithinStats, *, joint_label: str = "joint",
                      rebin_factor: int = 50, xlim: tuple[float, float] = (-0.1, 0.3),
                      tail_start: float = 0.1, pairs: str = "all pairs", solo_alive: WithinStats | None = None,
                      joint_alive: WithinStats | None = None, caption: str | None = None) -> plt.Figure:
    """Fig. 1a: within-SAE φ of solo and ``joint_label`` (inputs: ``CooccurrenceResult.all`` / ``.alive``).

    With ``solo_alive`` / ``joint_alive`` (the alive-pair statistics of the same runs), the φ densities and
    their difference are drawn on **alive pairs**, and the pairs that involve a dead or inactive latent
    (all − alive: φ = 0 for a dead latent) are counted in their own panel, so extra dead latents in one arm
    do not put a spike at φ ≈ 0 into the difference. Without them, ``solo`` / ``joint`` are drawn as given
    (``pairs`` names them). The difference panel has a zoom on the positive tail φ ≥ ``tail_start`` with its
    own y scale below it, and another panel shows the tail's pair counts on a log scale.
    """
    if not np.array_equal(solo.hist_edges, joint.hist_edges):
        raise ValueError("solo and joint histograms use different bins")
    split = solo_alive is not None and joint_alive is not None
    if (solo_alive is None) != (joint_alive is None):
        raise ValueError("give both solo_alive and joint_alive, or neither")
    s_main, j_main = (solo_alive, joint_alive) if split else (solo, joint)
    which = "alive pairs" if split else pairs
    e, mid, ds = _density(s_main.hist_edges, s_main.hist_counts, rebin_factor)
    _, _, dj = _density(j_main.hist_edges, j_main.hist_counts, rebin_factor)
    cs, cj = arm_color("solo"), arm_color(joint_label)
    ncol = 4 if split else 3
    fig = plt.figure(figsize=(4.3 * ncol, 4.4))
    gs = fig.add_gridspec(2, ncol, height_ratios=[2, 1])
    axes = [fig.add_subplot(gs[:, 0]), fig.add_subplot(gs[0, 1])] + [fig.add_subplot(gs[:, i]) for i in range(2, ncol)]
    ax = axes[0]
    ax.plot(mid, ds, color=cs, label=f"solo (mean |φ| {s_main.mean_abs_phi:.4g})")
    ax.plot(mid, dj, color=cj, label=f"{joint_label} (mean |φ| {j_main.mean_abs_phi:.4g})")
    ax.set(yscale="log", xlim=xlim, xlabel="φ", ylabel="density", title=f"φ density ({which})")
    ax.legend(fontsize=7.5)
    for a in axes[:2]:
        a.xaxis.set_major_locator(plt.MaxNLocator(5))
    ax = axes[1]
    diff = dj - ds
    _diff_bars(ax, mid, np.diff(e), diff, joint_label, "solo")
    ax.set(xlim=xlim, ylabel="density difference", title=f"{joint_label} − solo ({which})")
    tail = mid >= tail_start
    zoom = fig.add_subplot(gs[1, 1])
    _diff_bars(zoom, mid[tail], np.diff(e)[tail], diff[tail], joint_label, "solo")
    zoom.set(xlim=(tail_start, min(1.0, max(xlim[1], tail_start + 0.2))), xlabel="φ",
             ylabel="tail, own scale")
    zoom.tick_params(labelsize=7)
    ax = axes[2]
    for co, lab, c in ((s_main, "solo", cs), (j_main, joint_label, cj)):
        et, ct = rebin(co.hist_edges, co.hist_counts, rebin_factor)
        keep = et[:-1] >= tail_start - 1e-12
        ax.step(et[:-1][keep], np.where(ct[keep] > 0, ct[keep], np.nan), where="post", color=c,
                label=f"{lab}: {int(ct[keep].sum()):,} pairs")
    ax.set(yscale="log", xlabel="φ", ylabel="pairs per bin", title=f"positive tail φ ≥ {tail_start:g} ({which})")
    ax.legend(fontsize=7.5)
    if split:
        ax = axes[3]
        rows = []
        for lab, a, al in (("solo", solo, solo_alive), (joint_label, joint, joint_alive)):
            rows.append((lab, al.n_pairs, a.n_pairs - al.n_pairs, a.n_features - al.n_features, a.n_dead))
        x = np.arange(2)
        for i, (lab, n_alive_pairs, n_other, n_inactive, n_dead) in enumerate(rows):
            ax.bar(x - 0.2 + 0.4 * i, [n_alive_pairs, max(n_other, 0)], width=0.38, color=arm_color(lab),
                   label=f"{lab}: {n_dead} dead, {n_inactive} not alive")
            for xi, v in zip(x, (n_alive_pairs, n_other), strict=True):
                ax.annotate(f"{v:,}", (xi - 0.2 + 0.4 * i, max(v, 1)), ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylim(0.8, 10 ** (np.log10(max(max(r[1], r[2]) for r in rows) + 1) + 1.3))
        ax.set_xticks(x, ["alive pairs", "pairs with a dead or\ninactive latent"])
        ax.set(ylabel="pairs", title="pairs by kind (dead latents: φ = 0)")
        ax.legend(fontsize=7, loc="upper left")
    add_caption(fig, caption, f"Fig. 1a: within-SAE φ, solo vs {joint_label}")
    fig.tight_layout()
    return fig


@styled
def fig1b_grid_scatter(table: pd.DataFrame, *, selected: str | None = None,
                       noise_floor: Mapping[str, Any] | None = None, paper: str | None = None,
                       caption: str | None = None) -> plt.Figure:
    """Fig. 1b (exploratory, one seed per configuration): Δ mean |φ| (%) vs ΔL2 (%) of every seed-0
    configuration against solo seed 0 (colour = λ₂ as shades of the joint colour, marker = σ²), the OrtSAE
    and random-critic arms in their arm colours, the other seeds of the paper's configuration against their
    paired solo seed (small dots), the selected configuration circled, and the solo seeds' mean with the 95%
    prediction band of a new solo seed (grey): a configuration inside the band is indistinguishable from
    run-to-run noise."""
    fig, ax = plt.subplots(figsize=(6.8, 5.2))
    seed0 = table[table["seed"] == 0]
    joint = seed0[seed0["arm"] == "joint"]
    markers = dict(zip(sorted(joint["sigma2"].unique()), "os^vPX", strict=False))
    shades = lambda_shades(list(joint["lambda2"].unique())) if len(joint) else {}
    if noise_floor and "pi_low_pct" in noise_floor:
        k = len(noise_floor.get("runs", []))
        ax.axhspan(noise_floor["pi_low_pct"], noise_floor["pi_high_pct"], color="0.88", zorder=0,
                   label=f"95% prediction band, new solo seed (K={k})")
        ax.axhline(noise_floor["seed_mean_pct"], color="0.5", lw=0.8, ls="--", label="solo seed mean")
    for _, r in joint.iterrows():
        ax.scatter(r["delta_l2_pct"], r["delta_phi_pct"], marker=markers[r["sigma2"]], color=shades[r["lambda2"]],
                   s=55, edgecolor="k", linewidth=0.4, zorder=3)
    for lam, c in shades.items():
        ax.scatter([], [], color=c, marker="o", edgecolor="k", linewidth=0.4, label=f"joint λ₂={lam:g}")
    for s2, m in markers.items():
        ax.scatter([], [], color="0.6", marker=m, label=f"σ²={s2:g}")
    for arm, (m, lab) in {"ortho": ("D", "OrtSAE"), "randcritic": ("X", "random critic")}.items():
        sub = seed0[seed0["arm"] == arm]
        if len(sub):
            ax.scatter(sub["delta_l2_pct"], sub["delta_phi_pct"], color=arm_color(arm), marker=m, s=60,
                       edgecolor="k", linewidth=0.4, label=lab, zorder=3)
    if paper is not None:
        more = table[(table["seed"] > 0) & table["run"].str.startswith(paper + "-seed")]
        if len(more):
            ax.scatter(more["delta_l2_pct"], more["delta_phi_pct"], color=arm_color("joint"), marker=".", s=40,
                       zorder=3, label=f"{paper}, seeds 1–{int(more['seed'].max())} vs paired solo")
    ax.scatter([0], [0], color=arm_color("solo"), marker="*", s=120, edgecolor="k", linewidth=0.4,
               label="solo (seed 0)", zorder=4)
    if selected is not None and selected in set(seed0["run"]):
        r = seed0[seed0["run"] == selected].iloc[0]
        ax.scatter(r["delta_l2_pct"], r["delta_phi_pct"], s=260, facecolors="none", edgecolors="k",
                   linewidths=1.6, label=f"selected: {selected}", zorder=5)
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.set(xlabel="ΔL2 vs solo (%)", ylabel="Δ mean |φ| vs solo (%)")
    ax.legend(fontsize=6.5, loc="best", ncol=2)
    add_caption(fig, caption, "Fig. 1b: exploratory grid (one seed per configuration)")
    fig.tight_layout()
    return fig


@styled
def appb_firing_rates(recons: Mapping[str, ReconstructionResult], *, caption: str | None = None) -> plt.Figure:
    """App. B: log10 firing rate per latent (thresholded encoder, whole co-occurrence range) per run, with the
    dead latents (no firing on those tokens, rate 0) in their own bar on the left: they are what the appendix's
    claim is about. Bins of 0.1 decade, drawn only over the decades that hold latents (the lowest visible rate is
    1 / tokens). Inputs are :func:`~paperlib.stages.recon.ensure_reconstruction` results."""
    fig, (axd, ax) = plt.subplots(1, 2, figsize=(8.2, 4.0), sharey=True, gridspec_kw={"width_ratios": [1, 6]})
    names = list(recons)
    logs = {}
    for name, r in recons.items():
        counts = np.asarray(r.firing_counts, dtype=np.float64)
        logs[name] = np.log10(counts[counts > 0] / max(r.firing_n_tokens, 1))
    allv = np.concatenate([v for v in logs.values() if len(v)]) if any(len(v) for v in logs.values()) else np.zeros(1)
    lo, hi = np.floor(allv.min() * 10) / 10, min(0.0, np.ceil(allv.max() * 10) / 10 + 1e-9)
    edges = np.round(np.arange(lo, max(hi, lo + 0.1) + 0.1 - 1e-9, 0.1), 10)
    w = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        r = recons[name]
        c = arm_color(name)
        h, _ = np.histogram(logs[name], edges)
        ax.stairs(h, edges, color=c, lw=1.4,
                label=f"{name}: dead {r.n_dead} of {len(r.firing_counts)} on {r.firing_n_tokens:,} tokens, "
                      f"L0 {r.thresholded.l0:.1f}")
        axd.bar(i * w - 0.4 + w / 2, r.n_dead, width=w * 0.9, color=c)
        axd.annotate(str(r.n_dead), (i * w - 0.4 + w / 2, r.n_dead), ha="center", va="bottom", fontsize=8)
    axd.set_xticks([0], ["dead\n(rate 0)"])
    axd.set_xlim(-0.6, 0.6)
    axd.set_ylabel("latents")
    ax.set(xlabel="log10 firing rate (alive latents, 0.1-decade bins)", xlim=(edges[0], edges[-1]))
    ax.legend(fontsize=7.5, loc="upper left")
    add_caption(fig, caption, "App. B: firing-rate distribution per latent, dead latents included")
    fig.tight_layout()
    return fig


@styled
def fig2_autointerp(pairs: pd.DataFrame, summary: Mapping[str, Any], *, solo_label: str = "solo",
                    joint_label: str = "joint", bin_width: float = 1 / 3, caption: str | None = None,
                    columns: tuple[str, str] = ("fuzz_solo", "fuzz_joint"),
                    value_range: tuple[float, float] = (-1.0, 1.0), what: str = "fuzz score (2·acc − 1)",
                    chance: float | None = None) -> plt.Figure:
    """Fig. 2: per-feature scores of matched feature pairs (``columns`` of ``pairs``: solo, joint) — both
    distributions in the arms' colours (a dotted line at ``chance`` when given), their density difference (a
    bar in the colour of the arm with more mass), and Δ mean (joint − solo) with its 95% CI and the paired
    test's p from ``summary`` (``delta``, ``ci_low``, ``ci_high``, ``p``, ``n_pairs``). Bins of ``bin_width``
    centred on its multiples over ``value_range``."""
    cs_, cj_ = columns
    ok = pairs[cs_].notna() & pairs[cj_].notna()
    a, b = pairs.loc[ok, cs_].to_numpy(float), pairs.loc[ok, cj_].to_numpy(float)
    half = bin_width / 2
    lo_v, hi_v = (round(v / bin_width) * bin_width for v in value_range)
    edges = np.arange(lo_v - half, hi_v + half + 1e-9, bin_width)
    da = np.histogram(a, edges, density=True)[0] if len(a) else np.zeros(len(edges) - 1)
    db = np.histogram(b, edges, density=True)[0] if len(b) else np.zeros(len(edges) - 1)
    centres = (edges[:-1] + edges[1:]) / 2
    cs, cj = arm_color(solo_label), arm_color(joint_label)
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.9), gridspec_kw={"width_ratios": [3, 3, 2]})
    ax[0].bar(centres - bin_width * 0.2, da, width=bin_width * 0.4, color=cs,
              label=f"{solo_label} (mean {a.mean():.3f})" if len(a) else solo_label)
    ax[0].bar(centres + bin_width * 0.2, db, width=bin_width * 0.4, color=cj,
              label=f"{joint_label} (mean {b.mean():.3f})" if len(b) else joint_label)
    if chance is not None:
        ax[0].axvline(chance, color="k", ls=":", lw=1, label=f"chance ({chance:g})")
    ax[0].set(xlabel=what, ylabel="density", title=f"{what}, {len(a)} matched pairs")
    ax[0].legend(fontsize=7.5)
    _diff_bars(ax[1], centres, np.full(len(centres), bin_width * 0.9), db - da, joint_label, solo_label)
    ax[1].set(xlabel=what, ylabel="density difference", title=f"{joint_label} − {solo_label}")
    d, lo, hi, p = (float(summary.get(k, np.nan)) for k in ("delta", "ci_low", "ci_high", "p"))
    n = summary.get("n_pairs", len(a))
    axd = ax[2]
    if np.isfinite(d):
        err = np.array([[d - lo], [hi - d]]) if np.isfinite(lo) and np.isfinite(hi) else None
        axd.errorbar([d], [0], xerr=err, fmt="o", color=cj if d >= 0 else cs, ecolor="k", capsize=5, ms=8)
        span = max(abs(lo) if np.isfinite(lo) else 0, abs(hi) if np.isfinite(hi) else 0, abs(d), 0.05) * 1.3
        axd.set_xlim(-span, span)
    else:
        axd.text(0.5, 0.5, "no paired scores", ha="center", va="center", transform=axd.transAxes)
    axd.axvline(0, color="k", lw=0.8)
    axd.set_yticks([])
    axd.set(xlabel=f"Δ mean, {joint_label} − {solo_label}",
            title=f"Δ = {d:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]\npaired t-test p = {p:.2g}, n = {n}")
    add_caption(fig, caption, f"Fig. 2: auto-interp {what}, {solo_label} vs {joint_label}")
    fig.tight_layout()
    return fig


@styled
def gemma_grid_figure(table: pd.DataFrame, *, caption: str | None = None) -> plt.Figure:
    """§6 figure on Fig. 1b's axes (x = ΔL2 vs solo %, y = Δ mean |φ| vs solo %; joint configurations as shades
    of the joint colour by λ₂, marker = σ²), and, when the table has fuzz scores, the absolute Δ mean fuzz vs solo
    per configuration with ± 1 standard error (the relative ΔFuzz % explodes near a 0 mean). ``table``:
    :func:`paperlib.report.second_model.gemma_table`."""
    joint = table[table["run"] != "solo"].reset_index(drop=True)
    vals = joint["dfuzz"].to_numpy(np.float64) if "dfuzz" in joint else np.full(len(joint), np.nan)
    has_fuzz = bool(np.isfinite(vals).any())
    fig, axes = plt.subplots(1, 2 if has_fuzz else 1, figsize=(11.5 if has_fuzz else 6.5, 4.5), squeeze=False)
    a = axes[0, 0]
    shades = lambda_shades(list(joint["lambda2"].dropna().unique())) if joint["lambda2"].notna().any() else {}
    markers = dict(zip(sorted(joint["sigma2"].dropna().unique()), "os^Dv<>", strict=False))
    colours = [shades.get(r["lambda2"], arm_color(str(r["run"]))) for _, r in joint.iterrows()]
    for (_, r), c in zip(joint.iterrows(), colours, strict=True):
        a.scatter(r["dl2_pct"], r["dphi_pct"], color=c, marker=markers.get(r["sigma2"], "o"), s=60, edgecolor="k",
                  linewidth=0.4, label=f"{r['run']}", zorder=3)
    a.scatter([0], [0], color=arm_color("solo"), marker="*", s=120, edgecolor="k", linewidth=0.4, label="solo",
              zorder=4)
    a.axhline(0, color="k", lw=0.5)
    a.axvline(0, color="k", lw=0.5)
    a.set(xlabel="ΔL2 vs solo (%)", ylabel="Δ mean |φ| vs solo (%)", title="grid on Fig. 1b's axes (seed 0)")
    a.legend(fontsize=7, loc="best")
    if has_fuzz:
        _fuzz_panel(axes[0, 1], table, joint, vals, colours)
    what = " and fuzz change" if has_fuzz else ""
    add_caption(fig, caption, f"§6: second model, co-occurrence vs reconstruction{what}")
    fig.tight_layout()
    return fig


def _fuzz_panel(b: plt.Axes, table: pd.DataFrame, joint: pd.DataFrame, vals: np.ndarray, colours: list) -> None:
    """Absolute Δ mean fuzz vs solo per configuration, ± 1 standard error (:func:`gemma_grid_figure`)."""
    labels = [f"λ₂={r.lambda2:g}\nσ²={r.sigma2:g}" if pd.notna(r.lambda2) else str(r.run) for r in joint.itertuples()]
    err = joint["dfuzz_se"].to_numpy(np.float64)
    b.bar(range(len(vals)), np.nan_to_num(vals), yerr=np.where(np.isfinite(err), err, 0.0), capsize=3,
          color=colours, edgecolor="k", linewidth=0.4)
    b.axhline(0, color="k", lw=0.8)
    b.set_ylabel("Δ mean fuzz vs solo (2·acc−1, ± 1 s.e.)")
    for i, (v, n) in enumerate(zip(vals, joint["n_fuzz"], strict=True)):
        if np.isfinite(v):
            b.annotate(f"n={int(n)}", (i, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=7)
    solo = table[table["run"] == "solo"]
    if len(solo):
        b.text(0.01, 0.99, f"solo: mean fuzz {solo['fuzz_mean'].iloc[0]:.3f} on n={int(solo['n_fuzz'].iloc[0])}"
               " features", transform=b.transAxes, ha="left", va="top", fontsize=7)
    b.set_xticks(range(len(labels)), labels, fontsize=7)
    b.set_title("fuzz score change per configuration")


@styled
def ground_truth_figure(df: pd.DataFrame, corr: pd.DataFrame | None = None, *, phi_stat: str = "mean_abs_phi_all",
                        metrics: tuple[str, ...] = ("act_f1", "act_recall", "multi_share", "mmcs_true"),
                        caption: str | None = None) -> plt.Figure:
    """Synthetic ground truth: one panel per atomicity metric against the |φ| statistic ``phi_stat``, one
    point per trained SAE coloured by arm (joint λ₂ in shades of the joint colour), the SAEs of one data seed
    joined by a thin line. With ``corr`` (:func:`paperlib.stages.ground_truth.correlations`) each panel's
    title gives the Spearman ρ across all SAEs with its bootstrap CI. ``df``:
    :func:`paperlib.stages.ground_truth.run_benchmark`."""
    missing = [c for c in (phi_stat, *metrics, "arm", "label", "seed") if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing}")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.7), squeeze=False)
    lams = sorted(df.loc[df["arm"] == "joint", "lambda2"].dropna().unique()) if "lambda2" in df else []
    shades = lambda_shades(list(lams))
    for ax, m in zip(axes[0], metrics, strict=True):
        for _, g in df.groupby("seed"):
            g = g.sort_values(phi_stat)
            ax.plot(g[phi_stat], g[m], color="0.8", linewidth=0.6, zorder=1)
        for label, g in df.groupby("label", sort=False):
            arm = g["arm"].iloc[0]
            c = shades[g["lambda2"].iloc[0]] if arm == "joint" and lams else arm_color(arm)
            ax.scatter(g[phi_stat], g[m], color=c, s=30, edgecolor="k", linewidth=0.3, label=label, zorder=3)
        title = m
        if corr is not None and len(corr):
            r = corr[(corr["scope"] == "all SAEs") & (corr["phi_stat"] == phi_stat) & (corr["metric"] == m)]
            if len(r):
                r = r.iloc[0]
                title = f"{m}: ρ = {r['rho']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        ax.set(xlabel=phi_stat, ylabel=m, title=title, ylim=(0.0, 1.02))  # every metric is a fraction: the
        ax.title.set_fontsize(8)  # full [0, 1] axis, so a difference of a few points looks like what it is
    axes[0][0].legend(fontsize=6)
    add_caption(fig, caption, "Synthetic ground truth: latent co-firing vs atomicity, one point per SAE")
    fig.tight_layout()
    return fig
