"""Table 1's grid configurations against the solo seeds' noise, with Holm's correction over the grid."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from paperlib.stages import cooccur, select
from tests.stages.conftest import NAMES, R


def _grid_rows():
    """A hand-built Table 1 of the smoke profile: 3 solo seeds, its 2 × 2 joint grid and OrtSAE at seed 0, and
    rows that are not grid configurations (a joint seed 1, the random critic, the λ₂ = 0 control)."""
    runs = [("solo", "solo", 0, 1.000), ("solo-seed1", "solo", 1, 1.010), ("solo-seed2", "solo", 2, 0.995),
            ("joint-l0.3-s1", "joint", 0, 0.960), ("joint-l0.3-s3", "joint", 0, 1.002),
            ("joint-l1-s1", "joint", 0, 0.930), ("joint-l1-s3", "joint", 0, 0.985), ("ortho-g0.1", "ortho", 0, 0.990),
            ("joint-l0.3-s1-seed1", "joint", 1, 0.950), ("randcritic-l0.3-s1", "randcritic", 0, 0.900),
            ("control", "control", 0, 1.000)]
    return pd.DataFrame([{"run": r, "arm": a, "seed": s, "mean_abs_phi": v} for r, a, s, v in runs])


def test_grid_p_values_are_prediction_interval_tests_against_the_solo_seeds():
    df = select.grid_noise_tests("smoke", _grid_rows()).set_index("run")
    family = ["joint-l0.3-s1", "joint-l0.3-s3", "joint-l1-s1", "joint-l1-s3", "ortho-g0.1"]
    assert list(df.index[select.grid_configurations("smoke", df.reset_index()).to_numpy()]) == family
    solo = np.array([1.000, 1.010, 0.995])
    k = solo.size
    for run in family:  # t = (x − mean) / (s·√(1 + 1/K)), K − 1 df, two-sided: from scipy.stats.t
        t = (df.loc[run, "mean_abs_phi"] - solo.mean()) / (solo.std(ddof=1) * math.sqrt(1 + 1 / k))
        assert df.loc[run, "p_vs_solo_seeds"] == pytest.approx(2 * sps.t.sf(abs(t), k - 1), rel=1e-10)
    others = [r for r in df.index if r not in family]
    assert df.loc[others, ["p_vs_solo_seeds", "p_holm"]].isna().all().all()
    # Holm over the grid configurations of this table only
    ref = multipletests(df.loc[family, "p_vs_solo_seeds"].to_numpy(), method="holm")[1]
    np.testing.assert_array_equal(df.loc[family, "p_holm"].to_numpy(), ref)
    assert (df.loc[family, "p_holm"] >= df.loc[family, "p_vs_solo_seeds"]).all()


def test_grid_p_values_need_two_solo_seeds():
    one = _grid_rows()
    one = one[~one["run"].isin(["solo-seed1", "solo-seed2"])]
    df = select.grid_noise_tests("smoke", one)
    assert df[["p_vs_solo_seeds", "p_holm"]].isna().all().all()
    assert list(df.columns[-2:]) == ["p_vs_solo_seeds", "p_holm"]


def test_table1_carries_the_grid_p_values(env):
    p, _ = env
    df = select.grid_table(p, NAMES, with_ce=False, progress=False).set_index("run")
    assert list(df.reset_index().columns) == select.TABLE1_COLUMNS
    solo = np.array([cooccur.ensure_cooccurrence(R(p, n), progress=False).all.mean_abs_phi
                     for n in ("solo", "solo-seed1")])
    x = cooccur.ensure_cooccurrence(R(p, "joint-l1-s0.5"), progress=False).all.mean_abs_phi
    t = (x - solo.mean()) / (solo.std(ddof=1) * math.sqrt(1.5))
    assert df.loc["joint-l1-s0.5", "p_vs_solo_seeds"] == pytest.approx(2 * sps.t.sf(abs(t), 1), rel=1e-9)
    assert df.loc["joint-l1-s0.5", "p_holm"] == df.loc["joint-l1-s0.5", "p_vs_solo_seeds"]  # a family of one
    assert df.drop(index="joint-l1-s0.5")[["p_vs_solo_seeds", "p_holm"]].isna().all().all()
    # the grid p agrees with the noise floor's prediction band: inside the band iff p > 0.05
    nf = df.attrs["noise_floor"]
    d = df.loc["joint-l1-s0.5", "delta_phi_pct"]
    assert (nf["pi_low_pct"] < d < nf["pi_high_pct"]) == (df.loc["joint-l1-s0.5", "p_vs_solo_seeds"] > 0.05)
