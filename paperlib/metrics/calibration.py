"""Per-feature firing thresholds by equal error rate (method.md §3.1, paper App. A).

The trained SAE is run with BatchTopK (top ``k·B`` entries of the flattened ``[B, n]`` ReLU
pre-activations of each calibration batch). Per feature i:

* active   A_i = pre-activations where i was selected (and pre > 0),
* inactive U_i = pre-activations where pre > 0 but i was not selected.

With ``CDF(θ) = #{v ≤ θ} / count`` and ``g(θ) = CDF_A(θ) + CDF_U(θ) − 1`` (monotone, from −1 to +1),
θ_i minimises |g| — the equal-error rate: P(active ≤ θ) = P(inactive > θ). Firing rule at inference:
``fire ⇔ pre > θ``.

* ``mode="exact"``: from the sorted values. |g| is constant on ``[c_j, c_{j+1})`` between consecutive
  distinct observed values; the first (lowest) minimising interval is taken and θ is its midpoint
  (computed in float32; if rounding hits ``c_{j+1}``, θ = ``c_j``). ``eer_lo``/``eer_hi`` record the
  interval. Memory: 8 bytes per positive pre-activation (guard ``max_values``).
* ``mode="hist"``: two passes (per-feature max, then per-feature linear histograms on
  ``[0, max_i]`` with ``n_bins`` bins); θ is the edge on either side of the sign change of g (sampled
  at the edges) with the smaller |g|. Bound
  (reported per feature as ``theta_err`` = bin width): θ_hist lies within one bin width of the
  closure of the exact minimising interval. Memory: ``2 · n · n_bins · 8`` bytes.
* Feature with active but **no inactive** values (every positive pre-activation was selected):
  θ = 0, i.e. fire whenever pre > 0 — this reproduces BatchTopK exactly on the calibration tokens.
* Dead features (never selected): θ = +inf.

Selected entries with pre = 0 (possible only if a batch has fewer than k·B positive values) are not
counted as active: they cannot fire under any θ ≥ 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from paperlib.config.checks import NonFiniteError, check_chunk
from paperlib.config.io import atomic_path, damaged, provenance, read_json, write_json
from paperlib.metrics.firing import iter_pre_acts
from paperlib.sae.models import batch_topk_mask

__all__ = [
    "Calibration",
    "batch_topk_select",
    "calibrate_from_pre",
    "calibrate_sae",
    "eer_threshold_exact",
    "sae_pre_batches",
]

ARRAY_FIELDS = ("thresholds", "n_active", "n_inactive", "n_threshold_fire", "n_active_fire", "eer",
                "theta_err", "eer_lo", "eer_hi")


@dataclass
class Calibration:
    """Calibrated thresholds and per-feature diagnostics on the calibration tokens.

    ``n_active`` = BatchTopK selections, ``n_threshold_fire`` = tokens with pre > θ (same tokens),
    ``n_active_fire`` = selections that also fire under θ; ``eer`` = min |g|; ``theta_err`` = 0
    (exact) or the bin width (hist).
    """

    thresholds: np.ndarray
    n_tokens: int
    k: int
    mode: str
    n_active: np.ndarray
    n_inactive: np.ndarray
    n_threshold_fire: np.ndarray
    n_active_fire: np.ndarray
    eer: np.ndarray
    theta_err: np.ndarray
    eer_lo: np.ndarray
    eer_hi: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.thresholds.shape[0])

    @property
    def dead(self) -> np.ndarray:
        return self.n_active == 0

    @property
    def batchtopk_rate(self) -> np.ndarray:
        return self.n_active / max(self.n_tokens, 1)

    @property
    def threshold_rate(self) -> np.ndarray:
        return self.n_threshold_fire / max(self.n_tokens, 1)

    @property
    def recall(self) -> np.ndarray:
        """Fraction of BatchTopK selections that also fire under θ (NaN for dead features)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_active > 0, self.n_active_fire / np.maximum(self.n_active, 1), np.nan)

    @property
    def max_theta_err(self) -> float:
        finite = np.isfinite(self.thresholds)
        return float(self.theta_err[finite].max()) if finite.any() else 0.0

    def frame(self) -> Any:
        """Per-feature pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame({
            "theta": self.thresholds, "batchtopk_rate": self.batchtopk_rate,
            "threshold_rate": self.threshold_rate, "recall": self.recall, "eer": self.eer,
            "n_active": self.n_active, "n_inactive": self.n_inactive, "theta_err": self.theta_err,
        })

    def summary(self) -> dict[str, Any]:
        alive = ~self.dead
        bt, th = self.batchtopk_rate[alive], self.threshold_rate[alive]
        return {
            "n_features": self.n, "n_tokens": self.n_tokens, "k": self.k, "mode": self.mode,
            "n_dead": int(self.dead.sum()),
            "n_no_inactive": int((alive & (self.n_inactive == 0)).sum()),
            "batchtopk_L0": float(self.n_active.sum() / max(self.n_tokens, 1)),
            "threshold_L0": float(self.n_threshold_fire.sum() / max(self.n_tokens, 1)),
            "rate_corr": float(np.corrcoef(bt, th)[0, 1]) if alive.sum() > 1 else float("nan"),
            "median_abs_log_rate_ratio": float(np.median(np.abs(np.log((th + 1e-12) / (bt + 1e-12)))))
            if alive.any() else float("nan"),
            "mean_eer": float(np.mean(self.eer[alive])) if alive.any() else float("nan"),
            "max_theta_err": self.max_theta_err,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``thresholds.safetensors`` (all per-feature arrays) and ``calibration.json``, atomically."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {name: np.ascontiguousarray(getattr(self, name)) for name in ARRAY_FIELDS}
        with atomic_path(d / "thresholds.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json(d / "calibration.json", {
            "n_tokens": self.n_tokens, "k": self.k, "mode": self.mode, "meta": self.meta,
            "summary": self.summary(), "provenance": provenance(),
        })
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Calibration:
        d = Path(directory)
        try:
            arrays = load_file(str(d / "thresholds.safetensors"))
        except (SafetensorError, OSError) as err:
            raise damaged(d / "thresholds.safetensors", f"unreadable ({err})", d) from None
        info = read_json(d / "calibration.json", delete=d)
        return cls(n_tokens=int(info["n_tokens"]), k=int(info["k"]), mode=info["mode"],
                   meta=info.get("meta", {}), **{name: arrays[name] for name in ARRAY_FIELDS})


def batch_topk_select(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the top ``k·B`` entries of the flattened ``[B, n]`` pre-activations that are > 0.

    The selection is the SAE's own (:func:`paperlib.sae.models.batch_topk_mask`, same tie-breaking)."""
    return batch_topk_mask(pre, int(k)) & (pre > 0)


def eer_threshold_exact(active: np.ndarray, inactive: np.ndarray) -> tuple[float, float, float, float]:
    """EER threshold from sorted 1-D arrays: (θ, min |g|, interval lo, interval hi). See module doc."""
    if active.size == 0:
        return float("inf"), float("nan"), float("inf"), float("inf")
    if inactive.size == 0:
        return 0.0, 0.0, 0.0, float(active[0])
    c = np.unique(np.concatenate([active, inactive]))
    a = np.searchsorted(active, c, side="right") / active.size
    u = np.searchsorted(inactive, c, side="right") / inactive.size
    g = np.abs(a + u - 1.0)
    j = int(np.argmin(g))
    lo = np.float32(c[j])
    if j + 1 < c.size:
        hi = np.float32(c[j + 1])
        theta = np.float32((np.float32(lo) + np.float32(hi)) / np.float32(2))
        if theta >= hi or theta < lo:
            theta = lo
    else:
        hi = np.float32(np.inf)
        theta = lo
    return float(theta), float(g[j]), float(lo), float(hi)


def _as_tensor(pre: Any) -> torch.Tensor:
    t = pre if isinstance(pre, torch.Tensor) else torch.as_tensor(np.asarray(pre))
    return t.detach().float()


def _iter(batches: Iterable[Any] | Callable[[], Iterable[Any]]) -> Iterator[Any]:
    return iter(batches() if callable(batches) else batches)


def _finite_pre(pre: torch.Tensor, i: int) -> torch.Tensor:
    """``pre`` when finite; else NonFiniteError with the count and rows of batch ``i`` (a NaN would make
    every histogram range NaN, or drop out of the exact sort unnoticed)."""
    if not bool(torch.isfinite(pre).all()):
        rows = torch.nonzero(~torch.isfinite(pre).all(dim=1)).ravel().tolist()
        raise NonFiniteError(f"pre-activations of calibration batch {i}: {len(rows)} rows hold NaN or inf "
                             f"(rows within the batch: {rows[:5]}); check the activations and the SAE weights")
    return pre


def _active_inactive(batches: Any, k: int, n: int | None, desc: str, progress: bool, check: bool = True
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(pre, active, inactive) per batch: active = selected by BatchTopK and > 0, inactive = > 0 and not
    selected (module doc). Every batch must have ``n`` features (the first batch's when ``n`` is None).
    ``check=False`` skips the finiteness check (for a second pass over batches already checked)."""
    for i, pre in enumerate(tqdm(_iter(batches), desc=desc, disable=not progress, leave=False)):
        pre = _finite_pre(_as_tensor(pre), i) if check else _as_tensor(pre)
        if n is None:
            n = pre.shape[1]
        elif pre.shape[1] != n:
            raise ValueError("all batches must have the same number of features")
        sel = batch_topk_select(pre, k)
        yield pre, sel, (pre > 0) & ~sel


def calibrate_from_pre(batches: Iterable[Any] | Callable[[], Iterable[Any]], k: int, *,
                       mode: str = "exact", n_bins: int = 2048, max_values: int = 400_000_000,
                       progress: bool = True) -> Calibration:
    """EER thresholds from batches of ReLU pre-activations ``[B, n]`` (tensors or arrays).

    ``mode="hist"`` makes two passes: ``batches`` must then be a re-iterable (list) or a callable
    returning a fresh iterable.
    """
    if mode == "exact":
        return _calibrate_exact(batches, k, max_values, progress)
    if mode == "hist":
        if not callable(batches) and iter(batches) is batches:  # type: ignore[arg-type]
            raise ValueError("mode='hist' needs two passes: pass a list or a callable returning batches")
        return _calibrate_hist(batches, k, n_bins, progress)
    raise ValueError(f"unknown mode {mode!r} (use 'exact' or 'hist')")


def _calibrate_exact(batches: Any, k: int, max_values: int, progress: bool) -> Calibration:
    af, av, uf, uv = [], [], [], []
    T, n, total = 0, None, 0
    for pre, sel, ina in _active_inactive(batches, k, None, "calibrate", progress):
        n = pre.shape[1]
        for mask, fs, vs in ((sel, af, av), (ina, uf, uv)):
            rows_cols = mask.nonzero()
            fs.append(rows_cols[:, 1].to(torch.int32).cpu().numpy())
            vs.append(pre[mask].cpu().numpy().astype(np.float32))  # row-major order matches nonzero()
            total += rows_cols.shape[0]
        T += pre.shape[0]
        if total > max_values:
            raise ValueError(f"exact calibration holds > {max_values} values; use mode='hist'")
    if n is None:
        raise ValueError("no calibration batches")

    def grouped(fs: list, vs: list) -> tuple[np.ndarray, np.ndarray]:
        f = np.concatenate(fs) if fs else np.zeros(0, np.int32)
        v = np.concatenate(vs) if vs else np.zeros(0, np.float32)
        order = np.lexsort((v, f))
        counts = np.bincount(f, minlength=n).astype(np.int64)
        return v[order], counts

    A, nA = grouped(af, av)
    del af, av
    U, nU = grouped(uf, uv)
    del uf, uv
    offA = np.concatenate([[0], np.cumsum(nA)])
    offU = np.concatenate([[0], np.cumsum(nU)])
    theta = np.full(n, np.inf, dtype=np.float32)
    eer = np.full(n, np.nan)
    lo = np.full(n, np.inf)
    hi = np.full(n, np.inf)
    n_fire = np.zeros(n, dtype=np.int64)
    n_afire = np.zeros(n, dtype=np.int64)
    for i in tqdm(range(n), desc="EER", disable=not progress, leave=False):
        a = A[offA[i]:offA[i + 1]]
        u = U[offU[i]:offU[i + 1]]
        th, e, l_, h_ = eer_threshold_exact(a, u)
        theta[i], eer[i], lo[i], hi[i] = th, e, l_, h_
        if a.size:
            th32 = np.float32(th)
            n_afire[i] = a.size - np.searchsorted(a, th32, side="right")
            n_fire[i] = n_afire[i] + u.size - np.searchsorted(u, th32, side="right")
    return Calibration(thresholds=theta, n_tokens=T, k=int(k), mode="exact", n_active=nA, n_inactive=nU,
                       n_threshold_fire=n_fire, n_active_fire=n_afire, eer=eer,
                       theta_err=np.zeros(n), eer_lo=lo, eer_hi=hi)


class _BinCounter:
    """Exact int64 counts of flat bin indices in ``[0, size)``, added in chunks. Indices are buffered until they
    outnumber the bins, so each ``np.bincount`` (whose cost includes a pass over all ``size`` bins) is paid
    once per ``size`` indices rather than once per chunk."""

    def __init__(self, size: int) -> None:
        self.size, self.total = int(size), np.zeros(int(size), dtype=np.int64)
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def add(self, idx: np.ndarray) -> None:
        self.pending.append(idx)
        self.n_pending += idx.size
        if self.n_pending >= self.size:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.total += np.bincount(np.concatenate(self.pending), minlength=self.size)
            self.pending, self.n_pending = [], 0

    def counts(self) -> np.ndarray:
        self._flush()
        return self.total


def _calibrate_hist(batches: Any, k: int, n_bins: int, progress: bool) -> Calibration:
    vmax = None
    for i, pre in enumerate(tqdm(_iter(batches), desc="calibrate: range", disable=not progress, leave=False)):
        pre = _as_tensor(pre)
        top = pre.amax(0)
        if not bool(torch.isfinite(pre.sum(0)).all()):  # any NaN or ±inf makes its column's sum non-finite
            _finite_pre(pre, i)
        m = top.clamp_min(0).cpu().numpy().astype(np.float64)
        vmax = m if vmax is None else np.maximum(vmax, m)
    if vmax is None:
        raise ValueError("no calibration batches")
    n = vmax.size
    width = vmax / n_bins
    inv = np.where(width > 0, 1.0 / np.where(width > 0, width, 1.0), 0.0)
    hA, hU = _BinCounter(n * n_bins), _BinCounter(n * n_bins)
    T = 0
    for pre, sel, ina in _active_inactive(batches, k, n, "calibrate: hist", progress, check=False):
        for mask, h in ((sel, hA), (ina, hU)):
            rc = mask.nonzero().cpu().numpy()
            f = rc[:, 1]
            v = pre[mask].cpu().numpy().astype(np.float64)
            b = np.minimum((v * inv[f]).astype(np.int64), n_bins - 1)
            h.add(f * n_bins + b)
        T += pre.shape[0]
    hA = hA.counts().reshape(n, n_bins)
    hU = hU.counts().reshape(n, n_bins)
    nA, nU = hA.sum(1), hU.sum(1)
    # strict CDF at edges e_0..e_nbins: count of values in bins < j
    zeros = np.zeros((n, 1), dtype=np.int64)
    cA = np.concatenate([zeros, np.cumsum(hA, 1)], axis=1)
    cU = np.concatenate([zeros, np.cumsum(hU, 1)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = cA / np.maximum(nA, 1)[:, None] + cU / np.maximum(nU, 1)[:, None] - 1.0
    # g is monotone in the edge index: bracket its sign change [e_j, e_{j+1}] and take the edge with
    # the smaller |g| (ties → lower). The exact crossing lies in this bracket, hence the 1-bin bound.
    rows = np.arange(n)
    j = np.clip((g <= 0).sum(1) - 1, 0, n_bins)
    j2 = np.minimum(j + 1, n_bins)
    j = np.where(np.abs(g[rows, j2]) < np.abs(g[rows, j]), j2, j)
    theta = (j * width).astype(np.float32)
    eer = np.abs(g[rows, j])
    n_afire = nA - cA[rows, j]
    n_fire = n_afire + nU - cU[rows, j]
    no_inactive = (nA > 0) & (nU == 0)
    theta[no_inactive] = 0.0
    eer[no_inactive] = 0.0
    n_afire[no_inactive] = nA[no_inactive]
    n_fire[no_inactive] = nA[no_inactive]
    dead = nA == 0
    theta[dead] = np.inf
    eer[dead] = np.nan
    n_fire[dead] = 0
    n_afire[dead] = 0
    nan = np.full(n, np.nan)
    return Calibration(thresholds=theta, n_tokens=T, k=int(k), mode="hist", n_active=nA, n_inactive=nU,
                       n_threshold_fire=n_fire, n_active_fire=n_afire, eer=eer,
                       theta_err=np.where(dead, 0.0, width), eer_lo=nan, eer_hi=nan.copy(),
                       meta={"n_bins": int(n_bins)})


# ----------------------------------------------------------------------------------------------
# SAE convenience
# ----------------------------------------------------------------------------------------------
def sae_pre_batches(sae: Any, acts: Any, batch_size: int = 4096, *, device: str | torch.device = "cpu",
                    what: str = "calibration activations") -> Iterator[torch.Tensor]:
    """Yield ``sae.pre_acts(x)`` for consecutive ``batch_size``-token chunks of ``acts [T, d]``; a chunk with
    NaN or inf raises :class:`~paperlib.config.checks.NonFiniteError` naming ``what`` and the bad rows."""
    for _, x, pre in iter_pre_acts(sae, acts, batch_size, device=device):
        check_chunk(x, acts, what)
        yield pre


def calibrate_sae(sae: Any, acts: Any, *, batch_size: int = 4096, mode: str = "exact", n_bins: int = 2048,
                  device: str | torch.device = "cpu", progress: bool = True,
                  what: str = "calibration activations", max_held_bytes: int = 2**30) -> Calibration:
    """Calibrate EER thresholds of ``sae`` on calibration activations ``acts [T, d]``.

    BatchTopK is applied per ``batch_size``-token batch (use the training batch size, so selection
    statistics match training) with ``k = sae.k``. Non-finite activation rows raise, naming ``what``.
    In ``hist`` mode the fp32 pre-activations ``[T, n]`` are kept in memory for the second pass when they take
    at most ``max_held_bytes`` (else the encoder runs twice); the thresholds are the same either way.
    """
    def gen() -> Iterator[torch.Tensor]:
        return sae_pre_batches(sae, acts, batch_size, device=device, what=what)

    n_latents = getattr(sae, "n_latents", None)
    held = n_latents is not None and len(acts) * int(n_latents) * 4 <= max_held_bytes
    # the histogram mode reads the pre-activations twice: held in memory they are encoded once
    cal = calibrate_from_pre(list(gen()) if held and mode == "hist" else gen, int(sae.k), mode=mode, n_bins=n_bins,
                             progress=progress)
    cal.meta.update({"batch_size": int(batch_size)})
    return cal
