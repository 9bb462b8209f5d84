"""tables/summary.md helpers on hand-built tables."""

import math

import pandas as pd

from paperlib.report.summary import _fmt, case_studies_text, gemma_text, ground_truth_text


def test_gemma_text_uses_absolute_fuzz_differences():
    gem = pd.DataFrame({
        "run": ["solo", "joint-l0.3-s1", "joint-l1-s3"], "lambda2": [math.nan, 0.3, 1.0],
        "sigma2": [math.nan, 1.0, 3.0], "dphi_pct": [0.0, -2.5, 1.25], "dl2_pct": [0.0, 3.0, 1.0],
        "fuzz_mean": [0.05, 0.2, 0.1], "n_fuzz": [16, 16, 16], "dfuzz": [0.0, 0.15, 0.05],
        "dfuzz_se": [math.nan, 0.02, 0.03]})
    t = gemma_text(gem)
    assert "-2.50% to +1.25% over 2 configurations" in t
    one = gemma_text(gem.iloc[:2])
    assert "Δ mean \\|φ\\| -2.50% (seed 0, one configuration)" in one and " to " not in one.split(";")[0]
    assert "λ₂=0.3, σ²=1: ΔL2 +3.00%, Δfuzz +0.150" in t
    assert "best Δfuzz +0.150 ± 0.020 s.e. at joint-l0.3-s1" in t and "16 features per config" in t
    assert gemma_text(None) == "not run"


def test_ground_truth_text_and_number_format():
    corr = pd.DataFrame({
        "scope": ["all SAEs"] * 3 + ["within seed"],
        "phi_stat": ["mean_abs_phi_all", "mean_abs_phi_all", "excess_abs_phi", "mean_abs_phi_all"],
        "metric": ["act_f1", "mmcs_true", "act_f1", "act_f1"], "rho": [-0.6, 0.1, 0.3, -0.2],
        "ci_low": [-0.8, -0.3, 0.05, -0.5], "ci_high": [-0.3, 0.5, 0.55, 0.1],
        "verdict": ["supports |φ| as a proxy", "no evidence", "contradicts |φ| as a proxy", "no evidence"]})
    pair = pd.DataFrame({"arm": ["λ₂=0.3, σ²=1", "λ₂=1, σ²=1"], "metric": ["act_f1", "act_f1"],
                         "delta": [0.01, 0.02], "ci_low": [-0.02, 0.01], "ci_high": [0.04, 0.03],
                         "verdict": ["no evidence", "higher"], "mde80": [0.05, 0.01]})
    per_sae = pd.DataFrame({"seed": [0, 0, 1, 1], "label": ["solo", "J", "solo", "J"],
                            "converged": [True, True, False, True]})
    t = ground_truth_text(corr, pair, per_sae)
    assert t.startswith("4 SAEs (2 data seeds × 2 arms), 3 converged; ")
    assert ("all SAEs: of 3 Spearman ρ (|φ| statistic × atomicity metric, 95% bootstrap CI) 1 support |φ| as a proxy, "
            "1 contradict it, 1 give no evidence (CI covers 0); strongest mean_abs_phi_all vs act_f1 ρ = -0.60 "
            "[-0.80, -0.30]") in t
    assert "within seed: of 1 Spearman" in t
    assert ("joint λ₂=0.3 − solo, paired over data seeds: act_f1 Δ +0.0100 [-0.0200, +0.0400] "
            "(no evidence, MDE 0.0500)") in t
    assert ground_truth_text(None) == "not run"
    assert _fmt(pd.Series([10614528]).iloc[0], ",.0f") == "10,614,528"  # numpy integers are formatted
    assert _fmt(float("nan")) == "n/a"


def test_case_studies_text():
    df = pd.DataFrame({"kind": ["splitting", "merging"], "treatment": [12, 3], "null": [8, 0],
                       "difference": [4, 3], "ratio": [1.5, math.nan]})
    assert case_studies_text(df) == ("splitting 12 (solo vs joint) vs 8 (solo vs solo, the null): difference +4, "
                                     "ratio 1.50; merging 3 (solo vs joint) vs 0 (solo vs solo, the null): "
                                     "difference +3, ratio undefined")
    assert case_studies_text(None) == "not run"


def test_readme_results_block_is_written_between_markers_from_the_tables(tmp_path, monkeypatch):
    from paperlib.config.paths import output_dirs
    from paperlib.report import summary

    monkeypatch.setenv("PAPERLIB_OUTPUTS", str(tmp_path / "out"))
    tables = output_dirs("smoke")[1]
    rows = [{"comparison": c, "statistic": s, "label": s, "K": 5, "mean_baseline": 1.0, "mean_treatment": 0.99,
             "delta": -0.01, "ci_low": lo, "ci_high": hi, "p": 0.2, "delta_pct": -1.0, "ci_low_pct": 100 * lo,
             "ci_high_pct": 100 * hi, "mde_pct": 2.0, "verdict": "v"}
            for c in ("joint vs solo", "joint vs randcritic")
            for s, lo, hi in (("mean_abs_phi_alive", -0.02, 0.01), ("excess_abs_phi", -0.03, 0.005))]
    pd.DataFrame(rows).to_csv(tables / "primary_paired_seeds.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{summary.README_START}\nold words\n{summary.README_END}\noutro\n")
    assert summary.write_readme_results(readme, "smoke")
    text = readme.read_text()
    assert "old words" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "No evidence at this scale: over 5 paired seeds" in text
    assert "-1.00% [-2.00, +1.00]" in text
    other = tmp_path / "other.md"
    other.write_text("no markers")
    assert not summary.write_readme_results(other, "smoke") and other.read_text() == "no markers"


def test_rate_matched_lines_ci_over_seeds_and_disagreement():
    import numpy as np
    from scipy import stats as sps

    from paperlib.report.summary import rate_matched_lines

    rate = pd.DataFrame({"raw_rel_pct": [-4.0, -4.5, -4.2], "rel_diff_pct": [2.0, 1.5, 2.5],
                         "cell_rel_pct": [-1.0, -2.0, -1.5]})
    lines = rate_matched_lines(rate)
    half = sps.t.ppf(0.975, 2) * np.std([2.0, 1.5, 2.5], ddof=1) / np.sqrt(3)
    assert f"+2.00% [{2 - half:+.2f}, {2 + half:+.2f}]" in lines[0]
    assert "disagree in sign (raw, rate cells lower; regression higher" in lines[1]
    agree = rate_matched_lines(rate.assign(rel_diff_pct=[-2.0, -1.5, -2.5]))
    assert len(agree) == 1


def test_summary_reads_selected_json_through_load_selection(tmp_artifacts):
    """``tables/selected.json`` is checked like the selection stage's own result: a valid file is shown with
    its held-out Δ, a file naming solo or holding no selection fails naming the file and what to do."""
    import json

    import pytest

    from paperlib.config.paths import output_dirs
    from paperlib.report.summary import write_summary

    tables = output_dirs("smoke")[1]
    sel = {"selected": "joint-l0.3-s1", "rule": "r", "max_dl2_pct": 10.0, "n_candidates": 4, "n_joint": 4,
           "delta_phi_selection_half_pct": -2.0, "delta_phi_heldout_pct": -1.5, "delta_phi_pct": -1.75,
           "delta_l2_pct": 3.0, "mean_abs_phi": 0.01, "lambda2": 0.3, "sigma2": 1.0}
    path = tables / "selected.json"
    path.write_text(json.dumps(sel))
    text = write_summary("smoke").read_text()
    assert "Selected configuration: `joint-l0.3-s1`" in text and "held-out half -1.50%" in text

    path.write_text(json.dumps({**sel, "selected": "solo"}))
    with pytest.raises(ValueError, match=r"selected\.json: it names 'solo'.*Delete"):
        write_summary("smoke")
    path.write_text(json.dumps({"best": "joint-l0.3-s1"}))
    with pytest.raises(ValueError, match=r"selected\.json: it cannot be read as a selection"):
        write_summary("smoke")
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"selected\.json: it cannot be read as a selection"):
        write_summary("smoke")


def test_grid_sentence_uses_the_holm_adjusted_p():
    """The summary's grid sentence counts configurations by ``p_holm`` (not the unadjusted p) and shows both
    for the selected configuration; older tables without the columns and untestable tables say so."""
    from paperlib.report.summary import grid_noise_text

    t1 = pd.DataFrame({
        "run": ["solo", "solo-seed1", "solo-seed2", "joint-l0.3-s1", "joint-l1-s1", "ortho-g0.1", "randcritic-l0.3-s1"],
        "arm": ["solo", "solo", "solo", "joint", "joint", "ortho", "randcritic"],
        "delta_phi_pct": [0.0, 1.0, -0.5, -4.0, -9.0, -1.0, -3.0],
        "p_vs_solo_seeds": [math.nan, math.nan, math.nan, 0.03, 0.004, 0.6, math.nan],
        "p_holm": [math.nan, math.nan, math.nan, 0.06, 0.012, 0.6, math.nan]})
    text = grid_noise_text(t1, "joint-l0.3-s1")
    # 0.03 < 0.05 unadjusted, but 0.06 after Holm: only joint-l1-s1 counts
    assert text.startswith("1 of 3 grid configurations differ from the 3 solo seeds' noise at Holm-adjusted p < 0.05")
    assert "2 df; Holm over the 3" in text
    assert "`joint-l1-s1` (-9.00%, p_holm = 0.012)" in text and "`joint-l0.3-s1` (" not in text
    assert "selected `joint-l0.3-s1`: Δ -4.00%, p = 0.03, Holm-adjusted p = 0.06" in text
    assert "rerun notebook 04" in grid_noise_text(t1.drop(columns=["p_holm"]))
    assert grid_noise_text(None) == "not run"
    assert grid_noise_text(t1.assign(p_vs_solo_seeds=math.nan, p_holm=math.nan)).startswith("not testable")


def test_summary_shows_the_grid_sentence(tmp_artifacts):
    from paperlib.config.paths import output_dirs
    from paperlib.report.summary import write_summary

    tables = output_dirs("smoke")[1]
    pd.DataFrame({"run": ["solo", "solo-seed1", "joint-l1-s1"], "arm": ["solo", "solo", "joint"],
                  "mean_abs_phi": [1.0, 1.01, 0.9], "delta_phi_pct": [0.0, 1.0, -10.0],
                  "p_vs_solo_seeds": [math.nan, math.nan, 0.04], "p_holm": [math.nan, math.nan, 0.04],
                  "dead_on_tokens": [512] * 3, "dead_latents": [0] * 3}
                 ).to_csv(tables / "table1_grid.csv", index=False)
    text = write_summary("smoke").read_text()
    line = next(s for s in text.splitlines() if s.startswith("| grid vs the solo seeds' noise"))
    assert "1 of 1 grid configurations differ from the 2 solo seeds' noise at Holm-adjusted p < 0.05" in line


def test_rate_matched_lines_carry_the_minimum_detectable_effect():
    import numpy as np
    from statsmodels.stats.power import TTestPower

    from paperlib.report.summary import rate_matched_lines

    rate = pd.DataFrame({"raw_rel_pct": [-4.0, -4.5, -4.2], "rel_diff_pct": [0.5, -0.5, 0.2],
                         "cell_rel_pct": [-1.0, -2.0, -1.5]})
    line = rate_matched_lines(rate)[0]
    d = TTestPower().solve_power(effect_size=None, nobs=3, alpha=0.05, power=0.8, alternative="two-sided")
    for col in ("raw_rel_pct", "rel_diff_pct", "cell_rel_pct"):  # each estimate, the null one included
        assert f"(MDE {float(d) * np.std(rate[col], ddof=1):.2f}%)" in line
    assert "(MDE n/a%)" in rate_matched_lines(rate.assign(rel_diff_pct=[1.0, 1.0, 1.0]))[0]  # no spread


def test_rate_matched_lines_report_the_pooled_clustered_regression():
    from paperlib.report.summary import rate_matched_lines

    rate = pd.DataFrame({"raw_rel_pct": [-4.0, -4.5], "rel_diff_pct": [2.0, 1.5], "cell_rel_pct": [-1.0, -2.0]})
    pooled = pd.DataFrame([{"pooled_rel_pct": 1.81, "pooled_rel_ci_low_pct": 1.2, "pooled_rel_ci_high_pct": 2.4,
                            "pooled_p_arm": 0.003, "pooled_df": 4, "pooled_n_groups": 5, "pooled_n_latents": 22980}])
    text = " ".join(rate_matched_lines(rate, pooled))
    assert ("pooled over the 5 seed pairs (22,980 latents, a fixed effect per pair, standard errors clustered by "
            "pair, t with 4 df): +1.81% [+1.20, +2.40], p = 0.003") in text
