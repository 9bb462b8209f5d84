"""The case-study stage on a tiny profile (paperlib.stages.case_studies)."""

import math

import numpy as np

from paperlib.metrics.case_studies import (
    Candidate,
    candidates_from_cross,
    cross_phi_matrix,
    find_candidates,
    rank_distinct,
)
from paperlib.stages.case_studies import Snippet, case_studies, case_study_table, distinct_candidates, null_comparison
from paperlib.stages.cooccur import load_firing
from paperlib.stages.run import Run
from paperlib.stages.train import ensure_trained
from tests.helpers import tiny_profile
from tests.stages.test_interp import FakeJudge


def test_case_study_table_rows():
    c = Candidate("merging", 4, 0.03, [2, 0], [0.7, -0.3], -0.3)
    tab = case_study_table(c, base_sae="joint", partner_sae="solo", rate_base=0.03,
                           rates_partner=np.array([0.1, 0.2, 0.3]), cos=np.array([0.9, 0.1]),
                           interp_base={4: {"fuzz": 0.25, "explanation": ""}},
                           interp_partner={0: {"fuzz": -1.0, "explanation": "dogs"}})
    assert list(tab["sae"]) == ["joint", "solo", "solo"] and list(tab["feature"]) == [4, 2, 0]
    assert list(tab["abs_phi"])[1:] == [0.7, 0.3] and math.isnan(tab.loc[0, "abs_phi"])
    assert list(tab["firing_rate"]) == [0.03, 0.3, 0.1]
    assert list(tab["decoder_cos"])[1:] == [0.9, 0.1] and math.isnan(tab.loc[0, "decoder_cos"])
    assert tab.loc[0, "fuzz"] == 0.25 and math.isnan(tab.loc[1, "fuzz"]) and tab.loc[2, "fuzz"] == -1.0
    assert list(tab["explanation"]) == ["—", "—", "dogs"]
    assert set(tab["candidate"]) == {4} and set(tab["kind"]) == {"merging"}


def test_distinct_candidates_and_null_comparison():
    rng = np.random.default_rng(0)
    A, B = rng.random((500, 10)) < 0.05, rng.random((500, 10)) < 0.05
    ds, dm, cross, counts = distinct_candidates(A, B, max_rate=0.5, min_phi=0.02, max_partner_phi=0.3)
    split, merge, _ = find_candidates(A, B, max_rate=0.5, min_phi=0.02)
    assert counts == dict(splitting=len(rank_distinct(split, B)), merging=len(rank_distinct(merge, A)),
                          splitting_any=len(split), merging_any=len(merge))
    assert [c.feature for c in ds] == [c.feature for c in rank_distinct(split, B)]
    cmp = null_comparison(dict(splitting=6, merging=0), dict(splitting=4, merging=0))
    assert cmp["splitting"] == dict(treatment=6, null=4, difference=2, ratio=1.5)
    assert math.isnan(cmp["merging"]["ratio"]) and cmp["merging"]["difference"] == 0


def test_case_studies_stage(tmp_artifacts):
    p = tiny_profile()
    joint = "joint-l0.3-s1"
    ensure_trained(p, ["solo", joint, "solo-seed1"], progress=False)
    solo_run, joint_run, null_run = Run.of(p, "solo"), Run.of(p, joint), Run.of(p, "solo-seed1")
    kw = dict(max_rate=0.5, min_phi=0.05, n_candidates=3, max_partners=3, progress=False)
    res = case_studies(solo_run, joint_run, null_run=null_run, judge=FakeJudge(), n_scored=1, **kw)
    fs, fj, fn = load_firing(solo_run), load_firing(joint_run), load_firing(null_run)
    for kind, base, partner, fb, fp in (("splitting", "solo", joint, fs, fj), ("merging", joint, "solo", fj, fs)):
        every = candidates_from_cross(res["cross"], kind, max_rate=0.5, min_phi=0.05)
        assert res["counts"][f"{kind}_any"] == len(every)
        assert res["counts"][kind] == len(rank_distinct(every, fp, max_partner_phi=0.3))
        studies = res[kind]
        assert 0 < len(studies) <= 3
        scores = [s.candidate.score for s in studies]
        assert scores == sorted(scores, reverse=True)
        for s in studies:
            c = s.candidate
            assert 2 <= len(c.partners) <= 3
            assert cross_phi_matrix(fp, fp, c.partners[:1], c.partners[1:2])[0, 0] < 0.3  # the distinct pair
            assert list(s.table["sae"]) == [base] + [partner] * len(c.partners)
            assert list(s.table["feature"]) == [c.feature, *c.partners]
            assert set(s.contexts) == {(base, c.feature)} | {(partner, f) for f in c.partners}
            for snippets in s.contexts.values():
                assert all(isinstance(x, Snippet) and x.peak is not None and 0 <= x.peak < len(x.tokens)
                           for x in snippets)
            # the largest φ from each partner to another partner, brute force on the firing matrix
            pp = cross_phi_matrix(fp, fp, c.partners, c.partners)
            np.fill_diagonal(pp, -np.inf)
            np.testing.assert_allclose(s.table["max_phi_other_partners"].iloc[1:], pp.max(axis=1), atol=1e-12)
        # only the top n_scored=1 candidate of each kind is scored by the judge
        assert studies[0].table["explanation"].ne("—").all()
        block = res["cross_phi"][kind]
        assert block.rows == [s.candidate.feature for s in studies]
        np.testing.assert_allclose(block.phi, cross_phi_matrix(fb, fp, block.rows, block.cols), atol=1e-12)
    # the null is the same search between the two solo seeds
    assert res["null_run"] == "solo-seed1"
    assert res["null_counts"] == distinct_candidates(fs, fn, max_rate=0.5, min_phi=0.05)[3]
    assert res["comparison"] == null_comparison(res["counts"], res["null_counts"])
    assert res["interp_available"] and res["max_partner_phi"] == 0.3

    plain = case_studies(solo_run, joint_run, judge=None, **kw)
    assert not plain["interp_available"] and plain["null_counts"] is None and plain["comparison"] is None
    assert all(s.table["explanation"].eq("—").all() and s.table["fuzz"].isna().all() for s in plain["splitting"])
    two = case_studies(solo_run, joint_run, **{**kw, "max_partners": 2})
    assert all(len(s.candidate.partners) == 2 for s in two["splitting"] + two["merging"])
