"""Local likelihood judge throughput on real fuzz items: seconds per feature, same process.

Builds the fuzz items of ``--features`` alive features of a trained run (default profile, solo,
:data:`paperlib.stages.interp.LEAN_CONTEXT`) and times :meth:`LocalLikelihoodJudge.judge_binary` with an
empty disk cache for each configuration below; the first configuration is the baseline of the
printed ratios. Every configuration must give the same per-item scores (checked, to 1e-3 nats).

- ``full``: every sequence (prefix + continuation) run in full, logits for every position;
- ``prefix-kv``: each prefix run once, its KV cache shared by the batch (``use_prefix_cache``).

Usage: ``.venv/bin/python benchmarks/judge.py [--features 8] [--profile default] [--run solo]``.
Per-feature time × 2 × the number of matched pairs estimates notebook 05's judge time.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from paperlib.autointerp.contexts import collect_contexts, collect_feature_activations
from paperlib.autointerp.judge import JudgeItem, template_explanation
from paperlib.autointerp.local import LocalLikelihoodJudge
from paperlib.autointerp.scoring import make_fuzz_items
from paperlib.data.activations import load_cache
from paperlib.data.lm import load_hf
from paperlib.stages.calibrate import ensure_calibration
from paperlib.stages.interp import LEAN_CONTEXT, profile_decoder
from paperlib.stages.run import Run
from paperlib.stages.train import load_run


def feature_items(profile: str, run: str, n: int, seed: int = 0) -> list[tuple[str, list[JudgeItem]]]:
    """(explanation, fuzz items) of ``n`` random alive features of ``run``."""
    cache = load_cache(profile)
    sae = load_run(Run.of(profile, run))
    cal = ensure_calibration(Run.of(profile, run), progress=False)
    theta = np.asarray(cal.thresholds, dtype=np.float32)
    alive = np.flatnonzero(~np.asarray(cal.dead))
    feats = np.random.default_rng(seed).choice(alive, size=n, replace=False).tolist()
    fa = collect_feature_activations(sae, cache.acts("autointerp"), feats, theta, 4096, False)
    ctxs = collect_contexts(fa, cache.token_ids("autointerp"), cache.positions("autointerp"),
                            features=feats, seed=seed, **LEAN_CONTEXT)
    decode = profile_decoder(profile)
    out = []
    for f in feats:
        c = ctxs[f]
        expl = template_explanation([JudgeItem(decode(ex.token_ids), ex.active_mask()) for ex in c.explain])
        fitems = make_fuzz_items(c.activating, seed=[seed, f, 1])
        out.append((expl, [JudgeItem(decode(c.activating[x.example].token_ids), x.highlight) for x in fitems]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--run", default="solo")
    ap.add_argument("--features", type=int, default=8)
    args = ap.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    work = feature_items(args.profile, args.run, args.features)
    n_items = sum(len(it) for _, it in work)
    print(f"{len(work)} features, {n_items} fuzz items")
    model, tok = load_hf("smollm2-135m")
    model.eval()
    configs = {"full": dict(use_prefix_cache=False), "prefix-kv": dict(use_prefix_cache=True)}
    base, ref = None, None
    for name, kw in configs.items():
        with tempfile.TemporaryDirectory() as tmp:
            judge = LocalLikelihoodJudge(model, tok, cache_dir=tmp, **kw)
            judge.scores(*work[0][0:1], work[0][1][:1], "fuzz")  # warm-up (tokenizer, kernels)
        with tempfile.TemporaryDirectory() as tmp:
            judge = LocalLikelihoodJudge(model, tok, cache_dir=tmp, **kw)
            t0 = time.perf_counter()
            scores = [judge.scores(expl, items, "fuzz") for expl, items in work]
            dt = (time.perf_counter() - t0) / len(work)
        flat = np.concatenate([np.asarray(s) for s in scores])
        if ref is None:
            ref, base = flat, dt
        err = float(np.abs(flat - ref).max())
        print(f"{name:10s} {dt:6.3f} s/feature  ratio {base / dt:5.2f}x  max |Δscore| {err:.2e}")
        if err > 1e-3:
            raise SystemExit(f"{name} disagrees with the baseline by {err}")


if __name__ == "__main__":
    main()
