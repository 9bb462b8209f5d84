"""Notebook 05 run against an endpoint that never answers (issue 17, case 2, at notebook level): the notebook
stops with the judge error naming the URL and the cause, and leaves no judged result behind."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import papermill as pm
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_notebook_05_against_a_dead_endpoint_stops_and_caches_nothing_judged(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    art, out = tmp_path / "artifacts", tmp_path / "outputs"
    secret = "sk-notebook-test-4f9a1c"  # the kernel inherits it; it must reach no file and no message
    for var, value in (("PAPERLIB_ARTIFACTS", art), ("PAPERLIB_OUTPUTS", out), ("HF_HUB_OFFLINE", "1"),
                       ("OPENAI_API_KEY", secret)):
        monkeypatch.setenv(var, str(value))
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(REPO / "notebooks" / "05_autointerp.ipynb"), str(tmp_path / "05.ipynb"),
                            cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False,
                            parameters={"profile": "smoke", "judge": "openai", "base_url": url, "judge_model": "x"})
    assert e.value.ename == "JudgeError" and url in e.value.evalue and "Connection refused" in e.value.evalue
    assert not [f for f in out.rglob("autointerp_*") if f.parent.name == "tables"]  # no judged table
    assert not list(art.rglob("design-*.json"))  # no plan timed on failed calls
    for f in art.rglob("features/*.json"):  # only latents with nothing to explain (never firing) are final
        rec = json.loads(f.read_text())
        assert rec["n_explain"] == 0 and not rec["missing"], (f, rec)
    assert secret not in e.value.evalue
    written = [p for p in (*art.rglob("*"), *out.rglob("*"), tmp_path / "05.ipynb") if p.is_file()]
    assert written and not any(secret in p.read_text(errors="ignore") for p in written if p.stat().st_size < 2**24)
