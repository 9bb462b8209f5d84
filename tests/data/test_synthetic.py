"""The synthetic data generator of the ground-truth benchmark (paperlib.data.synthetic)."""

import itertools

import numpy as np
import pytest

from paperlib.data.synthetic import SyntheticConfig, generate, tiny_config
from tests.helpers import small_synthetic_data


@pytest.fixture(scope="module")
def data():
    return small_synthetic_data()


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



def test_config_validation_and_tiny_config():
    with pytest.raises(ValueError, match="exceed n_features"):
        SyntheticConfig(n_features=10, n_groups=4, group_size=3)
    with pytest.raises(ValueError, match="pair_cosine"):
        SyntheticConfig(pair_cosine=1.0)
    with pytest.raises(ValueError, match="base_rate must be a probability"):
        SyntheticConfig(base_rate=1.5)
    assert tiny_config(seed=3).seed == 3 and tiny_config().n_features == 48
    cfg = SyntheticConfig(n_features=10, n_groups=2, group_size=2, n_similar_pairs=1, base_rate=0.1,
                          group_rate=0.5, group_member_prob=0.5)
    assert cfg.expected_l0 == pytest.approx(4 * 0.5 * 0.5 + 6 * 0.1)
    kinds = generate(cfg.replace(n_train=256, n_calibration=256, n_eval=256, d=8)).kinds
    assert list(kinds) == ["group"] * 4 + ["pair"] * 2 + ["independent"] * 4
