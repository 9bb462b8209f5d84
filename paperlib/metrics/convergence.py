"""Is a training run converged? Pure functions of its per-step training records.

A run is called converged here when (docs/method.md §1):

- its reconstruction error has flattened: the relative change of the smoothed training L2 between
  80% and 100% of the steps is below ``max_l2_change`` (3%);
- few latents are dead: fewer than ``max_dead_frac`` (1%) of the latents never fire on the
  evaluation tokens (counted by the caller on a stated token range);
- for arms with a trained meta SAE, the meta SAE's error on the decoder rows has reached a plateau:
  its relative change over the last 20% of the meta steps is below ``max_meta_change`` (5%).

Smoothing: the mean over a window of ``window_frac`` of the steps ending at the point (training-batch
L2 is noisy). Every number is returned, not only the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_L2_CHANGE = 0.03
MAX_DEAD_FRAC = 0.01
MAX_META_CHANGE = 0.05


def smoothed_at(values: Sequence[float], frac: float, window_frac: float = 0.05) -> float:
    """Mean of ``values`` over the window of ``max(1, round(window_frac·len))`` entries ending at
    position ``round(frac·len)`` (``frac`` in (0, 1])."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    end = max(1, round(frac * v.size))
    w = max(1, round(window_frac * v.size))
    return float(v[max(0, end - w):end].mean())


def relative_change(values: Sequence[float], start: float = 0.8, window_frac: float = 0.05) -> float:
    """|smoothed(1.0) − smoothed(start)| / smoothed(1.0): how much a curve still moved at the end."""
    a, b = smoothed_at(values, start, window_frac), smoothed_at(values, 1.0, window_frac)
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return math.nan
    return abs(b - a) / abs(b)


def convergence(records: Sequence[dict[str, Any]], n_latents: int, n_dead_eval: int, *,
                trains_meta: bool = False, max_l2_change: float = MAX_L2_CHANGE,
                max_dead_frac: float = MAX_DEAD_FRAC, max_meta_change: float = MAX_META_CHANGE) -> dict[str, Any]:
    """Convergence diagnostics of one run from its training records (``metrics.jsonl`` lines) and the
    number of latents dead on the evaluation tokens. ``ok`` is True when every criterion holds."""
    if n_latents < 1 or not 0 <= n_dead_eval <= n_latents:
        raise ValueError(f"need 0 <= n_dead_eval ({n_dead_eval}) <= n_latents ({n_latents}), n_latents >= 1")
    mse = [r["mse"] for r in records if "mse" in r]
    if len(mse) < 5:
        raise ValueError(f"too few training records ({len(mse)}) to judge convergence")
    out: dict[str, Any] = {
        "steps": len(mse), "l2_final": smoothed_at(mse, 1.0), "l2_change_last20": relative_change(mse),
        "dead_eval": int(n_dead_eval), "dead_frac": n_dead_eval / n_latents,
        "dead_train_final": int(records[-1].get("dead", -1)),
    }
    out["l2_ok"] = bool(out["l2_change_last20"] < max_l2_change)
    out["dead_ok"] = bool(out["dead_frac"] < max_dead_frac)
    if trains_meta:
        meta = [r["meta_mse"] for r in records if r.get("meta_mse") is not None]
        err = [r["meta_err"] for r in records if r.get("meta_err") is not None]
        out["meta_err_final"] = smoothed_at(err, 1.0) if err else math.nan
        out["meta_change_last20"] = relative_change(meta) if len(meta) >= 5 else math.nan
        out["meta_ok"] = bool(out["meta_change_last20"] < max_meta_change)
    else:
        out.update(meta_err_final=math.nan, meta_change_last20=math.nan, meta_ok=True)
    out["ok"] = out["l2_ok"] and out["dead_ok"] and out["meta_ok"]
    return out
