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
- ``train-many`` trains the given runs (default: the whole plan) in one pass over the activation stream
  (:func:`~paperlib.sae.multirun.train_profile_one_pass`: the read, or with ``--stream`` the language model's
  forward, is paid once for all runs; each run keeps its own shuffle-buffer data order; no activation cache is
  needed with ``--stream``). Results go to ``<profile dir>/one-pass/<run>/`` (``--out`` elsewhere), apart from
  ``train``'s runs: a one-pass run has another data order than the per-run trainer's.

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
from paperlib.sae.multirun import PassConfig, default_pass_config, train_profile_one_pass
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


def _add_train_many(sub: Any) -> None:
    """The ``train-many`` sub-command (one pass over the activation stream trains the runs)."""
    tm = sub.add_parser("train-many", help="train runs in one pass over the activation stream (cache or --stream)")
    tm.add_argument("--profile", required=True, help=f"profile name ({', '.join(PROFILES)})")
    tm.add_argument("--run", action="append", help="run name; repeat for several (default: the profile's plan)")
    tm.add_argument("--stream", action="store_true", help="produce activations with the LM on the fly (no cache)")
    tm.add_argument("--out", default=None, help="output folder of the runs (default: <profile dir>/one-pass)")
    tm.add_argument("--rows-per-chunk", type=int, default=None, help="token rows per stream chunk")
    tm.add_argument("--buffer-batches", type=int, default=8, help="shuffle-buffer capacity in batches (default 8)")
    tm.add_argument("--stream-seed", type=int, default=0, help="seed of the chunk order (default 0)")
    tm.add_argument("--max-steps", type=int, default=None, help="stop (checkpointed) after about this many steps")
    tm.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_many(p: Profile, runs: list[Run], args: argparse.Namespace, progress: bool) -> list[dict[str, Any]]:
    runs = runs or training_plan(p, "all")
    cfg = PassConfig(rows_per_chunk=args.rows_per_chunk or default_pass_config(p).rows_per_chunk,
                     buffer_batches=args.buffer_batches, stream_seed=args.stream_seed)
    dirs = train_profile_one_pass(p, [r.spec for r in runs], stream=args.stream, out_root=args.out, pass_cfg=cfg,
                                  progress=progress, max_steps=args.max_steps)
    return [{"run": r.name, "dir": str(dirs[r.name]), "done": (dirs[r.name] / "done.json").exists()} for r in runs]


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
    _add_train_many(sub)
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
        elif args.command == "train-many":
            for rec in _train_many(p, runs, args, progress):
                print(json.dumps(rec, sort_keys=True))
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
