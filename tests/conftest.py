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
