"""Qualitative case studies (paper §5.4, §6, App. E, Tables 2–5): splitting / merging candidates.

Both SAEs' binary firing matrices are taken on the **same** co-occurrence tokens
(:func:`paperlib.stages.cooccur.load_firing`); cross-SAE φ between every solo feature and every joint feature
(:func:`paperlib.metrics.cooccurrence.cross_phi_topk`) gives, per feature, its most co-firing partners in
the other SAE.

- **Splitting candidate**: a solo feature with firing rate ≤ ``max_rate`` (and > 0) that co-fires
  with φ ≥ ``min_phi`` with two or more joint features — the solo SAE blended directions that the
  joint SAE represents separately. Ranked by the *second-highest* cross-φ (a feature with one
  strong partner and noise is a match, not a split).
- **Merging candidate**: the symmetric case from the joint side (a joint feature strongly
  co-firing with two or more solo features).

:func:`case_studies` builds, for one candidate, a table like the paper's Tables 2–5: the base
feature and its partners with |φ|, firing rate, decoder cosine to the base feature, fuzz score and
explanation (when auto-interp results exist, via ``paperlib.stages.interp``), and their top activating
contexts on the co-occurrence range with the peak token marked «like this».
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from paperlib.autointerp.contexts import collect_contexts, collect_feature_activations, token_decoder
from paperlib.config.io import write_text
from paperlib.data import lm
from paperlib.data.activations import load_cache
from paperlib.metrics.cooccurrence import CrossTopK, cross_phi_topk, phi_block, to_csr
from paperlib.metrics.matching import cosine_matrix
from paperlib.stages import interp
from paperlib.stages.calibrate import ensure_calibration
from paperlib.stages.cooccur import load_firing
from paperlib.stages.run import Run
from paperlib.stages.train import load_run

__all__ = [
    "Candidate",
    "CaseStudy",
    "candidates_from_cross",
    "case_studies",
    "case_study_markdown",
    "case_study_table",
    "cross_phi_figure",
    "cross_phi_matrix",
    "drop_duplicate_partners",
    "find_candidates",
    "format_context",
    "interp_records",
    "partner_phi",
    "save_case_studies",
    "strongest_partner_phi",
    "studies_frame",
]

MARK_L, MARK_R = "«", "»"


# ----------------------------------------------------------------------------------------------
# candidates
# ----------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One splitting (solo → joint) or merging (joint → solo) candidate."""

    kind: str  # "splitting" | "merging"
    feature: int  # base feature (solo for splitting, joint for merging)
    firing_rate: float
    partners: list[int]  # partner features in the other SAE, by descending φ
    partner_phi: list[float]
    score: float  # second-highest cross-φ

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "feature": self.feature, "firing_rate": self.firing_rate,
                "n_partners": len(self.partners), "second_phi": self.score,
                "top_phi": self.partner_phi[0] if self.partner_phi else math.nan,
                "partners": list(self.partners), "partner_phi": list(self.partner_phi)}


def candidates_from_cross(cross: CrossTopK, kind: str = "splitting", *, max_rate: float = 0.05,
                          min_phi: float = 0.2, min_partners: int = 2,
                          max_partners: int | None = None) -> list[Candidate]:
    """Candidates from a :class:`CrossTopK` of (A = solo, B = joint), ranked by 2nd-highest φ.

    ``kind="splitting"``: rows of A (solo features) and their B partners; ``"merging"``: rows of B
    (joint features) and their A partners. A feature qualifies when 0 < firing rate ≤ ``max_rate``
    and at least ``min_partners`` partners have φ ≥ ``min_phi``. Partners listed are those with
    φ ≥ ``min_phi`` (at most ``max_partners``). Ties in the score are broken by feature index.
    """
    if kind == "splitting":
        idx, ph, n1 = cross.a_idx, cross.a_phi, cross.N1_a
    elif kind == "merging":
        idx, ph, n1 = cross.b_idx, cross.b_phi, cross.N1_b
    else:
        raise ValueError(f"kind must be 'splitting' or 'merging', got {kind!r}")
    if min_partners < 2:
        raise ValueError("min_partners must be >= 2 (a split needs two partners)")
    if idx.shape[1] < min_partners:
        raise ValueError(f"the cross top-k keeps {idx.shape[1]} partners per feature; need >= {min_partners}")
    rate = np.asarray(n1, dtype=np.float64) / max(cross.T, 1)
    strong = ph >= min_phi
    n_strong = strong.sum(axis=1)
    ok = (rate > 0) & (rate <= max_rate) & (n_strong >= min_partners)
    feats = np.flatnonzero(ok)
    second = ph[feats, 1]
    order = np.lexsort((feats, -second))
    out = []
    for f in feats[order]:
        m = int(n_strong[f]) if max_partners is None else min(int(n_strong[f]), max_partners)
        out.append(Candidate(kind, int(f), float(rate[f]), [int(j) for j in idx[f, :m]],
                             [float(x) for x in ph[f, :m]], float(ph[f, 1])))
    return out


def find_candidates(fired_solo: Any, fired_joint: Any, *, max_rate: float = 0.05, min_phi: float = 0.2,
                    min_partners: int = 2, top_k: int = 8, progress: bool = False
                    ) -> tuple[list[Candidate], list[Candidate], CrossTopK]:
    """(splitting, merging, cross) from two firing matrices ``[T, n_solo]``, ``[T, n_joint]`` on the
    same tokens. ``top_k`` partners per feature are kept by the cross-φ scan."""
    cross = cross_phi_topk(fired_solo, fired_joint, top_k, progress=progress)
    kw = dict(max_rate=max_rate, min_phi=min_phi, min_partners=min_partners)
    return (candidates_from_cross(cross, "splitting", **kw),
            candidates_from_cross(cross, "merging", **kw), cross)


def drop_duplicate_partners(cands: Sequence[Candidate], fired_partner: Any, n: int,
                            max_phi: float | None = 0.8) -> tuple[list[Candidate], int]:
    """The first ``n`` candidates in which no two listed partners co-fire with each other at φ ≥
    ``max_phi`` (φ on ``fired_partner``, the partners' firing matrix, over every pair of partners),
    and how many were skipped before the ``n``-th kept one. Partners that nearly always fire
    together are one feature learned twice, not a split. ``max_phi=None`` keeps the first ``n``."""
    keep: list[Candidate] = []
    skipped = 0
    for c in cands:
        if len(keep) == n:
            break
        if max_phi is not None and strongest_partner_phi(fired_partner, c.partners) >= max_phi:
            skipped += 1
            continue
        keep.append(c)
    return keep, skipped


def partner_phi(fired: Any, partners: Sequence[int]) -> np.ndarray:
    """φ between every two features of ``partners`` [p, p] (on ``fired``), diagonal −inf."""
    p = len(partners)
    phi = cross_phi_matrix(fired, fired, partners, partners) if p > 1 else np.zeros((p, p))
    np.fill_diagonal(phi, -np.inf)
    return phi


def strongest_partner_phi(fired: Any, partners: Sequence[int]) -> float:
    """Largest φ between two distinct features of ``partners`` (−inf with fewer than two)."""
    return float(partner_phi(fired, partners).max()) if len(partners) > 1 else -math.inf


def cross_phi_matrix(fired_a: Any, fired_b: Any, rows: Sequence[int], cols: Sequence[int]) -> np.ndarray:
    """Exact cross-φ ``[len(rows), len(cols)]`` between features ``rows`` of A and ``cols`` of B."""
    a, b = to_csr(fired_a), to_csr(fired_b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"A and B must be on the same tokens ({a.shape[0]} vs {b.shape[0]})")
    sa = a[:, list(rows)].astype(np.int64)
    sb = b[:, list(cols)].astype(np.int64)
    n11 = np.asarray((sa.T @ sb).toarray(), dtype=np.int64)
    n1a = np.asarray(sa.sum(axis=0)).ravel().astype(np.int64)
    n1b = np.asarray(sb.sum(axis=0)).ravel().astype(np.int64)
    return phi_block(a.shape[0], n1a, n1b, n11)


# ----------------------------------------------------------------------------------------------
# contexts
# ----------------------------------------------------------------------------------------------
def format_context(tokens: Sequence[str], peak: int | None) -> str:
    """Join per-token strings, marking the token at ``peak`` as «token» (newlines shown as ⏎)."""
    parts = []
    for i, t in enumerate(tokens):
        t = t.replace("\r", "").replace("\n", "⏎").replace("|", "¦")
        parts.append(f"{MARK_L}{t}{MARK_R}" if i == peak else t)
    return "".join(parts).strip()


def _top_contexts(sae, acts, token_ids, positions, features: Sequence[int], thresholds, decode,
                  n_contexts: int, window: int, progress: bool) -> dict[int, list[str]]:

    feats = sorted({int(f) for f in features})
    if not feats:
        return {}
    fa = collect_feature_activations(sae, acts, feats, thresholds, show_progress=progress)
    ctx = collect_contexts(fa, token_ids, positions, features=feats, window=window, n_after=3,
                           n_explain=n_contexts, n_quantiles=0, n_non_activating=0)
    return {f: [format_context(decode(ex.token_ids), ex.peak) for ex in c.explain] for f, c in ctx.items()}


# ----------------------------------------------------------------------------------------------
# auto-interp (optional: paperlib.stages.interp)
# ----------------------------------------------------------------------------------------------
def interp_records(run: Run, features: Sequence[int], judge: Any = None) -> dict[int, dict]:
    """``{feature: {"fuzz": ..., "explanation": ...}}`` from ``paperlib.stages.interp.ensure_scores`` when
    a judge is given; ``{}`` otherwise (tables then show "—")."""
    if judge is None or not features:
        return {}
    df = interp.ensure_scores(run, [int(f) for f in features], judge)
    df = pd.DataFrame(df)
    out = {}
    fuzz_col = next((c for c in ("fuzz_score", "fuzz") if c in df.columns), None)
    for _, r in df.iterrows():
        out[int(r["feature"])] = {"fuzz": float(r[fuzz_col]) if fuzz_col else math.nan,
                                  "explanation": str(r.get("explanation", "") or "")}
    return out


# ----------------------------------------------------------------------------------------------
# case studies
# ----------------------------------------------------------------------------------------------
@dataclass
class CaseStudy:
    candidate: Candidate
    table: pd.DataFrame  # one row per feature (base first)
    contexts: dict[tuple[str, int], list[str]] = field(default_factory=dict)


def case_study_table(cand: Candidate, *, base_sae: str, partner_sae: str, rate_base: float,
                     rates_partner: np.ndarray, cos: np.ndarray,
                     interp_base: dict[int, dict] | None = None,
                     interp_partner: dict[int, dict] | None = None) -> pd.DataFrame:
    """Rows: the base feature (φ and cosine "—"/NaN) then its partners (|φ|, rate, decoder cosine)."""
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


def case_studies(solo_run: Run, joint_run: Run, *, n_candidates: int = 5, max_partners: int = 4,
                 max_rate: float = 0.05, min_phi: float = 0.2, top_k: int = 8, n_contexts: int = 3,
                 window: int = 16, judge: Any = None, n_scored: int | None = None, progress: bool = True,
                 max_partner_phi: float | None = 0.8) -> dict[str, Any]:
    """Splitting and merging case studies between two runs of one profile (solo side, joint side).

    Returns ``{"splitting": [CaseStudy], "merging": [CaseStudy], "cross": CrossTopK,
    "n_splitting": int, "n_merging": int, "fired_solo", "fired_joint"}`` (top ``n_candidates``
    of each kind). Contexts come from the co-occurrence range (the tokens φ was measured on).
    With a ``judge``, the features of the top ``n_scored`` candidates of each kind (default: all
    shown) get fuzz scores and explanations from ``paperlib.stages.interp.ensure_scores``.
    ``max_partner_phi``: skip candidates in which any two listed partners co-fire with each other at
    φ ≥ this value (near-duplicate partners are one feature learned twice, not a split); ``None``
    keeps every candidate. ``n_skipped_duplicates`` counts the skipped ones among those examined.
    """
    p = solo_run.profile
    solo, joint = solo_run.name, joint_run.name
    runs = {solo: solo_run, joint: joint_run}
    fs, fj = load_firing(solo_run), load_firing(joint_run)
    split, merge, cross = find_candidates(fs, fj, max_rate=max_rate, min_phi=min_phi, top_k=top_k,
                                          progress=progress)
    for c in split + merge:
        c.partners, c.partner_phi = c.partners[:max_partners], c.partner_phi[:max_partners]
    skipped = {}
    split, skipped["splitting"] = drop_duplicate_partners(split, fj, n_candidates, max_partner_phi)
    merge, skipped["merging"] = drop_duplicate_partners(merge, fs, n_candidates, max_partner_phi)
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
    decode = token_decoder(_tokenizer(p.model))
    ctx: dict[tuple[str, int], list[str]] = {}
    interp: dict[str, dict[int, dict]] = {}
    for run in (solo, joint):
        theta = torch.as_tensor(np.asarray(ensure_calibration(runs[run], progress=progress).thresholds),
                                dtype=torch.float32)
        got = _top_contexts(saes[run], acts, ids, pos, sorted(need[run]), theta, decode, n_contexts,
                            window, progress)
        ctx.update({(run, f): v for f, v in got.items()})
        interp[run] = interp_records(runs[run], sorted(scored[run]), judge)

    fired = {solo: fs, joint: fj}

    def build(c: Candidate, base: str, partner: str) -> CaseStudy:
        cos = cosine_matrix(W[base][[c.feature]], W[partner][c.partners])[0] if c.partners else np.zeros(0)
        tab = case_study_table(c, base_sae=base, partner_sae=partner, rate_base=float(rates[base][c.feature]),
                               rates_partner=rates[partner], cos=cos, interp_base=interp[base],
                               interp_partner=interp[partner])
        # a genuine split has partners that rarely co-fire with each other; duplicates co-fire
        pp = partner_phi(fired[partner], c.partners)
        tab["max_phi_other_partners"] = [math.nan] + [float(v) if np.isfinite(v) else math.nan
                                                      for v in pp.max(axis=1, initial=-np.inf)]
        cx = {(base, c.feature): ctx.get((base, c.feature), [])}
        cx.update({(partner, f): ctx.get((partner, f), []) for f in c.partners})
        return CaseStudy(c, tab, cx)

    n_split, n_merge = len(candidates_from_cross(cross, "splitting", max_rate=max_rate, min_phi=min_phi)), \
        len(candidates_from_cross(cross, "merging", max_rate=max_rate, min_phi=min_phi))
    return {"splitting": [build(c, solo, joint) for c in split],
            "merging": [build(c, joint, solo) for c in merge],
            "cross": cross, "n_splitting": n_split, "n_merging": n_merge,
            "fired_solo": fs, "fired_joint": fj, "interp_available": bool(interp[solo] or interp[joint]),
            "n_skipped_duplicates": skipped, "max_partner_phi": max_partner_phi}


def _tokenizer(model: str):
    """The tokenizer of a profile's LM (offline keys via the converted model dir, else the hub)."""
    from transformers import AutoTokenizer


    if model in lm.OFFLINE_MODELS:
        return AutoTokenizer.from_pretrained(str(lm.model_dir(model)))
    return AutoTokenizer.from_pretrained(model)


def studies_frame(studies: Sequence[CaseStudy]) -> pd.DataFrame:
    """All case-study tables stacked (CSV form), with the contexts joined by " ‖ "."""
    frames = []
    for s in studies:
        t = s.table.copy()
        t["contexts"] = [" ‖ ".join(s.contexts.get((r.sae, int(r.feature)), [])) for r in t.itertuples()]
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["candidate", "kind", "sae", "feature", "abs_phi", "firing_rate", "decoder_cos", "fuzz",
                 "explanation", "contexts"])


def _fmt(x: float, spec: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def case_study_markdown(studies: Sequence[CaseStudy], title: str, note: str = "") -> str:
    """Markdown with one paper-style table per candidate followed by its top contexts."""
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    if not studies:
        lines.append("No candidates met the criteria.")
    for i, s in enumerate(studies, 1):
        c = s.candidate
        base = s.table.iloc[0]["sae"]
        others = s.table["max_phi_other_partners"] if "max_phi_other_partners" in s.table else pd.Series([])
        worst = others.max() if len(others.dropna()) else math.nan
        lines += [f"## {i}. {c.kind} candidate: {base} feature {c.feature} "
                  f"(firing rate {c.firing_rate:.4f}, second-highest cross-φ {c.score:.3f}; "
                  f"max φ between its partners {_fmt(worst)} — near 1 means duplicates, not a split)", "",
                  "| SAE | Feat | Fuzz | \\|φ\\| | Rate | Dec. cos | Description |",
                  "|---|---|---|---|---|---|---|"]
        for r in s.table.itertuples():
            lines.append(f"| {r.sae} | {r.feature} | {_fmt(r.fuzz, '+.3f')} | {_fmt(r.abs_phi)} | "
                         f"{r.firing_rate:.4f} | {_fmt(r.decoder_cos)} | {r.explanation} |")
        lines += ["", "Top activating contexts (peak token «marked»):", ""]
        for r in s.table.itertuples():
            cx = s.contexts.get((r.sae, int(r.feature)), [])
            lines.append(f"- **{r.sae} {r.feature}**")
            lines += [f"  - `{t}`" if "`" not in t else f"  - {t}" for t in cx] or ["  - (none)"]
        lines.append("")
    return "\n".join(lines) + "\n"


def cross_phi_figure(fired_solo: Any, fired_joint: Any, splitting: Sequence[Candidate | CaseStudy],
                     merging: Sequence[Candidate | CaseStudy] = (), solo_label: str = "solo",
                     joint_label: str = "joint"):
    """Heatmaps of exact cross-φ: splitting candidates (rows, solo) × the union of their joint
    partners (columns), and merging candidates (rows, joint) × their solo partners."""
    import matplotlib.pyplot as plt

    splitting = [getattr(c, "candidate", c) for c in splitting]
    merging = [getattr(c, "candidate", c) for c in merging]

    panels = [(list(splitting), fired_solo, fired_joint, solo_label, joint_label, "splitting"),
              (list(merging), fired_joint, fired_solo, joint_label, solo_label, "merging")]
    panels = [pp for pp in panels if pp[0]] or [panels[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (cands, fa, fb, la, lb, kind) in zip(axes[0], panels, strict=True):
        if not cands:
            ax.text(0.5, 0.5, f"no {kind} candidates", ha="center", va="center")
            ax.set_axis_off()
            continue
        rows = [c.feature for c in cands]
        cols = list(dict.fromkeys(j for c in cands for j in c.partners))
        m = cross_phi_matrix(fa, fb, rows, cols)
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set_yticks(range(len(rows)), [f"{la} {r}" for r in rows], fontsize=8)
        ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=90, fontsize=7)
        ax.set_xlabel(f"{lb} partner features")
        ax.set_title(f"{kind} candidates: cross-φ")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if abs(m[i, j]) >= 0.1:
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6)
        fig.colorbar(im, ax=ax, shrink=0.8, label="φ")
    fig.tight_layout()
    return fig


def save_case_studies(studies: Sequence[CaseStudy], directory, name: str, title: str, note: str = "") -> list:
    """Write ``<name>.csv`` (stacked tables with contexts) and ``<name>.md`` (paper-style tables with
    the contexts), atomically."""
    from pathlib import Path


    d = Path(directory)
    csv, md = d / f"{name}.csv", d / f"{name}.md"
    write_text(csv, studies_frame(studies).to_csv(index=False))
    write_text(md, case_study_markdown(studies, title, note))
    return [csv, md]
