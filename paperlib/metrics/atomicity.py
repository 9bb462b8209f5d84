"""Atomicity of an SAE dictionary against known true features (docs/method.md §3.7).

Two families of metrics:

* **decoder geometry** on rows scaled to unit norm: how well the true directions are recovered (max
  cosine both ways) and how many latents blend two or more true directions;
* **activations**: each latent's firing set L compared with every true feature's firing set T_j on
  the same tokens. The latent's best feature j1 maximises F1(L, T_j); its precision |L∩T_j1|/|L|,
  recall |L∩T_j1|/|T_j1| and F1 are reported, and its ``multi_share`` = max_{j≠j1} |L∩T_j∖T_j1|/|L|,
  the share of its firings that its best feature does not explain but a second single feature does
  (a latent that fires for "A or B" has multi_share ≈ ½; an absorbed child latent that fires on
  "child", which implies its parent, has multi_share 0 because the child explains every firing).

Plus :func:`spearman_ci`, the rank correlation with a bootstrap CI used to relate |φ| to atomicity
across SAEs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.stats as sps
import torch

from paperlib.metrics.streaming import finite_array

__all__ = ["LatentAtomicity", "activation_atomicity", "activation_summary", "atomicity_metrics", "blend_scores",
           "recovery_metrics", "spearman", "spearman_ci", "unit_rows"]


def unit_rows(W: Any) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); all-zero rows stay zero."""
    W = np.asarray(W.detach().cpu().numpy() if isinstance(W, torch.Tensor) else W, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {W.shape}")
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    return np.divide(W, norms, out=np.zeros_like(W), where=norms > 0)


def recovery_metrics(W_dec: Any, directions: Any, *, recover_threshold: float = 0.9,
                     live: np.ndarray | None = None) -> dict[str, Any]:
    """Max cosine both ways and the share of true directions recovered.

    ``mmcs_true``: mean over true directions of the max cosine to a decoder row; ``mmcs_latent``: mean
    over decoder rows of the max cosine to a true direction; ``recovered_frac``: share of true
    directions whose max cosine is ≥ ``recover_threshold``; ``max_cos_true``: that max cosine per true
    direction (for break-downs by kind). ``live`` (bool ``[n_latents]``) restricts the rows used.
    """
    W, D = unit_rows(W_dec), unit_rows(directions)
    if W.shape[1] != D.shape[1]:
        raise ValueError(f"dimension mismatch: decoder d={W.shape[1]}, directions d={D.shape[1]}")
    if live is not None:
        W = W[np.asarray(live, dtype=bool)]
    if len(W) == 0:
        nan = float("nan")
        return dict(mmcs_true=nan, mmcs_latent=nan, recovered_frac=0.0,
                    max_cos_true=np.full(len(D), np.nan))
    C = W @ D.T  # [n_lat, n_true]
    best_true = C.max(axis=0)
    return dict(mmcs_true=float(best_true.mean()), mmcs_latent=float(C.max(axis=1).mean()),
                recovered_frac=float((best_true >= recover_threshold).mean()), max_cos_true=best_true)


def blend_scores(W_dec: Any, directions: Any) -> dict[str, np.ndarray]:
    """Per latent: the best true direction ``j1`` and its cosine ``cos1``, the best second direction
    ``j2``, and the ``gain`` R2² − R1².

    For the unit row ``w``, R1² = max_j cos(w, D_j)² is the best one-direction fit and
    R2² = max_{j≠j1} ‖proj_span(D_j1, D_j) w‖² the best two-direction least-squares fit that keeps
    ``j1``. A row equal to a true direction has gain 0; the normalised sum of two orthogonal
    directions has gain 0.5. Pairs of (numerically) parallel directions (1 − g² < 1e-9) add nothing
    and are skipped.
    """
    W, D = unit_rows(W_dec), unit_rows(directions)
    C = W @ D.T  # cosines [n_lat, n_true]
    j1 = C.argmax(axis=1)
    c1 = C[np.arange(len(W)), j1]
    g = D[j1] @ D.T  # cos(D_j1, D_j) [n_lat, n_true]
    det = 1.0 - g * g
    ok = det > 1e-9
    r2 = np.where(ok, (c1[:, None] ** 2 + C**2 - 2 * g * c1[:, None] * C) / np.where(ok, det, 1.0),
                  c1[:, None] ** 2)
    r2[np.arange(len(W)), j1] = c1**2
    j2 = r2.argmax(axis=1)
    gain = r2[np.arange(len(W)), j2] - c1**2
    return dict(j1=j1, cos1=c1, j2=j2, gain=np.maximum(gain, 0.0))


def atomicity_metrics(W_dec: Any, directions: Any, *, live: np.ndarray | None = None,
                      recover_threshold: float = 0.9, blend_gain: float = 0.1) -> dict[str, float]:
    """The :func:`recovery_metrics` numbers, ``blend_frac`` (share of rows whose :func:`blend_scores`
    gain is ≥ ``blend_gain``: a second true direction explains at least that share of the row's
    squared norm) and ``mean_blend_gain``, over the ``live`` rows."""
    rec = recovery_metrics(W_dec, directions, recover_threshold=recover_threshold, live=live)
    W = unit_rows(W_dec)
    if live is not None:
        W = W[np.asarray(live, dtype=bool)]
    blend = blend_scores(W, directions) if len(W) else dict(gain=np.zeros(0))
    return dict(mmcs_true=rec["mmcs_true"], mmcs_latent=rec["mmcs_latent"],
                recovered_frac=rec["recovered_frac"],
                blend_frac=float((blend["gain"] >= blend_gain).mean()) if len(W) else float("nan"),
                mean_blend_gain=float(blend["gain"].mean()) if len(W) else float("nan"))


@dataclass(frozen=True)
class LatentAtomicity:
    """Per-latent activation atomicity (arrays ``[n_latents]``; NaN / −1 for latents that never fire)."""

    n_fired: np.ndarray
    """Tokens on which the latent fires."""
    best: np.ndarray
    """Index of the true feature with the highest F1 (ties: lowest index); −1 when the latent never fires."""
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    second: np.ndarray
    """The true feature j ≠ best that explains most of the remaining firings (−1 when none does)."""
    multi_share: np.ndarray
    """|L ∩ T_second ∖ T_best| / |L|: firings explained by a second feature but not by the best one."""
    n_true: int
    """Number of true features."""


def _bool_csr(name: str, x: Any) -> sp.csr_matrix:
    m = sp.csr_matrix(x) if not sp.issparse(x) else x.tocsr()
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [T, n] firing matrix, got shape {m.shape}")
    if m.dtype != bool:
        finite_array(name, m.data)
    return (m != 0).astype(np.int64).tocsr()


def activation_atomicity(fired_latents: Any, fired_true: Any) -> LatentAtomicity:
    """:class:`LatentAtomicity` of every latent from firing matrices on the same tokens: latents
    ``[T, n_latents]`` and true features ``[T, n_true]`` (bool, or values fired where ≠ 0; dense or sparse).

    All counts are exact integers from sparse products: |L∩T_j| = (Lᵀ T)_lj, and |L∩T_j∩T_j1| from
    (L ∘ T_j1(l))ᵀ T, so |L∩T_j∖T_j1| = |L∩T_j| − |L∩T_j∩T_j1|.
    """
    L, Tm = _bool_csr("fired_latents", fired_latents), _bool_csr("fired_true", fired_true)
    if Tm.shape[1] < 2:
        raise ValueError(f"fired_true needs at least 2 true features, got {Tm.shape[1]}")
    if L.shape[0] != Tm.shape[0]:
        raise ValueError(f"fired_latents and fired_true must be on the same tokens ({L.shape[0]} vs {Tm.shape[0]})")
    n_l = np.asarray(L.sum(axis=0)).ravel()
    n_t = np.asarray(Tm.sum(axis=0)).ravel()
    inter = np.asarray((L.T @ Tm).toarray(), dtype=np.float64)  # [n_lat, n_true]
    denom = n_l[:, None] + n_t[None, :]
    f1_all = np.divide(2 * inter, denom, out=np.zeros_like(inter), where=denom > 0)
    alive = n_l > 0
    best = np.where(alive, f1_all.argmax(axis=1), -1)
    rows = np.arange(len(n_l))
    b = np.maximum(best, 0)
    hit = inter[rows, b]
    nan = np.full(len(n_l), np.nan)
    precision = np.where(alive, hit / np.maximum(n_l, 1), nan)
    recall = np.where(alive & (n_t[b] > 0), hit / np.maximum(n_t[b], 1), nan)
    f1 = np.where(alive, f1_all[rows, b], nan)
    # firings of l on which its best feature also fires, split by the other feature: (L ∘ T_best)ᵀ T
    Lb = sp.csr_matrix(L.multiply(Tm[:, b]))
    extra = inter - np.asarray((Lb.T @ Tm).toarray(), dtype=np.float64)
    extra[rows, b] = -1.0
    second = extra.argmax(axis=1)
    ex = extra[rows, second]
    second = np.where(alive & (ex > 0), second, -1)
    multi = np.where(alive, np.maximum(ex, 0) / np.maximum(n_l, 1), nan)
    return LatentAtomicity(n_l.astype(np.int64), best.astype(np.int64), precision, recall, f1,
                           second.astype(np.int64), multi, int(Tm.shape[1]))


def activation_summary(a: LatentAtomicity, *, multi_threshold: float = 0.1) -> dict[str, float]:
    """Means over the latents that fire: ``act_precision``, ``act_recall``, ``act_f1``,
    ``multi_share`` and ``multi_frac`` (share of those latents with multi_share ≥ ``multi_threshold``),
    plus ``true_covered_frac``: share of true features that are some latent's best match."""
    finite_array("multi_threshold", multi_threshold)
    live = a.n_fired > 0
    if not live.any():
        nan = float("nan")
        return dict(act_precision=nan, act_recall=nan, act_f1=nan, multi_share=nan, multi_frac=nan,
                    true_covered_frac=0.0)
    return dict(act_precision=float(np.nanmean(a.precision[live])), act_recall=float(np.nanmean(a.recall[live])),
                act_f1=float(np.nanmean(a.f1[live])), multi_share=float(a.multi_share[live].mean()),
                multi_frac=float((a.multi_share[live] >= multi_threshold).mean()),
                true_covered_frac=float(len(np.unique(a.best[live]))) / max(a.n_true, 1))


def _rank_corr(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman ρ along ``axis`` (Pearson correlation of average ranks); NaN when a side is constant."""
    rx, ry = sps.rankdata(x, axis=axis), sps.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    num = (rx * ry).sum(axis=axis)
    den = np.sqrt((rx**2).sum(axis=axis) * (ry**2).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation of two equal-length finite 1-D samples (equals ``scipy.stats.spearmanr``)."""
    x, y = _pair("x", x, "y", y)
    return float(_rank_corr(x, y))


def _pair(nx: str, x: Any, ny: str, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = finite_array(nx, np.asarray(x, dtype=np.float64))
    y = finite_array(ny, np.asarray(y, dtype=np.float64))
    if x.ndim != 1 or x.shape != y.shape or x.size < 3:
        raise ValueError(f"{nx} and {ny} must be 1-D of equal length >= 3, got {x.shape} and {y.shape}")
    return x, y


def spearman_ci(x: Any, y: Any, *, confidence: float = 0.95, n_resamples: int = 2000,
                seed: int = 0) -> dict[str, float]:
    """Spearman ρ of (x, y) with a bootstrap CI (``scipy.stats.bootstrap``, pairs resampled together,
    BCa) and the asymptotic p of ``scipy.stats.spearmanr``. Deterministic given ``seed``. When BCa is undefined
    (resamples in which x or y is constant have no ρ), the percentile CI over the defined resamples, and
    ``method`` says how many those were.
    Returns ``rho``, ``ci_low``, ``ci_high``, ``p``, ``n``, ``method``."""
    x, y = _pair("x", x, "y", y)
    finite_array("confidence", confidence)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_resamples) != n_resamples or n_resamples < 100:
        raise ValueError(f"n_resamples must be an integer >= 100, got {n_resamples}")
    rho = float(_rank_corr(x, y))
    if not np.isfinite(rho):
        raise ValueError("spearman_ci: x or y is constant, so the rank correlation is undefined")
    out = dict(rho=rho, ci_low=float("nan"), ci_high=float("nan"), p=float(sps.spearmanr(x, y).pvalue),
               n=int(x.size), method="")
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.bootstrap((x, y), _rank_corr, paired=True, vectorized=True, confidence_level=confidence,
                            n_resamples=int(n_resamples), method="BCa", rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    method = "BCa"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        # resamples in which one side is constant have no rank correlation: percentile CI over the others
        dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
        dist = dist[np.isfinite(dist)]
        alpha = (1 - confidence) / 2
        lo, hi = (np.quantile(dist, [alpha, 1 - alpha]) if dist.size else (np.nan, np.nan))
        method = f"percentile over {dist.size} of {int(n_resamples)} resamples"
    out.update(ci_low=float(lo), ci_high=float(hi), method=method)
    return out
