"""The per-run stages (calibration, co-occurrence, reconstruction), Table 1 arithmetic, Welch from stored
statistics, the selection stage, and the stage cache keyed on code."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from paperlib.config.io import read_json
from paperlib.config.profiles import get_profile
from paperlib.metrics.stats import welch_from_sums
from paperlib.stages import cache, calibrate, cooccur, recon, select, train
from paperlib.stages.run import Run
from tests.stages.conftest import NAMES, R


def test_stage_caching_and_invalidation(env):
    p, calls = env
    co1 = cooccur.ensure_cooccurrence(R(p, "solo"), progress=False)
    rec1 = recon.ensure_reconstruction(R(p, "solo"), progress=False)
    n_calls = calls["n"]
    assert n_calls >= 2
    mtimes = {f: f.stat().st_mtime_ns for f in (R(p, "solo").dir / "stages").rglob("*") if f.is_file()}
    co2 = cooccur.ensure_cooccurrence(R(p, "solo"), progress=False)
    rec2 = recon.ensure_reconstruction(R(p, "solo"), progress=False)
    calibrate.ensure_calibration(R(p, "solo"), progress=False)
    assert calls["n"] == n_calls  # nothing recomputed: activations never touched again
    assert co1.to_json() == co2.to_json() and rec1.to_json() == rec2.to_json()
    assert mtimes == {f: f.stat().st_mtime_ns for f in (R(p, "solo").dir / "stages").rglob("*") if f.is_file()}
    assert co1.range == "cooccurrence" and co1.all.n_pairs == 48 * 47 // 2
    assert cooccur.CooccurrenceResult.from_json(co1.to_json()).to_json() == co1.to_json()  # JSON round trip
    assert recon.ReconstructionResult.from_json(read_json(cache.stage_dir("reconstruction", R(p, "solo"))
                                                          / "result.json")).to_json() == rec1.to_json()
    assert cooccur.load_firing(R(p, "solo")).shape == (512, 48)
    # a retrained run (another training setting: a new run key) recomputes everything downstream
    p2 = p.replace(lr=p.sae.lr * 2)
    train.ensure_trained(p2, ["solo"], progress=False, n_workers=1)
    cooccur.ensure_cooccurrence(R(p2, "solo"), progress=False)
    assert calls["n"] > n_calls


def test_grid_table_arithmetic_and_welch(env):
    p, _ = env
    df = select.grid_table(p, NAMES, with_ce=False, progress=False)
    assert list(df.columns) == select.TABLE1_COLUMNS
    assert list(df["run"]) == NAMES
    co = {n: cooccur.ensure_cooccurrence(R(p, n), progress=False) for n in NAMES}  # cached: read back
    rec = {n: recon.ensure_reconstruction(R(p, n), progress=False) for n in NAMES}
    base = df.set_index("run").loc["solo"]
    assert base["delta_phi_pct"] == 0 and base["delta_l2_pct"] == 0 and math.isnan(base["welch_t"])
    for n in [x for x in NAMES if not x.startswith("solo")]:
        r = df.set_index("run").loc[n]
        b = "solo-seed1" if n.endswith("seed1") else "solo"  # the paired solo run: same seed
        assert r["baseline"] == b
        s_phi, j_phi = co[b].all.mean_abs_phi, co[n].all.mean_abs_phi
        assert r["delta_phi_pct"] == pytest.approx(100 * (j_phi - s_phi) / s_phi, rel=1e-12)
        assert r["delta_l2_pct"] == pytest.approx(100 * (rec[n].mse / rec[b].mse - 1), rel=1e-9)
        assert r["dead_latents"] == rec[n].n_dead
        sa, sb = co[n].robust.excess_abs_phi, co[b].robust.excess_abs_phi
        assert r["delta_excess_pct"] == pytest.approx(100 * (sa - sb) / sb, rel=1e-12)
        h1 = co[n].halves[0].mean_abs_phi / co[b].halves[0].mean_abs_phi - 1
        assert r["delta_phi_half1_pct"] == pytest.approx(100 * h1, rel=1e-9)
        # Welch from the stored sufficient statistics (count, Σ|φ|, Σφ²) and from scipy
        ca, cb = co[n].all, co[b].all
        w = welch_from_sums(ca.n_pairs, ca.sum_abs, ca.sumsq, cb.n_pairs, cb.sum_abs, cb.sumsq)
        assert r["welch_t"] == pytest.approx(w.t, rel=1e-6)
        assert r["welch_df"] == pytest.approx(w.df, rel=1e-6)
        ref = sps.ttest_ind_from_stats(j_phi, ca.std_abs_phi, ca.n_pairs, s_phi, cb.std_abs_phi, cb.n_pairs,
                                       equal_var=False)
        assert r["welch_t"] == pytest.approx(ref.statistic, rel=1e-9)
        assert r["welch_p"] == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)
    nf = df.attrs["noise_floor"]
    vals = [co["solo"].all.mean_abs_phi, co["solo-seed1"].all.mean_abs_phi]
    assert nf["runs"] == ["solo", "solo-seed1"]
    assert nf["mean"] == pytest.approx(np.mean(vals)) and nf["std"] == pytest.approx(np.std(vals, ddof=1))
    pct = np.array([0.0, 100 * (vals[1] / vals[0] - 1)])
    half = sps.t.ppf(0.975, 1) * pct.std(ddof=1) * np.sqrt(1.5)
    assert nf["pi_high_pct"] == pytest.approx(pct.mean() + half)
    assert nf["pi_low_pct"] == pytest.approx(pct.mean() - half)


def _hand_table():
    return pd.DataFrame({
        "run": ["solo", "joint-l0.1-s1", "joint-l0.3-s1", "joint-l1-s1", "control", "ortho-g0.1"],
        "arm": ["solo", "joint", "joint", "joint", "control", "ortho"],
        "lambda2": [np.nan, 0.1, 0.3, 1.0, 0.0, np.nan],
        "sigma2": [np.nan, 1.0, 1.0, 1.0, np.nan, np.nan],
        "seed": [0] * 6,
        "mean_abs_phi": [1.0, 0.98, 0.95, 0.90, 0.99, 0.5],
        "delta_phi_pct": [0.0, -2.0, -5.0, -10.0, -1.0, -50.0],
        "delta_phi_half1_pct": [0.0, -2.0, -5.0, -10.0, -1.0, -50.0],
        "delta_phi_half2_pct": [0.0, -1.0, -4.0, -9.0, -1.0, -40.0],
        "delta_l2_pct": [0.0, 1.0, 4.0, 9.0, 0.0, 0.0],
    })


def test_selection_rule():
    t = _hand_table()
    sel = select.select_configuration(t, max_dl2_pct=5.0)
    assert sel.selected == "joint-l0.3-s1" and sel.n_candidates == 2  # ortho/control never selected
    assert sel.delta_phi_heldout_pct == -4.0  # reported on the held-out half
    t2 = t.assign(delta_phi_half1_pct=[0.0, -6.0, -5.0, -10.0, -1.0, -50.0])
    assert select.select_configuration(t2, 5.0).selected == "joint-l0.1-s1"  # chosen on the first half only
    seeded = t.assign(seed=[0, 1, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="seed-0"):
        select.select_configuration(seeded)
    assert select.select_configuration(t, max_dl2_pct=10.0).selected == "joint-l1-s1"
    assert select.select_configuration(t, max_dl2_pct=1.0).selected == "joint-l0.1-s1"
    fb = select.select_configuration(t, max_dl2_pct=0.5)
    assert fb.selected == "joint-l0.1-s1" and fb.rule.startswith("fallback")
    with pytest.raises(ValueError, match="no seed-0 joint"):
        select.select_configuration(t[t["arm"] != "joint"])


def test_selection_is_a_stage_output_and_tables_are_only_a_copy(env, tmp_path):
    p, _ = env
    sel = select.ensure_selection(p, progress=False)
    assert sel.selected == select.selected_joint(p) and sel.selected.startswith("joint-")
    assert cache.is_fresh("selection", profile=p)
    copy = select.publish_selection(p, tmp_path)
    assert select.Selection.from_json(read_json(copy)) == sel
    copy.write_text('{"selected": "joint-l9-s9"}')  # a stale published table is never read back
    assert select.selected_joint(p) == sel.selected


def test_reconstruction_subset_keeps_full_range_firing_stats(env):
    p, _ = env
    full = recon.ensure_reconstruction(R(p, "solo"), progress=False)
    sub_p = p.replace(recon_tokens=100)
    sub = recon.ensure_reconstruction(R(sub_p, "solo"), progress=False)
    assert full.thresholded.n_tokens == 512 and sub.thresholded.n_tokens == 100 and sub.n_tokens_evaluated == 100
    assert sub.mse != full.mse  # errors on the subset only
    # dead latents and firing counts always cover the whole co-occurrence range
    assert sub.n_dead == full.n_dead == cooccur.ensure_cooccurrence(R(p, "solo"), progress=False).all.n_dead
    assert sub.firing_n_tokens == full.firing_n_tokens == 512
    np.testing.assert_array_equal(sub.firing_counts, full.firing_counts)
    np.testing.assert_array_equal(sub.rate_hist_counts, full.rate_hist_counts)
    assert sub.firing_rate_quantiles == pytest.approx(full.firing_rate_quantiles)
    # the BatchTopK metrics cover the same tokens as the thresholded ones
    assert sub.batchtopk.n_tokens == 100 and full.batchtopk.n_tokens == 512


def test_profile_evaluation_settings_are_validated():
    with pytest.raises(ValueError, match="calibration_mode"):
        get_profile("smoke", calibration_mode="fast")
    with pytest.raises(ValueError, match="recon_tokens"):
        get_profile("smoke", recon_tokens=0)
    assert get_profile("default").eval.calibration_mode == "hist"


def test_new_calibration_invalidates_downstream_stages(env):
    p, calls = env
    co_exact = cooccur.ensure_cooccurrence(R(p.replace(calibration_mode="exact"), "solo"), progress=False)
    n = calls["n"]
    co_hist = cooccur.ensure_cooccurrence(R(p.replace(calibration_mode="hist"), "solo"), progress=False)
    assert calls["n"] > n  # thresholds changed -> φ recomputed, not served from the exact-mode cache
    assert co_exact.all.n_pairs == co_hist.all.n_pairs


def _edited(monkeypatch, module: str, new_source: str):
    original = cache.module_source

    def fake(name):
        return new_source if name == module else original(name)

    monkeypatch.setattr(cache, "module_source", fake)
    cache.clear_digests()


def test_a_code_edit_invalidates_that_stage_and_its_dependents_only(env, monkeypatch):
    p, _ = env
    run = R(p, "solo")
    select.grid_table(p, NAMES, with_ce=False, progress=False)
    select.ensure_selection(p, progress=False)
    stages = ("calibration", "cooccurrence", "reconstruction")
    assert all(cache.is_fresh(s, run) for s in stages) and cache.is_fresh("selection", profile=p)
    src = cache.module_source("paperlib.metrics.reconstruction")
    with monkeypatch.context() as m:
        _edited(m, "paperlib.metrics.reconstruction", src + "\n\nEDITED = 1\n")
        assert cache.is_fresh("calibration", run) and cache.is_fresh("cooccurrence", run)
        assert train.is_trained(run)
        assert not cache.is_fresh("reconstruction", run)
        assert not cache.is_fresh("selection", profile=p)  # depends on reconstruction
    cache.clear_digests()
    assert all(cache.is_fresh(s, run) for s in stages)


def test_a_docstring_edit_invalidates_nothing(env, monkeypatch):
    p, _ = env
    run = R(p, "solo")
    cooccur.ensure_cooccurrence(run, progress=False)
    recon.ensure_reconstruction(run, progress=False)
    src = cache.module_source("paperlib.metrics.calibration")
    edited = src.replace('"""', '"""Edited. ', 1)
    assert edited != src
    with monkeypatch.context() as m:
        _edited(m, "paperlib.metrics.calibration", edited + "\n# a comment\n")
        assert [s for s in ("calibration", "cooccurrence", "reconstruction") if not cache.is_fresh(s, run)] == []
        assert train.is_trained(run)
    cache.clear_digests()


def test_a_trainer_edit_means_retraining(env, monkeypatch):
    p, _ = env
    assert train.is_trained(R(p, "solo"))
    src = cache.module_source("paperlib.sae.trainer")
    with monkeypatch.context() as m:
        _edited(m, "paperlib.sae.trainer", src + "\n\nEDITED = 1\n")
        assert not train.is_trained(Run.of(p, "solo"))  # a new Run: its key is computed afresh
    cache.clear_digests()


def test_an_edit_of_the_kernels_c_source_means_retraining(env, monkeypatch):
    p, _ = env
    assert cache.native_sources(__import__("ast").parse(cache.module_source("paperlib.sae.kernels"))) == (
        "csrc/fused.c", "csrc/fused_impl.h")
    assert train.is_trained(R(p, "solo"))
    real = cache.native_source
    with monkeypatch.context() as m:
        m.setattr(cache, "native_source", lambda mod, rel: real(mod, rel) + (b"/* edited */" if
                                                                              rel.endswith(".h") else b""))
        cache.clear_digests()
        assert not train.is_trained(Run.of(p, "solo"))
    cache.clear_digests()
    assert train.is_trained(Run.of(p, "solo"))


def test_stage_keys_need_no_computation_and_list_stale_work(env):
    p, calls = env
    n = calls["n"]
    runs = [R(p, x) for x in NAMES]
    stale = cache.stale_stages(runs, p)
    assert calls["n"] == n  # asking costs nothing
    assert stale["calibration"] == NAMES and stale["selection"] == [p.name]
    calibrate.ensure_calibration(runs[0], progress=False)
    assert cache.stale_stages(runs, p)["calibration"] == NAMES[1:]


def test_run_names_in_any_spelling_are_one_run(env):
    p, _ = env
    a, b = Run.of(p, "joint-l1-s0.5"), Run.of(p, "joint-l1.0-s0.50")
    assert a == b and a.dir == b.dir and a.key == b.key
    assert train.is_trained(b)
    assert a.weights_fingerprint() == b.weights_fingerprint()
