"""Reconstruction stage: L2, FVE, L0, dead latents and firing-rate statistics of a run."""

from __future__ import annotations

from typing import Any

import numpy as np

from paperlib.config.io import read_json, write_json
from paperlib.config.profiles import Profile
from paperlib.data.activations import load_cache
from paperlib.metrics.reconstruction import RATE_LOG10_EDGES, firing_summary, reconstruction_metrics
from paperlib.stages import cache
from paperlib.stages.calibrate import thresholds
from paperlib.stages.cooccur import load_firing
from paperlib.stages.run import Run, range_settings
from paperlib.stages.train import load_run


def _settings(p: Profile) -> dict:
    return {"data": range_settings(p, "cooccurrence"), "recon_tokens": p.recon_tokens, "batch_size": p.batch_size}


cache.declare("reconstruction", __name__, _settings, deps=("calibration", "cooccurrence"))


def ensure_reconstruction(run: Run, *, progress: bool = True) -> dict[str, Any]:
    """Reconstruction metrics of ``run`` on the co-occurrence range (its first ``profile.recon_tokens``
    tokens when set) with the calibrated per-token thresholds: ``mse`` (L2 in the normalised space),
    ``fve``, ``l0``, ``n_dead``, firing-rate quantiles, norm statistics
    (:class:`paperlib.metrics.reconstruction.ReconMetrics`); the ``batchtopk`` sub-dict has the same
    metrics with the training-time BatchTopK encoder over its ``n_tokens_evaluated`` tokens. Dead
    latents, firing counts and rate statistics always cover the whole co-occurrence range
    (``firing_n_tokens``), taken from the co-occurrence firing matrix when a subset is used.
    """
    d = cache.stage_dir("reconstruction", run)
    if cache.is_fresh("reconstruction", run):
        return read_json(d / "result.json")
    p = run.profile
    theta = thresholds(run, progress=progress)
    sae = load_run(run)
    full = load_cache(p).acts("cooccurrence")
    n_tok = len(full) if p.recon_tokens is None else min(len(full), int(p.recon_tokens))
    acts = full[:n_tok]
    m = reconstruction_metrics(sae, acts, theta, batch_size=p.batch_size, progress=progress)
    b = reconstruction_metrics(sae, acts, None, batch_size=p.batch_size, progress=progress)
    arrays = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in m.to_dict(with_arrays=True).items()}
    res = {"run": run.name, "range": "cooccurrence", "n_tokens_evaluated": n_tok, **arrays,
           "rate_hist_edges": RATE_LOG10_EDGES.tolist(), "batchtopk": {**b.to_dict(), "n_tokens_evaluated": n_tok},
           "firing_n_tokens": n_tok}
    if n_tok < len(full):  # firing statistics over the whole range
        fired = load_firing(run)
        counts = np.asarray(fired.sum(axis=0), dtype=np.int64).ravel()
        fs = firing_summary(counts, fired.shape[0])
        res.update(n_dead=fs["n_dead"], dead_frac=fs["dead_frac"],
                   firing_rate_quantiles=fs["firing_rate_quantiles"], firing_counts=counts.tolist(),
                   rate_hist_counts=fs["rate_hist_counts"].tolist(), firing_n_tokens=int(fired.shape[0]))
    d = cache.begin("reconstruction", run)
    write_json(d / "result.json", res)
    cache.commit("reconstruction", run)
    return res
