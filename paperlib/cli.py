"""``python -m paperlib <command> --profile P [--run NAME ...]``: one command per stage of a run, addressed by
profile and run name, so an existing scheduler (a Slurm job array, say) spreads a profile's grid over machines.

Commands:

- ``plan`` prints the run names of the profile's training plan, one per line (what a job array iterates over);
- ``extract`` builds the profile's activation cache (run it once, before the per-run jobs: one process builds a
  cache at a time and a second one stops with an error);
- ``train``, ``calibrate``, ``cooccur``, ``recon``, ``ce`` call the cached stage function of each ``--run``
  (:func:`~paperlib.stages.train.ensure_trained`, :func:`~paperlib.stages.calibrate.ensure_calibration`,
  :func:`~paperlib.stages.cooccur.ensure_cooccurrence`, :func:`~paperlib.stages.recon.ensure_reconstruction`,
  :func:`~paperlib.stages.ce.ensure_ce`) and print one JSON line per run. Results land in the same cache the
  notebooks read, so a notebook run afterwards finds them fresh. ``ce`` also computes the profile's clean and
  zero-ablated reference once; give every run to one ``ce`` job (``--run`` repeats) rather than one job per run.

Exit codes: 0 done, 1 a stage failed (the message names what), 2 a bad command line (unknown profile, run name
or command; argparse's usage message).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from paperlib.config.io import ArtifactError
from paperlib.config.profiles import PROFILES, Profile, get_profile
from paperlib.data.activations import load_cache
from paperlib.stages.calibrate import ensure_calibration
from paperlib.stages.ce import ensure_ce
from paperlib.stages.cooccur import ensure_cooccurrence
from paperlib.stages.recon import ensure_reconstruction
from paperlib.stages.run import Run, as_runs
from paperlib.stages.select import training_plan
from paperlib.stages.train import ensure_trained

PROG = "python -m paperlib"


def _train(p: Profile, runs: list[Run], progress: bool) -> list[dict[str, Any]]:
    dirs = ensure_trained(p, runs, progress=progress, n_workers=1)
    return [{"run": r.name, "dir": str(dirs[r.name]), "weights": r.weights_fingerprint()} for r in runs]


def _calibrate(p: Profile, runs: list[Run], progress: bool) -> list[dict[str, Any]]:
    out = []
    for r in runs:
        cal = ensure_calibration(r, progress=progress)
        out.append({"run": r.name, "mode": cal.mode, "n_tokens": int(cal.n_tokens), "n_dead": int(cal.dead.sum())})
    return out


def _per_run(fn: Callable[..., Any]) -> Callable[[Profile, list[Run], bool], list[dict[str, Any]]]:
    def run_all(p: Profile, runs: list[Run], progress: bool) -> list[dict[str, Any]]:
        return [fn(r, progress=progress).to_json() for r in runs]

    return run_all


def _ce(p: Profile, runs: list[Run], progress: bool) -> list[dict[str, Any]]:
    res = ensure_ce(p, runs, progress=progress)
    return [res[r.name].to_json() for r in runs]


STAGE_COMMANDS: dict[str, tuple[Callable[[Profile, list[Run], bool], list[dict[str, Any]]], str]] = {
    "train": (_train, "train the SAE of each run (resumes from its checkpoint)"),
    "calibrate": (_calibrate, "per-latent thresholds on the calibration tokens"),
    "cooccur": (_per_run(ensure_cooccurrence), "exact co-occurrence φ statistics"),
    "recon": (_per_run(ensure_reconstruction), "reconstruction metrics (L2, FVE, L0, dead latents)"),
    "ce": (_ce, "next-token CE with the SAE spliced in (and the clean / zero reference, once)"),
}
"""Per-run commands: the function running the stage for a list of runs, and its help line."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m paperlib`` (one sub-command per stage, plus ``plan`` and ``extract``)."""
    ap = argparse.ArgumentParser(prog=PROG, description="Run one pipeline stage of a profile's runs.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="command")
    plan = sub.add_parser("plan", help="print the run names of the profile's training plan, one per line")
    plan.add_argument("--sae", default="all", help="which runs, as notebook 01's sae parameter (default: all)")
    extract = sub.add_parser("extract", help="build the profile's activation cache (once, before the run jobs)")
    for p in (plan, extract):
        p.add_argument("--profile", required=True, help=f"profile name ({', '.join(PROFILES)})")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    for name, (_, text) in STAGE_COMMANDS.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--profile", required=True, help=f"profile name ({', '.join(PROFILES)})")
        p.add_argument("--run", action="append", required=True,
                       help="run name in any spelling (joint-l0.3-s1.0, solo-seed2); repeat for several runs")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def _resolve(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Profile, list[Run]]:
    try:
        p = get_profile(args.profile)
        return p, as_runs(p, getattr(args, "run", None) or [])
    except ValueError as err:
        ap.error(str(err))  # exits 2 with the usage line


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code (0 done, 1 a stage failed; 2 via argparse)."""
    ap = build_parser()
    args = ap.parse_args(argv)
    p, runs = _resolve(ap, args)
    progress = not args.quiet
    try:
        if args.command == "plan":
            print("\n".join(r.name for r in training_plan(p, args.sae)))
        elif args.command == "extract":
            cache = load_cache(p, progress=progress)
            print(json.dumps({"profile": p.name, "activations": str(cache.root), "d": cache.d}))
        else:
            for rec in STAGE_COMMANDS[args.command][0](p, runs, progress):
                print(json.dumps(rec, sort_keys=True))
    except (ArtifactError, FileNotFoundError, RuntimeError, ValueError, OSError) as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
