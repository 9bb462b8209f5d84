"""Shared fixtures: every test writes artifacts under a temporary directory."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture()
def tmp_artifacts(tmp_path, monkeypatch):
    """Point PAPERLIB_ARTIFACTS and PAPERLIB_OUTPUTS at a fresh temporary directory."""
    monkeypatch.setenv("PAPERLIB_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("PAPERLIB_OUTPUTS", str(tmp_path / "outputs"))
    return tmp_path
