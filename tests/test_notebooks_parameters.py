"""Every notebook's parameters cell is readable by papermill (``papermill --help-notebook``, ``-p``), and the
venv opens the notebooks in JupyterLab with widgets (``make install`` → ``.venv/bin/jupyter lab notebooks/``)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
BIN = Path(sys.executable).parent
TYPES = {"str", "int", "float", "bool", "Optional[str]", "Optional[int]", "Optional[float]"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_inspectable(path, caplog):
    caplog.set_level("WARNING", logger="papermill")
    params = pm.inspect_notebook(str(path))
    # papermill skips (with a warning) any line with more than one "=", e.g. in a comment
    assert not [r.message for r in caplog.records if "Unable to parse" in r.message]
    assert "profile" in params
    assert all(p["help"] for p in params.values()), f"undocumented parameter in {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_are_typed(path):
    """Every parameter has a type annotation papermill reads (no "Unknown type" in --help-notebook), the
    annotation matches its default, and the cell still runs as plain Python."""
    params = pm.inspect_notebook(str(path))
    untyped = {n: p["inferred_type_name"] for n, p in params.items() if p["inferred_type_name"] not in TYPES}
    assert not untyped, f"{path.name}: parameters without a supported type annotation: {untyped}"
    nb = json.loads(path.read_text())
    src = next("".join(c["source"]) for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    ns: dict = {}
    exec(src, ns)  # annotations are evaluated at module level: Optional must be importable here
    for name, p in params.items():
        value, ty = ns[name], p["inferred_type_name"]
        base = ty.removeprefix("Optional[").removesuffix("]")
        assert (value is None and ty.startswith("Optional[")) or type(value).__name__ == base, (name, value, ty)
    out = subprocess.run([str(BIN / "papermill"), "--help-notebook", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Unknown type" not in out.stdout and "profile: str" in out.stdout


def test_jupyterlab_with_widgets_is_installed():
    """``make install`` puts JupyterLab and the ipywidgets lab extension into the venv."""
    import ipywidgets  # noqa: F401

    out = subprocess.run([str(BIN / "jupyter"), "labextension", "list"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "@jupyter-widgets/jupyterlab-manager" in out.stdout + out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyter_lab_serves_the_notebooks(tmp_path):
    """``.venv/bin/jupyter lab notebooks/`` starts and lists the notebooks (local server, no browser)."""
    port = _free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")}
    proc = subprocess.Popen(
        [str(BIN / "jupyter"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={ROOT / 'notebooks'}",
         *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI runs as root
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        names, deadline = None, time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=5) as r:
                    names = {c["name"] for c in json.load(r)["content"]}
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab", timeout=5) as r:
                    assert r.status == 200
                break
            except OSError:
                time.sleep(0.5)
        assert names is not None, f"jupyter lab did not serve: {proc.stderr.read().decode() if proc.poll() else ''}"
        assert {p.name for p in NOTEBOOKS} <= names
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
