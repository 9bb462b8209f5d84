"""Training-step throughput (tokens/s) of every arm against the encoder-forward bound, same process.

Two geometries (d = 576, k = 32):

- ``default``: the default profile's own n and batch size (n = 2304, B = 2048), what ``make reproduce``
  trains;
- ``reference``: n = 8·d = 4608 at B = 4096 (the wider SAE and larger batch that ``make bench-peers`` also times).

Per geometry, in one process and on the same fixed batch:

- ``bound``: the encoder forward alone, relu(x @ W_enc) (2·B·d·n FLOPs, the only unavoidable dense work), into a
  [B, n] buffer kept between calls as the training step does (a fresh result per call would add page faults:
  ~9% at the default geometry, ~48% at the reference one on the development machine);
- ``screen_mm``: the screened encoder's bfloat16 product alone (see below);
- ``naive``: a textbook dense BatchTopK step (flattened ``torch.topk`` over [B·n], dense codes, dense
  decode matmul, dense autograd backward, decoder constraint, Adam);
- ``solo``: one primary step of :class:`paperlib.sae.trainer.Trainer`;
- ``joint``, ``randcritic``, ``ortho``: macro-steps of those arms (n_p primary steps with the penalty at
  full weight, plus the n_m meta steps that end each block for ``joint``), reported per primary token.

The table prints tok/s, each arm's cost per token relative to solo (``× solo cost``: 1.10 means 10% more
time per token) and the solo step's share of the bound (``solo / bound``).

Where the screened encoder runs (:mod:`paperlib.sae.screen`, a CPU with bfloat16 arithmetic), the step does not
compute the float32 product that ``bound`` times: its dense product is a bfloat16 one with float32 sums, timed
alone as ``screen_mm`` (same batch and weights, operands converted beforehand), and exact float32 dot products
for the few candidates it lets through. So ``solo / bound`` can exceed 1 where the sparse work is small relative
to the product (the larger geometry).

Each arm's ``floor`` is the cost relative to solo that the dense products the arm adds would alone impose on
this solo step, timed in the same rounds, computed as the step computes them (the bfloat16 product where the
screen runs): the meta SAE's encoder product over all n decoder rows ([n, d] @ [d, m], ``meta_mm``), once per
primary step for ``randcritic`` and, for ``joint``, also once per meta step (n_m per n_p primary steps); the
chunked Gram matrices of the OrtSAE penalty (``gram``, screened by a bfloat16 product as well where it runs). No
implementation with these dense products can go below it, however fast its sparse and element-wise work;
``floor@0.75`` is the same with a solo step at 0.75 of the bound (a faster solo step makes every fixed overhead
a larger ratio). The implementations are timed in rounds (each once per round, after one warm-up), so a drift
of the machine's speed affects all of them alike; each tok/s figure is the fastest round, per primary step, and
each ratio (``× solo cost``, ``solo/bound``, the floors) is the median over rounds of that round's ratio (a line
below each row gives the interquartile range of the arms' round ratios): both
implementations of a ratio are timed seconds apart, so a machine whose speed varies from minute to minute (the
development machine's solo step varied by ±20% between runs) moves both alike. ``--dead`` marks fractions of
latents dead (AuxK active): by default none, and 0.007 (16 of the default profile's 2304), as in its runs, where
AuxK is active in most steps. SAELens and dictionary_learning are compared by ``make bench-peers``
(``benchmarks/peers.py``).

``--trained artifacts/default`` (after ``make reproduce``) times the trained state instead of fresh weights on one
random batch: solo and each arm start from that run's weights (solo, joint-l0.3-s1, randcritic-l0.3-s1, ortho-g0.1,
with their meta SAEs), keep that run's own dead set fixed, and cycle through n_p batches of its training
activations; a second row clears every dead set (no AuxK anywhere), since the runs end with different dead
latents (the last line of each row gives them). Trained decoders and real activations change how much the
screens let through (and with it the selection's and dot products' cost), so these ratios are closer to what a
run pays than the fresh-weight ones.

Usage: ``.venv/bin/python benchmarks/train.py [--geometry default reference] [--threads 2] [--reps 5]
[--trained artifacts/default]``.
On a shared machine run with ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads make small parallel
ops up to ~70x slower under contention.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from paperlib.config.profiles import get_profile
from paperlib.sae import blas, kernels, screen
from paperlib.sae.arms import RunSpec
from paperlib.sae.models import BatchTopKSAE
from paperlib.sae.trainer import TrainConfig, Trainer, load_trained_meta, load_trained_sae


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


GEOMETRIES = {"default": None, "reference": (4608, 4096)}
"""n and B per geometry (``None``: the default profile's own)."""

ARMS = {"joint": RunSpec("joint", lambda2=0.3, sigma2=1.0),
        "randcritic": RunSpec("randcritic", lambda2=0.3, sigma2=1.0),
        "ortho": RunSpec("ortho", gamma=0.1)}


def dense_product(x: torch.Tensor, W: torch.Tensor):
    """The dense product the training step computes for ``x @ W``: the screened encoder's bfloat16 product (float32
    sums rounded to bfloat16, operands converted as the step does) where it runs, else the float32 product."""
    out = torch.empty(x.shape[0], W.shape[1])
    if not screen.applies(x, W):
        return lambda: torch.mm(x, W, out=out)
    ops = []
    for t in (x, W.t().contiguous()):  # 64-byte aligned, as the step's work arrays
        bits = t.bfloat16().view(torch.int16).numpy().view("uint16")
        op = kernels.aligned_empty(bits.size, bits.dtype).reshape(bits.shape)
        op[...] = bits
        ops.append(op)
    out_bits = out.numpy().view("uint16").reshape(-1)[:out.numel()].reshape(out.shape)
    return lambda: blas.gemm_bf16_nt(ops[0], ops[1], out_bits)


def _trainer(prof, spec: RunSpec, d: int) -> Trainer:
    """A trainer in the middle of its run: schedules at full learning rate and full penalty weight."""
    t = Trainer(TrainConfig.from_profile(prof, spec, d), torch.device("cpu"))
    t.total_steps, t.step = 1000, 500
    return t


TRAINED_RUNS = {"solo": "solo", "joint": "joint-l0.3-s1", "randcritic": "randcritic-l0.3-s1", "ortho": "ortho-g0.1"}
"""The runs of a finished default run whose weights ``--trained`` loads for solo and each arm of :data:`ARMS`."""


def trained_batches(root: Path, batch: int, count: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` batches of consecutive rows from seeded random offsets of the run's training activations."""
    path = root / "activations" / "train.npy"
    if not path.exists():
        raise FileNotFoundError(f"--trained {root}: no {path}; give the artifacts folder of a finished default run "
                                "(artifacts/default after `make reproduce`)")
    acts = np.load(path, mmap_mode="r")
    starts = np.random.default_rng(seed).integers(0, acts.shape[0] - batch, count)
    return [torch.from_numpy(np.asarray(acts[s:s + batch], dtype=np.float32)) for s in starts]


def load_trained(tr: Trainer, root: Path, name: str) -> None:
    """The finished run ``name``'s primary (and meta) SAE into ``tr``, weights and state (dead-latent counters)."""
    run = root / "runs" / TRAINED_RUNS[name]
    sae = load_trained_sae(run)
    if (sae.d_in, sae.n_latents) != (tr.primary.d_in, tr.primary.n_latents):
        raise ValueError(f"--trained: {run} holds an SAE of d={sae.d_in}, n={sae.n_latents}; the benchmark's default "
                         f"geometry is d={tr.primary.d_in}, n={tr.primary.n_latents}")
    tr.primary.load_state_dict(sae.state_dict())
    if tr.meta is not None:
        tr.meta.load_state_dict(load_trained_meta(run).state_dict())


def bench(geometry: str, reps: int, dead_frac: float, d: int = 576, k: int = 32, trained: Path | None = None,
          trained_dead: bool = True) -> dict:
    torch.manual_seed(0)
    base = get_profile("default")
    n, batch = GEOMETRIES[geometry] or (base.sae.n_latents, base.sae.batch_size)
    prof = base if GEOMETRIES[geometry] is None else get_profile(
        "default", n_latents=n, k=k, batch_size=batch, n_meta=round(0.09 * n))
    n_p = prof.meta.n_primary_steps
    if trained is not None:
        if GEOMETRIES[geometry] is not None:
            raise ValueError("--trained loads the default profile's runs: use --geometry default")
        pool = trained_batches(trained, batch, n_p)
        d = pool[0].shape[1]
    else:
        pool = [torch.randn(batch, d) * 2 + torch.randn(d)]
    x = pool[0]
    saved_counters: dict[int, torch.Tensor] = {}

    def mark_dead(sae: BatchTopKSAE) -> None:
        """Fix the dead set (repeating one batch would otherwise kill latents step by step): with ``trained``, the
        run's own at its end; else the first ``dead_frac`` of the latents."""
        if id(sae) in saved_counters:
            sae.steps_since_fired.copy_(saved_counters[id(sae)])
            return
        sae.steps_since_fired.zero_()
        if dead_frac > 0:
            sae.steps_since_fired[: int(dead_frac * n)] = 10**6

    W = torch.randn(d, n)
    naive = BatchTopKSAE(d, n, k, seed=0)
    opt = torch.optim.Adam(naive.parameters(), lr=prof.sae.lr, betas=(0.9, 0.99))
    steps = {"bound": 3, "naive": 1}
    pre = torch.empty(batch, n)
    work = {"bound": lambda: [torch.mm(x, W, out=pre).relu_() for _ in range(3)],
            "naive": lambda: (naive_dense_step(naive, opt, x), mark_dead(naive))}
    trainers: dict[str, Trainer] = {}
    for name, spec in (("solo", RunSpec("solo")), *ARMS.items()):
        tr = trainers[name] = _trainer(prof, spec, d)
        if trained is not None:
            load_trained(tr, trained, name)
            counters = tr.primary.steps_since_fired.clone()
            saved_counters[id(tr.primary)] = counters if trained_dead else torch.zeros_like(counters)

        def block(tr=tr) -> None:  # n_p primary steps (with the meta phase that ends the block)
            for j in range(n_p):
                tr.macro_step(pool[j % len(pool)])
                mark_dead(tr.primary)

        work[name], steps[name] = block, n_p
    mark_dead(naive)
    rows, w_meta = torch.randn(n, d), torch.randn(d, prof.meta.n_meta)
    blocks = torch.randn(n, d).tensor_split(prof.grid.ortho_chunks)
    work["screen_mm"] = dense_product(x, W)
    work["meta_mm"] = dense_product(rows, w_meta)
    grams = [dense_product(b, b.t().contiguous()) for b in blocks]
    work["gram"] = lambda: [g() for g in grams]
    steps.update(screen_mm=1, meta_mm=1, gram=1)
    times = {name: [] for name in work}
    for fn in work.values():
        fn()  # warm-up
    for _ in range(reps):  # rounds over all implementations: a drift of the machine's speed hits each alike
        for name, fn in work.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / steps[name])
    best = {name: min(ts) for name, ts in times.items()}
    t = {name: np.array(ts) for name, ts in times.items()}
    solo_dead = int(trainers["solo"].primary.dead_mask().sum())
    out = dict(geometry=geometry, batch=batch, d=d, n=n, k=k, dead_frac=solo_dead / n,
               dead={name: int(tr.primary.dead_mask().sum()) for name, tr in trainers.items()})
    out.update({name: batch / t for name, t in best.items()})
    for name in ("naive", *ARMS):
        out[f"{name}_cost"] = float(np.median(t[name] / t["solo"]))
        out[f"{name}_cost_iqr"] = tuple(float(v) for v in np.percentile(t[name] / t["solo"], [25, 75]))
    out["solo_vs_bound"] = float(np.median(t["bound"] / t["solo"]))
    extra = {"joint": t["meta_mm"] * (1 + prof.meta.n_meta_steps / n_p), "randcritic": t["meta_mm"],
             "ortho": t["gram"]}
    for name, dense in extra.items():
        out[f"{name}_floor"] = 1 + float(np.median(dense / t["solo"]))
        out[f"{name}_floor75"] = 1 + float(np.median(dense * 0.75 / t["bound"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--geometry", nargs="+", default=None, choices=list(GEOMETRIES),
                    help="default: both (only 'default' with --trained)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dead", type=float, nargs="+", default=None,
                    help="fractions of latents marked dead (AuxK active); default 0 and 0.007, the default profile's "
                         "runs (up to 16 of 2304 latents dead, AuxK active in 50-90%% of their steps); not with "
                         "--trained, which uses each run's own dead set, then none")
    ap.add_argument("--trained", type=Path, default=None,
                    help="artifacts folder of a finished default run (artifacts/default): solo and each arm start "
                         "from that run's trained weights, dead-latent counters (its own dead set, kept fixed; then "
                         "none) and meta SAE, on batches of its training activations; default geometry only")
    args = ap.parse_args()
    if args.geometry is None:
        args.geometry = ["default"] if args.trained is not None else list(GEOMETRIES)
    if args.trained is not None and args.geometry != ["default"]:
        ap.error("--trained loads the default profile's runs (n = 2304, B = 2048): use --geometry default")
    if args.trained is not None and args.dead is not None:
        ap.error("--dead marks latents of fresh weights; --trained uses each run's own dead set (then none): "
                 "drop --dead")
    args.dead = args.dead or [0.0, 0.007]
    torch.set_num_threads(args.threads)
    print(f"{time.strftime('%F %T')} torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"screened encoder (bfloat16 product): {'yes' if blas.available() else 'no (float32 product)'}")
    cols = ["bound", "screen_mm", "naive", "solo", *ARMS]
    floors = [f"{a}_{f}" for a in ARMS for f in ("floor", "floor75")]
    print(f"{'geometry':>9} {'n':>5} {'B':>5} {'dead':>5} " + " ".join(f"{c + ' tok/s':>16}" for c in cols)
          + f" {'solo/bound':>10} " + " ".join(f"{c + ' ×solo cost':>18}" for c in ("naive", *ARMS))
          + " " + " ".join(f"{c.replace('floor75', 'floor@0.75'):>18}" for c in floors))
    for g in args.geometry:
        for dead in args.dead if args.trained is None else [True, False]:  # with --trained: the runs' own or none
            r = (bench(g, args.reps, dead) if args.trained is None else
                 bench(g, args.reps, 0.0, trained=args.trained, trained_dead=dead))
            print(f"{g:>9} {r['n']:>5} {r['batch']:>5} {r['dead_frac']:>5.3f} "
                  + " ".join(f"{r[c]:>16,.0f}" for c in cols) + f" {r['solo_vs_bound']:>10.2f} "
                  + " ".join(f"{r[c + '_cost']:>18.2f}" for c in ("naive", *ARMS))
                  + " " + " ".join(f"{r[c]:>18.3f}" for c in floors), flush=True)
            print(f"{'':>27} interquartile range of the rounds' ratios: "
                  + ", ".join(f"{c} {r[c + '_cost_iqr'][0]:.2f}–{r[c + '_cost_iqr'][1]:.2f}" for c in ARMS)
                  + f" ({args.reps} rounds); dead latents: "
                  + ", ".join(f"{name} {count}" for name, count in r["dead"].items()), flush=True)


if __name__ == "__main__":
    main()
