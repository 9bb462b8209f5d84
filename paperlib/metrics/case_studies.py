"""Splitting and merging candidates from cross-SAE φ (docs/method.md §3.5).

Pure functions of two binary firing matrices taken on the same tokens: A is the solo SAE, B the
joint one. A splitting candidate is a feature of A that co-fires strongly with two or more features
of B; a merging candidate is the same seen from B.

Two partners that co-fire with each other are one latent learned twice, not a split, so candidates
are ranked by how distinct their partners are (:func:`rank_distinct`): the best pair (j, k) of strong
partners maximises ``min(φ_aj, φ_ak) · (1 − max(φ_jk, 0))`` (φ_jk measured within the partner SAE), and
a candidate counts only when that pair's φ_jk is below ``max_partner_phi``. The same search between
two independent runs of one arm (two solo seeds) is the null the counts are read against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from paperlib.metrics.cooccurrence import CrossTopK, cross_phi_topk, phi_block, to_csr

__all__ = [
    "Candidate",
    "CandidatePhi",
    "candidate_cross_phi",
    "candidates_from_cross",
    "cross_phi_matrix",
    "distinct_pair",
    "rank_distinct",
    "drop_duplicate_partners",
    "find_candidates",
    "partner_phi",
    "strongest_partner_phi",
]


@dataclass
class Candidate:
    """One splitting (solo → joint) or merging (joint → solo) candidate."""

    kind: str  # "splitting" | "merging"
    feature: int  # base feature (solo for splitting, joint for merging)
    firing_rate: float
    partners: list[int]  # partner features in the other SAE, by descending φ
    partner_phi: list[float]
    score: float  # second-highest cross-φ


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


@dataclass
class CandidatePhi:
    """Exact cross-φ between candidates (``rows``, base SAE) and the union of their partners
    (``cols``, other SAE, in order of first appearance); ``phi`` is ``[len(rows), len(cols)]``."""

    rows: list[int]
    cols: list[int]
    phi: np.ndarray


def candidate_cross_phi(fired_base: Any, fired_partner: Any, cands: Sequence[Candidate]) -> CandidatePhi:
    """The :class:`CandidatePhi` of ``cands`` (empty when there are none)."""
    rows = [c.feature for c in cands]
    cols = list(dict.fromkeys(j for c in cands for j in c.partners))
    phi = cross_phi_matrix(fired_base, fired_partner, rows, cols) if rows else np.zeros((0, len(cols)))
    return CandidatePhi(rows, cols, phi)


def distinct_pair(cross_phi: Sequence[float], partner_phi_matrix: np.ndarray) -> tuple[int, int, float, float]:
    """The pair of partners (positions i < j in ``cross_phi``) maximising the distinct-split score
    ``min(cross_phi_i, cross_phi_j) · (1 − max(φ_ij, 0))``, with φ_ij from ``partner_phi_matrix``
    ``[p, p]`` (the partners' φ with each other). Returns (i, j, score, φ_ij); ties: the first pair in
    row-major order. Needs at least two partners."""
    c = np.asarray(cross_phi, dtype=np.float64)
    P = np.asarray(partner_phi_matrix, dtype=np.float64)
    p = c.size
    if p < 2 or P.shape != (p, p):
        raise ValueError(f"need >= 2 partners and a [{p}, {p}] partner φ matrix, got {p} and {P.shape}")
    iu, ju = np.triu_indices(p, 1)
    score = np.minimum(c[iu], c[ju]) * (1.0 - np.maximum(P[iu, ju], 0.0))
    b = int(np.argmax(score))
    return int(iu[b]), int(ju[b]), float(score[b]), float(P[iu[b], ju[b]])


def rank_distinct(cands: Sequence[Candidate], fired_partner: Any, *,
                  max_partner_phi: float = 0.3) -> list[Candidate]:
    """Candidates whose best :func:`distinct_pair` of partners co-fire at φ < ``max_partner_phi`` (on
    ``fired_partner``, the partner SAE's firing matrix), ranked by the distinct-split score (ties: feature
    index). Each returned candidate is a copy with ``score`` = that score and its partners reordered: the
    distinct pair first, then the others by descending cross-φ."""
    if not -1.0 <= max_partner_phi <= 1.0:
        raise ValueError(f"max_partner_phi must lie in [-1, 1], got {max_partner_phi}")
    cols = list(dict.fromkeys(j for c in cands for j in c.partners))
    pos = {j: i for i, j in enumerate(cols)}
    phi_all = cross_phi_matrix(fired_partner, fired_partner, cols, cols) if len(cols) > 1 else np.zeros((0, 0))
    out = []
    for c in cands:
        if len(c.partners) < 2:
            continue
        ix = [pos[j] for j in c.partners]
        i, j, score, pij = distinct_pair(c.partner_phi, phi_all[np.ix_(ix, ix)])
        if pij >= max_partner_phi:
            continue
        order = [i, j] + [m for m in range(len(c.partners)) if m not in (i, j)]
        out.append(Candidate(c.kind, c.feature, c.firing_rate, [c.partners[m] for m in order],
                             [c.partner_phi[m] for m in order], score))
    out.sort(key=lambda c: (-c.score, c.feature))
    return out
