"""Training curves and final training metrics of trained runs (notebook 01)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from paperlib.config.profiles import Profile
from paperlib.sae.arms import RunSpec, parse_run
from paperlib.sae.trainer import read_metrics, read_run_config


def metrics_frame(profile: str | Profile, name: str) -> pd.DataFrame:
    """Per-step metrics of one run as a DataFrame."""
    return pd.DataFrame(read_metrics(profile, name))


def final_metrics(profile: str | Profile, names: list[str], last: int = 10) -> pd.DataFrame:
    """One row per run: means over the last ``last`` steps of loss, MSE, L0, dead, penalty, …"""
    rows = []
    for name in names:
        df = metrics_frame(profile, name)
        spec = parse_run(name)
        tail = df.tail(last)
        cfg = read_run_config(profile, name)
        row = dict(run=name, arm=spec.arm, lambda2=spec.lambda2 if spec.arm == "joint" else np.nan,
                   sigma2=spec.sigma2 if spec.arm == "joint" else np.nan,
                   gamma=spec.gamma if spec.arm == "ortho" else np.nan, seed=spec.seed,
                   steps=int(df["step"].max()), tokens=int(df["tokens"].max()))
        for col in ("mse", "l0", "dead", "aux", "penalty", "meta_err"):
            row[col] = float(tail[col].mean()) if col in tail else np.nan
        if "meta_mse" in df:
            row["meta_mse"] = float(df["meta_mse"].dropna().tail(3).mean())
        row["tok_per_s"] = float(df["tok_per_s"].median())
        row["git"] = cfg.get("git", "")
        rows.append(row)
    return pd.DataFrame(rows)


def training_curves(profile: str | Profile, names: list[str], smooth: int = 5):
    """Figure: MSE, dead latents, penalty and meta reconstruction error vs tokens, one line per run."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    panels = [("mse", "L2 (normalised MSE)"), ("dead", "dead latents"),
              ("penalty", "penalty (mean p_i / ortho)"), ("meta_err", "meta recon. error ‖W−Ŵ‖²")]
    for name in names:
        df = metrics_frame(profile, name)
        spec = parse_run(name)
        style = dict(lw=1.4 if spec.arm in ("solo", "control") else 0.8,
                     ls="--" if spec.arm == "control" else ("-." if spec.arm == "ortho" else "-"),
                     color="black" if spec.arm == "solo" and spec.seed == 0 else None)
        for ax, (col, title) in zip(axes, panels, strict=True):
            if col in df and df[col].notna().any():
                y = df[col].rolling(smooth, min_periods=1).mean()
                ax.plot(df["tokens"], y, label=RunSpec.label.fget(spec), **style)
            ax.set_title(title)
            ax.set_xlabel("training tokens")
    axes[0].set_yscale("log")
    axes[-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
