"""Case-study markdown, CSV frame and cross-φ figure (paperlib.report.case_studies)."""

import math

import numpy as np
import pandas as pd

from paperlib.metrics.case_studies import Candidate, CandidatePhi
from paperlib.report.case_studies import (
    case_study_markdown,
    cross_phi_figure,
    format_context,
    null_frame,
    null_text,
    save_case_studies,
    studies_frame,
)
from paperlib.stages.case_studies import CaseStudy, Snippet, case_study_table


def _study() -> CaseStudy:
    c = Candidate("splitting", 7, 0.02, [3, 5], [0.6, 0.4], 0.4)
    tab = case_study_table(c, base_sae="solo", partner_sae="joint", rate_base=0.02,
                           rates_partner=np.linspace(0, 0.1, 10), cos=np.array([0.5, -0.25]),
                           interp_partner={3: {"fuzz": 0.5, "explanation": "cats"}})
    tab["max_phi_other_partners"] = [math.nan, 0.1, 0.1]
    return CaseStudy(c, tab, {("solo", 7): [Snippet(["a", " b", " c"], 1), Snippet(["x|", "\n"], 0)],
                              ("joint", 3): [Snippet(["`q`"], None)]})


def test_format_context_marks_the_peak():
    assert format_context(["The", " cat", "\n", " sat"], 1) == "The« cat»⏎ sat"
    assert format_context(["a|b", "\r\n"], None) == "a¦b⏎"
    assert format_context([], None) == ""


def test_markdown_tables_and_contexts():
    md = case_study_markdown([_study()], "Splitting", "a note")
    assert md.startswith("# Splitting\n\na note\n")
    assert "| solo | 7 | — | — | 0.0200 | — | — |" in md
    assert "| joint | 3 | +0.500 | 0.600 | 0.0333 | 0.500 | cats |" in md
    assert "| joint | 5 | — | 0.400 | 0.0556 | -0.250 | — |" in md
    assert "max φ between its partners 0.100" in md and "distinct-split score 0.400" in md
    assert "  - `a« b» c`" in md and "  - `«x¦»⏎`" in md
    assert "  - `q`" in md  # a context with a backtick is not wrapped in backticks
    assert "- **joint 5**\n  - (none)" in md
    assert "No candidates met the criteria." in case_study_markdown([], "Merging")


def test_studies_frame_and_save(tmp_path):
    df = studies_frame([_study()])
    assert list(df["feature"]) == [7, 3, 5]
    assert list(df["contexts"]) == ["a« b» c ‖ «x¦»⏎", "`q`", ""]
    empty = studies_frame([])
    assert len(empty) == 0 and "contexts" in empty.columns
    csv, md = save_case_studies([_study()], tmp_path, "cs", "Splitting", "note")
    pd.testing.assert_frame_equal(pd.read_csv(csv, keep_default_na=False)[["feature", "contexts"]],
                                  df[["feature", "contexts"]])
    assert md.read_text() == case_study_markdown([_study()], "Splitting", "note")


def test_cross_phi_figure_panels():
    split = CandidatePhi([1, 2], [4, 5, 6], np.array([[0.5, 0.05, -0.2], [0.0, 0.3, 0.9]]))
    merge = CandidatePhi([3], [0, 1], np.array([[0.4, 0.2]]))
    none = CandidatePhi([], [], np.zeros((0, 0)))
    fig = cross_phi_figure({"splitting": split, "merging": merge}, solo_label="solo", joint_label="j")
    heat = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in heat] == ["splitting candidates: cross-φ", "merging candidates: cross-φ"]
    assert [t.get_text() for t in heat[0].get_yticklabels()] == ["solo 1", "solo 2"]
    assert heat[0].get_xlabel() == "j partner features" and heat[1].get_xlabel() == "solo partner features"
    np.testing.assert_array_equal(heat[0].images[0].get_array(), split.phi)
    assert sorted(t.get_text() for t in heat[0].texts) == ["-0.20", "0.30", "0.50", "0.90"]  # |φ| ≥ 0.1
    only_merge = cross_phi_figure({"splitting": none, "merging": merge})
    assert [ax.get_title() for ax in only_merge.axes if ax.get_title()] == ["merging candidates: cross-φ"]
    empty = cross_phi_figure({"splitting": none, "merging": none})
    assert [t.get_text() for t in empty.axes[0].texts] == ["no splitting candidates"]


def _res(null=True):
    counts = dict(splitting=12, merging=3, splitting_any=40, merging_any=30)
    nc = dict(splitting=8, merging=0, splitting_any=35, merging_any=33)
    cmp = {"splitting": dict(treatment=12, null=8, difference=4, ratio=1.5),
           "merging": dict(treatment=3, null=0, difference=3, ratio=math.nan)}
    return dict(counts=counts, null_counts=nc if null else None, comparison=cmp if null else None,
                max_partner_phi=0.3)


def test_null_frame_and_text():
    f = null_frame(_res())
    assert list(f["kind"]) == ["splitting", "merging"]
    assert list(f["treatment"]) == [12, 3] and list(f["null"]) == [8, 0]
    assert list(f["treatment_any"]) == [40, 30] and list(f["null_any"]) == [35, 33]
    t = null_text(_res(), "joint-l0.3-s1-seed1", "solo-seed1")
    assert ("splitting: 12 (solo vs joint-l0.3-s1-seed1) vs 8 (solo vs solo-seed1, the null), difference +4, "
            "ratio 1.50×") in t
    assert "merging: 3" in t and "ratio undefined (null 0)" in t and "< 0.3" in t
    assert null_frame(_res(null=False)).empty
    assert "no null run" in null_text(_res(null=False), "j", "")
