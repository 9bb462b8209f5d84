"""Training-step throughput (tokens/s) of paperlib, SAELens and dictionary_learning under one protocol.

``make bench-peers`` (``.venv/bin/python benchmarks/peers.py``). Each peer library lives in its own
virtual environment under the git-ignored artifacts folder (``<artifacts>/bench-venvs/<peer>``,
``<artifacts>`` = ``$PAPERLIB_ARTIFACTS`` or ``artifacts/``), created on first use with the project's
torch pin in the same pip command (``pip install torch==2.13.0 sae-lens``). Before installing, a
``pip install --dry-run --report`` must resolve exactly the project's torch build (no CUDA torch,
no ``nvidia-*`` wheels); afterwards the venv's ``import torch`` must report that build. A peer that
fails either check is listed in the table as ``not installable: <reason>`` and the run goes on.
One repair is applied: a ``torchvision`` pulled in by a dependency (dictionary_learning → nnsight)
is the CUDA build on PyPI, cannot load against the CPU torch, and breaks ``import transformers``
and so the peer's package import. It is unused by the timed code, so it is uninstalled; the
table's version column says so.

This file is also the worker: each implementation runs in its own process
(``<venv>/bin/python benchmarks/peers.py --worker IMPL ...``), which prints one JSON line. The
worker imports only torch and the library under test, so the same file runs in every venv.

Protocol (identical in every process):

- ``torch.set_num_threads(threads)`` (default 2) and ``OMP_NUM_THREADS`` set to the same value;
  ``OMP_WAIT_POLICY=PASSIVE`` by default (spinning OpenMP threads distort timings on a shared
  machine; ``--omp-wait-policy ''`` inherits the environment);
- a pool of ``--pool`` random batches [B, d] from a fixed seed (``x = 2·N(0, 1) + μ`` with one
  random per-dimension offset μ, as ``benchmarks/train.py``), cycled through by the steps;
- ``--warmup`` untimed steps, then ``--reps`` repetitions of ``--steps`` timed steps;
  tok/s = steps · B / (the minimum, or ``--stat median``, of the repetition times);
- in every repetition, right after the implementation's steps, the same number of calls of the
  encoder-forward bound ``relu(x @ W_enc)`` (W_enc [d, n], no autograd, into a buffer kept between calls:
  see :func:`encoder_bound`) on the same batches, so
  each implementation's "× bound" ratio is against a bound measured in its own process, under
  the same load. The bound is the float32 product; where paperlib's screened encoder runs (a CPU with
  bfloat16 arithmetic, see ``paperlib/sae/screen.py``) its step computes a bfloat16 product and exact float32
  dot products for the candidates instead, so its ratio can exceed 1.

Implementations (d = 576, n = 8·d = 4608, k = 32, B = 4096 by default):

- ``paperlib-solo``: :meth:`paperlib.sae.trainer.Trainer.primary_step` (as ``benchmarks/train.py``),
  sparse decode and backward, Adam, decoder constraint;
- ``paperlib-joint``: :meth:`~paperlib.sae.trainer.Trainer.macro_step` of the joint arm
  (λ₂ = 0.3, σ² = 1, n_meta = 0.09·n), per primary token: each repetition times whole blocks of
  n_p primary steps, so the n_m meta steps that end a block are included;
- ``sae-lens``: :class:`sae_lens.SAETrainer` ``.step(batch)`` (its public per-batch seam, which
  ``fit()`` calls) on a :class:`sae_lens.BatchTopKTrainingSAE`: ``training_forward_pass`` (dense
  BatchTopK), backward, grad-norm clipping, Adam, LR scheduler, firing statistics;
- ``dictionary-learning``: ``dictionary_learning.trainers.BatchTopKTrainer.update(step, x)``
  (dense BatchTopK, backward, decoder-gradient projection, clipping, Adam, scheduler, decoder
  renormalisation); its step 0 (a geometric-median init of b_dec) falls in the warm-up.

AuxK is inactive everywhere (no dead latents): the peers' dead windows (SAELens 1,000 steps,
dictionary_learning 10⁷ tokens) are not reached in a benchmark this short, and paperlib's dead
counters are reset after every step, as ``benchmarks/train.py`` does.

Also printed: the machine's fp32 matmul rate (4096² · 4096², ``--threads`` threads, best of 3) at
the start and at the end, the date and the load average. The table is written as JSON to
``<artifacts>/bench/peers.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

# The worker runs in the peers' venvs, where paperlib is not installed: paperlib is imported
# only inside the functions that run in the project's own venv.

PROJECT_IMPLS = ("paperlib-solo", "paperlib-joint")
PEERS: dict[str, dict[str, str]] = {
    # pip requirement → the worker implementation it runs and the module its import check loads
    "sae-lens": {"impl": "sae-lens", "module": "sae_lens"},
    "dictionary-learning": {"impl": "dictionary-learning", "module": "dictionary_learning.trainers"},
}
IMPLS = PROJECT_IMPLS + tuple(p["impl"] for p in PEERS.values())
TORCH_PIN = "torch==2.13.0"
RESULT_PREFIX = "PEERS-RESULT "
"""The worker's JSON line starts with this, so library chatter on stdout cannot be mistaken for it."""
MARKER = ".bench-installed.json"
"""Written into a peer venv once it is installed and checked; a venv without it is (re)installed."""


# ---------------------------------------------------------------------------------------------
# worker (runs in any venv: torch + the library under test only)
# ---------------------------------------------------------------------------------------------
def make_pool(d: int, batch: int, pool: int, seed: int) -> list[torch.Tensor]:
    """``pool`` batches [batch, d] of ``2·N(0, 1) + μ`` (one random μ [d]) from a generator seeded ``seed``."""
    if min(d, batch, pool) < 1:
        raise ValueError(f"d={d}, batch={batch}, pool={pool} must all be >= 1")
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g)
    return [torch.randn(batch, d, generator=g) * 2 + mu for _ in range(pool)]


def encoder_bound(d: int, n: int, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder-forward bound: ``relu(x @ W_enc)`` with a fixed random W_enc [d, n], no autograd, into one
    [B, n] buffer kept between calls (matmul with ``out=``, ReLU in place), as the training step computes its
    pre-activations. A fresh [B, n] result per call would add the allocator's page faults to the bound (75 MB a
    call at n = 4608, B = 4096: ~107 ms instead of ~73 ms per call on the development machine)."""
    w = torch.randn(d, n, generator=torch.Generator().manual_seed(seed + 1)) / math.sqrt(d)
    out: list[torch.Tensor] = []

    def call(x: torch.Tensor) -> torch.Tensor:
        if not out or out[0].shape[0] != x.shape[0]:
            out[:] = [torch.empty(x.shape[0], n, dtype=x.dtype)]
        with torch.no_grad():
            return torch.mm(x, w, out=out[0]).relu_()

    return call


def _paperlib_step(joint: bool, d: int, n: int, k: int, batch: int) -> tuple[Callable, str, int]:
    from paperlib.config.profiles import get_profile  # project venv only (see the note at the top)
    from paperlib.sae.arms import RunSpec
    from paperlib.sae.trainer import TrainConfig, Trainer

    prof = get_profile("default", n_latents=n, k=k, batch_size=batch, n_meta=round(0.09 * n))
    spec = RunSpec("joint", lambda2=0.3, sigma2=1.0) if joint else RunSpec("solo")
    tr = Trainer(TrainConfig.from_profile(prof, spec, d), torch.device("cpu"))
    tr.primary.steps_since_fired.zero_()

    def step(x: torch.Tensor) -> None:
        if joint:
            tr.macro_step(x)
        else:
            tr.primary_step(x)
        tr.primary.steps_since_fired.zero_()  # no dead latents: AuxK off, as in the peers

    return step, version("paperlib"), (prof.meta.n_primary_steps if joint else 1)


def _saelens_step(d: int, n: int, k: int, batch: int) -> tuple[Callable, str, int]:
    import sae_lens
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig

    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d, d_sae=n, k=k, device="cpu"))
    lr = 3e-4  # SAELens's default; lr_end = lr / 10 as its runner config sets it
    cfg = SAETrainerConfig(total_training_samples=batch * 10**6, train_batch_size_samples=batch, lr=lr,
                           lr_end=lr / 10, device="cpu")
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))

    def step(x: torch.Tensor) -> None:
        trainer.step(x)  # forward + backward + clip + Adam + scheduler, as fit() calls it
        trainer.n_training_steps += 1  # what fit() does after each step

    return step, sae_lens.__version__, 1


def _dictlearn_step(d: int, n: int, k: int, batch: int) -> tuple[Callable, str, int]:
    from dictionary_learning.trainers import BatchTopKTrainer

    trainer = BatchTopKTrainer(steps=10**6, activation_dim=d, dict_size=n, k=k, layer=0, lm_name="bench",
                               device="cpu", seed=0)
    counter = [0]

    def step(x: torch.Tensor) -> None:
        trainer.update(counter[0], x)
        counter[0] += 1

    return step, version("dictionary-learning"), 1


def make_step(impl: str, d: int, n: int, k: int, batch: int) -> tuple[Callable[[torch.Tensor], Any], str, int]:
    """(one training step on a batch, library version, block): timed step counts are rounded up
    to a multiple of ``block`` (the joint arm's n_p, so its meta phase is amortised exactly)."""
    if k > n:
        raise ValueError(f"k={k} exceeds n={n}")
    if impl == "paperlib-solo":
        return _paperlib_step(False, d, n, k, batch)
    if impl == "paperlib-joint":
        return _paperlib_step(True, d, n, k, batch)
    if impl == "sae-lens":
        return _saelens_step(d, n, k, batch)
    if impl == "dictionary-learning":
        return _dictlearn_step(d, n, k, batch)
    raise ValueError(f"impl={impl!r} is not one of {', '.join(IMPLS)}")


def run_protocol(impl: str, *, d: int = 576, n: int = 4608, k: int = 32, batch: int = 4096, pool: int = 4,
                 warmup: int = 2, steps: int = 5, reps: int = 3, stat: str = "min", threads: int = 2,
                 seed: int = 0) -> dict[str, Any]:
    """Time ``impl`` and the encoder-forward bound in this process (see the module docstring).

    Returns a JSON-able record: tok/s of both under ``stat`` plus every repetition's time. The
    torch thread count is restored afterwards."""
    if stat not in ("min", "median"):
        raise ValueError(f"stat={stat!r} must be 'min' or 'median'")
    if min(steps, reps, threads) < 1 or warmup < 0:
        raise ValueError(f"steps={steps}, reps={reps}, threads={threads} must be >= 1 and warmup={warmup} >= 0")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        xs = make_pool(d, batch, pool, seed)
        step, lib_version, block = make_step(impl, d, n, k, batch)
        bound = encoder_bound(d, n, seed)
        n_warm = math.ceil(warmup / block) * block
        n_steps = math.ceil(steps / block) * block
        i = 0
        for _ in range(n_warm):
            step(xs[i % pool])
            i += 1
        for j in range(max(warmup, 1)):
            bound(xs[j % pool])
        t_step, t_bound = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(n_steps):
                step(xs[i % pool])
                i += 1
            t_step.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for j in range(steps):
                bound(xs[j % pool])
            t_bound.append(time.perf_counter() - t0)
        agg = min if stat == "min" else statistics.median
        return dict(impl=impl, version=lib_version, torch=torch.__version__, threads=threads, d=d, n=n, k=k,
                    batch=batch, pool=pool, warmup=n_warm, steps=n_steps, bound_steps=steps, reps=reps, stat=stat,
                    seed=seed, step_seconds=t_step, bound_seconds=t_bound,
                    tok_s=n_steps * batch / agg(t_step), bound_tok_s=steps * batch / agg(t_bound))
    finally:
        torch.set_num_threads(old_threads)


# ---------------------------------------------------------------------------------------------
# table (pure functions of worker records)
# ---------------------------------------------------------------------------------------------
def build_rows(records: dict[str, dict[str, Any]], notes: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per implementation (in :data:`IMPLS` order, then any others) from worker records.

    A record is either a :func:`run_protocol` result or ``{"impl": ..., "error": "<reason>"}``
    (not installable, or the worker failed). ``vs_solo`` = tok/s ÷ paperlib-solo's tok/s (None
    without a solo result); ``vs_bound`` = tok/s ÷ the bound measured in the same process."""
    notes = notes or {}
    solo = records.get("paperlib-solo", {}).get("tok_s")
    order = [i for i in IMPLS if i in records] + [i for i in records if i not in IMPLS]
    rows = []
    for impl in order:
        r = records[impl]
        tok = r.get("tok_s")
        bound = r.get("bound_tok_s")
        ver = r.get("version", "")
        if impl in notes:
            ver = f"{ver} ({notes[impl]})" if ver else f"({notes[impl]})"
        rows.append(dict(implementation=impl, version=ver, tok_s=tok,
                         vs_solo=(tok / solo) if tok is not None and solo else None,
                         vs_bound=(tok / bound) if tok is not None and bound else None,
                         bound_tok_s=bound, error=r.get("error")))
    return rows


def format_table(table: dict[str, Any]) -> str:
    """The printed report: header lines (date, load, matmul rate, protocol) and the rows."""
    m = table["machine"]
    p = table["protocol"]

    def num(v: float | None, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    lines = [
        f"date {table['date']}   paperlib {table.get('paperlib_revision', '?')}   torch {table['torch']}   "
        f"threads {p['threads']}   "
        f"OMP_WAIT_POLICY={p['omp_wait_policy'] or '(inherited)'}",
        f"load average (1/5/15 min): start {' '.join(f'{x:.2f}' for x in m['loadavg_start'])}, "
        f"end {' '.join(f'{x:.2f}' for x in m['loadavg_end'])}",
        f"fp32 matmul 4096² ({p['threads']} threads): start {num(m['gflops_start'], '.1f')} GFLOP/s, "
        f"end {num(m['gflops_end'], '.1f')} GFLOP/s",
        f"d={p['d']} n={p['n']} k={p['k']} B={p['batch']}  pool {p['pool']} batches, warm-up {p['warmup']}, "
        f"{p['steps']} timed steps × {p['reps']} reps ({p['stat']}), seed {p['seed']}",
        "",
    ]
    heads = ("implementation", "version", "tok/s", "× solo", "× bound", "bound tok/s")
    ok = [(r["implementation"], r["version"], num(r["tok_s"], ",.0f"), num(r["vs_solo"], ".2f"),
           num(r["vs_bound"], ".3f"), num(r["bound_tok_s"], ",.0f")) for r in table["rows"] if not r.get("error")]
    # an error row prints its reason across the numeric columns, which it does not widen
    named = [(r["implementation"], r["version"]) for r in table["rows"]]
    widths = [max(len(h), *(len(row[c]) for row in (named if c < 2 else ok))) if (named if c < 2 else ok)
              else len(h) for c, h in enumerate(heads)]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(widths[c]) if c < 2 else v.rjust(widths[c]) for c, v in enumerate(row)).rstrip()

    lines += [fmt(heads), "  ".join("-" * w for w in widths)]
    for r in table["rows"]:
        if r.get("error"):
            lines.append(f"{r['implementation'].ljust(widths[0])}  {r['version'].ljust(widths[1])}  {r['error']}")
        else:
            lines.append(fmt(ok.pop(0)))
    lines.append("")
    lines.append("× solo: tok/s ÷ paperlib-solo's tok/s;  "
                 "× bound: tok/s ÷ relu(x @ W_enc) tok/s (into a kept buffer) measured in the same process.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# orchestration (project venv)
# ---------------------------------------------------------------------------------------------
def matmul_gflops(threads: int, size: int = 4096, reps: int = 3) -> float:
    """fp32 ``size``² · ``size``² matmul rate in GFLOP/s (best of ``reps`` after one warm-up)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
        a @ b
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        return 2 * size**3 / best / 1e9
    finally:
        torch.set_num_threads(old)


def torch_problem(report: dict[str, Any], expected: str) -> str | None:
    """Why a ``pip install --dry-run --report`` result is unacceptable (None when it is fine):
    a torch other than ``expected`` or any ``nvidia-*`` (CUDA) wheel would be installed."""
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name = str(meta.get("name", "")).lower().replace("_", "-")
        if name == "torch" and meta.get("version") != expected:
            return f"pip resolves torch {meta.get('version')} instead of {expected}"
        if name.startswith("nvidia-"):
            return f"pip resolves the CUDA wheel {name}"
    return None


def _tail(text: str, n: int = 1) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
    return " / ".join(lines[-n:]) if lines else "(no output)"


def _peer_env(threads: int, omp_wait_policy: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", WANDB_SILENT="true",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    return env


def ensure_venv(peer: str, root: Path, install: bool = True) -> tuple[Path | None, str, str]:
    """(the peer venv's python or None, why not, a note for the version column).

    Creates ``root/<peer>`` with ``pip install torch==2.13.0 <peer>`` when it is missing or was
    never completed (no :data:`MARKER`), after a dry run shows that only the project's torch
    build would be installed."""
    venv = root / peer
    py = venv / "bin" / "python"
    marker = venv / MARKER
    if marker.exists() and py.exists():
        return py, "", json.loads(marker.read_text()).get("note", "")
    if not install:
        return None, "not installed (run without --no-install)", ""
    expected = torch.__version__
    log = venv.parent / f"{peer}.pip.log"
    root.mkdir(parents=True, exist_ok=True)

    def pip(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run([str(py), "-m", "pip", *args], capture_output=True, text=True)
        with log.open("a") as f:
            f.write(f"$ pip {' '.join(args)}\n{res.stdout}{res.stderr}\n")
        return res

    if not py.exists():
        print(f"[{peer}] creating {venv}", flush=True)
        res = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if res.returncode:
            return None, f"not installable: venv creation failed: {_tail(res.stderr)}", ""
    report_path = venv / "pip-dry-run.json"
    res = pip("install", "--dry-run", "--quiet", "--report", str(report_path), TORCH_PIN, peer)
    if res.returncode:
        return None, f"not installable: {_tail(res.stderr)}", ""
    problem = torch_problem(json.loads(report_path.read_text()), expected)
    if problem:
        return None, f"not installable: {problem}", ""
    print(f"[{peer}] pip install {TORCH_PIN} {peer} (log: {log})", flush=True)
    res = pip("install", TORCH_PIN, peer)
    if res.returncode:
        return None, f"not installable: {_tail(res.stderr)}", ""
    note = ""
    tv = subprocess.run([str(py), "-c", "import torchvision"], capture_output=True, text=True)
    if tv.returncode and "No module named 'torchvision'" not in tv.stderr:
        pip("uninstall", "-y", "torchvision")
        note = "torchvision removed"
        print(f"[{peer}] removed torchvision: it cannot load with torch {expected} ({_tail(tv.stderr)})", flush=True)
    module = PEERS[peer]["module"]
    chk = subprocess.run([str(py), "-c", f"import torch, {module}; print(torch.__version__)"],
                         capture_output=True, text=True, env=_peer_env(1, ""))
    if chk.returncode:
        return None, f"not installable: import {module} fails: {_tail(chk.stderr)}", ""
    if chk.stdout.strip().splitlines()[-1] != expected:
        return None, f"not installable: the venv's torch is {chk.stdout.strip()}, not {expected}", ""
    marker.write_text(json.dumps(dict(requirement=f"{TORCH_PIN} {peer}", torch=expected, note=note)) + "\n")
    return py, "", note


def run_worker(python: Path | str, impl: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the protocol for ``impl`` in a fresh process of ``python``; the record, or ``{"error": ...}``."""
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", impl, "--d", str(args.d), "--n", str(args.n),
           "--k", str(args.k), "--batch", str(args.batch), "--pool", str(args.pool), "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--reps", str(args.reps), "--stat", args.stat, "--threads", str(args.threads),
           "--seed", str(args.seed)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_peer_env(args.threads, args.omp_wait_policy))
    for line in reversed(res.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return dict(impl=impl, error=f"failed (exit {res.returncode}): {_tail(res.stderr)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=576, help="input dimension")
    ap.add_argument("--n", type=int, default=None, help="latents (default 8·d)")
    ap.add_argument("--k", type=int, default=32, help="mean active latents per token")
    ap.add_argument("--batch", type=int, default=4096, help="tokens per step")
    ap.add_argument("--pool", type=int, default=4, help="random batches in the fixed pool")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per repetition")
    ap.add_argument("--reps", type=int, default=3, help="repetitions")
    ap.add_argument("--stat", choices=("min", "median"), default="min", help="statistic over repetitions")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--omp-wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY of the workers ('' inherits)")
    ap.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS), help="what to run")
    ap.add_argument("--no-install", action="store_true", help="do not create missing peer venvs")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default <artifacts>/bench/peers.json)")
    ap.add_argument("--worker", choices=IMPLS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.n is None:
        args.n = 8 * args.d
    return args


def worker_main(args: argparse.Namespace) -> None:
    """Run the protocol for ``args.worker`` in this process and print its record as one JSON line."""
    rec = run_protocol(args.worker, d=args.d, n=args.n, k=args.k, batch=args.batch, pool=args.pool,
                       warmup=args.warmup, steps=args.steps, reps=args.reps, stat=args.stat,
                       threads=args.threads, seed=args.seed)
    print(RESULT_PREFIX + json.dumps(rec), flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return {}
    from paperlib.config.io import git_revision, write_json  # project venv only (see the note at the top)
    from paperlib.config.paths import artifacts_root

    root = artifacts_root()
    out = args.out or root / "bench" / "peers.json"
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    load_start = list(os.getloadavg())
    print(f"{date}: fp32 matmul rate ...", flush=True)
    gflops_start = matmul_gflops(args.threads)
    records: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    for impl in args.impls:
        if impl in PROJECT_IMPLS:
            python: Path | str | None = sys.executable
        else:
            peer = next(p for p, v in PEERS.items() if v["impl"] == impl)
            python, why, note = ensure_venv(peer, root / "bench-venvs", install=not args.no_install)
            if note:
                notes[impl] = note
            if python is None:
                records[impl] = dict(impl=impl, error=why)
                print(f"[{impl}] {why}", flush=True)
                continue
        print(f"[{impl}] running ...", flush=True)
        records[impl] = run_worker(python, impl, args)
        if "error" in records[impl]:
            print(f"[{impl}] {records[impl]['error']}", flush=True)
    gflops_end = matmul_gflops(args.threads)
    table = dict(
        date=date, torch=torch.__version__, paperlib_revision=git_revision(),
        machine=dict(gflops_start=gflops_start, gflops_end=gflops_end, loadavg_start=load_start,
                     loadavg_end=list(os.getloadavg()), cpus=os.cpu_count()),
        protocol=dict(d=args.d, n=args.n, k=args.k, batch=args.batch, pool=args.pool, warmup=args.warmup,
                      steps=args.steps, reps=args.reps, stat=args.stat, threads=args.threads, seed=args.seed,
                      omp_wait_policy=args.omp_wait_policy),
        rows=build_rows(records, notes), records=records,
    )
    print()
    print(format_table(table))
    write_json(out, table)
    print(f"\nwritten: {out}")
    return table


if __name__ == "__main__":
    main()
