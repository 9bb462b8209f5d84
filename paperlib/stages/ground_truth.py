"""The ground-truth atomicity benchmark (docs/method.md §3.7): train SAE arms on synthetic
activations with known directions (:mod:`paperlib.data.synthetic`) and evaluate them.

Every arm is trained on the same tokens with the same seed and initialisation, then calibrated on
the calibration tokens and evaluated on the eval tokens: co-firing mean |φ|, reconstruction, and
the decoder-geometry metrics of :mod:`paperlib.metrics.atomicity` over live latents (a latent that
never fires on the eval tokens is dead).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from paperlib.config.profiles import Profile, TokenBudget, get_profile
from paperlib.data.synthetic import SyntheticConfig, SyntheticData, generate
from paperlib.metrics import cooccurrence
from paperlib.metrics.atomicity import atomicity_metrics, recovery_metrics
from paperlib.metrics.calibration import calibrate_sae
from paperlib.sae.arms import RunSpec, arm_of
from paperlib.sae.models import BatchTopKSAE
from paperlib.sae.trainer import train_run

__all__ = ["benchmark_profile", "config_key", "evaluate_sae", "run_benchmark", "true_feature_stats"]


@torch.no_grad()
def evaluate_sae(sae: Any, data: SyntheticData, *, recover_threshold: float = 0.9,
                 blend_gain: float = 0.1) -> dict[str, Any]:
    """All metrics of one trained SAE: calibrate EER thresholds on ``data.calibration``, fire on
    ``data.eval``, then co-firing mean |φ|, FVU (normalised space), L0, dead latents, the
    :func:`~paperlib.metrics.atomicity.atomicity_metrics` and the recovered share per feature kind."""
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
            sae.eval()
            row = dict(run=spec.name, arm=spec.arm, label=spec.label, **spec.hyper())
            row.update(evaluate_sae(sae, data, recover_threshold=recover_threshold, blend_gain=blend_gain))
            row.update(truth)
            row["train_seconds"] = secs
            rows.append(row)
    return pd.DataFrame(rows)
