"""Artifacts checked before they are trusted (issue 17, case 3): manifests carry shapes and checksums, a
shortened or changed activation file, a training log shorter than its checkpoint and damaged checkpoints,
manifests and result files each give one error naming the file and what to delete."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import paperlib.sae.trainer as tr
from paperlib.config.io import ArtifactError
from paperlib.config.profiles import get_profile
from paperlib.data import activations
from paperlib.metrics.calibration import Calibration
from paperlib.reproduce import verify
from paperlib.stages import train
from paperlib.stages.run import Run
from tests.helpers import tiny_profile

D = 16


def _profile(**kw):
    return get_profile("smoke", **{**dict(n_latents=48, k=4, n_meta=8, k_meta=2, batch_size=32, train_epochs=1.0,
                                          checkpoint_every=2, dead_after=2, k_aux=8), **kw})


def _acts(T=256):
    g = np.random.default_rng(0)
    return (g.standard_normal((T, D)) * 2 + g.standard_normal(D)).astype(np.float16)


@pytest.fixture()
def built(tmp_artifacts):
    p = tiny_profile()
    activations.load_cache(p, progress=False)
    return p, activations.activations_dir(p)


def test_shorter_or_changed_activation_files_are_refused(built, monkeypatch):
    p, root = built
    full = np.load(root / "train.npy")
    np.save(root / "train.npy", full[: len(full) // 2])  # a valid, shorter array
    with pytest.raises(ArtifactError, match=r"train.npy: shape \(\d+, \d+\) does not match the manifest's .*"
                                            r"Delete .*activations and re-run"):
        activations.load_cache(p).acts("train")
    cal = np.load(root / "calibration.npy", mmap_mode="r+")
    cal[3, 3] += 1  # changed in place: same shape and size
    cal.flush()
    del cal
    with pytest.raises(ArtifactError, match="calibration.npy: content changed since extraction"):
        activations.load_cache(p).acts("calibration")
    monkeypatch.setattr(activations, "VERIFY_ON_OPEN_BYTES", 0)  # a large file: checked on demand only
    activations.load_cache(p).acts("calibration")
    problems = verify(p)
    assert any("calibration.npy: content changed" in x for x in problems), problems


def test_damaged_manifest_names_the_cache_to_delete(built):
    p, root = built
    (root / "manifest.json").write_text('{"settings": ')
    with pytest.raises(ArtifactError, match=r"manifest.json: damaged JSON .* Delete .*activations and re-run"):
        activations.load_cache(p)


def test_metrics_log_shorter_than_its_checkpoint_is_refused(tmp_path):
    out = tmp_path / "run"
    tr.train_run(_profile(), "solo", _acts(), out, progress=False, device="cpu", max_steps=4)
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:2]))
    with pytest.raises(ArtifactError, match=r"metrics.jsonl: 2 complete lines, but the checkpoint was written "
                                            r"after 4.* Delete .*run and re-run"):
        tr.train_run(_profile(), "solo", _acts(), out, progress=False, device="cpu")
    assert not tr.is_done(out)


def test_truncated_metrics_of_a_finished_run_are_refused(tmp_path):
    out = tmp_path / "run"
    tr.train_run(_profile(), "solo", _acts(), out, progress=False, device="cpu")
    assert len(tr.read_metrics_file(out)) == 8
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:3]))
    with pytest.raises(ArtifactError, match="3 records, but the finished run took 8 steps"):
        tr.read_metrics_file(out)
    (out / "config.json").write_text("{")
    with pytest.raises(ArtifactError, match=r"config.json: damaged JSON"):
        tr.read_config_file(out)


@pytest.mark.parametrize("victim", ["state", "checkpoint.json"])
def test_damaged_checkpoint_names_the_file_and_the_fix(tmp_path, victim):
    out = tmp_path / "run"
    tr.train_run(_profile(), "solo", _acts(), out, progress=False, device="cpu", max_steps=4)
    ckpt = out / "checkpoint"
    path = next(ckpt.glob("state-*.safetensors")) if victim == "state" else ckpt / "checkpoint.json"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ArtifactError, match=rf"{path.name}: damaged .* Delete {ckpt} and re-run"):
        tr.train_run(_profile(), "solo", _acts(), out, progress=False, device="cpu")
    shutil.rmtree(ckpt)  # the fix the message names works
    tr.train_run(_profile(), "solo", _acts(), out, progress=False, device="cpu")
    assert tr.is_done(out) and len(tr.read_metrics_file(out)) == 8


def test_damaged_results_and_weights_name_the_folder(tmp_artifacts, tmp_path, monkeypatch):
    d = tmp_path / "cal"
    d.mkdir()
    (d / "thresholds.safetensors").write_bytes(b"\x00" * 10)
    (d / "calibration.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"thresholds.safetensors: unreadable .* Delete .*cal and re-run"):
        Calibration.load(d)

    class Fake:
        d = D

        def acts(self, name):
            return _acts()

    monkeypatch.setattr(train, "load_cache", lambda profile: Fake())
    p = _profile()
    run = Run.of(p, "solo")
    train.ensure_trained(p, [run], progress=False, n_workers=1)
    train.load_run(run)
    w = next((run.dir / "sae").glob("*.safetensors"))
    w.write_bytes(w.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(ArtifactError, match=r"sae: weights changed since training .* Delete .*solo and re-run"):
        train.load_run(run)
    assert any("sae: weights changed since training" in x for x in verify(p)), verify(p)


@pytest.fixture()
def fake_pipeline(tmp_artifacts, monkeypatch):
    """reproduce.run with every notebook replaced by a recorder of where it would write."""
    import papermill

    from paperlib import reproduce
    ran = []

    def execute(src, dst, parameters, cwd, **kw):
        ran.append((Path(src).name, os.environ.get("PAPERLIB_OUTPUTS")))
        Path(dst).write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setattr(reproduce, "matmul_gflops", lambda: 100.0)
    monkeypatch.setattr(reproduce, "write_summary", lambda *a, **kw: tmp_artifacts / "summary.md")
    return reproduce, ran


def test_reproduce_records_skips_beside_the_artifacts_and_outputs_it_describes(fake_pipeline, tmp_path,
                                                                             monkeypatch):
    reproduce, ran = fake_pipeline
    assert reproduce.run("smoke") == 0 and len(ran) == 8
    assert (reproduce.record_dir("smoke") / "stages.json").exists()
    assert str(reproduce.record_dir("smoke")).startswith(str(tmp_path))
    ran.clear()
    assert reproduce.run("smoke") == 0 and ran == []  # unchanged: skipped
    monkeypatch.setenv("PAPERLIB_OUTPUTS", str(tmp_path / "new-outputs"))
    reproduce.run("smoke")
    assert len(ran) == 8  # a new outputs folder is filled, not skipped
    ran.clear()
    monkeypatch.setenv("PAPERLIB_ARTIFACTS", str(tmp_path / "empty-artifacts"))
    reproduce.run("smoke")
    assert len(ran) == 8  # an empty artifacts folder is rebuilt


def test_reproduce_resolves_relative_locations_once(fake_pipeline, tmp_path, monkeypatch):
    reproduce, ran = fake_pipeline
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAPERLIB_OUTPUTS", "rel-outputs")
    monkeypatch.setenv("PAPERLIB_ARTIFACTS", "rel-artifacts")
    reproduce.run("smoke")
    assert {o for _, o in ran} == {str(tmp_path / "rel-outputs")}
    assert os.environ["PAPERLIB_ARTIFACTS"] == str(tmp_path / "rel-artifacts")


def test_verify_command_prints_each_problem_and_exits_1(built, capsys, monkeypatch):
    """``python -m paperlib.reproduce --verify``: the full check of a profile's artifacts, nothing run."""
    import paperlib.reproduce as rep

    p, root = built
    monkeypatch.setattr(rep, "get_profile", lambda name: p)  # the CLI names a profile; the test's is overridden
    monkeypatch.setattr(rep, "run", lambda *a, **k: pytest.fail("--verify must not run the pipeline"))
    assert rep.main(["--profile", "smoke", "--verify"]) == 0
    assert "artifacts intact" in capsys.readouterr().out
    monkeypatch.setattr(activations, "VERIFY_ON_OPEN_BYTES", 0)
    cal = np.load(root / "calibration.npy", mmap_mode="r+")
    cal[0, 0] += 1
    cal.flush()
    del cal
    assert rep.main(["--profile", "smoke", "--verify"]) == 1
    assert "calibration.npy: content changed since extraction" in capsys.readouterr().out
