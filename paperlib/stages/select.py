"""Table 1 and the selected configuration, and how notebooks name the runs they want.

:func:`grid_table` assembles Table 1 (per configuration vs solo); the ``selection`` stage (per profile)
applies the selection rule to it and is what ``sae="joint"`` means everywhere. Its result lives under
the profile's artifacts (``stages/selection/result.json``); ``tables/selected.json`` is only a published
copy, never read back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paperlib.config.io import read_json, write_json
from paperlib.config.profiles import Profile, get_profile
from paperlib.metrics.stats import holm, noise_floor, prediction_test, welch
from paperlib.sae.arms import RunSpec, arm_of, grid_runs, parse_run, with_grid
from paperlib.stages import cache
from paperlib.stages.ce import RunCE, ensure_ce
from paperlib.stages.compare import convergence_table
from paperlib.stages.cooccur import CooccurrenceResult, ensure_cooccurrence
from paperlib.stages.recon import ReconstructionResult, ensure_reconstruction
from paperlib.stages.run import Run, as_runs
from paperlib.stages.train import ensure_trained

TABLE1_COLUMNS = [
    "run", "arm", "lambda2", "sigma2", "gamma", "seed", "baseline", "n_pairs", "mean_abs_phi", "delta_phi_pct",
    "mean_abs_phi_alive", "delta_phi_alive_pct", "excess_abs_phi", "delta_excess_pct", "frac_phi_gt_tail",
    "mean_phi_expected5", "delta_phi_half1_pct", "delta_phi_half2_pct", "l2", "delta_l2_pct", "fve", "l0",
    "ce_overhead_pct", "dead_latents", "dead_on_tokens", "n_alive", "converged", "l2_change_last20",
    "welch_t", "welch_df", "welch_p", "welch_log10_p", "delta_phi_ci_low_pct", "delta_phi_ci_high_pct",
    "p_vs_solo_seeds", "p_holm",
]
"""Table 1. Δ columns are relative to the solo run of the *same seed* (``baseline``; its pair), in %.
``delta_phi_half1_pct`` / ``delta_phi_half2_pct``: Δ mean |φ| on the first / second half of the
co-occurrence tokens (the selection uses the first, the report the second). Welch columns compare the
two SAEs' pair distributions and are descriptive only: pairs are not independent samples.
``p_vs_solo_seeds``: for each exploratory grid configuration (:func:`grid_configurations`), its mean |φ| against
the independent solo seeds' (prediction-interval t test, K − 1 df; :func:`paperlib.metrics.stats.prediction_test`):
can one run of it be told apart from run-to-run noise? ``p_holm``: the same p Holm-adjusted over the grid
configurations of the table (NaN for other rows and when fewer than two solo seeds are in the table)."""


def table_runs(profile: str | Profile, runs: Iterable[Any] | None = None) -> list[Run]:
    """``runs`` (default: every run the profile trains) as Runs, with solo (seed 0) first."""
    p = get_profile(profile)
    runs = as_runs(p, grid_runs(p) if runs is None else runs)
    solo = Run.of(p, "solo")
    return [solo] + [r for r in runs if r.name != solo.name]


def _pct(a: float, b: float) -> float:
    return 100.0 * (a - b) / b if b else math.nan


def _row(run: Run, base: Run, co: CooccurrenceResult, rec: ReconstructionResult, ce: RunCE | None, conv: dict,
         base_co: CooccurrenceResult, base_rec: ReconstructionResult) -> dict[str, Any]:
    spec, rb, bb, ca, cb = run.spec, co.robust, base_co.robust, co.all, base_co.all
    row: dict[str, Any] = {
        "run": run.name, "arm": spec.arm, **spec.hyper(), "seed": spec.seed, "baseline": base.name,
        "n_pairs": ca.n_pairs, "mean_abs_phi": ca.mean_abs_phi,
        "delta_phi_pct": _pct(ca.mean_abs_phi, cb.mean_abs_phi),
        "mean_abs_phi_alive": rb.mean_abs_phi_alive,
        "delta_phi_alive_pct": _pct(rb.mean_abs_phi_alive, bb.mean_abs_phi_alive),
        "excess_abs_phi": rb.excess_abs_phi, "delta_excess_pct": _pct(rb.excess_abs_phi, bb.excess_abs_phi),
        "frac_phi_gt_tail": rb.frac_phi_gt_tail, "mean_phi_expected5": rb.mean_phi_expected5,
        "delta_phi_half1_pct": _pct(co.halves[0].mean_abs_phi, base_co.halves[0].mean_abs_phi),
        "delta_phi_half2_pct": _pct(co.halves[1].mean_abs_phi, base_co.halves[1].mean_abs_phi),
        "l2": rec.mse, "delta_l2_pct": _pct(rec.mse, base_rec.mse), "fve": rec.thresholded.fve,
        "l0": rec.thresholded.l0, "ce_overhead_pct": ce.overhead_pct if ce else math.nan,
        "dead_latents": rec.n_dead, "dead_on_tokens": rec.firing_n_tokens,
        "n_alive": rb.n_alive, "converged": bool(conv["ok"]), "l2_change_last20": conv["l2_change_last20"],
    }
    if run.name == base.name:
        row.update(delta_phi_ci_low_pct=math.nan, delta_phi_ci_high_pct=math.nan, welch_t=math.nan,
                   welch_df=math.nan, welch_p=math.nan, welch_log10_p=math.nan)
    else:
        w = welch(ca.mean_abs_phi, ca.var_abs_phi, ca.n_pairs, cb.mean_abs_phi, cb.var_abs_phi, cb.n_pairs)
        row.update(delta_phi_ci_low_pct=100.0 * w.ci_low / cb.mean_abs_phi,
                   delta_phi_ci_high_pct=100.0 * w.ci_high / cb.mean_abs_phi,
                   welch_t=w.t, welch_df=w.df, welch_p=w.p, welch_log10_p=w.log10_p)
    return row


def baseline_of(run: Run, names: set[str]) -> Run:
    """The run's paired solo run (same seed) when it is in the table, else solo seed 0."""
    pair = Run(run.profile, RunSpec("solo", seed=run.spec.seed))
    return pair if pair.name in names else Run.of(run.profile, "solo")


def noise_floor_phi(profile: str | Profile, runs: Iterable[Any] | None = None) -> dict[str, Any] | None:
    """Mean ± std of mean |φ| over the independent solo seeds among ``runs`` (solo + solo-seedN);
    None when fewer than two are available. Adds ``rel_std_pct`` (std as % of the mean) and the 95%
    prediction interval of a new solo seed's mean |φ| in % of solo seed 0's (``pi_low_pct``, ``pi_high_pct``,
    ``seed_mean_pct``): the band a configuration must leave to differ from run-to-run noise."""
    seeds = [r for r in table_runs(profile, runs) if r.arm == "solo"]
    if len(seeds) < 2:
        return None
    vals = [ensure_cooccurrence(r, progress=False).all.mean_abs_phi for r in seeds]
    nf = noise_floor(vals).to_dict()
    pct = 100.0 * (np.asarray(vals) - vals[0]) / vals[0]
    pi = prediction_test(pct[0], pct)
    nf.update(runs=[r.name for r in seeds], rel_std_pct=100.0 * nf["rel_std"], seed_mean_pct=pi.mean,
              pi_low_pct=pi.pi_low, pi_high_pct=pi.pi_high)
    return nf


def grid_configurations(profile: str | Profile, table: pd.DataFrame) -> pd.Series:
    """Which rows of a Table 1 are exploratory grid configurations: seed 0 of an arm, other than solo, that
    contributes to the profile's exploratory grid (``Arm.grid`` non-empty: the λ₂ × σ² joint grid and OrtSAE).
    The primary comparison's other arms and seeds, the λ₂ = 0 control and the solo seeds are not (boolean
    Series aligned with ``table``)."""
    p = get_profile(profile)
    arms = {a for a in set(table["arm"]) if a != "solo" and arm_of(a).grid(p)}
    return table["arm"].isin(arms) & (table["seed"] == 0)


def grid_noise_tests(profile: str | Profile, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``p_vs_solo_seeds`` (each grid configuration's mean |φ| against the table's solo seeds,
    :func:`paperlib.metrics.stats.prediction_test`) and ``p_holm`` (Holm over those configurations,
    :func:`paperlib.metrics.stats.holm`). Why one seed's mean |φ| and not Δ%: for seed-0 configurations
    Δ% = 100·(x − solo)/solo is an affine map of x with solo seed 0 as the fixed origin, and t is invariant to
    it, so the test is the same on either scale."""
    out = table.copy()
    out["p_vs_solo_seeds"] = math.nan
    solo = out.loc[out["arm"] == "solo", "mean_abs_phi"].astype(float).to_numpy()
    family = grid_configurations(profile, out)
    if solo.size >= 2 and family.any():
        out.loc[family, "p_vs_solo_seeds"] = [prediction_test(x, solo).p
                                              for x in out.loc[family, "mean_abs_phi"].astype(float)]
    out["p_holm"] = holm(out["p_vs_solo_seeds"].to_numpy())
    return out


def grid_table(profile: str | Profile, runs: Iterable[Any] | None = None, *, with_ce: bool = True,
               progress: bool = True) -> pd.DataFrame:
    """Table 1 (:data:`TABLE1_COLUMNS`): one row per run (solo first), Δ% against its paired solo run,
    rate-robust statistics, convergence flag, CE overhead (seed-0 runs only; NaN for the other seeds and when
    ``with_ce=False``), the descriptive Welch test over pairs, and each grid configuration's p against the
    solo seeds with its Holm adjustment over the grid (:func:`grid_noise_tests`). The noise floor over the
    solo seeds is in ``df.attrs["noise_floor"]``."""
    p = get_profile(profile)
    runs = table_runs(p, runs)
    names = {r.name for r in runs}
    co = {r.name: ensure_cooccurrence(r, progress=progress) for r in runs}
    rec = {r.name: ensure_reconstruction(r, progress=progress) for r in runs}
    conv = convergence_table(runs).set_index("run")
    ce = ensure_ce(p, [r for r in runs if r.spec.seed == 0], progress=progress) if with_ce else {}
    rows = []
    for r in runs:
        b = baseline_of(r, names)
        rows.append(_row(r, b, co[r.name], rec[r.name], ce.get(r.name), conv.loc[r.name].to_dict(), co[b.name],
                         rec[b.name]))
    df = grid_noise_tests(p, pd.DataFrame(rows, columns=TABLE1_COLUMNS))
    df.attrs["noise_floor"] = noise_floor_phi(p, runs)
    return df


@dataclass(frozen=True)
class Selection:
    """The exploratory selection (:func:`select_configuration`)."""

    selected: str
    rule: str
    max_dl2_pct: float
    n_candidates: int
    n_joint: int
    delta_phi_selection_half_pct: float
    delta_phi_heldout_pct: float
    delta_phi_pct: float
    delta_l2_pct: float
    mean_abs_phi: float
    lambda2: float
    sigma2: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Selection:
        return cls(**d)


def select_configuration(table: pd.DataFrame, max_dl2_pct: float = 10.0) -> Selection:
    """Selection rule (exploratory): among seed-0 ``joint`` rows with ``delta_l2_pct <= max_dl2_pct``, the one
    with the most negative Δ mean |φ| on the *first half* of the co-occurrence tokens; its Δ on the second
    half (``delta_phi_heldout_pct``) is the number to report. When no joint configuration satisfies the
    bound, the one with the smallest ΔL2 (flagged)."""
    joint = table[(table["arm"] == "joint") & (table["seed"] == 0)]
    if joint.empty:
        raise ValueError("the table has no seed-0 joint configuration to select from")
    ok = joint[joint["delta_l2_pct"] <= max_dl2_pct]
    rule = f"min Δ mean |φ| on the first token half among joint configs with ΔL2 <= {max_dl2_pct:g}%"
    if ok.empty:
        best = joint.loc[joint["delta_l2_pct"].idxmin()]
        rule = f"fallback (no joint config within ΔL2 <= {max_dl2_pct:g}%): smallest ΔL2"
    else:
        best = ok.loc[ok["delta_phi_half1_pct"].idxmin()]
    return Selection(selected=str(best["run"]), rule=rule, max_dl2_pct=float(max_dl2_pct),
                     n_candidates=int(len(ok)), n_joint=int(len(joint)),
                     delta_phi_selection_half_pct=float(best["delta_phi_half1_pct"]),
                     delta_phi_heldout_pct=float(best["delta_phi_half2_pct"]),
                     delta_phi_pct=float(best["delta_phi_pct"]), delta_l2_pct=float(best["delta_l2_pct"]),
                     mean_abs_phi=float(best["mean_abs_phi"]), lambda2=float(best["lambda2"]),
                     sigma2=float(best["sigma2"]))


def _selection_settings(p: Profile) -> dict:
    runs = [r for r in table_runs(p) if r.spec.seed == 0]
    return {"max_dl2_pct": p.grid.max_dl2_pct,
            "inputs": {r.name: [cache.stage_key("cooccurrence", r), cache.stage_key("reconstruction", r)]
                       for r in runs}}


cache.declare("selection", __name__, _selection_settings, per_run=False)


def selectable_runs(profile: str | Profile) -> list[str]:
    """Names the selection may name: the seed-0 joint configurations of the profile's grid."""
    return [r.name for r in table_runs(profile) if r.arm == "joint" and r.spec.seed == 0]


def selection_problem(selected: Any, profile: str | Profile) -> str | None:
    """What is wrong with ``selected`` as the profile's selected joint configuration (None when fine)."""
    allowed = selectable_runs(profile)
    try:
        name = parse_run(selected).name
    except (TypeError, ValueError) as e:
        return f"it names {selected!r}, which is not a run name ({e})"
    if name not in allowed:
        return (f"it names {name!r}, which is not a seed-0 joint configuration of profile "
                f"{get_profile(profile).name!r}'s grid ({', '.join(allowed)})")
    return None


def load_selection(path: Path, profile: str | Profile) -> Selection:
    """A stored :class:`Selection`, checked against the profile's grid: a file naming solo, a run outside the
    grid or no run at all fails with one error naming the file, what is wrong and what to do."""
    try:
        sel = Selection.from_json(read_json(path))
        problem = selection_problem(sel.selected, profile)
    except (OSError, ValueError, TypeError, KeyError) as e:
        sel, problem = None, f"it cannot be read as a selection ({type(e).__name__}: {e})"
    if problem is not None:
        example = (selectable_runs(profile) or ["joint-l0.3-s1"])[0]
        raise ValueError(f"{path}: {problem}. Delete {path} so the selection is recomputed from the grid's "
                         f"results, or name the joint run you want instead of 'joint' (e.g. sae=\"{example}\").")
    return sel


def ensure_selection(profile: str | Profile, *, progress: bool = True) -> Selection:
    """The selected joint configuration of the profile's grid (see :func:`select_configuration`); a stored
    result naming anything else is refused (:func:`load_selection`)."""
    p = get_profile(profile)
    return cache.ensure("selection", None, lambda d: load_selection(d / "result.json", p),
                        lambda: _selection(p, progress), profile=p)


def _selection(p: Profile, progress: bool) -> Selection:
    runs = [r for r in table_runs(p) if r.spec.seed == 0]
    ensure_trained(p, runs, progress=progress)  # a notebook asking for "joint" runs standalone
    sel = select_configuration(grid_table(p, runs, with_ce=False, progress=progress), p.grid.max_dl2_pct)
    d = cache.begin("selection", profile=p)
    write_json(d / "result.json", sel.to_json())
    cache.commit("selection", profile=p)
    return sel


def selected_joint(profile: str | Profile) -> str:
    """Name of the selected joint configuration (computes the selection stage when stale)."""
    return ensure_selection(profile, progress=False).selected


def select_runs(profile: str | Profile, sae: str) -> list[Run]:
    """Resolve a notebook's ``sae`` parameter: ``all`` → the grid; ``joint`` → the selected joint
    configuration; otherwise run names (any spelling). Comma-separated lists are accepted."""
    p = get_profile(profile)
    out: list[Any] = []
    for item in [s.strip() for s in str(sae).split(",") if s.strip()]:
        if item == "all":
            out += grid_runs(p)
        elif item == "joint":
            out.append(selected_joint(p))
        else:
            out.append(item)
    if not out:
        raise ValueError("sae selection is empty; use all, solo, joint, control or a run name")
    return as_runs(p, out)


def training_plan(profile: str | Profile, sae: str = "all", lambda2=None, sigma2=None, seeds=None) -> list[Run]:
    """Runs notebook 01 trains: ``sae`` as in :func:`select_runs`, except that ``joint`` here means the
    profile's default configuration (the selection needs trained runs). ``lambda2`` / ``sigma2`` replace
    the joint part by that grid and ``seeds`` repeats every run per seed
    (:func:`paperlib.sae.arms.with_grid`)."""
    p = get_profile(profile)
    items = [s.strip() for s in str(sae).split(",") if s.strip()]
    specs: list[RunSpec] = []
    for item in items:
        if item == "all":
            specs += grid_runs(p)
        elif item == "joint":
            specs.append(paper_joint(p))
        else:
            specs.append(Run.of(p, item).spec)
    return as_runs(p, with_grid(specs, p, lambda2, sigma2, seeds))


def paper_joint(profile: str | Profile) -> RunSpec:
    """The preregistered configuration of the primary comparison (``paper_lambda2``, ``paper_sigma2``)."""
    p = get_profile(profile)
    return RunSpec("joint", lambda2=p.grid.paper_lambda2, sigma2=p.grid.paper_sigma2)


def publish_selection(profile: str | Profile, tables_dir: Path) -> Path:
    """Copy the selection stage's result to ``<tables_dir>/selected.json`` (a published copy only:
    nothing reads it back)."""
    path = Path(tables_dir) / "selected.json"
    write_json(path, ensure_selection(profile, progress=False).to_json())
    return path
