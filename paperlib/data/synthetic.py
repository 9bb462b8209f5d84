"""Synthetic activations built from known directions, for the ground-truth benchmark
(docs/method.md §3.7).

The data are designed so that the question "does lower latent co-firing |φ| mean more atomic
latents?" has room to be answered either way:

* **Shared compositional parts.** ``n_parts`` unit "meta" directions ``P``. Every true feature i
  is its own random direction ``u_i`` plus ``parts_per_feature`` of the shared parts:
  ``D_i ∝ √(1 − part_share) · u_i + √part_share · unit(Σ_{m∈S_i} P_m)``. Decoder rows of an SAE
  that recovers the true features are therefore decomposable by construction (a meta SAE with a
  dictionary of ``n_parts`` atoms explains ``part_share`` of each row's squared norm).
* **Parent/child hierarchies** (prone to feature absorption). ``n_hierarchies`` parents fire with
  ``parent_rate``; when a parent fires, with probability ``child_prob`` exactly one of its
  ``n_children`` children (uniform) fires too. A child never fires without its parent, so an SAE can
  save L0 by absorbing the parent direction into each child latent and letting the parent latent
  fire only on "parent and no child".
* **Independent features** (the rest) fire independently with ``base_rate``.

A token is ``x = Σ_i a_i D_i + ε`` with magnitudes ``max(0.1, N(magnitude_mean, magnitude_std))``
and Gaussian noise ``ε`` (``noise_std`` per dimension). All directions and the noise are made
orthogonal to the all-ones vector, so the SAE's per-token standardisation only rescales a token.
One ``numpy.random.SeedSequence(seed)`` feeds independent streams for the directions and the train,
calibration and eval tokens, so the same config always gives the same data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["KINDS", "SyntheticConfig", "SyntheticData", "generate", "tiny_config"]

KINDS = ("parent", "child", "independent")
"""Feature kinds, in index order: parents, then children, then independent features."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator and SAE sizes of the ground-truth benchmark (defaults: ≈1 s per SAE on 2 CPU cores)."""

    d: int = 64
    """Activation dimension."""
    n_features: int = 64
    """Number of true features."""
    n_parts: int = 6
    """Shared compositional ("meta") directions."""
    parts_per_feature: int = 2
    """Shared parts in every true feature."""
    part_share: float = 0.4
    """Share of a true direction's squared norm that comes from its shared parts (before the final
    normalisation; exact when the own direction and the parts are orthogonal)."""
    n_hierarchies: int = 6
    """Parents (features ``0 … n_hierarchies − 1``)."""
    n_children: int = 3
    """Children per parent (features after the parents, parent-major)."""
    parent_rate: float = 0.08
    """Per-token firing probability of a parent."""
    child_prob: float = 0.75
    """Probability that one (uniformly chosen) child fires when its parent fires."""
    base_rate: float = 0.1
    """Firing probability of an independent feature."""
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.25
    noise_std: float = 0.02
    """Per-dimension std of the additive Gaussian noise."""
    n_train: int = 49_152
    n_calibration: int = 4_096
    n_eval: int = 8_192
    seed: int = 0
    """Seed of the data (directions and tokens)."""

    # SAEs trained on the data
    n_latents: int = 64
    """Primary SAE width (default: as many latents as true features)."""
    k: int = 5
    """BatchTopK L0 (≈ the expected number of firing true features per token)."""
    n_meta: int = 6
    """Meta SAE dictionary (default: as many atoms as shared parts)."""
    k_meta: int = 2
    batch_size: int = 512
    """Tokens per training step."""
    train_epochs: float = 5.0
    lr: float = 2e-2
    """Adam learning rate (large: a small problem and a short step budget; decayed linearly to 0 over the
    last ``lr_decay_frac`` of the steps)."""
    lr_warmup_frac: float = 0.05
    lr_decay_frac: float = 0.5
    dead_after: int = 3
    """Steps without selection after which a latent counts as dead for the AuxK loss (short: dead latents
    are revived within a few steps)."""
    aux_alpha: float = 1.0
    """AuxK loss weight (32× the reference: with a few hundred steps, dead latents must be revived fast)."""
    k_aux: int = 32
    ortho_chunks: int = 2
    sae_seed: int = 0
    """Init/data-order seed of the trained SAEs (the same for every arm of one data seed)."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid SyntheticConfig: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid field, each naming the field (empty when the config is valid)."""
        out = []
        for name in ("d", "n_features", "n_latents", "k", "n_meta", "k_meta", "batch_size", "dead_after",
                     "ortho_chunks", "k_aux"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                out.append(f"{name} must be a positive integer, got {v!r}")
        if out:
            return out
        if self.d < 2 or self.n_features < 2:
            out.append(f"need d >= 2 and n_features >= 2, got d={self.d}, n_features={self.n_features}")
        if self.n_parts < 0 or not 0 <= self.parts_per_feature <= self.n_parts:
            out.append(f"parts_per_feature={self.parts_per_feature} must lie in [0, n_parts={self.n_parts}]")
        if not 0 <= self.part_share < 1:
            out.append(f"part_share must lie in [0, 1), got {self.part_share}")
        if self.parts_per_feature == 0 and self.part_share > 0:
            out.append("part_share > 0 needs parts_per_feature >= 1")
        if self.n_hierarchies < 0 or self.n_children < 0:
            out.append("n_hierarchies and n_children must be >= 0")
        used = self.n_hierarchies * (1 + self.n_children)
        if used > self.n_features:
            out.append(f"hierarchies ({self.n_hierarchies} parents × (1 + {self.n_children} children)) = {used} "
                       f"exceed n_features={self.n_features}")
        for name in ("parent_rate", "child_prob", "base_rate"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                out.append(f"{name} must be a probability, got {v}")
        if min(self.n_train, self.n_calibration, self.n_eval) < self.batch_size:
            out.append(f"n_train, n_calibration and n_eval must each hold at least one batch of {self.batch_size}")
        if self.noise_std < 0 or self.magnitude_std < 0:
            out.append("noise_std and magnitude_std must be >= 0")
        if self.k > self.n_latents or self.k_meta > self.n_meta:
            out.append(f"k={self.k} must be <= n_latents={self.n_latents} and k_meta={self.k_meta} <= "
                       f"n_meta={self.n_meta}")
        if not (self.lr > 0 and self.train_epochs > 0):
            out.append(f"lr and train_epochs must be > 0, got lr={self.lr}, train_epochs={self.train_epochs}")
        return out

    @property
    def n_child_features(self) -> int:
        return self.n_hierarchies * self.n_children

    @property
    def expected_l0(self) -> float:
        """Expected number of firing true features per token."""
        n_ind = self.n_features - self.n_hierarchies - self.n_child_features
        child = self.child_prob if self.n_children else 0.0
        return self.n_hierarchies * self.parent_rate * (1 + child) + n_ind * self.base_rate

    def replace(self, **changes: Any) -> SyntheticConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tiny_config(**overrides: Any) -> SyntheticConfig:
    """A config that generates, trains a few arms and evaluates in seconds (tests, smoke profile)."""
    base = dict(d=16, n_features=32, n_parts=4, n_hierarchies=3, n_children=2, base_rate=0.06,
                n_train=4096, n_calibration=1024, n_eval=2048, n_latents=32, k=3, n_meta=4, k_meta=2,
                batch_size=256, train_epochs=2.0)
    base.update(overrides)
    return SyntheticConfig(**base)


@dataclass
class SyntheticData:
    """Generated benchmark data. Codes are true magnitudes (CSR ``[T, n_features]`` float32)."""

    config: SyntheticConfig
    directions: np.ndarray
    """``[n_features, d]`` float64, unit rows, orthogonal to the ones vector."""
    parts: np.ndarray
    """``[n_parts, d]`` float64 unit shared directions."""
    part_sets: np.ndarray
    """``[n_features, parts_per_feature]`` indices of each feature's shared parts."""
    own: np.ndarray
    """``[n_features, d]`` float64 unit own directions."""
    parents: np.ndarray
    """``[n_hierarchies]`` feature indices of the parents."""
    children: np.ndarray
    """``[n_hierarchies, n_children]`` feature indices of each parent's children."""
    train: np.ndarray
    calibration: np.ndarray
    eval: np.ndarray
    """Activations ``[T, d]`` float32."""
    codes_train: sp.csr_matrix
    codes_calibration: sp.csr_matrix
    codes_eval: sp.csr_matrix

    @property
    def kinds(self) -> np.ndarray:
        """Per true feature: ``"parent"``, ``"child"`` or ``"independent"``."""
        out = np.full(self.config.n_features, "independent", dtype=object)
        out[self.parents] = "parent"
        out[self.children.ravel()] = "child"
        return out

    @property
    def parent_of(self) -> np.ndarray:
        """Per true feature, its parent's index (−1 for parents and independent features)."""
        out = np.full(self.config.n_features, -1, dtype=np.int64)
        for p, ch in zip(self.parents, self.children, strict=True):
            out[ch] = p
        return out


def _unit(M: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); all-zero rows stay zero."""
    M = np.asarray(M, dtype=np.float64)
    norms = np.linalg.norm(M, axis=-1, keepdims=True)
    return np.divide(M, norms, out=np.zeros_like(M), where=norms > 0)


def _project_out_ones(M: np.ndarray) -> np.ndarray:
    return M - M.mean(axis=-1, keepdims=True)


def _directions(cfg: SyntheticConfig, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(directions, parts, part sets, own directions)."""
    own = _unit(_project_out_ones(rng.standard_normal((cfg.n_features, cfg.d))))
    parts = _unit(_project_out_ones(rng.standard_normal((cfg.n_parts, cfg.d))))
    sets = np.stack([rng.choice(cfg.n_parts, size=cfg.parts_per_feature, replace=False)
                     for _ in range(cfg.n_features)]) if cfg.n_parts else np.zeros((cfg.n_features, 0), int)
    sets = np.sort(sets, axis=1).astype(np.int64)
    shared = _unit(parts[sets].sum(axis=1)) if cfg.parts_per_feature else np.zeros_like(own)
    D = np.sqrt(1 - cfg.part_share) * own + np.sqrt(cfg.part_share) * shared
    return _unit(D), parts, sets, own


def _fire(cfg: SyntheticConfig, parents: np.ndarray, children: np.ndarray, T: int,
          rng: np.random.Generator) -> np.ndarray:
    """Boolean firing ``[T, n_features]``: hierarchies, then independent features."""
    fire = rng.random((T, cfg.n_features)) < cfg.base_rate
    if len(parents):
        on = rng.random((T, len(parents))) < cfg.parent_rate
        fire[:, parents] = on
        if children.size:
            fire[:, children.ravel()] = False
            has_child = on & (rng.random(on.shape) < cfg.child_prob)
            which = rng.integers(0, children.shape[1], size=on.shape)
            t, h = np.nonzero(has_child)
            fire[t, children[h, which[t, h]]] = True
    return fire


def _tokens(cfg: SyntheticConfig, D: np.ndarray, parents: np.ndarray, children: np.ndarray, T: int,
            rng: np.random.Generator) -> tuple[np.ndarray, sp.csr_matrix]:
    fire = _fire(cfg, parents, children, T, rng)
    mags = np.maximum(0.1, rng.normal(cfg.magnitude_mean, cfg.magnitude_std, size=fire.shape))
    codes = sp.csr_matrix(np.where(fire, mags, 0.0).astype(np.float32))
    x = codes @ D + cfg.noise_std * _project_out_ones(rng.standard_normal((T, cfg.d)))
    return np.asarray(x, dtype=np.float32), codes


def generate(config: SyntheticConfig) -> SyntheticData:
    """Generate directions and the train / calibration / eval tokens (deterministic in ``config``)."""
    ss = np.random.SeedSequence(config.seed)
    r_dir, r_train, r_cal, r_eval = (np.random.default_rng(s) for s in ss.spawn(4))
    D, parts, sets, own = _directions(config, r_dir)
    H, C = config.n_hierarchies, config.n_children
    parents = np.arange(H, dtype=np.int64)
    children = H + np.arange(H * C, dtype=np.int64).reshape(H, C)
    xt, ct = _tokens(config, D, parents, children, config.n_train, r_train)
    xc, cc = _tokens(config, D, parents, children, config.n_calibration, r_cal)
    xe, ce = _tokens(config, D, parents, children, config.n_eval, r_eval)
    return SyntheticData(config, D, parts, sets, own, parents, children, xt, xc, xe, ct, cc, ce)
