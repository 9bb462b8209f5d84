"""Tests for paperlib.stages.evaluate: stage caching, Table 1 arithmetic, Welch from stored stats, selection."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import paperlib.stages.evaluate as ev
from paperlib.config import paths
from paperlib.config.io import read_json
from paperlib.config.profiles import TokenBudget, get_profile
from paperlib.metrics.stats import welch_from_sums
from paperlib.sae import trainer
from paperlib.sae.arms import selected_joint

D = 16
NAMES = ["solo", "joint-l1-s0.5", "solo-seed1", "control"]


def _profile():
    return get_profile(
        "smoke", model="tiny-smollm2", layer=2, context=32,
        tokens=TokenBudget(train=256, calibration=512, cooccurrence=512, autointerp=64, ce=64),
        n_latents=48, k=4, n_meta=8, k_meta=2, batch_size=32, train_epochs=2.0, checkpoint_every=100,
        n_primary_steps=3, n_meta_steps=2, dead_after=2, k_aux=8, grid_lambda2=(1.0,), grid_sigma2=(0.5,),
        ortho_gamma=(), n_noise_seeds=1,
    )


class _FakeCache:
    def __init__(self) -> None:
        g = np.random.default_rng(0)
        mu = g.standard_normal(D)
        self._acts = {r: (g.standard_normal((512, D)) * 2 + mu).astype(np.float16)
                      for r in ("train", "calibration", "cooccurrence")}
        self.d = D

    def acts(self, name):
        return self._acts[name]


@pytest.fixture()
def env(tmp_artifacts, monkeypatch):
    p = _profile()
    cache = _FakeCache()
    calls = {"n": 0}

    def fake_cache(profile):
        calls["n"] += 1
        return cache

    monkeypatch.setattr(ev, "_cache", fake_cache)
    for n in NAMES:
        trainer.train_run(p, n, cache.acts("train"), paths.run_dir(p, n), progress=False, device="cpu")
    return p, calls


def test_stage_caching_and_invalidation(env):
    p, calls = env
    co1 = ev.ensure_cooccurrence(p, "solo", progress=False)
    rec1 = ev.ensure_reconstruction(p, "solo", progress=False)
    n_calls = calls["n"]
    assert n_calls >= 2
    mtimes = {f: f.stat().st_mtime_ns for f in ev.eval_dir(p, "solo").rglob("*") if f.is_file()}
    co2 = ev.ensure_cooccurrence(p, "solo", progress=False)
    rec2 = ev.ensure_reconstruction(p, "solo", progress=False)
    ev.ensure_calibration(p, "solo", progress=False)
    assert calls["n"] == n_calls  # nothing recomputed: activations never touched again
    assert co1 == co2 and rec1 == rec2
    assert mtimes == {f: f.stat().st_mtime_ns for f in ev.eval_dir(p, "solo").rglob("*") if f.is_file()}
    assert co1["range"] == "cooccurrence" and co1["n_pairs"] == 48 * 47 // 2
    assert ev.load_firing(p, "solo").shape == (512, 48)
    # weights changed (retrained: done.json rewritten) -> recomputed
    done = paths.run_dir(p, "solo") / "done.json"
    st = done.stat()
    os.utime(done, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ev.ensure_cooccurrence(p, "solo", progress=False)
    assert calls["n"] > n_calls


def test_grid_table_arithmetic_and_welch(env):
    p, _ = env
    df = ev.grid_table(p, NAMES, with_ce=False, progress=False)
    assert list(df.columns) == ev.TABLE1_COLUMNS
    assert list(df["run"]) == NAMES
    co = {n: read_json(ev.eval_dir(p, n) / "cooccurrence.json") for n in NAMES}
    rec = {n: read_json(ev.eval_dir(p, n) / "reconstruction.json") for n in NAMES}
    base = df.set_index("run").loc["solo"]
    assert base["delta_phi_pct"] == 0 and base["delta_l2_pct"] == 0 and math.isnan(base["welch_t"])
    for n in NAMES[1:]:
        r = df.set_index("run").loc[n]
        s_phi, j_phi = co["solo"]["mean_abs_phi"], co[n]["mean_abs_phi"]
        assert r["delta_phi_pct"] == pytest.approx(100 * (j_phi - s_phi) / s_phi, rel=1e-12)
        assert r["delta_l2_pct"] == pytest.approx(100 * (rec[n]["mse"] / rec["solo"]["mse"] - 1), rel=1e-9)
        assert r["dead_latents"] == rec[n]["n_dead"]
        # Welch from the stored sufficient statistics (count, Σ|φ|, Σφ²) and from scipy
        w = welch_from_sums(co[n]["n_pairs"], co[n]["sum_abs"], co[n]["sumsq"],
                            co["solo"]["n_pairs"], co["solo"]["sum_abs"], co["solo"]["sumsq"])
        assert r["welch_t"] == pytest.approx(w.t, rel=1e-6)
        assert r["welch_df"] == pytest.approx(w.df, rel=1e-6)
        ref = sps.ttest_ind_from_stats(j_phi, co[n]["std_abs_phi"], co[n]["n_pairs"],
                                       s_phi, co["solo"]["std_abs_phi"], co["solo"]["n_pairs"], equal_var=False)
        assert r["welch_t"] == pytest.approx(ref.statistic, rel=1e-9)
        assert r["welch_p"] == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)
    nf = df.attrs["noise_floor"]
    vals = [co["solo"]["mean_abs_phi"], co["solo-seed1"]["mean_abs_phi"]]
    assert nf["runs"] == ["solo", "solo-seed1"]
    assert nf["mean"] == pytest.approx(np.mean(vals)) and nf["std"] == pytest.approx(np.std(vals, ddof=1))


def _hand_table():
    return pd.DataFrame({
        "run": ["solo", "joint-l0.1-s1", "joint-l0.3-s1", "joint-l1-s1", "control", "ortho-g0.1"],
        "arm": ["solo", "joint", "joint", "joint", "control", "ortho"],
        "lambda2": [np.nan, 0.1, 0.3, 1.0, 0.0, np.nan],
        "sigma2": [np.nan, 1.0, 1.0, 1.0, np.nan, np.nan],
        "mean_abs_phi": [1.0, 0.98, 0.95, 0.90, 0.99, 0.5],
        "delta_phi_pct": [0.0, -2.0, -5.0, -10.0, -1.0, -50.0],
        "delta_l2_pct": [0.0, 1.0, 4.0, 9.0, 0.0, 0.0],
    })


def test_selection_rule():
    t = _hand_table()
    sel = ev.select_configuration(t, max_dl2_pct=5.0)
    assert sel["selected"] == "joint-l0.3-s1" and sel["n_candidates"] == 2  # ortho/control never selected
    assert ev.select_configuration(t, max_dl2_pct=10.0)["selected"] == "joint-l1-s1"
    assert ev.select_configuration(t, max_dl2_pct=1.0)["selected"] == "joint-l0.1-s1"
    fb = ev.select_configuration(t, max_dl2_pct=0.5)
    assert fb["selected"] == "joint-l0.1-s1" and fb["rule"].startswith("fallback")
    with pytest.raises(ValueError, match="no joint"):
        ev.select_configuration(t[t["arm"] != "joint"])


def test_write_selection_read_by_runs(tmp_artifacts):
    p = _profile()
    ev.write_selection(p, ev.select_configuration(_hand_table(), 5.0))
    assert selected_joint(p) == "joint-l0.3-s1"


def test_reconstruction_subset_keeps_full_range_firing_stats(env):
    p, _ = env
    full = ev.ensure_reconstruction(p, "solo", progress=False)
    sub_p = p.replace(recon_tokens=100)
    sub = ev.ensure_reconstruction(sub_p, "solo", progress=False)
    assert full["n_tokens"] == 512 and sub["n_tokens"] == 100 and sub["n_tokens_evaluated"] == 100
    assert sub["mse"] != full["mse"]  # errors on the subset only
    # dead latents and firing counts always cover the whole co-occurrence range
    assert sub["n_dead"] == full["n_dead"] == ev.ensure_cooccurrence(p, "solo", progress=False)["n_dead"]
    assert sub["firing_counts"] == full["firing_counts"]
    assert sub["rate_hist_counts"] == full["rate_hist_counts"]
    assert sub["firing_rate_quantiles"] == pytest.approx(full["firing_rate_quantiles"])
    # the BatchTopK sub-dict is labelled with the tokens it covers
    assert sub["batchtopk"]["n_tokens_evaluated"] == 100 and full["batchtopk"]["n_tokens_evaluated"] == 512


def test_profile_evaluation_settings_are_validated():
    with pytest.raises(ValueError, match="calibration_mode"):
        get_profile("smoke", calibration_mode="fast")
    with pytest.raises(ValueError, match="recon_tokens"):
        get_profile("smoke", recon_tokens=0)
    assert get_profile("default").calibration_mode == "hist"


def test_new_calibration_invalidates_downstream_stages(env):
    p, calls = env
    co_exact = ev.ensure_cooccurrence(p.replace(calibration_mode="exact"), "solo", progress=False)
    n = calls["n"]
    co_hist = ev.ensure_cooccurrence(p.replace(calibration_mode="hist"), "solo", progress=False)
    assert calls["n"] > n  # thresholds changed -> φ recomputed, not served from the exact-mode cache
    assert co_exact["n_pairs"] == co_hist["n_pairs"]
