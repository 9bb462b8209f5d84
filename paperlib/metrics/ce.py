"""CE loss with an SAE reconstruction spliced into the residual stream via nnsight (method.md §3.4).

The reconstruction replaces resid_pre of block L (the output of block L−1) at every position
except BOS (the SAEs are trained without BOS positions, and the BOS residual is a huge outlier
that no SAE of this package models; SAELens' CE evaluations likewise keep BOS). Conditions:

- ``clean``: the unmodified model;
- ``spliced``: x → SAE reconstruction, per-token thresholds (the inference encoder) unless
  ``thresholds=None``, in which case BatchTopK over all non-BOS tokens of the LM batch;
- ``zero``: resid_pre set to 0 (zero ablation), the usual "no information" reference.

Losses are mean next-token cross-entropy (nats) over all predicted positions of the CE token
range, accumulated in fp64. ``overhead_pct = 100·(spliced − clean)/clean`` is the paper's
"CE increase over the baseline"; ``recovered = (zero − spliced)/(zero − clean)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from paperlib.data.lm import block_envoy

SpliceFn = Callable[[torch.Tensor], torch.Tensor]


def sae_splice(sae, thresholds: torch.Tensor | None = None) -> SpliceFn:
    """A function h [B, S, d] → raw-scale SAE reconstruction [B, S, d] (BOS handled by caller)."""

    def fn(h: torch.Tensor) -> torch.Tensor:
        B, S, d = h.shape
        flat = h.reshape(B * S, d).to(sae.W_enc.dtype)
        out = sae.reconstruct(flat, thresholds=thresholds)
        return out.reshape(B, S, d).to(h.dtype)

    return fn


def zero_splice(h: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(h)


def _block(lm, index: int):

    return block_envoy(lm, index)


def batch_ce(lm, ids: torch.Tensor, layer: int, splice: SpliceFn | None) -> tuple[float, int]:
    """Summed next-token CE (fp64) and count over one batch, with an optional splice."""
    if layer < 1:
        raise ValueError("splicing needs layer >= 1 (resid_pre of block 0 is the embedding)")
    with torch.no_grad(), lm.trace(ids):
        if splice is not None:
            h = _block(lm, layer - 1).output
            new = splice(h[:, 1:, :])
            _block(lm, layer - 1).output[:, 1:, :] = new
        logits = lm.output.logits.save()  # the model's own logits: after any final soft-capping (Gemma 2)
    # one row at a time: an fp64 [B, S, vocab] copy would need >4 GB for Gemma's 262k vocabulary.
    # log-softmax in fp32 (as the model computes it), summed in fp64.
    total, count = 0.0, 0
    targets = ids[:, 1:].to(logits.device)
    for row in range(logits.shape[0]):
        lp = torch.log_softmax(logits[row, :-1].float(), dim=-1)
        nll = -lp.gather(-1, targets[row, :, None]).squeeze(-1)
        total += float(nll.double().sum())
        count += int(nll.numel())
    return total, count


@dataclass(frozen=True)
class CEResult:
    condition: str
    ce: float
    n_tokens: int


def ce_losses(lm, token_ids: np.ndarray, layer: int, splices: dict[str, SpliceFn | None], *,
              batch_size: int = 16, progress: bool = True) -> dict[str, CEResult]:
    """Mean CE (nats) of each named condition on the same token rows (same batches for all)."""
    sums = {k: 0.0 for k in splices}
    counts = {k: 0 for k in splices}
    device = next(lm._module.parameters()).device
    starts = range(0, len(token_ids), batch_size)
    for s in tqdm(starts, desc=f"CE ({len(splices)} conditions)", disable=not progress):
        ids = torch.as_tensor(np.asarray(token_ids[s:s + batch_size], dtype=np.int64), device=device)
        for name, fn in splices.items():
            total, n = batch_ce(lm, ids, layer, fn)
            sums[name] += total
            counts[name] += n
    return {k: CEResult(k, sums[k] / counts[k], counts[k]) for k in splices}


def overhead_pct(spliced: float, clean: float) -> float:
    return 100.0 * (spliced - clean) / clean


def loss_recovered(spliced: float, clean: float, zero: float) -> float:
    return (zero - spliced) / (zero - clean)
