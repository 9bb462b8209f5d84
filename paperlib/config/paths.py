"""Where artifacts (git-ignored) and published outputs (figures/, tables/) live."""

from __future__ import annotations

import os
from pathlib import Path

from paperlib.config.profiles import Profile, get_profile, primary_of

REPO_ROOT = Path(__file__).resolve().parents[2]


def artifacts_root() -> Path:
    """Root of generated binaries: ``$PAPERLIB_ARTIFACTS`` or ``<repo>/artifacts``."""
    return Path(os.environ.get("PAPERLIB_ARTIFACTS", REPO_ROOT / "artifacts"))


def profile_dir(profile: str | Profile) -> Path:
    """Artifacts of one profile: activation cache, runs, calibration, judge cache. The folder is the profile's
    :attr:`~paperlib.config.profiles.Profile.identity` (an overridden profile gets its own)."""
    return artifacts_root() / get_profile(profile).identity


def activations_dir(profile: str | Profile) -> Path:
    return profile_dir(profile) / "activations"


def runs_dir(profile: str | Profile) -> Path:
    return profile_dir(profile) / "runs"


def run_dir(profile: str | Profile, run_name: str) -> Path:
    return runs_dir(profile) / run_name


def output_dirs(profile: str | Profile) -> tuple[Path, Path]:
    """(figures, tables) directories for a profile.

    The ``default`` profile publishes into the committed ``figures/`` and ``tables/``;
    every other profile (an overridden ``default`` included) writes under its artifacts folder so that
    tests and paper-scale runs never overwrite the committed outputs. ``$PAPERLIB_OUTPUTS`` overrides both
    (``$PAPERLIB_OUTPUTS/<identity>/``).
    """
    name = get_profile(profile).identity
    if "PAPERLIB_OUTPUTS" in os.environ:
        base = Path(os.environ["PAPERLIB_OUTPUTS"]) / name
        figs, tabs = base / "figures", base / "tables"
    elif name == "default":
        figs, tabs = REPO_ROOT / "figures", REPO_ROOT / "tables"
    else:
        figs, tabs = profile_dir(profile) / "figures", profile_dir(profile) / "tables"
    figs.mkdir(parents=True, exist_ok=True)
    tabs.mkdir(parents=True, exist_ok=True)
    return figs, tabs


def cache_dir() -> Path:
    """User cache for converted model weights: ``$PAPERLIB_CACHE`` or ``~/.cache/paperlib``."""
    return Path(os.environ.get("PAPERLIB_CACHE", Path.home() / ".cache" / "paperlib"))


def second_model_output_dirs(profile: str | Profile) -> tuple[Path, Path]:
    """(figures, tables) for the second-model notebook: a second-model profile (``gemma-3-270m``)
    publishes into its primary profile's directories (the committed ones for ``default``), because
    its outputs are part of that run; any other profile uses its own."""
    return output_dirs(primary_of(profile) or profile)
