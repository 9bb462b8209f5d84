"""Training curves and final training metrics of trained runs (notebook 01)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paperlib.report.figures import add_caption, arm_color, styled
from paperlib.stages.run import Run
from paperlib.stages.train import read_metrics, read_run_config

ARM_STYLE = {"solo": dict(lw=1.4), "control": dict(lw=1.4, ls="--"), "ortho": dict(lw=0.8, ls="-."),
             "randcritic": dict(lw=0.8, ls=":")}
"""Line styles per arm in the training curves (other arms: thin solid lines)."""


def metrics_frame(run: Run) -> pd.DataFrame:
    """Per-step metrics of one run as a DataFrame."""
    return pd.DataFrame(read_metrics(run))


def final_metrics(runs: list[Run], last: int = 10) -> pd.DataFrame:
    """One row per run: means over the last ``last`` steps of loss, MSE, L0, dead, penalty, …"""
    rows = []
    for run in runs:
        df = metrics_frame(run)
        spec = run.spec
        tail = df.tail(last)
        cfg = read_run_config(run)
        row = dict(run=run.name, arm=spec.arm, **spec.hyper(), seed=spec.seed,
                   steps=int(df["step"].max()), tokens=int(df["tokens"].max()))
        for col in ("mse", "l0", "dead", "aux", "penalty", "meta_err"):
            row[col] = float(tail[col].mean()) if col in tail else np.nan
        if "meta_mse" in df:
            row["meta_mse"] = float(df["meta_mse"].dropna().tail(3).mean())
        row["tok_per_s"] = float(df["tok_per_s"].median())
        row["git"] = cfg.get("git", "")
        rows.append(row)
    return pd.DataFrame(rows)


@styled
def training_curves(runs: list[Run], smooth: int = 5, *, caption: str | None = None) -> plt.Figure:
    """Figure: MSE, dead latents, penalty and meta reconstruction error vs tokens, one line per run in its arm's
    colour (solo seed 0 thick)."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.4))
    panels = [("mse", "L2 (normalised MSE)"), ("dead", "dead latents"),
              ("penalty", "penalty (mean p_i / ortho)"), ("meta_err", "meta recon. error ‖W−Ŵ‖²")]
    for run in runs:
        df = metrics_frame(run)
        spec = run.spec
        style = {"lw": 0.8, "ls": "-", **ARM_STYLE.get(spec.arm, {}), "color": arm_color(spec.arm)}
        if spec.arm == "solo" and spec.seed == 0:
            style["lw"] = 2.0
        for ax, (col, title) in zip(axes, panels, strict=True):
            if col in df and df[col].notna().any():
                y = df[col].rolling(smooth, min_periods=1).mean()
                ax.plot(df["tokens"], y, label=spec.label, **style)
            ax.set_title(title)
            ax.set_xlabel("training tokens")
    axes[0].set_yscale("log")
    axes[-1].legend(fontsize=7, ncol=2)
    add_caption(fig, caption, "Training curves (rolling mean over steps)")
    fig.tight_layout()
    return fig
