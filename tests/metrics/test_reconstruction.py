import numpy as np
import pytest
import torch

from paperlib.metrics.reconstruction import ReconAccumulator, reconstruction_metrics, reconstruction_metrics_pair


class _FakeSAE:
    """Minimal duck-typed SAE: per-token standardisation, ReLU encoder, linear decoder."""

    k = 3

    def __init__(self, d, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.randn(d, n, generator=g) / d**0.5
        self.W_dec = torch.randn(n, d, generator=g) / n**0.5
        self.b_dec = torch.randn(d, generator=g) * 0.1

    def normalize(self, x):
        m = x.mean(-1, keepdim=True)
        return (x - m) / (x.std(-1, keepdim=True) + 1e-5)

    def pre_acts(self, x):
        return torch.relu((self.normalize(x) - self.b_dec) @ self.W_enc)

    def encode(self, x, thresholds=None):
        pre = self.pre_acts(x)
        if thresholds is None:
            flat = pre.flatten()
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask[torch.topk(flat, self.k * pre.shape[0]).indices] = True
            return pre * mask.view_as(pre)
        return pre * (pre > thresholds)

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


def _reference(sae, acts, theta):
    x = torch.as_tensor(acts).float()
    xn = sae.normalize(x).double().numpy()
    f = sae.encode(x, thresholds=torch.as_tensor(theta)).double().numpy()
    xh = (torch.as_tensor(f).float() @ sae.W_dec + sae.b_dec).double().numpy()
    return x.double().numpy(), xn, f, xh


def test_metrics_match_numpy():
    d, n, T = 12, 40, 700
    rng = np.random.default_rng(0)
    acts = (rng.normal(size=(T, d)) * 3 + 1).astype(np.float16)
    theta = np.full(n, 0.4, dtype=np.float32)
    theta[:3] = np.inf  # dead latents
    sae = _FakeSAE(d, n)
    m = reconstruction_metrics(sae, acts, theta, batch_size=128, progress=False)
    x, xn, f, xh = _reference(sae, acts, theta)
    assert m.n_tokens == T
    assert m.mse == pytest.approx(np.mean((xh - xn) ** 2), rel=1e-6)
    fve = 1 - ((xh - xn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    assert m.fve == pytest.approx(fve, rel=1e-6)
    nz = f != 0
    assert m.l0 == pytest.approx(nz.sum(1).mean(), rel=1e-12)
    assert m.l0_std == pytest.approx(nz.sum(1).std(ddof=1), rel=1e-9)
    assert m.n_dead == (nz.sum(0) == 0).sum() >= 3
    np.testing.assert_array_equal(m.firing_counts, nz.sum(0))
    np.testing.assert_allclose(m.firing_rates, nz.mean(0))
    assert m.firing_rate_quantiles["q0.5"] == pytest.approx(np.median(nz.mean(0)))
    assert m.rate_hist_counts.sum() == n - m.n_dead
    assert m.input_norm["mean"] == pytest.approx(np.linalg.norm(x, axis=1).mean(), rel=1e-6)
    assert m.input_norm["std"] == pytest.approx(np.linalg.norm(x, axis=1).std(ddof=1), rel=1e-6)
    assert m.recon_norm["max"] == pytest.approx(np.linalg.norm(xh, axis=1).max(), rel=1e-6)
    ratio = np.linalg.norm(xh, axis=1) / np.linalg.norm(xn, axis=1)
    assert m.norm_ratio["mean"] == pytest.approx(ratio.mean(), rel=1e-6)
    assert m.code_l1 == pytest.approx(np.abs(f).sum(1).mean(), rel=1e-6)
    assert m.mean_active_value == pytest.approx(f[nz].mean(), rel=1e-6)
    assert m.encoding == "thresholds"
    assert "firing_counts" not in m.to_dict()


def test_chunking_invariance_and_batchtopk():
    d, n, T = 8, 20, 300
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(T, d)).astype(np.float32)
    sae = _FakeSAE(d, n, seed=2)
    theta = np.full(n, 0.2, dtype=np.float32)
    a = reconstruction_metrics(sae, acts, theta, batch_size=300, progress=False)
    b = reconstruction_metrics(sae, acts, theta, batch_size=37, progress=False)
    assert a.mse == pytest.approx(b.mse, rel=1e-12) and a.fve == pytest.approx(b.fve, rel=1e-10)
    assert a.l0 == pytest.approx(b.l0) and a.l0_std == pytest.approx(b.l0_std, rel=1e-10)
    c = reconstruction_metrics(sae, acts, None, batch_size=100, progress=False)
    assert c.encoding == "batchtopk" and c.l0 == pytest.approx(3.0)


def test_accumulator_bad_input():
    acc = ReconAccumulator(4, 5)
    with pytest.raises(ValueError):
        acc.update(np.zeros((2, 4)), np.zeros((2, 3)), np.zeros((2, 5)))
    with pytest.raises(ValueError):
        acc.update(np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((2, 6)))
    with pytest.raises(ValueError):
        acc.result()


def test_pair_equals_the_two_single_passes_and_sparse_decode_equals_dense():
    d, n, T = 10, 30, 410
    rng = np.random.default_rng(3)
    acts = (rng.normal(size=(T, d)) * 2).astype(np.float32)
    sae = _FakeSAE(d, n, seed=4)
    theta = np.full(n, 0.3, dtype=np.float32)
    t, b = reconstruction_metrics_pair(sae, acts, theta, batch_size=64, progress=False)
    t1 = reconstruction_metrics(sae, acts, theta, batch_size=64, progress=False)
    b1 = reconstruction_metrics(sae, acts, None, batch_size=64, progress=False)
    for got, ref in ((t, t1), (b, b1)):
        assert got.encoding == ref.encoding
        assert got.mse == ref.mse and got.l0 == ref.l0
        np.testing.assert_array_equal(got.firing_counts, ref.firing_counts)
    # the sparse decode inside against the dense reference product
    x, xn, f, xh = _reference(sae, acts, theta)
    assert t.sse == pytest.approx(((xh - xn) ** 2).sum(), rel=1e-6)
    fb = np.concatenate([sae.encode(torch.as_tensor(acts[s:s + 64])).double().numpy() for s in range(0, T, 64)])
    np.testing.assert_array_equal(b.firing_counts, (fb != 0).sum(0))
    xhb = (torch.as_tensor(fb).float() @ sae.W_dec + sae.b_dec).double().numpy()
    assert b.sse == pytest.approx(((xhb - xn) ** 2).sum(), rel=1e-6)
