"""Tests for paperlib.stages.cooccur: the full-counts path equals the streamed row-block path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from paperlib.stages import cooccur


def _fired(T=600, n=40, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rates = np.exp(rng.uniform(np.log(0.002), np.log(0.3), n))
    rates[:3] = 0.0  # dead latents
    base = rng.random((T, n)) < rates
    base[:, 5] |= base[:, 6]  # a strongly co-firing pair
    return sp.csr_matrix(base)


def _close(a, b):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, (list, np.ndarray)):
        return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-12, atol=1e-15,
                           equal_nan=True)
    if isinstance(a, float):
        return a == pytest.approx(b, rel=1e-12, abs=1e-15)
    return a == b


def test_counts_path_equals_streamed_path(monkeypatch):
    fired = _fired()
    fast = cooccur.within_results(fired)
    monkeypatch.setattr(cooccur, "COUNTS_MAX_N", 0)  # force the row-block path
    slow = cooccur.within_results(fired)
    for a, b in zip([fast[0], fast[1], *fast[2]], [slow[0], slow[1], *slow[2]], strict=True):
        da, db = a.to_dict(with_hist=True), b.to_dict(with_hist=True)
        assert da.keys() == db.keys()
        bad = [k for k in da if not _close(da[k], db[k])]
        assert not bad, {k: (da[k], db[k]) for k in bad}
    bad = [k for k in fast[3] if not _close(fast[3][k], slow[3][k])]
    assert not bad, {k: (fast[3][k], slow[3][k]) for k in bad}
    assert fast[1].n_features == len(cooccur.alive_index(np.asarray(fired.sum(0)).ravel(), fired.shape[0]))
