"""Shared fixtures: every test writes artifacts under a temporary directory; ``one_thread`` on request."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture()
def tmp_artifacts(tmp_path, monkeypatch):
    """Point PAPERLIB_ARTIFACTS and PAPERLIB_OUTPUTS at a fresh temporary directory."""
    monkeypatch.setenv("PAPERLIB_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("PAPERLIB_OUTPUTS", str(tmp_path / "outputs"))
    return tmp_path


@pytest.fixture()
def one_thread():
    """One intra-op thread for the test: tiny training steps are dominated by thread wake-ups on a loaded
    machine (10x slower with 2 threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def interactive_sigint():
    """Ctrl-C raises KeyboardInterrupt, as in a terminal or a Jupyter kernel, whatever this test process inherited
    (a background job, as in CI, starts with SIGINT ignored); the previous handler is restored after the test."""
    import signal

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
