"""Small helpers shared by the notebooks: setup banner, output dirs, saving figures and tables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from paperlib.config.io import atomic_path, provenance, write_text
from paperlib.config.paths import output_dirs
from paperlib.config.profiles import Profile, get_profile


@dataclass(frozen=True)
class NotebookContext:
    """What :func:`setup` returns: the resolved profile and its figure and table directories."""

    profile: Profile
    figures: Path
    tables: Path


def setup(profile: str | Profile, **overrides) -> NotebookContext:
    """Resolve the profile, make the output dirs and print what will run where."""
    os.environ.setdefault("HF_HUB_OFFLINE", "0")
    p = get_profile(profile, **overrides)
    figs, tabs = output_dirs(p)
    prov = provenance()
    print(f"profile={p.name} model={p.data.model} layer={p.data.layer} corpus={p.data.corpus} "
          f"n={p.sae.n_latents} k={p.sae.k} m={p.meta.n_meta} k_meta={p.meta.k_meta}")
    print(f"git={prov['git']} torch={prov['versions']['torch']} -> figures: {figs}  tables: {tabs}")
    return NotebookContext(p, figs, tabs)


def save_figure(fig, directory: Path, name: str) -> list[Path]:
    """Save a matplotlib figure as PNG and PDF, atomically."""
    out = []
    for ext in ("png", "pdf"):
        path = directory / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        out.append(path)
    return out


def save_table(df, directory: Path, name: str, floatfmt: str = ".4g") -> list[Path]:
    """Save a DataFrame as CSV and Markdown, atomically."""
    csv, md = directory / f"{name}.csv", directory / f"{name}.md"
    write_text(csv, df.to_csv(index=False))
    write_text(md, df.to_markdown(index=False, floatfmt=floatfmt) + "\n")
    return [csv, md]
