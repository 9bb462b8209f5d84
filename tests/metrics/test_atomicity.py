"""Decoder-geometry atomicity metrics against true directions, with brute-force references
(paperlib.metrics.atomicity)."""

import numpy as np
import pytest

from paperlib.metrics.atomicity import atomicity_metrics, blend_scores, recovery_metrics, unit_rows
from tests.helpers import small_synthetic_data


@pytest.fixture(scope="module")
def data():
    return small_synthetic_data()


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
    # similar-pair blends: gain is exactly 1 - (1 + c) / 2 for the normalised sum
    c = data.config.pair_cosine
    Wp = D[data.pairs[:, 0]] + D[data.pairs[:, 1]]
    np.testing.assert_allclose(blend_scores(Wp, D)["gain"], 1 - (1 + c) / 2, atol=1e-9)


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
    a, b = data.groups[0, 0], data.groups[1, 0]  # (nearly) unrelated random directions
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
