"""Calibration stage: per-latent equal-error-rate thresholds of a run on the calibration token range."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from paperlib.config.profiles import Profile
from paperlib.data.activations import load_cache
from paperlib.metrics.calibration import Calibration, calibrate_sae
from paperlib.stages import cache
from paperlib.stages.pool import ensure_each
from paperlib.stages.run import Run, acts_label, range_settings
from paperlib.stages.train import load_run

EXACT_CALIBRATION_MAX_VALUES = 50_000_000
"""``calibration_mode="auto"``: exact EER thresholds while calibration tokens × k stays below this."""


def calibration_mode(profile: Profile) -> str:
    """The profile's calibration mode with ``auto`` resolved to ``exact`` or ``hist``."""
    if profile.eval.calibration_mode != "auto":
        return profile.eval.calibration_mode
    n_values = int(profile.data.tokens.calibration) * profile.sae.k
    return "exact" if n_values <= EXACT_CALIBRATION_MAX_VALUES else "hist"


def _settings(p: Profile) -> dict:
    return {"data": range_settings(p, "calibration"), "batch_size": p.sae.batch_size, "mode": calibration_mode(p)}


cache.declare("calibration", __name__, _settings, outputs=("thresholds.safetensors", "calibration.json"))


def ensure_calibration(run: Run, *, progress: bool = True) -> Calibration:
    """EER thresholds of ``run`` on the calibration range (computed once per key, by one process at a time)."""
    return cache.ensure("calibration", run, Calibration.load, lambda: _calibrate(run, progress))


def _calibrate(run: Run, progress: bool) -> Calibration:
    sae = load_run(run)
    acts = load_cache(run.profile).acts("calibration")
    cal = calibrate_sae(sae, acts, batch_size=run.profile.sae.batch_size, mode=calibration_mode(run.profile),
                        progress=progress, what=acts_label(run.profile, "calibration"))
    cal.meta.update({"run": run.name, "range": "calibration"})
    d = cache.begin("calibration", run)
    cal.save(d)
    cache.commit("calibration", run)
    return cal


def thresholds(run: Run, *, progress: bool = True) -> torch.Tensor:
    """The calibrated thresholds of ``run`` as a float32 tensor [n]."""
    cal = ensure_calibration(run, progress=progress)
    return torch.as_tensor(np.asarray(cal.thresholds), dtype=torch.float32)


def ensure_calibrations(runs: Iterable[Run], *, n_workers: int | None = None,
                        progress: bool = True) -> dict[str, Calibration]:
    """:func:`ensure_calibration` of every run, the missing ones computed in ``n_workers`` processes
    (:func:`paperlib.stages.pool.ensure_each`); results are the same either way."""
    return ensure_each("calibration", ensure_calibration, list(runs), n_workers=n_workers, desc="calibrating",
                       progress=progress)
