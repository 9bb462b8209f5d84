"""``python -m paperlib.export`` is the export command line of :mod:`paperlib.stages.export`."""

import subprocess
import sys


def test_python_m_paperlib_export_runs_the_export_command_line(tmp_artifacts):
    out = subprocess.run([sys.executable, "-m", "paperlib.export", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--accept-prenormalised" in out.stdout and "--run" in out.stdout and "--all" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "paperlib.export", "--profile", "smoke"], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "--run" in bad.stderr  # argparse names the missing choice
