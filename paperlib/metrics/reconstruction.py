"""Reconstruction metrics (method.md §3.4, paper §5.3, App. B, App. D).

Metrics part (this section): streamed over token chunks with fp64 accumulation.

* ``mse``   — mean over tokens and d of (x̂ − x̃)² in the normalised space (= the training L2 loss).
* ``fve``   — centred fraction of variance explained, 1 − Σ‖x̃ − x̂‖² / Σ‖x̃ − mean_t(x̃)‖²
  (the mean is the per-dimension mean over the evaluated tokens), also in the normalised space.
* ``l0``    — mean (and std) number of nonzero codes per token under the given encoding
  (per-token thresholds θ, or BatchTopK over ``batch_size``-token batches when θ is None).
* dead latents (never firing on these tokens), the per-feature firing-rate distribution
  (quantiles and a fixed log10 histogram, comparable across SAEs), activation-norm statistics
  (raw ‖x‖₂, normalised ‖x̃‖₂, ‖x̂‖₂, ratio ‖x̂‖/‖x̃‖, code L1, mean nonzero code value).

The CE-splice section (nnsight; clean vs spliced vs zero-ablation) is added by the lead below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from paperlib.config.checks import check_chunk
from paperlib.metrics.firing import as_thresholds, iter_pre_acts
from paperlib.metrics.streaming import StreamingMoments
from paperlib.sae.models import batch_topk_mask

RATE_LOG10_EDGES = np.round(np.arange(-8.0, 0.0 + 1e-9, 0.1), 10)  # fixed bins for firing-rate histograms
RATE_QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


def _t64(a: Any) -> torch.Tensor:
    """``a`` (array or tensor) as a CPU fp64 tensor."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double()
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _summary(m: StreamingMoments) -> dict[str, float]:
    """mean (0 when empty), std (ddof = 1), min and max of a scalar stream."""
    return {"mean": m.mean if m.count else 0.0, "std": m.std(ddof=1), "min": m.min, "max": m.max}


@dataclass
class ReconMetrics:
    """Result of :func:`reconstruction_metrics` / :meth:`ReconAccumulator.result`."""

    n_tokens: int
    d: int
    n_latents: int
    mse: float
    fve: float
    sse: float
    sst: float
    l0: float
    l0_std: float
    n_dead: int
    dead_frac: float
    firing_rate_quantiles: dict[str, float]
    input_norm: dict[str, float]
    normalized_norm: dict[str, float]
    recon_norm: dict[str, float]
    norm_ratio: dict[str, float]
    code_l1: float
    mean_active_value: float
    encoding: str
    firing_counts: np.ndarray = field(repr=False)
    rate_hist_counts: np.ndarray = field(repr=False)

    @property
    def firing_rates(self) -> np.ndarray:
        return self.firing_counts / max(self.n_tokens, 1)

    @property
    def rate_hist_edges(self) -> np.ndarray:
        """log10 firing-rate bin edges of ``rate_hist_counts`` (dead features are not in it)."""
        return RATE_LOG10_EDGES

    def to_dict(self, with_arrays: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_arrays:
            d.pop("firing_counts")
            d.pop("rate_hist_counts")
        return d


class ReconAccumulator:
    """Streams (x̃, x̂, codes[, raw x]) chunks into fp64 totals; core of the metrics, SAE-free."""

    def __init__(self, d: int, n_latents: int, encoding: str = "thresholds") -> None:
        self.d, self.n_latents, self.encoding = int(d), int(n_latents), encoding
        self.T = 0
        self.sse = 0.0
        self.sum_x = np.zeros(d, dtype=np.float64)
        self.sumsq_x = 0.0
        self.fire = np.zeros(n_latents, dtype=np.int64)
        self.l0 = StreamingMoments("l0")
        self.raw_norm = StreamingMoments("input norm")
        self.xn_norm = StreamingMoments("normalised input norm")
        self.xh_norm = StreamingMoments("reconstruction norm")
        self.ratio = StreamingMoments("norm ratio")
        self.code_l1 = 0.0
        self.active_sum = 0.0

    def update(self, x_norm: Any, x_hat: Any, codes: Any, x_raw: Any | None = None) -> None:
        """Add a chunk: normalised inputs ``[B, d]``, reconstructions ``[B, d]`` (normalised space),
        codes ``[B, n]`` and optionally the raw inputs ``[B, d]`` (for activation-norm statistics).
        Arrays or tensors; every sum is taken in fp64."""
        xn, xh = _t64(x_norm), _t64(x_hat)
        if xn.shape != xh.shape or xn.ndim != 2 or xn.shape[1] != self.d:
            raise ValueError(f"x_norm {tuple(xn.shape)} and x_hat {tuple(xh.shape)} must both be [B, {self.d}]")
        f = codes.detach().cpu() if isinstance(codes, torch.Tensor) else torch.as_tensor(np.asarray(codes))
        if tuple(f.shape) != (xn.shape[0], self.n_latents):
            raise ValueError(f"codes must be [B, {self.n_latents}], got {tuple(f.shape)}")
        self.T += xn.shape[0]
        self.sse += float(torch.square(xh - xn).sum())
        self.sum_x += xn.sum(0).numpy()
        self.sumsq_x += float(torch.square(xn).sum())
        nz = f != 0
        ones = nz.to(torch.float32)  # 0/1 sums are exact in fp32 below 2^24 rows; a bool sum is ~5x slower here
        if ones.shape[0] >= 2**24:
            raise ValueError(f"chunks must have fewer than 2^24 rows, got {ones.shape[0]}")
        self.fire += ones.sum(0).numpy().astype(np.int64)
        self.l0.update(ones.sum(1).numpy().astype(np.float64))
        active = f[nz].double()  # the nonzero codes only: the zeros add nothing to either sum
        self.code_l1 += float(active.abs().sum())
        self.active_sum += float(active.sum())
        nxn = torch.linalg.vector_norm(xn, dim=1).numpy()
        nxh = torch.linalg.vector_norm(xh, dim=1).numpy()
        self.xn_norm.update(nxn)
        self.xh_norm.update(nxh)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = nxh / nxn
        self.ratio.update(r[np.isfinite(r)])
        if x_raw is not None:
            self.raw_norm.update(torch.linalg.vector_norm(_t64(x_raw), dim=1).numpy())

    def result(self) -> ReconMetrics:
        if self.T == 0:
            raise ValueError("no tokens accumulated")
        T = self.T
        sst = self.sumsq_x - float(np.square(self.sum_x).sum()) / T
        n_act = int(self.fire.sum())
        fs = firing_summary(self.fire, T)
        return ReconMetrics(
            n_tokens=T, d=self.d, n_latents=self.n_latents, mse=self.sse / (T * self.d),
            fve=1.0 - self.sse / sst if sst > 0 else float("nan"), sse=self.sse, sst=sst,
            l0=self.l0.mean, l0_std=self.l0.std(ddof=1), n_dead=fs["n_dead"], dead_frac=fs["dead_frac"],
            firing_rate_quantiles=fs["firing_rate_quantiles"],
            input_norm=_summary(self.raw_norm) if self.raw_norm.count else {},
            normalized_norm=_summary(self.xn_norm), recon_norm=_summary(self.xh_norm),
            norm_ratio=_summary(self.ratio), code_l1=self.code_l1 / T,
            mean_active_value=self.active_sum / n_act if n_act else float("nan"),
            encoding=self.encoding, firing_counts=self.fire.copy(), rate_hist_counts=fs["rate_hist_counts"],
        )


def firing_summary(counts: np.ndarray, n_tokens: int) -> dict[str, Any]:
    """Dead latents, firing-rate quantiles and the log10 rate histogram from per-feature counts."""
    counts = np.asarray(counts, dtype=np.int64)
    rates = counts / max(int(n_tokens), 1)
    alive = counts > 0
    with np.errstate(divide="ignore"):
        lr = np.log10(rates[alive])
    hist, _ = np.histogram(np.clip(lr, RATE_LOG10_EDGES[0], RATE_LOG10_EDGES[-1]), bins=RATE_LOG10_EDGES)
    return {"n_dead": int((~alive).sum()), "dead_frac": float((~alive).mean()),
            "firing_rate_quantiles": {f"q{q:g}": float(np.quantile(rates, q)) for q in RATE_QUANTILES},
            "rate_hist_counts": hist.astype(np.int64)}


def _decode_sparse(sae: Any, codes: torch.Tensor) -> torch.Tensor:
    """x̂ = codes W_dec + b_dec in the normalised space, with the codes as a CSR matrix: only the nonzero codes
    (about k of the n per token) are multiplied, the same sum as the dense product up to reassociation."""
    return sae.decode(codes.to_sparse_csr())


@torch.no_grad()
def reconstruction_metrics_pair(sae: Any, acts: Any, thresholds: Any, *, batch_size: int = 4096,
                                device: str | torch.device = "cpu", progress: bool = True,
                                what: str = "activations") -> tuple[ReconMetrics, ReconMetrics]:
    """:func:`reconstruction_metrics` of ``sae`` on ``acts`` under both encodings from one encoder pass:
    ``(thresholded with θ = thresholds, BatchTopK over each batch_size-token batch)``. Each chunk's
    pre-activations are computed once and both code matrices are taken from them (the encoder product is most
    of the cost)."""
    encodings = dict([_encoding(sae, thresholds, device), _encoding(sae, None, device)])
    acc = _accumulate(sae, acts, encodings, batch_size, device, progress, what)
    return acc["thresholds"], acc["batchtopk"]


@torch.no_grad()
def reconstruction_metrics(sae: Any, acts: Any, thresholds: Any | None = None, *, batch_size: int = 4096,
                           device: str | torch.device = "cpu", progress: bool = True,
                           what: str = "activations") -> ReconMetrics:
    """Reconstruction metrics of ``sae`` on raw activations ``acts [T, d]`` (array/memmap/tensor).

    ``thresholds`` (tensor/array [n]) → per-token encoding ``pre · 1[pre > θ]`` (as ``sae.encode(x,
    thresholds=θ)``); ``None`` → BatchTopK over each ``batch_size``-token batch (training semantics).
    Non-finite activation rows raise :class:`~paperlib.config.checks.NonFiniteError` naming ``what``, the count
    and the rows.
    """
    name, encode = _encoding(sae, thresholds, device)
    return _accumulate(sae, acts, {name: encode}, batch_size, device, progress, what)[name]


def _encoding(sae: Any, thresholds: Any | None, device: str | torch.device) -> tuple[str, Any]:
    """(name, pre-activations → codes): per-token thresholds ``pre · 1[pre > θ]`` (as ``sae.encode(x,
    thresholds=θ)``), or BatchTopK over the chunk when ``thresholds`` is None (as ``sae.encode(x)``)."""
    if thresholds is None:
        return "batchtopk", lambda pre: pre * batch_topk_mask(pre, int(sae.k))
    theta = as_thresholds(thresholds, device)
    return "thresholds", lambda pre: pre * (pre > theta)


def _accumulate(sae: Any, acts: Any, encodings: dict[str, Any], batch_size: int, device: str | torch.device,
                progress: bool, what: str) -> dict[str, ReconMetrics]:
    """One pass over ``acts``: per chunk the pre-activations once, then each encoding's codes, sparse
    reconstruction and accumulator update."""
    acc: dict[str, ReconAccumulator] = {}
    for _, x, pre in iter_pre_acts(sae, acts, batch_size, device=device, progress=progress, desc="reconstruction"):
        check_chunk(x, acts, what)
        xn = sae.normalize(x)
        for name, encode in encodings.items():
            f = encode(pre)
            a = acc.setdefault(name, ReconAccumulator(xn.shape[1], f.shape[1], name))
            a.update(xn, _decode_sparse(sae, f), f, x)
    if not acc:
        raise ValueError("empty activation array")
    return {name: a.result() for name, a in acc.items()}


__all__ = ["RATE_LOG10_EDGES", "ReconAccumulator", "ReconMetrics", "firing_summary", "reconstruction_metrics",
           "reconstruction_metrics_pair"]
