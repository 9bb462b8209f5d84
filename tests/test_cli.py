"""``python -m paperlib <stage> --profile P --run NAME`` (issue 19, item 3): the commands of a 2-run plan, run one
by one in subprocesses as a scheduler would, give the results of the Python API, and the notebooks' API then
finds every stage fresh."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from paperlib import cli
from paperlib.config.profiles import get_profile
from paperlib.stages import cache
from paperlib.stages.calibrate import ensure_calibration
from paperlib.stages.ce import ensure_ce
from paperlib.stages.cooccur import ensure_cooccurrence
from paperlib.stages.recon import ensure_reconstruction
from paperlib.stages.run import Run
from paperlib.stages.train import ensure_trained

PROFILE = "paper-arch-smoke-gpt2"
PER_RUN = ("train", "calibrate", "cooccur", "recon", "ce")


def _cli(args: list[str], artifacts) -> subprocess.CompletedProcess:
    env = {**os.environ, "PAPERLIB_ARTIFACTS": str(artifacts), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "paperlib", *args, "--quiet"], env=env, capture_output=True,
                          text=True, timeout=600)


def _api(run: Run) -> dict[str, dict]:
    ensure_trained(run.profile, [run], progress=False, n_workers=1)
    cal = ensure_calibration(run, progress=False)
    return {
        "train": {"run": run.name, "dir": str(run.dir), "weights": run.weights_fingerprint()},
        "calibrate": {"run": run.name, "mode": cal.mode, "n_tokens": cal.n_tokens, "n_dead": int(cal.dead.sum())},
        "cooccur": ensure_cooccurrence(run, progress=False).to_json(),
        "recon": ensure_reconstruction(run, progress=False).to_json(),
        "ce": ensure_ce(run.profile, [run], progress=False)[run.name].to_json(),
    }


def _plain(d: dict) -> dict:
    return json.loads(json.dumps(d, sort_keys=True))


def test_stage_commands_one_by_one_equal_the_python_api(tmp_artifacts, monkeypatch):
    cli_root, api_root = tmp_artifacts / "cli", tmp_artifacts / "api"
    plan = _cli(["plan", "--profile", PROFILE], cli_root)
    assert plan.returncode == 0, plan.stderr
    names = plan.stdout.split()
    assert names == ["solo", "joint-l0.3-s1"]
    assert _cli(["extract", "--profile", PROFILE], cli_root).returncode == 0
    got: dict[tuple[str, str], dict] = {}
    for name in names:
        for stage in PER_RUN:
            proc = _cli([stage, "--profile", PROFILE, "--run", name], cli_root)
            assert proc.returncode == 0, f"{stage} {name}: {proc.stderr}"
            got[stage, name] = json.loads(proc.stdout.strip().splitlines()[-1])
    monkeypatch.setenv("PAPERLIB_ARTIFACTS", str(api_root))
    p = get_profile(PROFILE)
    for name in names:
        want = _api(Run.of(p, name))
        for stage in PER_RUN:
            if stage == "train":
                assert got[stage, name]["weights"] == want[stage]["weights"], name  # bitwise the same SAE
            else:
                assert got[stage, name] == _plain(want[stage]), (stage, name)
    monkeypatch.setenv("PAPERLIB_ARTIFACTS", str(cli_root))
    stale = cache.stale_stages([Run.of(p, n) for n in names], p)
    assert {s: v for s, v in stale.items() if s != "selection" and v} == {}


def test_bad_command_lines_exit_2_naming_the_problem(capsys):
    for argv, needle in [(["train", "--profile", "nope", "--run", "solo"], "unknown profile 'nope'"),
                         (["ce", "--profile", PROFILE, "--run", "bogus-x"], "cannot parse run name 'bogus-x'"),
                         (["train", "--profile", PROFILE], "the following arguments are required: --run"),
                         (["fit", "--profile", PROFILE], "invalid choice: 'fit'")]:
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2 and needle in capsys.readouterr().err, argv


def test_a_stage_of_an_untrained_run_exits_1(tmp_artifacts, capsys):
    assert cli.main(["calibrate", "--profile", PROFILE, "--run", "solo", "--quiet"]) == 1
    assert "is not trained" in capsys.readouterr().err


def test_plan_prints_one_run_per_line(capsys):
    assert cli.main(["plan", "--profile", "smoke", "--sae", "solo,joint"]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["solo", "joint-l0.3-s1"]
