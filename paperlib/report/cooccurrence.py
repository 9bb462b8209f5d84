"""App. C: the sign and shape of the φ distribution, with alive pairs and the pairs of dead or rare latents apart.

A pair counts as alive when both latents fire on, and stay silent on, at least
:data:`paperlib.stages.cooccur.ALIVE_MIN_COUNT` co-occurrence tokens. The remaining pairs (a dead, rare or
always-on latent on either side) have |φ| near 0 or undefined (counted as 0): their number changes with the dead
latents, and they can move mean |φ| over all pairs without any change among the latents that fire.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from paperlib.metrics.cooccurrence import WithinStats

__all__ = ["PHI_SHAPE_COLUMNS", "phi_shape_table"]

PHI_SHAPE_COLUMNS = ["run", "pairs", "n_pairs", "share_of_pairs", "mean_abs_phi", "share_of_sum_abs_phi",
                     "frac_negative", "median_phi", "mean_phi", "min_phi", "tail_max_phi", "frac_phi_gt_0.1",
                     "frac_phi_gt_0.3", "n_dead", "n_always_on"]


def _tail(c: WithinStats, x: float) -> float:
    e, h = c.hist_edges, c.hist_counts
    return float(h[e[:-1] >= x - 1e-12].sum() / c.n_pairs) if c.n_pairs else float("nan")


def _row(run: str, pairs: str, c: WithinStats, total: WithinStats) -> dict:
    return {"run": run, "pairs": pairs, "n_pairs": c.n_pairs, "share_of_pairs": c.n_pairs / total.n_pairs,
            "mean_abs_phi": c.mean_abs_phi, "share_of_sum_abs_phi": c.sum_abs / total.sum_abs if total.sum_abs else
            float("nan"), "frac_negative": c.frac_negative, "median_phi": c.median_phi, "mean_phi": c.mean_phi,
            "min_phi": c.min_phi, "tail_max_phi": c.max_phi, "frac_phi_gt_0.1": _tail(c, 0.1),
            "frac_phi_gt_0.3": _tail(c, 0.3), "n_dead": c.n_dead, "n_always_on": c.n_always_on}


def _rest_row(run: str, c: WithinStats, alive: WithinStats) -> dict:
    """The pairs of all pairs that are not alive pairs: count, mean |φ| and negative share by difference."""
    n = c.n_pairs - alive.n_pairs
    nan = float("nan")
    return {"run": run, "pairs": "dead or rare latent", "n_pairs": n, "share_of_pairs": n / c.n_pairs,
            "mean_abs_phi": (c.sum_abs - alive.sum_abs) / n if n else nan,
            "share_of_sum_abs_phi": (c.sum_abs - alive.sum_abs) / c.sum_abs if c.sum_abs else nan,
            "frac_negative": (c.n_negative - alive.n_negative) / n if n else nan,
            "median_phi": nan, "mean_phi": nan, "min_phi": nan, "tail_max_phi": nan, "frac_phi_gt_0.1": nan,
            "frac_phi_gt_0.3": nan, "n_dead": c.n_dead, "n_always_on": c.n_always_on}


def phi_shape_table(results: Mapping[str, tuple[WithinStats, WithinStats]]) -> pd.DataFrame:
    """App. C table: for each run (name → (all-pairs, alive-pairs) statistics) three rows: all pairs, alive
    pairs, and the pairs with a dead or rare latent (all minus alive; their shape statistics are not defined by
    difference and are NaN)."""
    rows = []
    for run, (c, alive) in results.items():
        rows += [_row(run, "all", c, c), _row(run, "alive", alive, c), _rest_row(run, c, alive)]
    out = pd.DataFrame(rows, columns=PHI_SHAPE_COLUMNS)
    return out.astype({"n_pairs": np.int64})
