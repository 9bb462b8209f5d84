"""Worker processes for per-run work: training and the per-run evaluation stages.

On a CPU the sparse training step is many small operations that use a second intra-op thread poorly, so
runs in separate processes, each with ``cpu_count / workers`` threads, keep the cores busier than one
multi-threaded process (``benchmarks/train.py`` on the idle 2-core machine: a default solo step does
23,596 tok/s on 1 thread and 40,109 on 2, less than twice the first).
The per-run evaluation stages use the same workers; there the gain was
small (measured on the calibration code of commit 16822c9, 24 default runs: 1 min 27 s in process, 1 min 33 s
in two workers).
A task is a top-level function ``task(profile, run_name, threads) -> run_name``
that computes and caches one run's result; the caller then loads the cached results in its own process.
A run's result does not depend on which process computed it or in which order (measured: byte-identical
weights and results with 1 and 2 threads on one machine).

Workers are "spawn" processes that die with their parent. A script that starts workers needs an
``if __name__ == "__main__":`` guard (spawned workers import the script); :func:`require_main_guard`
checks for it before any work starts.
"""

from __future__ import annotations

import ast
import atexit
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from paperlib.config.interrupt import STOP_SIGNAL
from paperlib.stages import cache
from paperlib.stages.run import Run

__all__ = ["MAIN_GUARD", "default_workers", "die_with_parent", "ensure_each", "process_pool", "require_main_guard",
           "run_tasks", "shared_pool", "stage_task", "stop_workers", "worker_processes"]

MAIN_GUARD = 'if __name__ == "__main__":'
PR_SET_PDEATHSIG = 1
MAX_WORKERS = 4


def default_workers(n_tasks: int) -> int:
    """Processes used for ``n_tasks`` per-run tasks: 1 on a GPU or for a single task, else up to
    :data:`MAX_WORKERS`, at most one per CPU core."""
    if n_tasks <= 1 or torch.cuda.is_available():
        return 1
    return max(1, min(n_tasks, os.cpu_count() or 1, MAX_WORKERS))


def die_with_parent(parent_pid: int) -> None:
    """Process-pool initializer: end this worker when its parent dies (Linux: ``prctl(PR_SET_PDEATHSIG,
    SIGTERM)``; elsewhere a daemon thread that polls the parent pid every second), so a killed notebook or
    script never leaves worker processes behind. The worker ignores Ctrl-C sent to the whole process group (as
    Jupyter does when it interrupts or shuts down a kernel): the parent decides, and stops running tasks with
    :data:`~paperlib.config.interrupt.STOP_SIGNAL` (:func:`stop_workers`), and training then stops after its current
    step (:func:`~paperlib.config.interrupt.stop_after_step`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def require_main_guard() -> None:
    """Refuse to start worker processes from a script without a ``__main__`` guard: "spawn" workers import the
    script, which would start the work again in every worker and break the pool (BrokenProcessPool)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py") or not os.path.isfile(path):
        return  # notebooks, python -c, the REPL: nothing is re-imported
    tree = ast.parse(Path(path).read_text(errors="replace"))
    guarded = any(isinstance(n, ast.If) and "__name__" in ast.unparse(n.test) and "__main__" in ast.unparse(n.test)
                  for n in tree.body)
    if not guarded:
        raise RuntimeError(f"{path} calls a stage that runs in worker processes (ensure_trained, "
                           f"ensure_calibrations, ...) at module level, and those processes import that script "
                           f"again. Put the calls under `{MAIN_GUARD}`, or pass n_workers=1 to work in this process")


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A new pool of ``workers`` "spawn" processes that die with this process."""
    require_main_guard()
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))


WORKER_ENVIRONMENT = ("PAPERLIB_ARTIFACTS", "PAPERLIB_OUTPUTS", "PAPERLIB_CACHE", "HF_HUB_OFFLINE")
"""Variables a worker reads its locations from: a pool started under other values is not reused."""
_SHARED: dict[int, tuple[tuple, ProcessPoolExecutor]] = {}


def shared_pool(workers: int) -> ProcessPoolExecutor:
    """This process's pool of ``workers`` processes, started on first use and kept for later stages (starting
    a worker costs a few seconds of imports); replaced when a :data:`WORKER_ENVIRONMENT` variable changed,
    shut down at exit or after a worker died."""
    env = tuple(os.environ.get(v) for v in WORKER_ENVIRONMENT)
    held = _SHARED.get(workers)
    if held is not None and held[0] != env:
        _discard_shared(workers)
        held = None
    if held is None:
        held = _SHARED[workers] = (env, process_pool(workers))
    return held[1]


def _discard_shared(workers: int) -> None:
    held = _SHARED.pop(workers, None)
    if held is not None:
        held[1].shutdown(wait=False, cancel_futures=True)


@atexit.register
def _shutdown_shared() -> None:
    for workers in list(_SHARED):
        _discard_shared(workers)


def run_tasks(task: Callable[[Any, str, int], str], runs: Sequence[Any], workers: int, *, desc: str,
              progress: bool = True) -> None:
    """Run ``task(run.profile, run.name, threads)`` for every run in ``workers`` processes; a worker's error is
    re-raised here, and queued tasks are cancelled. Results are whatever the task caches."""
    if not runs:
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    t0 = time.perf_counter()
    ex = shared_pool(workers)
    futures = {ex.submit(task, r.profile, r.name, threads): r.name for r in runs}
    bar = tqdm(total=len(runs), desc=f"{desc} ({workers} processes)", disable=not progress)
    try:
        for fut in as_completed(futures):
            name = fut.result()  # re-raises a worker's error here
            bar.update(1)
            bar.write(f"  {name} done ({time.perf_counter() - t0:.0f} s)")
    except BrokenProcessPool as err:
        _discard_shared(workers)
        raise RuntimeError(f"a worker process died ({err}). If a script called this, put the call under "
                           f"`{MAIN_GUARD}` (worker processes import the script), or pass n_workers=1; "
                           "finished runs are kept (killed training resumes from its checkpoints)") from None
    except KeyboardInterrupt:
        bar.close()
        stop_workers(workers, [f for f in futures if not f.done()], desc=desc)
        raise
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    finally:
        bar.close()


STOP_GRACE_S = 60.0
"""How long an interrupted :func:`run_tasks` waits for running tasks to reach a resumable state."""


def stop_workers(workers: int, running: Sequence[Future], *, desc: str = "tasks",
                 grace_s: float = STOP_GRACE_S) -> None:
    """After an interrupt: cancel queued tasks, ask every worker of the shared pool to stop after its current step
    (:data:`~paperlib.config.interrupt.STOP_SIGNAL`: training saves a checkpoint there; other tasks end at once and
    cache nothing), wait up to ``grace_s`` for them, then end the worker processes and drop the pool, so nothing
    started before the interrupt goes on running."""
    held = _SHARED.pop(workers, None)
    if held is None:
        return
    ex = held[1]
    for f in running:
        f.cancel()
    procs = list(worker_processes(ex))
    busy = [f for f in running if not f.done()]
    if busy:
        print(f"interrupted: waiting up to {grace_s:.0f} s for the running {desc} task(s) to stop at a resumable "
              "point", file=sys.stderr, flush=True)
    deadline = time.monotonic() + grace_s
    while busy and time.monotonic() < deadline:
        # again and again: a task the executor had already queued may start in a worker after the first signal
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, STOP_SIGNAL)
        busy = list(wait(busy, timeout=0.25).not_done)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    ex.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.join(timeout=5.0)


def worker_processes(ex: ProcessPoolExecutor) -> list[Any]:
    """The live worker processes of ``ex`` (the executor keeps them in a private mapping; empty when it has none)."""
    return list((getattr(ex, "_processes", None) or {}).values())


def stage_task(ensure: Callable[..., Any], profile: Any, name: str, threads: int) -> str:
    """Worker-process entry point of :func:`ensure_each`: ``ensure(run, progress=False)`` with ``threads`` threads."""
    torch.set_num_threads(threads)
    ensure(Run.of(profile, name), progress=False)
    return name


def ensure_each(stage: str, ensure: Callable[..., Any], runs: Sequence[Run], *, n_workers: int | None = None,
                desc: str, progress: bool = True) -> dict[str, Any]:
    """``ensure(run)`` of every run; the runs whose ``stage`` result is not fresh are first computed in
    ``n_workers`` processes (default :func:`default_workers`), then every result is loaded here. Results are
    the same either way (the stage caches them; a worker's result is the in-process one)."""
    runs = list(runs)
    todo = [r for r in runs if not cache.is_fresh(stage, r)]
    workers = default_workers(len(todo)) if n_workers is None else max(1, int(n_workers))
    if workers > 1:
        run_tasks(partial(stage_task, ensure), todo, workers, desc=desc, progress=progress)
    return {r.name: ensure(r, progress=progress) for r in runs}
