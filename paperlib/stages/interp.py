"""Auto-interp stages: judges, matching, per-feature scores and the solo ↔ joint comparison
(docs/method.md §3.5, §3.6; paper §5.2).

Every result is cached on disk with atomic writes: the judge's sanity check per profile and judge
(name, model and endpoint), the matching per pair of runs, and one JSON record per scored feature,
so a killed run resumes and a retrained run, another judge or other settings get fresh directories.

Judge failures never become results: nothing incomplete is cached (a sanity check with an
unanswered trial, a feature with a missing answer), and a judge that answered less than
``min_answered`` (default 0.9) of the trials or of one side's features stops the run with a
:class:`~paperlib.autointerp.judge.JudgeError` unless ``allow_partial=True``; the summary reports
how many features are missing on each side. :mod:`paperlib.report.autointerp` renders the results.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paperlib.autointerp.client import OpenAIJudge
from paperlib.autointerp.contexts import token_decoder
from paperlib.autointerp.judge import check_answered, judge_key
from paperlib.autointerp.local import LocalLikelihoodJudge
from paperlib.autointerp.sanity import judge_sanity_check
from paperlib.autointerp.scoring import paired_comparison, score_features
from paperlib.config import paths
from paperlib.config.io import read_json, write_json, write_text
from paperlib.config.profiles import Profile, get_profile
from paperlib.data import lm
from paperlib.data.activations import load_cache
from paperlib.metrics.matching import MatchResult, hungarian_match
from paperlib.stages.calibrate import ensure_calibration
from paperlib.stages.run import Run
from paperlib.stages.train import load_run

__all__ = [
    "LEAN_CONTEXT",
    "PAPER_CONTEXT",
    "compare_runs",
    "default_sanity_n",
    "ensure_matching",
    "ensure_sanity",
    "ensure_scores",
    "make_judge",
    "n_missing",
    "profile_decoder",
    "sample_pairs",
    "scores_dir",
    "summarize_comparison",
]

LEAN_CONTEXT: dict[str, int] = dict(window=20, n_after=4, n_explain=10, n_quantiles=3,
                                    per_quantile=2, n_non_activating=0)
"""Default context settings: 10 explanation windows and 6 test windows (3 activation quantiles × 2)
of 20 tokens, firing token 4 from the end, no detection. The local judge runs two forward passes per
fuzz item, so the number and length of test windows set the cost: about 1 s per feature on the
development machine (docs/method.md §6)."""

PAPER_CONTEXT: dict[str, int] = dict(window=32, n_after=4, n_explain=20, n_quantiles=10,
                                     per_quantile=4, n_non_activating=20)
"""Paper-like settings (Delphi defaults); use with ``do_detection=True`` on a GPU / HTTP judge."""


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[:80]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _judge_tag(judge) -> str:
    """File-name tag of a judge: its name, plus a hash of its endpoint when it has one."""
    key = judge_key(judge)
    return _slug(judge.name) if key == judge.name else f"{_slug(judge.name)}-{_hash(key)}"


# ----------------------------------------------------------------------------------------------
# judge
# ----------------------------------------------------------------------------------------------
def make_judge(kind: str = "local", base_url: str | None = None, model: str | None = None, *,
               profile: str | Profile | None = None, cache_dir: str | Path | None = None,
               **kwargs):
    """Build a judge with its disk cache.

    ``kind="local"``: :class:`LocalLikelihoodJudge` on ``model`` (default ``smollm2-135m``), no
    network. ``kind="openai"``: :class:`OpenAIJudge` on ``base_url``/``model`` (or the
    ``OPENAI_BASE_URL``/``OPENAI_MODEL`` environment variables); ``kwargs`` go to the judge (for
    ``openai``: ``timeout``, ``max_retries``, ``max_consecutive_failures``, ``max_workers``, ...). The
    cache defaults to ``paths.profile_dir(profile)/"judge_cache"`` (``profile`` defaults to ``default``).
    """
    if cache_dir is None:
        cache_dir = paths.profile_dir(profile if profile is not None else "default") / "judge_cache"
    if kind == "local":
        if base_url is not None:
            raise ValueError("base_url is only for judge='openai'")
        return LocalLikelihoodJudge(model_name=model or "smollm2-135m", cache_dir=cache_dir, **kwargs)
    if kind == "openai":
        return OpenAIJudge(model=model, base_url=base_url, cache_dir=cache_dir, **kwargs)
    raise ValueError(f"unknown judge kind {kind!r}; use 'local' or 'openai'")


def ensure_sanity(profile: str | Profile, judge, n: int = 40, seed: int = 0, *, min_answered: float = 0.9,
                  allow_partial: bool = False) -> dict:
    """Cached :func:`judge_sanity_check` (2AFC on labelled BBC snippets) for ``judge``.

    Adds ``significant`` (one-sided binomial p < 0.05 against chance 0.5, over answered trials).
    Fewer than ``min_answered`` of the trials answered raises
    :class:`~paperlib.autointerp.judge.JudgeError` (naming the endpoint and the last failure) unless
    ``allow_partial``; only a check with every trial answered is cached.
    """
    path = paths.profile_dir(profile) / "judge_sanity" / f"{_judge_tag(judge)}-n{n}-s{seed}.json"
    if path.exists():
        return read_json(path)
    res = judge_sanity_check(judge, n=n, seed=seed)
    check_answered(judge, "sanity-check trials", res["n_answered"], n, min_answered, allow_partial)
    res["significant"] = bool(res["p_value"] < 0.05)  # NaN (nothing answered) is not significant
    if res["n_missing"] == 0:
        write_json(path, res)
    return res


# ----------------------------------------------------------------------------------------------
# matching
# ----------------------------------------------------------------------------------------------
def ensure_matching(solo: Run, joint: Run) -> MatchResult:
    """Hungarian matching of alive ``solo`` ↔ ``joint`` features (``i`` = solo, ``j`` = joint).

    Alive = selected at least once on the calibration range (``ensure_calibration(...).dead``).
    Cached as ``<joint eval>/matching/vs-<solo>.csv`` + ``.json``, keyed by both runs' weights.
    """
    d = joint.dir / "eval" / "matching"
    csv, meta_path = d / f"vs-{solo.name}.csv", d / f"vs-{solo.name}.json"
    key = {"solo": solo.name, "solo_key": solo.key, "joint": joint.name, "joint_key": joint.key, "version": 1}
    if csv.exists() and meta_path.exists():
        meta = read_json(meta_path)
        if meta.get("key") == key:
            pairs = pd.read_csv(csv, dtype={"i": np.int64, "j": np.int64, "cosine": np.float64})
            return MatchResult(pairs, meta["n_alive_a"], meta["n_alive_b"], None, None)
    alive_a = ~np.asarray(ensure_calibration(solo).dead, bool)
    alive_b = ~np.asarray(ensure_calibration(joint).dead, bool)
    res = hungarian_match(load_run(solo).W_dec, load_run(joint).W_dec, alive_a, alive_b)

    write_text(csv, res.pairs.to_csv(index=False))
    write_json(meta_path, {"key": key, "n_alive_a": res.n_alive_a, "n_alive_b": res.n_alive_b})
    return res


def sample_pairs(pairs: pd.DataFrame, n: int | None, seed: int = 0) -> pd.DataFrame:
    """``n`` pairs drawn uniformly without replacement (seeded), sorted by ``i``; all if n is None."""
    if n is None or n >= len(pairs):
        return pairs.sort_values("i").reset_index(drop=True)
    if n < 1:
        raise ValueError("n must be ≥ 1")
    pick = np.random.default_rng(seed).choice(len(pairs), size=int(n), replace=False)
    return pairs.iloc[np.sort(pick)].sort_values("i").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------------
def profile_decoder(profile: str | Profile):
    """Per-token string decoder of the profile's LM tokenizer (no model weights loaded)."""
    from transformers import AutoTokenizer

    key = get_profile(profile).data.model
    src = str(lm.model_dir(key)) if key in lm.OFFLINE_MODELS else key
    return token_decoder(AutoTokenizer.from_pretrained(src))


def scores_dir(run: Run, judge, *, context_kwargs: dict, do_detection: bool, do_spearman: bool,
               seed: int) -> Path:
    """Where :func:`ensure_scores` keeps a run's records for one judge and one setting."""
    tag = _hash({"run_key": run.key, "context": context_kwargs, "seed": seed,
                 "detection": do_detection, "spearman": do_spearman, "judge": judge_key(judge)})
    return run.dir / "eval" / "autointerp" / f"{_slug(judge.name)}-{tag}"


def _read_records(out: Path, feats: list[int]) -> pd.DataFrame:
    """Stored feature records without their traces (no activations touched)."""
    rows = []
    for f in feats:
        rec = read_json(out / "features" / f"{f}.json")
        rows.append({k: v for k, v in rec.items() if not k.endswith("_trace")})
    return pd.DataFrame(rows)


def _score_new(run: Run, feats: list[int], judge, out: Path, decode, **kw) -> pd.DataFrame:
    """Load the run's inputs and score ``feats`` (stored records are reused by score_features)."""
    p = run.profile
    cache = load_cache(p)
    thresholds = np.asarray(ensure_calibration(run).thresholds, dtype=np.float32)
    return score_features(load_run(run), cache.acts("autointerp"), cache.token_ids("autointerp"),
                          cache.positions("autointerp"), feats, thresholds, judge,
                          decode if decode is not None else profile_decoder(p), out_dir=out,
                          chunk_size=p.sae.batch_size * 4, **kw)


def n_missing(df: pd.DataFrame) -> int:
    """Features of a scores table whose judge answers are incomplete (``missing`` records)."""
    return int(df["missing"].fillna(False).astype(bool).sum()) if "missing" in df.columns else 0


def ensure_scores(run: Run, features: Sequence[int], judge, *,
                  context_kwargs: dict | None = None, do_detection: bool = False,
                  do_spearman: bool = False, seed: int = 0, n_workers: int = 1,
                  decode=None, show_progress: bool = True, min_answered: float = 0.9,
                  allow_partial: bool = False) -> pd.DataFrame:
    """Explain and fuzz-score ``features`` of ``run`` (cached per complete feature, resumable).

    Contexts come from the ``autointerp`` token range with the run's calibrated thresholds.
    Returns one row per feature (``fuzz_score`` = 2·acc − 1, NaN/absent when the feature has no
    test windows or a judge answer is missing). ``df.attrs`` holds ``out_dir``, ``n_new`` (features
    scored by this call), ``n_missing`` (features with missing judge answers, not cached) and
    ``sec_per_feature`` (wall time of this call / n_new; NaN when everything was cached). Fewer than
    ``min_answered`` of the features complete raises
    :class:`~paperlib.autointerp.judge.JudgeError` unless ``allow_partial``.
    """
    ckw = dict(LEAN_CONTEXT if context_kwargs is None else context_kwargs)
    out = scores_dir(run, judge, context_kwargs=ckw, do_detection=do_detection,
                     do_spearman=do_spearman, seed=seed)
    feats = [int(f) for f in features]
    n_new = sum(not (out / "features" / f"{f}.json").exists() for f in feats)
    t0 = time.perf_counter()
    if n_new:
        df = _score_new(run, feats, judge, out, decode, do_detection=do_detection, do_spearman=do_spearman,
                        seed=seed, context_kwargs=ckw, show_progress=show_progress, n_workers=n_workers)
    else:
        df = _read_records(out, feats)
    dt = time.perf_counter() - t0
    if "fuzz_score" not in df.columns:
        df["fuzz_score"] = np.nan
    df.attrs.update(out_dir=str(out), n_new=int(n_new), n_missing=n_missing(df),
                    sec_per_feature=dt / n_new if n_new else float("nan"))
    check_answered(judge, f"features of run {run.name}", len(feats) - df.attrs["n_missing"], len(feats),
                   min_answered, allow_partial)
    return df


# ----------------------------------------------------------------------------------------------
# comparison
# ----------------------------------------------------------------------------------------------
def summarize_comparison(scores_solo: pd.DataFrame, scores_joint: pd.DataFrame,
                         pairs: pd.DataFrame, column: str = "fuzz_score") -> dict:
    """§5.2 numbers from :func:`paired_comparison` under the table's column names."""
    r = paired_comparison(scores_solo, scores_joint, pairs, column=column)
    return {"n_pairs": r["n_pairs"], "mean_solo": r["mean_a"], "mean_joint": r["mean_b"],
            "delta": r["delta_mean"], "delta_pct": 100.0 * r["delta_rel"], "t": r["t"],
            "p": r["p"], "df": r["df"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
            "pct_joint_higher": 100.0 * r["share_b_higher"], "pct_equal": 100.0 * r["share_equal"]}


def compare_runs(solo: Run, joint: Run, n_features: int | None, judge, *,
                 seed: int = 0, context_kwargs: dict | None = None, do_detection: bool = False,
                 n_workers: int = 1, show_progress: bool = True, min_answered: float = 0.9,
                 allow_partial: bool = False) -> tuple[pd.DataFrame, dict]:
    """Score ``n_features`` matched alive pairs (seeded uniform sample) on both sides.

    Returns (per-pair DataFrame, summary dict). The summary has ``solo``, ``joint``, ``judge``,
    ``n_sampled``, ``n_missing_solo`` / ``n_missing_joint`` (sampled features whose judge answers are
    missing on that side), the :func:`summarize_comparison` numbers (pairs where either side has no
    fuzz score are dropped there) and ``sec_per_feature`` (this call's scoring time per newly scored
    feature; NaN when all were cached). A side whose judge answered less than ``min_answered`` of its
    features raises :class:`~paperlib.autointerp.judge.JudgeError` unless ``allow_partial``.
    """
    if solo.name == joint.name:
        raise ValueError(f"compare_runs got the same run {solo.name!r} on both sides; the joint side must be "
                         f"another run (e.g. sae=\"joint\" for the selected configuration, or a joint run name)")
    m = ensure_matching(solo, joint)
    sample = sample_pairs(m.pairs, n_features, seed=seed)
    kw = dict(context_kwargs=context_kwargs, do_detection=do_detection, seed=seed,
              n_workers=n_workers, show_progress=show_progress, min_answered=min_answered,
              allow_partial=allow_partial)
    decode = profile_decoder(solo.profile)
    s_solo = ensure_scores(solo, sample["i"].tolist(), judge, decode=decode, **kw)
    s_joint = ensure_scores(joint, sample["j"].tolist(), judge, decode=decode, **kw)
    a = s_solo.set_index("feature")
    b = s_joint.set_index("feature")

    def col(df, name, idx):
        return df[name].reindex(idx).to_numpy() if name in df.columns else np.full(len(idx), np.nan)

    per = pd.DataFrame({
        "solo_feature": sample["i"].to_numpy(), "joint_feature": sample["j"].to_numpy(),
        "cosine": sample["cosine"].to_numpy(),
        "fuzz_solo": col(a, "fuzz_score", sample["i"]).astype(float),
        "fuzz_joint": col(b, "fuzz_score", sample["j"]).astype(float),
    })
    per["delta"] = per["fuzz_joint"] - per["fuzz_solo"]
    per["firing_rate_solo"] = col(a, "firing_rate", sample["i"])
    per["firing_rate_joint"] = col(b, "firing_rate", sample["j"])
    per["explanation_solo"] = col(a, "explanation", sample["i"])
    per["explanation_joint"] = col(b, "explanation", sample["j"])
    if do_detection:
        per["detection_solo"] = col(a, "detection_score", sample["i"])
        per["detection_joint"] = col(b, "detection_score", sample["j"])
    summary = {"solo": solo.name, "joint": joint.name, "judge": judge.name, "n_sampled": int(len(sample)),
               "n_missing_solo": s_solo.attrs["n_missing"], "n_missing_joint": s_joint.attrs["n_missing"],
               **summarize_comparison(s_solo, s_joint, sample)}
    n_new = s_solo.attrs["n_new"] + s_joint.attrs["n_new"]
    secs = [s.attrs["sec_per_feature"] * s.attrs["n_new"] for s in (s_solo, s_joint)
            if s.attrs["n_new"]]
    summary["n_new_features"] = int(n_new)
    summary["sec_per_feature"] = float(sum(secs) / n_new) if n_new else float("nan")
    return per, summary


def default_sanity_n(profile: str | Profile) -> int:
    """Sanity-check trials: 40 (the method.md §6 measurement: 35/40 for SmolLM2-135M); 20 on ``smoke``.

    Each trial costs two short forward passes of the local judge. 20 trials (seed 0: 16/20,
    p = 0.006) keep the smoke notebook fast; 12 trials were too few (9/12, p = 0.07).
    """
    return 20 if get_profile(profile).name == "smoke" else 40
