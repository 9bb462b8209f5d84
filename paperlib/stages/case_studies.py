"""Case studies of splitting and merging candidates between two runs (docs/method.md §3.5).

The candidates come from :mod:`paperlib.metrics.case_studies` on both runs' firing matrices over
the co-occurrence tokens; this stage adds what a paper-style table needs: decoder cosines, firing
rates, fuzz scores and explanations (with a judge, through :mod:`paperlib.stages.interp`) and each
feature's top activating contexts. :mod:`paperlib.report.case_studies` renders the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from paperlib.autointerp.contexts import collect_contexts, collect_feature_activations
from paperlib.data.activations import load_cache
from paperlib.metrics.case_studies import (
    Candidate,
    candidate_cross_phi,
    find_candidates,
    partner_phi,
    rank_distinct,
)
from paperlib.metrics.matching import cosine_matrix
from paperlib.stages import interp
from paperlib.stages.calibrate import ensure_calibration
from paperlib.stages.cooccur import load_firing
from paperlib.stages.run import Run
from paperlib.stages.train import load_run

__all__ = ["CaseStudy", "Snippet", "case_studies", "case_study_table", "distinct_candidates", "interp_records",
           "null_comparison"]


class Snippet(NamedTuple):
    """One activating context: per-token strings and the index of the firing token."""

    tokens: list[str]
    peak: int | None


@dataclass
class CaseStudy:
    """One candidate, its table (one row per feature, base first) and each feature's contexts."""

    candidate: Candidate
    table: pd.DataFrame
    contexts: dict[tuple[str, int], list[Snippet]] = field(default_factory=dict)


def _top_contexts(sae, acts, token_ids, positions, features: Sequence[int], thresholds, decode,
                  n_contexts: int, window: int, progress: bool) -> dict[int, list[Snippet]]:
    feats = sorted({int(f) for f in features})
    if not feats:
        return {}
    fa = collect_feature_activations(sae, acts, feats, thresholds, show_progress=progress)
    ctx = collect_contexts(fa, token_ids, positions, features=feats, window=window, n_after=3,
                           n_explain=n_contexts, n_quantiles=0, n_non_activating=0)
    return {f: [Snippet(decode(ex.token_ids), ex.peak) for ex in c.explain] for f, c in ctx.items()}


def interp_records(run: Run, features: Sequence[int], judge: Any = None) -> dict[int, dict]:
    """``{feature: {"fuzz": ..., "explanation": ...}}`` from :func:`paperlib.stages.interp.ensure_scores`
    with a judge; ``{}`` without one (the tables then show "—")."""
    if judge is None or not features:
        return {}
    df = interp.ensure_scores(run, [int(f) for f in features], judge)
    return {int(r["feature"]): {"fuzz": float(r["fuzz_score"]), "explanation": str(r["explanation"])}
            for _, r in df.iterrows()}


def case_study_table(cand: Candidate, *, base_sae: str, partner_sae: str, rate_base: float,
                     rates_partner: np.ndarray, cos: np.ndarray,
                     interp_base: dict[int, dict] | None = None,
                     interp_partner: dict[int, dict] | None = None) -> pd.DataFrame:
    """Rows: the base feature (φ and cosine NaN) then its partners (|φ|, rate, decoder cosine);
    fuzz NaN and explanation "—" where there is no auto-interp record."""
    ib, ip = interp_base or {}, interp_partner or {}
    rows = [{"candidate": cand.feature, "kind": cand.kind, "sae": base_sae, "feature": cand.feature,
             "abs_phi": math.nan, "firing_rate": rate_base, "decoder_cos": math.nan,
             "fuzz": ib.get(cand.feature, {}).get("fuzz", math.nan),
             "explanation": ib.get(cand.feature, {}).get("explanation", "—") or "—"}]
    for j, (f, ph) in enumerate(zip(cand.partners, cand.partner_phi, strict=True)):
        rows.append({"candidate": cand.feature, "kind": cand.kind, "sae": partner_sae, "feature": f,
                     "abs_phi": abs(ph), "firing_rate": float(rates_partner[f]),
                     "decoder_cos": float(cos[j]),
                     "fuzz": ip.get(f, {}).get("fuzz", math.nan),
                     "explanation": ip.get(f, {}).get("explanation", "—") or "—"})
    return pd.DataFrame(rows)


def distinct_candidates(fired_a: Any, fired_b: Any, *, max_rate: float = 0.05, min_phi: float = 0.2,
                        top_k: int = 8, max_partner_phi: float = 0.3, progress: bool = False
                        ) -> tuple[list[Candidate], list[Candidate], Any, dict[str, int]]:
    """(splitting, merging, cross, counts) between two firing matrices on the same tokens: the candidates of
    :func:`~paperlib.metrics.case_studies.find_candidates`, kept and ranked by
    :func:`~paperlib.metrics.case_studies.rank_distinct` (partners φ within their own SAE). ``counts``:
    ``splitting``/``merging`` (distinct partners) and ``splitting_any``/``merging_any`` (before the filter)."""
    split, merge, cross = find_candidates(fired_a, fired_b, max_rate=max_rate, min_phi=min_phi, top_k=top_k,
                                          progress=progress)
    ds = rank_distinct(split, fired_b, max_partner_phi=max_partner_phi)
    dm = rank_distinct(merge, fired_a, max_partner_phi=max_partner_phi)
    counts = dict(splitting=len(ds), merging=len(dm), splitting_any=len(split), merging_any=len(merge))
    return ds, dm, cross, counts


def null_comparison(counts: dict[str, int], null_counts: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per kind (``splitting``, ``merging``): the treatment count, the null count, their difference and
    ratio (NaN when the null count is 0)."""
    out = {}
    for kind in ("splitting", "merging"):
        a, b = int(counts[kind]), int(null_counts[kind])
        out[kind] = dict(treatment=a, null=b, difference=a - b, ratio=a / b if b else math.nan)
    return out


def case_studies(solo_run: Run, joint_run: Run, *, null_run: Run | None = None, n_candidates: int = 5,
                 max_partners: int = 4, max_rate: float = 0.05, min_phi: float = 0.2, top_k: int = 8,
                 n_contexts: int = 3, window: int = 16, judge: Any = None, n_scored: int | None = None,
                 progress: bool = True, max_partner_phi: float = 0.3) -> dict[str, Any]:
    """Splitting and merging case studies between two runs of one profile (solo side, joint side), with
    the same search between ``solo_run`` and ``null_run`` (another solo seed) as the null.

    Candidates (:func:`distinct_candidates`) need two strong partners that co-fire with each other at
    φ < ``max_partner_phi`` and are ranked by the distinct-split score. Returns ``{"splitting":
    [CaseStudy], "merging": [CaseStudy], "cross": CrossTopK, "cross_phi": {"splitting": CandidatePhi,
    "merging": CandidatePhi}, "counts": {...}, "null_counts": {...} or None, "null_run": name or None,
    "comparison": null_comparison(...) or None, "interp_available": bool, "max_partner_phi": ...}`` (the top
    ``n_candidates`` of each kind, the distinct pair and then up to ``max_partners`` partners in all).
    Contexts come from the co-occurrence range, the tokens φ was measured on. With a ``judge``, the
    features of the top ``n_scored`` candidates of each kind (default: all shown) get fuzz scores and
    explanations.
    """
    p = solo_run.profile
    solo, joint = solo_run.name, joint_run.name
    runs = {solo: solo_run, joint: joint_run}
    fs, fj = load_firing(solo_run), load_firing(joint_run)
    kw = dict(max_rate=max_rate, min_phi=min_phi, top_k=top_k, max_partner_phi=max_partner_phi)
    split, merge, cross, counts = distinct_candidates(fs, fj, progress=progress, **kw)
    null_counts = None
    if null_run is not None:
        null_counts = distinct_candidates(fs, load_firing(null_run), progress=progress, **kw)[3]
    split, merge = split[:n_candidates], merge[:n_candidates]
    for c in split + merge:
        c.partners, c.partner_phi = c.partners[:max_partners], c.partner_phi[:max_partners]
    saes = {solo: load_run(solo_run), joint: load_run(joint_run)}
    W = {k: v.W_dec.detach().float().cpu().numpy() for k, v in saes.items()}
    rates = {solo: np.asarray(cross.N1_a, np.float64) / cross.T, joint: np.asarray(cross.N1_b, np.float64) / cross.T}

    def features_of(cs_split: list[Candidate], cs_merge: list[Candidate]) -> dict[str, set[int]]:
        need: dict[str, set[int]] = {solo: set(), joint: set()}
        for c in cs_split:
            need[solo].add(c.feature)
            need[joint].update(c.partners)
        for c in cs_merge:
            need[joint].add(c.feature)
            need[solo].update(c.partners)
        return need

    need = features_of(split, merge)
    ns = n_candidates if n_scored is None else n_scored
    scored = features_of(split[:ns], merge[:ns])

    cache = load_cache(p)
    acts, ids, pos = cache.acts("cooccurrence"), cache.token_ids("cooccurrence"), cache.positions("cooccurrence")
    decode = interp.profile_decoder(p)
    ctx: dict[tuple[str, int], list[Snippet]] = {}
    records: dict[str, dict[int, dict]] = {}
    for run in (solo, joint):
        theta = torch.as_tensor(np.asarray(ensure_calibration(runs[run], progress=progress).thresholds),
                                dtype=torch.float32)
        got = _top_contexts(saes[run], acts, ids, pos, sorted(need[run]), theta, decode, n_contexts,
                            window, progress)
        ctx.update({(run, f): v for f, v in got.items()})
        records[run] = interp_records(runs[run], sorted(scored[run]), judge)

    fired = {solo: fs, joint: fj}

    def build(c: Candidate, base: str, partner: str) -> CaseStudy:
        cos = cosine_matrix(W[base][[c.feature]], W[partner][c.partners])[0] if c.partners else np.zeros(0)
        tab = case_study_table(c, base_sae=base, partner_sae=partner, rate_base=float(rates[base][c.feature]),
                               rates_partner=rates[partner], cos=cos, interp_base=records[base],
                               interp_partner=records[partner])
        # a genuine split has partners that rarely co-fire with each other; duplicates co-fire
        pp = partner_phi(fired[partner], c.partners)
        tab["max_phi_other_partners"] = [math.nan] + [float(v) if np.isfinite(v) else math.nan
                                                      for v in pp.max(axis=1, initial=-np.inf)]
        cx = {(base, c.feature): ctx.get((base, c.feature), [])}
        cx.update({(partner, f): ctx.get((partner, f), []) for f in c.partners})
        return CaseStudy(c, tab, cx)

    return {"splitting": [build(c, solo, joint) for c in split],
            "merging": [build(c, joint, solo) for c in merge],
            "cross": cross,
            "cross_phi": {"splitting": candidate_cross_phi(fs, fj, split),
                          "merging": candidate_cross_phi(fj, fs, merge)},
            "counts": counts, "null_counts": null_counts,
            "null_run": null_run.name if null_run is not None else None,
            "comparison": null_comparison(counts, null_counts) if null_counts is not None else None,
            "interp_available": bool(records[solo] or records[joint]), "max_partner_phi": max_partner_phi}
