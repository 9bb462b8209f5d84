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
from paperlib.autointerp.contexts import (
    collect_contexts,
    collect_feature_activations,
    load_contexts,
    save_contexts,
    token_decoder,
)
from paperlib.autointerp.explain import ContextExplainer
from paperlib.autointerp.judge import check_answered, judge_key
from paperlib.autointerp.local import LocalLikelihoodJudge
from paperlib.autointerp.reliability import (
    paired_power,
    plan_design,
    retest_reliability,
    shuffled_control,
    unscored_rates,
)
from paperlib.autointerp.sanity import judge_sanity_check
from paperlib.autointerp.scoring import paired_comparison, retest, score_contexts, score_features, shuffled
from paperlib.config import paths
from paperlib.config.io import read_json, write_json, write_text
from paperlib.config.profiles import Profile, get_profile
from paperlib.data import lm
from paperlib.data.activations import load_cache
from paperlib.metrics.matching import MatchResult, hungarian_match
from paperlib.sae.arms import primary_runs
from paperlib.stages.calibrate import ensure_calibration
from paperlib.stages.run import Run
from paperlib.stages.train import load_run

__all__ = [
    "FUZZ_CONTEXT",
    "LEAN_CONTEXT",
    "MIN_WINDOWS",
    "RunScorer",
    "background_counts",
    "RESERVE_S",
    "compare_seed_pairs",
    "default_budget_s",
    "default_pilot_pairs",
    "make_explainer",
    "pair_order",
    "seed_pairs",
    "summarize_pairs",
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
                                    per_quantile=1, n_non_activating=0)
"""Settings of :func:`ensure_scores` (the second model's grid): 10 explanation windows and 3 test windows
(one per activation tercile) of 20 tokens, firing token 4 from the end, no detection. Each test window
gives a true and a fuzzed item (3 + 3), two forward passes each for the local judge."""

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


# ----------------------------------------------------------------------------------------------
# paired seeds: measured reliability, shuffled control and power (issue 15)
# ----------------------------------------------------------------------------------------------
FUZZ_CONTEXT: dict[str, int] = dict(window=12, n_after=2, explain_window=24, n_explain=10, n_quantiles=10,
                                    per_quantile=2, n_non_activating=0)
"""Notebook 05's contexts: 10 explanation windows of 24 tokens (context for the explainer) and up to 20 test
windows of 12 tokens (firing token 2 from the end), one or two per activation decile. The even half gives the
score (10 windows → 10 true + 10 fuzzed items), the odd half the retest. Short test windows halve the
likelihood judge's cost per item against the 20-token windows of :data:`LEAN_CONTEXT`."""

MIN_WINDOWS = 10
"""Fuzzable test windows a feature needs per half (each gives one true and one fuzzed item)."""


def seed_pairs(profile: str | Profile, arm: str = "joint", n_seeds: int | None = None) -> list[tuple[Run, Run]]:
    """(solo seed s, ``arm`` seed s) for the primary comparison's seeds (:func:`paperlib.sae.arms.primary_runs`)."""
    p = get_profile(profile)
    specs = primary_runs(p)
    if arm == "solo" or arm not in specs or "solo" not in specs:
        raise ValueError(f"parameter sae={arm!r}: not a primary arm paired with solo; use one of "
                         f"{[a for a in specs if a != 'solo']}")
    if n_seeds is not None and not 1 <= n_seeds:
        raise ValueError(f"parameter n_seeds must be >= 1, got {n_seeds!r}")
    pairs = [(Run.of(p, a), Run.of(p, b)) for a, b in zip(specs["solo"], specs[arm], strict=True)]
    return pairs[:n_seeds]


def pair_order(matchings: Sequence[pd.DataFrame], seed: int = 0) -> pd.DataFrame:
    """Every matched pair of every seed pair in one nested order: a seeded permutation per seed pair,
    interleaved (rank 0 of every seed pair, then rank 1, ...), so the first n pairs are spread evenly over
    the seeds and a larger n only extends the sample. Columns ``seed_pair``, ``rank``, ``i``, ``j``, ``cosine``."""
    parts = []
    for s, m in enumerate(matchings):
        perm = np.random.default_rng([seed, s]).permutation(len(m))
        df = m.iloc[perm][["i", "j", "cosine"]].reset_index(drop=True)
        df.insert(0, "rank", np.arange(len(df)))
        df.insert(0, "seed_pair", s)
        parts.append(df)
    if not parts:
        return pd.DataFrame(columns=["seed_pair", "rank", "i", "j", "cosine"])
    return pd.concat(parts).sort_values(["rank", "seed_pair"], kind="stable").reset_index(drop=True)


def background_counts(profile: str | Profile, decode) -> dict[str, int]:
    """Token-string counts over the profile's auto-interp range (the explainer's background)."""
    ids = np.asarray(load_cache(profile).token_ids("autointerp")).ravel()
    counts = np.bincount(ids)
    nz = np.flatnonzero(counts)
    out: dict[str, int] = {}
    for i, s in zip(nz.tolist(), decode(nz.tolist()), strict=True):
        out[s] = out.get(s, 0) + int(counts[i])
    return out


def make_explainer(judge, profile: str | Profile, decode=None):
    """The explainer used with ``judge``: :class:`ContextExplainer` for the local likelihood judge (which
    cannot write), None (the judge model explains) for a chat judge."""
    if not isinstance(judge, LocalLikelihoodJudge):
        return None
    return ContextExplainer(background_counts(profile, decode or profile_decoder(profile)))


class RunScorer:
    """Contexts and cached fuzz records of one run: ``features/<f>.json`` (score on the first half of the
    test windows), ``retest/<f>.json`` (second half) and ``shuffled/<f>.json`` (first half, another feature's
    explanation). Records keep the scoring time ``sec``; incomplete ones (missing judge answers) are not kept."""

    def __init__(self, run: Run, judge, explainer, decode, *, context_kwargs: dict | None = None, seed: int = 0,
                 min_windows: int = MIN_WINDOWS):
        self.run, self.judge, self.explainer, self.decode = run, judge, explainer, decode
        self.ckw = dict(FUZZ_CONTEXT if context_kwargs is None else context_kwargs)
        self.seed, self.min_windows = seed, min_windows
        who = {"judge": judge_key(judge), "explainer": getattr(explainer, "name", None)}
        tag = _hash({"run_key": run.key, "context": self.ckw, "seed": seed, "min_windows": min_windows,
                     "version": 2, **who})
        self.out = run.dir / "eval" / "autointerp" / f"pairs-{_slug(judge.name)}-{tag}"
        self.contexts: dict = {}

    def ensure_contexts(self, features: Sequence[int], show_progress: bool = False) -> None:
        """Contexts of ``features`` (one encoding pass for those not on disk yet)."""
        path = self.out / "contexts.json"
        if not self.contexts and path.exists():
            self.contexts = load_contexts(path)
        todo = [int(f) for f in features if int(f) not in self.contexts]
        if not todo:
            return
        cache, p = load_cache(self.run.profile), self.run.profile
        thr = np.asarray(ensure_calibration(self.run).thresholds, dtype=np.float32)
        fa = collect_feature_activations(load_run(self.run), cache.acts("autointerp"), todo, thr,
                                         p.sae.batch_size * 4, show_progress)
        self.contexts.update(collect_contexts(fa, cache.token_ids("autointerp"), cache.positions("autointerp"),
                                              features=todo, seed=self.seed, **self.ckw))
        save_contexts(path, self.contexts, {"seed": self.seed, **self.ckw})

    def _cached(self, part: str, f: int, make, check=lambda rec: True) -> dict:
        path = self.out / part / f"{f}.json"
        if path.exists():
            rec = read_json(path)
            if check(rec):
                return rec
        t0 = time.perf_counter()
        rec = make(self.contexts[f])
        rec["sec"] = time.perf_counter() - t0
        if not rec.get("missing"):
            write_json(path, rec)
        return rec

    def score(self, f: int) -> dict:
        """Explanation and fuzz score on the first half of the test windows."""
        return self._cached("features", f, lambda c: score_contexts(
            c, self.judge, self.decode, explainer=self.explainer, do_detection=False, seed=self.seed,
            halves=True, min_windows=self.min_windows))

    def retest(self, f: int) -> dict:
        expl = self.score(f)["explanation"]

        def make(c):
            rec = retest(c, expl, self.judge, self.decode, self.seed, self.min_windows)
            return {**rec, "explanation": expl, "missing": bool(rec["retest_n_missing"])}
        return self._cached("retest", f, make, lambda r: r.get("explanation") == expl)

    def shuffled(self, f: int, donor: int, donor_explanation: str) -> dict:
        def make(c):
            rec = shuffled(c, donor_explanation, self.judge, self.decode, self.seed, self.min_windows)
            return {**rec, "donor": int(donor), "donor_explanation": donor_explanation,
                    "missing": bool(rec["shuffled_n_missing"])}
        return self._cached("shuffled", f, make,
                            lambda r: r.get("donor") == donor and r.get("donor_explanation") == donor_explanation)


def _median_sec(recs: Sequence[dict]) -> float:
    """Median scoring time of the scored records (unscored ones cost nothing and would bias it down)."""
    timed = [r for r in recs if np.isfinite(r.get("sec", np.nan))]
    secs = [float(r["sec"]) for r in timed if np.isfinite(r.get("fuzz_auroc", np.nan))] or \
        [float(r["sec"]) for r in timed]
    return float(np.median(secs)) if secs else float("nan")


def _design_path(profile: Profile, key: dict) -> Path:
    return paths.profile_dir(profile) / "autointerp" / f"design-{_hash(key)}.json"


def _scorers(pairs_runs, judge, explainer, decode, ckw, seed, min_windows):
    return [(RunScorer(a, judge, explainer, decode, context_kwargs=ckw, seed=seed, min_windows=min_windows),
             RunScorer(b, judge, explainer, decode, context_kwargs=ckw, seed=seed, min_windows=min_windows))
            for a, b in pairs_runs]


def _score_sides(order: pd.DataFrame, scorers, what: str, show_progress: bool) -> list[tuple[dict, dict]]:
    from tqdm.auto import tqdm

    out = []
    for row in tqdm(list(order.itertuples()), desc=what, disable=not show_progress):
        sa, sb = scorers[row.seed_pair]
        out.append((sa.score(int(row.i)), sb.score(int(row.j))))
    return out


def _donors(order: pd.DataFrame, side: str) -> list[int]:
    """Donor feature per pair: the next pair's feature of the same seed pair and side (cyclic), so no feature
    gets its own explanation or its matched partner's."""
    donors = [0] * len(order)
    for _, grp in order.groupby("seed_pair", sort=False):
        idx = grp.index.to_list()
        feats = grp[side].to_list()
        for k, r in enumerate(idx):
            donors[r] = int(feats[(k + 1) % len(feats)]) if len(feats) > 1 else -1
    return donors


def compare_seed_pairs(profile: str | Profile, judge, *, arm: str = "joint", n_seeds: int | None = None,
                       budget_s: float = 110.0, n_pairs: int | None = None, pilot_pairs: int = 10,
                       retest_share: float = 0.25, shuffled_share: float = 0.5, max_pairs: int = 600,
                       explainer=None, seed: int = 0, context_kwargs: dict | None = None,
                       min_windows: int = MIN_WINDOWS, replan: bool = False, plan_key: Any = None,
                       show_progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Fuzz-score matched feature pairs of solo seed s and ``arm`` seed s, with the design chosen from a
    measured cost.

    The pairs of all seed pairs form one nested order (:func:`pair_order`). The first ``pilot_pairs`` are
    scored; the median scoring time per feature (recorded in each record) and the shuffled control's cost
    (about half: the neutral passes are reused) give :func:`~paperlib.autointerp.reliability.plan_design`
    the number of pairs that fits ``budget_s`` with ``retest_share`` of them retested and
    ``shuffled_share`` scored with a shuffled explanation. The design is stored (keyed by everything that
    changes it, with ``plan_key`` in place of ``budget_s`` when given, e.g. the notebook's nominal budget
    while ``budget_s`` is what is left of it) and reused by later calls unless ``replan``; ``n_pairs`` fixes
    the number instead.

    Returns the per-pair table and a summary (design, paired Δ AUROC with CI, p and MDE, reliability,
    shuffled control, unscored features per side with Fisher's test).
    """
    p = get_profile(profile)
    if not budget_s > 0:
        raise ValueError(f"parameter budget_s must be > 0, got {budget_s!r}")
    if pilot_pairs < 2:
        raise ValueError(f"parameter pilot_pairs must be >= 2, got {pilot_pairs!r}")
    runs = seed_pairs(p, arm, n_seeds)
    order = pair_order([ensure_matching(a, b).pairs for a, b in runs], seed)
    cap = min(len(order), max_pairs if n_pairs is None else n_pairs)
    order = order.iloc[:cap].reset_index(drop=True)
    decode = profile_decoder(p)
    ckw = dict(FUZZ_CONTEXT if context_kwargs is None else context_kwargs)
    scorers = _scorers(runs, judge, explainer, decode, ckw, seed, min_windows)
    for s, (sa, sb) in enumerate(scorers):
        grp = order[order["seed_pair"] == s]
        sa.ensure_contexts(grp["i"].tolist())
        sb.ensure_contexts(grp["j"].tolist())
    key = {"runs": [(a.key, b.key) for a, b in runs], "judge": judge_key(judge),
           "budget": budget_s if plan_key is None else plan_key,
           "explainer": getattr(explainer, "name", None), "context": ckw, "seed": seed, "pilot": pilot_pairs,
           "shares": (retest_share, shuffled_share), "max_pairs": cap, "min_windows": min_windows}
    dpath = _design_path(p, key)
    t0 = time.perf_counter()
    pilot = _score_sides(order.iloc[:min(pilot_pairs, cap)], scorers, "auto-interp pilot", show_progress)
    sec_feature = _median_sec([r for pair in pilot for r in pair])
    if n_pairs is not None:
        design = plan_design(0.0, 0.0, 0.0, retest_share=retest_share, shuffled_share=shuffled_share,
                             min_pairs=cap, max_pairs=cap).to_dict()
        design.update(sec_feature=sec_feature, how=f"fixed by the caller: n_pairs={n_pairs}")
    elif dpath.exists() and not replan:
        design = read_json(dpath)
    else:
        design = plan_design(sec_feature, sec_feature / 2, budget_s, retest_share=retest_share,
                             shuffled_share=shuffled_share, min_pairs=min(pilot_pairs, cap), max_pairs=cap).to_dict()
        design["how"] = (f"measured {sec_feature:.3f} s per feature (median of the {len(pilot)}-pair pilot) → "
                         f"{design['sec_per_pair']:.2f} s per pair with {retest_share:.0%} retested and "
                         f"{shuffled_share:.0%} shuffled-controlled → {design['n_pairs']} pairs fit {budget_s:.0f} s"
                         + ("" if plan_key is None else f" (what was left of a {plan_key} s budget)"))
        if not any(r.get("missing") for pair in pilot for r in pair):  # a pilot timed on failed calls is not kept
            write_json(dpath, design)
    order = order.iloc[:design["n_pairs"]].reset_index(drop=True)
    recs = _score_sides(order, scorers, "auto-interp", show_progress)
    per = _per_pair(order, runs, recs)
    _add_retest(per, order, scorers, design["n_retest"], show_progress)
    _add_shuffled(per, order, scorers, design["n_shuffled"], show_progress)
    design["sec_scoring"] = time.perf_counter() - t0
    return per, summarize_pairs(per, design, judge, explainer, arm)


def _per_pair(order: pd.DataFrame, runs, recs) -> pd.DataFrame:
    def get(rec, k):
        return rec.get(k, np.nan)

    return pd.DataFrame({
        "seed_pair": order["seed_pair"].to_numpy(), "solo_run": [runs[s][0].name for s in order["seed_pair"]],
        "joint_run": [runs[s][1].name for s in order["seed_pair"]],
        "solo_feature": order["i"].to_numpy(), "joint_feature": order["j"].to_numpy(),
        "cosine": order["cosine"].to_numpy(),
        "auroc_solo": [float(get(a, "fuzz_auroc")) for a, _ in recs],
        "auroc_joint": [float(get(b, "fuzz_auroc")) for _, b in recs],
        "missing_solo": [bool(a.get("missing")) for a, _ in recs],
        "missing_joint": [bool(b.get("missing")) for _, b in recs],
        "firing_rate_solo": [get(a, "firing_rate") for a, _ in recs],
        "firing_rate_joint": [get(b, "firing_rate") for _, b in recs],
        "explanation_solo": [a.get("explanation", "") for a, _ in recs],
        "explanation_joint": [b.get("explanation", "") for _, b in recs],
    }).assign(delta=lambda d: d["auroc_joint"] - d["auroc_solo"],
              fuzz_solo=lambda d: 2 * d["auroc_solo"] - 1, fuzz_joint=lambda d: 2 * d["auroc_joint"] - 1)


def _add_retest(per: pd.DataFrame, order, scorers, n: int, show_progress: bool) -> None:
    from tqdm.auto import tqdm

    for side, col in (("solo", "i"), ("joint", "j")):
        per[f"retest_{side}"] = np.nan
        for r in tqdm(range(min(n, len(order))), desc=f"retest {side}", disable=not show_progress):
            if np.isfinite(per.at[r, f"auroc_{side}"]):
                sc = scorers[order.at[r, "seed_pair"]][0 if side == "solo" else 1]
                per.at[r, f"retest_{side}"] = float(sc.retest(int(order.at[r, col])).get("retest_auroc", np.nan))


def _add_shuffled(per: pd.DataFrame, order, scorers, n: int, show_progress: bool) -> None:
    from tqdm.auto import tqdm

    head = order.iloc[:min(n, len(order))]
    for side, col in (("solo", "i"), ("joint", "j")):
        per[f"shuffled_{side}"] = np.nan
        per[f"shuffled_donor_{side}"] = -1
        ok = head[per.loc[head.index, f"auroc_{side}"].notna()]
        donors = _donors(ok.reset_index(drop=True), col)
        for (r, row), donor in tqdm(list(zip(ok.iterrows(), donors, strict=True)), desc=f"shuffled {side}",
                                    disable=not show_progress):
            if donor < 0:
                continue
            sc = scorers[int(row["seed_pair"])][0 if side == "solo" else 1]
            rec = sc.shuffled(int(row[col]), donor, sc.score(donor)["explanation"])
            per.at[r, f"shuffled_{side}"] = float(rec.get("shuffled_auroc", np.nan))
            per.at[r, f"shuffled_donor_{side}"] = donor


def _stack(per: pd.DataFrame, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([per[f"{a}_solo"], per[f"{a}_joint"]]).astype(float)
    y = np.concatenate([per[f"{b}_solo"], per[f"{b}_joint"]]).astype(float)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def summarize_pairs(per: pd.DataFrame, design: dict, judge, explainer, arm: str = "joint") -> dict:
    """The notebook-05 summary of a :func:`compare_seed_pairs` table: paired Δ AUROC (joint − solo) with CI,
    p and MDE; per-seed-pair Δ; test–retest reliability over retested features (both sides pooled); the
    shuffled control over controlled features; unscored features per side with Fisher's exact test."""
    ok = per["auroc_solo"].notna() & per["auroc_joint"].notna()
    pw = paired_power(per.loc[ok, "auroc_solo"], per.loc[ok, "auroc_joint"])
    un = unscored_rates(int(per["auroc_solo"].isna().sum()), int(per["auroc_joint"].isna().sum()), len(per))
    rel = retest_reliability(*_stack(per, "auroc", "retest"))
    ctl = shuffled_control(*_stack(per, "auroc", "shuffled"))
    by_seed = {int(s): float(g.loc[ok, "delta"].mean()) if ok[g.index].any() else float("nan")
               for s, g in per.groupby("seed_pair")}
    return {"arm": arm, "judge": judge.name, "explainer": getattr(explainer, "name", judge.name),
            "n_seed_pairs": int(per["seed_pair"].nunique()), "n_sampled": int(len(per)),
            **{k: design.get(k) for k in ("n_pairs", "n_retest", "n_shuffled", "sec_feature", "sec_per_pair",
                                          "budget_s", "how", "sec_scoring")},
            "n_pairs_planned": design.get("n_pairs"),
            **{f"paired_{k}": v for k, v in pw.items()},
            **{f"unscored_{k}": v for k, v in un.items()},
            **{f"retest_{k}": v for k, v in rel.items()},
            **{f"control_{k}": v for k, v in ctl.items()},
            "delta_by_seed_pair": by_seed,
            "n_missing_solo": int(per["missing_solo"].sum()), "n_missing_joint": int(per["missing_joint"].sum())}


RESERVE_S = 12.0
"""Seconds of notebook 05's budget kept for what follows the scoring (figures, tables)."""


def default_budget_s(profile: str | Profile) -> float:
    """Notebook 05's wall-time budget: 150 s (the default profile's share of ``make reproduce``); 25 s on smoke."""
    return 25.0 if get_profile(profile).name == "smoke" else 150.0


def default_pilot_pairs(profile: str | Profile) -> int:
    """Pairs scored before the cost is measured: 10; 3 on smoke."""
    return 3 if get_profile(profile).name == "smoke" else 10
