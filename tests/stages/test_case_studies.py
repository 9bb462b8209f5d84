"""Splitting / merging candidate detection on hand-built firing matrices (paperlib.stages.case_studies)."""

import numpy as np
import pytest
import scipy.sparse as sp

from paperlib.metrics.cooccurrence import cross_phi_topk
from paperlib.stages.case_studies import (
    candidates_from_cross,
    case_study_markdown,
    cross_phi_matrix,
    drop_duplicate_partners,
    find_candidates,
    format_context,
    studies_frame,
)


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


def test_format_context_and_markdown():
    assert format_context(["The", " cat", "\n", " sat"], 1) == "The« cat»⏎ sat"
    S, J = _pair()
    split, _, _ = find_candidates(S, J, min_phi=0.3)
    import pandas as pd

    from paperlib.stages.case_studies import CaseStudy, case_study_table

    c = split[0]
    tab = case_study_table(c, base_sae="solo", partner_sae="joint", rate_base=c.firing_rate,
                           rates_partner=J.mean(axis=0), cos=np.ones(len(c.partners)))
    assert list(tab["sae"]) == ["solo"] + ["joint"] * len(c.partners)
    assert tab["explanation"].eq("—").all()
    st = CaseStudy(c, tab, {("solo", 0): ["a «b» c"]})
    md = case_study_markdown([st], "Splitting")
    assert "a «b» c" in md and "| solo | 0 |" in md
    df = studies_frame([st])
    assert isinstance(df, pd.DataFrame) and df.loc[0, "contexts"] == "a «b» c"


def test_second_model_table_and_dirs(tmp_path, monkeypatch):
    import math

    import pandas as pd

    from paperlib.stages import second_model as sm

    monkeypatch.setenv("PAPERLIB_OUTPUTS", str(tmp_path))
    assert sm.output_dirs("gemma-3-270m") == (tmp_path / "default" / "figures", tmp_path / "default" / "tables")
    assert sm.output_dirs("smoke")[1] == tmp_path / "smoke" / "tables"
    names = [r.name for r in sm.gemma_plan("gemma-3-270m", "0.1,0.3", "1.0,3.0")]
    assert names == ["solo", "joint-l0.1-s1", "joint-l0.1-s3", "joint-l0.3-s1", "joint-l0.3-s3"]
    assert [r.name for r in sm.gemma_plan("smoke")] == ["solo", "joint-l0.3-s1"]
    grid = pd.DataFrame({"run": ["solo", "joint-l0.3-s1"], "lambda2": [math.nan, 0.3], "sigma2": [math.nan, 1.0],
                         "mean_abs_phi": [0.02, 0.018], "delta_phi_pct": [0.0, -10.0], "l2": [0.1, 0.105],
                         "delta_l2_pct": [0.0, 5.0], "l0": [8.0, 8.0], "ce_overhead_pct": [1.0, 1.2],
                         "dead_latents": [0, 1], "welch_p": [math.nan, 0.01]})
    fuzz = pd.DataFrame({"run": ["solo", "joint-l0.3-s1"], "n_fuzz": [3, 3], "fuzz_mean": [0.4, 0.5],
                         "fuzz_sem": [0.03, 0.04]})
    fuzz["dfuzz_pct"] = 100 * (fuzz["fuzz_mean"] - 0.4) / 0.4
    fuzz["dfuzz"], fuzz["dfuzz_se"] = fuzz["fuzz_mean"] - 0.4, [math.nan, 0.05]
    t = sm.gemma_table(grid, fuzz)
    assert list(t.columns) == sm.GEMMA_COLUMNS
    assert t.loc[1, "dphi_pct"] == -10.0 and t.loc[1, "dfuzz_pct"] == pytest.approx(25.0)
    assert t.loc[1, "dfuzz"] == pytest.approx(0.1) and t.loc[1, "dfuzz_se"] == pytest.approx(0.05)
    assert sm.gemma_table(grid)["fuzz_mean"].isna().all()
    empty = sm.fuzz_table("smoke", ["solo", "joint-l0.3-s1"], 3, judge=None)
    assert empty["fuzz_mean"].isna().all() and list(empty["n_fuzz"]) == [0, 0]
    sm.gemma_figure(t)


def test_cross_phi_figure_accepts_candidates_and_studies():
    from paperlib.stages.case_studies import CaseStudy, cross_phi_figure

    S, J = _pair()
    split, merge, _ = find_candidates(S, J, min_phi=0.3)
    cross_phi_figure(S, J, split, merge)
    cross_phi_figure(S, J, [CaseStudy(c, None) for c in split], [])
    cross_phi_figure(S, J, [], [])


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
    from paperlib.stages.case_studies import Candidate, strongest_partner_phi

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


def test_fuzz_deltas_against_hand_computation():
    import math

    import pandas as pd

    from paperlib.stages.second_model import add_fuzz_deltas

    t = add_fuzz_deltas(pd.DataFrame({"run": ["solo", "a", "b"], "fuzz_mean": [0.05, 0.2, -0.05],
                                      "fuzz_sem": [0.03, 0.04, math.nan]}))
    assert t["dfuzz"].tolist() == pytest.approx([0.0, 0.15, -0.1])
    assert math.isnan(t.loc[0, "dfuzz_se"]) and t.loc[1, "dfuzz_se"] == pytest.approx(0.05)  # √(.03²+.04²)
    assert math.isnan(t.loc[2, "dfuzz_se"])
    assert t["dfuzz_pct"].tolist() == pytest.approx([0.0, 300.0, -200.0])
