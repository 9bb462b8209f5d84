"""paperlib.config.interrupt: interrupts that wait for the end of a step."""

import os
import signal
import threading

import pytest

from paperlib.config.interrupt import STOP_SIGNAL, stop_after_step


def test_signals_set_the_flag_and_handlers_are_restored(interactive_sigint):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, STOP_SIGNAL)}
    with stop_after_step() as flag:
        assert not flag.requested
        os.kill(os.getpid(), STOP_SIGNAL)
        assert flag.requested and flag.signal_name == "SIGUSR1"
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_second_ctrl_c_interrupts_at_once(interactive_sigint):
    with pytest.raises(KeyboardInterrupt), stop_after_step() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.requested and flag.signal_name == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)
        pytest.fail("the second SIGINT must raise")


def test_outside_the_main_thread_nothing_is_installed(interactive_sigint):
    seen = {}

    def body():
        with stop_after_step() as flag:
            seen["handler"] = signal.getsignal(signal.SIGINT)
            seen["flag"] = flag.requested

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"handler": signal.default_int_handler, "flag": False}


def test_a_process_that_ignores_ctrl_c_keeps_ignoring_it():
    """Pool workers and background jobs ignore SIGINT; inside the block they still do, and only STOP_SIGNAL
    asks the loop to stop."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_after_step() as flag:
            os.kill(os.getpid(), signal.SIGINT)
            assert not flag.requested and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), STOP_SIGNAL)
            assert flag.requested
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
