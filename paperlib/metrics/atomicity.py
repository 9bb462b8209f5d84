"""Atomicity of an SAE dictionary against known true directions (docs/method.md §3.7).

Decoder-geometry metrics on rows scaled to unit norm: how well the true directions are recovered
(max cosine both ways) and how many latents blend two or more true directions. Geometry rather
than firing correlation, because members of a co-firing group are correlated by construction, so an
atomic latent would correlate with its group mates too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["atomicity_metrics", "blend_scores", "recovery_metrics", "unit_rows"]


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
