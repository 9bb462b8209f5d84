"""The second-model stage: plan, fuzz table and its differences vs solo (paperlib.stages.second_model)."""

import math

import pandas as pd
import pytest

from paperlib.config.paths import second_model_output_dirs
from paperlib.stages import second_model as sm


def test_plan_and_output_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERLIB_OUTPUTS", str(tmp_path))
    # notebook 07's outputs belong to the default run for gemma-3-270m
    assert second_model_output_dirs("gemma-3-270m") == (tmp_path / "default" / "figures",
                                                        tmp_path / "default" / "tables")
    assert second_model_output_dirs("smoke")[1] == tmp_path / "smoke" / "tables"
    names = [r.name for r in sm.gemma_plan("gemma-3-270m", "0.1,0.3", "1.0,3.0")]
    assert names == ["solo", "joint-l0.1-s1", "joint-l0.1-s3", "joint-l0.3-s1", "joint-l0.3-s3",  # grid, seed 0
                     "solo-seed1", "solo-seed2", "joint-l0.3-s1-seed1", "joint-l0.3-s1-seed2"]  # paired seeds
    assert [r.name for r in sm.gemma_plan("smoke")] == ["solo", "joint-l0.3-s1", "solo-seed1", "joint-l0.3-s1-seed1",
                                                        "randcritic-l0.3-s1", "randcritic-l0.3-s1-seed1"]


def test_fuzz_table_without_judge():
    empty = sm.fuzz_table("smoke", ["solo", "joint-l0.3-s1"], 3, judge=None)
    assert empty["fuzz_mean"].isna().all() and list(empty["n_fuzz"]) == [0, 0]
    assert empty["dfuzz"].isna().all()


def test_fuzz_deltas_against_hand_computation():
    t = sm.add_fuzz_deltas(pd.DataFrame({"run": ["solo", "a", "b"], "fuzz_mean": [0.05, 0.2, -0.05],
                                         "fuzz_sem": [0.03, 0.04, math.nan]}))
    assert t["dfuzz"].tolist() == pytest.approx([0.0, 0.15, -0.1])
    assert math.isnan(t.loc[0, "dfuzz_se"]) and t.loc[1, "dfuzz_se"] == pytest.approx(0.05)  # √(.03²+.04²)
    assert math.isnan(t.loc[2, "dfuzz_se"])
    assert t["dfuzz_pct"].tolist() == pytest.approx([0.0, 300.0, -200.0])
    no_solo = sm.add_fuzz_deltas(pd.DataFrame({"run": ["a"], "fuzz_mean": [0.2], "fuzz_sem": [0.01]}))
    assert no_solo[["dfuzz", "dfuzz_se", "dfuzz_pct"]].isna().all(axis=None)
