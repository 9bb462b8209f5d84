"""Process handling (issue 17, case 5): stale temporaries of killed processes are removed, one process builds a
run or a cache at a time (a lock with its pid; a dead holder's lock is reused), training workers die with their
parent, and a script without a ``__main__`` guard gets a clear error instead of BrokenProcessPool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import numpy as np
import pytest

import paperlib.sae.trainer as tr
from paperlib.config.io import LockedError, exclusive
from paperlib.config.profiles import get_profile
from paperlib.data import activations
from paperlib.stages import pool, train
from tests.helpers import tiny_profile

D = 16
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _profile():
    return get_profile("smoke", n_latents=48, k=4, n_meta=8, k_meta=2, batch_size=32, train_epochs=1.0,
                       checkpoint_every=2, dead_after=2, k_aux=8)


def _acts(T=256):
    return np.random.default_rng(0).standard_normal((T, D)).astype(np.float16)


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)


def test_killed_extraction_leaves_no_temporaries_behind(tmp_artifacts, monkeypatch):
    p = tiny_profile()
    monkeypatch.setattr(activations, "SHARD_TOKENS", 256)
    with pytest.raises(KeyboardInterrupt):
        activations.load_cache(p, progress=False, _stop_after_shards=2)
    root = activations.activations_dir(p)
    left = [root / ".train.npy.k1ll3d.tmp", root / "shards" / ".train_00002.npy.x.tmp"]  # what a SIGKILL leaves
    for f in left:
        f.write_bytes(b"\0" * 4096)
    activations.load_cache(p, progress=False)
    assert not any(f.exists() for f in left) and not list(root.rglob("*.tmp"))


def test_killed_training_leaves_no_temporaries_behind(tmp_path):
    out = tmp_path / "run"
    tr.train_run(_profile(), "solo", _acts(), out, progress=False, device="cpu", max_steps=2)
    stale = out / "checkpoint" / ".state-000000004.safetensors.abc.tmp"
    stale.write_bytes(b"\0" * 1024)
    tr.train_run(_profile(), "solo", _acts(), out, progress=False, device="cpu")
    assert tr.is_done(out) and not list(out.rglob("*.tmp"))


def test_one_process_per_run_and_per_cache(tmp_artifacts, tmp_path):
    out = tmp_path / "run"
    holder = _python(f"""
        import time
        from paperlib.config.io import exclusive
        with exclusive({str(out / '.lock')!r}, "x"):
            print("locked", flush=True)
            time.sleep(120)
    """)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=rf"run 'solo' \({out}\) is being built by another process "
                                              rf"\(pid {holder.pid}, lock .*\.lock\)"):
            tr.train_run(_profile(), "solo", _acts(), out, progress=False, device="cpu")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died: its lock file remains, but the lock is gone with it
    assert (out / ".lock").read_text().strip() == str(holder.pid)
    tr.train_run(_profile(), "solo", _acts(), out, progress=False, device="cpu")
    assert tr.is_done(out)
    p = tiny_profile()
    root = activations.activations_dir(p)
    with exclusive(root / ".lock", "test"), pytest.raises(LockedError, match="the activation cache .* is being built"):
        activations.load_cache(p, progress=False)


def test_training_workers_die_with_their_parent(tmp_path):
    pid_file = tmp_path / "worker.pid"
    parent = _python(f"""
        import os, time
        from paperlib.stages.pool import process_pool
        pool = process_pool(1)
        pid = pool.submit(os.getpid).result()
        open({str(pid_file)!r}, "w").write(str(pid))
        print("ready", flush=True)
        time.sleep(120)
    """)
    assert parent.stdout.readline().strip() == "ready"
    worker = int(pid_file.read_text())
    os.kill(worker, 0)  # alive
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(100):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the training worker outlived its parent")


def test_a_script_without_main_guard_gets_a_clear_error(tmp_path, monkeypatch):
    script = tmp_path / "snippet.py"
    script.write_text('from paperlib.stages.train import ensure_trained\nensure_trained("smoke", ["solo", "joint"])\n')
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__file__=str(script)))
    monkeypatch.setattr(train, "load_cache", lambda profile: pytest.fail("must refuse before any work"))
    with pytest.raises(RuntimeError, match=r'snippet.py calls a stage that runs in worker processes.*'
                                           r'if __name__ == "__main__":.*n_workers=1'):
        train.ensure_trained(tiny_profile(), ["solo", "solo-seed1"], n_workers=2, progress=False)
    guarded = script.read_text().replace("ensure_trained(", 'if __name__ == "__main__":\n    ensure_trained(')
    script.write_text(guarded)
    pool.require_main_guard()  # guarded: fine


@pytest.mark.parametrize("stage", ["calibration", "cooccurrence", "reconstruction"])
def test_one_process_builds_a_stage_result_and_a_waiting_one_loads_it(tmp_artifacts, monkeypatch, stage):
    """Per-run evaluation stages are built under a lock: of two concurrent callers (threads here; processes take
    the same file lock) one computes and writes, the other waits and loads that result instead of writing over it."""
    import threading

    from paperlib.stages import cache, calibrate, cooccur, recon
    from paperlib.stages.run import Run

    p = tiny_profile()
    run = Run.of(p, "solo")
    train.ensure_trained(p, [run], progress=False, n_workers=1)
    if stage != "calibration":
        calibrate.ensure_calibration(run, progress=False)
    if stage == "reconstruction":
        cooccur.ensure_cooccurrence(run, progress=False)
    module, builder, ensure = {
        "calibration": (calibrate, "_calibrate", calibrate.ensure_calibration),
        "cooccurrence": (cooccur, "_cooccurrence", cooccur.ensure_cooccurrence),
        "reconstruction": (recon, "_reconstruction", recon.ensure_reconstruction)}[stage]
    real, calls, results = getattr(module, builder), [], []

    def slow_build(*a):
        calls.append(1)
        time.sleep(0.4)
        return real(*a)

    monkeypatch.setattr(module, builder, slow_build)
    monkeypatch.setattr(cache, "LOCK_POLL_S", 0.02)
    jobs = [threading.Thread(target=lambda: results.append(ensure(run, progress=False))) for _ in range(2)]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join(60)
    assert len(calls) == 1 and len(results) == 2 and cache.is_fresh(stage, run)
