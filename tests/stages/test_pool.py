"""Tests for paperlib.stages.pool and the pooled per-run stages: results computed in worker processes equal
results computed in this process."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from paperlib.stages import cache, calibrate, cooccur, pool, recon
from paperlib.stages.run import Run
from paperlib.stages.train import ensure_trained
from tests.helpers import tiny_profile

NAMES = ["solo", "joint-l0.3-s1"]


def _results(p):
    runs = [Run.of(p, n) for n in NAMES]
    return runs, {
        "cal": {r.name: calibrate.ensure_calibration(r, progress=False) for r in runs},
        "co": {r.name: cooccur.ensure_cooccurrence(r, progress=False).to_json() for r in runs},
        "rec": {r.name: recon.ensure_reconstruction(r, progress=False).to_json() for r in runs},
    }


def test_pooled_stages_equal_in_process_stages(tmp_artifacts):
    p = tiny_profile()
    ensure_trained(p, NAMES, progress=False, n_workers=1)
    runs = [Run.of(p, n) for n in NAMES]
    co = cooccur.ensure_cooccurrences(runs, n_workers=2, progress=False)  # calibrates in the workers too
    cals = calibrate.ensure_calibrations(runs, n_workers=2, progress=False)
    rec = recon.ensure_reconstructions(runs, n_workers=2, progress=False)
    assert list(cals) == list(co) == list(rec) == NAMES
    for r in runs:  # computed by the workers: fresh, so the calls above only loaded them
        for stage in ("calibration", "cooccurrence", "reconstruction"):
            assert cache.is_fresh(stage, r)
    for r in runs:  # recompute everything in this process
        shutil.rmtree(cache.stage_dir("calibration", r).parent)
    _, ref = _results(p)
    for n in NAMES:
        np.testing.assert_array_equal(cals[n].thresholds, ref["cal"][n].thresholds)
        assert co[n].to_json() == ref["co"][n]
        assert rec[n].to_json() == ref["rec"][n]


def test_pooled_stage_errors_reach_the_caller(tmp_artifacts):
    p = tiny_profile()
    with pytest.raises(FileNotFoundError, match="is not trained"):
        calibrate.ensure_calibrations([Run.of(p, n) for n in NAMES], n_workers=2, progress=False)


def test_default_workers():
    assert pool.default_workers(1) == 1
    assert 1 <= pool.default_workers(10) <= pool.MAX_WORKERS


def test_shared_pool_is_reused_until_its_locations_change(monkeypatch, tmp_path):
    monkeypatch.setenv("PAPERLIB_ARTIFACTS", str(tmp_path / "a"))
    first = pool.shared_pool(1)
    assert pool.shared_pool(1) is first
    monkeypatch.setenv("PAPERLIB_ARTIFACTS", str(tmp_path / "b"))
    second = pool.shared_pool(1)
    assert second is not first
    assert second.submit(os.getenv, "PAPERLIB_ARTIFACTS").result() == str(tmp_path / "b")


def test_an_interrupt_stops_running_tasks_at_a_resumable_point_and_ends_the_workers(tmp_path, interactive_sigint):
    """Ctrl-C in the parent (a notebook interrupt): run_tasks returns within seconds, the running tasks stop after
    their current step with a checkpoint, no task runs to its end afterwards, and the worker processes are gone."""
    import signal
    import threading
    import time
    from types import SimpleNamespace

    from tests.helpers import stepping_task

    runs = [SimpleNamespace(profile=str(tmp_path), name=f"t{i}") for i in range(5)]
    ex = pool.shared_pool(2)
    procs = []

    def interrupt_when_both_run():
        while len(list(tmp_path.glob("*.step"))) < 2:
            time.sleep(0.02)
        procs.extend(pool.worker_processes(ex))
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_both_run, daemon=True).start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        pool.run_tasks(stepping_task, runs, 2, desc="stepping", progress=False)
    assert time.perf_counter() - t0 < 30  # the tasks alone would take 5 s x 3 rounds
    assert len(list(tmp_path.glob("*.checkpoint"))) >= 2  # (a task the executor had queued may start and stop too)
    time.sleep(1.0)
    assert not list(tmp_path.glob("*.finished"))
    assert len(procs) == 2 and not any(p.is_alive() for p in procs)
    assert pool.shared_pool(2) is not ex  # the interrupted pool is not reused
