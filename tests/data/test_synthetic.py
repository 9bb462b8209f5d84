"""The synthetic data generator of the ground-truth benchmark (paperlib.data.synthetic): its declared
structure (parents, children, shared parts) is recoverable from the generated data."""

import numpy as np
import pytest

from paperlib.data.synthetic import SyntheticConfig, generate, tiny_config


@pytest.fixture(scope="module")
def data():
    return generate(SyntheticConfig(n_train=2048, n_calibration=1024, n_eval=16_384, batch_size=256))


def test_deterministic_and_seed_dependent():
    cfg = tiny_config()
    a, b = generate(cfg), generate(cfg)
    for name in ("directions", "parts", "part_sets", "train", "calibration", "eval"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.codes_eval != b.codes_eval).nnz == 0
    assert not np.allclose(generate(cfg.replace(seed=1)).directions, a.directions)


def test_directions_unit_and_orthogonal_to_ones(data):
    for M in (data.directions, data.parts, data.own):
        np.testing.assert_allclose(np.linalg.norm(M, axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(M.sum(axis=1), 0.0, atol=1e-10)


def test_shared_parts_are_recoverable_from_the_directions(data):
    cfg = data.config
    # D_i = a·own_i + b·unit(Σ parts): least squares on [own_i, parts] recovers the declared parts
    for i in range(cfg.n_features):
        A = np.c_[data.own[i], data.parts.T]
        coef, *_ = np.linalg.lstsq(A, data.directions[i], rcond=None)
        np.testing.assert_allclose(A @ coef, data.directions[i], atol=1e-9)
        found = np.sort(np.argsort(-np.abs(coef[1:]))[: cfg.parts_per_feature])
        np.testing.assert_array_equal(found, data.part_sets[i])
        unused = np.setdiff1d(np.arange(cfg.n_parts), data.part_sets[i])
        assert np.abs(coef[1:][unused]).max() < 1e-8
    # every part is shared by several features
    assert np.bincount(data.part_sets.ravel(), minlength=cfg.n_parts).min() >= 2


def test_hierarchies_recoverable_from_firing(data):
    cfg = data.config
    F = (data.codes_eval != 0).toarray()
    assert list(data.kinds[: cfg.n_hierarchies]) == ["parent"] * cfg.n_hierarchies
    for p, kids in zip(data.parents, data.children, strict=True):
        on = F[:, p]
        assert on.mean() == pytest.approx(cfg.parent_rate, rel=0.15)
        for c in kids:
            assert data.parent_of[c] == p
            assert F[F[:, c], p].all()  # a child never fires without its parent
        n_kids = F[:, kids].sum(axis=1)
        assert n_kids.max() <= 1  # at most one child per token
        assert n_kids[on].mean() == pytest.approx(cfg.child_prob, abs=0.06)
    # recover the hierarchy blindly: j is a child of i iff P(i | j) = 1 and i fires more often
    rate = F.mean(axis=0)
    N11 = F.T.astype(np.int64) @ F.astype(np.int64)
    implied = (N11 == np.diag(N11)[None, :]) & (rate[:, None] > rate[None, :]) & (np.diag(N11)[None, :] > 0)
    np.fill_diagonal(implied, False)
    found = {(int(i), int(j)) for i, j in zip(*np.nonzero(implied), strict=True)}
    truth = {(int(p), int(c)) for p, kids in zip(data.parents, data.children, strict=True) for c in kids}
    assert found == truth


def test_independent_rates_and_l0(data):
    cfg = data.config
    F = (data.codes_eval != 0).toarray()
    ind = data.kinds == "independent"
    assert F[:, ind].mean() == pytest.approx(cfg.base_rate, rel=0.05)
    assert F.sum(1).mean() == pytest.approx(cfg.expected_l0, rel=0.03)
    resid = data.eval - np.asarray(data.codes_eval @ data.directions)
    assert np.std(resid) == pytest.approx(cfg.noise_std * np.sqrt(1 - 1 / cfg.d), rel=0.05)


@pytest.mark.parametrize("bad, match", [
    (dict(n_features=10, n_hierarchies=4, n_children=3), "exceed n_features"),
    (dict(parts_per_feature=9, n_parts=4), "parts_per_feature"),
    (dict(part_share=1.0), "part_share"),
    (dict(base_rate=1.5), "base_rate must be a probability"),
    (dict(k=0), "k must be a positive integer"),
    (dict(k=100, n_latents=64), "k=100 must be <= n_latents"),
    (dict(lr=0.0), "lr and train_epochs"),
])
def test_config_validation_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        SyntheticConfig(**bad)


def test_expected_l0_closed_form():
    cfg = SyntheticConfig(n_features=10, n_hierarchies=2, n_children=2, parent_rate=0.5, child_prob=0.5,
                          base_rate=0.1, n_parts=2, parts_per_feature=1, n_latents=10, n_meta=2)
    assert cfg.expected_l0 == pytest.approx(2 * 0.5 * 1.5 + 4 * 0.1)
    kinds = generate(cfg.replace(n_train=512, n_calibration=512, n_eval=512, d=8, batch_size=256)).kinds
    assert list(kinds) == ["parent"] * 2 + ["child"] * 4 + ["independent"] * 4
