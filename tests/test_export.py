"""``python -m paperlib.export`` is the export command line of :mod:`paperlib.stages.export`."""

import subprocess
import sys

import pytest

from paperlib.stages import export


def test_python_m_paperlib_export_runs_the_export_command_line(tmp_artifacts):
    out = subprocess.run([sys.executable, "-m", "paperlib.export", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--accept-prenormalised" in out.stdout and "--run" in out.stdout and "--all" in out.stdout
    assert "TARGET" in out.stdout and "OUT" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "paperlib.export", "--profile", "smoke"], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "--run" in bad.stderr  # argparse names the missing choice


@pytest.mark.parametrize("argv,want", [
    (["default", "out"], ("default", None, "out")),
    (["default/joint-l0.3-s1", "out"], ("default", ["joint-l0.3-s1"], "out")),
    (["default", "--out", "o2"], ("default", None, "o2")),
    (["--profile", "smoke", "--all", "--out", "o"], ("smoke", None, "o")),
    (["--profile", "smoke", "--run", "solo", "--run", "joint-l0.3-s1", "--out", "o"],
     ("smoke", ["solo", "joint-l0.3-s1"], "o")),
])
def test_both_command_forms_name_the_same_export(monkeypatch, argv, want):
    seen = {}
    monkeypatch.setattr(export, "trained_runs", lambda p: ["solo"])
    monkeypatch.setattr(export, "export_runs", lambda p, runs, out, **kw: seen.update(args=(p, runs, out)) or [])
    assert export.main(argv) == 0
    profile, runs, out = want
    assert seen["args"] == (profile, ["solo"] if runs is None else runs, out)


@pytest.mark.parametrize("argv,message", [
    (["default"], "OUT"), (["default", "out", "--all"], "not both"), ([], "TARGET OUT"),
    (["--profile", "smoke", "--out", "o"], "--run NAME"), (["--profile", "smoke", "--all"], "--out DIR"),
])
def test_incomplete_command_lines_say_what_is_missing(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        export.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
