"""Figures of the primary comparison: paired seed differences per statistic, and what the critic does.

- :func:`paired_seed_figure`: per statistic and comparison, the paired difference in % of the baseline
  mean with its 95% CI over seeds (the seed is the unit), the individual seeds' differences, and ±the minimum
  detectable effect (``mde_pct``: 80% power, α = 0.05), so an interval covering 0 shows what it could have found.
- :func:`critic_rows_figure`: quantiles over decoder rows of the per-row penalty term
  p_i = exp(−‖W_dec[i] − Ŵ[i]‖²/σ²) during training, for a trained and a random critic: a penalty
  that discriminates between rows has a wide band; one that is the same for every row is a constant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paperlib.report.figures import ARM_COLORS, add_caption, arm_color, styled
from paperlib.sae.arms import ROW_QUANTILES

COLORS = {"joint vs solo": ARM_COLORS["joint"], "randcritic vs solo": ARM_COLORS["randcritic"],
          "joint vs randcritic": ARM_COLORS["control"]}
"""One colour per comparison: each treatment's arm colour against solo (figures.ARM_COLORS)."""


@styled
def paired_seed_figure(table: pd.DataFrame, per_seed: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
                       title: str = "", *, caption: str | None = None) -> plt.Figure:
    """Δ (% of the baseline mean) with its 95% CI over paired seeds, one row per statistic; dots are the
    single seeds' differences when ``per_seed[comparison][statistic]`` is given; bars at ±``mde_pct`` (when the
    table has it) mark the minimum detectable effect."""
    stats = list(dict.fromkeys(table["statistic"]))
    comps = list(dict.fromkeys(table["comparison"]))
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.75 * len(stats)))
    step = 0.8 / max(1, len(comps))
    mde_labelled = False
    for j, comp in enumerate(comps):
        sub = table[table["comparison"] == comp].set_index("statistic")
        for i, stat in enumerate(stats):
            if stat not in sub.index:
                continue
            r = sub.loc[stat]
            y = i - 0.4 + step * (j + 0.5)
            lo, hi = r.get("ci_low_pct", np.nan), r.get("ci_high_pct", np.nan)
            ax.errorbar([r.get("delta_pct", np.nan)], [y], xerr=[[r.get("delta_pct", np.nan) - lo],
                                                                  [hi - r.get("delta_pct", np.nan)]],
                        fmt="o", color=COLORS.get(comp, None), capsize=3, label=comp if i == 0 else None)
            mde = float(r.get("mde_pct", np.nan))
            if np.isfinite(mde):  # every interval, null or not, shows what it could have detected
                ax.scatter([-mde, mde], [y, y], marker="|", s=90, color=COLORS.get(comp, None), alpha=0.6,
                           label="±MDE (80% power)" if not mde_labelled else None)
                mde_labelled = True
            if per_seed and stat in per_seed.get(comp, {}):
                d = np.asarray(per_seed[comp][stat], dtype=float)
                ax.scatter(d, np.full(d.size, y), s=10, color=COLORS.get(comp, None), alpha=0.5, zorder=1)
    ax.axvline(0, color="k", lw=0.8)
    labels = [table[table["statistic"] == s]["label"].iloc[0] for s in stats]
    ax.set_yticks(range(len(stats)), labels, fontsize=8)
    ax.invert_yaxis()
    k = int(table["K"].max()) if len(table) else 0
    ax.set_xlabel(f"paired difference, % of the baseline mean (95% CI over {k} seeds; dots: single seeds; "
                  "bars: ±minimum detectable effect)")
    ax.legend(fontsize=8, loc="best")
    add_caption(fig, caption, title or "Primary comparison: treatment − baseline, paired by seed")
    fig.tight_layout()
    return fig


@styled
def critic_rows_figure(records: Mapping[str, Sequence[Mapping[str, float]]], title: str = "", *,
                       caption: str | None = None) -> plt.Figure:
    """Quantiles over rows of the per-row penalty p_i against training steps, one panel per run
    (``records``: run label → its training records)."""
    keys = [f"p_row_q{round(100 * a):02d}" for a in ROW_QUANTILES]
    fig, axes = plt.subplots(1, len(records), figsize=(5 * max(1, len(records)), 3.6), squeeze=False, sharey=True)
    for ax, (label, recs) in zip(axes[0], records.items(), strict=True):
        rows = [r for r in recs if keys[0] in r]
        if not rows:
            ax.set_title(f"{label}: no penalty logged")
            continue
        step = np.array([r["step"] for r in rows])
        q = np.array([[r[k] for k in keys] for r in rows])
        c = arm_color(str(label).split(" ")[0])
        ax.fill_between(step, q[:, 0], q[:, -1], alpha=0.2, color=c, label="5–95% of rows")
        ax.fill_between(step, q[:, 1], q[:, -2], alpha=0.35, color=c, label="25–75% of rows")
        ax.plot(step, q[:, 2], lw=1.2, color=c, label="median row")
        scale = np.array([r.get("penalty_scale", 1.0) for r in rows])
        if (scale < 1).any():
            ax.plot(step, scale, "k--", lw=0.8, label="penalty weight / λ₂")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("primary step")
    axes[0][0].set_ylabel("p_i = exp(−‖W_dec[i] − Ŵ[i]‖² / σ²)")
    axes[0][0].legend(fontsize=7)
    add_caption(fig, caption, title or "Per-row penalty over training (does the critic discriminate between rows?)")
    fig.tight_layout()
    return fig
