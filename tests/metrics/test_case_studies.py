"""Splitting / merging candidates on hand-built firing matrices, against brute-force φ
(paperlib.metrics.case_studies)."""

import numpy as np
import pytest
import scipy.sparse as sp

from paperlib.metrics.case_studies import (
    Candidate,
    candidate_cross_phi,
    candidates_from_cross,
    cross_phi_matrix,
    distinct_pair,
    drop_duplicate_partners,
    find_candidates,
    partner_phi,
    rank_distinct,
    strongest_partner_phi,
)
from paperlib.metrics.cooccurrence import cross_phi_topk


def _brute_phi(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _pair(T: int = 2000, seed: int = 0):
    """Solo feature 0 = OR(joint 0, joint 1) (disjoint supports, 2% each) and joint 2 = OR(solo 1,
    solo 2); solo 3 ≈ OR of joint 3 and a noisier joint 4 (a weaker split); the rest random noise."""
    rng = np.random.default_rng(seed)
    n_s, n_j = 12, 12
    S = rng.random((T, n_s)) < 0.01
    J = rng.random((T, n_j)) < 0.01
    perm = rng.permutation(T)
    j0, j1 = np.zeros(T, bool), np.zeros(T, bool)
    j0[perm[:40]] = True
    j1[perm[40:80]] = True
    J[:, 0], J[:, 1] = j0, j1
    S[:, 0] = j0 | j1
    s1, s2 = np.zeros(T, bool), np.zeros(T, bool)
    s1[perm[100:130]] = True
    s2[perm[130:160]] = True
    S[:, 1], S[:, 2] = s1, s2
    J[:, 2] = s1 | s2
    # weaker split: solo 3 = joint 3 ∪ half of joint 4 (joint 4 also fires elsewhere)
    j3, j4 = np.zeros(T, bool), np.zeros(T, bool)
    j3[perm[200:240]] = True
    j4[perm[240:260]] = True
    j4[perm[300:330]] = True
    J[:, 3], J[:, 4] = j3, j4
    S[:, 3] = j3 | (j4 & np.isin(np.arange(T), perm[240:260]))
    return S, J


def test_or_feature_is_a_splitting_candidate_with_both_partners():
    S, J = _pair()
    split, merge, cross = find_candidates(sp.csr_matrix(S), sp.csr_matrix(J), min_phi=0.3)
    by_feat = {c.feature: c for c in split}
    assert 0 in by_feat
    c = by_feat[0]
    assert set(c.partners[:2]) == {0, 1}
    expect = sorted([_brute_phi(S[:, 0], J[:, 0]), _brute_phi(S[:, 0], J[:, 1])], reverse=True)
    np.testing.assert_allclose(c.partner_phi[:2], expect, rtol=1e-12)
    assert c.score == pytest.approx(expect[1])
    assert c.firing_rate == pytest.approx(S[:, 0].mean())
    # noise features are not candidates
    assert all(f in (0, 3) for f in by_feat)


def test_merging_is_symmetric():
    S, J = _pair()
    split, merge, _ = find_candidates(S, J, min_phi=0.3)
    by_feat = {c.feature: c for c in merge}
    assert 2 in by_feat and set(by_feat[2].partners[:2]) == {1, 2}
    # swapping the roles of the two SAEs swaps splitting and merging
    split2, merge2, _ = find_candidates(J, S, min_phi=0.3)
    for a_list, b_list in ((split2, merge), (merge2, split)):
        assert [(c.feature, c.partners) for c in a_list] == [(c.feature, c.partners) for c in b_list]
        np.testing.assert_allclose([c.score for c in a_list], [c.score for c in b_list], rtol=1e-12)


def test_ranking_by_second_highest_phi():
    S, J = _pair()
    split, _, _ = find_candidates(S, J, min_phi=0.3)
    assert [c.feature for c in split[:2]] == [0, 3]
    scores = [c.score for c in split]
    assert scores == sorted(scores, reverse=True)
    # the weaker split's second partner is joint 4, with a smaller φ than solo 0's second partner
    assert split[1].partners[:2] == [3, 4]
    assert split[1].score < split[0].score


def test_rate_filter_and_min_partners():
    S, J = _pair()
    cross = cross_phi_topk(S, J, 4, progress=False)
    assert candidates_from_cross(cross, "splitting", max_rate=0.03, min_phi=0.3) == [] or all(
        c.firing_rate <= 0.03 for c in candidates_from_cross(cross, "splitting", max_rate=0.03, min_phi=0.3))
    assert 0 not in [c.feature for c in candidates_from_cross(cross, "splitting", max_rate=0.03, min_phi=0.3)]
    assert candidates_from_cross(cross, "splitting", min_phi=0.99) == []
    with pytest.raises(ValueError):
        candidates_from_cross(cross, "sideways")
    with pytest.raises(ValueError):
        candidates_from_cross(cross, "splitting", min_partners=1)


def test_cross_phi_matrix_matches_brute_force():
    S, J = _pair(T=500, seed=3)
    rows, cols = [0, 3, 5], [0, 1, 4, 7]
    m = cross_phi_matrix(S, J, rows, cols)
    ref = np.array([[_brute_phi(S[:, r], J[:, c]) for c in cols] for r in rows])
    np.testing.assert_allclose(m, ref, atol=1e-12)
    with pytest.raises(ValueError):
        cross_phi_matrix(S[:10], J, rows, cols)


def test_duplicate_partners_are_skipped():
    """A solo feature whose two partners are copies of each other is a duplicate, not a split."""
    S, J = _pair()
    J = np.concatenate([J, J[:, [5]]], axis=1)  # joint 12 = exact copy of joint 5
    S = np.concatenate([S, J[:, [5]]], axis=1)  # solo 12 fires with joint 5 and its copy
    split, _, _ = find_candidates(sp.csr_matrix(S), sp.csr_matrix(J), min_phi=0.2)
    dup = [c for c in split if c.feature == 12]
    assert dup and sorted(dup[0].partners[:2]) == [5, 12] and dup[0].score == pytest.approx(1.0)
    assert split[0].feature == 12  # ranked first: both partners at φ = 1
    kept, skipped = drop_duplicate_partners(split, sp.csr_matrix(J), n=2, max_phi=0.8)
    assert 12 not in [c.feature for c in kept] and skipped == 1
    assert [c.feature for c in kept] == [c.feature for c in split if c.feature != 12][:2]
    kept_all, skipped_none = drop_duplicate_partners(split, sp.csr_matrix(J), n=2, max_phi=None)
    assert [c.feature for c in kept_all] == [c.feature for c in split[:2]] and skipped_none == 0


def test_duplicate_beyond_the_top_two_partners_is_skipped():
    """Every pair of listed partners is checked, not only the two strongest (brute-force φ)."""
    rng = np.random.default_rng(3)
    J = (rng.random((400, 4)) < 0.3).astype(np.int8)
    J[:, 3] = J[:, 2]  # partners 2 and 3 are one feature learned twice
    fired = sp.csr_matrix(J)

    def phi(a, b):
        return np.corrcoef(J[:, a], J[:, b])[0, 1]

    assert strongest_partner_phi(fired, [0, 1, 2, 3]) == pytest.approx(1.0)
    assert strongest_partner_phi(fired, [0, 1, 2]) == pytest.approx(max(phi(0, 1), phi(0, 2), phi(1, 2)))
    assert strongest_partner_phi(fired, [0]) == -np.inf
    dup = Candidate("splitting", 0, 0.1, [0, 1, 2, 3], [0.9, 0.8, 0.7, 0.6], 0.8)
    ok = Candidate("splitting", 1, 0.1, [0, 1, 2], [0.9, 0.8, 0.7], 0.8)
    kept, skipped = drop_duplicate_partners([dup, ok], fired, n=1, max_phi=0.8)
    assert [c.feature for c in kept] == [1] and skipped == 1



def test_partner_phi_against_brute_force():
    S, J = _pair(T=500, seed=1)
    partners = [0, 4, 7]
    m = partner_phi(sp.csr_matrix(J), partners)
    for i, a in enumerate(partners):
        for j, b in enumerate(partners):
            assert m[i, j] == (-np.inf if i == j else pytest.approx(_brute_phi(J[:, a], J[:, b]), abs=1e-12))
    assert partner_phi(J, [3]).shape == (1, 1) and partner_phi(J, [3])[0, 0] == -np.inf


def test_candidate_cross_phi_rows_cols_and_values():
    S, J = _pair()
    split, merge, _ = find_candidates(S, J, min_phi=0.3)
    block = candidate_cross_phi(S, J, split)
    assert block.rows == [c.feature for c in split]
    assert block.cols == list(dict.fromkeys(j for c in split for j in c.partners))  # first appearance
    ref = np.array([[_brute_phi(S[:, r], J[:, c]) for c in block.cols] for r in block.rows])
    np.testing.assert_allclose(block.phi, ref, atol=1e-12)
    rev = candidate_cross_phi(J, S, merge)
    assert rev.rows == [c.feature for c in merge] and rev.phi.shape == (len(rev.rows), len(rev.cols))
    empty = candidate_cross_phi(S, J, [])
    assert empty.rows == [] and empty.cols == [] and empty.phi.shape == (0, 0)


def test_distinct_pair_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(20):
        p = int(rng.integers(2, 6))
        c = rng.uniform(0.2, 0.9, size=p)
        P = rng.uniform(-0.3, 1.0, size=(p, p))
        P = (P + P.T) / 2
        i, j, score, pij = distinct_pair(c, P)
        best = max(((min(c[a], c[b]) * (1 - max(P[a, b], 0)), a, b) for a in range(p) for b in range(a + 1, p)),
                   key=lambda t: t[0])
        assert (i, j) == best[1:] and score == pytest.approx(best[0]) and pij == P[i, j]
    with pytest.raises(ValueError, match="need >= 2 partners"):
        distinct_pair([0.5], np.zeros((1, 1)))


def test_rank_distinct_drops_duplicates_and_ranks_by_distinct_score():
    """Solo 0 = OR(joint 0, joint 1) with disjoint partners: a split. Solo 5's partners joint 5 and joint 6
    are nearly the same feature twice (φ ≈ 0.98): not a split, even though its second cross-φ is higher."""
    rng = np.random.default_rng(6)
    T = 3000
    S = rng.random((T, 8)) < 0.005
    J = rng.random((T, 8)) < 0.005
    perm = rng.permutation(T)
    J[:, 0] = np.isin(np.arange(T), perm[:40])
    J[:, 1] = np.isin(np.arange(T), perm[40:80])
    S[:, 0] = J[:, 0] | J[:, 1]
    dup = np.isin(np.arange(T), perm[100:160])
    J[:, 5], J[:, 6], S[:, 5] = dup, dup | np.isin(np.arange(T), perm[200:203]), dup  # φ(J5, J6) ≈ 0.98
    split, _, _ = find_candidates(sp.csr_matrix(S), sp.csr_matrix(J), min_phi=0.3)
    assert {c.feature for c in split} >= {0, 5}
    ranked = rank_distinct(split, sp.csr_matrix(J), max_partner_phi=0.3)
    assert [c.feature for c in ranked] == [0]
    c = ranked[0]
    assert set(c.partners[:2]) == {0, 1}
    phi_a = [_brute_phi(S[:, 0], J[:, j]) for j in c.partners[:2]]
    phi_b = _brute_phi(J[:, c.partners[0]], J[:, c.partners[1]])
    assert c.score == pytest.approx(min(phi_a) * (1 - max(phi_b, 0)))
    # with no distinctness requirement both are kept, the split ranked first
    both = rank_distinct(split, sp.csr_matrix(J), max_partner_phi=1.0)
    assert [c.feature for c in both][:2] == [0, 5] and both[1].score < 0.05
    with pytest.raises(ValueError, match="max_partner_phi"):
        rank_distinct(split, sp.csr_matrix(J), max_partner_phi=2.0)
