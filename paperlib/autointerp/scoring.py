"""Scoring explanations: fuzzing, detection and activation prediction (docs/method.md §3.6).

For one feature the judge first explains the highlighted ``explain`` windows, then:

* :func:`fuzz` — every test window is shown twice: once with the tokens where the feature really
  fires highlighted, once with the same number of randomly chosen tokens (never exactly the true set).
  The judge rates how well each highlight fits the explanation. Score: the AUROC of its ratings over
  true vs random highlights (``fuzz_auroc``, 0.5 = chance; ``fuzz_score = 2·AUROC − 1`` in [−1, 1]);
  the balanced accuracy of its yes/no answers is kept beside it. :func:`retest` scores the same
  explanation on a disjoint half of the windows, :func:`shuffled` on the same items with another
  feature's explanation (the chance control).
* :func:`detection` — activating against non-activating windows, no highlights; balanced accuracy.
* :func:`activation_prediction_spearman` — the judge predicts per-token activations; Spearman ρ
  with the true activations over every token of the feature's test windows.

A judge answer that is missing (failed call, unparseable reply) is never counted as wrong: a score
with any missing answer is missing (NaN), its record says ``missing`` and how many answers were
missing, and it is not written to disk, so a re-run asks again. Every record keeps each example's
label and answer. :func:`score_features` runs contexts → explanation → scores with one result file
per complete feature (so a run resumes), and :func:`paired_comparison` compares matched feature
pairs of two SAEs with a paired t-test.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from paperlib.autointerp.contexts import (
    Decoder,
    Example,
    FeatureContexts,
    collect_contexts,
    collect_feature_activations,
    load_contexts,
    save_contexts,
)
from paperlib.autointerp.judge import Judge, JudgeItem, judge_key, rank_decisions
from paperlib.autointerp.reliability import auroc
from paperlib.config.io import read_json, write_json
from paperlib.metrics.stats import paired


# --------------------------------------------------------------------------- fuzzing
def random_highlight(true_mask: Sequence[bool], rng: np.random.Generator) -> list[bool] | None:
    """Same number of highlighted tokens as ``true_mask``, chosen at random, never the true set.

    None when impossible (no active token, or every token active).
    """
    n, k = len(true_mask), int(sum(bool(x) for x in true_mask))
    if k == 0 or k >= n:
        return None
    true_set = {i for i, x in enumerate(true_mask) if x}
    while True:
        pick = set(rng.choice(n, size=k, replace=False).tolist())
        if pick != true_set:
            return [i in pick for i in range(n)]


@dataclass
class FuzzItem:
    example: int  # index into the examples the items were made from
    highlight: list[bool]
    correct: bool


def make_fuzz_items(examples: Sequence[Example], seed: int | Sequence[int] = 0) -> list[FuzzItem]:
    """Every eligible example (some but not all tokens active) twice: correctly highlighted and with a
    random highlight of the same size (:func:`random_highlight`); the items in a seeded random order."""
    rng = np.random.default_rng(seed)
    items = []
    for i, ex in enumerate(examples):
        true_mask = ex.active_mask()
        if not 0 < sum(true_mask) < len(true_mask):
            continue
        hl = random_highlight(true_mask, rng)
        assert hl is not None
        items += [FuzzItem(i, true_mask, True), FuzzItem(i, hl, False)]
    order = rng.permutation(len(items))
    return [items[k] for k in order]


def n_fuzzable(examples: Sequence[Example]) -> int:
    """Examples that give a fuzz pair (some but not all tokens active)."""
    return sum(0 < sum(ex.active_mask()) < len(ex.acts) for ex in examples)


def balanced_accuracy(labels: Sequence[bool], preds: Sequence[bool | None]) -> float:
    """Mean of the true-positive and true-negative rates.

    NaN if either class is absent or any prediction is missing (None): a missing answer is not a
    wrong one.
    """
    if len(labels) != len(preds):
        raise ValueError("labels and predictions differ in length")
    if any(p is None for p in preds):
        return float("nan")
    pos = [p is True for lab, p in zip(labels, preds, strict=True) if lab]
    neg = [p is False for lab, p in zip(labels, preds, strict=True) if not lab]
    if not pos or not neg:
        return float("nan")
    return 0.5 * (sum(pos) / len(pos) + sum(neg) / len(neg))


# --------------------------------------------------------------------------- scorers
def explain_feature(ctx: FeatureContexts, judge: Judge, decode: Decoder) -> str | None:
    items = [JudgeItem(decode(ex.token_ids), ex.active_mask()) for ex in ctx.explain]
    return judge.explain(items) if items else None


def fuzz_examples(examples: Sequence[Example], feature: int, explanation: str, judge: Judge, decode: Decoder,
                  seed: int | Sequence[int] = 0, prefix: str = "fuzz", min_windows: int = 1) -> dict:
    """Fuzzing score of one feature on ``examples`` (see module docstring), under ``prefix`` keys.

    ``{prefix}_auroc`` is the primary score: the AUROC of the judge's continuous scores (``judge.scores``,
    e.g. the likelihood judge's gains) over correctly vs randomly highlighted items, or of its 0/1
    answers for a judge without scores (then equal to the balanced accuracy). ``{prefix}_score`` =
    2·AUROC − 1. Fewer than ``min_windows`` fuzzable windows: no score (``{prefix}_unscored`` says why).
    """
    fuzzable = [ex for ex in examples if 0 < sum(ex.active_mask()) < len(ex.acts)]
    if not fuzzable or len(fuzzable) < min_windows:
        nan = float("nan")
        return {f"{prefix}_auroc": nan, f"{prefix}_score": nan, f"{prefix}_bal_acc": nan, f"{prefix}_n": 0,
                f"{prefix}_n_missing": 0,
                f"{prefix}_unscored": f"{len(fuzzable)} fuzzable windows, fewer than {max(1, min_windows)}"}
    fitems = make_fuzz_items(fuzzable, seed=[*np.atleast_1d(seed).tolist(), feature, 1])
    items = [JudgeItem(decode(fuzzable[f.example].token_ids), f.highlight) for f in fitems]
    labels = [f.correct for f in fitems]
    if hasattr(judge, "scores"):
        scores = [float(x) for x in judge.scores(explanation, items, "fuzz")]
        preds: list = rank_decisions(scores, sum(labels))
        auc = auroc(labels, scores)
    else:
        preds = judge.judge_binary(explanation, items, "fuzz", n_positive=sum(labels))
        scores = [float("nan") if p is None else float(p) for p in preds]
        auc = float("nan") if any(p is None for p in preds) else auroc(labels, scores)
    return {f"{prefix}_auroc": auc, f"{prefix}_score": 2 * auc - 1,
            f"{prefix}_bal_acc": balanced_accuracy(labels, preds), f"{prefix}_n": len(items),
            f"{prefix}_n_missing": sum(p is None for p in preds),
            f"{prefix}_trace": [{"row": fuzzable[f.example].row, "start": fuzzable[f.example].start,
                                 "highlight": [i for i, h in enumerate(f.highlight) if h], "correct": f.correct,
                                 "pred": p, "score": sc} for f, p, sc in zip(fitems, preds, scores, strict=True)]}


def split_halves(examples: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """Two disjoint halves of a feature's test windows (even and odd positions; the windows are ordered by
    activation quantile, so both halves span the quantiles)."""
    return list(examples[0::2]), list(examples[1::2])


def fuzz(ctx: FeatureContexts, explanation: str, judge: Judge, decode: Decoder, seed: int = 0,
         halves: bool = False, min_windows: int = 1) -> dict:
    """Fuzzing score of one feature on its test windows (the first half with ``halves``)."""
    exs = split_halves(ctx.activating)[0] if halves else ctx.activating
    return fuzz_examples(exs, ctx.feature, explanation, judge, decode, seed, "fuzz", min_windows)


def retest(ctx: FeatureContexts, explanation: str, judge: Judge, decode: Decoder, seed: int = 0,
           min_windows: int = 1) -> dict:
    """The same explanation fuzz-scored again on the second half of the test windows (disjoint from
    :func:`fuzz` with ``halves``), with other random highlights: ``retest_*`` keys."""
    return fuzz_examples(split_halves(ctx.activating)[1], ctx.feature, explanation, judge, decode,
                         [seed, 7], "retest", min_windows)


def shuffled(ctx: FeatureContexts, explanation: str, judge: Judge, decode: Decoder, seed: int = 0,
             min_windows: int = 1) -> dict:
    """The items of :func:`fuzz` with ``halves`` (same windows and highlights) scored with another
    feature's ``explanation``: ``shuffled_*`` keys. The likelihood judge reuses the neutral passes."""
    return fuzz_examples(split_halves(ctx.activating)[0], ctx.feature, explanation, judge, decode, seed,
                         "shuffled", min_windows)


def detection(ctx: FeatureContexts, explanation: str, judge: Judge, decode: Decoder) -> dict:
    """Activating vs non-activating windows, balanced accuracy."""
    exs = ctx.activating + ctx.non_activating
    labels = [True] * len(ctx.activating) + [False] * len(ctx.non_activating)
    items = [JudgeItem(decode(ex.token_ids)) for ex in exs]
    preds = judge.judge_binary(explanation, items, "detection", n_positive=len(ctx.activating)) \
        if items else []
    acc = balanced_accuracy(labels, preds)
    out = {"detection_bal_acc": acc, "detection_score": 2 * acc - 1, "detection_n": len(items),
           "detection_n_missing": sum(p is None for p in preds),
           "detection_trace": [{"kind": ex.kind, "row": ex.row, "start": ex.start, "label": lab,
                                "pred": p} for ex, lab, p in zip(exs, labels, preds, strict=True)]}
    if hasattr(judge, "scores") and items:
        out["detection_auc"] = auroc(labels, judge.scores(explanation, items, "detection"))
    return out


def activation_prediction_spearman(ctx: FeatureContexts, explanation: str, judge: Judge,
                                   decode: Decoder) -> dict:
    """Reference scorer: Spearman ρ between predicted and true per-token activations (NaN when any
    window's prediction is missing)."""
    from scipy.stats import spearmanr

    exs = ctx.activating + ctx.non_activating
    preds = judge.predict_activations(explanation, [JudgeItem(decode(ex.token_ids)) for ex in exs]) \
        if exs else []
    n_missing = sum(p is None for p in preds)
    true = [a for ex in exs for a in ex.acts]
    pred = [] if n_missing else [x for p in preds for x in p]
    rho = float(spearmanr(true, pred).statistic) if len(set(true)) > 1 and len(set(pred)) > 1 \
        else float("nan")
    return {"spearman_rho": rho, "spearman_n_tokens": len(true), "spearman_n_missing": n_missing}


def score_contexts(ctx: FeatureContexts, judge: Judge, decode: Decoder, *,
                   explainer: Judge | None = None, do_detection: bool = True,
                   do_spearman: bool = False, seed: int = 0, halves: bool = False,
                   min_windows: int = 1) -> dict:
    """Explain and score one feature; returns a flat record plus per-example traces. ``missing`` is
    True when the judge left the explanation or any answer missing (the record is then not final).
    ``halves``: fuzz on the first half of the test windows only (:func:`split_halves`; the second half is
    kept for :func:`retest`)."""
    rec: dict = {"feature": ctx.feature, "n_firing": ctx.n_firing, "firing_rate": ctx.firing_rate,
                 "n_explain": len(ctx.explain), "n_activating": len(ctx.activating),
                 "n_non_activating": len(ctx.non_activating)}
    expl = explain_feature(ctx, explainer or judge, decode)
    rec["explanation_valid"] = expl is not None
    rec["explanation"] = expl or ""
    rec["missing"] = expl is None and bool(ctx.explain)
    if expl is None:
        rec["fuzz_score"] = float("nan")  # not scored: missing, never a score, and the column always exists
        return rec
    rec.update(fuzz(ctx, expl, judge, decode, seed=seed, halves=halves, min_windows=min_windows))
    if do_detection:
        rec.update(detection(ctx, expl, judge, decode))
    if do_spearman:
        rec.update(activation_prediction_spearman(ctx, expl, judge, decode))
    rec["missing"] = any(rec.get(f"{k}_n_missing", 0) for k in ("fuzz", "detection", "spearman"))
    return rec


def score_features(
    sae, acts, token_ids: np.ndarray, positions: np.ndarray, features: Sequence[int], thresholds,
    judge: Judge, decode: Decoder, *, out_dir: str | os.PathLike | None = None,
    explainer: Judge | None = None, do_detection: bool = True, do_spearman: bool = False,
    seed: int = 0, chunk_size: int = 4096, context_kwargs: dict | None = None,
    show_progress: bool = True, n_workers: int = 1,
) -> pd.DataFrame:
    """Collect contexts, explain and score ``features`` of one SAE; one DataFrame row per feature.

    With ``out_dir``: contexts go to ``out_dir/contexts.json`` and each complete feature's record
    (with traces) to ``out_dir/features/<f>.json``; existing files of the same judge
    (:func:`~paperlib.autointerp.judge.judge_key`) are reused (resume). Records with missing judge
    answers (``missing``) are returned but never written.
    Trace columns are dropped from the returned DataFrame. ``n_workers > 1`` scores features in a
    thread pool (for HTTP judges; keep 1 for the local judge, whose forward passes are serialised).

    Cost of the local likelihood judge: every fuzz item is two forward passes (explanation and
    neutral prefix) of ~60 tokens, detection adds two per activating and non-activating window
    (activation prediction reuses detection's passes through the cache).
    """
    from tqdm.auto import tqdm

    feats = [int(f) for f in features]
    out = Path(out_dir) if out_dir is not None else None
    cpath = out / "contexts.json" if out else None
    contexts: dict[int, FeatureContexts] = {}
    meta = {"seed": seed, **(context_kwargs or {})}
    if cpath is not None and cpath.exists():
        stored = read_json(cpath).get("meta", {})
        if stored != meta:
            raise ValueError(f"{cpath} was built with {stored}, not {meta}: use another out_dir")
        contexts = load_contexts(cpath)
    missing = [f for f in feats if f not in contexts]
    if missing:
        fa = collect_feature_activations(sae, acts, missing, thresholds, chunk_size, show_progress)
        contexts.update(collect_contexts(fa, token_ids, positions, features=missing, seed=seed,
                                         **(context_kwargs or {})))
        if cpath is not None:
            save_contexts(cpath, contexts, meta)

    def one(f: int) -> dict:
        fpath = out / "features" / f"{f}.json" if out else None
        if fpath is not None and fpath.exists():
            rec = read_json(fpath)
            if rec.get("judge") == judge_key(judge):
                return rec
        rec = score_contexts(contexts[f], judge, decode, explainer=explainer,
                             do_detection=do_detection, do_spearman=do_spearman, seed=seed)
        rec["judge"] = judge_key(judge)
        if fpath is not None and not rec["missing"]:
            write_json(fpath, rec)
        return rec

    if n_workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n_workers) as ex:
            recs = list(tqdm(ex.map(one, feats), total=len(feats), desc="auto-interp",
                             disable=not show_progress))
    else:
        recs = [one(f) for f in tqdm(feats, desc="auto-interp", disable=not show_progress)]
    rows = [{k: v for k, v in rec.items() if not k.endswith("_trace")} for rec in recs]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- paired comparison
def paired_comparison(scores_a: pd.DataFrame, scores_b: pd.DataFrame, pairs: pd.DataFrame,
                      column: str = "fuzz_score", confidence: float = 0.95) -> dict:
    """Paired Δ = b − a over matched pairs (``pairs`` columns ``i`` → a's feature, ``j`` → b's).

    Typically a = solo, b = joint. Pairs where either score is NaN are dropped. Returns means,
    Δ mean, relative Δ (Δ / |mean a|), the paired t-test of :func:`paperlib.metrics.stats.paired`
    with the CI of Δ, and the share of pairs where b is higher (and equal). With fewer than two
    pairs or identical differences the test outputs are NaN.
    """
    a = scores_a.set_index("feature")[column]
    b = scores_b.set_index("feature")[column]
    pi, pj = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    keep = np.isin(pi, a.index) & np.isin(pj, b.index)
    va = a.reindex(pi[keep]).to_numpy(float)
    vb = b.reindex(pj[keep]).to_numpy(float)
    ok = np.isfinite(va) & np.isfinite(vb)
    va, vb = va[ok], vb[ok]
    n = len(va)
    res = {"column": column, "n_pairs": n, "mean_a": float(np.mean(va)) if n else float("nan"),
           "mean_b": float(np.mean(vb)) if n else float("nan")}
    d = vb - va
    res["delta_mean"] = float(d.mean()) if n else float("nan")
    res["delta_rel"] = res["delta_mean"] / abs(res["mean_a"]) if n and res["mean_a"] else float("nan")
    try:
        test = paired(vb, va, confidence)  # tests vb − va
    except ValueError:  # fewer than two pairs
        test = None
    if test is not None and test.std_diff > 0:
        res.update(t=test.t, p=test.p, df=n - 1, ci_low=test.ci_low, ci_high=test.ci_high)
    else:
        res.update(t=float("nan"), p=float("nan"), df=max(n - 1, 0), ci_low=float("nan"),
                   ci_high=float("nan"))
    res["share_b_higher"] = float((d > 0).mean()) if n else float("nan")
    res["share_equal"] = float((d == 0).mean()) if n else float("nan")
    return res
