"""Tests for paperlib.sae.trainer: schedules, determinism, kill-and-resume, validation, artifacts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import paperlib.sae.trainer as tr
from paperlib.config.profiles import get_profile
from paperlib.sae.arms import RunSpec
from paperlib.sae.models import BatchTopKSAE, MetaSAE

D = 16


def _profile(**kw):
    base = dict(n_latents=48, k=4, n_meta=8, k_meta=2, batch_size=32, train_epochs=2.0,
                checkpoint_every=3, n_primary_steps=3, n_meta_steps=2, dead_after=2, k_aux=8,
                ortho_chunks=3)
    base.update(kw)
    return get_profile("smoke", **base)


def _acts(T=200, d=D, seed=0):
    g = np.random.default_rng(seed)
    return (g.standard_normal((T, d)) * 2 + g.standard_normal(d)).astype(np.float16)


def _weights(run_dir, sub="sae"):
    return {k: v.clone() for k, v in BatchTopKSAE.load(run_dir / sub).state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _outlier_acts(T=200, d=D, seed=0):
    """Activations with a Gemma-3-like massive outlier dimension (dim 3)."""
    a = _acts(T, d, seed).astype(np.float32)
    a[:, 3] = a[:, 3] * 900 + 5000
    return a.astype(np.float16)


@pytest.mark.parametrize("spec,input_norm", [
    (RunSpec("solo"), "token"), (RunSpec("joint", lambda2=1.0, sigma2=0.5), "token"),
    (RunSpec("control"), "token"), (RunSpec("ortho", gamma=0.5), "token"),
    (RunSpec("randcritic", lambda2=1.0, sigma2=0.5), "token"), (RunSpec("solo"), "dim+token"),
    (RunSpec("joint", lambda2=1.0, sigma2=0.5), "dim+token"),
])
def test_run_artifacts_and_resume_bitwise(tmp_path, spec, input_norm, monkeypatch):
    prof = _profile(input_norm=input_norm)
    acts = _acts() if input_norm == "token" else _outlier_acts()
    ref = tr.train_run(prof, spec, acts, tmp_path / "ref", progress=False, device="cpu")
    assert (ref / "done.json").exists() and (ref / "sae" / "model.safetensors").exists()
    assert (ref / "meta").exists() == spec.uses_meta
    assert not (ref / "checkpoint").exists()
    cfg = json.loads((ref / "config.json").read_text())
    assert cfg["seed"] == 0 and cfg["tokens"]["steps"] == 12 and "versions" in cfg
    assert cfg["kernels"]["fused_cpu_kernels"] in (True, False)  # which arithmetic trained it
    recs = tr.read_metrics_file(ref)
    assert [r["step"] for r in recs] == list(range(1, 13))
    assert all(r["l0"] == 4.0 for r in recs)
    if spec.uses_meta:
        assert sum("meta_mse" in r for r in recs) == (4 if spec.arm_def.trains_meta else 0)
        assert all("penalty" in r and "meta_err" in r for r in recs)

    # kill at step 8 (after checkpoint 6), resume: identical weights and metrics steps
    def boom(step):
        if step == 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(tr, "_step_hook", boom)
    with pytest.raises(KeyboardInterrupt):
        tr.train_run(prof, spec, acts, tmp_path / "killed", progress=False, device="cpu")
    monkeypatch.setattr(tr, "_step_hook", None)
    assert not (tmp_path / "killed" / "done.json").exists()
    tr.train_run(prof, spec, acts, tmp_path / "killed", progress=False, device="cpu")
    assert _equal(_weights(ref), _weights(tmp_path / "killed"))
    if spec.uses_meta:
        assert _equal(_weights(ref, "meta"), _weights(tmp_path / "killed", "meta"))
    assert [r["step"] for r in tr.read_metrics_file(tmp_path / "killed")] == list(range(1, 13))

    # max_steps stop (graceful) then resume: identical as well
    tr.train_run(prof, spec, acts, tmp_path / "stopped", progress=False, device="cpu", max_steps=5)
    assert not (tmp_path / "stopped" / "done.json").exists()
    tr.train_run(prof, spec, acts, tmp_path / "stopped", progress=False, device="cpu")
    assert _equal(_weights(ref), _weights(tmp_path / "stopped"))


def test_same_seed_same_weights_different_seed_differs(tmp_path):
    prof, acts = _profile(train_epochs=1.0), _acts()
    a = tr.train_run(prof, RunSpec("solo"), acts, tmp_path / "a", progress=False, device="cpu")
    b = tr.train_run(prof, RunSpec("solo"), torch.from_numpy(acts), tmp_path / "b", progress=False,
                     device="cpu")
    c = tr.train_run(prof, RunSpec("solo", seed=1), acts, tmp_path / "c", progress=False, device="cpu")
    assert _equal(_weights(a), _weights(b))
    wa, wc = _weights(a), _weights(c)
    assert not torch.equal(wa["W_enc"], wc["W_enc"])
    # independent seeds also see a different data order
    d0, d1 = tr._Data(acts, 0, 32, torch.device("cpu")), tr._Data(acts, 1, 32, torch.device("cpu"))
    assert not torch.equal(d0.batch(0), d1.batch(0))


def test_finished_run_is_skipped(tmp_path):
    prof, acts = _profile(train_epochs=1.0), _acts()
    out = tr.train_run(prof, RunSpec("solo"), acts, tmp_path / "r", progress=False, device="cpu")
    stamp = (out / "sae" / "model.safetensors").stat().st_mtime_ns
    tr.train_run(prof, RunSpec("solo"), acts, out, progress=False, device="cpu")
    assert (out / "sae" / "model.safetensors").stat().st_mtime_ns == stamp
    assert isinstance(tr.load_trained_sae(out), BatchTopKSAE)


def test_meta_frozen_during_primary_and_primary_frozen_during_meta():
    cfg = tr.TrainConfig.from_profile(_profile(), RunSpec("joint", lambda2=1.0, sigma2=0.5), D)
    t = tr.Trainer(cfg, torch.device("cpu"))
    x = torch.from_numpy(_acts()[:32]).float()
    meta_before = {k: v.clone() for k, v in t.meta.state_dict().items()}
    prim_before = {k: v.clone() for k, v in t.primary.state_dict().items()}
    t.primary_step(x)
    assert _equal(meta_before, t.meta.state_dict())
    assert t.meta.W_enc.grad is None or t.meta.W_enc.grad.abs().sum() == 0
    assert not _equal(prim_before, t.primary.state_dict())
    prim_mid = {k: v.clone() for k, v in t.primary.state_dict().items()}
    t.meta_step()
    assert _equal(prim_mid, t.primary.state_dict())
    assert not _equal(meta_before, t.meta.state_dict())
    assert torch.allclose(t.meta.W_dec.norm(dim=1), torch.ones(8), atol=1e-6)
    assert torch.allclose(t.primary.W_dec.norm(dim=1), torch.ones(48), atol=1e-6)


def test_penalty_gradient_reaches_only_W_dec():
    cfg = tr.TrainConfig.from_profile(_profile(k_aux=0), RunSpec("joint", lambda2=1.0, sigma2=0.5), D)
    t = tr.Trainer(cfg, torch.device("cpu"))
    from paperlib.sae.penalty import decomposability_penalty

    W_hat = t.meta.reconstruct_rows(t.primary.W_dec)
    pen = decomposability_penalty(t.primary.W_dec, W_hat, 0.5)
    pen.backward()
    assert t.primary.W_dec.grad is not None and t.primary.W_dec.grad.abs().sum() > 0
    assert t.primary.W_enc.grad is None and t.primary.b_dec.grad is None
    assert all(p.grad is None for p in t.meta.parameters())


def test_bad_configs_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="k="):
        _profile(k=100)
    with pytest.raises(ValueError, match="sigma2"):
        RunSpec("joint", lambda2=0.3, sigma2=0.0)
    good = tr.TrainConfig.from_profile(_profile(), RunSpec("solo"), D)
    cases = [(dict(k=100), "k="), (dict(sigma2=-1.0, arm="joint", lambda2=0.3), "sigma2"),
             (dict(k_meta=20, arm="control"), "k_meta"), (dict(d_in=0), "d_in")]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            dataclasses.replace(good, **bad).validate()
    with pytest.raises(ValueError, match="activation dim"):
        tr.train_run(_profile(), RunSpec("solo"), _acts(d=D + 1), tmp_path / "x", progress=False,
                     d_in=D)
    with pytest.raises(ValueError, match="fewer than one batch"):
        tr.train_run(_profile(), RunSpec("solo"), _acts(T=10), tmp_path / "y", progress=False)
    with pytest.raises(ValueError, match="2-D"):
        tr.train_run(_profile(), RunSpec("solo"), np.zeros(100, np.float16), tmp_path / "z",
                     progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_checkpoint_config_mismatch_is_rejected(tmp_path):
    prof, acts = _profile(), _acts()
    tr.train_run(prof, RunSpec("solo"), acts, tmp_path / "r", progress=False, max_steps=3, device="cpu")
    with pytest.raises(ValueError, match="different configuration"):
        tr.train_run(_profile(lr=1e-3), RunSpec("solo"), acts, tmp_path / "r", progress=False, device="cpu")


def test_load_meta_and_metrics(tmp_path):
    prof, acts = _profile(train_epochs=1.0), _acts()
    out = tr.train_run(prof, RunSpec("control"), acts, tmp_path / "c", progress=False, device="cpu")
    assert isinstance(tr.load_trained_meta(out), MetaSAE)
    assert tr.read_config_file(out)["spec"]["arm"] == "control"
    with pytest.raises(FileNotFoundError):
        tr.load_trained_sae(tmp_path / "missing")


# -- per-dimension input standardisation (profile.sae.input_norm = "dim+token") ------------------------


def test_input_dim_stats_equal_numpy_fp64():
    acts = _outlier_acts(T=203)
    ref64 = acts.astype(np.float64)
    for chunk in (None, 1, 7, 64, 1000):
        mean, std = tr.input_dim_stats(acts, chunk_rows=chunk)
        assert mean.dtype == np.float64 and std.dtype == np.float64
        np.testing.assert_allclose(mean, ref64.mean(axis=0), rtol=1e-13, atol=0)
        np.testing.assert_allclose(std, ref64.std(axis=0), rtol=1e-12, atol=0)
    mean_t, std_t = tr.input_dim_stats(torch.from_numpy(acts), chunk_rows=50)
    np.testing.assert_allclose(mean_t, ref64.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(std_t, ref64.std(axis=0), rtol=1e-12)
    with pytest.raises(ValueError, match="2-D"):
        tr.input_dim_stats(np.zeros(5))


def test_trainer_sets_and_stores_input_stats(tmp_path):
    acts = _outlier_acts()
    acts[:, 5] = 2.0  # a constant dimension gets scale 1
    out = tr.train_run(_profile(input_norm="dim+token", train_epochs=1.0), RunSpec("control"), acts,
                       tmp_path / "r", progress=False, device="cpu")
    sae = tr.load_trained_sae(out)
    ref64 = acts.astype(np.float64)
    std = ref64.std(axis=0)
    assert sae.input_standardisation == "per-dim"
    assert torch.equal(sae.input_mean, torch.from_numpy(ref64.mean(axis=0)).float())
    assert torch.equal(sae.input_scale, torch.from_numpy(np.where(std > 0, std, 1.0)).float())
    assert float(sae.input_scale[5]) == 1.0
    assert tr.load_trained_meta(out).input_standardisation == "none"
    cfg = tr.read_config_file(out)
    assert cfg["train_config"]["input_norm"] == "dim+token"
    assert cfg["input_standardisation"]["kind"] == "per-dim"
    # the trainer's per-dim standardisation makes the outlier dimension ordinary in x̃
    xn = sae.normalize(torch.from_numpy(acts[:64]).float())
    assert float(xn[:, 3].abs().mean()) < 3.0
    token = tr.train_run(_profile(train_epochs=1.0), RunSpec("solo"), acts, tmp_path / "t", progress=False,
                         device="cpu")
    assert tr.load_trained_sae(token).input_standardisation == "none"
    assert tr.read_config_file(token)["input_standardisation"] == {"kind": "none"}


def test_input_norm_validation_and_stale_runs(tmp_path):
    with pytest.raises(ValueError, match="input_norm"):
        _profile(input_norm="per-dim")
    good = tr.TrainConfig.from_profile(_profile(), RunSpec("solo"), D)
    assert good.input_norm == "token"
    with pytest.raises(ValueError, match="input_norm"):
        dataclasses.replace(good, input_norm="dim").validate()
    acts = _outlier_acts()
    out = tr.train_run(_profile(train_epochs=1.0), RunSpec("solo"), acts, tmp_path / "r", progress=False,
                       device="cpu")
    # a finished run trained with another input normalisation is not silently reused
    with pytest.raises(ValueError, match="input_norm"):
        tr.train_run(_profile(train_epochs=1.0, input_norm="dim+token"), RunSpec("solo"), acts, out,
                     progress=False, device="cpu")
    # runs recorded before the field existed count as "token"
    cfg = json.loads((out / "config.json").read_text())
    del cfg["train_config"]["input_norm"]
    (out / "config.json").write_text(json.dumps(cfg))
    tr.train_run(_profile(train_epochs=1.0), RunSpec("solo"), acts, out, progress=False, device="cpu")
    with pytest.raises(ValueError, match="input_norm"):
        tr.train_run(_profile(train_epochs=1.0, input_norm="dim+token"), RunSpec("solo"), acts, out,
                     progress=False, device="cpu")
    # a checkpoint written before the field existed still resumes (as "token") ...
    prof = _profile()
    tr.train_run(prof, RunSpec("solo"), acts, tmp_path / "c", progress=False, max_steps=3, device="cpu")
    meta = json.loads((tmp_path / "c" / "checkpoint" / "checkpoint.json").read_text())
    del meta["config"]["input_norm"]
    (tmp_path / "c" / "checkpoint" / "checkpoint.json").write_text(json.dumps(meta))
    # ... but not into a dim+token run
    with pytest.raises(ValueError, match="different configuration"):
        tr.train_run(_profile(input_norm="dim+token"), RunSpec("solo"), acts, tmp_path / "c", progress=False,
                     device="cpu")
    tr.train_run(prof, RunSpec("solo"), acts, tmp_path / "c", progress=False, device="cpu")
    ref = tr.train_run(prof, RunSpec("solo"), acts, tmp_path / "ref", progress=False, device="cpu")
    assert _equal(_weights(ref), _weights(tmp_path / "c"))


def test_finished_run_with_another_config_is_not_reused(tmp_path):
    """Any result-changing field edited in the profile since training is caught, not only input_norm."""
    acts = _acts()
    out = tr.train_run(_profile(train_epochs=1.0), RunSpec("solo"), acts, tmp_path / "r", progress=False,
                       device="cpu")
    with pytest.raises(ValueError, match=r"train_epochs=1\.0.*now gives train_epochs=2\.0"):
        tr.train_run(_profile(train_epochs=2.0), RunSpec("solo"), acts, out, progress=False, device="cpu")
    with pytest.raises(ValueError, match="lr="):
        tr.train_run(_profile(train_epochs=1.0, lr=0.5), RunSpec("solo"), acts, out, progress=False, device="cpu")
    # checkpoint spacing does not change the weights: the finished run is reused
    assert tr.train_run(_profile(train_epochs=1.0, checkpoint_every=7), RunSpec("solo"), acts, out,
                        progress=False, device="cpu") == out


def test_schedules_against_hand_values():
    f = [tr.lr_factor(s, 10, 0.2, 0.3) for s in range(10)]
    assert f == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2 / 3, 1 / 3]
    assert [tr.lr_factor(s, 10, 0.0, 0.0) for s in range(10)] == [1.0] * 10
    g = [tr.penalty_factor(s, 10, 0.3, 0.2) for s in range(10)]
    assert g == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_penalty_warmup_and_row_quantiles_are_logged(tmp_path):
    prof = _profile(penalty_start_frac=0.5, penalty_ramp_frac=0.25, lr_warmup_frac=0.1, lr_decay_frac=0.2)
    out = tr.train_run(prof, RunSpec("joint", lambda2=0.3, sigma2=1.0), _acts(), tmp_path / "j", progress=False,
                       device="cpu")
    recs = tr.read_metrics_file(out)
    n = len(recs)
    scales = [r["penalty_scale"] for r in recs]
    assert scales[: n // 2] == [0.0] * (n // 2) and scales[-1] == 1.0
    q = [recs[-1][f"p_row_q{x:02d}"] for x in (5, 25, 50, 75, 95)]
    assert q == sorted(q) and all(0 < v <= 1 for v in q)
    assert recs[-1]["lr"] < prof.sae.lr  # decayed


def test_paired_seeds_share_init_and_data_order(tmp_path):
    """Solo seed s and joint seed s start from the same primary weights and read the same batches."""
    prof = _profile()
    solo = tr.Trainer(tr.TrainConfig.from_profile(prof, RunSpec("solo", seed=3), D), torch.device("cpu"))
    joint = tr.Trainer(tr.TrainConfig.from_profile(prof, RunSpec("joint", lambda2=0.3, sigma2=1.0, seed=3), D),
                       torch.device("cpu"))
    for a, b in zip(solo.primary.state_dict().values(), joint.primary.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    acts = _acts()
    da, db = tr._Data(acts, 3, prof.sae.batch_size, torch.device("cpu")), tr._Data(acts, 3, prof.sae.batch_size,
                                                                               torch.device("cpu"))
    for step in range(2 * da.steps_per_epoch):
        assert torch.equal(da.batch(step), db.batch(step))
    other = tr.Trainer(tr.TrainConfig.from_profile(prof, RunSpec("solo", seed=4), D), torch.device("cpu"))
    assert not torch.equal(other.primary.W_dec, solo.primary.W_dec)


def test_random_critic_never_changes(tmp_path):
    prof = _profile()
    spec = RunSpec("randcritic", lambda2=0.3, sigma2=1.0, seed=1)
    t = tr.Trainer(tr.TrainConfig.from_profile(prof, spec, D), torch.device("cpu"))
    before = {k: v.clone() for k, v in t.meta.state_dict().items()}
    out = tr.train_run(prof, spec, _acts(), tmp_path / "rc", progress=False, device="cpu")
    after = tr.load_trained_meta(out).state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert any(r.get("penalty", 0) > 0 for r in tr.read_metrics_file(out))
    j = tr.train_run(prof, RunSpec("joint", lambda2=0.3, sigma2=1.0, seed=1), _acts(), tmp_path / "j",
                     progress=False, device="cpu")
    assert not torch.equal(tr.load_trained_meta(j).W_dec, before["W_dec"])  # the trained critic moves


def test_lambda2_zero_control_is_solo_by_construction(tmp_path):
    """Same seed, zero penalty weight: the control's primary SAE is bitwise the solo SAE (which is why the
    control is a unit test here and not a reported result)."""
    acts = _acts()
    solo = tr.train_run(_profile(), RunSpec("solo", seed=2), acts, tmp_path / "s", progress=False, device="cpu")
    ctrl = tr.train_run(_profile(), RunSpec("control", seed=2), acts, tmp_path / "c", progress=False, device="cpu")
    assert _equal(_weights(solo), _weights(ctrl))


def _strip_timing(run_dir):
    return [{k: v for k, v in r.items() if k != "tok_per_s"} for r in tr.read_metrics_file(run_dir)]


@pytest.mark.parametrize("input_norm", ["token", "dim+token"])
def test_shared_prefix_equals_training_each_run_alone(tmp_path, input_norm):
    """The steps before the penalty starts, trained once for all runs of a seed, give the same weights and
    metrics (bar timing) as training every run alone; OrtSAE (penalty from step 0) is left alone."""
    prof = _profile(penalty_start_frac=0.4, penalty_ramp_frac=0.2, input_norm=input_norm, checkpoint_every=4)
    acts = _acts() if input_norm == "token" else _outlier_acts()
    specs = [RunSpec("solo", seed=1), RunSpec("joint", lambda2=1.0, sigma2=0.5, seed=1),
             RunSpec("joint", lambda2=0.3, sigma2=2.0, seed=1), RunSpec("randcritic", lambda2=1.0, sigma2=0.5, seed=1),
             RunSpec("control", seed=1), RunSpec("ortho", gamma=0.5, seed=1)]
    dirs = [tmp_path / "shared" / s.name for s in specs]
    got = tr.train_shared_prefix(prof, specs, acts, dirs, device="cpu")
    assert got == dirs[:-1] and not dirs[-1].exists()
    total = round(prof.sae.train_epochs * (len(acts) // prof.sae.batch_size))
    s0 = tr.penalty_start_step(tr.TrainConfig.from_profile(prof, specs[0], D), total)
    assert 0 < s0 < total
    for d in got:
        assert len(tr.read_metrics_file(d)) == s0 and (d / "checkpoint" / "checkpoint.json").exists()
    assert tr.train_shared_prefix(prof, specs, acts, dirs, device="cpu") == []  # checkpoints exist: nothing to do
    for spec, d in zip(specs, dirs, strict=True):
        tr.train_run(prof, spec, acts, d, progress=False, device="cpu")
        alone = tr.train_run(prof, spec, acts, tmp_path / "alone" / spec.name, progress=False, device="cpu")
        assert _equal(_weights(d), _weights(alone)), spec.name
        if spec.uses_meta:
            assert _equal(_weights(d, "meta"), _weights(alone, "meta")), spec.name
        assert _strip_timing(d) == _strip_timing(alone), spec.name


def test_shared_prefix_refuses_mixed_seeds(tmp_path):
    with pytest.raises(ValueError, match="one seed"):
        tr.train_shared_prefix(_profile(), [RunSpec("solo", seed=0), RunSpec("solo", seed=1)], _acts(),
                               [tmp_path / "a", tmp_path / "b"], device="cpu")


@pytest.mark.parametrize("signame", ["SIGINT", "SIGUSR1"])
def test_an_interrupt_stops_after_the_step_with_a_checkpoint_and_resumes_bitwise(tmp_path, monkeypatch, signame,
                                                                                 interactive_sigint):
    """Ctrl-C (or the pool's stop signal) during a step: the step completes, a checkpoint of exactly that step is
    written (not only the last periodic one), KeyboardInterrupt names the run, and a resume ends bitwise equal."""
    import os
    import signal

    prof, acts, spec = _profile(checkpoint_every=100), _acts(), RunSpec("joint", lambda2=1.0, sigma2=0.5)
    ref = tr.train_run(prof, spec, acts, tmp_path / "ref", progress=False, device="cpu")

    def interrupt(step):
        if step == 5:
            os.kill(os.getpid(), getattr(signal, signame))

    monkeypatch.setattr(tr, "_step_hook", interrupt)
    with pytest.raises(KeyboardInterrupt, match=rf"joint.*stopped by {signame} after step 5 .*resumes"):
        tr.train_run(prof, spec, acts, tmp_path / "cut", progress=False, device="cpu")
    monkeypatch.setattr(tr, "_step_hook", None)
    ck = json.loads((tmp_path / "cut" / "checkpoint" / "checkpoint.json").read_text())
    assert ck["step"] == 5 and ck["metrics_lines"] == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored (the fixture's)
    tr.train_run(prof, spec, acts, tmp_path / "cut", progress=False, device="cpu")
    assert _equal(_weights(ref), _weights(tmp_path / "cut"))
    assert _equal(_weights(ref, "meta"), _weights(tmp_path / "cut", "meta"))


def _train_in_subprocess(out, threads):
    import subprocess
    import sys
    code = (f"import torch, numpy as np; torch.set_num_threads({threads});"
            "import paperlib.sae.trainer as tr; from paperlib.sae.arms import RunSpec;"
            "from tests.sae.test_trainer import _profile, _acts;"
            f"tr.train_run(_profile(n_latents=256, batch_size=128), RunSpec('joint', lambda2=1.0, sigma2=0.5), "
            f"_acts(T=1024, d=64), {str(out)!r}, progress=False, device='cpu')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))


def test_same_seed_gives_the_same_bytes_in_other_processes_and_thread_counts(tmp_path):
    """Case 9 of the reliability issue on one machine: a run trained in separate processes with 1 and with 2
    intra-op threads writes byte-identical weights (primary and meta)."""
    _train_in_subprocess(tmp_path / "t1", 1)
    _train_in_subprocess(tmp_path / "t2", 2)
    for sub in ("sae", "meta"):
        assert (tmp_path / "t1" / sub / "model.safetensors").read_bytes() == \
            (tmp_path / "t2" / sub / "model.safetensors").read_bytes()
