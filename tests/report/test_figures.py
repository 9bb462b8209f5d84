from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest

from paperlib.metrics.cooccurrence import WithinStats
from paperlib.report import figures

matplotlib.use("Agg")
EDGES = np.linspace(-1, 1, 2001)


def _stats(phi: np.ndarray, n_features: int, n_dead: int = 0) -> WithinStats:
    counts, _ = np.histogram(phi, EDGES)
    a = np.abs(phi)
    return WithinStats(T=1000, n_features=n_features, n_pairs=len(phi), sum_abs=float(a.sum()),
                       sumsq=float((phi ** 2).sum()), mean_abs_phi=float(a.mean()), var_abs_phi=float(a.var()),
                       std_abs_phi=float(a.std()), n_negative=int((phi < 0).sum()),
                       frac_negative=float((phi < 0).mean()), median_phi=float(np.median(phi)), median_err=1e-3,
                       max_phi=float(phi.max()), min_phi=float(phi.min()), mean_phi=float(phi.mean()), n_dead=n_dead,
                       n_always_on=0, exclude_degenerate=False, hist_edges=EDGES, hist_counts=counts)


def _bars(ax):
    return np.array([p.get_height() for p in ax.patches])


def test_arm_colours_are_one_per_arm():
    c = figures.ARM_COLORS
    assert len(set(c.values())) == len(c)
    assert figures.arm_color("joint-l0.3-s1-seed2") == c["joint"] == figures.arm_color("joint")
    assert figures.arm_color("solo-seed3") == c["solo"] and figures.arm_color("randcritic-l0.3-s1") == c["randcritic"]
    assert figures.arm_color("ortho-g0.1") == c["ortho"] and figures.arm_color("???") == figures.OTHER_COLOR
    shades = figures.lambda_shades([1.0, 0.1, 0.3])
    assert list(shades) == [0.1, 0.3, 1.0] and len(set(shades.values())) == 3
    assert figures.lambda_shades([0.3]) == {0.3: c["joint"]}


def test_caption_names_profile_model_layer():
    cap = figures.figure_caption("smoke")
    assert "smoke" in cap and "smollm2-135m" in cap and "layer 3" in cap


def test_fig1a_keeps_dead_pairs_out_of_the_difference():
    """The joint run has 40 extra dead latents (all their pairs at φ = 0) but the same alive pairs: the
    alive-pair difference is flat, and the dead pairs show up only in the pairs-by-kind panel."""
    g = np.random.default_rng(0)
    alive = np.clip(g.laplace(0, 0.02, 5000), -1, 1)
    s_alive, j_alive = _stats(alive, 100), _stats(alive, 100)
    s_all = _stats(np.concatenate([alive, np.zeros(300)]), 103, n_dead=3)
    j_all = _stats(np.concatenate([alive, np.zeros(4000)]), 140, n_dead=40)
    cap = figures.figure_caption("smoke")
    fig = figures.fig1a_phi_density(s_all, j_all, joint_label="joint-l0.3-s1", solo_alive=s_alive,
                                    joint_alive=j_alive, caption=cap)
    assert cap in fig._suptitle.get_text()
    dens, diff, tail, kinds, zoom = fig.axes
    assert np.allclose(_bars(diff), 0) and np.allclose(_bars(zoom), 0)
    assert "alive pairs" in diff.get_title() and tail.get_yscale() == "log"
    assert zoom.get_xlim()[0] == pytest.approx(0.1)
    heights = sorted(_bars(kinds))  # alive pairs per arm, then pairs with a dead/inactive latent per arm
    assert heights == sorted([5000, 5000, 300, 4000])
    # the old, unsplit call still works: there the extra dead latents make the spike at 0
    fig = figures.fig1a_phi_density(s_all, j_all)
    assert _bars(fig.axes[1]).max() > 1
    with pytest.raises(ValueError, match="both"):
        figures.fig1a_phi_density(s_all, j_all, solo_alive=s_alive)


def _recon(counts, T=10_000, l0=8.0):
    counts = np.asarray(counts)
    return SimpleNamespace(firing_counts=counts, firing_n_tokens=T, n_dead=int((counts == 0).sum()),
                           thresholded=SimpleNamespace(l0=l0))


def test_appb_counts_dead_latents_and_shows_only_occupied_decades():
    solo = _recon([0] * 3 + [10, 50, 100, 500, 1000])
    joint = _recon([0] * 12 + [20, 60, 120, 800])
    fig = figures.appb_firing_rates({"solo": solo, "joint-l0.3-s1": joint}, caption="profile x")
    dead_ax, ax = fig.axes
    assert sorted(_bars(dead_ax)) == [3, 12]  # dead latents drawn, per arm
    lo, hi = ax.get_xlim()
    assert lo >= np.log10(10 / 10_000) - 0.1 - 1e-9 and hi <= 0  # no empty decades down to 1e-8
    assert [p.get_facecolor()[:3] for p in dead_ax.patches] == [pytest.approx(figures.arm_color(a)) for a in
                                                                ("solo", "joint")]


def test_fig2_shows_delta_ci_p_in_arm_colours():
    pairs = pd.DataFrame({"fuzz_solo": [1 / 3, 1 / 3, -1 / 3, 1.0], "fuzz_joint": [1 / 3, -1 / 3, -1 / 3, 1 / 3]})
    summary = {"delta": -0.25, "ci_low": -0.6, "ci_high": 0.1, "p": 0.18, "n_pairs": 4}
    fig = figures.fig2_autointerp(pairs, summary, joint_label="joint-l0.3-s1", caption="profile x")
    hist, diff, delta = fig.axes
    assert "95% CI [-0.600, +0.100]" in delta.get_title() and "p = 0.18" in delta.get_title()
    colours = {tuple(np.round(p.get_facecolor()[:3], 6)) for p in hist.patches}
    assert colours == {tuple(np.round(figures.ARM_COLORS[a], 6)) for a in ("solo", "joint")}
    assert delta.get_xlim()[0] < -0.6 and delta.get_xlim()[1] > 0.1


def test_gemma_figure_uses_fig1b_axes():
    t = pd.DataFrame({"run": ["solo", "joint-l0.1-s1", "joint-l1-s1"], "lambda2": [np.nan, 0.1, 1.0],
                      "sigma2": [np.nan, 1.0, 1.0], "dphi_pct": [0, 0.4, 1.7], "dl2_pct": [0, 0.0, 3.7],
                      "dfuzz": [0, -0.08, -0.2], "dfuzz_se": [np.nan, 0.15, 0.16], "n_fuzz": [16, 16, 16],
                      "fuzz_mean": [0.29, 0.21, 0.08]})
    g = figures.gemma_grid_figure(t, caption="profile gemma-3-270m")
    grid = pd.DataFrame({"run": ["solo", "joint-l0.1-s1"], "arm": ["solo", "joint"], "seed": [0, 0],
                         "lambda2": [np.nan, 0.1], "sigma2": [np.nan, 1.0], "delta_l2_pct": [0, 1.0],
                         "delta_phi_pct": [0, -1.0]})
    b = figures.fig1b_grid_scatter(grid)
    assert (g.axes[0].get_xlabel(), g.axes[0].get_ylabel()) == (b.axes[0].get_xlabel(), b.axes[0].get_ylabel())
    assert g.axes[0].get_xlabel() == "ΔL2 vs solo (%)"
    pts = np.concatenate([c.get_offsets() for c in g.axes[0].collections if len(c.get_offsets())])
    assert [3.7, 1.7] in pts.tolist()  # (x = ΔL2, y = Δ mean |φ|)


def _gt_frame():
    rows = []
    for seed in (0, 1):
        for arm, label, lam in (("solo", "solo", np.nan), ("joint", "λ₂=0.3, σ²=1", 0.3), ("joint", "λ₂=1, σ²=1", 1.0)):
            rows.append(dict(seed=seed, arm=arm, label=label, lambda2=lam, mean_abs_phi_all=0.01 + 0.001 * seed,
                             act_f1=0.8, act_recall=0.7, multi_share=0.05, mmcs_true=0.9))
    return pd.DataFrame(rows)


def test_ground_truth_figure_one_point_per_sae_and_rho_in_titles():
    df = _gt_frame()
    corr = pd.DataFrame({"scope": ["all SAEs"], "phi_stat": ["mean_abs_phi_all"], "metric": ["act_f1"],
                         "rho": [-0.5], "ci_low": [-0.8], "ci_high": [-0.1]})
    fig = figures.ground_truth_figure(df, corr, caption="synthetic")
    assert len(fig.axes) == 4
    assert fig.axes[0].get_title() == "act_f1: ρ = -0.50 [-0.80, -0.10]" and fig.axes[1].get_title() == "act_recall"
    pts = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    assert len(pts) == len(df)
    assert all(ax.get_ylim() == (0.0, 1.02) for ax in fig.axes)  # fractions on their full axis, never truncated
    with pytest.raises(ValueError, match="lacks columns"):
        figures.ground_truth_figure(df.drop(columns=["act_f1"]))


def test_one_style_and_rc_untouched():
    before = dict(matplotlib.rcParams)
    fig = figures.ground_truth_figure(_gt_frame())
    assert any(line.get_visible() for line in fig.axes[0].get_ygridlines())  # seaborn whitegrid
    assert dict(matplotlib.rcParams) == before


def test_gemma_figure_without_fuzz_has_one_panel():
    t = pd.DataFrame({"run": ["solo", "joint-l0.3-s1"], "lambda2": [np.nan, 0.3], "sigma2": [np.nan, 1.0],
                      "dphi_pct": [0, -1.0], "dl2_pct": [0, 2.0], "dfuzz": [np.nan, np.nan],
                      "dfuzz_se": [np.nan, np.nan], "n_fuzz": [0, 0], "fuzz_mean": [np.nan, np.nan]})
    g = figures.gemma_grid_figure(t)
    assert len(g.axes) == 1 and g.axes[0].get_xlabel() == "ΔL2 vs solo (%)"


def test_every_package_figure_is_styled_and_names_what_it_shows():
    """The figures drawn outside this module (training curves, primary comparison, critic rows, matching cosines,
    case-study cross-φ) use the same style and carry the caption naming profile, model and layer."""
    from types import SimpleNamespace

    from paperlib.metrics.matching import MatchResult
    from paperlib.report.autointerp import cosine_figure
    from paperlib.report.case_studies import cross_phi_figure
    from paperlib.report.primary import critic_rows_figure, paired_seed_figure

    cap = figures.figure_caption("default")
    assert cap == "profile default · model smollm2-135m · layer 12 (resid_pre)"
    table = pd.DataFrame({"statistic": ["mean_abs_phi"], "comparison": ["joint vs solo"], "label": ["mean |φ|"],
                          "delta_pct": [-3.0], "ci_low_pct": [-3.5], "ci_high_pct": [-2.5], "mde_pct": [0.3], "K": [5]})
    rows = [{"step": s, "penalty_scale": 1.0, **{f"p_row_q{q:02d}": 0.1 * i for i, q in enumerate((5, 25, 50, 75, 95))}}
            for s in (1, 2, 3)]
    block = SimpleNamespace(rows=[1], cols=[2, 3], phi=np.array([[0.3, -0.1]]))
    figs = [paired_seed_figure(table, caption=cap), critic_rows_figure({"joint-l0.3-s1": rows}, caption=cap),
            cosine_figure(MatchResult(pd.DataFrame({"i": [0], "j": [0], "cosine": [0.9]}), 1, 1, None, None),
                          caption=cap),
            cross_phi_figure({"splitting": block, "merging": SimpleNamespace(rows=[], cols=[], phi=None)},
                             caption=cap)]
    for fig in figs:
        assert fig._suptitle is not None and fig._suptitle.get_text().endswith(cap)
        assert fig.axes[0].xaxis.label.get_size() == figures.STYLE["axes.labelsize"] != matplotlib.rcParams[
            "axes.labelsize"]  # drawn under the package style (seaborn paper context), not matplotlib's defaults
