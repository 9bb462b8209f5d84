"""Tests for paperlib.sae.models: BatchTopK exactness, sparse gradients, decoder constraint, io."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paperlib.sae import kernels
from paperlib.sae.models import (
    BatchTopKSAE,
    MetaSAE,
    batch_topk_indices,
    batch_topk_mask,
    fired_entries,
    kth_largest,
    top_count_mask,
)


def _x(B=64, d=12, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, d, generator=g) * 3 + 1).to(dtype)


def test_batch_topk_exact_count_and_values():
    g = torch.Generator().manual_seed(1)
    pre = torch.relu(torch.randn(50, 40, generator=g))
    for k in (1, 3, 7, 40):
        mask = batch_topk_mask(pre, k)
        assert int(mask.sum()) == k * 50
        ref = pre.flatten().topk(k * 50).values
        assert torch.equal(pre[mask].sort().values, ref.sort().values)


def test_batch_topk_ties_exact():
    pre = torch.ones(20, 10)  # everything tied
    pre[3, :] = 0.0
    for k in (1, 4):
        assert batch_topk_indices(pre, k).numel() == k * 20
        assert int(batch_topk_mask(pre, k).sum()) == k * 20
    pre = torch.zeros(8, 5)  # all zero (ReLU'd everywhere)
    assert int(batch_topk_mask(pre, 2).sum()) == 16


def test_kth_largest_against_sort():
    g = torch.Generator().manual_seed(4)
    for vals in (torch.randn(101, generator=g), torch.randint(0, 5, (60,), generator=g).float()):
        desc = vals.sort(descending=True).values
        for count in (1, 2, 17, vals.numel()):
            assert float(kth_largest(vals, count)) == float(desc[count - 1])
    with pytest.raises(ValueError, match="count"):
        kth_largest(torch.ones(3), 4)


def test_top_count_mask_brute_force_with_ties():
    g = torch.Generator().manual_seed(5)
    vals = torch.randint(0, 6, (80,), generator=g).float()  # many ties
    for count in (1, 9, 40, 80):
        keep = top_count_mask(vals, count)
        assert int(keep.sum()) == count
        # brute force: a stable descending sort keeps the first of equal values
        order = sorted(range(80), key=lambda i: (-float(vals[i]), i))[:count]
        ref = torch.zeros(80, dtype=torch.bool)
        ref[order] = True
        assert torch.equal(keep, ref)


def test_batch_topk_indices_sorted_and_tie_break_lowest_index():
    pre = torch.zeros(70, 30)
    pre[:, :5] = 1.0  # 350 tied ones, k·B = 140 (B >= 64: the subsample path)
    idx = batch_topk_indices(pre, 2)
    assert torch.equal(idx, idx.sort().values)
    ones = (pre.view(-1) == 1).nonzero().squeeze(1)
    assert torch.equal(idx, ones[:140])


def test_encode_batch_l0_exactly_k():
    sae = BatchTopKSAE(12, 40, 4, seed=0)
    f = sae.encode(_x())
    assert int((f != 0).sum() + ((f == 0) & batch_topk_mask(sae.pre_acts(_x()), 4)).sum()) == 4 * 64
    assert int(batch_topk_mask(sae.pre_acts(_x()), 4).sum()) == 4 * 64


def test_threshold_encode_batch_independent():
    sae = BatchTopKSAE(12, 40, 4, seed=0)
    x = _x()
    theta = torch.rand(40) * 0.5
    full = sae.encode(x, thresholds=theta)
    part = sae.encode(x[:7], thresholds=theta)
    single = torch.cat([sae.encode(x[i:i + 1], thresholds=theta) for i in range(7)])
    assert torch.allclose(full[:7], part, atol=1e-6)
    assert torch.allclose(part, single, atol=1e-6)
    assert torch.equal(full[:7] > 0, part > 0)


def test_init_and_normalisation():
    sae = BatchTopKSAE(12, 40, 4, seed=3)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(40), atol=1e-6)
    assert torch.allclose(sae.W_dec, sae.W_enc.t() / sae.W_enc.t().norm(dim=1, keepdim=True))
    assert torch.equal(sae.b_dec, torch.zeros(12))
    assert sae.W_dec.is_contiguous() and sae.W_enc.is_contiguous()  # embedding_bag fast path
    xn = sae.normalize(_x())
    assert torch.allclose(xn.mean(1), torch.zeros(64), atol=1e-5)
    assert torch.allclose(xn.std(1), torch.ones(64), atol=1e-3)
    same = BatchTopKSAE(12, 40, 4, seed=3)
    assert torch.equal(same.W_enc, sae.W_enc)
    assert not torch.equal(BatchTopKSAE(12, 40, 4, seed=4).W_enc, sae.W_enc)


def test_decode_maps_back_to_raw_scale():
    sae = BatchTopKSAE(12, 40, 40, seed=0)
    x = _x()
    xn, mean, scale = sae.normalize_stats(x)
    f = sae.encode(x)
    assert torch.allclose(sae.decode(f, mean, scale), sae.decode(f) * scale + mean)
    assert torch.allclose(sae.reconstruct(x), sae.decode(f, mean, scale), atol=1e-5)


def _grads(sae, loss):
    sae.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in (sae.W_enc, sae.W_dec, sae.b_dec)]


@pytest.mark.parametrize("k_aux", [6, 40])  # top-k_aux among 14 dead latents, and all of them
def test_sparse_path_grads_match_dense_autograd(k_aux):
    torch.manual_seed(0)
    sae = BatchTopKSAE(12, 40, 4, seed=0, dead_after=1, k_aux=k_aux).double()
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
    x = _x(dtype=torch.float64)
    for dead in (False, True):
        if dead:
            sae.steps_since_fired[::3] = 5  # some dead latents -> AuxK active
        sparse = sae.training_loss(x, update_state=False)
        gs = _grads(sae, sparse["loss"])
        dense = sae.dense_training_loss(x, update_state=False)
        gd = _grads(sae, dense["loss"])
        assert torch.allclose(sparse["loss"], dense["loss"], atol=1e-12)
        if dead:
            assert float(sparse["aux"]) > 0
            assert torch.allclose(sparse["aux"], dense["aux"], atol=1e-12)
        for a, b in zip(gs, gd, strict=True):
            assert torch.allclose(a, b, atol=1e-10), (a - b).abs().max()


def test_state_updates_dead_and_threshold():
    sae = BatchTopKSAE(12, 40, 2, seed=0, dead_after=2)
    x = _x()
    out = sae.training_loss(x)
    assert float(out["l0"]) == 2.0
    fired = batch_topk_mask(sae.pre_acts(x), 2).any(0)
    assert torch.equal(sae.steps_since_fired == 0, fired)
    assert float(sae.threshold) > 0
    sae.training_loss(x)
    sae.training_loss(x)
    assert int(sae.dead_mask().sum()) == int((~fired).sum())
    f = sae.encode(x, thresholds="running")
    assert f.shape == (64, 40)


def test_decoder_constraint_keeps_unit_norm():
    sae = BatchTopKSAE(12, 40, 4, seed=0)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for i in range(5):
        opt.zero_grad()
        sae.training_loss(_x(seed=i))["loss"].backward()
        sae.project_decoder_grad()
        dots = (sae.W_dec.grad * sae.W_dec).sum(1)
        assert dots.abs().max() < 1e-5
        opt.step()
        sae.renorm_decoder()
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(40), atol=1e-6)


def test_save_load_round_trip(tmp_path):
    sae = BatchTopKSAE(12, 40, 4, seed=5, dead_after=3, k_aux=7)
    sae.training_loss(_x())
    sae.save(tmp_path / "sae")
    back = BatchTopKSAE.load(tmp_path / "sae")
    for (k1, v1), (k2, v2) in zip(sae.state_dict().items(), back.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    assert back.config() == sae.config()
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "sae").iterdir())
    meta = MetaSAE(12, 8, 2, seed=1)
    meta.save(tmp_path / "meta")
    assert isinstance(MetaSAE.load(tmp_path / "meta"), MetaSAE)


@pytest.mark.parametrize("fused", [True, False])
def test_meta_rows_loss_on_shared_standardised_rows_is_bit_identical(fused, monkeypatch):
    """The meta phase standardises the rows once for its steps: each step's loss, gradients and state are those
    of standardising inside every step, bit for bit (fused kernels and torch path)."""
    monkeypatch.setattr(kernels, "ENABLED", fused and kernels.available())
    W = torch.randn(64, 12)
    a, b = MetaSAE(12, 10, 2, seed=1, dead_after=1), MetaSAE(12, 10, 2, seed=1, dead_after=1)
    rows = b.standardise_rows(W)
    assert not rows.requires_grad
    for _ in range(3):  # dead_after=1: AuxK runs from the second step
        outs = []
        for m, kw in ((a, {}), (b, {"standardised": rows})):
            m.zero_grad(set_to_none=True)
            out = m.rows_loss(W, **kw)
            out["loss"].backward()
            outs.append((out, {k: v.grad.clone() for k, v in m.named_parameters()}))
            with torch.no_grad():
                for v in m.parameters():
                    v -= 0.1 * v.grad
        (oa, ga), (ob, gb) = outs
        for k in ("loss", "mse", "aux", "recon"):
            assert torch.equal(oa[k], ob[k]), k
        assert all(torch.equal(ga[k], gb[k]) for k in ga)
        assert torch.equal(a.steps_since_fired, b.steps_since_fired) and torch.equal(a.threshold, b.threshold)
    assert torch.equal(b.standardise_rows(W), rows)  # a new tensor each call, not a work array a step overwrote
    with pytest.raises(ValueError, match="do not match"):
        b.rows_loss(W, standardised=rows[:-1])


def test_meta_reconstruct_rows_scale():
    meta = MetaSAE(12, 30, 30, seed=0)
    W = torch.randn(20, 12)
    W = W / W.norm(dim=1, keepdim=True)
    W_hat = meta.reconstruct_rows(W)
    xn, mean, scale = meta.normalize_stats(W)
    f = meta.encode(W)
    assert torch.allclose(W_hat, (f @ meta.W_dec + meta.b_dec) * scale + mean, atol=1e-6)
    assert not W_hat.requires_grad


def test_bad_arguments():
    import pytest

    with pytest.raises(ValueError, match="k="):
        BatchTopKSAE(12, 4, 5)
    sae = BatchTopKSAE(12, 40, 4)
    with pytest.raises(ValueError, match="expected input"):
        sae.encode(torch.randn(3, 11))


def test_batch_topk_large_batch_paths_exact():
    g = torch.Generator().manual_seed(7)
    for scale_rows in (False, True):
        pre = torch.relu(torch.randn(300, 50, generator=g))
        if scale_rows:  # heavy-tailed rows: the subsample guess may be rejected -> fallback path
            pre = pre * torch.logspace(-3, 3, 300)[:, None]
        for k in (1, 5, 17):
            idx = batch_topk_indices(pre, k)
            assert idx.numel() == k * 300 and torch.equal(idx, idx.sort().values)
            ref = pre.flatten().topk(k * 300).values.sort().values
            assert torch.equal(pre.flatten()[idx].sort().values, ref)


def test_sparse_and_dense_state_updates_agree():
    a = BatchTopKSAE(12, 40, 3, seed=2, dead_after=2, k_aux=5)
    b = BatchTopKSAE(12, 40, 3, seed=2, dead_after=2, k_aux=5)
    for i in range(4):
        x = _x(seed=i)
        la, lb = a.training_loss(x), b.dense_training_loss(x)
        assert torch.allclose(la["loss"], lb["loss"], atol=1e-5)
        assert torch.equal(a.steps_since_fired, b.steps_since_fired)
        assert torch.equal(a.threshold, b.threshold)


# -- per-dimension input standardisation ------------------------------------------------------


def _reference_normalize(x):
    """The per-token standardisation formula as it was before per-dim standardisation existed."""
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    scale = (xc * xc).sum(dim=-1, keepdim=True).div_(max(x.shape[-1] - 1, 1)).sqrt_() + 1e-5
    return xc / scale, mean, scale


def _trained_like(seed=0, d=12, n=40, k=4):
    sae = BatchTopKSAE(d, n, k, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        sae.b_dec.copy_(0.2 * torch.randn(d, generator=g))
        sae.W_enc.add_(0.1 * torch.randn(d, n, generator=g))
    return sae


def test_default_path_bitwise_equals_reference_formula(monkeypatch):
    """With identity buffers the torch path is the reference formula bit for bit (the fused CPU kernels agree with
    it up to reassociation: tests/sae/test_kernels.py)."""
    from paperlib.sae.models import SparsePattern, sparse_decode

    monkeypatch.setattr(kernels, "ENABLED", False)
    x = _x()
    a = _trained_like()
    assert a.input_standardisation == "none" and a.config()["input_standardisation"] == "none"
    assert torch.equal(a.input_mean, torch.zeros(12)) and torch.equal(a.input_scale, torch.ones(12))
    b = _trained_like()  # set, then reset to the identity: must be the default path again
    b.set_input_standardisation(torch.arange(12.0), torch.full((12,), 2.0))
    b.set_input_standardisation(None, None)
    for sae in (a, b):
        xn, mean, scale = _reference_normalize(x)
        assert torch.equal(sae.normalize(x), xn)
        pre = torch.relu((xn - sae.b_dec) @ sae.W_enc)
        assert torch.equal(sae.pre_acts(x), pre)
        theta = torch.full((40,), 0.1)
        f = pre * (pre > theta)
        assert torch.equal(sae.encode(x, thresholds=theta), f)
        assert torch.equal(sae.decode(f, mean, scale), (f @ sae.W_dec + sae.b_dec) * scale + mean)
        assert torch.equal(sae.reconstruct(x, thresholds=theta), (f @ sae.W_dec + sae.b_dec) * scale + mean)
        flat = batch_topk_indices(pre, sae.k)
        ref = (sparse_decode(pre.reshape(-1)[flat], sae.W_dec, SparsePattern.from_flat(flat, (64, 40))) + sae.b_dec)
        ref = ref * scale + mean
        assert torch.equal(sae.reconstruct(x), ref)
        out = sae.training_loss(x, update_state=False)
        out_n = sae.training_loss(xn, normalized=True, update_state=False)
        assert torch.equal(out["loss"], out_n["loss"]) and torch.equal(out["recon"], out_n["recon"])


def _identity_sae(d):
    """n = 2d latents [I, −I]: with all latents selected the normalised reconstruction is x̃ exactly."""
    sae = BatchTopKSAE(d, 2 * d, 2 * d, seed=0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


def test_per_dim_standardisation_closed_form():
    d = 6
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([5000.0, 1.0, -2.0, 0.5, 10.0, 0.0])
    sd = torch.tensor([1800.0, 2.0, 0.5, 1.0, 3.0, 0.25])
    x = torch.randn(50, d, generator=g) * sd + mu  # dim 0: a massive outlier dimension
    sae = _identity_sae(d)
    plain = sae.normalize(x).clone()
    sae.set_input_standardisation(mu, sd)
    assert sae.input_standardisation == "per-dim" and sae.config()["input_standardisation"] == "per-dim"
    # x̃ = per-token standardisation of z = (x − μ)/σ, computed by hand in fp64
    z = (x.double() - mu.double()) / sd.double()
    m, s = z.mean(1, keepdim=True), z.std(1, keepdim=True) + 1e-5
    torch.testing.assert_close(sae.normalize(x).double(), (z - m) / s, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sae.normalize(x), plain, atol=1e-2)  # really applied
    xn, mean, scale = sae.normalize_with_stats(x)
    torch.testing.assert_close(mean.double(), m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scale.double(), s, atol=1e-5, rtol=1e-5)
    # perfect normalised reconstruction → raw reconstruction is x itself (both encode paths)
    for th in (None, torch.zeros(2 * d)):
        torch.testing.assert_close(sae.reconstruct(x, thresholds=th), x, atol=2e-3, rtol=1e-5)
    # decode(f, mean, scale) = ((f W_dec + b_dec)·s + m)·σ + μ for arbitrary codes and b_dec
    with torch.no_grad():
        sae.b_dec.copy_(torch.linspace(-1, 1, d))
    f = torch.rand(50, 2 * d, generator=g)
    ref = ((f.double() @ sae.W_dec.double() + sae.b_dec.double()) * scale.double() + mean.double()) \
        * sd.double() + mu.double()
    torch.testing.assert_close(sae.decode(f, mean, scale).double(), ref, atol=1e-3, rtol=1e-6)
    torch.testing.assert_close(sae.decode(f), f @ sae.W_dec + sae.b_dec)  # normalised space unchanged


def test_per_dim_training_paths_agree():
    sae = _trained_like().double()
    g = torch.Generator().manual_seed(3)
    sae.set_input_standardisation(torch.randn(12, generator=g) * 5, torch.rand(12, generator=g) + 0.5)
    sae.steps_since_fired[::4] = 10  # AuxK active
    x = _x(dtype=torch.float64) * 4 + 30
    sparse = sae.training_loss(x, update_state=False)
    dense = sae.dense_training_loss(x, update_state=False)
    pre_n = sae.training_loss(sae.normalize(x), normalized=True, update_state=False)
    assert torch.allclose(sparse["loss"], dense["loss"], atol=1e-12)
    assert torch.equal(sparse["loss"], pre_n["loss"])


def test_set_input_standardisation_validation_and_meta():
    import numpy as np
    import pytest

    sae = BatchTopKSAE(12, 40, 4)
    with pytest.raises(ValueError, match="shape"):
        sae.set_input_standardisation(torch.zeros(11), torch.ones(11))
    with pytest.raises(ValueError, match="> 0"):
        sae.set_input_standardisation(torch.zeros(12), torch.zeros(12))
    with pytest.raises(ValueError, match="non-finite"):
        sae.set_input_standardisation(torch.full((12,), float("nan")), torch.ones(12))
    with pytest.raises(ValueError, match="both"):
        sae.set_input_standardisation(torch.zeros(12), None)
    sae.set_input_standardisation(np.arange(12.0), np.full(12, 3.0))  # numpy fp64 is fine
    assert sae.input_mean.dtype == torch.float32 and sae.input_standardisation == "per-dim"
    meta = MetaSAE(12, 8, 2)
    assert meta.input_standardisation == "none"
    with pytest.raises(ValueError, match="meta SAE"):
        meta.set_input_standardisation(torch.zeros(12), torch.ones(12))


def test_per_dim_save_load_and_old_format(tmp_path):
    import json

    import pytest
    from safetensors.torch import load_file, save_file

    x = _x() * 7 + 40
    sae = _trained_like()
    sae.set_input_standardisation(torch.linspace(30, 50, 12), torch.linspace(1, 9, 12))
    sae.save(tmp_path / "pd")
    back = BatchTopKSAE.load(tmp_path / "pd")
    assert back.input_standardisation == "per-dim"
    assert torch.equal(back.reconstruct(x), sae.reconstruct(x))
    # an SAE saved before this change: no buffers in the weights, no key in config.json
    old = _trained_like(seed=4)
    old.save(tmp_path / "old")
    tensors = load_file(str(tmp_path / "old" / "model.safetensors"))
    tensors = {k: v for k, v in tensors.items() if k not in ("input_mean", "input_scale")}
    save_file(tensors, str(tmp_path / "old" / "model.safetensors"))
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["input_standardisation"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    loaded = BatchTopKSAE.load(tmp_path / "old")
    assert loaded.input_standardisation == "none"
    assert torch.equal(loaded.input_mean, torch.zeros(12)) and torch.equal(loaded.input_scale, torch.ones(12))
    assert torch.equal(loaded.reconstruct(x), old.reconstruct(x))
    fresh = BatchTopKSAE(12, 40, 4)  # strict load_state_dict of the old dict works too
    fresh.set_input_standardisation(torch.ones(12), torch.ones(12))
    fresh.load_state_dict(tensors)
    assert fresh.input_standardisation == "none"
    # config / weights disagreement is an error
    cfg["input_standardisation"] = "per-dim"
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="input_standardisation"):
        BatchTopKSAE.load(tmp_path / "old")


def test_sparse_pattern_products_equal_dense_references():
    """Both backward products of the sparse path against dense matrices built from the same entries."""
    from paperlib.sae.models import SparsePattern

    g = torch.Generator().manual_seed(3)
    B, n, d = 7, 11, 5
    pre = torch.relu(torch.randn(B, n, generator=g))
    flat = batch_topk_indices(pre, 3)
    pattern = SparsePattern.from_flat(flat, (B, n))
    vals = pre.reshape(-1)[flat]
    dense = torch.zeros(B * n).index_put_((flat,), vals).view(B, n)
    rhs = torch.randn(B, d, generator=g)
    torch.testing.assert_close(pattern.transposed_times(vals, rhs), dense.t() @ rhs)
    assert torch.equal(pattern.rows_t, pattern.rows[pattern.perm])
    assert torch.equal(pattern.cols[pattern.perm], pattern.cols[pattern.perm].sort().values)


@pytest.mark.parametrize("vals", [[0.5, 2.0, 0.1], [0.5, 0.0, 2.0, -1.0], [0.0, 0.0], [], [float("nan"), 1.0, 0.25],
                                  [float("nan")]])
def test_fired_entries_equal_the_boolean_selection(vals):
    v = torch.tensor(vals, dtype=torch.float32)
    cols = torch.arange(10, 10 + v.numel())
    got_cols, got_min = fired_entries(v, cols)
    positive = v > 0  # brute force: every entry with a positive value, and the smallest of those
    assert torch.equal(got_cols, cols[positive])
    if positive.any():
        assert float(got_min) == float(v[positive].min())
    else:
        assert got_min is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_dead, k_aux", [(14, 40), (14, 6), (1, 8), (40, 3)])  # all, top-k_aux, one, every latent
def test_fused_auxk_equals_autograd_of_the_formula(dtype, n_dead, k_aux):
    """_FusedAuxK (the fused path's AuxK term) against autograd of BatchTopKSAE._aux_loss: the same loss and
    gradients up to reassociation, with the dead columns' and rows' gradients arriving as sparse tensors."""
    from paperlib.sae import kernels
    from paperlib.sae.models import _FusedAuxK

    if not kernels.available():
        pytest.skip("no C compiler for the fused kernels")
    torch.manual_seed(0)
    sae = BatchTopKSAE(12, 40, 4, seed=0, k_aux=k_aux).to(dtype)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
    xn = _x(dtype=dtype)
    recon = torch.randn_like(xn)
    residual = xn - recon
    dead = torch.zeros(40, dtype=torch.bool)
    dead[torch.randperm(40, generator=torch.Generator().manual_seed(1))[:n_dead]] = True
    dead_idx = dead.nonzero().squeeze(1)
    params = (sae.W_enc, sae.W_dec, sae.b_dec)
    ref = sae._aux_loss(xn, residual, dead)
    ref_grads = torch.autograd.grad(ref * 0.37, params)  # an upstream factor, as aux_alpha gives
    xc = xn - sae.b_dec.detach()
    out = _FusedAuxK.apply(*params, xc, xn, recon, dead_idx, min(k_aux, n_dead))
    grads = torch.autograd.grad(out * 0.37, params, retain_graph=True)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(out, ref, **tol)
    assert grads[0].is_sparse and grads[1].is_sparse
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.to_dense(), want, **tol)
        assert want.abs().max() > 0  # the comparison has teeth
    # through .backward(): added into the existing dense gradients, as in a training step
    for p, g in zip(params, (torch.ones_like(q) for q in params), strict=True):
        p.grad = g
    (out * 0.37).backward()
    for p, want in zip(params, ref_grads, strict=True):
        torch.testing.assert_close(p.grad, 1 + want, **tol)
    assert not any(p.grad.is_sparse for p in params)


def test_fused_auxk_keeps_the_lowest_latents_among_ties_and_is_independent_of_the_thread_count():
    from paperlib.sae import kernels

    if not kernels.available():
        pytest.skip("no C compiler for the fused kernels")
    rng = np.random.default_rng(3)
    B, d, D = 70, 33, 9
    xc = rng.standard_normal((B, d)).astype(np.float32)
    We = rng.standard_normal((D, d)).astype(np.float32)
    We[4] = We[2]  # equal pre-activations: of latents 2 and 4 the lower one is kept first
    Wd = rng.standard_normal((D, d)).astype(np.float32)
    xn, recon = rng.standard_normal((B, d)).astype(np.float32), rng.standard_normal((B, d)).astype(np.float32)
    pre = xc.astype(np.float64) @ We.T.astype(np.float64)
    outs = []
    for nt in (1, 2, 3):
        before = torch.get_num_threads()
        torch.set_num_threads(nt)
        try:
            ge, act, gpre = np.empty((B, d), np.float32), np.empty((B, D), np.float32), np.empty((B, D), np.float32)
            sq = np.empty(B)
            kernels.auxk_rows(xc, xn, recon, We, Wd, 3, 0.01, ge, act, gpre, sq)
            gWe, gWd, cs = np.empty((D, d), np.float32), np.empty((D, d), np.float32), np.empty(D)
            kernels.auxk_grads(xc, ge, act, gpre, gWe, gWd, cs)
        finally:
            torch.set_num_threads(before)
        outs.append(b"".join(a.tobytes() for a in (ge, act, gpre, sq, gWe, gWd, cs)))
    assert outs[0] == outs[1] == outs[2]
    kept = act > 0
    for i in range(B):
        order = sorted(range(D), key=lambda j: (-pre[i, j], j))[:3]  # the 3 largest, lowest latent first on ties
        assert set(np.nonzero(kept[i])[0]) == {j for j in order if pre[i, j] > 0}, i


def test_fused_normalisation_centres_with_the_same_rounding_as_torch():
    """The fused path takes x̃ − b_dec from the fused normalisation: it must equal the torch subtraction bit for bit."""
    from paperlib.sae import kernels

    if not kernels.available():
        pytest.skip("no C compiler for the fused kernels")
    sae = _trained_like()
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
    xn, xc = sae._normalize_center(_x(B=300), False)
    assert torch.equal(xc, xn - sae.b_dec.detach())


def test_two_fused_losses_before_one_backward_give_the_sum_of_their_gradients():
    """The fused path reuses work arrays between calls: a graph must not depend on them, or accumulating two
    batches' losses before one backward (AuxK active) would silently use the second batch's inputs."""
    torch.manual_seed(0)
    sae = BatchTopKSAE(24, 96, 6, seed=0, dead_after=1, k_aux=8)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
    sae.steps_since_fired[::4] = 5  # AuxK active
    x1, x2 = _x(B=128, d=24, seed=1), _x(B=128, d=24, seed=2)
    sep = []
    for x in (x1, x2):
        out = sae.training_loss(x, update_state=False)
        sep.append(_grads(sae, out["loss"]))
    l1 = sae.training_loss(x1, update_state=False)["loss"]
    l2 = sae.training_loss(x2, update_state=False)["loss"]
    both = _grads(sae, l1 + l2)
    for a, b, c in zip(both, *sep, strict=True):
        torch.testing.assert_close(a, b + c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("D, ka", [(14, 6), (9, 3), (40, 3), (14, 13), (5, 1), (2, 1), (64, 31)])
def test_fused_auxk_keeps_the_ka_largest_per_token_against_brute_force(D, ka):
    """The per-token selection of the fused AuxK kernel (a quickselect) against a stable sort, with many ties."""
    from paperlib.sae import kernels

    if not kernels.available():
        pytest.skip("no C compiler for the fused kernels")
    rng = np.random.default_rng(D * 100 + ka)
    B, d = 200, 8
    xc = rng.integers(-2, 3, (B, d)).astype(np.float32)  # small integers: exact products, frequent ties
    We = rng.integers(-2, 3, (D, d)).astype(np.float32)
    Wd = rng.standard_normal((D, d)).astype(np.float32)
    zeros = np.zeros((B, d), np.float32)
    ge, act, gpre = np.empty((B, d), np.float32), np.empty((B, D), np.float32), np.empty((B, D), np.float32)
    kernels.auxk_rows(xc, zeros, zeros, We, Wd, ka, 1.0, ge, act, gpre, np.empty(B))
    pre = xc @ We.T
    for i in range(B):
        top = np.argsort(-pre[i], kind="stable")[:ka]  # the ka largest, the lowest latents first among ties
        want = np.zeros(D, np.float32)
        want[top] = np.maximum(pre[i, top], 0)
        np.testing.assert_array_equal(act[i], want)
