"""Provenance and atomic I/O."""


from __future__ import annotations

import pytest


def test_git_revision_ignores_published_outputs(tmp_path):
    """A run rewrites figures/ and tables/; only other tracked changes make the revision dirty."""
    import shutil
    import subprocess

    from paperlib.config.io import git_revision

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "t.md").write_text("a")
    (tmp_path / "code.py").write_text("a")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(git + ["add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "x"], cwd=tmp_path, check=True)
    clean = git_revision(tmp_path)
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "tables" / "t.md").write_text("b")
    assert git_revision(tmp_path) == clean
    (tmp_path / "code.py").write_text("b")
    assert git_revision(tmp_path) == clean + "-dirty"
    assert git_revision(tmp_path / "tables") == clean + "-dirty"  # from a subfolder too



def test_repo_root_holds_the_published_outputs():
    from paperlib.config import paths

    assert (paths.REPO_ROOT / "paperlib" / "__init__.py").exists()
    assert (paths.REPO_ROOT / "tables").is_dir() and (paths.REPO_ROOT / "notebooks").is_dir()
