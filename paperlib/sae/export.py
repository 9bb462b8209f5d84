"""Export a trained paperlib BatchTopK SAE to the SAELens (6.x) on-disk format as a JumpReLU SAE.

Layout written by :func:`to_saelens` (what ``sae_lens.SAE.load_from_disk(out_dir)`` reads):

* ``sae_weights.safetensors`` — ``W_enc [d, n]``, ``W_dec [n, d]``, ``b_enc [n]`` (zeros),
  ``b_dec [d]``, ``threshold [n]`` (float32 by default);
* ``cfg.json`` — ``architecture: "jumprelu"``, ``d_in``, ``d_sae``, ``dtype``, ``device``,
  ``apply_b_dec_to_input: true``, ``normalize_activations``, ``reshape_activations: "none"`` and
  ``metadata`` (``hook_name``, ``model_name``, ``context_size``, ``prepend_bos``, … and a
  ``paperlib`` entry describing the source SAE, the thresholds and the input normalisation).

Why the map is exact
--------------------
paperlib's inference encode is f = pre · 1[pre > θ] with pre = ReLU((x̃ − b_dec) W_enc) (method.md §1,
per-feature EER thresholds θ from :mod:`paperlib.metrics.calibration`). SAELens' JumpReLU encode is
``ReLU(h) · 1[h > threshold]`` with ``h = (norm(x) − b_dec·apply_b_dec_to_input) W_enc + b_enc``. With
``apply_b_dec_to_input = True``, ``b_enc = 0`` and ``threshold = θ`` the two agree for every θ ≥ 0
(paperlib's θ are ≥ 0; dead features have θ = +inf, written as +inf, which never fires). BatchTopK
itself is batch-dependent and has no SAELens inference form; the calibrated JumpReLU is the
per-token inference rule of this project, so it is what is exported.

Per-token input normalisation
-----------------------------
paperlib standardises each token: x̃ = (x − mean_d(x)) / (std_d(x) + 1e-5) with the *unbiased*
std (``torch.std`` default), and ``decode`` returns x̂ in that normalised space (raw scale:
x̂·(std + 1e-5) + mean). SAELens 6.x (checked in 6.54: ``normalize_activations`` ∈ {"none",
"expected_average_only_in", "constant_norm_rescale", "layer_norm", "covariance_whitening"})
has ``"layer_norm"``: on encode ``mu = x.mean(-1)``, ``std = (x − mu).std(-1)`` (unbiased),
``x̃ = (x − mu) / (std + 1e-5)`` — identical to paperlib's x̃ — and on decode it returns
``x̂·std + mu``. Hence, with ``normalize_activations = "layer_norm"`` (the default here):

* SAELens ``encode(x)`` equals paperlib ``encode(x, thresholds=θ)`` (to float rounding);
* SAELens ``decode(encode(x))`` equals paperlib's raw-scale reconstruction up to the eps in the
  scale: SAELens multiplies by ``std``, paperlib by ``std + 1e-5`` (relative difference
  1e-5/std — negligible for residual-stream activations, whose std is O(0.1–100));
* SAELens' layer_norm is stateful: ``decode`` uses the mean/std stored by the preceding ``encode``,
  so call ``sae(x)`` / ``encode`` then ``decode`` on the same batch (it raises otherwise).

``"expected_average_only_in"`` / ``"constant_norm_rescale"`` (a dataset-wide scalar or a per-token
norm rescale) cannot express the per-token mean subtraction. If a model's normalisation does not
match SAELens' layer_norm (detected numerically, ``normalize_activations="auto"``), or
``normalize_activations="none"`` is requested, the export uses ``"none"``: the weights are then
correct for **pre-normalised inputs** x̃ (feed ``paperlib_sae.normalize(x)``; outputs are in the
normalised space), and ``metadata.paperlib.inputs`` says so.

Per-dimension input standardisation
-----------------------------------
An SAE trained with ``input_norm="dim+token"`` (:meth:`paperlib.sae.models.BatchTopKSAE.set_input_standardisation`)
first maps x ← (x − input_mean) / input_scale per dimension and only then standardises per token.
SAELens has no normalisation that composes a per-dimension affine map with a per-token layer_norm
(and the per-token step is nonlinear, so the affine map cannot be folded into W_enc / b_dec).
Such an SAE is therefore exported with ``normalize_activations = "none"`` (``"auto"``) for
pre-normalised inputs x̃ = ``sae.normalize(x)`` (which includes the per-dimension step); the
per-dimension ``mean`` / ``scale`` are written to ``metadata.paperlib.input_standardisation`` so that
x̃ can be computed without paperlib. Requesting ``normalize_activations="layer_norm"`` raises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from paperlib.config.io import atomic_path, provenance

__all__ = ["SAELENS_CFG", "SAELENS_WEIGHTS", "detect_layer_norm", "load_saelens_arrays", "to_saelens"]

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.54.12"
"""SAELens version whose format the export follows (``metadata.sae_lens_version``; ≥ 6.0 selects the
6.x config reader)."""
LN_EPS = 1e-5


def _saelens_layer_norm(x: torch.Tensor) -> torch.Tensor:
    mu = x.mean(dim=-1, keepdim=True)
    xc = x - mu
    return xc / (xc.std(dim=-1, keepdim=True) + LN_EPS)


@torch.no_grad()
def detect_layer_norm(sae: Any, n_probe: int = 64, seed: int = 0, rtol: float = 1e-5) -> bool:
    """True iff ``sae.normalize`` equals SAELens' ``layer_norm`` input normalisation on random probes
    (scales 0.1–10, random offsets), computed in the SAE's dtype. The tolerance (1e-5) separates the
    unbiased from the biased std for any d up to ~5·10⁴ (their ratio is √(d/(d−1)))."""
    if not hasattr(sae, "normalize"):
        return False
    d = int(sae.W_dec.shape[1])
    dtype = sae.W_dec.dtype
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_probe, d, generator=gen, dtype=torch.float64)
    scales = torch.logspace(-1, 1, n_probe, dtype=torch.float64)[:, None]
    x = x * scales + torch.randn(n_probe, 1, generator=gen, dtype=torch.float64)
    x = x.to(dtype)
    ours = sae.normalize(x).to(torch.float64)
    ref = _saelens_layer_norm(x).to(torch.float64)
    return bool(torch.allclose(ours, ref, rtol=rtol, atol=rtol))


def _thresholds(sae: Any, thresholds: Any, n: int) -> tuple[torch.Tensor, str]:
    if thresholds is None:
        th = getattr(sae, "threshold", None)
        if th is None or float(torch.as_tensor(th).max()) < 0:
            raise ValueError("no thresholds given and the SAE has no running threshold; pass the calibrated "
                             "per-feature thresholds (paperlib.metrics.calibration)")
        th = torch.as_tensor(th).detach().to(torch.float32).cpu()
        source = "running global threshold (EMA of the batch minimum selected activation)"
    else:
        if hasattr(thresholds, "thresholds"):  # a paperlib.metrics.calibration.Calibration
            thresholds = thresholds.thresholds
        if isinstance(thresholds, torch.Tensor):
            th = thresholds.detach().to(torch.float32).cpu()
        else:
            th = torch.as_tensor(np.asarray(thresholds, dtype=np.float32))
        source = "per-feature calibrated thresholds"
    if th.ndim == 0:
        th = th.expand(n).clone()
    if th.shape != (n,):
        raise ValueError(f"thresholds must be a scalar or have shape [{n}], got {tuple(th.shape)}")
    if torch.isnan(th).any():
        raise ValueError("thresholds contain NaN")
    if (th < 0).any():
        raise ValueError("thresholds must be >= 0 (paperlib fires on ReLU pre-activations > θ)")
    return th, source


def to_saelens(sae: Any, out_dir: str | Path, thresholds: Any = None, *, hook_name: str | None = None,
               model_name: str | None = None, hook_layer: int | None = None,
               context_size: int | None = None, prepend_bos: bool = True, dataset_path: str | None = None,
               normalize_activations: str = "auto", dtype: str = "float32",
               extra_metadata: dict[str, Any] | None = None) -> Path:
    """Write ``sae`` (a paperlib BatchTopKSAE) as a SAELens JumpReLU SAE folder (see module docstring).

    ``thresholds``: per-feature θ ``[n]`` (array/tensor or a :class:`paperlib.metrics.calibration.Calibration`);
    None → the SAE's running global threshold. ``normalize_activations``: ``"auto"`` (``"layer_norm"`` if
    the SAE's normalisation matches SAELens', else ``"none"``), ``"layer_norm"`` (error if it does not
    match) or ``"none"`` (weights for pre-normalised inputs). Both files are written atomically.
    Returns ``out_dir``.
    """
    if normalize_activations not in ("auto", "layer_norm", "none"):
        raise ValueError("normalize_activations must be auto, layer_norm or none, "
                         f"got {normalize_activations!r}")
    if dtype not in ("float32", "float64", "float16", "bfloat16"):
        raise ValueError(f"unsupported dtype {dtype!r}")
    W_dec = sae.W_dec.detach().cpu()
    W_enc = sae.W_enc.detach().cpu()
    b_dec = sae.b_dec.detach().cpu()
    n, d = W_dec.shape
    if W_enc.shape != (d, n) or b_dec.shape != (d,):
        raise ValueError(f"inconsistent SAE shapes: W_enc {tuple(W_enc.shape)}, W_dec {tuple(W_dec.shape)}, "
                         f"b_dec {tuple(b_dec.shape)}")
    theta, theta_source = _thresholds(sae, thresholds, n)

    per_dim = getattr(sae, "input_standardisation", "none") != "none"
    if per_dim and normalize_activations == "layer_norm":
        raise ValueError("the SAE uses per-dimension input standardisation ((x - input_mean) / input_scale "
                         "before the per-token standardisation), which SAELens cannot express; export with "
                         "normalize_activations='none' (weights for pre-normalised inputs sae.normalize(x))")
    matches = not per_dim and detect_layer_norm(sae)
    if normalize_activations == "layer_norm" and not matches:
        raise ValueError("the SAE's input normalisation does not match SAELens' layer_norm; export with "
                         "normalize_activations='none' (weights for pre-normalised inputs)")
    norm = "layer_norm" if normalize_activations in ("auto", "layer_norm") and matches else "none"
    if norm == "layer_norm":
        inputs = ("raw activations: SAELens layer_norm reproduces paperlib's per-token standardisation "
                  "(x - mean) / (std_unbiased + 1e-5) exactly on encode; decode maps back with std "
                  "(paperlib: std + 1e-5)")
    elif per_dim:
        inputs = ("PRE-NORMALISED activations: feed paperlib's x~ = sae.normalize(x): first per dimension "
                  "z = (x - input_mean) / input_scale (metadata.paperlib.input_standardisation), then per "
                  "token x~ = (z - mean(z)) / (std_unbiased(z) + 1e-5); outputs are in that normalised space "
                  "(raw: (x^ * (std(z) + 1e-5) + mean(z)) * input_scale + input_mean)")
    elif hasattr(sae, "normalize"):
        inputs = ("PRE-NORMALISED activations: feed paperlib's per-token standardised x~ = sae.normalize(x) "
                  "= (x - mean) / (std + 1e-5); outputs are in that normalised space")
    else:
        inputs = "raw activations (the source SAE applies no input normalisation)"

    tdtype = getattr(torch, dtype)
    n_dead = int(torch.isinf(theta).sum())
    tensors = {
        "W_enc": W_enc.to(tdtype).contiguous(),
        "W_dec": W_dec.to(tdtype).contiguous(),
        "b_enc": torch.zeros(n, dtype=tdtype),
        "b_dec": b_dec.to(tdtype).contiguous(),
        "threshold": theta.to(tdtype).contiguous(),
    }
    src_cfg = sae.config() if hasattr(sae, "config") and callable(sae.config) else {}
    paperlib_meta = {
        "source": "paperlib.sae.models.BatchTopKSAE",
        "source_config": src_cfg,
        "k": int(getattr(sae, "k", 0)) or None,
        "encode": "JumpReLU f = relu(h) * (h > threshold), h = (x~ - b_dec) @ W_enc; equals paperlib "
                  "encode(x, thresholds=theta) (per-token inference rule; BatchTopK is only for training)",
        "thresholds": theta_source,
        "n_dead_infinite_threshold": n_dead,
        "inputs": inputs,
        "paperlib_normalisation": "per-token (x - mean) / (std_unbiased + 1e-5) over d",
        "saelens_normalize_activations": norm,
        "provenance": provenance(),
    }
    if per_dim:
        paperlib_meta["paperlib_normalisation"] = ("per-dimension (x - input_mean) / input_scale, then per-token "
                                                   "(z - mean) / (std_unbiased + 1e-5) over d")
        paperlib_meta["input_standardisation"] = {
            "kind": "per-dim",
            "mean": [float(v) for v in sae.input_mean.detach().cpu().double()],
            "scale": [float(v) for v in sae.input_scale.detach().cpu().double()],
        }
    if extra_metadata:
        paperlib_meta.update(extra_metadata)
    cfg = {
        "architecture": "jumprelu",
        "d_in": int(d),
        "d_sae": int(n),
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": norm,
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": None,
            "model_name": model_name,
            "hook_name": hook_name,
            "hook_layer": hook_layer,
            "hook_head_index": None,
            "context_size": context_size,
            "prepend_bos": prepend_bos,
            "dataset_path": dataset_path,
            "paperlib": paperlib_meta,
        },
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / SAELENS_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_path(out_dir / SAELENS_CFG) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2, default=str, allow_nan=False) + "\n")
    return out_dir


def load_saelens_arrays(out_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read an exported folder back as numpy arrays + the cfg dict (no SAELens needed)."""
    from safetensors.numpy import load_file

    out_dir = Path(out_dir)
    cfg = json.loads((out_dir / SAELENS_CFG).read_text())
    return load_file(str(out_dir / SAELENS_WEIGHTS)), cfg
