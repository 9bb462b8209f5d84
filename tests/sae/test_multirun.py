"""One-pass multi-run training (issue 19, item 2): every run's weights equal a pass of that run alone, resuming is
bitwise exact, the shuffle buffer draws distinct rows and loses none."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from paperlib.config.profiles import get_profile
from paperlib.data.stream import CacheSource, ChunkPlan
from paperlib.sae import multirun
from paperlib.sae.multirun import PassConfig, ShuffleBuffer, train_one_pass

PROFILE = get_profile("smoke", n_latents=48, k=4, n_meta=6, k_meta=2, batch_size=32, train_epochs=2.0,
                      checkpoint_every=3, n_primary_steps=2, n_meta_steps=1, dead_after=4)
PER_ROW, ROWS, D = 8, 40, 12
PASS = PassConfig(rows_per_chunk=3, buffer_batches=2, stream_seed=1)
RUNS = ["solo", "joint-l0.3-s1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _acts() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((ROWS * PER_ROW, D)) * 2).astype(np.float16)


def _weights(d) -> dict[str, bytes]:
    return {f.relative_to(d).as_posix(): f.read_bytes() for f in sorted(d.rglob("*.safetensors"))}


def _metrics(d) -> list[dict]:
    recs = [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tok_per_s"} for r in recs]


def _train(root, runs, **kw):
    return train_one_pass(PROFILE, runs, CacheSource(_acts(), PER_ROW), root, pass_cfg=PASS, progress=False,
                          device="cpu", **kw)


def test_one_pass_over_several_runs_equals_each_run_alone(tmp_path):
    both = _train(tmp_path / "both", RUNS)
    for name in ["solo", "joint-l0.3-s1"]:
        alone = _train(tmp_path / name, [name])
        w = _weights(both[name])
        assert w and w == _weights(alone[name])
        assert _metrics(both[name]) == _metrics(alone[name])
    assert any(k.startswith("meta/") for k in _weights(both["joint-l0.3-s1"]))
    steps = json.loads((both["solo"] / "done.json").read_text())["steps"]
    assert steps == round(2.0 * (ROWS * PER_ROW // 32)) == len(_metrics(both["solo"]))


def test_runs_with_the_same_seed_share_their_data_order_and_seeds_differ(tmp_path):
    out = _train(tmp_path / "r", ["solo", "solo-seed1"])
    a, b = _weights(out["solo"]), _weights(out["solo-seed1"])
    assert a != b


def test_killed_pass_resumes_to_the_same_weights(tmp_path, monkeypatch):
    ref = _train(tmp_path / "ref", RUNS)

    def kill(g):
        if g == 11:  # after a checkpoint (steps 3, 6, ...) and some steps past it
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(multirun, "_chunk_hook", kill)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", RUNS)
    assert not (tmp_path / "cut" / "solo" / "done.json").exists()
    assert (tmp_path / "cut" / "solo" / "checkpoint" / "checkpoint.json").exists()
    monkeypatch.setattr(multirun, "_chunk_hook", None)
    out = _train(tmp_path / "cut", RUNS)
    for name, d in out.items():
        assert _weights(d) == _weights(ref[name])
        assert _metrics(d) == _metrics(ref[name])


@pytest.mark.parametrize("signame", ["SIGINT", "SIGUSR1"])
def test_an_interrupt_stops_the_pass_at_a_chunk_boundary_with_checkpoints_and_resumes_bitwise(
        tmp_path, monkeypatch, signame, interactive_sigint):
    """Ctrl-C (or the pool's stop signal) during a pass: the chunk completes, every unfinished run checkpoints the
    step it reached (not only its last periodic checkpoint), KeyboardInterrupt names the runs, and a resume ends
    bitwise equal to an uninterrupted pass."""
    ref = _train(tmp_path / "ref", RUNS)
    reached = {}

    def interrupt(g):
        if g == 9:  # the runs are then past a periodic checkpoint (every 3 steps)
            os.kill(os.getpid(), getattr(signal, signame))

    monkeypatch.setattr(multirun, "_chunk_hook", interrupt)
    with pytest.raises(KeyboardInterrupt, match=rf"stopped by {signame} at stream position 9: solo after step \d+"):
        _train(tmp_path / "cut", RUNS)
    monkeypatch.setattr(multirun, "_chunk_hook", None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored (the fixture's)
    for name in RUNS:
        ck = json.loads((tmp_path / "cut" / name / "checkpoint" / "checkpoint.json").read_text())
        reached[name] = ck["step"]
        assert not (tmp_path / "cut" / name / "done.json").exists()
    assert min(reached.values()) % PROFILE.sae.checkpoint_every != 0  # a step between periodic checkpoints was kept
    out = _train(tmp_path / "cut", RUNS)
    for name, d in out.items():
        assert _weights(d) == _weights(ref[name])
        assert _metrics(d) == _metrics(ref[name])


def test_runs_checkpointed_at_different_positions_resume_together(tmp_path):
    ref = _train(tmp_path / "ref", RUNS)
    _train(tmp_path / "cut", ["solo"], max_steps=4)
    _train(tmp_path / "cut", ["solo", "joint-l0.3-s1"], max_steps=9)  # solo starts further along the stream
    out = _train(tmp_path / "cut", RUNS)
    for name, d in out.items():
        assert _weights(d) == _weights(ref[name])


def test_a_finished_run_is_skipped_and_another_pass_config_refused(tmp_path):
    _train(tmp_path / "r", ["solo"])
    _train(tmp_path / "r", ["solo"])  # done: nothing to do
    with pytest.raises(ValueError, match="another run or pass configuration"):
        train_one_pass(PROFILE, ["solo"], CacheSource(_acts(), PER_ROW), tmp_path / "r",
                       pass_cfg=PassConfig(rows_per_chunk=4, buffer_batches=2), progress=False, device="cpu")


def test_shuffle_buffer_draws_distinct_rows_and_loses_none():
    buf = ShuffleBuffer(capacity=20, batch_size=8, seed=3)
    seen = []
    fed = torch.arange(100, dtype=torch.float32)[:, None]
    for i in range(0, 100, 7):
        buf.add(fed[i:i + 7])
        while buf.ready():
            b = buf.pop()
            assert len(set(b[:, 0].tolist())) == 8
            seen += b[:, 0].tolist()
    left = buf.rows[:buf.n, 0].tolist()
    assert sorted(seen + left) == list(range(100))


def test_bad_settings_name_the_parameter():
    with pytest.raises(ValueError, match="rows_per_chunk=0"):
        PassConfig(rows_per_chunk=0).validate()
    with pytest.raises(ValueError, match="capacity=4 must be >= batch_size=8"):
        ShuffleBuffer(4, 8, 0)
    with pytest.raises(ValueError, match="rows_per_chunk=0"):
        ChunkPlan(10, 0, 4)
    with pytest.raises(ValueError, match="per_row=3 must divide"):
        CacheSource(np.zeros((10, 2)), 3)


def test_chunk_plan_visits_every_chunk_once_per_epoch():
    plan = ChunkPlan(n_rows=10, rows_per_chunk=3, per_row=2, stream_seed=0)
    assert plan.n_chunks == 4
    for epoch in range(2):
        rows = sorted(plan.rows(epoch * 4 + j) for j in range(4))
        assert rows == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [plan.rows(j) for j in range(4)] != [plan.rows(4 + j) for j in range(4)]
