"""The ground-truth benchmark driver on a tiny config (paperlib.stages.ground_truth)."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps

from paperlib.data.synthetic import generate, tiny_config
from paperlib.metrics.cooccurrence import count, rate_robust_stats
from paperlib.metrics.stats import min_detectable_effect
from paperlib.stages import ground_truth as gt


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("gt")
    df = gt.run_benchmark(tiny_config(), arms=("solo", "joint-l0.3-s1", "randcritic-l0.3-s1-seed7"),
                          seeds=(0, 1, 2), out_dir=root, progress=False)
    return df, root


def test_run_benchmark_rows_and_reuse(bench):
    df, root = bench
    assert list(df["seed"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert list(df["run"][:3]) == ["solo", "joint-l0.3-s1", "randcritic-l0.3-s1"]  # seed 0 has no suffix
    assert list(df["run"][3:6]) == ["solo-seed1", "joint-l0.3-s1-seed1", "randcritic-l0.3-s1-seed1"]
    for col in (*gt.PHI_STATS, *gt.ATOMICITY_METRICS, "fvu", "fvu_floor", "dead_frac"):
        assert np.isfinite(df[col]).all(), col
    assert ((df["act_f1"] > 0) & (df["act_f1"] <= 1)).all()
    np.testing.assert_allclose(df["fvu_gap"], df["fvu"] - df["fvu_floor"])
    assert (df["converged"] == ((df["fvu_gap"] <= gt.MAX_FVU_GAP) & (df["dead_frac"] < gt.MAX_DEAD_FRAC))).all()
    # a finished run is reused: identical numbers from the saved weights
    again = gt.run_benchmark(tiny_config(), arms=("solo",), seeds=(1,), out_dir=root, progress=False)
    for col in ("act_f1", "mean_abs_phi_all"):
        assert again[col].iloc[0] == df.loc[3, col]


def test_workers_give_the_same_numbers(bench, tmp_path):
    df, _ = bench
    par = gt.run_benchmark(tiny_config(), arms=("solo",), seeds=(1, 0), out_dir=tmp_path, workers=2, progress=False)
    assert list(par["seed"]) == [1, 0]
    ref = df[df["arm"] == "solo"].set_index("seed").loc[[1, 0]]
    for col in ("act_f1", "mean_abs_phi_all", "excess_abs_phi", "fvu", "mmcs_true"):
        np.testing.assert_array_equal(par[col].to_numpy(), ref[col].to_numpy())
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        gt.run_benchmark(tiny_config(), seeds=(0,), workers=0, progress=False)


def test_phi_stats_are_the_primary_comparisons(bench):
    """evaluate_sae's |φ| statistics are rate_robust_stats of the SAE's firing (checked on the truth's own firing)."""
    data = generate(tiny_config())
    rr = rate_robust_stats(count(data.codes_eval != 0))
    assert rr["mean_abs_phi_all"] == pytest.approx(gt.true_feature_stats(data)["true_mean_abs_phi"], rel=1e-9)


def test_noise_floor_is_the_oracle_fvu():
    data = generate(tiny_config())
    x = data.eval.astype(np.float64)
    mu = x.mean(1, keepdims=True)
    sd = x.std(1, ddof=1, keepdims=True) + 1e-5
    xn = (x - mu) / sd
    oracle = (np.asarray(data.codes_eval @ data.directions) - mu) / sd
    brute = ((xn - oracle) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    assert gt.noise_floor_fvu(data) == pytest.approx(brute, rel=1e-6)
    assert gt.noise_floor_fvu(generate(tiny_config(noise_std=0.0))) < 1e-6


def test_correlations_match_scipy(bench):
    df, _ = bench
    corr = gt.correlations(df, n_resamples=200)
    assert len(corr) == 2 * len(gt.PHI_STATS) * len(gt.ATOMICITY_METRICS)
    r = corr[(corr["scope"] == "all SAEs") & (corr["phi_stat"] == "excess_abs_phi") & (corr["metric"] == "act_f1")]
    assert r["rho"].iloc[0] == pytest.approx(sps.spearmanr(df["excess_abs_phi"], df["act_f1"]).statistic)
    w = corr[(corr["scope"] == "within seed") & (corr["phi_stat"] == "mean_abs_phi_all")
             & (corr["metric"] == "mmcs_true")]
    centred = df.groupby("seed")[["mean_abs_phi_all", "mmcs_true"]].transform(lambda v: v - v.mean())
    assert w["rho"].iloc[0] == pytest.approx(sps.spearmanr(centred["mean_abs_phi_all"], centred["mmcs_true"]).statistic)
    for _, row in corr.iterrows():
        covers = not np.isfinite(row["ci_low"]) or row["ci_low"] <= 0 <= row["ci_high"]
        assert (row["verdict"] == "no evidence") == covers
        if not covers:
            agrees = np.sign(row["ci_high"]) == row["proxy_sign"]  # the CI's side of 0
            assert row["verdict"] == ("supports |φ| as a proxy" if agrees else "contradicts |φ| as a proxy")


def test_paired_differences_match_ttest_rel(bench):
    df, _ = bench
    pair = gt.paired_differences(df, metrics=("act_f1", "fvu"))
    assert set(pair["arm"]) == {"λ₂=0.3, σ²=1", "random critic λ₂=0.3, σ²=1"}
    r = pair[(pair["arm"] == "λ₂=0.3, σ²=1") & (pair["metric"] == "act_f1")].iloc[0]
    a = df[df["arm"] == "solo"].sort_values("seed")["act_f1"].to_numpy()
    b = df[df["arm"] == "joint"].sort_values("seed")["act_f1"].to_numpy()
    ref = sps.ttest_rel(b, a)
    assert r["delta"] == pytest.approx((b - a).mean()) and r["p"] == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval()
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert r["mde80"] == pytest.approx(min_detectable_effect((b - a).std(ddof=1), 3))
    assert r["verdict"] == ("no evidence" if ci.low <= 0 <= ci.high else ("higher" if r["delta"] > 0 else "lower"))


def test_convergence_summary_and_errors(bench):
    df, _ = bench
    s = gt.convergence_summary(df)
    assert s["n_saes"] == 9 and s["n_converged"] == int(df["converged"].sum())
    assert s["max_dead_frac"] == df["dead_frac"].max()
    bad = df.copy()
    bad.loc[0, "act_f1"] = np.nan
    with pytest.raises(ValueError, match="non-finite values in columns \\['act_f1'\\]"):
        gt.correlations(bad, n_resamples=200)
    with pytest.raises(ValueError, match="base='nope'"):
        gt.paired_differences(df, base="nope")
    with pytest.raises(ValueError, match="lacks columns"):
        gt.correlations(pd.DataFrame({"seed": [0]}))


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="seeds must be distinct non-negative integers"):
        gt.run_benchmark(tiny_config(), seeds=(0, 0), progress=False)
    with pytest.raises(ValueError, match="arms: duplicate runs"):
        gt.run_benchmark(tiny_config(), arms=("solo", "solo-seed3"), seeds=(0,), progress=False)
    with pytest.raises(ValueError, match="cannot parse run name"):
        gt.run_benchmark(tiny_config(), arms=("nonsense",), seeds=(0,), progress=False)


def test_config_key():
    cfg = tiny_config()
    assert gt.config_key(cfg) == gt.config_key(tiny_config()) != gt.config_key(cfg.replace(seed=1))
