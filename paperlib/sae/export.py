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
match SAELens' layer_norm (detected numerically, ``normalize_activations="auto"``; the export then
raises unless ``accept_prenormalised=True``), or ``normalize_activations="none"`` is requested, the
export uses ``"none"``: the weights are then correct for **pre-normalised inputs** x̃ (feed
``paperlib_sae.normalize(x)``; outputs are in the normalised space), ``metadata.paperlib.raw_activations``
is false and ``metadata.paperlib.inputs`` says what to feed.

Per-dimension input standardisation
-----------------------------------
An SAE trained with ``input_norm="dim+token"`` (:meth:`paperlib.sae.models.BatchTopKSAE.set_input_standardisation`)
first maps z = (x − input_mean) / input_scale per dimension. Where that is the *whole* input map (an SAE whose
``normalize`` is exactly this affine map, detected numerically by :func:`per_dim_only`), it is folded into the
weights, so raw activations give the same codes with ``normalize_activations = "none"``:

* ``W_enc ← diag(1/input_scale) W_enc``, ``W_dec ← W_dec diag(input_scale)``,
  ``b_dec ← input_mean + input_scale ⊙ b_dec`` (then (x − b_dec') W_enc' = (z − b_dec) W_enc and
  f W_dec' + b_dec' = (f W_dec + b_dec) ⊙ input_scale + input_mean: codes and raw reconstructions agree).

paperlib's SAEs standardise per token *after* the per-dimension step, z ↦ (z − mean(z)) / (std(z) + 1e-5).
That composition is not affine in x, and SAELens' ``layer_norm`` applies the per-token step to raw x, not to
z, so no SAELens configuration reproduces the codes from raw activations. :func:`to_saelens` then raises
unless ``accept_prenormalised=True``; the accepted export is for **pre-normalised inputs**
x̃ = ``sae.normalize(x)``, says so in ``metadata.paperlib.raw_activations = false`` and
``metadata.paperlib.input_transform = "prenormalise-nonaffine"``, and writes the per-dimension ``mean`` /
``scale`` to ``metadata.paperlib.input_standardisation`` so that x̃ can be computed without paperlib.
Requesting ``normalize_activations="layer_norm"`` for such an SAE raises. The same acceptance is needed
whenever raw activations would not give paperlib's codes (``"auto"`` on a normalisation that is not
SAELens' layer_norm); an explicit ``normalize_activations="none"`` is itself that acceptance.

Firing sparsity
---------------
With firing rates (``firing_rates``, or a :class:`~paperlib.metrics.calibration.Calibration` passed as
``thresholds``: its ``threshold_rate``, the fraction of calibration tokens on which each exported JumpReLU
latent fires), ``sparsity.safetensors`` holds ``sparsity = log10(rate + 1e-10)`` [n] (SAELens' training
convention and file name; dead latents ≈ −10), and ``metadata.paperlib.sparsity`` says which tokens it
was counted on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from paperlib.config.io import atomic_path, provenance

__all__ = ["SAELENS_CFG", "SAELENS_SPARSITY", "SAELENS_WEIGHTS", "detect_layer_norm", "fold_input_standardisation",
           "load_saelens_arrays", "per_dim_only", "to_saelens"]

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SPARSITY = "sparsity.safetensors"
SPARSITY_EPS = 1e-10
"""log10(rate + 1e-10): SAELens' ``log_feature_sparsity`` convention."""
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


@torch.no_grad()
def per_dim_only(sae: Any, n_probe: int = 64, seed: int = 0, rtol: float = 1e-5) -> bool:
    """True iff ``sae.normalize(x)`` equals the per-dimension affine map (x − input_mean) / input_scale alone
    (no per-token step after it) on random probes: only then can :func:`fold_input_standardisation` give
    raw-activation weights."""
    if not hasattr(sae, "normalize") or not hasattr(sae, "input_mean"):
        return False
    d = int(sae.W_dec.shape[1])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_probe, d, generator=gen, dtype=torch.float64)
    x = x * torch.logspace(-1, 1, n_probe, dtype=torch.float64)[:, None]
    x = x.to(sae.W_dec.dtype)
    ours = sae.normalize(x).to(torch.float64)
    ref = (x.to(torch.float64) - sae.input_mean.to(torch.float64)) / sae.input_scale.to(torch.float64)
    return bool(torch.allclose(ours, ref, rtol=rtol, atol=rtol * float(ref.abs().max().clamp_min(1.0))))


def fold_input_standardisation(W_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
                               mean: torch.Tensor, scale: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold z = (x − mean) / scale into (W_enc [d, n], W_dec [n, d], b_dec [d]) so that, with b_dec applied
    to the input, (x − b_dec') W_enc' = (z − b_dec) W_enc and f W_dec' + b_dec' = (f W_dec + b_dec)·scale + mean.
    Computed in fp64, returned in W_enc's dtype."""
    d = W_enc.shape[0]
    if mean.shape != (d,) or scale.shape != (d,):
        raise ValueError(f"mean and scale must have shape [{d}], got {tuple(mean.shape)}, {tuple(scale.shape)}")
    if not bool((scale > 0).all()):
        raise ValueError("scale must be > 0 in every dimension")
    dt = W_enc.dtype
    m, sc = mean.to(torch.float64), scale.to(torch.float64)
    W_enc2 = W_enc.to(torch.float64) / sc[:, None]
    W_dec2 = W_dec.to(torch.float64) * sc[None, :]
    b_dec2 = m + sc * b_dec.to(torch.float64)
    return W_enc2.to(dt), W_dec2.to(dt), b_dec2.to(dt)


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


def _firing(thresholds: Any, firing_rates: Any, n: int) -> np.ndarray | None:
    if firing_rates is None and hasattr(thresholds, "threshold_rate"):  # a Calibration: rates of the exported rule
        firing_rates = thresholds.threshold_rate
    if firing_rates is None:
        return None
    r = np.asarray(firing_rates, dtype=np.float64)
    if r.shape != (n,):
        raise ValueError(f"firing_rates must have shape [{n}], got {r.shape}")
    if not np.isfinite(r).all() or (r < 0).any() or (r > 1).any():
        raise ValueError("firing_rates must be fractions of tokens in [0, 1]")
    return r


def to_saelens(sae: Any, out_dir: str | Path, thresholds: Any = None, *, hook_name: str | None = None,
               model_name: str | None = None, hook_layer: int | None = None,
               context_size: int | None = None, prepend_bos: bool = True, dataset_path: str | None = None,
               normalize_activations: str = "auto", dtype: str = "float32",
               firing_rates: Any = None, sparsity_note: str | None = None, accept_prenormalised: bool = False,
               extra_metadata: dict[str, Any] | None = None) -> Path:
    """Write ``sae`` (a paperlib BatchTopKSAE) as a SAELens JumpReLU SAE folder (see module docstring).

    ``thresholds``: per-feature θ ``[n]`` (array/tensor or a :class:`paperlib.metrics.calibration.Calibration`,
    whose firing rates then fill ``sparsity.safetensors``); None → the SAE's running global threshold.
    ``normalize_activations``: ``"auto"`` (``"layer_norm"`` if the SAE's normalisation matches SAELens', the
    per-dimension standardisation folded into the weights if it is the whole (affine) input map), ``"layer_norm"``
    (error if it does not match) or ``"none"`` (weights for pre-normalised inputs). ``accept_prenormalised``:
    allow an ``"auto"`` export whose inputs must be pre-normalised (raw activations cannot give the same codes);
    without it that case raises. ``firing_rates`` [n]: fraction of tokens each latent fires on (``sparsity_note``
    says which tokens). ``hook_name``, ``model_name``, ``context_size``, ``dataset_path`` go to ``metadata``
    (:mod:`paperlib.stages.export` fills them from a profile). Files are written atomically. Returns ``out_dir``.
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
    rates = _firing(thresholds, firing_rates, n)

    per_dim = getattr(sae, "input_standardisation", "none") != "none"
    if per_dim and normalize_activations == "layer_norm":
        raise ValueError("the SAE uses per-dimension input standardisation ((x - input_mean) / input_scale "
                         "before the per-token standardisation), which SAELens cannot express; export with "
                         "normalize_activations='none' (weights for pre-normalised inputs sae.normalize(x))")
    foldable = per_dim and normalize_activations == "auto" and per_dim_only(sae)
    matches = not per_dim and detect_layer_norm(sae)
    if normalize_activations == "layer_norm" and not matches:
        raise ValueError("the SAE's input normalisation does not match SAELens' layer_norm; export with "
                         "normalize_activations='none' (weights for pre-normalised inputs)")
    norm = "layer_norm" if normalize_activations in ("auto", "layer_norm") and matches else "none"
    has_norm = hasattr(sae, "normalize")
    raw_ok = norm == "layer_norm" or foldable or not has_norm
    if not raw_ok and normalize_activations == "auto" and not accept_prenormalised:
        why = ("its per-dimension standardisation is followed by a per-token standardisation, "
               "(z - mean(z)) / (std(z) + 1e-5) with z = (x - input_mean) / input_scale, which is not affine in x "
               "and which SAELens' layer_norm (applied to raw x) does not reproduce"
               if per_dim else "its input normalisation is not SAELens' layer_norm")
        raise ValueError(f"raw activations cannot give this SAE's codes in SAELens: {why}. Pass "
                         "accept_prenormalised=True (CLI: --accept-prenormalised) to export weights for "
                         "pre-normalised inputs x~ = sae.normalize(x) (metadata.paperlib.raw_activations = false)")
    if foldable:
        W_enc, W_dec, b_dec = fold_input_standardisation(W_enc, W_dec, b_dec, sae.input_mean.detach().cpu(),
                                                         sae.input_scale.detach().cpu())
        transform = "folded-affine"
        inputs = ("raw activations: the per-dimension standardisation (x - input_mean) / input_scale is the whole "
                  "input map and is folded into W_enc, W_dec and b_dec; outputs are raw-scale reconstructions")
    elif norm == "layer_norm":
        transform = "layer_norm"
        inputs = ("raw activations: SAELens layer_norm reproduces paperlib's per-token standardisation "
                  "(x - mean) / (std_unbiased + 1e-5) exactly on encode; decode maps back with std "
                  "(paperlib: std + 1e-5)")
    elif per_dim:
        transform = "prenormalise-nonaffine"
        inputs = ("PRE-NORMALISED activations: feed paperlib's x~ = sae.normalize(x): first per dimension "
                  "z = (x - input_mean) / input_scale (metadata.paperlib.input_standardisation), then per "
                  "token x~ = (z - mean(z)) / (std_unbiased(z) + 1e-5); outputs are in that normalised space "
                  "(raw: (x^ * (std(z) + 1e-5) + mean(z)) * input_scale + input_mean)")
    elif has_norm:
        transform = "prenormalise"
        inputs = ("PRE-NORMALISED activations: feed paperlib's per-token standardised x~ = sae.normalize(x) "
                  "= (x - mean) / (std + 1e-5); outputs are in that normalised space")
    else:
        transform = "none"
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
        "raw_activations": bool(raw_ok),
        "input_transform": transform,
        "inputs": inputs,
        "paperlib_normalisation": "per-token (x - mean) / (std_unbiased + 1e-5) over d",
        "saelens_normalize_activations": norm,
        "provenance": provenance(),
    }
    if per_dim:
        paperlib_meta["paperlib_normalisation"] = (
            "per-dimension (x - input_mean) / input_scale" if foldable else
            "per-dimension (x - input_mean) / input_scale, then per-token (z - mean) / (std_unbiased + 1e-5) over d")
        paperlib_meta["input_standardisation"] = {
            "kind": "per-dim",
            "folded_into_weights": bool(foldable),
            "mean": [float(v) for v in sae.input_mean.detach().cpu().double()],
            "scale": [float(v) for v in sae.input_scale.detach().cpu().double()],
        }
    if rates is not None:
        paperlib_meta["sparsity"] = {
            "file": SAELENS_SPARSITY, "key": "sparsity", "value": f"log10(firing rate + {SPARSITY_EPS:g})",
            "tokens": sparsity_note or "unspecified",
            "n_never_fired": int((rates == 0).sum()),
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
    if rates is not None:
        sparsity = torch.log10(torch.as_tensor(rates, dtype=torch.float64) + SPARSITY_EPS).to(torch.float32)
        with atomic_path(out_dir / SAELENS_SPARSITY) as tmp:
            save_file({"sparsity": sparsity}, str(tmp))
    elif (out_dir / SAELENS_SPARSITY).exists():  # stale file from an earlier export into the same folder
        (out_dir / SAELENS_SPARSITY).unlink()
    with atomic_path(out_dir / SAELENS_CFG) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2, default=str, allow_nan=False) + "\n")
    return out_dir


def load_saelens_arrays(out_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read an exported folder back as numpy arrays + the cfg dict (no SAELens needed); ``sparsity`` is among
    the arrays when the folder has ``sparsity.safetensors``."""
    from safetensors.numpy import load_file

    out_dir = Path(out_dir)
    cfg = json.loads((out_dir / SAELENS_CFG).read_text())
    arrays = load_file(str(out_dir / SAELENS_WEIGHTS))
    if (out_dir / SAELENS_SPARSITY).exists():
        arrays.update(load_file(str(out_dir / SAELENS_SPARSITY)))
    return arrays, cfg
