"""Small profiles and helpers shared by tests."""

from __future__ import annotations

import math

import numpy as np

from paperlib.config.profiles import TokenBudget, get_profile


def tiny_profile(**changes):
    """A seconds-fast profile on the random tiny SmolLM2-architecture model."""
    base = dict(
        model="tiny-smollm2", layer=2, context=32, lm_batch_size=8,
        tokens=TokenBudget(train=2048, calibration=512, cooccurrence=512, autointerp=512, ce=256),
    )
    base.update(changes)
    return get_profile("smoke", **base)



def brute_phi(F) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N1, N11, φ) of a dense bool firing matrix [T, n] by direct loops over tokens and pairs."""
    F = np.asarray(F, dtype=bool)
    T, n = F.shape
    N1 = np.zeros(n, dtype=np.int64)
    N11 = np.zeros((n, n), dtype=np.int64)
    for t in range(T):
        for i in range(n):
            if F[t, i]:
                N1[i] += 1
                for j in range(n):
                    if F[t, j]:
                        N11[i, j] += 1
    ph = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            den = N1[i] * (T - N1[i]) * N1[j] * (T - N1[j])
            if den > 0:
                ph[i, j] = (T * N11[i, j] - N1[i] * N1[j]) / math.sqrt(den)
    return N1, N11, ph


def stepping_task(folder: str, name: str, threads: int) -> str:
    """A pool task (``run_tasks`` signature) that takes 100 steps of 50 ms, writing ``<name>.step`` after each;
    when asked to stop it writes ``<name>.checkpoint`` and raises KeyboardInterrupt, as training does."""
    import time
    from pathlib import Path

    from paperlib.config.interrupt import stop_after_step

    folder_path = Path(folder)
    with stop_after_step() as stop:
        for step in range(100):
            time.sleep(0.05)
            (folder_path / f"{name}.step").write_text(str(step))
            if stop.requested:
                (folder_path / f"{name}.checkpoint").write_text(str(step))
                raise KeyboardInterrupt(name)
    (folder_path / f"{name}.finished").write_text("")
    return name
