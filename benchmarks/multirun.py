"""CPU ratio of one-pass multi-run training to per-run training for the default grid (issue 19, item 2).

For R runs of a profile's plan (default: the default profile's 24 runs) and about S primary steps each, at the
profile's geometry (default: d = 576, n = 2304, B = 2048), in one process with the same thread count:

- cache mode: **per-run** = R calls of :func:`paperlib.sae.trainer.train_run` (today's trainer: each run reads its
  own batches from the memory-mapped cache), **one pass** = one :func:`paperlib.sae.multirun.train_one_pass` over
  the R runs (each chunk read once);
- stream mode (the language model produces the activations, no cache): **per-run** = a stream pass of one run
  alone (the LM forward paid by every run), measured on ``--stream-per-run`` runs and multiplied to R; **one pass**
  = one stream pass over the R runs (the LM forward paid once).

Each arm is timed from start to its checkpoint at ``max_steps`` (reading or producing activations, filling the
shuffle buffer, training, writing the checkpoint); the LM's load and the tokenisation are outside the timings.
Cost is compared per run-step in CPU seconds of the process (``ratio = per-run CPU s per run-step / one-pass CPU s
per run-step``; > 1: the one pass is cheaper): on a shared machine wall-clock time moves by 2x with the other jobs'
load between arms measured minutes apart, CPU time hardly (the wall-clock ratio is printed beside it). The cache
is the profile's when it is complete (read-only), else a random fp16 array of the
training range's shape in a temporary folder. Outputs go to a temporary folder; the table also goes to
``artifacts/bench/multirun.json``.

Usage: ``.venv/bin/python benchmarks/multirun.py [--profile default] [--runs 24] [--steps 8] [--threads 1]
[--no-stream]``; ``--tiny`` runs the ``paper-arch-smoke-gpt2`` profile in seconds (tests). On a shared machine
use ``--threads 1`` (the default) or ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads slow small ops a lot
under contention.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paperlib.config import paths
from paperlib.config.io import ArtifactError, read_json, write_json
from paperlib.config.profiles import Profile, get_profile
from paperlib.data.activations import ActivationCache, CacheMismatchError, cache_settings, load_cache
from paperlib.data.corpus import token_ranges
from paperlib.data.lm import load_lm
from paperlib.data.stream import CacheSource, LMSource
from paperlib.sae.multirun import PassConfig, default_pass_config, train_one_pass
from paperlib.sae.trainer import train_run
from paperlib.stages.select import training_plan

SYNTHETIC_D = 576


def training_array(p: Profile, tmp: Path) -> tuple[Any, np.ndarray | None, str]:
    """The profile's cached training activations (and token rows) when complete, else a random fp16 memmap."""
    try:
        cache = load_cache(p, build=False, progress=False)
        return cache.acts("train"), cache.token_ids("train"), "the profile's activation cache"
    except (RuntimeError, ArtifactError, CacheMismatchError):
        pass
    root = paths.activations_dir(p)
    manifest = read_json(root / "manifest.json") if (root / "manifest.json").exists() else {}
    if manifest.get("settings") == cache_settings(p) and manifest.get("complete", {}).get("train"):
        cache = ActivationCache(root, manifest)  # the training range is complete (others may still be extracted)
        return cache.acts("train"), cache.token_ids("train"), "the profile's activation cache (training range)"
    per_row = p.data.context - int(p.data.drop_bos)
    start, stop = token_ranges(p).spans["train"]
    arr = np.lib.format.open_memmap(tmp / "train.npy", mode="w+", dtype=np.float16,
                                    shape=((stop - start) * per_row, SYNTHETIC_D))
    rng = np.random.default_rng(0)
    for s in range(0, len(arr), 65_536):
        arr[s:s + 65_536] = rng.standard_normal((min(65_536, len(arr) - s), SYNTHETIC_D)).astype(np.float16)
    arr.flush()
    return np.load(tmp / "train.npy", mmap_mode="r"), None, f"random fp16 [{len(arr)}, {SYNTHETIC_D}] (no cache)"


def _steps(root: Path, names: list[str]) -> int:
    """Primary steps the runs under ``root`` took (from their checkpoints, or done.json)."""
    total = 0
    for n in names:
        ck, done = root / n / "checkpoint" / "checkpoint.json", root / n / "done.json"
        total += json.loads((ck if ck.exists() else done).read_text())["step"
                                                                      if ck.exists() else "steps"]
    return total


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def bench_cache(p: Profile, runs: list[str], acts: Any, steps: int, cfg: PassConfig, tmp: Path) -> dict[str, Any]:
    per_row = p.data.context - int(p.data.drop_bos)
    per = _timed(lambda: [train_run(p, r, acts, tmp / "per-run" / r, max_steps=steps, progress=False, device="cpu")
                          for r in runs])
    one = _timed(lambda: train_one_pass(p, runs, CacheSource(acts, per_row), tmp / "one-pass", pass_cfg=cfg,
                                        max_steps=steps, progress=False, device="cpu"))
    return _row("cache", len(runs), per, _steps(tmp / "per-run", runs), one, _steps(tmp / "one-pass", runs),
                p.sae.batch_size, measured_per_run=len(runs))


def bench_stream(p: Profile, runs: list[str], tokens: np.ndarray | None, steps: int, cfg: PassConfig,
                 n_alone: int, tmp: Path) -> dict[str, Any]:
    src = LMSource(p, lm=load_lm(p.data.model, dtype=p.data.lm_dtype, device="cpu"), tokens=tokens)
    alone = runs[:max(1, n_alone)]
    per = _timed(lambda: [train_one_pass(p, [r], src, tmp / "stream-alone" / r, pass_cfg=cfg, max_steps=steps,
                                         progress=False, device="cpu") for r in alone])
    one = _timed(lambda: train_one_pass(p, runs, src, tmp / "stream-one-pass", pass_cfg=cfg, max_steps=steps,
                                        progress=False, device="cpu"))
    per_steps = sum(_steps(tmp / "stream-alone" / r, [r]) for r in alone)
    scale = len(runs) / len(alone)
    return _row("stream (LM on the fly)", len(runs), (per[0] * scale, per[1] * scale), round(per_steps * scale),
                one, _steps(tmp / "stream-one-pass", runs), p.sae.batch_size, measured_per_run=len(alone))


def _row(mode: str, R: int, per: tuple[float, float], per_steps: int, one: tuple[float, float], one_steps: int,
         B: int, measured_per_run: int) -> dict[str, Any]:
    """One table row; the ratio uses CPU seconds (this process's, insensitive to other jobs' load), the wall-clock
    figures are kept beside them."""
    per_step, one_step = per[1] / max(per_steps, 1), one[1] / max(one_steps, 1)
    return dict(mode=mode, runs=R, per_run_wall_s=per[0], per_run_cpu_s=per[1], per_run_steps=per_steps,
                one_pass_wall_s=one[0], one_pass_cpu_s=one[1], one_pass_steps=one_steps,
                per_run_tok_per_cpu_s=B / per_step, one_pass_tok_per_cpu_s=B / one_step,
                wall_ratio=(per[0] / max(per_steps, 1)) / (one[0] / max(one_steps, 1)),
                ratio=per_step / one_step, per_run_measured_on=measured_per_run)


def print_table(rows: list[dict[str, Any]], header: str) -> None:
    print(header)
    print(f"{'mode':<24} {'runs':>4} {'per-run CPU s':>13} {'one-pass CPU s':>14} {'per-run tok/CPU s':>17} "
          f"{'one-pass tok/CPU s':>18} {'ratio':>6} {'(wall ratio)':>12}")
    for r in rows:
        print(f"{r['mode']:<24} {r['runs']:>4} {r['per_run_cpu_s']:>13.1f} {r['one_pass_cpu_s']:>14.1f} "
              f"{r['per_run_tok_per_cpu_s']:>17.0f} {r['one_pass_tok_per_cpu_s']:>18.0f} {r['ratio']:>6.2f} "
              f"{r['wall_ratio']:>12.2f}")
    print("ratio = per-run CPU time per run-step / one-pass CPU time per run-step (> 1: one pass is cheaper); CPU "
          "time of this process, so other jobs on a shared machine barely move it (wall-clock ratio beside it)")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--runs", type=int, default=None, help="the first N runs of the plan (default: all)")
    ap.add_argument("--steps", type=int, default=8, help="primary steps per run (default 8)")
    ap.add_argument("--buffer-batches", type=int, default=2, help="shuffle buffer in batches (default 2)")
    ap.add_argument("--stream-per-run", type=int, default=1, help="runs timed alone in stream mode (default 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-stream", action="store_true", help="skip stream mode (it needs the profile's LM)")
    ap.add_argument("--tiny", action="store_true", help="paper-arch-smoke-gpt2, 4 runs, 3 steps (seconds; tests)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tiny:
        args.profile, args.runs, args.steps = "paper-arch-smoke-gpt2", args.runs or 4, min(args.steps, 3)
    p = get_profile(args.profile)
    runs = [r.name for r in training_plan(p, "all")][:args.runs]
    cfg = PassConfig(rows_per_chunk=default_pass_config(p).rows_per_chunk, buffer_batches=args.buffer_batches)
    with tempfile.TemporaryDirectory(prefix="bench-multirun-") as d:
        tmp = Path(d)
        acts, tokens, what = training_array(p, tmp)
        train_run(p, runs[-1], acts, tmp / "warm-up", max_steps=1, progress=False, device="cpu")  # imports, kernels
        rows = [bench_cache(p, runs, acts, args.steps, cfg, tmp)]
        if not args.no_stream:
            rows.append(bench_stream(p, runs, tokens, args.steps, cfg, args.stream_per_run, tmp))
    header = (f"one-pass vs per-run training, profile {p.name!r}: {len(runs)} runs, ~{args.steps} steps each, "
              f"n={p.sae.n_latents}, B={p.sae.batch_size}, {args.threads} thread(s), cache data: {what}, "
              f"{cfg.rows_per_chunk} token rows per chunk, buffer {cfg.buffer_batches} batches")
    print_table(rows, header)
    out = paths.artifacts_root() / "bench" / "multirun.json"
    write_json(out, dict(header=header, rows=rows))
    print(f"written: {out}")
    return rows


if __name__ == "__main__":
    main()
