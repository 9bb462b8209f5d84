"""Activations → SAE codes, one token chunk at a time: the single encode loop behind calibration,
reconstruction, firing matrices and auto-interp activations.

``acts`` is a ``[T, d]`` activation array of any float dtype (an fp16 memmap of the activation cache,
an ndarray or a CPU tensor). Each chunk of ``batch_size`` rows is converted to fp32 on ``device`` and
encoded under ``torch.no_grad()``; a tqdm bar (off by default) counts the chunks.

* :func:`iter_inputs` — ``(start_row, x)``;
* :func:`iter_codes` — ``(start_row, x, codes)`` with per-token thresholds θ (inference firing,
  ``sae.encode(x, thresholds=θ)``) or, with ``thresholds=None``, BatchTopK over each chunk
  (``sae.encode(x)``, training semantics);
* :func:`iter_pre_acts` — ``(start_row, x, pre)`` with the ReLU pre-activations ``sae.pre_acts(x)``.

``sae`` is duck-typed (only ``encode`` / ``pre_acts`` are called).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["as_thresholds", "iter_codes", "iter_inputs", "iter_pre_acts"]


def as_thresholds(thresholds: Any, device: str | torch.device = "cpu") -> torch.Tensor:
    """Per-feature thresholds θ ``[n]`` (array, list or tensor) as an fp32 tensor on ``device``."""
    if isinstance(thresholds, torch.Tensor):
        return thresholds.detach().to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(thresholds), dtype=torch.float32, device=device)


def iter_inputs(acts: Any, batch_size: int = 4096, *, device: str | torch.device = "cpu",
                progress: bool = False, desc: str = "activations") -> Iterator[tuple[int, torch.Tensor]]:
    """``(start_row, x)`` for consecutive ``batch_size``-row chunks of ``acts [T, d]``; x is fp32 on
    ``device``."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    for s in tqdm(range(0, len(acts), batch_size), desc=desc, disable=not progress, leave=False):
        yield s, torch.as_tensor(np.asarray(acts[s:s + batch_size]), device=device).float()


@torch.no_grad()
def iter_codes(sae: Any, acts: Any, thresholds: Any, batch_size: int = 4096, *,
               device: str | torch.device = "cpu", progress: bool = False,
               desc: str = "encode") -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(start_row, x, codes)`` per chunk: ``codes = sae.encode(x, thresholds=θ)`` (θ as fp32 on
    ``device``, see :func:`as_thresholds`), or BatchTopK over the chunk ``sae.encode(x)`` when
    ``thresholds`` is None."""
    theta = None if thresholds is None else as_thresholds(thresholds, device)
    for s, x in iter_inputs(acts, batch_size, device=device, progress=progress, desc=desc):
        yield s, x, sae.encode(x) if theta is None else sae.encode(x, thresholds=theta)


@torch.no_grad()
def iter_pre_acts(sae: Any, acts: Any, batch_size: int = 4096, *, device: str | torch.device = "cpu",
                  progress: bool = False, desc: str = "pre-activations"
                  ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(start_row, x, pre)`` per chunk with the ReLU pre-activations ``pre = sae.pre_acts(x)``."""
    for s, x in iter_inputs(acts, batch_size, device=device, progress=progress, desc=desc):
        yield s, x, sae.pre_acts(x)
