"""Shared fixture of the stage tests: a tiny profile whose primary comparison (2 paired seeds of solo,
joint and random critic) is trained on fake activations."""

from __future__ import annotations

import numpy as np
import pytest

from paperlib.config.profiles import TokenBudget, get_profile
from paperlib.stages import calibrate, cooccur, recon, train
from paperlib.stages.run import Run

D = 16
NAMES = ["solo", "joint-l1-s0.5", "solo-seed1", "joint-l1-s0.5-seed1", "randcritic-l1-s0.5", "randcritic-l1-s0.5-seed1"]


def _profile():
    return get_profile(
        "smoke", model="tiny-smollm2", layer=2, context=32,
        tokens=TokenBudget(train=256, calibration=512, cooccurrence=512, autointerp=64, ce=64),
        n_latents=48, k=4, n_meta=8, k_meta=2, batch_size=32, train_epochs=2.0, checkpoint_every=100,
        n_primary_steps=3, n_meta_steps=2, dead_after=2, k_aux=8, grid_lambda2=(1.0,), grid_sigma2=(0.5,),
        ortho_gamma=(), primary_seeds=2, paper_lambda2=1.0, paper_sigma2=0.5,
    )


class _FakeCache:
    def __init__(self) -> None:
        g = np.random.default_rng(0)
        mu = g.standard_normal(D)
        self._acts = {r: (g.standard_normal((512, D)) * 2 + mu).astype(np.float16)
                      for r in ("train", "calibration", "cooccurrence")}
        self.d = D

    def acts(self, name):
        return self._acts[name]


@pytest.fixture()
def env(tmp_artifacts, monkeypatch):
    p = _profile()
    fake = _FakeCache()
    calls = {"n": 0}

    def fake_cache(profile):
        calls["n"] += 1
        return fake

    for mod in (calibrate, cooccur, recon, train):
        monkeypatch.setattr(mod, "load_cache", fake_cache)
    train.ensure_trained(p, NAMES, progress=False, n_workers=1)
    return p, calls


def R(p, name):  # noqa: N802
    return Run.of(p, name)


