"""Automated interpretability: contexts, explanations, fuzzing / detection / Spearman scorers.

Pipeline (method.md §3.6, paper §4/§5.2/App. F), for the features of one SAE:

1. :func:`collect_feature_activations` runs ``sae.encode(x, thresholds=θ)`` over the auto-interp
   token range in chunks and keeps, per requested feature, only the sparse (token, value) list.
2. :func:`collect_contexts` builds per feature (seeded): ``explain`` — the top activating
   windows (non-overlapping) shown to the explainer; ``activating`` — test windows sampled
   evenly across activation deciles of the remaining firing tokens; ``non_activating`` — random
   windows where the feature never fires. A window has ``window`` tokens (default 32) and
   contains the sampled firing token ``n_after`` tokens before its end (clipped to the row).
   Every example stores row, span, token ids and per-token activations, and contexts are saved
   as JSON (:func:`save_contexts`), so every score traces back to its examples.
3. Explanation by the judge from the highlighted ``explain`` windows (``<<token>>`` like Delphi).
4. Scorers (each returns a per-feature record with every example's label and answer):

   * ``fuzz`` — Delphi fuzzing: the test windows are split (seeded) into halves; one half is shown
     with the true activating tokens highlighted, the other with the same NUMBER of random tokens
     of the window, never exactly the true set. The judge says which are correctly highlighted.
     Score = balanced accuracy, also reported as ``fuzz_score = 2·acc − 1`` ∈ [−1, 1].
   * ``detection`` — activating vs non-activating windows (no highlights), balanced accuracy.
   * ``activation_prediction_spearman`` — the reference code's scorer: the judge predicts
     per-token activations (OpenAI judge: integers 0–10; local judge: per-token log-likelihood
     gains), Spearman ρ with the true activations over all tokens of the feature's test windows.

   Invalid judge answers count as wrong (conservative) and are counted per feature.
5. :func:`score_features` runs 1–4 with per-feature result files (resumable), returning a
   DataFrame; :func:`paired_comparison` compares matched solo/joint pairs (paired t-test).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from paperlib.autointerp.judges import Judge, JudgeItem
from paperlib.config.io import read_json, write_json

Decoder = Callable[[Sequence[int]], list[str]]


# --------------------------------------------------------------------------- activations
@dataclass
class FeatureActivations:
    """Sparse activations of selected features: for feature f, activation rows ``idx[f]`` (int64,
    ascending) fire with values ``val[f]`` (float32); ``T`` activation rows in total."""

    T: int
    idx: dict[int, np.ndarray]
    val: dict[int, np.ndarray]


def collect_feature_activations(sae, acts, features: Sequence[int], thresholds,
                                chunk_size: int = 4096, show_progress: bool = True
                                ) -> FeatureActivations:
    """Encode ``acts [T, d]`` with per-token thresholds and keep only ``features``' firings.

    ``sae`` is duck-typed: ``sae.encode(x, thresholds=θ) -> [B, n]`` codes (torch).
    """
    import torch
    from tqdm.auto import tqdm

    if thresholds is None:
        raise ValueError("thresholds are required (per-token firing, method.md §3.1)")
    feats = np.asarray(list(features), dtype=np.int64)
    if feats.ndim != 1 or len(np.unique(feats)) != len(feats):
        raise ValueError("features must be a list of distinct ints")
    theta = thresholds if isinstance(thresholds, torch.Tensor) else torch.as_tensor(
        np.asarray(thresholds, dtype=np.float32))
    ft = torch.from_numpy(feats)
    T = int(acts.shape[0])
    idx_parts: list[list[np.ndarray]] = [[] for _ in feats]
    val_parts: list[list[np.ndarray]] = [[] for _ in feats]
    with torch.no_grad():
        for s in tqdm(range(0, T, chunk_size), desc="encode", disable=not show_progress):
            x = torch.from_numpy(np.asarray(acts[s:s + chunk_size], dtype=np.float32))
            codes = sae.encode(x, thresholds=theta)[:, ft]
            rows, cols = torch.nonzero(codes > 0, as_tuple=True)
            vals = codes[rows, cols].float().numpy()
            rows, cols = rows.numpy() + s, cols.numpy()
            order = np.argsort(cols, kind="stable")
            rows, cols, vals = rows[order], cols[order], vals[order]
            bounds = np.searchsorted(cols, np.arange(len(feats) + 1))
            for c in range(len(feats)):
                a, b = bounds[c], bounds[c + 1]
                if b > a:
                    idx_parts[c].append(rows[a:b].astype(np.int64))
                    val_parts[c].append(vals[a:b].astype(np.float32))
    idx, val = {}, {}
    for c, f in enumerate(feats.tolist()):
        idx[f] = np.concatenate(idx_parts[c]) if idx_parts[c] else np.zeros(0, np.int64)
        val[f] = np.concatenate(val_parts[c]) if val_parts[c] else np.zeros(0, np.float32)
    return FeatureActivations(T=T, idx=idx, val=val)


# --------------------------------------------------------------------------- contexts
@dataclass
class Example:
    """One window ``token_ids[row, start:end]`` with the feature's per-token activations."""

    row: int
    start: int
    end: int
    token_ids: list[int]
    acts: list[float]
    kind: str  # "top" | "quantile" | "random"
    quantile: int | None = None
    peak: int | None = None  # index in the window of the sampled firing token

    @property
    def max_act(self) -> float:
        return max(self.acts) if self.acts else 0.0

    def active_mask(self) -> list[bool]:
        return [a > 0 for a in self.acts]


@dataclass
class FeatureContexts:
    feature: int
    n_firing: int
    T: int
    explain: list[Example] = field(default_factory=list)
    activating: list[Example] = field(default_factory=list)
    non_activating: list[Example] = field(default_factory=list)

    @property
    def firing_rate(self) -> float:
        return self.n_firing / self.T if self.T else float("nan")


def _token_map(token_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    rows, ctx = token_ids.shape
    pos = np.asarray(positions, dtype=np.int64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError("positions must be [T, 2] (row, position)")
    if len(pos) and (pos[:, 0].min() < 0 or pos[:, 0].max() >= rows or pos[:, 1].min() < 0
                     or pos[:, 1].max() >= ctx):
        raise ValueError("positions out of range of token_ids")
    m = np.full((rows, ctx), -1, dtype=np.int64)
    m[pos[:, 0], pos[:, 1]] = np.arange(len(pos))
    return m


def _window(pos: int, ctx: int, window: int, n_after: int) -> tuple[int, int]:
    w = min(window, ctx)
    start = pos - (w - 1 - min(n_after, w - 1))
    start = max(0, min(start, ctx - w))
    return start, start + w


def collect_contexts(
    feature_acts: FeatureActivations, token_ids: np.ndarray, positions: np.ndarray, *,
    features: Sequence[int] | None = None, window: int = 32, n_after: int = 4,
    n_explain: int = 20, n_quantiles: int = 10, per_quantile: int = 4, n_non_activating: int = 20,
    seed: int = 0,
) -> dict[int, FeatureContexts]:
    """Sample explanation, test (decile-stratified) and non-activating windows per feature.

    Activation rows with no entry in ``positions`` (e.g. dropped BOS tokens) count as 0.
    """
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 2:
        raise ValueError("token_ids must be [rows, context]")
    rows_n, ctx = token_ids.shape
    tmap = _token_map(token_ids, positions)
    if len(positions) != feature_acts.T:
        raise ValueError(f"positions has {len(positions)} rows, activations {feature_acts.T}")
    pos = np.asarray(positions, dtype=np.int64)
    feats = list(feature_acts.idx) if features is None else [int(f) for f in features]
    out: dict[int, FeatureContexts] = {}
    for f in feats:
        rng = np.random.default_rng([seed, f])
        idx, val = feature_acts.idx[f], feature_acts.val[f]
        dense = np.zeros(feature_acts.T + 1, dtype=np.float32)  # last slot: "no activation row"
        dense[idx] = val

        def example(r: int, s: int, e: int, kind: str, q: int | None, peak: int | None,
                    _dense=dense) -> Example:
            a = _dense[tmap[r, s:e]]  # -1 → last slot (0)
            return Example(int(r), int(s), int(e), token_ids[r, s:e].tolist(),
                           [float(x) for x in a], kind, q, peak)

        fc = FeatureContexts(feature=f, n_firing=int(len(idx)), T=feature_acts.T)
        taken: dict[int, list[tuple[int, int]]] = {}

        def free(r: int, s: int, e: int, _taken=taken) -> bool:
            return all(e <= a or s >= b for a, b in _taken.get(r, []))

        # explanation set: top activations, non-overlapping windows
        order = np.argsort(-val, kind="stable")
        for t in order:
            if len(fc.explain) >= n_explain:
                break
            r, p = pos[idx[t]]
            s, e = _window(int(p), ctx, window, n_after)
            if free(r, s, e):
                taken.setdefault(int(r), []).append((s, e))
                fc.explain.append(example(r, s, e, "top", None, int(p - s)))
        explain_spans = {r: list(v) for r, v in taken.items()}
        # test set: remaining firing tokens (outside explanation windows), by decile
        rest = [t for t in np.argsort(val, kind="stable")
                if all(not (a <= pos[idx[t]][1] < b) for a, b in explain_spans.get(int(pos[idx[t]][0]), []))]
        if rest and n_quantiles > 0:
            for q, grp in enumerate(np.array_split(np.asarray(rest), n_quantiles)):
                got = 0
                for t in rng.permutation(grp):
                    if got >= per_quantile:
                        break
                    r, p = pos[idx[int(t)]]
                    s, e = _window(int(p), ctx, window, n_after)
                    if free(r, s, e):
                        taken.setdefault(int(r), []).append((s, e))
                        fc.activating.append(example(r, s, e, "quantile", q, int(p - s)))
                        got += 1
        # non-activating: random windows with no firing token
        fired_row = np.zeros((rows_n, ctx), dtype=bool)
        valid = tmap >= 0
        fired_row[valid] = dense[tmap[valid]] > 0
        w = min(window, ctx)
        tries = 0
        while len(fc.non_activating) < n_non_activating and tries < 50 * max(1, n_non_activating):
            tries += 1
            r = int(rng.integers(rows_n))
            s = int(rng.integers(0, ctx - w + 1))
            if not fired_row[r, s:s + w].any() and free(r, s, s + w):
                taken.setdefault(r, []).append((s, s + w))
                fc.non_activating.append(example(r, s, s + w, "random", None, None))
        out[f] = fc
    return out


def save_contexts(path: str | os.PathLike, contexts: dict[int, FeatureContexts], meta: dict | None = None
                  ) -> None:
    write_json(path, {"meta": meta or {}, "features": [asdict(c) for c in contexts.values()]})


def load_contexts(path: str | os.PathLike) -> dict[int, FeatureContexts]:
    data = read_json(path)
    out = {}
    for c in data["features"]:
        fc = FeatureContexts(feature=c["feature"], n_firing=c["n_firing"], T=c["T"])
        for k in ("explain", "activating", "non_activating"):
            setattr(fc, k, [Example(**e) for e in c[k]])
        out[fc.feature] = fc
    return out


# --------------------------------------------------------------------------- tokens → strings
def token_decoder(tokenizer) -> Decoder:
    """Per-token strings (``tokenizer.decode([id])``), memoised per id."""
    memo: dict[int, str] = {}

    def decode(ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i not in memo:
                memo[i] = tokenizer.decode([i])
            out.append(memo[i])
        return out

    return decode


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
    example: int  # index into the feature's ``activating`` list
    highlight: list[bool]
    correct: bool


def make_fuzz_items(examples: Sequence[Example], seed: int | Sequence[int] = 0) -> list[FuzzItem]:
    """Half of the eligible examples correctly highlighted, half fuzzed (seeded, shuffled)."""
    rng = np.random.default_rng(seed)
    elig = [i for i, ex in enumerate(examples) if 0 < sum(ex.active_mask()) < len(ex.acts)]
    elig = [elig[i] for i in rng.permutation(len(elig))]
    n_true = (len(elig) + 1) // 2
    items = []
    for r, i in enumerate(elig):
        true_mask = examples[i].active_mask()
        if r < n_true:
            items.append(FuzzItem(i, true_mask, True))
        else:
            hl = random_highlight(true_mask, rng)
            assert hl is not None
            items.append(FuzzItem(i, hl, False))
    order = rng.permutation(len(items))
    return [items[k] for k in order]


def balanced_accuracy(labels: Sequence[bool], preds: Sequence[bool | None]) -> float:
    """Mean of the true-positive and true-negative rates; None predictions count as wrong.

    NaN if either class is absent.
    """
    if len(labels) != len(preds):
        raise ValueError("labels and predictions differ in length")
    pos = [p is True for lab, p in zip(labels, preds, strict=True) if lab]
    neg = [p is False for lab, p in zip(labels, preds, strict=True) if not lab]
    if not pos or not neg:
        return float("nan")
    return 0.5 * (sum(pos) / len(pos) + sum(neg) / len(neg))


def _auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    from scipy.stats import mannwhitneyu

    s = np.asarray(scores, float)
    lab = np.asarray(labels, bool)
    if lab.all() or not lab.any():
        return float("nan")
    u = mannwhitneyu(s[lab], s[~lab], alternative="two-sided").statistic
    return float(u / (lab.sum() * (~lab).sum()))


# --------------------------------------------------------------------------- scorers
def explain_feature(ctx: FeatureContexts, judge: Judge, decode: Decoder) -> str | None:
    items = [JudgeItem(decode(ex.token_ids), ex.active_mask()) for ex in ctx.explain]
    return judge.explain(items) if items else None


def fuzz(ctx: FeatureContexts, explanation: str, judge: Judge, decode: Decoder, seed: int = 0
         ) -> dict:
    """Delphi fuzzing score of one feature (see module docstring)."""
    fitems = make_fuzz_items(ctx.activating, seed=[seed, ctx.feature, 1])
    items = [JudgeItem(decode(ctx.activating[f.example].token_ids), f.highlight) for f in fitems]
    labels = [f.correct for f in fitems]
    n_pos = sum(labels)
    preds = judge.judge_binary(explanation, items, "fuzz", n_positive=n_pos) if items else []
    acc = balanced_accuracy(labels, preds)
    out = {"fuzz_bal_acc": acc, "fuzz_score": 2 * acc - 1, "fuzz_n": len(items),
           "fuzz_n_invalid": sum(p is None for p in preds),
           "fuzz_trace": [{"example": f.example, "highlight": [i for i, h in enumerate(f.highlight) if h],
                           "correct": f.correct, "pred": p} for f, p in zip(fitems, preds, strict=True)]}
    if hasattr(judge, "scores") and items:
        out["fuzz_auc"] = _auc(labels, judge.scores(explanation, items, "fuzz"))
    return out


def detection(ctx: FeatureContexts, explanation: str, judge: Judge, decode: Decoder) -> dict:
    """Activating vs non-activating windows, balanced accuracy."""
    exs = ctx.activating + ctx.non_activating
    labels = [True] * len(ctx.activating) + [False] * len(ctx.non_activating)
    items = [JudgeItem(decode(ex.token_ids)) for ex in exs]
    preds = judge.judge_binary(explanation, items, "detection", n_positive=len(ctx.activating)) \
        if items else []
    acc = balanced_accuracy(labels, preds)
    out = {"detection_bal_acc": acc, "detection_score": 2 * acc - 1, "detection_n": len(items),
           "detection_n_invalid": sum(p is None for p in preds),
           "detection_trace": [{"kind": ex.kind, "row": ex.row, "start": ex.start, "label": lab,
                                "pred": p} for ex, lab, p in zip(exs, labels, preds, strict=True)]}
    if hasattr(judge, "scores") and items:
        out["detection_auc"] = _auc(labels, judge.scores(explanation, items, "detection"))
    return out


def activation_prediction_spearman(ctx: FeatureContexts, explanation: str, judge: Judge,
                                   decode: Decoder) -> dict:
    """Reference scorer: Spearman ρ between predicted and true per-token activations."""
    from scipy.stats import spearmanr

    exs = ctx.activating + ctx.non_activating
    preds = judge.predict_activations(explanation, [JudgeItem(decode(ex.token_ids)) for ex in exs]) \
        if exs else []
    true, pred = [], []
    for ex, p in zip(exs, preds, strict=True):
        true.extend(ex.acts)
        pred.extend([0.0] * len(ex.acts) if p is None else p)  # invalid → flat prediction
    rho = float(spearmanr(true, pred).statistic) if len(set(true)) > 1 and len(set(pred)) > 1 \
        else float("nan")
    return {"spearman_rho": rho, "spearman_n_tokens": len(true),
            "spearman_n_invalid": sum(p is None for p in preds)}


def score_contexts(ctx: FeatureContexts, judge: Judge, decode: Decoder, *,
                   explainer: Judge | None = None, do_detection: bool = True,
                   do_spearman: bool = False, seed: int = 0) -> dict:
    """Explain and score one feature; returns a flat record plus per-example traces."""
    rec: dict = {"feature": ctx.feature, "n_firing": ctx.n_firing, "firing_rate": ctx.firing_rate,
                 "n_explain": len(ctx.explain), "n_activating": len(ctx.activating),
                 "n_non_activating": len(ctx.non_activating)}
    expl = explain_feature(ctx, explainer or judge, decode)
    rec["explanation_valid"] = expl is not None
    rec["explanation"] = expl or ""
    if expl is None:
        return rec
    rec.update(fuzz(ctx, expl, judge, decode, seed=seed))
    if do_detection:
        rec.update(detection(ctx, expl, judge, decode))
    if do_spearman:
        rec.update(activation_prediction_spearman(ctx, expl, judge, decode))
    return rec


def score_features(
    sae, acts, token_ids: np.ndarray, positions: np.ndarray, features: Sequence[int], thresholds,
    judge: Judge, decode: Decoder, *, out_dir: str | os.PathLike | None = None,
    explainer: Judge | None = None, do_detection: bool = True, do_spearman: bool = False,
    seed: int = 0, chunk_size: int = 4096, context_kwargs: dict | None = None,
    show_progress: bool = True, n_workers: int = 1,
) -> pd.DataFrame:
    """Collect contexts, explain and score ``features`` of one SAE; one DataFrame row per feature.

    With ``out_dir``: contexts go to ``out_dir/contexts.json`` and each feature's full record
    (with traces) to ``out_dir/features/<f>.json``; existing files are reused (resume).
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
            if rec.get("judge") == judge.name:
                return rec
        rec = score_contexts(contexts[f], judge, decode, explainer=explainer,
                             do_detection=do_detection, do_spearman=do_spearman, seed=seed)
        rec["judge"] = judge.name
        if fpath is not None:
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
    Δ mean, relative Δ (Δ / mean a), paired t-test (scipy ``ttest_rel``), CI of Δ, and the share
    of pairs where b is higher (and equal).
    """
    from scipy import stats

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
    if n >= 2 and d.std(ddof=1) > 0:
        t = stats.ttest_rel(vb, va)
        se = d.std(ddof=1) / np.sqrt(n)
        q = stats.t.ppf(0.5 + confidence / 2, n - 1)
        res.update(t=float(t.statistic), p=float(t.pvalue), df=n - 1,
                   ci_low=float(d.mean() - q * se), ci_high=float(d.mean() + q * se))
    else:
        res.update(t=float("nan"), p=float("nan"), df=max(n - 1, 0), ci_low=float("nan"),
                   ci_high=float("nan"))
    res["share_b_higher"] = float((d > 0).mean()) if n else float("nan")
    res["share_equal"] = float((d == 0).mean()) if n else float("nan")
    return res
