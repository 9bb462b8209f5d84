"""App. C table (paperlib.report.cooccurrence) against direct per-pair computation."""

import numpy as np
import pytest
import scipy.sparse as sp

from paperlib.metrics.cooccurrence import SparseFiring, within_stats
from paperlib.report.cooccurrence import PHI_SHAPE_COLUMNS, phi_shape_table
from paperlib.stages.cooccur import alive_columns
from tests.helpers import brute_phi


def test_phi_shape_rows_match_direct_pair_computation():
    rng = np.random.default_rng(0)
    F = rng.random((300, 12)) < rng.uniform(0.02, 0.4, size=12)
    F[:, 3] = False  # dead
    F[:2, 5], F[2:, 5] = True, False  # rare: fires on 2 tokens only
    fired = sp.csr_matrix(F)
    all_stats = within_stats(SparseFiring.from_fired(fired).counts())
    alive_stats = within_stats(SparseFiring.from_fired(alive_columns(fired)).counts())
    t = phi_shape_table({"solo": (all_stats, alive_stats)})
    assert list(t.columns) == PHI_SHAPE_COLUMNS and list(t["pairs"]) == ["all", "alive", "dead or rare latent"]
    _, _, ph = brute_phi(F)
    iu = np.triu_indices(12, 1)
    alive = np.array([i not in (3, 5) for i in range(12)])
    is_alive_pair = alive[iu[0]] & alive[iu[1]]
    vals = ph[iu]
    rest = vals[~is_alive_pair]
    row = t.set_index("pairs").loc["dead or rare latent"]
    assert row["n_pairs"] == rest.size == 66 - 45
    assert row["share_of_pairs"] == pytest.approx(rest.size / 66)
    assert row["mean_abs_phi"] == pytest.approx(np.abs(rest).mean(), rel=1e-9)
    assert row["share_of_sum_abs_phi"] == pytest.approx(np.abs(rest).sum() / np.abs(vals).sum(), rel=1e-9)
    assert row["frac_negative"] == pytest.approx((rest < 0).mean())
    a = t.set_index("pairs").loc["alive"]
    assert a["n_pairs"] == 45 and a["mean_abs_phi"] == pytest.approx(np.abs(vals[is_alive_pair]).mean(), rel=1e-9)
    assert t.set_index("pairs").loc["all", "share_of_pairs"] == 1.0
