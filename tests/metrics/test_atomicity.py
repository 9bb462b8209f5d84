"""Decoder-geometry atomicity metrics against true directions, with brute-force references
(paperlib.metrics.atomicity)."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats as sps

from paperlib.data.synthetic import SyntheticConfig, generate
from paperlib.metrics.atomicity import (
    activation_atomicity,
    activation_summary,
    atomicity_metrics,
    blend_scores,
    recovery_metrics,
    spearman,
    spearman_ci,
    unit_rows,
)


@pytest.fixture(scope="module")
def data():
    return generate(SyntheticConfig(d=32, n_features=48, n_latents=48, n_train=512, n_calibration=512,
                                    n_eval=512, batch_size=256))


def test_metrics_on_true_directions(data):
    D = data.directions
    m = atomicity_metrics(D, D)
    assert m["mmcs_true"] == pytest.approx(1.0) and m["mmcs_latent"] == pytest.approx(1.0)
    assert m["recovered_frac"] == 1.0 and m["blend_frac"] == 0.0
    # permutation and positive scaling do not matter
    rng = np.random.default_rng(0)
    W = D[rng.permutation(len(D))] * rng.uniform(0.5, 2, size=(len(D), 1))
    assert atomicity_metrics(W, D)["recovered_frac"] == 1.0


def test_metrics_on_sums_of_pairs(data):
    D = data.directions
    rng = np.random.default_rng(1)
    idx = rng.permutation(len(D))
    W = D[idx[0::2]] + D[idx[1::2]]
    m = atomicity_metrics(W, D)
    assert m["blend_frac"] == 1.0
    assert m["recovered_frac"] == 0.0
    s = blend_scores(W, D)
    found = [frozenset(p) for p in zip(s["j1"], s["j2"], strict=True)]
    truth = [frozenset(p) for p in zip(idx[0::2], idx[1::2], strict=True)]
    # greedy (best single direction first) identifies the blended pair almost always
    assert np.mean([f == t for f, t in zip(found, truth, strict=True)]) >= 0.9
    # similar-pair blends: gain is exactly 1 - (1 + c) / 2 for the normalised sum of two unit rows at cosine c
    c = 0.6
    u = unit_rows(rng.normal(size=(2, 16)))
    v = u[1] - (u[1] @ u[0]) * u[0]
    pair = np.stack([u[0], c * u[0] + np.sqrt(1 - c * c) * v / np.linalg.norm(v)])
    np.testing.assert_allclose(blend_scores(pair.sum(0, keepdims=True), pair)["gain"], 1 - (1 + c) / 2, atol=1e-9)


def test_blend_gain_brute_force():
    rng = np.random.default_rng(2)
    D = unit_rows(rng.normal(size=(7, 5)))
    W = rng.normal(size=(4, 5))
    s = blend_scores(W, D)
    Wu = unit_rows(W)
    for i, w in enumerate(Wu):
        j1 = int(np.argmax(D @ w))
        r1 = (D[j1] @ w) ** 2
        best = r1
        for j in range(len(D)):
            if j == j1:
                continue
            A = D[[j1, j]].T
            coef, *_ = np.linalg.lstsq(A, w, rcond=None)
            best = max(best, float(np.sum((A @ coef) ** 2)))
        assert s["gain"][i] == pytest.approx(best - r1, abs=1e-10)


def test_small_secondary_component_is_not_a_blend(data):
    D = data.directions
    a, b = data.config.n_features - 1, data.config.n_features - 2  # two independent features
    w_small = D[a] + 0.1 * D[b]
    w_big = D[a] + 0.6 * D[b]
    m = atomicity_metrics(np.stack([w_small, w_big]), D)
    assert m["blend_frac"] == 0.5


def test_live_mask_and_bad_input(data):
    D = data.directions
    W = np.vstack([D, np.zeros((3, D.shape[1]))])
    live = np.r_[np.ones(len(D), bool), np.zeros(3, bool)]
    assert atomicity_metrics(W, D, live=live)["mmcs_latent"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="dimension mismatch"):
        atomicity_metrics(W[:, :-1], D)
    with pytest.raises(ValueError, match="2-D"):
        unit_rows(np.zeros(3))
    dead = atomicity_metrics(W, D, live=np.zeros(len(W), bool))
    assert dead["recovered_frac"] == 0.0 and np.isnan(dead["mmcs_true"]) and np.isnan(dead["blend_frac"])


def test_recovery_metrics_against_brute_force():
    rng = np.random.default_rng(5)
    D = unit_rows(rng.normal(size=(6, 4)))
    W = np.vstack([D[0] * 3, D[1] + 0.2 * D[2], rng.normal(size=(3, 4))])
    r = recovery_metrics(W, D, recover_threshold=0.95)
    cos = np.array([[w @ d / np.linalg.norm(w) for d in D] for w in W])
    np.testing.assert_allclose(r["max_cos_true"], cos.max(axis=0), atol=1e-12)
    assert r["mmcs_true"] == pytest.approx(cos.max(axis=0).mean())
    assert r["mmcs_latent"] == pytest.approx(cos.max(axis=1).mean())
    assert r["recovered_frac"] == pytest.approx((cos.max(axis=0) >= 0.95).mean())


def _brute_latent(L: np.ndarray, T: np.ndarray, lat: int) -> tuple:
    """Direct loops: best feature by F1, its precision/recall/F1, and the best 'extra' share."""
    fires = L[:, lat]
    n = fires.sum()
    if n == 0:
        return -1, np.nan, np.nan, np.nan, np.nan
    best, best_f1 = -1, -1.0
    for j in range(T.shape[1]):
        inter = (fires & T[:, j]).sum()
        f1 = 2 * inter / (n + T[:, j].sum())
        if f1 > best_f1:
            best, best_f1 = j, f1
    inter = (fires & T[:, best]).sum()
    extra = max(((fires & T[:, j] & ~T[:, best]).sum() for j in range(T.shape[1]) if j != best), default=0)
    return best, inter / n, inter / T[:, best].sum(), best_f1, extra / n


def test_activation_atomicity_brute_force():
    rng = np.random.default_rng(3)
    T = rng.random((400, 7)) < 0.15
    L = np.c_[T[:, 0], T[:, 1] | T[:, 2], T[:, 3] & ~T[:, 4], np.zeros(400, bool), rng.random((400, 4)) < 0.1]
    a = activation_atomicity(sp.csr_matrix(L), T.astype(np.float32) * 0.7)
    for i in range(L.shape[1]):
        best, prec, rec, f1, multi = _brute_latent(L, T, i)
        assert a.best[i] == best and a.n_fired[i] == L[:, i].sum()
        np.testing.assert_allclose([a.precision[i], a.recall[i], a.f1[i], a.multi_share[i]],
                                   [prec, rec, f1, multi], atol=1e-12, equal_nan=True)
    # an atomic latent; an OR of two features (about half its firings need the second); a dead latent
    assert (a.precision[0], a.recall[0], a.multi_share[0]) == (1.0, 1.0, 0.0)
    assert a.second[1] in (1, 2) and a.multi_share[1] > 0.3
    assert a.best[3] == -1 and np.isnan(a.f1[3])
    s = activation_summary(a)
    live = L.sum(0) > 0
    assert s["act_f1"] == pytest.approx(np.nanmean(a.f1[live]))
    assert s["multi_frac"] == pytest.approx((a.multi_share[live] >= 0.1).mean())
    assert s["true_covered_frac"] == pytest.approx(len(set(a.best[live])) / 7)


def test_activation_atomicity_bad_input():
    T = np.zeros((10, 3), bool)
    with pytest.raises(ValueError, match="same tokens"):
        activation_atomicity(np.zeros((9, 2), bool), T)
    with pytest.raises(ValueError, match="at least 2 true features"):
        activation_atomicity(np.zeros((10, 2), bool), T[:, :1])
    with pytest.raises(ValueError, match="fired_latents must be finite"):
        activation_atomicity(np.full((10, 2), np.nan), T)


def test_spearman_matches_scipy_and_ci_is_seeded():
    rng = np.random.default_rng(4)
    x = rng.normal(size=25)
    y = np.round(x + rng.normal(size=25), 1)  # ties
    assert spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    r = spearman_ci(x, y, n_resamples=500, seed=1)
    assert r["rho"] == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    assert r["p"] == pytest.approx(sps.spearmanr(x, y).pvalue)
    assert r["ci_low"] < r["rho"] < r["ci_high"] and r["n"] == 25
    assert spearman_ci(x, y, n_resamples=500, seed=1) == r
    # percentile CI equals scipy's on the same resamples
    ref = sps.bootstrap((x, y), lambda a, b: sps.spearmanr(a, b).statistic, paired=True, vectorized=False,
                        n_resamples=500, method="percentile", rng=np.random.default_rng(1))
    ours = sps.bootstrap((x, y), lambda a, b, axis=-1: np.array([spearman(u, v) for u, v in zip(a, b, strict=True)]),
                         paired=True, vectorized=True, n_resamples=500, method="percentile",
                         rng=np.random.default_rng(1))
    np.testing.assert_allclose(ours.confidence_interval, ref.confidence_interval, atol=1e-12)


def test_spearman_errors():
    with pytest.raises(ValueError, match="x must be finite"):
        spearman([1, np.nan, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="constant"):
        spearman_ci([1, 1, 1, 1], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="n_resamples"):
        spearman_ci([1, 2, 3, 4], [1, 2, 3, 4], n_resamples=10)
