"""Training-step throughput (tokens/s): sparse BatchTopK path vs a naive dense step, same process.

Measures, at the default profile's sizes (d = 576, n = 4608 = 8·d, k = 32, B = 1024) and at
B = 4096 (the reference step):

- ``naive``: a naive dense BatchTopK step (flattened ``torch.topk`` over [B·n], dense codes,
  dense decode matmul, dense autograd backward, decoder constraint, Adam);
- ``solo``: one primary step of :class:`paperlib.sae.trainer.Trainer` (sparse decode and backward);
- ``joint``: one joint macro-step (n_p primary steps with the penalty + n_m meta steps), reported
  per primary token;
- optionally (``--dead``) the same with a fraction of latents marked dead (AuxK active).

Times are the minimum over repetitions. Ratios are printed against the naive step measured in the
same process. SAELens and dictionary_learning are compared by ``make bench-peers`` (``benchmarks/peers.py``:
each library in its own venv and process, at B = 4096, against an encoder-forward bound timed in the same
process; table in ``artifacts/bench/peers.json``).

Usage: ``.venv/bin/python benchmarks/train.py [--batch 1024 4096] [--reps 3] [--dead 0.1]``.
On a shared, oversubscribed machine run with ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads
make small parallel ops (sort, embedding_bag, ...) up to ~70x slower under contention.
"""

from __future__ import annotations

import argparse
import time

import torch

from paperlib.config.profiles import get_profile
from paperlib.sae.arms import RunSpec
from paperlib.sae.models import BatchTopKSAE
from paperlib.sae.trainer import TrainConfig, Trainer


def naive_dense_step(sae: BatchTopKSAE, opt: torch.optim.Optimizer, x: torch.Tensor) -> float:
    """Textbook dense BatchTopK step (what SAELens-style implementations do)."""
    opt.zero_grad(set_to_none=True)
    xn = sae.normalize(x)
    pre = torch.relu((xn - sae.b_dec) @ sae.W_enc)
    flat = pre.flatten()
    idx = flat.topk(sae.k * x.shape[0], sorted=False).indices
    f = torch.zeros_like(flat).scatter(0, idx, flat[idx]).view_as(pre)
    recon = f @ sae.W_dec + sae.b_dec
    loss = (recon - xn).pow(2).mean()
    dead = sae.dead_mask()
    if dead.any():
        ka = min(sae.k_aux, int(dead.sum()))
        pd = pre.masked_fill(~dead, float("-inf"))
        vals, ai = pd.topk(ka, dim=1)
        fa = torch.zeros_like(pre).scatter(1, ai, vals.clamp_min(0))
        loss = loss + sae.aux_alpha * ((fa @ sae.W_dec) - (xn - recon).detach()).pow(2).mean()
    loss.backward()
    sae.project_decoder_grad()
    opt.step()
    sae.renorm_decoder()
    return float(loss.detach())


def _time(fn, reps: int) -> float:
    """Minimum wall time of ``reps`` calls after one warm-up (robust to a loaded machine)."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(batch: int, reps: int, dead_frac: float, d: int = 576, n: int = 4608, k: int = 32) -> dict:
    torch.manual_seed(0)
    prof = get_profile("default", n_latents=n, k=k, batch_size=batch, n_meta=round(0.09 * n))
    x = torch.randn(batch, d) * 2 + torch.randn(d)

    def mark_dead(sae: BatchTopKSAE) -> None:
        """Fix the dead set (repeating one batch would otherwise kill latents step by step)."""
        sae.steps_since_fired.zero_()
        if dead_frac > 0:
            sae.steps_since_fired[: int(dead_frac * n)] = 10**6

    naive = BatchTopKSAE(d, n, k, seed=0)
    mark_dead(naive)
    opt = torch.optim.Adam(naive.parameters(), lr=prof.sae.lr, betas=(0.9, 0.99))
    t_naive = _time(lambda: (naive_dense_step(naive, opt, x), mark_dead(naive)), reps)

    solo = Trainer(TrainConfig.from_profile(prof, RunSpec("solo"), d), torch.device("cpu"))
    mark_dead(solo.primary)
    t_solo = _time(lambda: (solo.primary_step(x), mark_dead(solo.primary)), max(reps, 3))

    joint = Trainer(TrainConfig.from_profile(prof, RunSpec("joint", lambda2=0.3, sigma2=1.0), d),
                    torch.device("cpu"))
    mark_dead(joint.primary)

    def macro() -> None:
        for _ in range(prof.meta.n_primary_steps):
            joint.macro_step(x)
            mark_dead(joint.primary)

    t_macro = _time(macro, 2) / prof.meta.n_primary_steps
    out = dict(batch=batch, d=d, n=n, k=k, n_meta=prof.meta.n_meta, dead_frac=dead_frac,
               naive=batch / t_naive, solo=batch / t_solo, joint=batch / t_macro)
    out["solo_vs_naive"] = out["solo"] / out["naive"]
    out["joint_vs_naive"] = out["joint"] / out["naive"]
    out["joint_overhead_pct"] = 100 * (t_macro / t_solo - 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dead", type=float, nargs="+", default=[0.0, 0.1],
                    help="fraction of latents marked dead (AuxK active)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    header = (f"{'B':>5} {'dead':>5} {'naive tok/s':>12} {'solo tok/s':>11} {'joint tok/s':>12} "
              f"{'solo/naive':>10} {'joint/naive':>11} {'joint overhead':>15}")
    print(header)
    for b in args.batch:
        for dead in args.dead:
            r = bench(b, args.reps, dead)
            print(f"{r['batch']:>5} {r['dead_frac']:>5.2f} {r['naive']:>12.0f} {r['solo']:>11.0f} "
                  f"{r['joint']:>12.0f} {r['solo_vs_naive']:>10.2f} {r['joint_vs_naive']:>11.2f} "
                  f"{r['joint_overhead_pct']:>14.1f}%", flush=True)


if __name__ == "__main__":
    main()
