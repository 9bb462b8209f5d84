"""StreamingMoments against numpy on chunked inputs; finite_array."""

import math

import numpy as np
import pytest
import torch

from paperlib.metrics.streaming import StreamingMoments, finite_array


def _chunks(x, rng):
    """Random split of x along axis 0 into chunks (some empty)."""
    cuts = np.sort(rng.integers(0, len(x) + 1, size=rng.integers(0, 12)))
    return np.split(x, cuts)


@pytest.mark.parametrize("shape", [(), (3,), (2, 4)])
def test_chunked_stream_matches_numpy(shape):
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(1, 400))
        scale = rng.choice([1e-3, 1.0, 1e3])
        x = (rng.normal(size=(n, *shape)) + rng.choice([0.0, 5.0, 1e4])) * scale
        m = StreamingMoments("x", shape)
        for c in _chunks(x, rng):
            m.update(c if trial % 2 else torch.as_tensor(c))
        assert m.count == n
        np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-13, atol=1e-13 * np.abs(x).max())
        for ddof in (0, 1):
            ref = x.var(0, ddof=ddof) if n > ddof else np.full(shape, np.nan)
            np.testing.assert_allclose(m.var(ddof), ref, rtol=1e-9, atol=1e-300)
            np.testing.assert_allclose(m.std(ddof), np.sqrt(ref), rtol=1e-9, atol=1e-300)
        np.testing.assert_array_equal(m.min, x.min(0))
        np.testing.assert_array_equal(m.max, x.max(0))
        if shape == ():
            assert all(isinstance(v, float) for v in (m.mean, m.var(1), m.std(1), m.min, m.max, m.m2))


def test_merge_equals_single_stream_and_is_accurate_at_large_offset():
    rng = np.random.default_rng(1)
    x = 1e8 + rng.normal(size=5000)  # E[x²] − E[x]² would lose every digit here
    parts = [StreamingMoments("x").update(c) for c in np.array_split(x, 7)]
    total = StreamingMoments("x")
    for p in parts:
        total.merge(p)
    whole = StreamingMoments("x").update(x)
    assert total.count == whole.count == x.size
    assert total.mean == pytest.approx(x.mean(), rel=1e-15)
    assert total.var(1) == pytest.approx(x.var(ddof=1), rel=1e-9)
    assert whole.var(1) == pytest.approx(x.var(ddof=1), rel=1e-9)
    assert total.min == x.min() and total.max == x.max()
    assert total.merge(StreamingMoments("x")).count == x.size  # merging an empty part is a no-op


def test_from_sums():
    rng = np.random.default_rng(2)
    x = rng.exponential(size=(300, 3))
    m = StreamingMoments.from_sums(300, x.sum(0), (x * x).sum(0))
    np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(m.var(1), x.var(0, ddof=1), rtol=1e-10)
    assert StreamingMoments.from_sums(4, 4.0, 3.0).var() == 0.0  # Σx² − Σx·mean < 0 by rounding: clipped
    assert StreamingMoments.from_sums(0, 0.0, 0.0).count == 0
    a = StreamingMoments("x").update(x[:100, 0]).merge(StreamingMoments.from_sums(200, x[100:, 0].sum(),
                                                                                   (x[100:, 0] ** 2).sum()))
    assert a.count == 300 and a.var(1) == pytest.approx(x[:, 0].var(ddof=1), rel=1e-10)
    with pytest.raises(ValueError, match="count"):
        StreamingMoments.from_sums(-1, 0.0, 0.0)
    with pytest.raises(ValueError, match="norms"):
        StreamingMoments.from_sums(3, math.nan, 1.0, name="norms")


def test_empty_and_errors():
    m = StreamingMoments("ratio")
    assert m.count == 0 and math.isnan(m.mean) and math.isnan(m.var()) and math.isnan(m.std(1))
    assert m.min == math.inf and m.max == -math.inf and m.m2 == 0.0
    m.update(np.zeros(0))
    assert m.count == 0
    m.update([2.0])
    assert m.mean == 2.0 and m.var(0) == 0.0 and math.isnan(m.var(1))
    for bad in ([1.0, np.nan], [np.inf], torch.tensor([1.0, -np.inf])):
        with pytest.raises(ValueError, match="ratio"):
            m.update(bad)
    assert m.count == 1  # a rejected batch leaves the state alone
    with pytest.raises(ValueError, match="shape"):
        m.update(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="shape"):
        m.update(5.0)
    with pytest.raises(ValueError, match="merge"):
        m.merge(StreamingMoments("other", (2,)))


def test_finite_array():
    np.testing.assert_array_equal(finite_array("x", [1, 2]), np.array([1.0, 2.0]))
    assert finite_array("x", torch.tensor([1.5], requires_grad=True)).dtype == np.float64
    with pytest.raises(ValueError, match="alpha must be finite"):
        finite_array("alpha", [0.1, np.nan])
    with pytest.raises(ValueError, match="alpha must be numeric"):
        finite_array("alpha", "abc")
