"""Concurrent CE jobs of one profile compute the shared clean-model CE once and never corrupt it (issue 19)."""

from __future__ import annotations

import threading
import time

from paperlib.config.io import exclusive
from paperlib.data.activations import load_cache
from paperlib.data.lm import load_lm
from paperlib.stages import cache, ce

PROFILE = "paper-arch-smoke-gpt2"


def test_two_concurrent_ce_jobs_compute_the_clean_reference_once(tmp_artifacts, monkeypatch):
    load_cache(PROFILE, progress=False)
    model = load_lm("tiny-gpt2", dtype="float32", device="cpu")
    calls = []
    real = ce.ce_losses

    def slow_ce_losses(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # both jobs are inside ensure_ce_reference at once
        return real(*args, **kwargs)

    monkeypatch.setattr(ce, "ce_losses", slow_ce_losses)
    results: list[dict] = []
    jobs = [threading.Thread(target=lambda: results.append(ce.ensure_ce_reference(PROFILE, lm=model,
                                                                                  progress=False)))
            for _ in range(2)]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join(60)
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]
    assert cache.is_fresh("ce_reference", profile=PROFILE)


def test_a_ce_job_waits_for_the_lock_holder(tmp_artifacts, monkeypatch, capsys):
    monkeypatch.setattr(cache, "LOCK_POLL_S", 0.05)
    lock = cache.lock_path("ce_reference", profile=PROFILE)
    entered = threading.Event()

    def waiter():
        with cache.waiting_lock(lock, "test", poll_s=0.05):
            entered.set()

    with exclusive(lock, "holder"):
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.3)
        assert not entered.is_set()
    t.join(10)
    assert entered.is_set()
    told = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("waiting for test:")]
    assert len(told) == 1 and f"(pid {__import__('os').getpid()})" in told[0] and str(lock) in told[0]
