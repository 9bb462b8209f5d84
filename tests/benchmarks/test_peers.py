"""benchmarks/peers.py: ratios and table formatting on fake worker records, the install guard, and the
worker protocol run in-process for paperlib at tiny shapes (no subprocess, no network, no timing asserts)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from paperlib.config.paths import artifacts_root

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"
_spec = importlib.util.spec_from_file_location("bench_peers", _PATH)
peers = importlib.util.module_from_spec(_spec)
sys.modules["bench_peers"] = peers
_spec.loader.exec_module(peers)

TINY = dict(d=8, n=128, k=4, batch=32, pool=2, warmup=1, steps=2, reps=2, threads=1, seed=0)


def _fake_records() -> dict[str, dict]:
    return {
        "dictionary-learning": dict(impl="dictionary-learning", error="not installable: pip says no"),
        "sae-lens": dict(impl="sae-lens", version="6.54.12", tok_s=500.0, bound_tok_s=12_000.0),
        "paperlib-joint": dict(impl="paperlib-joint", version="0.1.0", tok_s=900.0, bound_tok_s=9_000.0),
        "paperlib-solo": dict(impl="paperlib-solo", version="0.1.0", tok_s=1_000.0, bound_tok_s=10_000.0),
    }


def _table(rows: list[dict]) -> dict:
    return dict(date="2026-12-01 15:00:00 UTC", torch="2.13.0+cpu",
                machine=dict(gflops_start=71.25, gflops_end=69.5, loadavg_start=[1.5, 1.0, 0.5],
                             loadavg_end=[2.0, 1.25, 0.75], cpus=2),
                protocol=dict(d=576, n=4608, k=32, batch=4096, pool=4, warmup=2, steps=5, reps=3, stat="min",
                              threads=2, seed=0, omp_wait_policy="PASSIVE"),
                rows=rows)


def test_rows_ratios_and_order():
    rows = peers.build_rows(_fake_records(), notes={"dictionary-learning": "torchvision removed"})
    assert [r["implementation"] for r in rows] == ["paperlib-solo", "paperlib-joint", "sae-lens",
                                                   "dictionary-learning"]
    by = {r["implementation"]: r for r in rows}
    assert by["paperlib-solo"]["vs_solo"] == pytest.approx(1.0)
    assert by["paperlib-solo"]["vs_bound"] == pytest.approx(0.1)
    assert by["paperlib-joint"]["vs_solo"] == pytest.approx(0.9)
    assert by["paperlib-joint"]["vs_bound"] == pytest.approx(0.1)
    assert by["sae-lens"]["vs_solo"] == pytest.approx(0.5)
    assert by["sae-lens"]["vs_bound"] == pytest.approx(500 / 12_000)  # its own process's bound, not solo's
    dl = by["dictionary-learning"]
    assert dl["tok_s"] is None and dl["vs_solo"] is None and dl["vs_bound"] is None
    assert dl["error"] == "not installable: pip says no" and dl["version"] == "(torchvision removed)"


def test_rows_without_solo_have_no_solo_ratio():
    recs = _fake_records()
    recs["paperlib-solo"] = dict(impl="paperlib-solo", error="failed (exit 1): boom")
    by = {r["implementation"]: r for r in peers.build_rows(recs)}
    assert by["sae-lens"]["vs_solo"] is None
    assert by["sae-lens"]["vs_bound"] == pytest.approx(500 / 12_000)


def test_format_table():
    text = peers.format_table(_table(peers.build_rows(_fake_records())))
    lines = text.splitlines()
    assert "2026-12-01 15:00:00 UTC" in lines[0] and "threads 2" in lines[0] and "PASSIVE" in lines[0]
    assert "start 1.50 1.00 0.50" in text and "end 2.00 1.25 0.75" in text
    assert "start 71.2 GFLOP/s" in text and "end 69.5 GFLOP/s" in text
    head = next(i for i, ln in enumerate(lines) if ln.startswith("implementation"))
    assert lines[head].split() == ["implementation", "version", "tok/s", "×", "solo", "×", "bound", "bound",
                                   "tok/s"]
    body = {ln.split()[0]: ln.split() for ln in lines[head + 2: head + 6]}
    assert body["paperlib-solo"] == ["paperlib-solo", "0.1.0", "1,000", "1.00", "0.100", "10,000"]
    assert body["paperlib-joint"][2:] == ["900", "0.90", "0.100", "9,000"]
    assert body["sae-lens"][2:] == ["500", "0.50", "0.042", "12,000"]
    assert "not installable: pip says no" in lines[head + 5]
    # the numeric columns line up: every data row of fixed width ends at the header's end
    assert len(lines[head + 2]) == len(lines[head + 3]) == len(lines[head + 4]) == len(lines[head])


def test_format_table_with_only_errors():
    rows = peers.build_rows({"sae-lens": dict(impl="sae-lens", error="not installable: x")})
    text = peers.format_table(_table(rows))
    assert "sae-lens" in text and "not installable: x" in text


def test_torch_problem():
    ok = {"install": [{"metadata": {"name": "torch", "version": "2.13.0+cpu"}},
                      {"metadata": {"name": "sae-lens", "version": "6.54.12"}}]}
    assert peers.torch_problem(ok, "2.13.0+cpu") is None
    assert peers.torch_problem({"install": []}, "2.13.0+cpu") is None  # torch already there
    cuda = {"install": [{"metadata": {"name": "torch", "version": "2.13.0"}}]}
    assert "torch 2.13.0 instead of 2.13.0+cpu" in peers.torch_problem(cuda, "2.13.0+cpu")
    nv = {"install": [{"metadata": {"name": "nvidia_cublas_cu12", "version": "12.8"}}]}
    assert "nvidia-cublas-cu12" in peers.torch_problem(nv, "2.13.0+cpu")


def test_pool_is_fixed_by_the_seed():
    a, b, c = peers.make_pool(4, 3, 2, 0), peers.make_pool(4, 3, 2, 0), peers.make_pool(4, 3, 2, 1)
    assert len(a) == 2 and a[0].shape == (3, 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])


def test_encoder_bound_is_relu_of_the_matmul():
    bound = peers.encoder_bound(8, 16, 0)
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)) / 8**0.5
    for rows in (5, 5, 3):  # a kept buffer, replaced when the batch size changes
        x = torch.randn(rows, 8)
        out = bound(x)
        torch.testing.assert_close(out, torch.relu(x @ w))
        assert out.shape == (rows, 16) and not out.requires_grad


@pytest.mark.parametrize("impl", ["paperlib-solo", "paperlib-joint"])
def test_protocol_in_process(impl):
    threads = torch.get_num_threads()
    rec = peers.run_protocol(impl, **TINY)
    assert torch.get_num_threads() == threads  # restored
    json.dumps(rec)  # what the worker prints
    assert rec["impl"] == impl and rec["torch"] == torch.__version__ and rec["threads"] == 1
    assert len(rec["step_seconds"]) == len(rec["bound_seconds"]) == 2
    block = 10 if impl == "paperlib-joint" else 1  # the default profile's n_p: whole blocks with their meta phase
    assert rec["steps"] == (10 if impl == "paperlib-joint" else 2)  # timed steps rounded up to whole blocks
    assert rec["warmup"] == block and rec["bound_steps"] == 2
    assert rec["tok_s"] == pytest.approx(rec["steps"] * 32 / min(rec["step_seconds"]))
    assert rec["bound_tok_s"] == pytest.approx(2 * 32 / min(rec["bound_seconds"]))
    med = peers.run_protocol(impl, **{**TINY, "reps": 3}, stat="median")
    assert med["tok_s"] == pytest.approx(med["steps"] * 32 / sorted(med["step_seconds"])[1])


def test_worker_prints_one_json_line(capsys):
    args = [f"--{k}={v}" for k, v in TINY.items()]
    peers.main(["--worker", "paperlib-solo", *args])
    out = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(peers.RESULT_PREFIX)]
    assert len(out) == 1
    rec = json.loads(out[0][len(peers.RESULT_PREFIX):])
    assert rec["impl"] == "paperlib-solo" and rec["n"] == 128 and rec["batch"] == 32


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="impl='nope'"):
        peers.run_protocol("nope", **TINY)
    with pytest.raises(ValueError, match="stat='mean'"):
        peers.run_protocol("paperlib-solo", **TINY, stat="mean")
    with pytest.raises(ValueError, match="k=200 exceeds n=128"):
        peers.run_protocol("paperlib-solo", **{**TINY, "k": 200})
    assert peers.parse_args([]).n == 8 * 576


def test_main_assembles_and_writes_the_table(tmp_artifacts, monkeypatch, capsys):
    monkeypatch.setattr(peers, "matmul_gflops", lambda threads: 50.0)
    monkeypatch.setattr(peers, "ensure_venv", lambda peer, root, install=True: (None, "not installable: test", ""))
    fake = {"paperlib-solo": 1_000.0, "paperlib-joint": 800.0}
    monkeypatch.setattr(peers, "run_worker", lambda py, impl, args: dict(
        impl=impl, version="0.1.0", tok_s=fake[impl], bound_tok_s=4_000.0))
    table = peers.main(["--no-install"])
    out = artifacts_root() / "bench" / "peers.json"
    assert out.exists() and json.loads(out.read_text())["rows"] == table["rows"]
    by = {r["implementation"]: r for r in table["rows"]}
    assert by["paperlib-joint"]["vs_solo"] == pytest.approx(0.8)
    assert by["sae-lens"]["error"] == by["dictionary-learning"]["error"] == "not installable: test"
    assert table["machine"]["gflops_start"] == table["machine"]["gflops_end"] == 50.0
    assert "not installable: test" in capsys.readouterr().out
