"""Interrupts that wait for the end of a step: long loops (training) stop at a consistent state.

Inside :func:`stop_after_step`, Ctrl-C (SIGINT, unless the process ignores it) and :data:`STOP_SIGNAL` (sent by
a parent process to its workers) only set a flag; the loop checks ``flag.requested`` after each step, saves
what it needs to resume and raises :class:`KeyboardInterrupt` itself. A second Ctrl-C while the flag is set
interrupts at once, as usual. Outside the main thread (where Python cannot install signal handlers) the flag
is never set and interrupts behave as they always do.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["STOP_SIGNAL", "StopFlag", "stop_after_step"]

STOP_SIGNAL = signal.SIGUSR1
"""What a parent sends to a worker process to ask its loop to stop after the current step (never escalates)."""


@dataclass
class StopFlag:
    """Set by the first interrupt inside :func:`stop_after_step`."""

    requested: bool = False
    signal_name: str = ""


@contextmanager
def stop_after_step() -> Iterator[StopFlag]:
    """A :class:`StopFlag` that SIGINT and :data:`STOP_SIGNAL` set while the block runs (main thread only);
    the previous handlers are restored on exit."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_signal(signum: int, frame: Any) -> None:
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        flag.requested, flag.signal_name = True, signal.Signals(signum).name

    # a process that ignores Ctrl-C (a pool worker, a background job) keeps ignoring it; STOP_SIGNAL always counts
    taken = [s for s in (signal.SIGINT, STOP_SIGNAL) if s == STOP_SIGNAL or signal.getsignal(s) != signal.SIG_IGN]
    previous = {s: signal.getsignal(s) for s in taken}
    for s in previous:
        signal.signal(s, on_signal)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
