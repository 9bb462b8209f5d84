"""Training stage: train the runs that are missing or stale, and load trained runs.

A run is *trained* when its directory holds ``done.json`` and ``train.json`` records the run's current
key (:attr:`paperlib.stages.run.Run.key`: trainer code, training settings, arm, seed, data). A run
whose key changed (the trainer's code or the profile's training settings were edited since) is
retrained from scratch; its evaluation results go with it, because every later stage keys on the run.
Training activations come from the profile's activation cache (extracted first when missing).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from paperlib.config.io import ArtifactError, damaged, read_json, write_json
from paperlib.config.profiles import Profile
from paperlib.data.activations import ActivationCache, load_cache
from paperlib.sae.models import BatchTopKSAE, MetaSAE
from paperlib.sae.trainer import (
    is_done,
    load_trained_meta,
    load_trained_sae,
    not_started,
    read_config_file,
    read_metrics_file,
    train_run,
    train_shared_prefix,
)
from paperlib.stages.pool import default_workers, require_main_guard, run_tasks
from paperlib.stages.run import Run, as_runs, range_settings

RECORD = "train.json"


def is_trained(run: Run) -> bool:
    """Trained with the current key (see the module docstring)."""
    rec = run.dir / RECORD
    if not (is_done(run.dir) and rec.exists()):
        return False
    try:
        return read_json(rec).get("key") == run.key
    except (ValueError, OSError):
        return False


def default_train_workers(n_runs: int) -> int:
    """Runs trained concurrently by :func:`ensure_trained` (:func:`paperlib.stages.pool.default_workers`)."""
    return default_workers(n_runs)


def _train_from_cache(run: Run, cache: ActivationCache, progress: bool) -> None:
    manifest = getattr(cache, "manifest", {}) or {}
    info: dict[str, Any] = {"range": "train", "data": range_settings(run.profile, "train")}
    ranges = manifest.get("ranges") if isinstance(manifest, dict) else None
    if isinstance(ranges, dict) and "train" in ranges:
        info["range_info"] = ranges["train"]
    train_run(run.profile, run.spec, cache.acts("train"), run.dir, progress=progress, d_in=getattr(cache, "d", None),
              data_info=info)
    write_json(run.dir / RECORD, {"run": run.name, "key": run.key, "weights": run.weights_fingerprint()})


def _train_worker(profile: Profile, name: str, threads: int) -> str:
    """Process-pool entry point: train one run with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    run = Run.of(profile, name)
    _train_from_cache(run, load_cache(profile), progress=False)
    return name


@dataclass(frozen=True)
class PrefixGroup:
    """Fresh runs of one profile and seed whose arms share the steps before the penalty starts
    (:func:`paperlib.sae.trainer.train_shared_prefix`); ``name`` lists them, comma-separated."""

    profile: Profile
    name: str

    @property
    def names(self) -> list[str]:
        return self.name.split(",")


def prefix_groups(runs: list[Run]) -> list[PrefixGroup]:
    """The runs that start untrained (no checkpoint), grouped by seed when at least two of a seed have an arm
    whose penalty follows the schedule (``Arm.scheduled_penalty``)."""
    by_seed: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        if r.spec.arm_def.scheduled_penalty and not_started(r.dir):
            by_seed.setdefault((r.profile.identity, r.spec.seed), []).append(r)
    return [PrefixGroup(g[0].profile, ",".join(r.name for r in g)) for g in by_seed.values() if len(g) > 1]


def _train_prefix(group: PrefixGroup, cache: ActivationCache, progress: bool) -> None:
    runs = [Run.of(group.profile, n) for n in group.names]
    train_shared_prefix(group.profile, [r.spec for r in runs], cache.acts("train"), [r.dir for r in runs],
                        d_in=getattr(cache, "d", None), progress=progress)


def _prefix_worker(profile: Profile, name: str, threads: int) -> str:
    """Process-pool entry point: the shared first steps of one :class:`PrefixGroup`."""
    torch.set_num_threads(threads)
    _train_prefix(PrefixGroup(profile, name), load_cache(profile), progress=False)
    return name


def _discard_stale(run: Run) -> None:
    """Remove a finished run whose key is no longer current (it will be retrained)."""
    if (is_done(run.dir) or (run.dir / RECORD).exists()) and not is_trained(run):
        print(f"run {run}: trained with other code or settings; retraining it")
        shutil.rmtree(run.dir)


def ensure_trained(profile: str | Profile, runs: Iterable[Any] | Any, progress: bool = True,
                   n_workers: int | None = None) -> dict[str, Path]:
    """Train every run of ``runs`` (names in any spelling, RunSpecs or Runs) that is not trained with its
    current key; return canonical name → run directory.

    Runs of one seed whose arms add nothing before the penalty starts first take those shared steps once,
    together (:func:`prefix_groups`, :func:`paperlib.sae.trainer.train_shared_prefix`; same weights as training
    each alone). ``n_workers`` runs are trained at once in separate processes (default
    :func:`default_train_workers`), each with cpu_count / n_workers threads; runs with a meta SAE (the slowest)
    start first. A run's result does not depend on which process trained it or in which order (its data order
    and init come from its seed). Killed runs resume from their checkpoints either way. Workers end when this
    process dies; a script that calls this with several workers needs an ``if __name__ == "__main__":`` guard
    (checked first).
    """
    runs = as_runs(profile, runs)
    out = {r.name: r.dir for r in runs}
    for r in runs:
        _discard_stale(r)
    todo = [r for r in runs if not is_trained(r)]
    if not todo:
        return out
    workers = default_train_workers(len(todo)) if n_workers is None else max(1, int(n_workers))
    if workers > 1:
        require_main_guard()  # before any work: an unguarded script would break the pool
    cache = load_cache(runs[0].profile)  # extraction (if needed) happens here, once
    groups = prefix_groups(todo)
    if workers == 1:
        for g in groups:
            _train_prefix(g, cache, progress)
        for r in todo:
            _train_from_cache(r, cache, progress)
        return out
    groups.sort(key=lambda g: -len(g.names))
    run_tasks(_prefix_worker, groups, workers, desc="shared first steps", progress=progress)
    todo.sort(key=lambda r: not r.spec.uses_meta)
    run_tasks(_train_worker, todo, workers, desc="training", progress=progress)
    return out


def _require_trained(run: Run) -> None:
    if not is_trained(run):
        why = "was trained with other code or settings" if is_done(run.dir) else "is not trained"
        raise FileNotFoundError(f"run {run} {why} ({run.dir}); call ensure_trained(profile, [{run.name!r}]) first")


def check_weights(run: Run) -> None:
    """The trained weights are the ones recorded in ``train.json`` (SHA-256 of ``sae/``); else ArtifactError."""
    recorded = read_json(run.dir / RECORD, delete=run.dir).get("weights")
    if recorded is not None and recorded != run.weights_fingerprint():
        raise damaged(run.dir / "sae", f"weights changed since training (fingerprint {run.weights_fingerprint()}, "
                      f"recorded {recorded})", run.dir)


def _load(run: Run, loader: Callable[..., Any], device: str | torch.device) -> Any:
    """``loader(run.dir)``; damaged weight files raise one ArtifactError naming the run directory to delete."""
    _require_trained(run)
    check_weights(run)
    try:
        return loader(run.dir, device=device)
    except (SafetensorError, OSError, KeyError, RuntimeError, ValueError) as err:
        if isinstance(err, (ArtifactError, FileNotFoundError)):
            raise
        raise damaged(run.dir, f"damaged trained weights ({type(err).__name__}: {err})") from None


def load_run(run: Run, device: str | torch.device = "cpu") -> BatchTopKSAE:
    """The trained primary SAE of ``run``."""
    return _load(run, load_trained_sae, device)


def load_meta(run: Run, device: str | torch.device = "cpu") -> MetaSAE:
    """The meta SAE of a run whose arm has one."""
    return _load(run, load_trained_meta, device)


def read_metrics(run: Run) -> list[dict]:
    """Per-step training metrics of a run (``metrics.jsonl``)."""
    return read_metrics_file(run.dir)


def read_run_config(run: Run) -> dict:
    """The ``config.json`` recorded next to a finished run (config, seed, versions, token range)."""
    _require_trained(run)
    return read_config_file(run.dir)
