"""Reliability: bad run parameters fail once, naming the parameter; every accepted run name parses back."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from paperlib.config.profiles import get_profile
from paperlib.sae.arms import ARMS, RunSpec, parse_run, with_grid

SMOKE = get_profile("smoke")


@pytest.mark.parametrize("kw,param,why", [
    (dict(lambda2="1e400"), "lambda2", "not a finite number"),
    (dict(sigma2="inf"), "sigma2", "not a finite number"),
    (dict(lambda2="nan"), "lambda2", "not a finite number"),
    (dict(lambda2="abc"), "lambda2", "not a number"),
    (dict(lambda2="0.3,-1"), "lambda2", "must be > 0"),
    (dict(seeds="-1"), "seeds", "not a non-negative whole number"),
    (dict(seeds="1.5"), "seeds", "not a non-negative whole number"),
    (dict(seeds=[0, 2.5]), "seeds", "not a non-negative whole number"),
    (dict(seeds="two"), "seeds", "not a number"),
])
def test_bad_grid_parameters_name_the_parameter(kw, param, why):
    with pytest.raises(ValueError) as e:
        with_grid([RunSpec("solo")], SMOKE, **kw)
    msg = str(e.value)
    assert msg.startswith(f"parameter {param}=") and why in msg and "give " in msg  # what to do
    assert "invalid literal" not in msg


def test_good_grid_parameters_are_parsed_not_truncated():
    runs = with_grid([RunSpec("solo")], SMOKE, lambda2="0.1, 1e-3", sigma2=[1], seeds="0 2")
    names = [r.name for r in runs]
    assert names == ["solo", "solo-seed2", "joint-l0.1-s1", "joint-l0.1-s1-seed2", "joint-l0.001-s1",
                     "joint-l0.001-s1-seed2"]


@pytest.mark.parametrize("kw,field", [
    (dict(arm="joint", lambda2=math.inf), "lambda2"), (dict(arm="joint", lambda2=0.3, sigma2=math.nan), "sigma2"),
    (dict(arm="ortho", gamma=-math.inf), "gamma"), (dict(arm="solo", seed=-3), "seed"),
    (dict(arm="solo", seed=1.5), "seed"), (dict(arm="solo", seed=2.0), "seed"),
    (dict(arm="solo", lambda2=0.3), "lambda2"), (dict(arm="control", sigma2=3.0), "sigma2"),
    (dict(arm="joint", lambda2=-0.3), "lambda2"),
])
def test_unnameable_specs_are_refused_with_the_field(kw, field):
    with pytest.raises(ValueError, match=f"invalid {kw['arm']} run: .*{field}"):
        RunSpec(**kw)


def test_unparseable_names_say_which_name():
    with pytest.raises(ValueError, match="run name 'joint-l1e400-s1': .*lambda2 must be a finite number"):
        parse_run("joint-l1e400-s1")


def _random_doubles(rng: np.random.Generator, n: int) -> list[float]:
    """Finite positive doubles over the whole range: random bit patterns, round values, subnormals."""
    out = [0.3, 1.0, 0.1234567, 1e-05, 1e6, 123456789.0, 2.0 ** -1074, 1.7976931348623157e308, 1 / 3]
    while len(out) < n:
        x = abs(struct.unpack("<d", rng.bytes(8))[0])
        if math.isfinite(x) and x > 0:
            out.append(x)
    out += [float(f"{rng.uniform(0, 10):.{rng.integers(1, 17)}g}") or 1.0 for _ in range(n)]
    return out


def test_every_accepted_spec_round_trips_through_its_name():
    rng = np.random.default_rng(0)
    values = _random_doubles(rng, 300)
    seeds = [0, 1, 7, 2 ** 31, 2 ** 63 + 5, *rng.integers(0, 2 ** 40, 20).tolist(), np.int64(3)]
    n = 0
    for arm in ARMS.values():
        for i, x in enumerate(values):
            y = values[(7 * i + 3) % len(values)]
            seed = seeds[i % len(seeds)]
            try:
                spec = arm.make(seed=seed, lambda2=x, sigma2=y, gamma=x)
            except ValueError:
                continue  # refused specs need no name
            back = parse_run(spec.name)
            assert back == spec and back.name == spec.name, spec
            n += 1
    assert n > 900
    assert parse_run(RunSpec("ortho", gamma=-0.0).name) == RunSpec("ortho", gamma=0.0)
