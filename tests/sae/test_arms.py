"""Run names and the arm registry."""

from __future__ import annotations

import math
import re

import pytest
import torch

from paperlib.sae import arms
from paperlib.sae.arms import ARMS, Arm, PenaltyInputs, RunSpec, canonical_name, grid_runs, parse_run, register
from paperlib.sae.models import MetaSAE


def test_runs_names_round_trip():
    for spec in grid_runs("default"):
        assert parse_run(spec.name) == spec
    with pytest.raises(ValueError, match="cannot parse run name"):
        parse_run("jointy")
    names = [r.name for r in grid_runs("default")]
    assert names[0] == "solo" and "control" not in names and "solo-seed4" in names and "randcritic-l0.3-s1" in names
    assert sum(n.startswith("joint-") and "-seed" not in n for n in names) == 9  # the exploratory grid
    assert sum(n.startswith("joint-l0.3-s1") for n in names) == 5  # the paired seeds of the paper config


@pytest.mark.parametrize("spelling", ["joint-l0.3-s1.0", "joint-l0.3-s1", "joint-l0.30-s1.00", "joint-l3e-1-s1"])
def test_every_spelling_is_one_canonical_run(spelling):
    spec = parse_run(spelling)
    assert spec == RunSpec("joint", lambda2=0.3, sigma2=1.0)
    assert spec.name == canonical_name(spelling) == "joint-l0.3-s1"
    assert parse_run(spec.name + "-seed4") == spec.with_seed(4)


def test_every_registered_arm_parses_its_example_and_round_trips():
    for arm in ARMS.values():
        spec = parse_run(arm.example)
        assert spec.arm == arm.name
        assert parse_run(spec.name) == spec
        assert set(spec.hyper()) == set(arms.HYPER_COLUMNS)


def test_hyper_columns_are_nan_where_an_arm_has_no_parameter():
    assert math.isnan(RunSpec("solo").hyper()["lambda2"])
    assert RunSpec("control").hyper()["lambda2"] == 0.0  # the control's λ₂ is 0, in every table
    assert math.isnan(RunSpec("control").hyper()["sigma2"])
    h = RunSpec("ortho", gamma=0.1).hyper()
    assert h["gamma"] == 0.1 and math.isnan(h["lambda2"])


def test_invalid_specs_fail_with_the_reason():
    with pytest.raises(ValueError, match="control"):
        RunSpec("joint", lambda2=0.0)
    with pytest.raises(ValueError, match="sigma2"):
        RunSpec("joint", lambda2=0.3, sigma2=0.0)
    with pytest.raises(ValueError, match="registered arms"):
        RunSpec("nope")
    with pytest.raises(ValueError, match="seed"):
        RunSpec("solo", seed=-1)


def test_make_keeps_only_the_arms_parameters():
    assert arms.arm_of("control").make(seed=2, lambda2=0.3, sigma2=3.0) == RunSpec("control", seed=2)
    assert arms.arm_of("joint").make(lambda2=0.3, sigma2=3.0, gamma=0.1) == RunSpec("joint", 0.3, 3.0)


def _inputs(n=32, d=8, meta=None, step=0):
    torch.manual_seed(0)
    W = torch.nn.functional.normalize(torch.randn(n, d), dim=1).requires_grad_()
    return PenaltyInputs(W_dec=W, meta=meta, step=step, n_chunks=4)


def test_joint_penalty_term_equals_lambda_times_decomposability_penalty():
    meta = MetaSAE(8, 6, 2, seed=1)
    inp = _inputs(meta=meta)
    spec = RunSpec("joint", lambda2=0.3, sigma2=1.0)
    term, logs = spec.arm_def.penalty(spec, inp)
    W_hat = meta.reconstruct_rows(inp.W_dec)
    ref = torch.exp(-(inp.W_dec - W_hat).pow(2).sum(1) / 1.0).mean()
    torch.testing.assert_close(term, 0.3 * ref)
    assert logs["penalty"] == pytest.approx(float(ref))
    ctrl_term, ctrl_logs = RunSpec("control").arm_def.penalty(RunSpec("control"), inp)
    assert ctrl_term is None and ctrl_logs["penalty"] == pytest.approx(float(torch.exp(-(inp.W_dec - W_hat)
                                                                                    .pow(2).sum(1)).mean()))


def test_random_critic_is_joint_with_a_frozen_meta():
    rc = arms.arm_of("randcritic")
    assert rc.uses_meta and not rc.trains_meta
    assert arms.arm_of("joint").trains_meta


def test_adding_an_arm_is_one_class_and_its_registration(monkeypatch):
    monkeypatch.setattr(arms, "ARMS", dict(ARMS))

    class L2Arm(Arm):
        name = "l2dec"
        pattern = r"l2dec-g(\d+(?:\.\d*)?)"
        example = "l2dec-g0.5"
        hyper_names = ("gamma",)

        def from_match(self, m: re.Match) -> dict[str, float]:
            return {"gamma": float(m[1])}

        def base_name(self, spec):
            return f"l2dec-g{spec.gamma:g}"

        def penalty(self, spec, inputs):
            pen = inputs.W_dec.pow(2).mean()
            return spec.gamma * pen, {"penalty": float(pen)}

    register(L2Arm())
    spec = parse_run("l2dec-g0.5-seed1")
    assert spec == RunSpec("l2dec", gamma=0.5, seed=1) and spec.name == "l2dec-g0.5-seed1"
    term, _ = spec.arm_def.penalty(spec, _inputs())
    assert term is not None and term.requires_grad
    with pytest.raises(ValueError, match="already registered"):
        register(L2Arm())
