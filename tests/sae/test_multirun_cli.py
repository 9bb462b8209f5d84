"""``python -m paperlib train-many``: one pass over the stream from the command line (issue 19, item 2)."""

from __future__ import annotations

import json

import pytest

from paperlib.cli import main
from paperlib.config import paths

PROFILE = "paper-arch-smoke-gpt2"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_many_in_stream_mode_trains_without_a_cache(tmp_artifacts, capsys):
    assert main(["train-many", "--profile", PROFILE, "--run", "solo", "--run", "solo-seed1", "--stream",
                 "--max-steps", "2", "--quiet"]) == 0
    recs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["run"] for r in recs] == ["solo", "solo-seed1"] and not any(r["done"] for r in recs)
    assert all((paths.profile_dir(PROFILE) / "one-pass" / r / "checkpoint" / "checkpoint.json").exists()
               for r in ("solo", "solo-seed1"))
    assert all(str(paths.profile_dir(PROFILE) / "one-pass") in r["dir"] for r in recs)
    assert not paths.activations_dir(PROFILE).exists()
    assert (paths.profile_dir(PROFILE) / "one-pass" / "tokens" / "train.npy").exists()  # tokens only, once


def test_train_many_names_a_bad_setting(tmp_artifacts, capsys):
    assert main(["train-many", "--profile", PROFILE, "--run", "solo", "--buffer-batches", "0", "--stream",
                 "--quiet"]) == 1
    assert "buffer_batches=0" in capsys.readouterr().err
