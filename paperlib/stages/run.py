"""The :class:`Run` handle: one trained SAE of one profile, named once, passed everywhere.

Build it at the edge (a notebook's set-up cell, a command line) with :meth:`Run.of` from a profile
and any accepted spelling of a run name (``"joint-l0.3-s1.0"`` and ``"joint-l0.3-s1"`` are the same
run); every stage function takes it. It knows its canonical name, its directory, its *key* (what
determines its weights: the trainer's code, the training settings of the profile, the arm and seed,
and the training activations) and, once trained, the fingerprint of its weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from paperlib.config import paths
from paperlib.config.profiles import Profile, get_profile
from paperlib.data.activations import cache_settings
from paperlib.sae.arms import RunSpec, parse_run
from paperlib.sae.trainer import TRAIN_PROFILE_FIELDS
from paperlib.stages.cache import code_digest, digest

TRAINER_MODULE = "paperlib.sae.trainer"


def range_settings(profile: Profile, range_name: str) -> dict[str, Any]:
    """What determines the activations of one token range (model, layer, corpus, ..., its row span)."""
    s = dict(cache_settings(profile))
    spans = s.pop("row_spans")
    if range_name not in spans:
        raise ValueError(f"unknown token range {range_name!r}; ranges: {', '.join(spans)}")
    s.pop("profile", None)
    return {**s, "range": range_name, "rows": spans[range_name]}


def acts_label(profile: Profile, range_name: str) -> str:
    """How error messages name one range of a profile's activation cache (the folder to delete)."""
    return f"range {range_name!r} of the activation cache {paths.activations_dir(profile)}"


def train_settings(profile: Profile) -> dict[str, Any]:
    """The profile fields that change a run's weights (``checkpoint_every`` does not)."""
    return {f: profile.setting(f) for f in TRAIN_PROFILE_FIELDS}


@dataclass(frozen=True)
class Run:
    """A profile and a run spec; see the module docstring."""

    profile: Profile
    spec: RunSpec

    @classmethod
    def of(cls, profile: str | Profile, run: str | RunSpec | Run) -> Run:
        """The run called ``run`` (a name in any accepted spelling, a RunSpec or a Run) of ``profile``."""
        p = get_profile(profile)
        if isinstance(run, Run):
            if run.profile != p:
                raise ValueError(f"run {run.name!r} belongs to profile {run.profile.name!r}, not {p.name!r}")
            return run
        return cls(p, parse_run(run))

    @property
    def name(self) -> str:
        """Canonical name (folder name, table row)."""
        return self.spec.name

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def arm(self) -> str:
        return self.spec.arm

    @property
    def dir(self) -> Path:
        return paths.run_dir(self.profile, self.name)

    @cached_property
    def key(self) -> str:
        """What determines this run's weights: trainer code, training settings, arm and seed, data."""
        return digest({"stage": "train", "code": code_digest(TRAINER_MODULE), "spec": dataclasses.asdict(self.spec),
                       "settings": train_settings(self.profile), "data": range_settings(self.profile, "train")})

    def weights_fingerprint(self) -> str:
        """SHA-256 (first 16 hex) of the trained primary SAE's files (``sae/``); error when untrained."""
        sae_dir = self.dir / "sae"
        files = sorted(f for f in sae_dir.glob("*") if f.is_file()) if sae_dir.is_dir() else []
        if not files:
            raise FileNotFoundError(f"run {self.name!r} of profile {self.profile.name!r} is not trained ({self.dir})")
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
        return h.hexdigest()[:16]

    def __str__(self) -> str:
        return f"{self.profile.name}/{self.name}"


def as_runs(profile: str | Profile, runs: Any) -> list[Run]:
    """A list of :class:`Run` from one name / RunSpec / Run or an iterable of them (duplicates dropped)."""
    items = [runs] if isinstance(runs, (str, RunSpec, Run)) else list(runs)
    out: dict[str, Run] = {}
    for item in items:
        r = Run.of(profile, item)
        out.setdefault(r.name, r)
    return list(out.values())
