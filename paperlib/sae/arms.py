"""Run names and the paper's grid: which SAEs a profile trains and how notebooks select them.

Names (stable, used as folder names under ``artifacts/<profile>/runs/``):

- ``solo`` (seed 0) and ``solo-seed{i}`` — the baseline and the independent noise-floor seeds;
- ``joint-l{λ₂}-s{σ²}`` — the MetaSAE grid, e.g. ``joint-l0.3-s1.0``;
- ``control`` — joint architecture with λ₂ = 0;
- ``ortho-g{γ}`` — the OrtSAE comparison arm (method.md §8);
- any of the above with a ``-seed{i}`` suffix for extra seeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from paperlib.config.io import read_json
from paperlib.config.paths import output_dirs
from paperlib.config.profiles import Profile, get_profile

ARMS = ("solo", "joint", "control", "ortho")


@dataclass(frozen=True)
class RunSpec:
    """One SAE training run: arm, penalty hyper-parameters and seed."""

    arm: str
    lambda2: float = 0.0
    sigma2: float = 1.0
    gamma: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise ValueError(f"unknown arm {self.arm!r}; valid arms: {', '.join(ARMS)}")
        if self.sigma2 <= 0:
            raise ValueError(f"sigma2 must be > 0, got {self.sigma2}")
        if self.lambda2 < 0 or self.gamma < 0:
            raise ValueError("lambda2 and gamma must be >= 0")

    @property
    def uses_meta(self) -> bool:
        """Joint architecture (meta SAE trained alongside): ``joint`` and ``control``."""
        return self.arm in ("joint", "control")

    @property
    def name(self) -> str:
        if self.arm == "solo":
            base = "solo"
        elif self.arm == "control":
            base = "control"
        elif self.arm == "joint":
            base = f"joint-l{self.lambda2:g}-s{self.sigma2:g}"
        else:
            base = f"ortho-g{self.gamma:g}"
        return base if self.seed == 0 else f"{base}-seed{self.seed}"

    @property
    def label(self) -> str:
        """Short human label for plots (λ₂, σ² spelled out)."""
        if self.arm == "joint":
            return f"λ₂={self.lambda2:g}, σ²={self.sigma2:g}"
        if self.arm == "ortho":
            return f"OrtSAE γ={self.gamma:g}"
        if self.arm == "control":
            return "λ₂=0 control"
        return "solo" if self.seed == 0 else f"solo seed {self.seed}"


_NUM = r"(\d+(?:\.\d+)?(?:e-?\d+)?)"
_PATTERNS = [
    (re.compile(rf"^joint-l{_NUM}-s{_NUM}$"),
     lambda m: dict(arm="joint", lambda2=float(m[1]), sigma2=float(m[2]))),
    (re.compile(rf"^ortho-g{_NUM}$"), lambda m: dict(arm="ortho", gamma=float(m[1]))),
    (re.compile(r"^solo$"), lambda m: dict(arm="solo")),
    (re.compile(r"^control$"), lambda m: dict(arm="control")),
]


def parse_run(name: str) -> RunSpec:
    """Inverse of :attr:`RunSpec.name`."""
    base, seed = name, 0
    m = re.match(r"^(.*)-seed(\d+)$", name)
    if m:
        base, seed = m[1], int(m[2])
    for pattern, build in _PATTERNS:
        hit = pattern.match(base)
        if hit:
            return RunSpec(seed=seed, **build(hit))
    raise ValueError(
        f"cannot parse run name {name!r}; expected solo, solo-seed1, control, "
        "joint-l0.3-s1.0 or ortho-g0.1 (optionally with -seedN)"
    )


def grid_runs(profile: str | Profile) -> list[RunSpec]:
    """Every run of the paper grid for a profile, baseline first.

    solo, the λ₂ × σ² joint grid, the λ₂ = 0 control, the ortho arm(s), then the extra
    independent solo seeds for the noise floor.
    """
    p = get_profile(profile)
    runs = [RunSpec("solo")]
    runs += [RunSpec("joint", lambda2=l2, sigma2=s2) for l2 in p.grid_lambda2 for s2 in p.grid_sigma2]
    runs.append(RunSpec("control"))
    runs += [RunSpec("ortho", gamma=g) for g in p.ortho_gamma]
    runs += [RunSpec("solo", seed=s) for s in range(1, p.n_noise_seeds + 1)]
    return runs


def select_runs(profile: str | Profile, sae: str, selected: str | None = None) -> list[RunSpec]:
    """Resolve a notebook's ``sae`` parameter to run specs.

    ``all`` → the whole grid; ``solo`` → the solo baseline; ``control`` → the control;
    ``joint`` → the selected joint configuration (``selected`` or, when None, the one recorded
    by notebook 04, falling back to the middle of the grid); otherwise a run name.
    Comma-separated lists are accepted.
    """
    p = get_profile(profile)
    out: list[RunSpec] = []
    for item in [s.strip() for s in sae.split(",") if s.strip()]:
        if item == "all":
            out += grid_runs(p)
        elif item == "joint":
            out.append(parse_run(selected or selected_joint(p)))
        else:
            out.append(parse_run(item))
    seen: dict[str, RunSpec] = {}
    for r in out:
        seen.setdefault(r.name, r)
    if not seen:
        raise ValueError("sae selection is empty; use all, solo, joint, control or a run name")
    return list(seen.values())


def selected_joint(profile: str | Profile) -> str:
    """Name of the selected joint configuration.

    Written by notebook 04 to ``<tables>/selected.json``; before that exists, the middle of the
    grid (the paper's choice is λ₂ = 0.3, σ² = 1.0 where available).
    """

    p = get_profile(profile)
    path = output_dirs(p)[1] / "selected.json"
    if path.exists():
        return read_json(path)["selected"]
    l2 = 0.3 if 0.3 in p.grid_lambda2 else p.grid_lambda2[len(p.grid_lambda2) // 2]
    s2 = 1.0 if 1.0 in p.grid_sigma2 else p.grid_sigma2[len(p.grid_sigma2) // 2]
    return RunSpec("joint", lambda2=l2, sigma2=s2).name


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [float(v) if "." in v or "e" in v else int(v) for v in value.replace(",", " ").split()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def training_plan(profile: str | Profile, sae: str = "all", lambda2=None, sigma2=None,
                  seeds=None) -> list[RunSpec]:
    """Runs notebook 01 should train.

    ``sae`` as in :func:`select_runs`. When ``lambda2`` and/or ``sigma2`` are given (a number,
    a list, or a comma/space separated string) the joint part of the selection is replaced by
    that grid (missing axis: the profile's grid). ``seeds`` (list or string) trains every
    selected run once per seed; the seed fixes both init and data order.
    """
    p = get_profile(profile)
    runs = select_runs(p, sae)
    l2s, s2s = _as_list(lambda2), _as_list(sigma2)
    if l2s or s2s:
        runs = [r for r in runs if r.arm != "joint"]
        runs += [RunSpec("joint", lambda2=float(a), sigma2=float(b))
                 for a in (l2s or p.grid_lambda2) for b in (s2s or p.grid_sigma2)]
    seed_list = [int(s) for s in _as_list(seeds)]
    if seed_list:
        runs = [RunSpec(r.arm, r.lambda2, r.sigma2, r.gamma, s) for r in runs for s in seed_list]
    out: dict[str, RunSpec] = {}
    for r in runs:
        out.setdefault(r.name, r)
    return list(out.values())
