"""The notebooks' Colab install cell (``tools/nbbuild.py`` ``COLAB_CELL``): keeps the runtime's own torch,
fails loudly when the clone fails, and takes its repository URL from one setting."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tools.nbbuild import COLAB_CELL, REPO, REPO_URL

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


def _cell_namespace() -> dict:
    ns: dict = {}
    exec(COLAB_CELL, ns)  # outside Colab the cell only defines its helpers
    return ns


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_the_generated_cell(path):
    nb = json.loads(path.read_text())
    assert "".join(nb["cells"][1]["source"]) == COLAB_CELL
    assert f"colab.research.google.com/github/{REPO}/blob/main/notebooks/{path.name}" in "".join(
        nb["cells"][0]["source"])


def test_outside_colab_the_cell_does_nothing(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    ns = _cell_namespace()
    assert ns["REPO_URL"] == REPO_URL == f"https://github.com/{REPO}"


def test_install_commands_keep_the_runtime_torch(tmp_path, monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "2.8.0+cu126" if n == "torch" else real(n))
    cons = tmp_path / "constraints.txt"
    cmds = _cell_namespace()["colab_install_commands"](str(ROOT), str(cons))
    assert cons.read_text() == "torch==2.8.0+cu126\n"  # Colab's CUDA build, whatever its version
    reqs = [a for c in cmds for a in c[5:] if not a.startswith("-") and a not in (str(ROOT), str(cons))]
    assert not [r for r in reqs if r.split("=")[0].split("<")[0].split(">")[0].strip().lower() == "torch"]
    assert "nnsight==0.8.1" in reqs and "jupyterlab" not in reqs
    deps_cmd, pkg_cmd = cmds[0], cmds[1]
    assert deps_cmd[5:7] == ["-c", str(cons)]  # every dependency resolved against the pinned torch
    assert pkg_cmd[5:] == ["--no-deps", "-e", str(ROOT)]  # paperlib itself: its torch==2.13.0 pin is not applied


def test_failed_clone_raises_and_names_the_setting(monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 128, "", "fatal: repository not found")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setenv("PAPERLIB_REPO_URL", "https://example.invalid/fork.git")
    with pytest.raises(RuntimeError, match="PAPERLIB_REPO_URL") as e:
        _cell_namespace()
    assert "repository not found" in str(e.value)
    assert len(calls) == 1 and calls[0][:2] == ["git", "clone"] and "https://example.invalid/fork.git" in calls[0]


def test_dry_run_installs_no_torch(tmp_path):
    """The cell's pip commands, run with ``--dry-run`` in this venv (its torch plays Colab's): pip would
    install no torch. Needs the package index; skipped when it is unreachable."""
    cmds = _cell_namespace()["colab_install_commands"](str(ROOT), str(tmp_path / "constraints.txt"))
    for i, cmd in enumerate(cmds[:2]):  # dependencies with the constraint, then paperlib --no-deps
        report = tmp_path / f"report{i}.json"
        out = subprocess.run(cmd[:5] + ["--dry-run", "--report", str(report)] + cmd[5:], capture_output=True,
                             text=True, timeout=600)
        if out.returncode != 0:
            err = out.stderr.lower()
            if any(s in err for s in ("connection", "network", "max retries", "temporary failure", "no matching")):
                pytest.skip(f"package index unreachable: {out.stderr.strip().splitlines()[-1]}")
            pytest.fail(out.stderr)
        names = [x["metadata"]["name"].lower() for x in json.loads(report.read_text())["install"]]
        assert "torch" not in names, names
        if i == 1:
            assert names == ["paperlib"]
