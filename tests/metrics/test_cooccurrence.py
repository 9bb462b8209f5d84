
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from paperlib.metrics import cooccurrence as co
from tests.helpers import brute_phi


def _random_fired(T=300, n=12, seed=0):
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.01, 0.4, size=n)
    F = rng.random((T, n)) < rates
    F[:, 0] = False  # dead
    F[:, 1] = True  # always on
    F[:5, 2] = True  # rare
    F[5:, 2] = False
    return F


def _pairs(ph, alive=None):
    n = ph.shape[0]
    vals = []
    for i in range(n):
        for j in range(i + 1, n):
            if alive is None or (alive[i] and alive[j]):
                vals.append(ph[i, j])
    return np.array(vals)


def test_counts_and_phi_against_brute_force():
    F = _random_fired()
    N1, N11, ph = brute_phi(F)
    c = co.count(F)
    assert c.T == F.shape[0]
    assert c.N1.dtype == np.int64 and c.N11.dtype == np.int64
    np.testing.assert_array_equal(c.N1, N1)
    np.testing.assert_array_equal(c.N11, N11)
    np.testing.assert_allclose(co.phi(c), ph, rtol=1e-12, atol=1e-12)
    dead, always = co.degenerate_features(c.T, c.N1)
    assert dead.sum() == 1 and always.sum() == 1
    assert np.all(co.phi(c)[0] == 0) and np.all(co.phi(c)[:, 1] == 0)


def test_input_types_agree():
    F = _random_fired(seed=1)
    ref = co.count(F)
    for inp in (F.astype(np.uint8), F.astype(np.float32), sp.csr_matrix(F), sp.csc_matrix(F.astype(np.int8)),
                sp.coo_matrix(F), torch.from_numpy(F), torch.from_numpy(F.astype(np.float32)).to_sparse()):
        c = co.count(inp)
        np.testing.assert_array_equal(c.N1, ref.N1)
        np.testing.assert_array_equal(c.N11, ref.N11)
    c = co.count_dense_torch(torch.from_numpy(F), chunk_tokens=64)
    np.testing.assert_array_equal(c.N11, ref.N11)
    c = co.count_dense_torch(torch.from_numpy(F), chunk_tokens=10_000, dtype=torch.bfloat16)
    np.testing.assert_array_equal(c.N11, ref.N11)


def test_small_int_dtype_does_not_overflow():
    # 300 co-firings would overflow int8 / saturate bool if the product kept the input dtype
    F = np.ones((300, 3), dtype=np.int8)
    c = co.count(sp.csr_matrix(F))
    assert c.N11[0, 1] == 300


def test_chunked_accumulation_equals_one_shot():
    F = _random_fired(T=500, seed=2)
    one = co.count(F)
    parts = co.count(F[:123]) + co.count(F[123:400]) + co.count(F[400:])
    assert parts.T == one.T
    np.testing.assert_array_equal(parts.N11, one.N11)
    np.testing.assert_array_equal(sum([co.count(F[:250]), co.count(F[250:])]).N1, one.N1)
    acc = co.SparseFiring(F.shape[1])
    for s in range(0, 500, 77):
        acc.add(F[s:s + 77])
    np.testing.assert_array_equal(acc.counts().N11, one.N11)
    np.testing.assert_array_equal(acc.n11_block(3, 7, col_start=3), one.N11[3:7, 3:])
    with pytest.raises(ValueError):
        co.count(F[:10]) + co.count(F[:10, :5])


def test_within_stats_full_and_blockwise_matchbrute_phi():
    F = _random_fired(T=400, n=15, seed=3)
    _, _, ph = brute_phi(F)
    v = _pairs(ph)
    c = co.count(F)
    for ws in (co.within_stats(c), co.within_stats(c, block_rows=4),
               co.within_stats_blockwise(F, block_rows=3, progress=False),
               co.within_stats_blockwise(sp.csr_matrix(F), block_rows=100, progress=False)):
        assert ws.n_pairs == len(v) == 15 * 14 // 2
        assert ws.mean_abs_phi == pytest.approx(np.abs(v).mean(), rel=1e-12)
        assert ws.var_abs_phi == pytest.approx(np.abs(v).var(ddof=1), rel=1e-10)
        assert ws.std_abs_phi == pytest.approx(np.abs(v).std(ddof=1), rel=1e-10)
        assert ws.sum_abs == pytest.approx(np.abs(v).sum(), rel=1e-12)
        assert ws.sumsq == pytest.approx(np.square(v).sum(), rel=1e-12)
        assert ws.frac_negative == pytest.approx((v < 0).mean())
        assert ws.max_phi == pytest.approx(v.max()) and ws.min_phi == pytest.approx(v.min())
        assert abs(ws.median_phi - np.median(v)) <= ws.median_err
        assert ws.hist_counts.sum() == len(v)
        assert ws.n_dead == 1 and ws.n_always_on == 1
    alive = (c.N1 > 0) & (c.N1 < c.T)
    va = _pairs(ph, alive)
    ws = co.within_stats_blockwise(F, block_rows=4, exclude_degenerate=True, progress=False)
    assert ws.n_pairs == len(va)
    assert ws.mean_abs_phi == pytest.approx(np.abs(va).mean(), rel=1e-12)
    edges, counts = ws.positive_tail(0.0)
    assert counts.sum() == (va >= 0).sum()
    e2, c2 = ws.abs_hist()
    assert c2.sum() == len(va) and e2[0] == 0.0


def test_cross_phi_topk_againstbrute_phi():
    rng = np.random.default_rng(5)
    T = 400
    A = rng.random((T, 9)) < rng.uniform(0.05, 0.5, 9)
    B = rng.random((T, 7)) < rng.uniform(0.05, 0.5, 7)
    B[:, 0] = A[:, 3] | A[:, 4]  # a "merged" feature
    FA = np.concatenate([A, B], axis=1)
    _, _, ph = brute_phi(FA)
    cross = ph[:9, 9:]  # [n_a, n_b]
    k = 3
    for br in (2, 4, 100):
        r = co.cross_phi_topk(A, sp.csr_matrix(B), k, block_rows=br, progress=False)
        np.testing.assert_allclose(r.a_phi, -np.sort(-cross, axis=1)[:, :k], atol=1e-12)
        np.testing.assert_allclose(r.b_phi, -np.sort(-cross.T, axis=1)[:, :k], atol=1e-12)
        np.testing.assert_allclose(np.take_along_axis(cross, r.a_idx, 1), r.a_phi, atol=1e-12)
        np.testing.assert_allclose(np.take_along_axis(cross.T, r.b_idx, 1), r.b_phi, atol=1e-12)
    assert set(r.b_idx[0, :2]) == {3, 4}


def test_bad_input():
    with pytest.raises(ValueError):
        co.count(np.zeros(5, dtype=bool))
    with pytest.raises(ValueError):
        co.cross_phi_topk(np.zeros((3, 2)), np.zeros((4, 2)), 1, progress=False)


class _FakeSAE:
    def __init__(self, W):
        self.W = torch.as_tensor(W, dtype=torch.float32)

    def encode(self, x, thresholds=None):
        pre = torch.relu(x @ self.W)
        return pre * (pre > thresholds)


def test_firing_from_sae():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(4, 6))
    acts = rng.normal(size=(50, 4)).astype(np.float16)
    theta = np.full(6, 0.5, dtype=np.float32)
    F = co.firing_from_sae(_FakeSAE(W), acts, theta, batch_size=7, progress=False)
    pre = np.maximum(acts.astype(np.float32) @ W.astype(np.float32), 0)
    np.testing.assert_array_equal(F.toarray(), pre > 0.5)
    assert sp.isspmatrix_csr(F) or isinstance(F, sp.csr_array)


def test_firing_csr_is_canonical_and_handles_empty_rows():
    rng = np.random.default_rng(5)
    W = rng.normal(size=(4, 9))
    acts = rng.normal(size=(40, 4)).astype(np.float32)
    acts[[0, 13, 39]] = 0.0  # rows that fire nothing
    theta = np.full(9, 0.8, dtype=np.float32)
    F = co.firing_from_sae(_FakeSAE(W), acts, theta, batch_size=6, progress=False)
    ref = sp.csr_matrix(np.maximum(acts @ W.astype(np.float32), 0) > 0.8)
    assert F.has_sorted_indices and F.dtype == bool and F.shape == (40, 9)
    np.testing.assert_array_equal(F.indptr, ref.indptr)
    np.testing.assert_array_equal(F.indices, ref.indices)
