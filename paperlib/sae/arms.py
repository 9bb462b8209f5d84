"""SAE arms: a registry of training variants, each one class that owns everything arm-specific.

An *arm* is a way of training the primary SAE. Each :class:`Arm` owns its name, the run-name
pattern it parses, its plot label, its hyper-parameters (as table columns), the runs it contributes
to a profile's grid and the loss term it adds during a primary step. Registered arms:

- ``solo`` — the primary BatchTopK SAE alone (``solo``, ``solo-seed2``);
- ``joint`` — the MetaSAE: a meta SAE is trained on the decoder rows and the primary pays
  λ₂ · mean_i exp(−‖W_dec[i] − Ŵ[i]‖²/σ²) (``joint-l0.3-s1``);
- ``control`` — the joint architecture and schedule with λ₂ = 0 (the penalty is only logged). With
  the same seed it is identical to solo by construction, which the tests check, so no grid trains it;
- ``randcritic`` — the same penalty against a *frozen, randomly initialised* meta SAE of the same
  size (re-drawn per seed): tells whether a trained critic matters beyond generic decoder repulsion
  (``randcritic-l0.3-s1``);
- ``ortho`` — OrtSAE-style orthogonality penalty γ · L_orth (``ortho-g0.1``; docs/method.md §8).

Run names are canonical: numbers are written with ``:g`` (``0.3``, ``1``), and every accepted spelling
(``joint-l0.3-s1.0``, ``joint-l0.30-s1``) parses to the same :class:`RunSpec`, whose :attr:`RunSpec.name`
is the canonical one. Adding an arm is one subclass of :class:`Arm` plus :func:`register`.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np
import torch

from paperlib.config.profiles import Profile, get_profile
from paperlib.sae.penalty import orthogonality_penalty, row_penalty_terms, row_quantiles

_NUM = r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
HYPER_COLUMNS = ("lambda2", "sigma2", "gamma")
"""Hyper-parameter columns every table carries (NaN where an arm does not have the parameter)."""


def format_number(x: float) -> str:
    """How a hyper-parameter is written in a run name: the shortest decimal that reads back to the same
    float (``0.3``, ``1``, ``1e-05``, ``0.1234567``); ``-0.0`` is written ``0``. Unlike ``:g`` (6 significant
    digits), every finite float survives the round trip name → :func:`parse_run`."""
    s = repr(float(x) + 0.0)
    return s[:-2] if s.endswith(".0") else s


@dataclass(frozen=True)
class RunSpec:
    """One SAE training run: arm, penalty hyper-parameters and seed (the seed fixes init and data order)."""

    arm: str
    lambda2: float = 0.0
    sigma2: float = 1.0
    gamma: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        arm = arm_of(self.arm)
        problems = field_problems(self, arm)
        if not problems:  # the arm's own checks need finite numbers
            problems = arm.problems(self)
        if problems:
            raise ValueError(f"invalid {self.arm} run: " + "; ".join(problems))

    @property
    def arm_def(self) -> Arm:
        return arm_of(self.arm)

    @property
    def uses_meta(self) -> bool:
        """A meta SAE exists during training (it may be trained or frozen)."""
        return self.arm_def.uses_meta

    @property
    def name(self) -> str:
        """Canonical run name (also the run's folder name)."""
        base = self.arm_def.base_name(self)
        return base if self.seed == 0 else f"{base}-seed{self.seed}"

    @property
    def label(self) -> str:
        """Short human label for plots (λ₂, σ² spelled out)."""
        return self.arm_def.label(self)

    def hyper(self) -> dict[str, float]:
        """``lambda2``, ``sigma2``, ``gamma``: the arm's values, NaN where the arm has no such parameter."""
        out = {c: math.nan for c in HYPER_COLUMNS}
        out.update(self.arm_def.hyper(self))
        return out

    def with_seed(self, seed: int) -> RunSpec:
        """This run at another seed (validated: ``1.5`` or ``-1`` fail, never truncated)."""
        return replace(self, seed=seed)


def field_problems(spec: RunSpec, arm: Arm) -> list[str]:
    """What makes ``spec`` unnameable whatever the arm: a hyper-parameter that is not a finite number, a
    value for a parameter ``arm`` does not have (its name could not carry it), a seed that is not a
    non-negative integer."""
    defaults = {f.name: f.default for f in fields(RunSpec)}
    out = []
    for name in HYPER_COLUMNS:
        v = getattr(spec, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            out.append(f"{name} must be a finite number, got {v!r}; use a decimal such as 0.3")
        elif name not in arm.hyper_names and v != defaults[name]:
            out.append(f"the {arm.name} arm has no {name} parameter, got {name}={v!r}; leave it at {defaults[name]}")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, numbers.Integral) or spec.seed < 0:
        out.append(f"seed must be a non-negative integer, got {spec.seed!r}; use 0, 1, 2, ...")
    return out


@dataclass
class PenaltyInputs:
    """What a primary step hands to :meth:`Arm.penalty`."""

    W_dec: torch.Tensor
    """The primary decoder [n, d] (requires grad)."""
    meta: Any
    """The meta SAE (``None`` for arms without one)."""
    step: int
    """Completed primary steps before this one."""
    n_chunks: int
    """Chunks of the orthogonality partition (``ortho``)."""
    scale: float = 1.0
    """Schedule multiplier of the penalty weight at this step (warm-up of the critic, ramp)."""


class Arm:
    """Base class of an arm. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    uses_meta: ClassVar[bool] = False
    """A meta SAE exists during training."""
    trains_meta: ClassVar[bool] = False
    """The meta SAE is trained (meta steps after every block of primary steps)."""
    scheduled_penalty: ClassVar[bool] = True
    """No loss term while the penalty schedule's factor is 0 (the weight is λ·factor, or there is no penalty):
    the primary SAE's first steps are then those of the solo run of the same seed (see
    :func:`paperlib.sae.trainer.train_shared_prefix`)."""
    pattern: ClassVar[str]
    """Regular expression of the base run name (without ``-seedN``)."""
    example: ClassVar[str]
    hyper_names: ClassVar[tuple[str, ...]] = ()
    """The :data:`HYPER_COLUMNS` this arm has."""

    def make(self, seed: int = 0, **values: float) -> RunSpec:
        """A spec of this arm from hyper-parameter values; values of parameters the arm lacks are ignored."""
        return RunSpec(self.name, seed=int(seed), **{k: float(v) for k, v in values.items() if k in self.hyper_names})

    def parse(self, base: str) -> dict[str, float] | None:
        """Hyper-parameters from a base run name, or ``None`` when the name is not this arm's."""
        m = re.fullmatch(self.pattern, base)
        return None if m is None else self.from_match(m)

    def from_match(self, m: re.Match) -> dict[str, float]:
        return {}

    def base_name(self, spec: RunSpec) -> str:
        return self.name

    def label(self, spec: RunSpec) -> str:
        return self.name

    def hyper(self, spec: RunSpec) -> dict[str, float]:
        return {k: getattr(spec, k) for k in self.hyper_names}

    def problems(self, spec: RunSpec) -> list[str]:
        """What is wrong with ``spec`` for this arm (empty when valid)."""
        return []

    def grid(self, profile: Profile) -> list[RunSpec]:
        """This arm's runs in the profile's grid (seed 0)."""
        return []

    def penalty(self, spec: RunSpec, inputs: PenaltyInputs) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The loss term added to L_SAE in a primary step (``None``: nothing) and values to log."""
        return None, {}


ARMS: dict[str, Arm] = {}
"""Registered arms by name, in registration order (the order of a profile's grid)."""


def register(arm: Arm) -> Arm:
    if arm.name in ARMS:
        raise ValueError(f"arm {arm.name!r} is already registered")
    ARMS[arm.name] = arm
    return arm


def arm_of(name: str) -> Arm:
    try:
        return ARMS[name]
    except KeyError:
        raise ValueError(f"unknown arm {name!r}; registered arms: {', '.join(ARMS)}") from None


ROW_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
"""Quantiles over decoder rows of the per-row penalty term p_i that joint-type arms log each step."""
_ROW_Q = np.array(ROW_QUANTILES)


def _meta_penalty(spec: RunSpec, inputs: PenaltyInputs, weight: float) -> tuple[torch.Tensor | None, dict]:
    """Decomposability penalty against the meta SAE's reconstruction of the rows (a constant), plus the
    distribution over rows of p_i = exp(−e_i/σ²) (does the penalty discriminate between rows?).

    The per-row terms are computed once (:func:`row_penalty_terms`) and serve both the loss and the log."""
    W_hat = inputs.meta.reconstruct_rows(inputs.W_dec)
    with torch.set_grad_enabled(weight > 0 and torch.is_grad_enabled()):
        p, err = row_penalty_terms(inputs.W_dec, W_hat, spec.sigma2)
        pen = p.mean()
    q = row_quantiles(p, _ROW_Q)
    term = weight * pen if weight > 0 else None
    logs = {"meta_err": float(err.detach().mean()), "penalty": float(pen.detach())}
    logs.update({f"p_row_q{round(100 * a):02d}": float(v) for a, v in zip(ROW_QUANTILES, q, strict=True)})
    return term, logs


def _sigma_problems(spec: RunSpec) -> list[str]:
    return [] if spec.sigma2 > 0 else [f"sigma2 must be > 0, got {spec.sigma2}; use a positive value such as 1"]


class SoloArm(Arm):
    name = "solo"
    pattern = r"solo"
    example = "solo"

    def label(self, spec: RunSpec) -> str:
        return "solo" if spec.seed == 0 else f"solo seed {spec.seed}"

    def grid(self, profile: Profile) -> list[RunSpec]:
        return [RunSpec("solo")]


class JointArm(Arm):
    name = "joint"
    uses_meta = True
    trains_meta = True
    pattern = rf"joint-l{_NUM}-s{_NUM}"
    example = "joint-l0.3-s1"
    hyper_names = ("lambda2", "sigma2")

    def from_match(self, m: re.Match) -> dict[str, float]:
        return {"lambda2": float(m[1]), "sigma2": float(m[2])}

    def base_name(self, spec: RunSpec) -> str:
        return f"{self.name}-l{format_number(spec.lambda2)}-s{format_number(spec.sigma2)}"

    def label(self, spec: RunSpec) -> str:
        return f"λ₂={spec.lambda2:g}, σ²={spec.sigma2:g}"

    def problems(self, spec: RunSpec) -> list[str]:
        bad = _sigma_problems(spec)
        if not spec.lambda2 > 0:
            bad.append(f"lambda2 must be > 0, got {spec.lambda2}; use a positive value such as 0.3 (λ₂ = 0 is "
                       "the 'control' arm)")
        return bad

    def grid(self, profile: Profile) -> list[RunSpec]:
        g = profile.grid
        return [RunSpec(self.name, lambda2=a, sigma2=b) for a in g.grid_lambda2 for b in g.grid_sigma2]

    def penalty(self, spec: RunSpec, inputs: PenaltyInputs) -> tuple[torch.Tensor | None, dict[str, float]]:
        return _meta_penalty(spec, inputs, spec.lambda2 * inputs.scale)


class ControlArm(Arm):
    """λ₂ = 0 with the joint schedule: with the same seed it is solo bitwise, so it is not in any grid (a unit
    test checks the identity); the random-critic arm is the reported control."""

    name = "control"
    uses_meta = True
    trains_meta = True
    pattern = r"control"
    example = "control"

    def label(self, spec: RunSpec) -> str:
        return "λ₂=0 control"

    def hyper(self, spec: RunSpec) -> dict[str, float]:
        return {"lambda2": 0.0}

    def problems(self, spec: RunSpec) -> list[str]:
        return [] if spec.lambda2 == 0 else [f"the control arm has lambda2 = 0, got {spec.lambda2}"]

    def penalty(self, spec: RunSpec, inputs: PenaltyInputs) -> tuple[torch.Tensor | None, dict[str, float]]:
        return _meta_penalty(spec, inputs, 0.0)


class RandomCriticArm(JointArm):
    """The joint penalty against a frozen random meta SAE: a control for "does training the critic matter"."""

    name = "randcritic"
    trains_meta = False
    pattern = rf"randcritic-l{_NUM}-s{_NUM}"
    example = "randcritic-l0.3-s1"

    def label(self, spec: RunSpec) -> str:
        return f"random critic λ₂={spec.lambda2:g}, σ²={spec.sigma2:g}"

    def grid(self, profile: Profile) -> list[RunSpec]:
        return []


class OrthoArm(Arm):
    name = "ortho"
    scheduled_penalty = False  # the orthogonality penalty acts from step 0
    pattern = rf"ortho-g{_NUM}"
    example = "ortho-g0.1"
    hyper_names = ("gamma",)

    def from_match(self, m: re.Match) -> dict[str, float]:
        return {"gamma": float(m[1])}

    def base_name(self, spec: RunSpec) -> str:
        return f"{self.name}-g{format_number(spec.gamma)}"

    def label(self, spec: RunSpec) -> str:
        return f"OrtSAE γ={spec.gamma:g}"

    def problems(self, spec: RunSpec) -> list[str]:
        return [] if spec.gamma >= 0 else [f"gamma must be >= 0, got {spec.gamma}; use a value such as 0.1"]

    def grid(self, profile: Profile) -> list[RunSpec]:
        return [RunSpec(self.name, gamma=g) for g in profile.grid.ortho_gamma]

    def penalty(self, spec: RunSpec, inputs: PenaltyInputs) -> tuple[torch.Tensor | None, dict[str, float]]:
        # a fresh random partition each step, a stateless function of (seed, step): resumable
        gen = torch.Generator().manual_seed(spec.seed * 7919 + inputs.step * 31 + 2)
        pen = orthogonality_penalty(inputs.W_dec, inputs.n_chunks, gen)
        return spec.gamma * pen, {"penalty": float(pen.detach())}


for _arm in (SoloArm(), JointArm(), ControlArm(), OrthoArm(), RandomCriticArm()):
    register(_arm)


def parse_run(name: str | RunSpec) -> RunSpec:
    """The :class:`RunSpec` of a run name (any accepted spelling); a RunSpec passes through."""
    if isinstance(name, RunSpec):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a run name must be a string or RunSpec, got {type(name).__name__}")
    base, seed = name.strip(), 0
    m = re.fullmatch(r"(.*)-seed(\d+)", base)
    if m:
        base, seed = m[1], int(m[2])
    for arm in ARMS.values():
        hyper = arm.parse(base)
        if hyper is not None:
            try:
                return RunSpec(arm.name, seed=seed, **hyper)
            except ValueError as e:
                raise ValueError(f"run name {name!r}: {e}") from None
    raise ValueError(
        f"cannot parse run name {name!r}; expected one of "
        + ", ".join(a.example for a in ARMS.values()) + " (optionally with -seedN)"
    )


def canonical_name(name: str | RunSpec) -> str:
    """The canonical spelling of a run name (``joint-l0.3-s1.0`` → ``joint-l0.3-s1``)."""
    return parse_run(name).name


def primary_runs(profile: str | Profile) -> dict[str, list[RunSpec]]:
    """The paired-seed primary comparison: for each arm of ``profile.grid.primary_arms``, its runs at seeds
    0..K−1 (joint-type arms at the paper's configuration)."""
    p = get_profile(profile)
    values = {"lambda2": p.grid.paper_lambda2, "sigma2": p.grid.paper_sigma2}
    return {a: [arm_of(a).make(seed=s, **values) for s in range(p.grid.primary_seeds)] for a in p.grid.primary_arms}


def grid_runs(profile: str | Profile) -> list[RunSpec]:
    """Every run a profile trains, baseline first: each registered arm's exploratory :meth:`Arm.grid`
    (seed 0, in registration order: solo, the λ₂ × σ² joint grid, the ortho arm(s), ...), then the
    primary comparison's other seeds (:func:`primary_runs`), then ``n_noise_seeds`` extra solo seeds."""
    p = get_profile(profile)
    runs = [spec for arm in ARMS.values() for spec in arm.grid(p)]
    runs += [spec for specs in primary_runs(p).values() for spec in specs]
    runs += [RunSpec("solo", seed=s) for s in range(1, p.grid.n_noise_seeds + 1)]
    out: dict[str, RunSpec] = {}
    for r in runs:
        out.setdefault(r.name, r)
    return list(out.values())


def _tokens(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return value.replace(",", " ").split()
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _bad_value(name: str, value, why: str, example: str) -> ValueError:
    return ValueError(f"parameter {name}={value!r}: {why}; give {example}")


def _to_float(tok) -> float | None:
    if isinstance(tok, bool):
        return None
    try:
        return float(tok)
    except (TypeError, ValueError):
        return None


def parse_numbers(name: str, value) -> list[float]:
    """Finite numbers from a parameter (a number, a list or a comma/space separated string such as
    ``"0.1, 0.3"``); ``None`` or ``""`` gives ``[]``. Anything else fails naming ``name``."""
    out = []
    for tok in _tokens(value):
        x = _to_float(tok)
        if x is None:
            raise _bad_value(name, value, f"{tok!r} is not a number", f'numbers such as {name}="0.1,0.3"')
        if not math.isfinite(x):
            raise _bad_value(name, value, f"{tok!r} is not a finite number", f'finite numbers such as {name}="0.1,0.3"')
        out.append(x)
    return out


def parse_positive(name: str, value) -> list[float]:
    """:func:`parse_numbers`, every value > 0 (λ₂ and σ² of a grid)."""
    vals = parse_numbers(name, value)
    if any(v <= 0 for v in vals):
        raise _bad_value(name, value, "every value must be > 0", f'positive numbers such as {name}="0.3,1"')
    return vals


def parse_seeds(name: str, value) -> list[int]:
    """Non-negative integer seeds from a parameter (as :func:`parse_numbers`); ``1.5`` or ``-1`` fail
    naming ``name`` instead of being truncated."""
    out = []
    for x in parse_numbers(name, value):
        if not x.is_integer() or x < 0:
            raise _bad_value(name, value, f"{x:g} is not a non-negative whole number",
                             f'whole numbers >= 0 such as {name}="0,1,2"')
        out.append(int(x))
    return out


def with_grid(runs: list[RunSpec], profile: Profile, lambda2=None, sigma2=None, seeds=None) -> list[RunSpec]:
    """Replace the joint runs by the λ₂ × σ² grid given (number, list or comma/space separated string;
    a missing axis takes the profile's), then repeat every run once per seed of ``seeds``."""
    l2s, s2s = parse_positive("lambda2", lambda2), parse_positive("sigma2", sigma2)
    if l2s or s2s:
        runs = [r for r in runs if r.arm != "joint"]
        runs += [RunSpec("joint", lambda2=float(a), sigma2=float(b))
                 for a in (l2s or profile.grid.grid_lambda2) for b in (s2s or profile.grid.grid_sigma2)]
    seed_list = parse_seeds("seeds", seeds)
    if seed_list:
        runs = [r.with_seed(s) for r in runs for s in seed_list]
    out: dict[str, RunSpec] = {}
    for r in runs:
        out.setdefault(r.name, r)
    return list(out.values())
