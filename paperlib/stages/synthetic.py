"""Ground-truth atomicity benchmark: SAEs trained on activations built from known directions.

Does a lower latent co-firing mean |φ| really go with more *atomic* latents? On real LM activations
the true features are unknown; here they are known by construction.

Generative model (:func:`generate`)
-----------------------------------
``n_features`` unit-norm true directions ``D [n, d]`` (Gaussian, made orthogonal to the all-ones
vector so that paperlib's per-token standardisation — subtract the mean over d, divide by the std —
only rescales a token and never changes a direction's orientation). Three kinds of feature:

* **co-firing groups** — ``n_groups`` groups of ``group_size`` features. Per token a group switches
  on with probability ``group_rate``; when on, each member fires independently with probability
  ``group_member_prob``. Members almost always fire together, so a sparsity-limited SAE is tempted to
  spend one latent on the group's summed direction (a *blend*);
* **similar pairs** — ``n_similar_pairs`` pairs with decoder cosine exactly ``pair_cosine`` (a shared
  subspace), each member firing independently with ``base_rate``;
* **independent** — every remaining feature fires independently with ``base_rate``.

Magnitudes are ``max(0.1, N(magnitude_mean, magnitude_std))``; the token is ``x = Σ_i a_i D_i + ε``
with isotropic Gaussian noise ``ε`` (std ``noise_std`` per dimension, also orthogonal to the ones
vector). Everything is drawn from one ``numpy.random.SeedSequence(seed)`` (independent child streams
for directions, train, calibration and eval tokens): same config ⇒ bit-identical data.

Metrics (:func:`atomicity_metrics`) — all on decoder rows normalised to unit norm
--------------------------------------------------------------------------------
* ``mmcs_true`` — mean over true directions of the max cosine to any live decoder row;
* ``mmcs_latent`` — mean over live latents of the max cosine to any true direction;
* ``recovered_frac`` — share of true directions whose max cosine to a live latent is ≥
  ``recover_threshold`` (0.9);
* ``blend_frac`` — share of live latents that **blend ≥ 2 true directions**, defined geometrically:
  let ``R1² = max_j cos(w, D_j)²`` (best single-direction fit of the unit row ``w``) and
  ``R2² = max_{j≠j1} ‖proj_{span(D_j1, D_j)} w‖²`` (best two-direction least-squares fit that keeps
  the best single direction ``j1``). The latent blends iff ``R2² − R1² ≥ blend_gain`` (0.1): a
  second true direction explains at least 10% of the row's squared norm beyond the best single one.
  For ``w ∝ D_a + c·D_b`` with orthogonal ``D_a, D_b`` this means ``c ≳ 0.33``; a row equal to a true
  direction has gain 0, a normalised sum of two orthogonal directions has gain 0.5, of the two members
  of a similar pair (cos 0.6) gain 0.2. Decoder geometry is used rather than firing correlation,
  because co-firing group members are correlated by construction, so an atomic latent would also
  correlate with its group mates;
* ``mean_abs_phi`` — within-SAE mean |φ| of latent co-firing on the eval tokens (firing = per-token
  EER thresholds calibrated on the calibration tokens; :mod:`paperlib.metrics.cooccurrence`);
* ``fvu`` — fraction of variance unexplained on the eval tokens in the normalised space (thresholded
  encode); ``l0`` the mean number of firing latents per token; ``n_dead`` latents that never fire.

Latents that never fire on the eval tokens are dead and excluded from the decoder-based metrics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from paperlib.config.profiles import Profile, TokenBudget, get_profile
from paperlib.metrics import cooccurrence
from paperlib.metrics.calibration import calibrate_sae
from paperlib.sae.arms import RunSpec, arm_of
from paperlib.sae.models import BatchTopKSAE
from paperlib.sae.trainer import train_run

__all__ = [
    "SyntheticConfig",
    "SyntheticData",
    "atomicity_metrics",
    "benchmark_profile",
    "blend_scores",
    "config_key",
    "evaluate_sae",
    "generate",
    "recovery_metrics",
    "run_benchmark",
    "tiny_config",
    "true_feature_stats",
    "unit_rows",
]


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


def unit_rows(W: Any) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); all-zero rows stay zero."""
    W = np.asarray(W.detach().cpu().numpy() if isinstance(W, torch.Tensor) else W, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {W.shape}")
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    return np.divide(W, norms, out=np.zeros_like(W), where=norms > 0)


def _project_out_ones(M: np.ndarray) -> np.ndarray:
    return M - M.mean(axis=-1, keepdims=True)


def _directions(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    D = unit_rows(_project_out_ones(rng.standard_normal((cfg.n_features, cfg.d))))
    n_grouped = cfg.n_groups * cfg.group_size
    groups = np.arange(n_grouped).reshape(cfg.n_groups, cfg.group_size)
    pairs = n_grouped + np.arange(2 * cfg.n_similar_pairs).reshape(cfg.n_similar_pairs, 2)
    c = cfg.pair_cosine
    for a, b in pairs:
        u = D[b] - (D[b] @ D[a]) * D[a]  # orthogonal to D[a], still orthogonal to the ones vector
        u /= np.linalg.norm(u)
        D[b] = c * D[a] + np.sqrt(1 - c * c) * u
    return unit_rows(D), groups, pairs


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


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------
def recovery_metrics(W_dec: Any, directions: Any, *, recover_threshold: float = 0.9,
                     live: np.ndarray | None = None) -> dict[str, Any]:
    """MMCS both ways and the share of true directions recovered (cosine ≥ ``recover_threshold``).

    ``live`` (bool ``[n_latents]``) restricts the decoder rows considered; ``max_cos_true`` holds the
    per-true-direction best cosine (for break-downs by feature kind).
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
    """Per latent: best direction ``j1`` and its cosine, best second direction ``j2`` and the gain
    ``R2² − R1²`` of the two-direction least-squares fit over the one-direction fit (module docstring).

    Pairs of (numerically) parallel directions (``1 − g² < 1e-9``) add nothing and are skipped.
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
    """Decoder-geometry metrics of one SAE against the true directions (module docstring)."""
    rec = recovery_metrics(W_dec, directions, recover_threshold=recover_threshold, live=live)
    W = unit_rows(W_dec)
    if live is not None:
        W = W[np.asarray(live, dtype=bool)]
    blend = blend_scores(W, directions) if len(W) else dict(gain=np.zeros(0))
    return dict(mmcs_true=rec["mmcs_true"], mmcs_latent=rec["mmcs_latent"],
                recovered_frac=rec["recovered_frac"],
                blend_frac=float((blend["gain"] >= blend_gain).mean()) if len(W) else float("nan"),
                mean_blend_gain=float(blend["gain"].mean()) if len(W) else float("nan"))


@torch.no_grad()
def evaluate_sae(sae: Any, data: SyntheticData, *, recover_threshold: float = 0.9,
                 blend_gain: float = 0.1) -> dict[str, Any]:
    """All metrics of one trained paperlib SAE: calibrate EER thresholds on ``data.calibration``,
    fire on ``data.eval``, then co-firing |φ|, reconstruction and decoder-geometry metrics."""

    bs = data.config.batch_size
    cal = calibrate_sae(sae, data.calibration, batch_size=bs, progress=False)
    theta = torch.as_tensor(np.asarray(cal.thresholds), dtype=torch.float32)
    fired, sse, sumsq = [], 0.0, 0.0
    total = torch.zeros(data.config.d, dtype=torch.float64)
    for s in range(0, len(data.eval), bs):
        x = torch.as_tensor(data.eval[s:s + bs]).float()
        f = sae.encode(x, thresholds=theta)
        xn = sae.normalize(x)
        sse += float(((sae.decode(f) - xn) ** 2).sum())
        sumsq += float((xn.double() ** 2).sum())
        total += xn.double().sum(0)
        fired.append(sp.csr_matrix((f > 0).numpy()))
    F = sp.vstack(fired, "csr")
    sst = sumsq - float((total**2).sum()) / max(len(data.eval), 1)  # Σ‖x̃ − mean(x̃)‖² over eval tokens
    live = np.asarray(F.sum(axis=0)).ravel() > 0
    ws = cooccurrence.within_stats(cooccurrence.count(F), exclude_degenerate=False)
    W_dec = sae.W_dec.detach().cpu().numpy()
    out: dict[str, Any] = atomicity_metrics(W_dec, data.directions, live=live,
                                            recover_threshold=recover_threshold, blend_gain=blend_gain)
    rec = recovery_metrics(W_dec, data.directions, recover_threshold=recover_threshold, live=live)
    kinds = data.kinds
    for kind in ("group", "pair", "independent"):
        m = kinds == kind
        if m.any():
            out[f"recovered_{kind}"] = float((rec["max_cos_true"][m] >= recover_threshold).mean())
    out.update(mean_abs_phi=ws.mean_abs_phi, fvu=sse / max(sst, 1e-30),
               l0=float(F.nnz / max(F.shape[0], 1)), n_dead=int((~live).sum()))
    return out


def true_feature_stats(data: SyntheticData) -> dict[str, float]:
    """Reference values of the ground truth itself: mean |φ| of true-feature co-firing and L0 (eval)."""
    F = data.codes_eval != 0
    ws = cooccurrence.within_stats(cooccurrence.count(F))
    return dict(true_mean_abs_phi=ws.mean_abs_phi, true_l0=float(F.sum() / F.shape[0]))


# ----------------------------------------------------------------------------------------------
# training and the benchmark
# ----------------------------------------------------------------------------------------------
def benchmark_profile(config: SyntheticConfig, base: str | Profile = "smoke") -> Profile:
    """A :class:`Profile` with the benchmark's SAE sizes (named ``synthetic``; used only for training)."""
    ctx = 64
    toks = TokenBudget(train=config.n_train, calibration=config.n_calibration,
                       cooccurrence=config.n_eval, autointerp=ctx, ce=ctx)
    return get_profile(base).replace(name="synthetic", context=ctx, tokens=toks, n_latents=config.n_latents,
                       k=config.k, n_meta=config.n_meta, k_meta=config.k_meta,
                       batch_size=config.batch_size, train_epochs=config.train_epochs, lr=config.lr,
                       ortho_chunks=config.ortho_chunks, checkpoint_every=10**9, n_noise_seeds=0)


def _as_spec(arm: str | RunSpec, lambda2: float, sigma2: float, gamma: float, seed: int) -> RunSpec:
    """An arm name with the benchmark's hyper-parameters (each arm keeps the ones it has), or a RunSpec."""
    if isinstance(arm, RunSpec):
        return arm
    return arm_of(arm).make(seed=seed, lambda2=lambda2, sigma2=sigma2, gamma=gamma)


def _train(profile: Profile, spec: RunSpec, data: SyntheticData, out_dir: Path, progress: bool) -> Any:

    train_run(profile, spec, data.train, out_dir, progress=progress, data_info={"synthetic": data.config.as_dict()})
    return BatchTopKSAE.load(out_dir / "sae")


def _train_seconds(metrics_path: Path) -> float:
    """Training wall time summed from the trainer's per-step ``tokens / tok_per_s`` records (also valid
    for a reused run); NaN when the metrics file is missing."""
    if not metrics_path.exists():
        return float("nan")
    total = 0.0
    with open(metrics_path) as fh:
        prev = 0
        for line in fh:
            rec = json.loads(line)
            toks = rec.get("tokens", 0) - prev
            prev = rec.get("tokens", 0)
            if rec.get("tok_per_s"):
                total += toks / rec["tok_per_s"]
    return total


def config_key(config: SyntheticConfig) -> str:
    """Short stable hash of a config (folder name that keeps runs of different configs apart)."""
    blob = json.dumps(config.as_dict(), sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def run_benchmark(config: SyntheticConfig | None = None,
                  arms: Iterable[str | RunSpec] = ("solo", "joint", "ortho"), *,
                  lambda2: float = 0.3, sigma2: float = 1.0, gamma: float = 0.1,
                  out_dir: str | Path | None = None, data: SyntheticData | None = None,
                  recover_threshold: float = 0.9, blend_gain: float = 0.1,
                  progress: bool = True) -> pd.DataFrame:
    """Train every arm on the same synthetic data (same SAE seed and init) and evaluate it.

    ``arms``: names (``solo``, ``joint`` with ``lambda2``/``sigma2``, ``control``, ``ortho`` with
    ``gamma``) or explicit :class:`RunSpec` s. Trained SAEs go to ``out_dir/<config_key>/<run name>``
    (a temporary directory, deleted afterwards, when None); a finished run there is reused.
    Returns one row per arm: run name, label, the metrics of :func:`evaluate_sae`, the ground truth's
    own ``true_mean_abs_phi``/``true_l0`` and ``train_seconds`` (summed per-step training time).
    """
    config = config or SyntheticConfig()
    data = data if data is not None else generate(config)
    profile = benchmark_profile(config)
    specs: Sequence[RunSpec] = [_as_spec(a, lambda2, sigma2, gamma, config.sae_seed) for a in arms]
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"duplicate arms: {[s.name for s in specs]}")
    truth = true_feature_stats(data)
    rows = []
    with tempfile.TemporaryDirectory(prefix="synthetic-") as tmp:
        root = Path(out_dir) if out_dir is not None else Path(tmp)
        for spec in tqdm(specs, desc="arms", disable=not progress):
            run_dir = root / config_key(config) / spec.name
            sae = _train(profile, spec, data, run_dir, progress)
            secs = _train_seconds(run_dir / "metrics.jsonl")
            if hasattr(sae, "eval"):
                sae.eval()
            row = dict(run=spec.name, arm=spec.arm, label=spec.label, **spec.hyper())
            row.update(evaluate_sae(sae, data, recover_threshold=recover_threshold, blend_gain=blend_gain))
            row.update(truth)
            row["train_seconds"] = secs
            rows.append(row)
    return pd.DataFrame(rows)
