import json

import numpy as np
import pytest
import torch

from paperlib.sae.export import (
    SAELENS_SPARSITY,
    detect_layer_norm,
    fold_input_standardisation,
    load_saelens_arrays,
    per_dim_only,
    to_saelens,
)
from paperlib.sae.models import BatchTopKSAE


def _sae_and_inputs(d=24, n=96, k=4, T=300):
    sae = BatchTopKSAE(d, n, k, seed=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.b_dec.copy_(0.1 * torch.randn(d, generator=g))
        sae.W_enc.mul_(3.0)
    x = 2.0 * torch.randn(T, d, generator=g) + 0.7 * torch.randn(T, 1, generator=g)
    pre = sae.pre_acts(x).detach()
    theta = torch.quantile(pre, 0.9, dim=0)
    theta[:4] = float("inf")  # dead features
    return sae, x, theta


def _np_jumprelu(arrays, x, layer_norm):
    """Plain numpy reimplementation of SAELens' JumpReLU encode/decode (6.x semantics)."""
    x = np.asarray(x, dtype=np.float64)
    if layer_norm:
        mu = x.mean(-1, keepdims=True)
        std = (x - mu).std(-1, ddof=1, keepdims=True)
        xn = (x - mu) / (std + 1e-5)
    else:
        xn = x
    h = (xn - arrays["b_dec"]) @ arrays["W_enc"] + arrays["b_enc"]
    f = np.maximum(h, 0) * (h > arrays["threshold"])
    out = f @ arrays["W_dec"] + arrays["b_dec"]
    if layer_norm:
        out = out * std + mu
    return f, out


def test_roundtrip_matches_paperlib_encode(tmp_path):
    sae, x, theta = _sae_and_inputs()
    out = to_saelens(sae, tmp_path / "exp", theta, hook_name="blocks.3.hook_resid_pre", model_name="m",
                     context_size=64)
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]  # no temp files
    arrays, cfg = load_saelens_arrays(out)
    assert cfg["architecture"] == "jumprelu" and cfg["normalize_activations"] == "layer_norm"
    assert cfg["apply_b_dec_to_input"] is True and (cfg["d_in"], cfg["d_sae"]) == (24, 96)
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_pre"
    assert cfg["metadata"]["paperlib"]["n_dead_infinite_threshold"] == 4
    assert np.isinf(arrays["threshold"][:4]).all()
    np.testing.assert_array_equal(arrays["W_dec"], sae.W_dec.detach().numpy())
    f_np, out_np = _np_jumprelu(arrays, x.numpy(), layer_norm=True)
    f = sae.encode(x, thresholds=theta).detach().numpy()
    assert ((f_np > 0) == (f > 0)).all()
    np.testing.assert_allclose(f_np, f, atol=1e-5)
    assert (f > 0).sum() > 0
    # raw-scale reconstruction: equal up to the eps in paperlib's scale (std + 1e-5 vs std)
    xn, mean, scale = sae.normalize_stats(x)
    rec = sae.decode(torch.as_tensor(f), mean, scale).detach().numpy()
    np.testing.assert_allclose(out_np, rec, rtol=1e-4, atol=1e-4)


def test_prenormalised_export(tmp_path):
    sae, x, theta = _sae_and_inputs()
    arrays, cfg = load_saelens_arrays(to_saelens(sae, tmp_path, theta, normalize_activations="none"))
    assert cfg["normalize_activations"] == "none"
    assert "PRE-NORMALISED" in cfg["metadata"]["paperlib"]["inputs"]
    xn = sae.normalize(x).detach().numpy()
    f_np, out_np = _np_jumprelu(arrays, xn, layer_norm=False)
    f = sae.encode(x, thresholds=theta).detach().numpy()
    np.testing.assert_allclose(f_np, f, atol=1e-5)
    np.testing.assert_allclose(out_np, sae.decode(torch.as_tensor(f)).detach().numpy(), atol=1e-4)


class _BiasedStdSAE(BatchTopKSAE):
    def normalize(self, x):
        return (x - x.mean(-1, keepdim=True)) / (x.std(-1, unbiased=False, keepdim=True) + 1e-5)


def test_normalisation_detection_and_errors(tmp_path):
    sae, _, theta = _sae_and_inputs()
    assert detect_layer_norm(sae)
    other = _BiasedStdSAE(24, 96, 4)
    assert not detect_layer_norm(other)
    # raw activations cannot reproduce its codes: "auto" refuses unless the pre-normalised export is accepted
    with pytest.raises(ValueError, match="accept_prenormalised"):
        to_saelens(other, tmp_path / "a0", theta)
    _, cfg = load_saelens_arrays(to_saelens(other, tmp_path / "a", theta, accept_prenormalised=True))
    assert cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["paperlib"]["raw_activations"] is False
    assert cfg["metadata"]["paperlib"]["input_transform"] == "prenormalise"
    with pytest.raises(ValueError, match="layer_norm"):
        to_saelens(other, tmp_path / "b", theta, normalize_activations="layer_norm")
    with pytest.raises(ValueError, match="shape"):
        to_saelens(sae, tmp_path / "c", theta[:-1])
    with pytest.raises(ValueError, match=">= 0"):
        to_saelens(sae, tmp_path / "d", -torch.ones(96))
    with pytest.raises(ValueError, match="running threshold"):
        to_saelens(sae, tmp_path / "e")  # untrained: no running threshold
    scalar = to_saelens(sae, tmp_path / "f", 0.5)
    np.testing.assert_array_equal(load_saelens_arrays(scalar)[0]["threshold"], np.full(96, 0.5, np.float32))
    json.loads((scalar / "cfg.json").read_text())  # strict JSON (no NaN/inf)


def test_sae_lens_loads_export(tmp_path):
    import sae_lens  # in the dev extra (installs beside the torch pin without changing any pin): never skipped
    sae, x, theta = _sae_and_inputs()
    out = to_saelens(sae, tmp_path / "exp", theta, hook_name="blocks.3.hook_resid_pre")
    loaded = sae_lens.SAE.load_from_disk(str(out))
    assert loaded.cfg.normalize_activations == "layer_norm"
    with torch.no_grad():
        f_sl = loaded.encode(x)
        rec_sl = loaded.decode(f_sl)
    f = sae.encode(x, thresholds=theta).detach()
    torch.testing.assert_close(f_sl, f, atol=1e-5, rtol=1e-5)
    xn, mean, scale = sae.normalize_stats(x)
    torch.testing.assert_close(rec_sl, sae.decode(f, mean, scale).detach(), atol=1e-4, rtol=1e-4)


def test_per_dim_standardised_sae_exports_prenormalised(tmp_path):
    sae, x, _ = _sae_and_inputs()
    g = torch.Generator().manual_seed(1)
    mu, sd = 50 * torch.randn(24, generator=g), torch.rand(24, generator=g) * 5 + 0.5
    x = x * sd + mu
    sae.set_input_standardisation(mu, sd)
    theta = torch.quantile(sae.pre_acts(x).detach(), 0.9, dim=0)
    assert not detect_layer_norm(sae)
    # SAELens cannot express per-dim + per-token normalisation: an explicit layer_norm export is refused
    with pytest.raises(ValueError, match="per-dimension input standardisation"):
        to_saelens(sae, tmp_path / "ln", theta, normalize_activations="layer_norm")
    assert not (tmp_path / "ln").exists()
    # per-dim followed by per-token standardisation is not affine in x: refused unless accepted
    with pytest.raises(ValueError, match="not affine"):
        to_saelens(sae, tmp_path / "refused", theta)
    assert not (tmp_path / "refused").exists()
    arrays, cfg = load_saelens_arrays(to_saelens(sae, tmp_path / "auto", theta, accept_prenormalised=True))
    assert cfg["normalize_activations"] == "none"
    meta = cfg["metadata"]["paperlib"]
    assert meta["raw_activations"] is False and meta["input_transform"] == "prenormalise-nonaffine"
    assert meta["input_standardisation"]["folded_into_weights"] is False
    assert "PRE-NORMALISED" in meta["inputs"] and "input_scale" in meta["inputs"]
    assert meta["source_config"]["input_standardisation"] == "per-dim"
    std_meta = meta["input_standardisation"]
    np.testing.assert_allclose(std_meta["mean"], mu.numpy(), rtol=1e-7)
    np.testing.assert_allclose(std_meta["scale"], sd.numpy(), rtol=1e-7)
    # x~ rebuilt from the metadata alone (numpy), then the plain JumpReLU: equals paperlib's encode / decode
    z = (x.double().numpy() - np.asarray(std_meta["mean"])) / np.asarray(std_meta["scale"])
    m = z.mean(-1, keepdims=True)
    s = (z - m).std(-1, ddof=1, keepdims=True) + 1e-5
    f_np, out_np = _np_jumprelu(arrays, (z - m) / s, layer_norm=False)
    f = sae.encode(x, thresholds=theta).detach()
    assert (f > 0).sum() > 0
    np.testing.assert_allclose(f_np, f.numpy(), atol=1e-4)
    xn, mean, scale = sae.normalize_with_stats(x)
    np.testing.assert_allclose(out_np, sae.decode(f).detach().numpy(), atol=1e-4)
    raw = (out_np * s + m) * np.asarray(std_meta["scale"]) + np.asarray(std_meta["mean"])
    np.testing.assert_allclose(raw, sae.decode(f, mean, scale).detach().numpy(), rtol=1e-4, atol=1e-3)


class _PerDimOnlySAE(BatchTopKSAE):
    """An SAE whose whole input map is the per-dimension standardisation (no per-token step)."""

    @staticmethod
    def normalize_stats(x):
        return x, torch.zeros(x.shape[0], 1, dtype=x.dtype), torch.ones(x.shape[0], 1, dtype=x.dtype)


def _per_dim_sae(cls, d=24, n=96):
    sae = cls(d, n, 4, seed=3)
    g = torch.Generator().manual_seed(1)
    mu, sd = 50 * torch.randn(d, generator=g), torch.rand(d, generator=g) * 5 + 0.5
    with torch.no_grad():
        sae.b_dec.copy_(0.1 * torch.randn(d, generator=g))
        sae.W_enc.mul_(3.0)
    sae.set_input_standardisation(mu, sd)
    x = (2.0 * torch.randn(300, d, generator=g)) * sd + mu
    theta = torch.quantile(sae.pre_acts(x).detach(), 0.9, dim=0)
    theta[:3] = float("inf")
    return sae, x, theta


def test_fold_input_standardisation_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    d, n = 5, 7
    W_enc, W_dec, b_dec = (torch.randn(d, n, generator=g, dtype=torch.float64),
                           torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(d, generator=g,
                                                                                             dtype=torch.float64))
    mean, scale = torch.randn(d, generator=g, dtype=torch.float64), torch.rand(d, generator=g, dtype=torch.float64) + .1
    We, Wd, bd = fold_input_standardisation(W_enc, W_dec, b_dec, mean, scale)
    x, f = torch.randn(4, d, generator=g, dtype=torch.float64), torch.randn(4, n, generator=g, dtype=torch.float64)
    for t in range(4):  # loop over tokens and dimensions: the unfolded maps written out
        z = torch.tensor([(x[t, i] - mean[i]) / scale[i] for i in range(d)])
        h = torch.tensor([sum((z[i] - b_dec[i]) * W_enc[i, j] for i in range(d)) for j in range(n)])
        torch.testing.assert_close((x[t] - bd) @ We, h.to(torch.float64))
        rec = torch.tensor([(sum(f[t, j] * W_dec[j, i] for j in range(n)) + b_dec[i]) * scale[i] + mean[i]
                            for i in range(d)])
        torch.testing.assert_close(f[t] @ Wd + bd, rec.to(torch.float64))
    with pytest.raises(ValueError, match="scale"):
        fold_input_standardisation(W_enc, W_dec, b_dec, mean, -scale)


def test_affine_per_dim_standardisation_is_folded(tmp_path):
    """Where the per-dimension standardisation is the whole input map it is affine: folded into the weights,
    raw activations give the same codes and raw-scale reconstructions (numpy reference and SAELens itself)."""
    import sae_lens

    sae, x, theta = _per_dim_sae(_PerDimOnlySAE)
    assert per_dim_only(sae) and not per_dim_only(_per_dim_sae(BatchTopKSAE)[0])
    out = to_saelens(sae, tmp_path / "fold", theta)
    arrays, cfg = load_saelens_arrays(out)
    meta = cfg["metadata"]["paperlib"]
    assert cfg["normalize_activations"] == "none"
    assert meta["raw_activations"] is True and meta["input_transform"] == "folded-affine"
    assert meta["input_standardisation"]["folded_into_weights"] is True
    f_np, out_np = _np_jumprelu(arrays, x.numpy(), layer_norm=False)  # RAW x in
    f = sae.encode(x, thresholds=theta).detach()
    assert (f > 0).sum() > 0 and ((f_np > 0) == (f.numpy() > 0)).all()
    np.testing.assert_allclose(f_np, f.numpy(), rtol=1e-4, atol=1e-4)
    xn, mean, scale = sae.normalize_with_stats(x)
    rec = sae.decode(f, mean, scale).detach()
    np.testing.assert_allclose(out_np, rec.numpy(), rtol=1e-4, atol=1e-3)
    loaded = sae_lens.SAE.load_from_disk(str(out))
    with torch.no_grad():
        f_sl = loaded.encode(x)
        torch.testing.assert_close(f_sl, f, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(loaded.decode(f_sl), rec, atol=1e-3, rtol=1e-4)


class _Cal:
    """The two fields of a paperlib Calibration that the export reads."""

    def __init__(self, thresholds, rate):
        self.thresholds, self.threshold_rate = thresholds, rate


def test_sparsity_file_from_calibration(tmp_path):
    import sae_lens

    sae, x, theta = _sae_and_inputs()
    rate = np.linspace(0, 0.5, 96)
    rate[:4] = 0.0  # dead
    out = to_saelens(sae, tmp_path / "s", _Cal(theta.numpy(), rate), sparsity_note="300 calibration tokens")
    assert (out / SAELENS_SPARSITY).exists()
    arrays, cfg = load_saelens_arrays(out)
    np.testing.assert_allclose(arrays["sparsity"], np.log10(rate + 1e-10).astype(np.float32), rtol=1e-6)
    sp = cfg["metadata"]["paperlib"]["sparsity"]
    assert sp["tokens"] == "300 calibration tokens" and sp["n_never_fired"] == 4
    sae_lens.SAE.load_from_disk(str(out))  # the extra file does not disturb SAELens
    # without rates no file; a stale one from an earlier export into the same folder is removed
    to_saelens(sae, out, theta)
    assert not (out / SAELENS_SPARSITY).exists()
    with pytest.raises(ValueError, match="firing_rates"):
        to_saelens(sae, tmp_path / "bad", theta, firing_rates=np.full(96, 2.0))


def test_saelens_splice_into_the_language_model_reproduces_paperlib(tmp_path):
    """The export spliced into the (tiny, offline) SmolLM2-architecture model through SAELens.

    1. Activations: paperlib's ``resid_pre`` (nnsight) of block L, non-BOS positions; SAELens' ``encode`` of the
       loaded export equals paperlib's calibrated codes ``sae.encode(x, thresholds=θ)`` (EER thresholds from
       ``calibrate_from_pre``): max |Δ| ≤ 1e-5 and the same firing pattern.
    2. In the model: SAELens' ``SAETransformerBridge`` (booted from the local model, no hub) reads the same
       activations at the export's ``hook_name``, its attached SAE gives the same codes, and the next-token loss
       with the SAE spliced in equals paperlib's CE splice on the same tokens: BOS kept (paperlib's
       ``batch_ce``, SAELens' SAE applied by a hook to positions 1:) and every position (``run_with_saes``).
       Losses agree to 1e-4 nats while the splice itself moves the loss by ≫ that; the residual gap is the
       documented scale eps (paperlib multiplies by std + 1e-5, SAELens by std)."""
    import sae_lens
    from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge

    from paperlib.data import activations, lm
    from paperlib.data.lm import block_envoy
    from paperlib.metrics.calibration import calibrate_from_pre
    from paperlib.metrics.ce import batch_ce, sae_splice
    from paperlib.stages.export import hook_name

    layer = 2
    model = lm.load_lm("tiny-smollm2", device="cpu")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(model.tokenizer), (4, 32), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    x = activations.resid_pre(model, ids, layer)
    flat = x[:, 1:].reshape(-1, x.shape[-1])  # paperlib's SAEs never see BOS positions
    sae = BatchTopKSAE(x.shape[-1], 256, 8, seed=1)
    with torch.no_grad():
        sae.W_enc.mul_(3.0)
    cal = calibrate_from_pre([sae.pre_acts(flat).detach()], k=sae.k, progress=False)
    theta = torch.as_tensor(cal.thresholds, dtype=torch.float32)
    f = sae.encode(flat, thresholds=theta).detach()
    assert (f > 0).sum() > 100 and np.isinf(cal.thresholds).any()  # firing codes and some dead latents
    out = to_saelens(sae, tmp_path / "exp", cal, hook_name=hook_name(layer), model_name="tiny-smollm2",
                     context_size=ids.shape[1])
    loaded = sae_lens.SAE.load_from_disk(str(out))
    with torch.no_grad():
        f_sl = loaded.encode(flat)
    assert (f_sl - f).abs().max().item() <= 1e-5
    assert torch.equal(f_sl > 0, f > 0)

    hf, tok = lm.load_hf("tiny-smollm2", device="cpu")  # its own copy: the bridge wraps the HF modules
    bridge = SAETransformerBridge.boot_transformers(str(lm.model_dir("tiny-smollm2")), hf_model=hf, tokenizer=tok,
                                                    device="cpu")
    hook = loaded.cfg.metadata.hook_name
    assert hook == "blocks.2.hook_resid_pre"
    point = bridge.get_hook_point(hook).name  # the bridge's own name for it (blocks.2.hook_in)

    def bos_kept(act, hook):
        return torch.cat([act[:, :1], loaded(act[:, 1:])], dim=1)

    with torch.no_grad():  # hooks first: in sae-lens 6.54 a name hook there no longer fires once run_with_saes reset it
        clean = bridge(ids, return_type="loss").item()
        spliced_bos_kept = bridge.run_with_hooks(ids, return_type="loss", fwd_hooks=[(point, bos_kept)]).item()
        total, n = batch_ce(model, ids, layer, sae_splice(sae, theta))
        clean_pl, n_pl = batch_ce(model, ids, layer, None)
    assert clean == pytest.approx(clean_pl / n_pl, abs=1e-5)
    assert abs(total / n - clean_pl / n_pl) > 1e-3  # the splice changes the loss ...
    assert spliced_bos_kept == pytest.approx(total / n, abs=1e-4)  # ... and both splices agree

    with torch.no_grad():
        loss_sl, cache = bridge.run_with_cache_with_saes(ids, saes=[loaded], return_type="loss")
        with model.trace(ids):  # paperlib's splice function on every position (BOS included), as SAELens does
            h = block_envoy(model, layer - 1).output
            block_envoy(model, layer - 1).output[:, :, :] = sae_splice(sae, theta)(h)
            logits = model.lm_head.output.save()
    torch.testing.assert_close(cache[point + ".hook_sae_input"], x, rtol=0, atol=1e-6)  # same activations
    acts = cache[point + ".hook_sae_acts_post"][:, 1:].reshape(-1, f.shape[1])
    assert (acts - f).abs().max().item() <= 1e-5 and torch.equal(acts > 0, f > 0)
    logits = logits[0] if isinstance(logits, tuple) else logits
    ce_all = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                               ids[:, 1:].reshape(-1)).item()
    assert loss_sl.item() == pytest.approx(ce_all, abs=1e-4)
