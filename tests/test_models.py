"""Tests for paperlib.models: BatchTopK exactness, sparse gradients, decoder constraint, io."""

from __future__ import annotations

import torch

from paperlib.models import BatchTopKSAE, MetaSAE, batch_topk_indices, batch_topk_mask


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


def test_sparse_path_grads_match_dense_autograd():
    torch.manual_seed(0)
    sae = BatchTopKSAE(12, 40, 4, seed=0, dead_after=1, k_aux=6).double()
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
