"""Cached per-run evaluation stages and the paper's Table 1 (method.md §3.1–3.4, §4).

Every stage stores its result as files in ``paths.run_dir(profile, name)/eval/`` (atomic writes,
JSON / safetensors / npz) together with a *key*: the run's weights fingerprint (mtime and size of
``done.json`` and of every file in ``sae/``) plus the stage's settings (token range size, batch
size, ...). A stage is recomputed only when its files are missing or its key changed, e.g. after
a run is retrained.

Token ranges (disjoint, method.md §2):

- calibration thresholds (:func:`ensure_calibration`): the ``calibration`` range;
- co-occurrence φ (:func:`ensure_cooccurrence`) and reconstruction metrics
  (:func:`ensure_reconstruction`): the ``cooccurrence`` range (fresh tokens, larger than the CE
  range), per-token thresholded encoder;
- CE (:func:`ensure_ce`): the ``ce`` range's token rows, SAE spliced with the thresholds; the
  BatchTopK splice only for solo and the selected joint configuration; clean and zero-ablated
  losses once per profile (``<profile>/eval/ce_reference.json``).

:func:`grid_table` assembles Table 1 (per configuration vs solo) and :func:`select_configuration`
applies the selection rule (best Δ mean |φ| among joint configurations with ΔL2 within the bound).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from paperlib.config import paths
from paperlib.config.io import atomic_path, read_json, write_json
from paperlib.config.profiles import Profile, get_profile
from paperlib.data.activations import load_cache
from paperlib.data.lm import load_lm
from paperlib.metrics.calibration import Calibration, calibrate_sae
from paperlib.metrics.ce import ce_losses, loss_recovered, overhead_pct, sae_splice, zero_splice
from paperlib.metrics.cooccurrence import SparseFiring, firing_from_sae, within_stats_blockwise
from paperlib.metrics.reconstruction import RATE_LOG10_EDGES, firing_summary, reconstruction_metrics
from paperlib.metrics.stats import noise_floor, welch
from paperlib.sae.arms import RunSpec, grid_runs, parse_run, selected_joint
from paperlib.sae.trainer import is_done, load_run

__all__ = [
    "TABLE1_COLUMNS",
    "ensure_calibration",
    "ensure_ce",
    "ensure_cooccurrence",
    "ensure_reconstruction",
    "eval_dir",
    "grid_table",
    "load_firing",
    "noise_floor_phi",
    "run_key",
    "select_configuration",
    "table_names",
    "write_selection",
]

STAGE_VERSION = 1
EXACT_CALIBRATION_MAX_VALUES = 50_000_000
"""Use exact EER thresholds when calibration tokens × k stays below this; else fine histograms."""


# ----------------------------------------------------------------------------------------------
# keys and cache helpers
# ----------------------------------------------------------------------------------------------
def eval_dir(profile: str | Profile, name: str) -> Path:
    """``<run_dir>/eval``: where the evaluation stages of run ``name`` live."""
    return paths.run_dir(profile, name) / "eval"


def run_key(profile: str | Profile, name: str) -> str:
    """Fingerprint of a trained run's weights (mtime_ns and size of done.json and sae/* files)."""
    rdir = paths.run_dir(profile, name)
    if not is_done(rdir):
        raise FileNotFoundError(f"run {name!r} is not trained ({rdir}); call trainer.ensure_trained first")
    files = [rdir / "done.json"] + sorted(p for p in (rdir / "sae").glob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_mtime_ns}:{st.st_size};".encode())
    return h.hexdigest()[:16]


def _stage_key(profile: Profile, name: str, **settings: Any) -> dict[str, Any]:
    return {"version": STAGE_VERSION, "run": run_key(profile, name), **settings}


def _fresh(key_path: Path, key: dict[str, Any], *files: Path) -> bool:
    if not key_path.exists() or not all(f.exists() for f in files):
        return False
    try:
        return read_json(key_path).get("key") == key
    except (ValueError, OSError):
        return False


def _cache(profile: Profile):

    return load_cache(profile)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


# ----------------------------------------------------------------------------------------------
# calibration
# ----------------------------------------------------------------------------------------------
def ensure_calibration(profile: str | Profile, name: str, *, progress: bool = True) -> Calibration:
    """EER thresholds of run ``name`` on the calibration token range (cached in ``eval/calibration``)."""
    p = get_profile(profile)
    d = eval_dir(p, name) / "calibration"
    n_tok = int(p.tokens.calibration)
    mode = p.calibration_mode
    if mode == "auto":
        mode = "exact" if n_tok * p.k <= EXACT_CALIBRATION_MAX_VALUES else "hist"
    key = _stage_key(p, name, stage="calibration", range="calibration", n_tokens=n_tok,
                     batch_size=p.batch_size, mode=mode)
    if _fresh(d / "key.json", key, d / "thresholds.safetensors", d / "calibration.json"):
        return Calibration.load(d)
    sae = load_run(p, name)
    acts = _cache(p).acts("calibration")
    cal = calibrate_sae(sae, acts, batch_size=p.batch_size, mode=mode, progress=progress)
    cal.meta.update({"run": name, "range": "calibration"})
    cal.save(d)
    write_json(d / "key.json", {"key": key})
    return cal


def _thresholds(profile: Profile, name: str, progress: bool) -> torch.Tensor:
    cal = ensure_calibration(profile, name, progress=progress)
    return torch.as_tensor(np.asarray(cal.thresholds), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# co-occurrence
# ----------------------------------------------------------------------------------------------
def ensure_cooccurrence(profile: str | Profile, name: str, *, progress: bool = True) -> dict[str, Any]:
    """Within-SAE φ statistics of run ``name`` on the co-occurrence range (thresholded firing).

    Returns the :class:`~paperlib.metrics.cooccurrence.WithinStats` fields (``n_pairs``, ``mean_abs_phi``,
    ``var_abs_phi``, ``sum_abs``, ``sumsq`` (the Welch sums), ``frac_negative``, ``median_phi``,
    ``max_phi``, ``n_dead``, ``n_always_on``, the fixed-bin φ histogram ``hist_edges`` /
    ``hist_counts`` on [−1, 1], identical for all runs) plus ``range`` and ``run``. The firing
    matrix is stored as ``eval/firing.npz`` (scipy sparse; :func:`load_firing`) for cross-SAE φ.
    """
    p = get_profile(profile)
    d = eval_dir(p, name)
    key = _stage_key(p, name, stage="cooccurrence", range="cooccurrence",
                     n_tokens=int(p.tokens.cooccurrence), calibration=_cal_key(p, name, progress))
    out, firing_path, key_path = d / "cooccurrence.json", d / "firing.npz", d / "cooccurrence.key.json"
    if _fresh(key_path, key, out, firing_path):
        return read_json(out)
    sae = load_run(p, name)
    theta = _thresholds(p, name, progress)
    acts = _cache(p).acts("cooccurrence")
    fired = firing_from_sae(sae, acts, theta, batch_size=p.batch_size, progress=progress)
    with atomic_path(firing_path) as tmp, open(tmp, "wb") as fh:
        sp.save_npz(fh, fired.tocsr())
    ws = within_stats_blockwise(SparseFiring.from_fired(fired), progress=progress)
    res = {"run": name, "range": "cooccurrence", **ws.to_dict(with_hist=True)}
    write_json(out, res)
    write_json(key_path, {"key": key})
    return res


def _cal_key(p: Profile, name: str, progress: bool) -> str:
    """Key of the calibration a downstream stage used (ensures calibration exists): a hash of the
    whole calibration key (run weights, token range, mode), so new thresholds invalidate φ, L2, CE."""
    ensure_calibration(p, name, progress=progress)
    key = read_json(eval_dir(p, name) / "calibration" / "key.json")["key"]
    return hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:16]


def load_firing(profile: str | Profile, name: str) -> sp.csr_matrix:
    """The binary firing matrix [T, n] of run ``name`` on the co-occurrence range (CSR, bool)."""
    ensure_cooccurrence(profile, name, progress=False)
    return sp.load_npz(eval_dir(profile, name) / "firing.npz").tocsr()


# ----------------------------------------------------------------------------------------------
# reconstruction
# ----------------------------------------------------------------------------------------------
def ensure_reconstruction(profile: str | Profile, name: str, *, progress: bool = True) -> dict[str, Any]:
    """Reconstruction metrics of run ``name`` on the **co-occurrence** range (its first
    ``profile.recon_tokens`` tokens when set) with the calibrated per-token thresholds: ``mse``
    (L2 in the normalised space), ``fve``, ``l0``, ``n_dead``, firing-rate
    quantiles, norm statistics (see :class:`paperlib.metrics.reconstruction.ReconMetrics`); the
    ``batchtopk`` sub-dict has the same metrics with the training-time BatchTopK encoder, all of
    them (dead latents and firing rates included) over its ``n_tokens_evaluated`` tokens only.
    Per-feature ``firing_counts`` and the log10 firing-rate histogram (``rate_hist_counts`` over
    ``rate_hist_edges``) are included as lists. Dead latents, firing counts and rate statistics
    always cover the whole range (from the co-occurrence firing matrix when a subset is used).
    """

    p = get_profile(profile)
    d = eval_dir(p, name)
    key = _stage_key(p, name, stage="reconstruction", range="cooccurrence",
                     n_tokens=int(p.tokens.cooccurrence), recon_tokens=p.recon_tokens, batch_size=p.batch_size,
                     calibration=_cal_key(p, name, progress))
    out, key_path = d / "reconstruction.json", d / "reconstruction.key.json"
    if _fresh(key_path, key, out):
        return read_json(out)
    sae = load_run(p, name)
    theta = _thresholds(p, name, progress)
    full = _cache(p).acts("cooccurrence")
    n_tok = len(full) if p.recon_tokens is None else min(len(full), int(p.recon_tokens))
    acts = full[:n_tok]
    m = reconstruction_metrics(sae, acts, theta, batch_size=p.batch_size, progress=progress)
    b = reconstruction_metrics(sae, acts, None, batch_size=p.batch_size, progress=progress)
    arrays = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in m.to_dict(with_arrays=True).items()}
    res = {"run": name, "range": "cooccurrence", "n_tokens_evaluated": n_tok, **arrays,
           "rate_hist_edges": RATE_LOG10_EDGES.tolist(), "batchtopk": {**b.to_dict(), "n_tokens_evaluated": n_tok}}
    if n_tok < len(full):  # firing statistics over the whole range
        fired = load_firing(p, name)
        counts = np.asarray(fired.sum(axis=0), dtype=np.int64).ravel()
        fs = firing_summary(counts, fired.shape[0])
        res.update(n_dead=fs["n_dead"], dead_frac=fs["dead_frac"],
                   firing_rate_quantiles=fs["firing_rate_quantiles"], firing_counts=counts.tolist(),
                   rate_hist_counts=fs["rate_hist_counts"].tolist(), firing_n_tokens=int(fired.shape[0]))
    write_json(out, res)
    write_json(key_path, {"key": key})
    return res


# ----------------------------------------------------------------------------------------------
# CE
# ----------------------------------------------------------------------------------------------
def _ids_hash(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def ensure_ce(profile: str | Profile, names: Iterable[str], *, batchtopk_for: Iterable[str] | None = None,
              progress: bool = True) -> dict[str, dict[str, Any]]:
    """CE losses (nats) on the CE token range for each run of ``names``; the LM is loaded once.

    Per run (cached in ``eval/ce.json``): ``ce_spliced`` (per-token thresholds), ``overhead_pct``
    vs clean, ``recovered``; for runs in ``batchtopk_for`` (default: solo and the selected joint)
    also ``ce_batchtopk`` / ``overhead_batchtopk_pct``. ``ce_clean`` and ``ce_zero`` are computed
    once per profile (``<profile>/eval/ce_reference.json``) and copied into each result.
    """

    p = get_profile(profile)
    names = list(dict.fromkeys(names))
    bt = set(batchtopk_for) if batchtopk_for is not None else {"solo", selected_joint(p)}
    ids = _cache(p).token_ids("ce")
    ref_key = {"version": STAGE_VERSION, "model": p.model, "layer": p.layer, "ids": _ids_hash(ids)}
    ref_path = paths.profile_dir(p) / "eval" / "ce_reference.json"
    ref = read_json(ref_path) if ref_path.exists() else None
    if ref is not None and ref.get("key") != ref_key:
        ref = None

    todo: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        key = _stage_key(p, name, stage="ce", range="ce", ids=ref_key["ids"], layer=p.layer,
                         calibration=_cal_key(p, name, progress))
        path = eval_dir(p, name) / "ce.json"
        cached = read_json(path) if path.exists() else None
        if ref is not None and cached is not None and cached.get("key") == key \
                and (name not in bt or "ce_batchtopk" in cached):
            results[name] = cached
        else:
            todo[name] = {"key": key, "path": path, "batchtopk": name in bt}

    if todo or ref is None:

        lm = load_lm(p.model, dtype=p.lm_dtype)
        if ref is None:
            ce = ce_losses(lm, ids, p.layer, {"clean": None, "zero": zero_splice},
                           batch_size=p.lm_batch_size, progress=progress)
            ref = {"key": ref_key, "ce_clean": ce["clean"].ce, "ce_zero": ce["zero"].ce,
                   "n_predictions": ce["clean"].n_tokens, "range": "ce"}
            write_json(ref_path, ref)
        clean, zero = ref["ce_clean"], ref["ce_zero"]
        for name, info in todo.items():  # one run at a time: each result is cached as soon as it exists
            sae = load_run(p, name)
            splices: dict[str, Any] = {"thr": sae_splice(sae, _thresholds(p, name, progress))}
            if info["batchtopk"]:
                splices["bt"] = sae_splice(sae, None)
            ce = ce_losses(lm, ids, p.layer, splices, batch_size=p.lm_batch_size, progress=progress)
            spliced = ce["thr"].ce
            res = {"run": name, "range": "ce", "key": info["key"], "ce_clean": clean, "ce_zero": zero,
                   "ce_spliced": spliced, "overhead_pct": overhead_pct(spliced, clean),
                   "recovered": loss_recovered(spliced, clean, zero), "n_predictions": ce["thr"].n_tokens}
            if info["batchtopk"]:
                b = ce["bt"].ce
                res.update(ce_batchtopk=b, overhead_batchtopk_pct=overhead_pct(b, clean))
            write_json(info["path"], res)
            results[name] = res
    return {n: results[n] for n in names}


# ----------------------------------------------------------------------------------------------
# Table 1
# ----------------------------------------------------------------------------------------------
TABLE1_COLUMNS = [
    "run", "arm", "lambda2", "sigma2", "gamma", "seed", "n_pairs", "mean_abs_phi", "std_abs_phi",
    "delta_phi_pct", "delta_phi_ci_low_pct", "delta_phi_ci_high_pct", "l2", "delta_l2_pct", "fve",
    "l0", "ce_overhead_pct", "dead_latents", "welch_t", "welch_df", "welch_p", "welch_log10_p",
]


def table_names(profile: str | Profile, names: Iterable[str] | None = None) -> list[str]:
    """``names`` (default: the profile's whole grid) with ``solo`` first."""
    p = get_profile(profile)
    names = [r.name for r in grid_runs(p)] if names is None else list(names)
    return ["solo"] + [n for n in dict.fromkeys(names) if n != "solo"]


def _row(name: str, spec: RunSpec, co: dict, rec: dict, ce: dict | None, base_co: dict,
         base_rec: dict) -> dict[str, Any]:
    base_phi, base_l2 = base_co["mean_abs_phi"], base_rec["mse"]
    row: dict[str, Any] = {
        "run": name, "arm": spec.arm, "lambda2": spec.lambda2 if spec.uses_meta else math.nan,
        "sigma2": spec.sigma2 if spec.arm == "joint" else math.nan,
        "gamma": spec.gamma if spec.arm == "ortho" else math.nan, "seed": spec.seed,
        "n_pairs": co["n_pairs"], "mean_abs_phi": co["mean_abs_phi"], "std_abs_phi": co["std_abs_phi"],
        "delta_phi_pct": 100.0 * (co["mean_abs_phi"] - base_phi) / base_phi,
        "l2": rec["mse"], "delta_l2_pct": 100.0 * (rec["mse"] - base_l2) / base_l2, "fve": rec["fve"],
        "l0": rec["l0"], "ce_overhead_pct": ce["overhead_pct"] if ce else math.nan,
        "dead_latents": rec["n_dead"],
    }
    if name == "solo":
        row.update(delta_phi_ci_low_pct=math.nan, delta_phi_ci_high_pct=math.nan, welch_t=math.nan,
                   welch_df=math.nan, welch_p=math.nan, welch_log10_p=math.nan)
    else:
        w = welch(co["mean_abs_phi"], co["var_abs_phi"], co["n_pairs"],
                  base_co["mean_abs_phi"], base_co["var_abs_phi"], base_co["n_pairs"])
        row.update(delta_phi_ci_low_pct=100.0 * w.ci_low / base_phi,
                   delta_phi_ci_high_pct=100.0 * w.ci_high / base_phi,
                   welch_t=w.t, welch_df=w.df, welch_p=w.p, welch_log10_p=w.log10_p)
    return row


def noise_floor_phi(profile: str | Profile, names: Iterable[str] | None = None) -> dict[str, Any] | None:
    """Mean ± std of mean |φ| over the independent solo seeds among ``names`` (solo + solo-seedN);
    None when fewer than two are available. Adds ``rel_std_pct`` (std as % of the mean)."""
    p = get_profile(profile)
    seeds = [n for n in table_names(p, names) if parse_run(n).arm == "solo"]
    if len(seeds) < 2:
        return None
    vals = [ensure_cooccurrence(p, n, progress=False)["mean_abs_phi"] for n in seeds]
    nf = noise_floor(vals).to_dict()
    nf.update(runs=seeds, rel_std_pct=100.0 * nf["rel_std"])
    return nf


def grid_table(profile: str | Profile, names: Iterable[str] | None = None, *, with_ce: bool = True,
               progress: bool = True) -> pd.DataFrame:
    """Table 1: one row per configuration (solo first) with Δ% vs solo and Welch tests vs solo.

    Runs must be trained. ``delta_phi_pct = 100·(mean|φ| − solo)/solo``, ``delta_l2_pct`` likewise on the
    normalised-space MSE (thresholded encoder, co-occurrence range); Welch t/df/p of mean |φ| vs solo
    from the streamed statistics (count, mean, variance of |φ| over all pairs i < j); CE overhead on the
    CE range (per-token thresholds; NaN when ``with_ce=False``). The noise floor over the solo seeds is
    in ``df.attrs["noise_floor"]``.
    """
    p = get_profile(profile)
    names = table_names(p, names)
    co = {n: ensure_cooccurrence(p, n, progress=progress) for n in names}
    rec = {n: ensure_reconstruction(p, n, progress=progress) for n in names}
    ce = ensure_ce(p, names, progress=progress) if with_ce else {}
    rows = [_row(n, parse_run(n), co[n], rec[n], ce.get(n), co["solo"], rec["solo"]) for n in names]
    df = pd.DataFrame(rows, columns=TABLE1_COLUMNS)
    df.attrs["noise_floor"] = noise_floor_phi(p, names)
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


def write_selection(profile: str | Profile, selection: dict[str, Any]) -> Path:
    """Write ``<tables>/selected.json`` (read back by :func:`paperlib.sae.arms.selected_joint`)."""
    path = paths.output_dirs(profile)[1] / "selected.json"
    write_json(path, selection)
    return path
