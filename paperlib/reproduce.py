"""``make reproduce``: run notebooks 01 → 08 through papermill, skipping unchanged stages.

    python -m paperlib.reproduce --profile default [--force] [--only 03_cooccurrence]
    python -m paperlib.reproduce --profile default --verify    # check every artifact in full, run nothing

Each stage's key hashes the notebook, the library sources, the profile, the stage parameters and
the keys of the stages before it and where the artifacts and outputs go; a stage whose key equals the
one recorded after its last successful run (``<artifacts>/<profile>/reproduce/stages.json``) is
skipped. Executed copies with outputs are kept beside that record. ``PAPERLIB_ARTIFACTS``,
``PAPERLIB_OUTPUTS`` and ``PAPERLIB_CACHE`` are resolved to absolute paths once, before any notebook
runs. The run stops at the first failing stage and names the notebook and the cell. Finally
``tables/summary.md`` is regenerated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from paperlib.config.io import ArtifactError, read_json, write_json
from paperlib.config.paths import REPO_ROOT, output_dirs, profile_dir, runs_dir
from paperlib.config.profiles import Profile, get_profile, second_model
from paperlib.data.activations import verify_cache
from paperlib.report.summary import write_readme_results, write_summary
from paperlib.sae.trainer import is_done, read_config_file, read_metrics_file
from paperlib.stages.cache import PACKAGE_ROOT, code_digest, digest
from paperlib.stages.run import Run
from paperlib.stages.train import check_weights


@dataclass(frozen=True)
class Stage:
    notebook: str
    parameters: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.notebook).stem


def stages(profile: str) -> list[Stage]:
    """The pipeline for a profile, in order."""
    second = second_model(profile)
    return [
        Stage("01_train.ipynb", {"profile": profile, "sae": "all"}),
        Stage("02_calibrate.ipynb", {"profile": profile, "sae": "all"}),
        Stage("03_cooccurrence.ipynb", {"profile": profile, "sae": "all"}),
        Stage("04_welch.ipynb", {"profile": profile, "sae": "all"}),
        Stage("05_autointerp.ipynb", {"profile": profile, "sae": "joint"}),
        Stage("06_case_studies.ipynb", {"profile": profile, "sae": "joint"}),
        Stage("07_gemma.ipynb", {"profile": second}),
        Stage("08_ground_truth.ipynb", {"profile": profile}),
    ]


def notebook_modules(notebook: str) -> list[str]:
    """The ``paperlib`` modules a notebook's code cells import."""
    nb = json.loads((REPO_ROOT / "notebooks" / notebook).read_text())
    mods: set[str] = set()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for m in re.finditer(r"^\s*from (paperlib[\w.]*) import ([\w, ]+)", "".join(cell["source"]), re.M):
            for name in (s.strip() for s in m[2].split(",")):
                sub = f"{m[1]}.{name}"
                mods.add(sub if (PACKAGE_ROOT.parent / (sub.replace(".", "/") + ".py")).exists() else m[1])
    return sorted(mods)


def code_key(notebook: str) -> str:
    """Digest of the library code a notebook runs (its imports, transitively; docstrings ignored)."""
    return digest({m: code_digest(m) for m in notebook_modules(notebook) if m != "paperlib"})


def stage_key(stage: Stage, upstream: str) -> str:
    nb = (REPO_ROOT / "notebooks" / stage.notebook).read_bytes()
    payload = json.dumps([stage.notebook, stage.parameters, upstream, code_key(stage.notebook)], sort_keys=True)
    return hashlib.sha256(nb + payload.encode()).hexdigest()[:16]


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matmul rate now (GFLOP/s, all intra-op threads): run times scale with it, and
    these machines vary up to 2× from day to day, so it is printed beside the stage times."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - t0) / 1e9


BUDGET_MINUTES = 60
BUDGET_GFLOPS = 120
"""The default profile's budget: ``make reproduce`` within 60 minutes on a machine doing 120 GFLOP/s."""


FIXED_BUDGET_STAGES = ("05_autointerp",)
"""Stages that size their work to a wall-time budget: notebook 05 measures its cost per feature on a pilot and
scores as many matched pairs as fit ``budget_s`` (150 s on ``default``, at least the 10 pilot pairs). On a slower
machine such a stage takes about as long and scores fewer pairs, so its time is not scaled by the projection."""


def projected_seconds(seconds: float, gflops: float, at_gflops: float = BUDGET_GFLOPS,
                      fixed_seconds: float = 0.0) -> float:
    """Wall time ``seconds`` measured at ``gflops``, projected to a machine doing ``at_gflops``: the
    ``fixed_seconds`` of budgeted stages (:data:`FIXED_BUDGET_STAGES`) as they are, every other second scaled by the
    matmul rate. Stages that are partly memory- or I/O-bound make it an upper bound; a faster reading gives a
    larger projection (more work was done per second)."""
    if not (gflops > 0 and at_gflops > 0):
        raise ValueError(f"matmul rates must be > 0, got {gflops} and {at_gflops}")
    if not 0.0 <= fixed_seconds <= seconds:
        raise ValueError(f"fixed_seconds must be in [0, seconds={seconds}], got {fixed_seconds}")
    return (seconds - fixed_seconds) * gflops / at_gflops + fixed_seconds


def _fmt(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


LOCATION_VARIABLES = ("PAPERLIB_ARTIFACTS", "PAPERLIB_OUTPUTS", "PAPERLIB_CACHE")


def absolute_locations(profile: str) -> dict[str, str]:
    """Resolve the location variables to absolute paths once, in ``os.environ`` (the notebook kernels inherit
    them and run in ``notebooks/``, where a relative path would point elsewhere); return where this run's
    artifacts and outputs go. Stage keys include it, so a new artifacts or outputs folder re-runs every stage."""
    for var in LOCATION_VARIABLES:
        if os.environ.get(var):
            os.environ[var] = str(Path(os.environ[var]).expanduser().resolve())
    return {"artifacts": str(profile_dir(profile)), "outputs": [str(d) for d in output_dirs(profile)]}


def record_dir(profile: str) -> Path:
    """Where the stage record (``stages.json``) and the executed notebooks live: under the profile's artifacts,
    beside the results they describe."""
    return profile_dir(profile) / "reproduce"


def run(profile: str, *, force: bool = False, only: list[str] | None = None) -> int:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    get_profile(profile)  # fail early on an unknown name
    upstream = digest(absolute_locations(profile))
    out_dir = record_dir(profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_path = out_dir / "stages.json"
    record = read_json(record_path, delete=record_path) if record_path.exists() else {}
    timings: list[tuple[str, str, float]] = []
    pipeline = [s for s in stages(profile) if (REPO_ROOT / "notebooks" / s.notebook).exists()]
    gflops = matmul_gflops()
    print(f"machine: fp32 matmul {gflops:.0f} GFLOP/s on {torch.get_num_threads()} threads "
          f"(stage times scale roughly with 1/this rate; the default profile's budget is {BUDGET_MINUTES} min at "
          f"{BUDGET_GFLOPS})",
          flush=True)
    t_all = time.perf_counter()
    for i, stage in enumerate(pipeline, 1):
        key = stage_key(stage, upstream)
        upstream = key
        wanted = only is None or stage.name in only
        if not wanted or (not force and record.get(stage.name, {}).get("key") == key):
            why = "not in --only" if not wanted else "unchanged"
            print(f"[{i}/{len(pipeline)}] {stage.name}: {why}, skipped", flush=True)
            timings.append((stage.name, "skipped", 0.0))
            continue
        print(f"[{i}/{len(pipeline)}] {stage.name} {stage.parameters} ...", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(REPO_ROOT / "notebooks" / stage.notebook), str(out_dir / stage.notebook),
                parameters=stage.parameters, cwd=str(REPO_ROOT / "notebooks"), progress_bar=False,
                log_output=False, kernel_name="python3",
            )
        except PapermillExecutionError as err:
            dt = time.perf_counter() - t0
            print(f"\nFAILED: notebooks/{stage.notebook}, cell {err.cell_index} "
                  f"(execution count {err.exec_count}) after {_fmt(dt)}: {err.ename}: {err.evalue}\n"
                  f"The executed copy with the traceback is {out_dir / stage.notebook}", file=sys.stderr)
            return 1
        dt = time.perf_counter() - t0
        record[stage.name] = {"key": key, "seconds": round(dt, 1), "finished": time.strftime("%FT%T"),
                              "matmul_gflops": round(gflops, 1)}
        write_json(record_path, record)
        timings.append((stage.name, "ran", dt))
        print(f"    done in {_fmt(dt)}", flush=True)

    path = write_summary(profile, stage_seconds={k: v.get("seconds") for k, v in record.items()},
                         matmul_gflops=gflops)
    print(f"\nsummary: {path}")
    if profile == "default" and write_readme_results(REPO_ROOT / "README.md", profile):
        print("README.md: results section rewritten from tables/")
    print("stage times (this invocation):")
    for name, status, dt in timings:
        print(f"  {name:22s} {status:8s} {_fmt(dt) if status == 'ran' else ''}")
    total = time.perf_counter() - t_all
    end_gflops = matmul_gflops()
    rate = (gflops + end_gflops) / 2  # the run's work in matmul-seconds, estimated with the mean reading
    fixed = sum(dt for name, status, dt in timings if status == "ran" and name in FIXED_BUDGET_STAGES)
    proj = projected_seconds(total, rate, fixed_seconds=fixed)
    print(f"total {_fmt(total)} at {gflops:.0f} GFLOP/s fp32 matmul (start) / {end_gflops:.0f} (end); "
          f"projected at {BUDGET_GFLOPS} GFLOP/s: {_fmt(proj)} "
          f"({'within' if proj <= 60 * BUDGET_MINUTES else 'over'} the {BUDGET_MINUTES}-min budget; "
          f"{_fmt(fixed)} of budgeted stages kept as measured, every other second scaled by {rate:.0f}/"
          f"{BUDGET_GFLOPS}; all scaled: {_fmt(projected_seconds(total, rate))})")
    return 0


def verify(profile: str | Profile) -> list[str]:
    """Problems found in a profile's artifacts (empty: intact): every activation-cache file checked in full
    (:func:`~paperlib.data.activations.verify_cache`), and every trained run's record, weights fingerprint,
    configuration and training log. Each problem names the file and what to delete."""
    p = get_profile(profile)
    problems = verify_cache(p)
    for run_dir in sorted(runs_dir(p).glob("*/")) if runs_dir(p).is_dir() else []:
        if not is_done(run_dir):
            continue
        try:
            run = Run.of(p, run_dir.name)
            check_weights(run)
            read_config_file(run_dir)
            read_metrics_file(run_dir)
        except (ArtifactError, ValueError, OSError) as err:
            problems.append(str(err))
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Regenerate the paper's figures and tables.")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--force", action="store_true", help="re-run every stage")
    ap.add_argument("--only", nargs="*", help="stage names to run (e.g. 03_cooccurrence)")
    ap.add_argument("--verify", action="store_true",
                    help="check the profile's artifacts in full (checksums of large files too) and run nothing")
    args = ap.parse_args(argv)
    if args.verify:
        problems = verify(args.profile)
        print("\n".join(problems) if problems else f"profile {args.profile!r}: artifacts intact")
        return 1 if problems else 0
    return run(args.profile, force=args.force, only=args.only)


if __name__ == "__main__":
    sys.exit(main())
