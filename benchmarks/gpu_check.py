"""GPU check (issue 19, item 4): the default pipeline's model at paper geometry on CUDA, beside CPU in one script.

Measures tokens/s of three stages, each on CUDA (when present) and on CPU on a small slice, in the same process:

- **extraction**: resid_pre of the profile's layer through nnsight (SmolLM2-135M from its PyPI package, layer 12);
- **training**: the joint arm's macro-step (λ₂ = 0.3, σ² = 1, meta SAE every ``n_primary_steps``) at paper
  geometry, n = 16·d latents and k = 64, on batches of the profile's size; tok/s counts primary tokens;
- **co-occurrence**: exact counts N1, N11 of a k-sparse firing matrix [T, n] (CPU: the sparse int64 product;
  CUDA: fp32 dense binary matmuls added into int64, :func:`paperlib.metrics.cooccurrence.count`).

Then it checks that CPU and CUDA give exactly the same counts and the same φ on the same firing slice
(``np.array_equal``, no tolerance). Without CUDA it runs the CPU parts, checks the dense (GPU) counting code
path on CPU against the sparse one, says the CUDA parts were skipped and exits 0. Exit 1: counts or φ differ.

Usage::

    python benchmarks/gpu_check.py                 # SmolLM2-135M, n = 9216, k = 64, ~1 min of training per device
    python benchmarks/gpu_check.py --tiny          # tiny random GPT-2, n = 1024: seconds (tests)

Raw tok/s depend on the machine and its load; the ratio CUDA / CPU is the figure to compare.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from paperlib.config.profiles import Profile, get_profile
from paperlib.data.activations import resid_pre
from paperlib.data.lm import load_lm
from paperlib.metrics.cooccurrence import count, count_dense_torch, phi
from paperlib.sae.arms import RunSpec
from paperlib.sae.trainer import TrainConfig, Trainer

PAPER_K = 64
LATENTS_PER_DIM = 16
JOINT = RunSpec("joint", lambda2=0.3, sigma2=1.0)


def check_profile(tiny: bool) -> Profile:
    """The profile measured: ``default`` (SmolLM2-135M, layer 12) or, with ``--tiny``, the tiny GPT-2 profile."""
    return get_profile("paper-arch-smoke-gpt2" if tiny else "default")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], int], device: str, seconds: float, min_calls: int = 2) -> float:
    """Tokens per second of repeated ``fn()`` calls (each returns its token count) for about ``seconds``
    after one warm-up call, at least ``min_calls`` calls."""
    fn()
    _sync(device)
    t0, tokens, calls = time.perf_counter(), 0, 0
    while calls < min_calls or time.perf_counter() - t0 < seconds:
        tokens += fn()
        calls += 1
    _sync(device)
    return tokens / (time.perf_counter() - t0)


def extraction_rate(p: Profile, device: str, seconds: float) -> tuple[float, int]:
    """(tok/s of resid_pre through nnsight on random token rows, d) on ``device``."""
    lm = load_lm(p.data.model, dtype=p.data.lm_dtype, device=device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(lm.tokenizer), (p.data.lm_batch_size, p.data.context), generator=gen).to(device)
    d = int(resid_pre(lm, ids[:1], p.data.layer).shape[-1])
    return timed(lambda: (resid_pre(lm, ids, p.data.layer), ids.numel())[1], device, seconds), d


def training_rate(p: Profile, d: int, device: str, seconds: float, batch: int) -> float:
    """Primary tokens/s of the joint arm's macro-step at n = 16·d, k = 64 (schedules mid-run, full penalty)."""
    n = LATENTS_PER_DIM * d
    prof = p.replace(n_latents=n, k=PAPER_K, batch_size=batch, n_meta=round(0.09 * n))
    tr = Trainer(TrainConfig.from_profile(prof, JOINT, d), torch.device(device))
    tr.total_steps, tr.step = 10_000, 5_000
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(batch, d, generator=gen) * 2 + torch.randn(d, generator=gen)).to(device)
    return timed(lambda: (tr.macro_step(x), batch)[1], device, seconds, min_calls=prof.meta.n_primary_steps)


def firing(T: int, n: int, k: int, seed: int = 0) -> sp.csr_matrix:
    """A [T, n] bool firing matrix with k distinct random latents per token (skewed rates, a few never fire)."""
    rng = np.random.default_rng(seed)
    w = rng.lognormal(0.0, 1.5, size=n)
    w[: n // 100] = 0.0
    cols = np.stack([rng.choice(n, size=k, replace=False, p=w / w.sum()) for _ in range(T)])
    rows = np.repeat(np.arange(T), k)
    return sp.csr_matrix((np.ones(T * k, dtype=bool), (rows, cols.ravel())), shape=(T, n))


def cooccurrence_rate(fired: sp.csr_matrix, device: str) -> float:
    """Tokens/s of the exact counts of ``fired`` on ``device`` (one timed call after a warm-up)."""
    dense = torch.as_tensor(fired.toarray()).to(device) if device == "cuda" else None
    return timed(lambda: (count(dense if dense is not None else fired), fired.shape[0])[1], device, 0.0, 1)


def agreement(fired: sp.csr_matrix, device: str) -> dict[str, bool]:
    """Exact equality of N1, N11 and φ between the sparse CPU counts and the dense counts on ``device``."""
    ref = count(fired)
    other = count_dense_torch(torch.as_tensor(fired.toarray()).to(device))
    return {"N1": bool(np.array_equal(ref.N1, other.N1)), "N11": bool(np.array_equal(ref.N11, other.N11)),
            "phi": bool(np.array_equal(phi(ref), phi(other)))}


def _row(stage: str, cpu: float, gpu: float | None) -> str:
    g = f"{gpu:>14,.0f}" if gpu is not None else f"{'skipped':>14}"
    ratio = f"{gpu / cpu:>8.1f}x" if gpu is not None else f"{'':>9}"
    return f"{stage:<26}{cpu:>14,.0f}{g}{ratio}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random GPT-2 and short timings (seconds, for tests)")
    ap.add_argument("--seconds", type=float, default=None, help="timing per stage on CUDA (default 60, tiny 1)")
    ap.add_argument("--cpu-seconds", type=float, default=None, help="timing per stage on CPU (default 20, tiny 1)")
    ap.add_argument("--cooc-tokens", type=int, default=None, help="CPU co-occurrence slice (default 2048, tiny 256)")
    args = ap.parse_args(argv)
    p = check_profile(args.tiny)
    gpu_s = args.seconds if args.seconds is not None else (1.0 if args.tiny else 60.0)
    cpu_s = args.cpu_seconds if args.cpu_seconds is not None else (1.0 if args.tiny else 20.0)
    t_cpu = args.cooc_tokens or (256 if args.tiny else 2048)
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    ext_cpu, d = extraction_rate(p, "cpu", cpu_s)
    n = LATENTS_PER_DIM * d
    gpu_name = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"profile {p.name}: model {p.data.model}, layer {p.data.layer}, d = {d}, n = 16·d = {n}, k = {PAPER_K}, "
          f"batch {p.sae.batch_size}; torch {torch.__version__}, CUDA device: {gpu_name}")
    rates = {"extraction (nnsight)": (ext_cpu, extraction_rate(p, "cuda", gpu_s)[0] if cuda else None),
             "training (joint macro-step)": (training_rate(p, d, "cpu", cpu_s, p.sae.batch_size),
                                             training_rate(p, d, "cuda", gpu_s, p.sae.batch_size) if cuda else None)}
    fired = firing(t_cpu, n, PAPER_K)
    gpu_fired = firing(16 * t_cpu, n, PAPER_K, seed=1) if cuda else None
    rates["co-occurrence (counts)"] = (cooccurrence_rate(fired, "cpu"),
                                       cooccurrence_rate(gpu_fired, "cuda") if cuda else None)
    print(f"{'stage':<26}{'CPU tok/s':>14}{'CUDA tok/s':>14}{'ratio':>9}")
    for stage, (c, g) in rates.items():
        print(_row(stage, c, g))
    agree = agreement(fired, "cuda" if cuda else "cpu")
    where = "CPU sparse vs CUDA dense" if cuda else "CPU sparse vs the dense (GPU) counting path on CPU"
    print(f"exact agreement of counts and φ on {t_cpu} tokens ({where}): " +
          ", ".join(f"{k} {'equal' if v else 'DIFFERENT'}" for k, v in agree.items()))
    if not cuda:
        print("CUDA not available: the CUDA measurements and the CPU/CUDA agreement check were skipped")
    return 0 if all(agree.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
