import itertools

import numpy as np
import pytest

from paperlib.stages import synthetic as syn
from paperlib.stages.synthetic import SyntheticConfig, atomicity_metrics, blend_scores, generate, tiny_config


@pytest.fixture(scope="module")
def data():
    cfg = SyntheticConfig(d=32, n_features=64, n_groups=6, group_size=3, n_similar_pairs=6, n_train=8192,
                          n_calibration=2048, n_eval=8192, batch_size=512, base_rate=0.03, group_rate=0.1)
    return generate(cfg)


def test_deterministic_and_seed_dependent(data):
    again = generate(data.config)
    for name in ("directions", "train", "calibration", "eval"):
        np.testing.assert_array_equal(getattr(data, name), getattr(again, name))
    assert (data.codes_eval != again.codes_eval).nnz == 0
    other = generate(data.config.replace(seed=1))
    assert not np.allclose(other.directions, data.directions)


def test_directions_unit_mean_zero_and_pair_cosine(data):
    D = data.directions
    np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(D.sum(axis=1), 0.0, atol=1e-12)  # orthogonal to the ones vector
    for a, b in data.pairs:
        assert D[a] @ D[b] == pytest.approx(data.config.pair_cosine, abs=1e-12)
    # disjoint index sets
    assert len(set(data.groups.ravel()) & set(data.pairs.ravel())) == 0


def test_activations_are_codes_times_directions(data):
    x_clean = np.asarray(data.codes_eval @ data.directions)
    resid = data.eval - x_clean
    assert np.std(resid) == pytest.approx(data.config.noise_std * np.sqrt(1 - 1 / data.config.d), rel=0.05)


def _phi(a, b):
    a, b = a.astype(float), b.astype(float)
    return np.corrcoef(a, b)[0, 1]


def test_declared_cofiring_structure(data):
    cfg = data.config
    F = (data.codes_eval != 0).toarray()
    # firing rates
    grouped = data.groups.ravel()
    rate_g = F[:, grouped].mean()
    assert rate_g == pytest.approx(cfg.group_rate * cfg.group_member_prob, rel=0.15)
    other = np.setdiff1d(np.arange(cfg.n_features), grouped)
    assert F[:, other].mean() == pytest.approx(cfg.base_rate, rel=0.1)
    assert F.sum(1).mean() == pytest.approx(cfg.expected_l0, rel=0.05)
    # group members co-fire strongly; closed form φ for members of one group
    p_on, q = cfg.group_rate, cfg.group_member_prob
    p1, p11 = p_on * q, p_on * q * q
    phi_expected = (p11 - p1 * p1) / (p1 * (1 - p1))
    within = [_phi(F[:, a], F[:, b]) for g in data.groups for a, b in itertools.combinations(g, 2)]
    assert np.mean(within) == pytest.approx(phi_expected, abs=0.05)
    # features in different groups / independent features are uncorrelated
    across = [_phi(F[:, data.groups[0, 0]], F[:, data.groups[1, 0]]), _phi(F[:, other[0]], F[:, other[1]])]
    assert max(abs(v) for v in across) < 0.06
    # similar pairs fire independently
    a, b = data.pairs[0]
    assert abs(_phi(F[:, a], F[:, b])) < 0.06


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
    D = syn.unit_rows(rng.normal(size=(7, 5)))
    W = rng.normal(size=(4, 5))
    s = blend_scores(W, D)
    Wu = syn.unit_rows(W)
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
    with pytest.raises(ValueError, match="exceed n_features"):
        SyntheticConfig(n_features=10, n_groups=4, group_size=3)


def test_run_benchmark_tiny(tmp_path):
    cfg = tiny_config()
    df = syn.run_benchmark(cfg, arms=("solo", "joint"), out_dir=tmp_path, progress=False)
    assert list(df["arm"]) == ["solo", "joint"]
    for col in ("mmcs_true", "recovered_frac", "blend_frac", "mean_abs_phi", "fvu", "true_mean_abs_phi"):
        assert df[col].notna().all()
    assert ((df["blend_frac"] >= 0) & (df["blend_frac"] <= 1)).all()
    # a finished run is reused
    df2 = syn.run_benchmark(cfg, arms=("solo",), out_dir=tmp_path, progress=False)
    assert df2["mmcs_true"].iloc[0] == df["mmcs_true"].iloc[0]
