"""Non-finite values (issue 17, case 1): NaN / inf activations or losses end in one error that names the
array, the count and the rows; nothing is stored, cached or marked done."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import paperlib.sae.trainer as tr
from paperlib.config.checks import NonFiniteError
from paperlib.config.profiles import get_profile
from paperlib.data import activations
from paperlib.metrics.calibration import calibrate_sae
from paperlib.metrics.cooccurrence import firing_from_sae
from paperlib.metrics.reconstruction import reconstruction_metrics
from paperlib.sae.models import BatchTopKSAE
from tests.helpers import tiny_profile

D = 16


def _acts(T=256, nan_rows=()):
    g = np.random.default_rng(0)
    a = (g.standard_normal((T, D)) * 2 + g.standard_normal(D)).astype(np.float16)
    a[list(nan_rows)] = np.nan
    return a


def _profile():
    return get_profile("smoke", n_latents=48, k=4, n_meta=8, k_meta=2, batch_size=32, train_epochs=1.0,
                       checkpoint_every=2, n_primary_steps=3, n_meta_steps=2, dead_after=2, k_aux=8)


def _sae():
    return BatchTopKSAE(D, 48, 4, seed=0)


def test_nan_training_rows_stop_the_run_without_done(tmp_path):
    acts = _acts(nan_rows=range(100, 110))
    with pytest.raises(NonFiniteError, match=r"run 'solo', step \d+: .*10 rows \(first: 100, 101"):
        tr.train_run(_profile(), "solo", acts, tmp_path / "run", progress=False, device="cpu")
    assert not tr.is_done(tmp_path / "run") and not (tmp_path / "run" / "sae").exists()


def test_nan_loss_stops_the_run_without_done(tmp_path, monkeypatch):
    real = tr.Trainer.macro_step

    def poisoned(self, x):
        rec = real(self, x)
        return {**rec, "loss": float("nan")} if self.step == 3 else rec

    monkeypatch.setattr(tr.Trainer, "macro_step", poisoned)
    with pytest.raises(NonFiniteError, match=r"run 'solo', step 3: non-finite training loss"):
        tr.train_run(_profile(), "solo", _acts(), tmp_path / "run", progress=False, device="cpu")
    assert not tr.is_done(tmp_path / "run")
    assert len(tr.read_metrics_file(tmp_path / "run")) == 2  # the bad step is never logged


@pytest.mark.parametrize("mode", ["hist", "exact"])
def test_one_nan_token_in_calibration_raises(mode):
    acts = _acts(nan_rows=[77])
    with pytest.raises(NonFiniteError, match=r"calibration activations: 1 row \(77\) of 256"):
        calibrate_sae(_sae(), acts, batch_size=64, mode=mode, progress=False)


@pytest.mark.parametrize("mode", ["hist", "exact"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_pre_activations_raise_in_calibration(mode, bad):
    from paperlib.metrics.calibration import calibrate_from_pre
    pre = torch.rand(8, 6)
    pre[3, 2] = bad
    with pytest.raises(NonFiniteError, match="batch 1: 1 rows"):
        calibrate_from_pre([torch.rand(8, 6), pre], 2, mode=mode, progress=False)


def test_nan_rows_in_cooccurrence_and_reconstruction_raise():
    acts = _acts(nan_rows=[5, 200])
    theta = torch.zeros(48)
    with pytest.raises(NonFiniteError, match=r"co-occurrence activations: 2 rows \(5, 200\)"):
        firing_from_sae(_sae(), acts, theta, batch_size=64, progress=False)
    with pytest.raises(NonFiniteError, match=r"activations: 2 rows \(5, 200\)"):
        reconstruction_metrics(_sae(), acts, theta, batch_size=64, progress=False)
    theta[[3, 9]] = float("nan")
    with pytest.raises(NonFiniteError, match=r"thresholds: 2 latents \(3, 9\) are NaN"):
        firing_from_sae(_sae(), _acts(), theta, batch_size=64, progress=False)


def test_extraction_refuses_nan_from_the_model(tmp_artifacts, monkeypatch):
    p = tiny_profile()
    real = activations.resid_pre
    calls = []

    def nan_lm(lm, ids, layer):
        h = real(lm, ids, layer)
        if not calls:
            h[0, 5, :] = float("nan")
        calls.append(1)
        return h

    monkeypatch.setattr(activations, "resid_pre", nan_lm)
    with pytest.raises(NonFiniteError, match=r"NaN or inf at layer 2 for 1 tokens of range 'train' "
                                             r"\(first: \(row 0, pos 5\)\); nothing was stored"):
        activations.load_cache(p, progress=False)
    root = activations.activations_dir(p)
    assert not list(root.rglob("train*.npy"))
