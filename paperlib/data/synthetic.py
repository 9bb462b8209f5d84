"""Synthetic activations built from known directions, for the ground-truth benchmark
(docs/method.md §3.7).

``n_features`` unit-norm true directions ``D`` (Gaussian, made orthogonal to the all-ones vector so
that per-token standardisation only rescales a token) of three kinds: co-firing groups (a group
switches on with ``group_rate``, then each member fires with ``group_member_prob``), similar pairs
(cosine exactly ``pair_cosine``, members firing independently with ``base_rate``) and independent
features (``base_rate``). A token is ``x = Σ_i a_i D_i + ε`` with magnitudes
``max(0.1, N(magnitude_mean, magnitude_std))`` and Gaussian noise ``ε`` (``noise_std`` per
dimension, also orthogonal to the ones vector). One ``numpy.random.SeedSequence(seed)`` feeds
independent streams for the directions and the train, calibration and eval tokens, so the same
config always gives the same data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["SyntheticConfig", "SyntheticData", "generate", "tiny_config"]


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator and SAE sizes of the ground-truth benchmark (defaults: a few minutes on 2 CPU cores)."""

    d: int = 64
    """Activation dimension."""
    n_features: int = 256
    """Number of true atomic directions."""
    n_groups: int = 24
    """Co-firing groups (features ``0 … n_groups·group_size − 1``)."""
    group_size: int = 3
    group_rate: float = 0.04
    """Per-token probability that a group is on."""
    group_member_prob: float = 0.85
    """Probability that a member fires when its group is on."""
    n_similar_pairs: int = 24
    """Pairs of directions with cosine ``pair_cosine`` (features after the groups)."""
    pair_cosine: float = 0.6
    base_rate: float = 0.02
    """Firing probability of pair members and independent features."""
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.25
    noise_std: float = 0.01
    """Per-dimension std of the additive Gaussian noise."""
    n_train: int = 65_536
    n_calibration: int = 16_384
    n_eval: int = 16_384
    seed: int = 0
    """Seed of the data (directions and tokens)."""

    # SAEs trained on the data
    n_latents: int = 256
    """Primary SAE width (default: as many latents as true features)."""
    k: int = 6
    """BatchTopK L0 (≈ the expected number of firing true features per token)."""
    n_meta: int = 24
    k_meta: int = 4
    batch_size: int = 256
    """Tokens per training step (small: many steps on a small problem; 768 steps by default)."""
    train_epochs: float = 3.0
    lr: float = 3e-3
    """Adam learning rate (10× the LM profiles: the problem is small and the step budget short; at
    1e-3 with 1024-token batches the SAEs stay far from converged, FVU ≈ 0.39)."""
    ortho_chunks: int = 4
    sae_seed: int = 0
    """Init/data-order seed of the trained SAEs (the same for every arm)."""

    def __post_init__(self) -> None:
        problems = []
        if self.d < 2 or self.n_features < 2:
            problems.append("need d >= 2 and n_features >= 2")
        used = self.n_groups * self.group_size + 2 * self.n_similar_pairs
        if used > self.n_features:
            problems.append(f"groups ({self.n_groups}×{self.group_size}) + pairs (2×{self.n_similar_pairs}) "
                            f"= {used} exceed n_features={self.n_features}")
        if not -1 < self.pair_cosine < 1:
            problems.append(f"pair_cosine must lie in (-1, 1), got {self.pair_cosine}")
        for name in ("group_rate", "group_member_prob", "base_rate"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                problems.append(f"{name} must be a probability, got {v}")
        if min(self.n_train, self.n_calibration, self.n_eval) < self.batch_size:
            problems.append("n_train, n_calibration and n_eval must each hold at least one batch")
        if self.noise_std < 0 or self.magnitude_std < 0:
            problems.append("noise_std and magnitude_std must be >= 0")
        if problems:
            raise ValueError("invalid SyntheticConfig: " + "; ".join(problems))

    @property
    def expected_l0(self) -> float:
        """Expected number of firing true features per token."""
        n_grouped = self.n_groups * self.group_size
        return (n_grouped * self.group_rate * self.group_member_prob
                + (self.n_features - n_grouped) * self.base_rate)

    def replace(self, **changes: Any) -> SyntheticConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tiny_config(**overrides: Any) -> SyntheticConfig:
    """A config that generates, trains three arms and evaluates in seconds (tests, smoke profile)."""
    base = dict(d=24, n_features=48, n_groups=4, group_size=3, n_similar_pairs=4, base_rate=0.05,
                group_rate=0.08, n_train=4096, n_calibration=1024, n_eval=1024, n_latents=48, k=3,
                n_meta=8, k_meta=2, batch_size=256, train_epochs=1.0, ortho_chunks=2)
    base.update(overrides)
    return SyntheticConfig(**base)


@dataclass
class SyntheticData:
    """Generated benchmark data. Codes are true magnitudes (CSR ``[T, n_features]`` float32)."""

    config: SyntheticConfig
    directions: np.ndarray
    """``[n_features, d]`` float64, unit rows, orthogonal to the ones vector."""
    groups: np.ndarray
    """``[n_groups, group_size]`` feature indices of the co-firing groups."""
    pairs: np.ndarray
    """``[n_similar_pairs, 2]`` feature indices of the similar pairs."""
    train: np.ndarray
    calibration: np.ndarray
    eval: np.ndarray
    """Activations ``[T, d]`` float32."""
    codes_train: sp.csr_matrix
    codes_calibration: sp.csr_matrix
    codes_eval: sp.csr_matrix

    @property
    def kinds(self) -> np.ndarray:
        """Per true feature: ``"group"``, ``"pair"`` or ``"independent"``."""
        out = np.full(self.config.n_features, "independent", dtype=object)
        out[self.groups.ravel()] = "group"
        out[self.pairs.ravel()] = "pair"
        return out


def _unit(M: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); all-zero rows stay zero."""
    M = np.asarray(M, dtype=np.float64)
    norms = np.linalg.norm(M, axis=1, keepdims=True)
    return np.divide(M, norms, out=np.zeros_like(M), where=norms > 0)


def _project_out_ones(M: np.ndarray) -> np.ndarray:
    return M - M.mean(axis=-1, keepdims=True)


def _directions(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    D = _unit(_project_out_ones(rng.standard_normal((cfg.n_features, cfg.d))))
    n_grouped = cfg.n_groups * cfg.group_size
    groups = np.arange(n_grouped).reshape(cfg.n_groups, cfg.group_size)
    pairs = n_grouped + np.arange(2 * cfg.n_similar_pairs).reshape(cfg.n_similar_pairs, 2)
    c = cfg.pair_cosine
    for a, b in pairs:
        u = D[b] - (D[b] @ D[a]) * D[a]  # orthogonal to D[a], still orthogonal to the ones vector
        u /= np.linalg.norm(u)
        D[b] = c * D[a] + np.sqrt(1 - c * c) * u
    return _unit(D), groups, pairs


def _tokens(cfg: SyntheticConfig, D: np.ndarray, groups: np.ndarray, T: int,
            rng: np.random.Generator) -> tuple[np.ndarray, sp.csr_matrix]:
    n = cfg.n_features
    fire = rng.random((T, n)) < cfg.base_rate
    if len(groups):
        on = rng.random((T, len(groups))) < cfg.group_rate
        member = rng.random((T, groups.size)) < cfg.group_member_prob
        fire[:, groups.ravel()] = np.repeat(on, groups.shape[1], axis=1) & member
    mags = np.maximum(0.1, rng.normal(cfg.magnitude_mean, cfg.magnitude_std, size=(T, n)))
    codes = sp.csr_matrix(np.where(fire, mags, 0.0).astype(np.float32))
    x = codes @ D + cfg.noise_std * _project_out_ones(rng.standard_normal((T, cfg.d)))
    return np.asarray(x, dtype=np.float32), codes


def generate(config: SyntheticConfig) -> SyntheticData:
    """Generate directions and the train / calibration / eval tokens (deterministic in ``config``)."""
    ss = np.random.SeedSequence(config.seed)
    r_dir, r_train, r_cal, r_eval = (np.random.default_rng(s) for s in ss.spawn(4))
    D, groups, pairs = _directions(config, r_dir)
    xt, ct = _tokens(config, D, groups, config.n_train, r_train)
    xc, cc = _tokens(config, D, groups, config.n_calibration, r_cal)
    xe, ce = _tokens(config, D, groups, config.n_eval, r_eval)
    return SyntheticData(config, D, groups, pairs, xt, xc, xe, ct, cc, ce)
