"""CE stage: next-token loss with a run's SAE spliced into the residual stream, on the CE token range.

``ce_reference`` (per profile): the clean and zero-ablated losses. ``ce`` (per run): the loss with the
per-token-thresholded SAE spliced in, and optionally with the training-time BatchTopK encoder.

Concurrent ``ce`` jobs (two ``python -m paperlib ce`` processes of one profile) are safe: each result is computed
under an exclusive lock beside its stage folder (:func:`~paperlib.config.io.exclusive`, the lock of the activation
cache and of training runs); a job that finds the lock taken waits for it, then reads the other job's result
instead of recomputing it (and never deletes it half-written).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from paperlib.config.io import read_json, write_json
from paperlib.config.profiles import Profile, get_profile
from paperlib.data.activations import load_cache
from paperlib.data.lm import load_lm
from paperlib.metrics.ce import ce_losses, loss_recovered, overhead_pct, sae_splice, zero_splice
from paperlib.stages import cache
from paperlib.stages.calibrate import thresholds
from paperlib.stages.run import Run, as_runs, range_settings
from paperlib.stages.train import load_run


def _ref_settings(p: Profile) -> dict:
    return {"data": range_settings(p, "ce"), "lm_batch_size": p.data.lm_batch_size}


cache.declare("ce_reference", __name__, _ref_settings, per_run=False)
cache.declare("ce", __name__, _ref_settings, deps=("calibration", "ce_reference"))


@dataclass(frozen=True)
class RunCE:
    """Next-token CE (nats) on the CE range with one run's SAE spliced in (see :func:`ensure_ce`)."""

    run: str
    ce_clean: float
    ce_zero: float
    ce_spliced: float
    overhead_pct: float
    recovered: float
    n_predictions: int
    ce_batchtopk: float | None = None
    overhead_batchtopk_pct: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunCE:
        return cls(**{k: v for k, v in d.items() if k != "range"})


def _reference(p: Profile, lm: Any, progress: bool) -> dict[str, Any]:
    return cache.ensure("ce_reference", None, lambda d: read_json(d / "result.json"),
                        lambda: _compute_reference(p, lm, progress), profile=p)


def _compute_reference(p: Profile, lm: Any, progress: bool) -> dict[str, Any]:
    ids = load_cache(p).token_ids("ce")
    ce = ce_losses(lm, ids, p.data.layer, {"clean": None, "zero": zero_splice}, batch_size=p.data.lm_batch_size,
                   progress=progress)
    ref = {"ce_clean": ce["clean"].ce, "ce_zero": ce["zero"].ce, "n_predictions": ce["clean"].n_tokens, "range": "ce"}
    d = cache.begin("ce_reference", profile=p)
    write_json(d / "result.json", ref)
    cache.commit("ce_reference", profile=p)
    return ref


def ensure_ce_reference(profile: str | Profile, *, lm: Any = None, progress: bool = True) -> dict[str, Any]:
    """The profile's clean and zero-ablated CE on the CE range (computed once, under the profile's CE lock; the LM
    is loaded only when the result is missing and ``lm`` is None)."""
    p = get_profile(profile)
    if cache.is_fresh("ce_reference", profile=p):
        return read_json(cache.stage_dir("ce_reference", profile=p) / "result.json")
    return _reference(p, lm if lm is not None else load_lm(p.data.model, dtype=p.data.lm_dtype), progress)


def _cached(run: Run, batchtopk: bool) -> RunCE | None:
    if not cache.is_fresh("ce", run):
        return None
    res = RunCE.from_json(read_json(cache.stage_dir("ce", run) / "result.json"))
    return res if (not batchtopk or res.ce_batchtopk is not None) else None


def ensure_ce(profile: str | Profile, runs: Iterable[Any], *, batchtopk_for: Iterable[Any] = (),
              progress: bool = True) -> dict[str, RunCE]:
    """CE losses (nats) on the CE range for each run; the LM is loaded once, only when something is missing.

    Per run: ``ce_spliced`` (per-token thresholds), ``overhead_pct`` vs clean, ``recovered`` (fraction
    of the zero-ablation loss recovered); for runs in ``batchtopk_for`` also ``ce_batchtopk`` /
    ``overhead_batchtopk_pct``; ``ce_clean`` and ``ce_zero`` from the per-profile reference.
    """
    runs = as_runs(profile, runs)
    bt = {r.name for r in as_runs(profile, batchtopk_for)}
    results = {r.name: _cached(r, r.name in bt) for r in runs}
    todo = [r for r in runs if results[r.name] is None]
    p = runs[0].profile if runs else None
    if p is None or (not todo and cache.is_fresh("ce_reference", profile=p)):
        return {n: v for n, v in results.items() if v is not None}
    lm = load_lm(p.data.model, dtype=p.data.lm_dtype)
    ref = _reference(p, lm, progress)
    ids = load_cache(p).token_ids("ce")
    for run in todo:  # one run at a time: each result is stored as soon as it exists
        with cache.waiting_lock(cache.lock_path("ce", run), f"the CE of run {run}"):
            results[run.name] = _cached(run, run.name in bt) or _run_ce(p, lm, ids, ref, run, run.name in bt,
                                                                         progress)
    return {r.name: results[r.name] for r in runs}


def _run_ce(p: Profile, lm: Any, ids: Any, ref: dict[str, Any], run: Run, batchtopk: bool, progress: bool) -> RunCE:
    """Compute and store one run's CE (the caller holds the run's CE lock)."""
    splices: dict[str, Any] = {"thr": sae_splice(load_run(run), thresholds(run, progress=progress))}
    if batchtopk:
        splices["bt"] = sae_splice(load_run(run), None)
    ce = ce_losses(lm, ids, p.data.layer, splices, batch_size=p.data.lm_batch_size, progress=progress)
    spliced, clean = ce["thr"].ce, ref["ce_clean"]
    zero = ref["ce_zero"]
    res = RunCE(run=run.name, ce_clean=clean, ce_zero=zero, ce_spliced=spliced,
                overhead_pct=overhead_pct(spliced, clean), recovered=loss_recovered(spliced, clean, zero),
                n_predictions=ce["thr"].n_tokens)
    if "bt" in splices:
        res = replace(res, ce_batchtopk=ce["bt"].ce, overhead_batchtopk_pct=overhead_pct(ce["bt"].ce, clean))
    d = cache.begin("ce", run)
    write_json(d / "result.json", res.to_json())
    cache.commit("ce", run)
    return res
