"""Table 1 and the selected configuration, and how notebooks name the runs they want.

:func:`grid_table` assembles Table 1 (per configuration vs solo); the ``selection`` stage (per profile)
applies the selection rule to it and is what ``sae="joint"`` means everywhere. Its result lives under
the profile's artifacts (``stages/selection/result.json``); ``tables/selected.json`` is only a published
copy, never read back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from paperlib.config.io import read_json, write_json
from paperlib.config.profiles import Profile, get_profile
from paperlib.metrics.stats import noise_floor, welch
from paperlib.sae.arms import RunSpec, grid_runs, with_grid
from paperlib.stages import cache
from paperlib.stages.ce import ensure_ce
from paperlib.stages.cooccur import ensure_cooccurrence
from paperlib.stages.recon import ensure_reconstruction
from paperlib.stages.run import Run, as_runs

TABLE1_COLUMNS = [
    "run", "arm", "lambda2", "sigma2", "gamma", "seed", "n_pairs", "mean_abs_phi", "std_abs_phi",
    "delta_phi_pct", "delta_phi_ci_low_pct", "delta_phi_ci_high_pct", "l2", "delta_l2_pct", "fve",
    "l0", "ce_overhead_pct", "dead_latents", "welch_t", "welch_df", "welch_p", "welch_log10_p",
]


def table_runs(profile: str | Profile, runs: Iterable[Any] | None = None) -> list[Run]:
    """``runs`` (default: the profile's whole grid) as Runs, with solo first."""
    p = get_profile(profile)
    runs = as_runs(p, grid_runs(p) if runs is None else runs)
    solo = Run.of(p, "solo")
    return [solo] + [r for r in runs if r.name != solo.name]


def _row(run: Run, co: dict, rec: dict, ce: dict | None, base_co: dict, base_rec: dict) -> dict[str, Any]:
    base_phi, base_l2 = base_co["mean_abs_phi"], base_rec["mse"]
    spec = run.spec
    row: dict[str, Any] = {
        "run": run.name, "arm": spec.arm, **spec.hyper(), "seed": spec.seed,
        "n_pairs": co["n_pairs"], "mean_abs_phi": co["mean_abs_phi"], "std_abs_phi": co["std_abs_phi"],
        "delta_phi_pct": 100.0 * (co["mean_abs_phi"] - base_phi) / base_phi,
        "l2": rec["mse"], "delta_l2_pct": 100.0 * (rec["mse"] - base_l2) / base_l2, "fve": rec["fve"],
        "l0": rec["l0"], "ce_overhead_pct": ce["overhead_pct"] if ce else math.nan,
        "dead_latents": rec["n_dead"],
    }
    if run.name == "solo":
        row.update(delta_phi_ci_low_pct=math.nan, delta_phi_ci_high_pct=math.nan, welch_t=math.nan,
                   welch_df=math.nan, welch_p=math.nan, welch_log10_p=math.nan)
    else:
        w = welch(co["mean_abs_phi"], co["var_abs_phi"], co["n_pairs"],
                  base_co["mean_abs_phi"], base_co["var_abs_phi"], base_co["n_pairs"])
        row.update(delta_phi_ci_low_pct=100.0 * w.ci_low / base_phi,
                   delta_phi_ci_high_pct=100.0 * w.ci_high / base_phi,
                   welch_t=w.t, welch_df=w.df, welch_p=w.p, welch_log10_p=w.log10_p)
    return row


def noise_floor_phi(profile: str | Profile, runs: Iterable[Any] | None = None) -> dict[str, Any] | None:
    """Mean ± std of mean |φ| over the independent solo seeds among ``runs`` (solo + solo-seedN);
    None when fewer than two are available. Adds ``rel_std_pct`` (std as % of the mean)."""
    seeds = [r for r in table_runs(profile, runs) if r.arm == "solo"]
    if len(seeds) < 2:
        return None
    vals = [ensure_cooccurrence(r, progress=False)["mean_abs_phi"] for r in seeds]
    nf = noise_floor(vals).to_dict()
    nf.update(runs=[r.name for r in seeds], rel_std_pct=100.0 * nf["rel_std"])
    return nf


def grid_table(profile: str | Profile, runs: Iterable[Any] | None = None, *, with_ce: bool = True,
               progress: bool = True) -> pd.DataFrame:
    """Table 1: one row per configuration (solo first) with Δ% vs solo and Welch tests vs solo.

    ``delta_phi_pct = 100·(mean|φ| − solo)/solo``, ``delta_l2_pct`` likewise on the normalised-space MSE
    (thresholded encoder, co-occurrence range); Welch t/df/p of mean |φ| vs solo from the streamed
    statistics over all pairs i < j (descriptive precision only: pairs are not independent samples);
    CE overhead on the CE range (NaN when ``with_ce=False``). The noise floor over the solo seeds is in
    ``df.attrs["noise_floor"]``.
    """
    p = get_profile(profile)
    runs = table_runs(p, runs)
    co = {r.name: ensure_cooccurrence(r, progress=progress) for r in runs}
    rec = {r.name: ensure_reconstruction(r, progress=progress) for r in runs}
    ce = ensure_ce(p, runs, progress=progress) if with_ce else {}
    rows = [_row(r, co[r.name], rec[r.name], ce.get(r.name), co["solo"], rec["solo"]) for r in runs]
    df = pd.DataFrame(rows, columns=TABLE1_COLUMNS)
    df.attrs["noise_floor"] = noise_floor_phi(p, runs)
    return df


def select_configuration(table: pd.DataFrame, max_dl2_pct: float = 5.0) -> dict[str, Any]:
    """Selection rule: among ``arm == "joint"`` rows with ``delta_l2_pct <= max_dl2_pct``, the one with
    the most negative ``delta_phi_pct`` (largest mean |φ| reduction). When no joint configuration
    satisfies the bound, fall back to the joint configuration with the smallest ΔL2 (flagged)."""
    joint = table[table["arm"] == "joint"]
    if joint.empty:
        raise ValueError("the table has no joint configuration to select from")
    ok = joint[joint["delta_l2_pct"] <= max_dl2_pct]
    rule = f"min delta_phi_pct among joint configs with delta_l2_pct <= {max_dl2_pct:g}%"
    if ok.empty:
        best = joint.loc[joint["delta_l2_pct"].idxmin()]
        rule = f"fallback (no joint config within ΔL2 <= {max_dl2_pct:g}%): smallest delta_l2_pct"
    else:
        best = ok.loc[ok["delta_phi_pct"].idxmin()]
    return {"selected": str(best["run"]), "rule": rule, "max_dl2_pct": float(max_dl2_pct),
            "n_candidates": int(len(ok)), "n_joint": int(len(joint)),
            "delta_phi_pct": float(best["delta_phi_pct"]), "delta_l2_pct": float(best["delta_l2_pct"]),
            "mean_abs_phi": float(best["mean_abs_phi"]),
            "lambda2": float(best["lambda2"]), "sigma2": float(best["sigma2"])}


def _selection_settings(p: Profile) -> dict:
    runs = table_runs(p)
    return {"max_dl2_pct": p.max_dl2_pct,
            "inputs": {r.name: [cache.stage_key("cooccurrence", r), cache.stage_key("reconstruction", r)]
                       for r in runs}}


cache.declare("selection", __name__, _selection_settings, per_run=False)


def ensure_selection(profile: str | Profile, *, progress: bool = True) -> dict[str, Any]:
    """The selected joint configuration of the profile's grid (see :func:`select_configuration`)."""
    p = get_profile(profile)
    if cache.is_fresh("selection", profile=p):
        return read_json(cache.stage_dir("selection", profile=p) / "result.json")
    sel = select_configuration(grid_table(p, with_ce=False, progress=progress), p.max_dl2_pct)
    d = cache.begin("selection", profile=p)
    write_json(d / "result.json", sel)
    cache.commit("selection", profile=p)
    return sel


def selected_joint(profile: str | Profile) -> str:
    """Name of the selected joint configuration (computes the selection stage when stale)."""
    return ensure_selection(profile, progress=False)["selected"]


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
    """The paper's configuration (λ₂ = 0.3, σ² = 1) when the profile's grid has it, else the grid's middle."""
    p = get_profile(profile)
    l2 = 0.3 if 0.3 in p.grid_lambda2 else p.grid_lambda2[len(p.grid_lambda2) // 2]
    s2 = 1.0 if 1.0 in p.grid_sigma2 else p.grid_sigma2[len(p.grid_sigma2) // 2]
    return RunSpec("joint", lambda2=l2, sigma2=s2)


def publish_selection(profile: str | Profile, tables_dir: Path) -> Path:
    """Copy the selection stage's result to ``<tables_dir>/selected.json`` (a published copy only:
    nothing reads it back)."""
    path = Path(tables_dir) / "selected.json"
    write_json(path, ensure_selection(profile, progress=False))
    return path
