"""The ground-truth atomicity benchmark (docs/method.md §3.7): does lower latent co-firing |φ| go with
more atomic latents?

For each data seed s (:mod:`paperlib.data.synthetic`, features with shared compositional parts and
parent/child hierarchies), every arm is trained on the same tokens with SAE seed s (paired: the arms of
one data seed share init and data order), calibrated on the calibration tokens and evaluated on the
eval tokens: the three |φ| statistics of the primary comparison (all pairs, alive pairs,
null-corrected excess; :func:`paperlib.metrics.cooccurrence.rate_robust_stats`), FVU against the data's
noise floor, dead latents, and the atomicity metrics of :mod:`paperlib.metrics.atomicity`
(activation-based per latent, decoder geometry).

The answer is read from :func:`correlations` (Spearman ρ with a bootstrap CI between each |φ|
statistic and each atomicity metric across all trained SAEs, and within data seed) and
:func:`paired_differences` (each arm minus solo, paired over data seeds). Training uses one torch
thread: on these tiny matrices a second thread only adds synchronisation (measured: 6× the CPU time
for the same steps), and results are identical for any thread count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from paperlib.config.profiles import Profile, TokenBudget, get_profile
from paperlib.data.synthetic import SyntheticConfig, SyntheticData, generate
from paperlib.metrics import cooccurrence
from paperlib.metrics.atomicity import (
    activation_atomicity,
    activation_summary,
    atomicity_metrics,
    recovery_metrics,
    spearman_ci,
)
from paperlib.metrics.calibration import calibrate_sae
from paperlib.metrics.stats import min_detectable_effect, paired_seeds
from paperlib.sae.arms import RunSpec, parse_run
from paperlib.sae.models import BatchTopKSAE
from paperlib.sae.trainer import train_run
from paperlib.stages.pool import process_pool

__all__ = ["ARMS", "ATOMICITY_METRICS", "MORE_ATOMIC_IF_HIGHER", "PHI_STATS", "benchmark_profile", "config_key",
           "convergence_summary", "correlations", "evaluate_sae", "noise_floor_fvu", "paired_differences",
           "run_benchmark", "run_seed", "true_feature_stats"]

ARMS = ("solo", "joint-l0.1-s1", "joint-l0.3-s1", "joint-l1-s1", "randcritic-l0.3-s1", "ortho-g0.1")
"""Default arms: solo, joint at three λ₂ (σ² = 1), the random-critic control and OrtSAE."""
PHI_STATS = ("mean_abs_phi_all", "mean_abs_phi_alive", "excess_abs_phi")
"""The |φ| statistics of the primary comparison (φ units)."""
ATOMICITY_METRICS = ("act_f1", "act_precision", "act_recall", "multi_share", "mmcs_true", "blend_frac")
"""Atomicity metrics correlated with |φ|: activation-based first, then decoder geometry."""
MORE_ATOMIC_IF_HIGHER = {"act_f1": True, "act_precision": True, "act_recall": True, "multi_share": False,
                         "mmcs_true": True, "recovered_frac": True, "blend_frac": False, "multi_frac": False}
"""Direction of each atomicity metric: True when a higher value means more atomic latents."""
MAX_FVU_GAP = 0.05
"""Convergence criterion: FVU at most this far above the data's noise floor."""
MAX_DEAD_FRAC = 0.01
"""Convergence criterion: dead latents (never firing on the eval tokens) below this share."""


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def noise_floor_fvu(data: SyntheticData) -> float:
    """FVU of the oracle reconstruction Σ_i a_i D_i (true codes and directions) of the eval tokens, in the
    SAE's per-token standardised space: the unexplainable noise share, the floor for any SAE's FVU."""
    x = torch.as_tensor(data.eval, dtype=torch.float64)
    xn, _, scale = BatchTopKSAE.normalize_stats(x)
    clean = torch.as_tensor(np.asarray(data.codes_eval @ data.directions), dtype=torch.float64)
    resid = (x - clean) / scale  # the oracle's error: the per-token mean cancels (directions ⟂ ones)
    resid = resid - resid.mean(dim=-1, keepdim=True)
    sst = float(((xn - xn.mean(dim=0)) ** 2).sum())
    return float((resid**2).sum()) / sst


@torch.no_grad()
def _fire_eval(sae: Any, data: SyntheticData, theta: torch.Tensor) -> tuple[sp.csr_matrix, float]:
    """(binary firing on the eval tokens, FVU in the normalised space)."""
    bs = data.config.batch_size
    fired, sse, sumsq = [], 0.0, 0.0
    total = torch.zeros(data.config.d, dtype=torch.float64)
    for s in range(0, len(data.eval), bs):
        x = torch.as_tensor(data.eval[s:s + bs]).float()
        f = sae.encode(x, thresholds=theta)
        xn = sae.normalize(x)
        sse += float(((sae.decode(f) - xn).double() ** 2).sum())
        sumsq += float((xn.double() ** 2).sum())
        total += xn.double().sum(0)
        fired.append(sp.csr_matrix((f > 0).numpy()))
    sst = sumsq - float((total**2).sum()) / len(data.eval)
    return sp.vstack(fired, "csr"), sse / sst


@torch.no_grad()
def evaluate_sae(sae: Any, data: SyntheticData, *, recover_threshold: float = 0.9, blend_gain: float = 0.1,
                 multi_threshold: float = 0.1, min_count: int = 5) -> dict[str, Any]:
    """All metrics of one trained SAE: EER thresholds from ``data.calibration``, firing on ``data.eval``,
    then FVU (normalised space), L0, dead latents (never fire on eval), the |φ| statistics of
    :data:`PHI_STATS` (``min_count``: the alive criterion), the activation atomicity summary and the
    decoder-geometry metrics over the latents that fire, and the recovered share per feature kind."""
    cal = calibrate_sae(sae, data.calibration, batch_size=data.config.batch_size, progress=False)
    theta = torch.as_tensor(np.asarray(cal.thresholds), dtype=torch.float32)
    F, fvu = _fire_eval(sae, data, theta)
    if not np.isfinite(fvu):
        raise ValueError(f"non-finite FVU ({fvu}) for an SAE on synthetic seed {data.config.seed}")
    live = np.asarray(F.sum(axis=0)).ravel() > 0
    rr = cooccurrence.rate_robust_stats(cooccurrence.count(F), min_count=min_count)
    W_dec = sae.W_dec.detach().cpu().numpy()
    out: dict[str, Any] = {k: float(rr[k]) for k in PHI_STATS}
    out["n_alive_phi"] = int(rr["n_alive"])
    out.update(activation_summary(activation_atomicity(F, data.codes_eval), multi_threshold=multi_threshold))
    out.update(atomicity_metrics(W_dec, data.directions, live=live, recover_threshold=recover_threshold,
                                 blend_gain=blend_gain))
    rec = recovery_metrics(W_dec, data.directions, recover_threshold=recover_threshold, live=live)
    kinds = data.kinds
    for kind in ("parent", "child", "independent"):
        m = kinds == kind
        if m.any():
            out[f"recovered_{kind}"] = float((rec["max_cos_true"][m] >= recover_threshold).mean())
    n = int(F.shape[1])
    out.update(fvu=float(fvu), l0=float(F.nnz / F.shape[0]), n_dead=int((~live).sum()),
               dead_frac=float((~live).sum() / n))
    return out


def true_feature_stats(data: SyntheticData) -> dict[str, float]:
    """Reference values of the ground truth itself: mean |φ| of true-feature co-firing, L0 and the noise
    floor of the FVU (eval tokens)."""
    F = data.codes_eval != 0
    ws = cooccurrence.within_stats(cooccurrence.count(F))
    return dict(true_mean_abs_phi=ws.mean_abs_phi, true_l0=float(F.sum() / F.shape[0]),
                fvu_floor=noise_floor_fvu(data))


def benchmark_profile(config: SyntheticConfig, base: str | Profile = "smoke") -> Profile:
    """A :class:`Profile` with the benchmark's SAE sizes and optimisation (named ``synthetic``; used only
    for training). The penalty schedule (start after a quarter of the steps, ramp over a tenth) is the
    base profile's."""
    ctx = 64
    toks = TokenBudget(train=config.n_train, calibration=config.n_calibration,
                       cooccurrence=config.n_eval, autointerp=ctx, ce=ctx)
    return get_profile(base).replace(
        name="synthetic", context=ctx, tokens=toks, n_latents=config.n_latents, k=config.k, n_meta=config.n_meta,
        k_meta=config.k_meta, batch_size=config.batch_size, train_epochs=config.train_epochs, lr=config.lr,
        lr_warmup_frac=config.lr_warmup_frac, lr_decay_frac=config.lr_decay_frac, dead_after=config.dead_after,
        aux_alpha=config.aux_alpha, k_aux=config.k_aux, ortho_chunks=config.ortho_chunks, checkpoint_every=10**9,
        n_noise_seeds=0)


def _train(profile: Profile, spec: RunSpec, data: SyntheticData, out_dir: Path, progress: bool) -> Any:
    train_run(profile, spec, data.train, out_dir, progress=progress, data_info={"synthetic": data.config.as_dict()})
    return BatchTopKSAE.load(out_dir / "sae")


def config_key(config: SyntheticConfig) -> str:
    """Short stable hash of a config (folder name that keeps runs of different configs apart)."""
    blob = json.dumps(config.as_dict(), sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def _specs(arms: Iterable[str | RunSpec], seed: int) -> list[RunSpec]:
    specs = [parse_run(a).with_seed(seed) for a in arms]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"arms: duplicate runs {names}")
    if not specs:
        raise ValueError("arms: give at least one arm")
    return specs


def _seed_list(seeds: Iterable[int]) -> list[int]:
    out = [int(s) for s in seeds]
    if not out or any(s < 0 or s != float(t) for s, t in zip(out, seeds, strict=True)) or len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct non-negative integers, got {list(seeds)}")
    return out


def run_seed(config: SyntheticConfig, arms: Sequence[str | RunSpec], seed: int, root: str | Path, *,
             recover_threshold: float = 0.9, blend_gain: float = 0.1, multi_threshold: float = 0.1) -> list[dict]:
    """The rows of one data seed: generate ``config.replace(seed=seed)`` once, then train (one torch thread)
    and evaluate every arm with SAE seed ``seed`` under ``root/<config_key>/<run name>``. ``seconds`` and
    ``cpu_seconds`` are the wall and process CPU time of training plus evaluation."""
    cfg = config.replace(seed=seed, sae_seed=seed)
    data = generate(cfg)
    profile = benchmark_profile(cfg)
    truth = true_feature_stats(data)
    rows = []
    with _one_thread():
        for spec in _specs(arms, seed):
            t0, c0 = time.perf_counter(), time.process_time()
            sae = _train(profile, spec, data, Path(root) / config_key(cfg) / spec.name, False).eval()
            row = dict(seed=seed, run=spec.name, arm=spec.arm, label=_label(spec), **spec.hyper())
            row.update(evaluate_sae(sae, data, recover_threshold=recover_threshold, blend_gain=blend_gain,
                                    multi_threshold=multi_threshold))
            row.update(truth)
            row.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
            rows.append(row)
    return rows


def run_benchmark(config: SyntheticConfig | None = None, arms: Iterable[str | RunSpec] = ARMS, *,
                  seeds: Sequence[int] = (0, 1, 2, 3, 4), out_dir: str | Path | None = None,
                  recover_threshold: float = 0.9, blend_gain: float = 0.1, multi_threshold: float = 0.1,
                  workers: int = 1, progress: bool = True) -> pd.DataFrame:
    """Train and evaluate every arm on every data seed; one row per (seed, arm), ordered by seed then arm.

    Data seed s generates ``config.replace(seed=s)`` once and trains every arm on it with SAE seed s (the
    arms of a seed are paired: same tokens, init and data order), see :func:`run_seed`. ``arms``: run names
    in any spelling (``solo``, ``joint-l0.3-s1``, ``randcritic-l0.3-s1``, ``ortho-g0.1``; a ``-seedN`` suffix
    is replaced by the data seed). Trained SAEs go to ``out_dir/<config_key>/<run name>`` (a temporary
    directory, deleted afterwards, when None); a finished run there is reused (the trainer checks its recorded
    config). ``workers`` > 1 runs data seeds in that many spawned processes (one torch thread each; the
    numbers do not depend on it). Columns: ``seed``, ``run``, ``arm``, ``label``, the hyper-parameters,
    :func:`evaluate_sae`'s metrics, the ground truth's own :func:`true_feature_stats`, ``fvu_gap`` = fvu −
    fvu_floor, ``converged`` (gap ≤ :data:`MAX_FVU_GAP` and dead share < :data:`MAX_DEAD_FRAC`), ``seconds``
    and ``cpu_seconds``.
    """
    config = config or SyntheticConfig()
    seed_list = _seed_list(seeds)
    arms = [a if isinstance(a, RunSpec) else str(a) for a in arms]
    _specs(arms, 0)  # bad arm names fail here, before any work
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    kw = dict(recover_threshold=recover_threshold, blend_gain=blend_gain, multi_threshold=multi_threshold)
    with tempfile.TemporaryDirectory(prefix="synthetic-") as tmp:
        root = Path(out_dir) if out_dir is not None else Path(tmp)
        bar = tqdm(total=len(seed_list), desc="ground truth (data seeds)", disable=not progress)
        by_seed: dict[int, list[dict]] = {}
        if workers == 1 or len(seed_list) == 1:
            for seed in seed_list:
                by_seed[seed] = run_seed(config, arms, seed, root, **kw)
                bar.update(1)
        else:
            with process_pool(min(int(workers), len(seed_list))) as pool:  # spawned, dying with this process
                futs = {pool.submit(run_seed, config, arms, seed, root, **kw): seed for seed in seed_list}
                for fut in as_completed(futs):
                    by_seed[futs[fut]] = fut.result()
                    bar.update(1)
        bar.close()
    df = pd.DataFrame([r for seed in seed_list for r in by_seed[seed]])
    df["fvu_gap"] = df["fvu"] - df["fvu_floor"]
    df["converged"] = (df["fvu_gap"] <= MAX_FVU_GAP) & (df["dead_frac"] < MAX_DEAD_FRAC)
    return df


def _label(spec: RunSpec) -> str:
    """The arm label without the seed (``joint λ₂=0.3, σ²=1``), the key that pairs arms across seeds."""
    return spec.with_seed(0).label


def _check_frame(df: pd.DataFrame, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing} (expected a run_benchmark result)")
    bad = [c for c in cols if df[c].dtype.kind == "f" and not np.isfinite(df[c].to_numpy()).all()]
    if bad:
        raise ValueError(f"non-finite values in columns {bad}: every SAE needs every metric")


def _verdict(lo: float, hi: float, agrees_if_negative: bool) -> str:
    """Words for a CI of a |φ|–atomicity association: 'no evidence' when it covers 0 (or is undefined)."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 <= hi:
        return "no evidence"
    negative = hi < 0
    return "supports |φ| as a proxy" if negative == agrees_if_negative else "contradicts |φ| as a proxy"


def correlations(df: pd.DataFrame, phi_stats: Sequence[str] = PHI_STATS,
                 metrics: Sequence[str] = ATOMICITY_METRICS, *, confidence: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Spearman ρ with a bootstrap CI (:func:`~paperlib.metrics.atomicity.spearman_ci`) between each |φ|
    statistic and each atomicity metric, across all SAEs of ``df`` (``scope="all SAEs"``) and after
    removing each data seed's mean from both (``scope="within seed"``: only differences between arms
    trained on the same data). ``proxy_sign`` is the sign |φ| as an atomicity proxy predicts (−1: lower
    |φ| with a higher metric); ``verdict`` reads the CI against it."""
    _check_frame(df, [*phi_stats, *metrics, "seed"])
    rows = []
    for scope in ("all SAEs", "within seed"):
        d = df if scope == "all SAEs" else _demean(df, [*phi_stats, *metrics])
        for ph in phi_stats:
            for m in metrics:
                r = spearman_ci(d[ph], d[m], confidence=confidence, n_resamples=n_resamples, seed=seed)
                sign = -1 if MORE_ATOMIC_IF_HIGHER[m] else 1
                rows.append(dict(scope=scope, phi_stat=ph, metric=m, proxy_sign=sign, **r,
                                 verdict=_verdict(r["ci_low"], r["ci_high"], sign < 0)))
    return pd.DataFrame(rows)


def _demean(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    out = df.copy()
    out[list(cols)] = df[list(cols)] - df.groupby("seed")[list(cols)].transform("mean")
    return out


def paired_differences(df: pd.DataFrame, metrics: Sequence[str] = (*PHI_STATS, *ATOMICITY_METRICS, "fvu",
                                                                   "dead_frac"),
                       base: str = "solo", confidence: float = 0.95) -> pd.DataFrame:
    """Each arm minus ``base`` (by label), paired over data seeds (:func:`~paperlib.metrics.stats.paired_seeds`,
    the ``scipy.stats.ttest_rel`` test): Δ, its CI, Δ in % of the base mean, p, and the minimum detectable
    effect at 80% power for that many seeds (:func:`~paperlib.metrics.stats.min_detectable_effect`); ``verdict``
    says 'no evidence' when the CI covers 0, else the direction."""
    _check_frame(df, [*metrics, "seed", "label"])
    base_rows = df[df["arm"] == base]
    if base_rows.empty:
        raise ValueError(f"base={base!r}: no such arm in df (arms: {sorted(df['arm'].unique())})")
    a_by = base_rows.set_index("seed")
    rows = []
    for label, g in df[df["arm"] != base].groupby("label", sort=False):
        g = g.set_index("seed")
        common = sorted(set(g.index) & set(a_by.index))
        if len(common) < 2:
            continue
        for m in metrics:
            r = paired_seeds(a_by.loc[common, m].to_numpy(float), g.loc[common, m].to_numpy(float),
                             confidence=confidence)
            mde = min_detectable_effect(r.std_diff, r.n) if r.std_diff > 0 else 0.0
            if r.ci_low <= 0 <= r.ci_high:
                verdict = "no evidence"
            else:
                verdict = "higher" if r.mean_diff > 0 else "lower"
            rows.append(dict(arm=label, metric=m, n_seeds=r.n, mean_base=r.mean_a, mean_arm=r.mean_b,
                             delta=r.mean_diff, ci_low=r.ci_low, ci_high=r.ci_high, rel_pct=r.rel_diff_pct,
                             p=r.p, mde80=mde, verdict=verdict))
    return pd.DataFrame(rows)


def convergence_summary(df: pd.DataFrame) -> dict[str, Any]:
    """How many SAEs meet the convergence criteria, and the worst FVU gap and dead share."""
    _check_frame(df, ["fvu_gap", "dead_frac", "converged"])
    return dict(n_saes=int(len(df)), n_converged=int(df["converged"].sum()),
                max_fvu_gap=float(df["fvu_gap"].max()), median_fvu_gap=float(df["fvu_gap"].median()),
                max_dead_frac=float(df["dead_frac"].max()), max_fvu_gap_allowed=MAX_FVU_GAP,
                max_dead_frac_allowed=MAX_DEAD_FRAC)
