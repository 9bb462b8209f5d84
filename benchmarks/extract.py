"""Activation extraction throughput: paperlib's nnsight pipeline vs a plain transformers forward.

Both read resid_pre of block L on the same batches in one process; the baseline is a plain
``model.model(...)`` call stopped by a forward hook on block L−1 (the cheapest way to truncate a
transformers forward). Runs are interleaved to share machine noise; the ratio is printed.

    python benchmarks/extract.py [--profile default] [--batches 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from paperlib.config.profiles import get_profile
from paperlib.data.activations import resid_pre
from paperlib.data.lm import decoder_layers, load_lm


class _Stop(Exception):
    pass


def plain_truncated(model, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """resid_pre of ``layer`` with plain transformers: hook block ``layer − 1`` and stop."""
    out: dict[str, torch.Tensor] = {}

    def hook(_mod, _inp, output):
        out["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = decoder_layers(model)[layer - 1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model.model(ids)
    except _Stop:
        pass
    finally:
        handle.remove()
    return out["h"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--batches", type=int, default=6)
    args = ap.parse_args()
    p = get_profile(args.profile)
    torch.manual_seed(0)
    lm = load_lm(p.data.model, dtype=p.data.lm_dtype)
    hf = lm._module
    batches = [torch.randint(100, 40000, (p.data.lm_batch_size, p.data.context)) for _ in range(args.batches + 1)]
    # warm-up and equality check
    a, b = resid_pre(lm, batches[0], p.data.layer), plain_truncated(hf, batches[0], p.data.layer)
    assert torch.equal(a, b), "pipeline and plain forward disagree"
    times = {"nnsight pipeline": [], "plain transformers": []}
    for ids in batches[1:]:
        t0 = time.perf_counter()
        resid_pre(lm, ids, p.data.layer)
        t1 = time.perf_counter()
        plain_truncated(hf, ids, p.data.layer)
        t2 = time.perf_counter()
        times["nnsight pipeline"].append(t1 - t0)
        times["plain transformers"].append(t2 - t1)
    tokens = p.data.lm_batch_size * p.data.context
    print(f"profile={p.name} model={p.data.model} layer={p.data.layer} batch={p.data.lm_batch_size}x{p.data.context} "
          f"threads={torch.get_num_threads()}")
    for name, ts in times.items():
        print(f"  {name:20s} {tokens / np.median(ts):8.0f} tok/s (median of {len(ts)} batches)")
    ratio = np.median(times["nnsight pipeline"]) / np.median(times["plain transformers"])
    print(f"  pipeline time / plain time = {ratio:.3f} (overhead {100 * (ratio - 1):+.1f}%)")


if __name__ == "__main__":
    main()
