"""The chunked encode loop against a direct full-batch computation."""

import numpy as np
import pytest
import torch

from paperlib.metrics.firing import as_thresholds, iter_codes, iter_inputs, iter_pre_acts
from paperlib.sae.models import BatchTopKSAE


class _ElementwiseSAE:
    """Token-wise maps only (no matmul), so chunked and full-batch results are bitwise equal."""

    def pre_acts(self, x):
        return torch.relu(x * 2.0 - 1.0)

    def encode(self, x, thresholds=None):
        pre = self.pre_acts(x)
        if thresholds is None:  # "BatchTopK": the batch's largest entry per row
            return pre * (pre >= pre.max())
        assert thresholds.dtype == torch.float32
        return pre * (pre > thresholds)


def _acts(T=103, d=6, seed=0, dtype=np.float16):
    return (np.random.default_rng(seed).normal(size=(T, d)) * 2).astype(dtype)


def test_inputs_rows_and_dtype():
    acts = _acts()
    got = list(iter_inputs(acts, 25))
    assert [s for s, _ in got] == [0, 25, 50, 75, 100]
    assert all(x.dtype == torch.float32 for _, x in got)
    assert torch.equal(torch.cat([x for _, x in got]), torch.from_numpy(acts.astype(np.float32)))
    assert list(iter_inputs(acts[:0], 8)) == []
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_inputs(acts, 0))


@pytest.mark.parametrize("batch_size", [1, 7, 50, 103, 4096])
def test_codes_match_full_batch_exactly(batch_size):
    acts = _acts()
    sae = _ElementwiseSAE()
    theta64 = np.linspace(0.1, 1.5, 6)  # float64: rounded to fp32 once, as the full-batch reference
    x = torch.from_numpy(acts.astype(np.float32))
    full = sae.encode(x, thresholds=torch.as_tensor(theta64, dtype=torch.float32))
    for th in (theta64, theta64.tolist(), torch.as_tensor(theta64), torch.as_tensor(theta64, dtype=torch.float32)):
        parts = list(iter_codes(sae, acts, th, batch_size))
        assert [s for s, _, _ in parts] == list(range(0, len(acts), batch_size))
        assert torch.equal(torch.cat([c for _, _, c in parts]), full)
        assert torch.equal(torch.cat([xx for _, xx, _ in parts]), x)
    # thresholds=None: BatchTopK semantics, i.e. per chunk
    for s, _, c in iter_codes(sae, acts, None, batch_size):
        assert torch.equal(c, sae.encode(x[s:s + batch_size]))
    pre = torch.cat([p for _, _, p in iter_pre_acts(sae, acts, batch_size)])
    assert torch.equal(pre, sae.pre_acts(x))


def test_real_sae_matches_full_batch():
    sae = BatchTopKSAE(6, 24, 3, seed=1)
    acts = _acts(T=200)
    x = torch.from_numpy(acts.astype(np.float32))
    theta = torch.rand(24, generator=torch.Generator().manual_seed(0)) * 0.3
    with torch.no_grad():
        full = sae.encode(x, thresholds=theta)
        full_pre = sae.pre_acts(x)
    codes = torch.cat([c for _, _, c in iter_codes(sae, acts, theta, 64)])
    pre = torch.cat([p for _, _, p in iter_pre_acts(sae, acts, 64)])
    assert not codes.requires_grad and not pre.requires_grad
    torch.testing.assert_close(codes, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(pre, full_pre, rtol=0, atol=1e-5)
    # BatchTopK per chunk: at most k·B nonzero codes in every chunk
    for _, xx, c in iter_codes(sae, acts, None, 64):
        assert int((c > 0).sum()) <= 3 * xx.shape[0]


def test_as_thresholds():
    t = as_thresholds(np.array([0.5, np.inf]))
    assert t.dtype == torch.float32 and t.tolist() == [0.5, float("inf")]
    g = torch.tensor([0.25], requires_grad=True)
    assert not as_thresholds(g).requires_grad
