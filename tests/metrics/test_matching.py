import itertools

import numpy as np
import pytest
import torch

from paperlib.metrics.matching import cosine_matrix, hungarian_match


def test_permuted_copy_recovers_permutation():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(50, 16))
    perm = rng.permutation(50)
    Wb = W[perm] * rng.uniform(0.5, 2.0, size=(50, 1))  # scale does not change cosine
    res = hungarian_match(W, torch.from_numpy(Wb), threshold=0.999)
    # B[j] = A[perm[j]] so A's feature perm[j] matches B's j
    inv = np.empty(50, int)
    inv[perm] = np.arange(50)
    assert res.n_pairs == 50
    np.testing.assert_array_equal(res.pairs["i"].to_numpy(), np.arange(50))
    np.testing.assert_array_equal(res.pairs["j"].to_numpy(), inv)
    np.testing.assert_allclose(res.pairs["cosine"].to_numpy(), 1.0, atol=1e-12)
    assert res.n_above_threshold == 50


def test_brute_force_and_alive_masks():
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(6, 4)), rng.normal(size=(7, 4))
    alive_a = np.array([1, 1, 0, 1, 1, 1], bool)
    alive_b = np.array([1, 0, 1, 1, 1, 1, 1], bool)
    res = hungarian_match(A, B, alive_a, alive_b, threshold=0.3)
    cos = cosine_matrix(A, B)
    ia, ib = np.flatnonzero(alive_a), np.flatnonzero(alive_b)
    perms = itertools.permutations(ib, len(ia))
    best = max(sum(cos[i, j] for i, j in zip(ia, p, strict=True)) for p in perms)
    assert res.pairs["cosine"].sum() == pytest.approx(best)
    assert set(res.pairs["i"]) == set(ia)
    assert not set(res.pairs["j"]) & {1}
    assert res.n_above_threshold == int((res.pairs["cosine"] >= 0.3).sum())
    assert len(res.above()) == res.n_above_threshold
    assert res.summary()["n_pairs"] == 5


def test_bad_input():
    with pytest.raises(ValueError):
        hungarian_match(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError):
        hungarian_match(np.ones((3, 4)), np.ones((3, 4)), alive_a=np.ones(2, bool))
