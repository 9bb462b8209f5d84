"""Tests for paperlib.sae.kernels: each fused CPU kernel against a brute-force numpy reference, the fused
training step against the dense reference and the torch path, thread-count independence, and the fallback
when no C compiler exists."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from paperlib.sae import blas, kernels, models
from paperlib.sae.models import BatchTopKSAE, MetaSAE, batch_topk_indices
from paperlib.sae.penalty import row_penalty_terms

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler for the fused kernels")
DTYPES = (np.float32, np.float64)


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalize_center_against_numpy(dtype):
    x = (_rng().standard_normal((9, 7)) * 3 + 2).astype(dtype)
    b = _rng(1).standard_normal(7).astype(dtype)
    xn, xc, m, s = (np.empty_like(x), np.empty_like(x), np.empty((9, 1), dtype), np.empty((9, 1), dtype))
    kernels.normalize_center(x, b, xn, xc, m, s, 1e-5)
    x64 = x.astype(np.float64)
    ref_s = x64.std(axis=1, ddof=1, keepdims=True) + 1e-5
    ref = (x64 - x64.mean(axis=1, keepdims=True)) / ref_s
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(xn, ref, atol=tol)
    np.testing.assert_allclose(xc, ref - b, atol=tol)
    np.testing.assert_allclose(s, ref_s, rtol=tol)
    np.testing.assert_allclose(m, x64.mean(axis=1, keepdims=True), atol=tol)
    xc_only = np.full_like(x, np.nan)
    kernels.normalize_center(x, b, None, xc_only, m, s, 1e-5)  # without x̃: the same x̃ − b, bit for bit
    np.testing.assert_array_equal(xc_only, xc)


@pytest.mark.parametrize("dtype", DTYPES)
def test_count_and_gather_at_least_against_numpy(dtype):
    pre = _rng().standard_normal((11, 53)).astype(dtype)  # 3 blocks of 16 columns and a tail of 5
    pre[2, 3] = pre[4, 50] = np.nan  # NaN is never at least t
    t = dtype(0.4)
    pre[5, :] = t  # a row entirely at the threshold
    pre[6, :] = -1.0  # and one without a candidate
    counts = np.empty(11, np.int64)
    kernels.count_at_least(pre, t, counts)
    np.testing.assert_array_equal(counts, (pre >= t).sum(axis=1))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    cols, vals = np.empty(offsets[-1], np.int64), np.empty(offsets[-1], dtype)
    kernels.gather_at_least(pre, t, offsets, cols, vals)
    rr, cc = np.nonzero(pre >= t)
    np.testing.assert_array_equal(cols, cc)
    np.testing.assert_array_equal(vals, pre[rr, cc])


@pytest.fixture
def threads_of():
    """Run a kernel at a given thread count (restores torch's intra-op count afterwards)."""
    before = torch.get_num_threads()

    def run(nt, fn, *args):
        torch.set_num_threads(nt)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(before)
    return run


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_pass_gather_equals_the_two_passes(dtype, threads_of):
    rng = _rng(4)
    pre = rng.standard_normal((37, 53)).astype(dtype)  # 3 blocks of 16 columns and a tail of 5
    pre[2, 3] = pre[4, 50] = np.nan
    t = dtype(0.4)
    pre[5, :] = t  # a full row: the region of its thread may be too small for it
    pre[6, :] = -1.0
    ref_counts = (pre >= t).sum(axis=1)
    rr, cc = np.nonzero(pre >= t)
    total = int(ref_counts.sum())
    for nt in (1, 2, 3):
        for cap in (total, total + 60, 4 * total):  # tight (row buffers used), small slack, roomy
            counts = np.full(37, -1, np.int64)
            out = threads_of(nt, kernels.gather_at_least_once, pre, t, counts, cap)
            if out is None:  # a thread's share of the slots was too small for its rows: only when slots are few
                assert nt > 1 and cap < 4 * total, (nt, cap)
                continue
            np.testing.assert_array_equal(counts, ref_counts)
            np.testing.assert_array_equal(out[0], cc)
            np.testing.assert_array_equal(out[1], pre[rr, cc])
    # more entries than slots: declined (the caller counts first), nothing returned
    assert threads_of(2, kernels.gather_at_least_once, np.ones((40, 200), dtype), dtype(0.5),
                      np.empty(40, np.int64), 1000) is None


def test_keep_top_count_keeps_the_largest_and_the_first_ties():
    offsets = np.array([0, 3, 5, 8])
    cols = np.array([0, 2, 5, 1, 4, 0, 3, 6])
    vals = np.array([5.0, 2.0, 2.0, 7.0, 2.0, 1.0, 2.0, 9.0], dtype=np.float32)
    crow, rows, kept_cols, kept = kernels.keep_top_count(offsets, cols, vals, 5)
    # above the 5th largest (2.0): 9, 7, 5; then the first two 2.0s in row-major order (row 0's two)
    np.testing.assert_array_equal(rows, [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(kept_cols, [0, 2, 5, 1, 6])
    np.testing.assert_array_equal(kept, [5, 2, 2, 7, 9])
    np.testing.assert_array_equal(crow, [0, 3, 4, 5])


def test_by_latent_is_a_stable_sort_by_column():
    rng = _rng(3)
    rows = np.sort(rng.integers(0, 20, 100))
    cols = rng.integers(0, 9, 100)
    crow_t, perm, rows_t = kernels.by_latent(rows, cols, 9)
    ref = np.argsort(cols, kind="stable")
    np.testing.assert_array_equal(perm, ref)
    np.testing.assert_array_equal(rows_t, rows[ref])
    np.testing.assert_array_equal(crow_t, np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=9))]))


def test_by_latent_in_parallel_is_the_one_thread_sort(threads_of):
    rng = _rng(6)
    rows = np.sort(rng.integers(0, 500, 20000))  # enough entries for the parallel path
    cols = rng.integers(0, 300, 20000)
    cols[:700] = 7  # a latent whose entries span thread blocks
    ref = np.argsort(cols, kind="stable")
    for nt in (1, 2, 3):
        crow_t, perm, rows_t = threads_of(nt, kernels.by_latent, rows, cols, 300)
        np.testing.assert_array_equal(perm, ref)
        np.testing.assert_array_equal(rows_t, rows[ref])
        np.testing.assert_array_equal(crow_t, np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=300))]))


def _entries(rng, B, n, per_row):
    cols = np.concatenate([np.sort(rng.choice(n, per_row[i], replace=False)) for i in range(B)]).astype(np.int64)
    crow = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
    rows = np.repeat(np.arange(B), per_row).astype(np.int64)
    return rows, cols, crow


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_residual_and_latent_grads_against_dense(dtype):
    rng = _rng(5)
    B, n, d = 10, 37, 70  # d spans two 256-byte column chunks (float32) and leaves remainders
    rows, cols, crow = _entries(rng, B, n, rng.integers(0, 7, B))
    vals = rng.standard_normal(cols.size).astype(dtype)  # some ≤ 0: their code gradient is masked
    W = rng.standard_normal((n, d)).astype(dtype)
    b, xn, xc = (rng.standard_normal(s).astype(dtype) for s in (d, (B, d), (B, d)))
    recon, g = np.empty((B, d), dtype), np.empty((B, d), dtype)
    gv, sq = np.empty(cols.size, dtype), np.empty(B)
    kernels.decode_residual(crow, cols, vals, W, b, xn, 0.5, recon, g, gv, sq, True)
    S = np.zeros((B, n))
    S[rows, cols] = vals
    tol = 1e-4 if dtype == np.float32 else 1e-12
    ref = b + S @ W
    np.testing.assert_allclose(recon, ref, atol=tol)
    np.testing.assert_allclose(sq, ((ref - xn) ** 2).sum(1), rtol=tol)
    np.testing.assert_allclose(g, 0.5 * (ref - xn), atol=tol)
    np.testing.assert_allclose(gv, (g.astype(np.float64) @ W.T)[rows, cols], atol=tol)
    crow_t, perm, rows_t = kernels.by_latent(rows, cols, n)
    gW_dec, gW_enc, colsum = np.empty((n, d), dtype), np.empty((d, n), dtype), np.empty(n)
    kernels.latent_grads(crow_t, perm, rows_t, vals, gv, g, xc, gW_dec, gW_enc, colsum)
    Sg = np.zeros((B, n))
    Sg[rows, cols] = np.where(vals > 0, gv, 0)
    np.testing.assert_allclose(gW_dec, S.T @ g, atol=tol)
    np.testing.assert_allclose(gW_enc, xc.T @ Sg, atol=tol)
    np.testing.assert_allclose(colsum, Sg.sum(0), atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [70, 128])  # with and without a partial last column chunk
def test_decode_rows_against_dense_and_decode_residual(dtype, d):
    rng = _rng(6)
    B, n = 150, 37  # B spans three token blocks
    rows, cols, crow = _entries(rng, B, n, rng.integers(0, 7, B))
    vals = rng.standard_normal(cols.size).astype(dtype)
    W, b = rng.standard_normal((n, d)).astype(dtype), rng.standard_normal(d).astype(dtype)
    mean, scale = rng.standard_normal(B).astype(dtype), (rng.random(B) + 0.5).astype(dtype)
    out = np.full((B, d), np.nan, dtype)
    kernels.decode_rows(crow, cols, vals, W, b, mean, scale, out)
    S = np.zeros((B, n))
    S[rows, cols] = vals
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, (b + S @ W) * scale[:, None] + mean[:, None], atol=tol)
    # bit for bit the decode of decode_residual, then a rounded product and a rounded sum (what the two array
    # operations of the torch path compute; a fused multiply-add would differ in about a quarter of these elements)
    recon = np.empty((B, d), dtype)
    kernels.decode_residual(crow, cols, vals, W, b, recon, 0.0, recon, recon, np.empty(0, dtype), np.empty(B), False)
    np.testing.assert_array_equal(out, recon * scale[:, None] + mean[:, None])
    with pytest.raises(ValueError, match="means"):
        kernels.decode_rows(crow, cols, vals, W, b, mean[:-1], scale, out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decoder_constraint_and_penalty_kernels_against_numpy(dtype):
    rng = _rng(7)
    W, G, H = (rng.standard_normal((6, 9)).astype(dtype) for _ in range(3))
    W[2] = 0.0  # a zero row: norm clamped at 1e-12
    tol = 1e-5 if dtype == np.float32 else 1e-12
    Wn = W / np.maximum(np.linalg.norm(W.astype(np.float64), axis=1, keepdims=True), 1e-12)
    ref = G - (G * Wn).sum(1, keepdims=True) * Wn
    Gk = G.copy()
    kernels.project_rows(W, Gk)
    np.testing.assert_allclose(Gk, ref, atol=tol)
    Wk = W.copy()
    kernels.renorm_rows(Wk)
    np.testing.assert_allclose(Wk, Wn, atol=tol)
    p, e = np.empty(6, dtype), np.empty(6, dtype)
    kernels.row_penalty(W, H, 2.0, p, e)
    np.testing.assert_allclose(e, ((W - H) ** 2).sum(1), rtol=tol)
    np.testing.assert_allclose(p, np.exp(-e.astype(np.float64) / 2.0), rtol=tol)
    coef, out = rng.standard_normal(6).astype(dtype), np.empty_like(W)
    kernels.row_penalty_grad(W, H, coef, out)
    np.testing.assert_allclose(out, coef[:, None] * (W - H), atol=tol)


def test_selection_equals_the_torch_path_with_ties_and_fallbacks():
    g = torch.Generator().manual_seed(2)
    for B, n, k in ((64, 40, 4), (300, 50, 3), (7, 9, 2), (128, 16, 15)):
        pre = torch.randn(B, n, generator=g).relu()
        pre[0, :5] = pre[1, :5] = 1.0  # ties across rows
        assert torch.equal(batch_topk_indices(pre, k), models._batch_topk_indices_torch(pre, k))
    few = torch.zeros(100, 30)
    few[:, :2] = 1.0  # fewer positive entries than k·B: the kernels decline, the torch path decides
    assert models.batch_topk_select(few, 5) is None
    assert torch.equal(batch_topk_indices(few, 5), models._batch_topk_indices_torch(few, 5))


def _step_outputs(sae, x):
    out = sae.training_loss(x, update_state=False)
    sae.zero_grad()
    out["loss"].backward()
    return out, [p.grad.clone() for p in (sae.W_enc, sae.W_dec, sae.b_dec)]


@pytest.mark.parametrize("dead", [False, True])
def test_fused_step_matches_the_torch_path_in_float32(dead, monkeypatch):
    torch.manual_seed(0)
    sae = BatchTopKSAE(24, 96, 6, seed=0, dead_after=1, k_aux=8)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
    if dead:
        sae.steps_since_fired[::4] = 5
    x = torch.randn(256, 24) * 2 + 1
    fused, gf = _step_outputs(sae, x)
    monkeypatch.setattr(kernels, "ENABLED", False)
    ref, gr = _step_outputs(sae, x)
    assert abs(float(fused["loss"]) - float(ref["loss"])) < 1e-6 * float(ref["loss"])
    assert torch.allclose(fused["recon"], ref["recon"], atol=1e-5)
    for a, b in zip(gf, gr, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7 * float(b.abs().max())), (a - b).abs().max()


def test_fused_state_update_and_reconstruction_match_the_torch_path(monkeypatch):
    x = torch.randn(128, 24) * 2
    a, b = BatchTopKSAE(24, 96, 6, seed=3, dead_after=2), BatchTopKSAE(24, 96, 6, seed=3, dead_after=2)
    for _ in range(3):
        a.training_loss(x)
    rec_a = a.reconstruct(x)
    monkeypatch.setattr(kernels, "ENABLED", False)
    for _ in range(3):
        b.training_loss(x)
    assert torch.equal(a.steps_since_fired, b.steps_since_fired)
    assert torch.allclose(a.threshold, b.threshold, rtol=1e-6)
    assert torch.allclose(rec_a, b.reconstruct(x), atol=1e-5)
    meta = MetaSAE(24, 12, 3, seed=1)
    W = torch.randn(96, 24)
    rows = meta.reconstruct_rows(W)
    monkeypatch.setattr(kernels, "ENABLED", True)
    assert torch.allclose(meta.reconstruct_rows(W), rows, atol=1e-5)


def test_fused_penalty_gradient_matches_autograd_of_the_formula():
    W = torch.randn(40, 12, dtype=torch.float64, requires_grad=True)
    H = torch.randn(40, 12, dtype=torch.float64)
    p, e = row_penalty_terms(W, H, 1.5)
    (0.3 * p.mean()).backward()
    g = W.grad.clone()
    W.grad = None
    diff = W - H
    ref = torch.exp(-(diff * diff).sum(1) / 1.5)
    (0.3 * ref.mean()).backward()
    assert torch.allclose(p, ref.detach(), atol=1e-14) and torch.allclose(g, W.grad, atol=1e-15)


def test_fused_functions_take_missing_upstream_gradients():
    """Autograd no longer materialises zero gradients for the non-differentiable outputs (the reconstruction, the
    squared errors): the backward works without them."""
    sae = BatchTopKSAE(24, 96, 6, seed=0)
    x = torch.randn(64, 24)
    out = sae.training_loss(x)
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in (sae.W_enc, sae.W_dec, sae.b_dec))
    W = torch.randn(10, 6, requires_grad=True)
    p, e = row_penalty_terms(W, torch.randn(10, 6), 1.0)
    p.sum().backward()
    assert W.grad is not None and torch.isfinite(W.grad).all()
    W2 = torch.randn(10, 6, requires_grad=True)
    p2, _ = row_penalty_terms(W2, torch.randn(10, 6), 1.0)
    (p2.sum() * 0).backward()
    assert torch.equal(W2.grad, torch.zeros_like(W2))


_THREADS_SCRIPT = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from paperlib.sae.models import BatchTopKSAE
from paperlib.sae.trainer import make_adam
torch.manual_seed(0)
x = torch.randn(512, 160) * 2 + 1  # d = 160: two full 64-column chunks (vector path) and a tail of 32
sae = BatchTopKSAE(160, 192, 8, seed=0, dead_after=2, k_aux=16)
opt = make_adam(sae, 1e-3)
for step in range(6):
    opt.zero_grad(set_to_none=True)
    sae.training_loss(x[step % 2 * 256:(step % 2 + 1) * 256])["loss"].backward()
    sae.project_decoder_grad()
    opt.step()
    sae.renorm_decoder()
sys.stdout.buffer.write(b"".join(t.detach().numpy().tobytes() for t in sae.state_dict().values()))
"""


def test_fused_training_is_bitwise_independent_of_the_thread_count():
    outs = [subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(t)], capture_output=True, check=True).stdout
            for t in (1, 2)]
    assert outs[0] == outs[1] and len(outs[0]) > 0


def test_without_a_compiler_training_warns_once_and_uses_the_torch_path(tmp_path):
    script = ("import warnings, torch\n"
              "from paperlib.sae import kernels, models\n"
              "with warnings.catch_warnings(record=True) as w:\n"
              "    warnings.simplefilter('always')\n"
              "    sae = models.BatchTopKSAE(12, 40, 4, seed=0)\n"
              "    out = sae.training_loss(torch.randn(64, 12))\n"
              "    out['loss'].backward()\n"
              "print(kernels.available(), sum('fused CPU kernels unavailable' in str(x.message) for x in w))\n")
    env = {**os.environ, "CC": "no-such-compiler", "PAPERLIB_KERNEL_CACHE": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert res.stdout.split() == ["False", "1"]


def test_penalty_torch_fallbacks_equal_the_fused_kernels(monkeypatch):
    """The torch code of both penalties (used without a C compiler) agrees with the fused kernels."""
    from paperlib.sae.penalty import orthogonality_penalty

    W0 = torch.randn(40, 9, dtype=torch.float64)
    W0[3] = 0.0
    H = torch.randn(40, 9, dtype=torch.float64)

    def grads():
        out = []
        for fn in (lambda w: row_penalty_terms(w, H, 1.3)[0].mean(),
                   lambda w: orthogonality_penalty(w, 4, torch.Generator().manual_seed(3))):
            w = W0.clone().requires_grad_()
            fn(w).backward()
            out.append(w.grad)
        return out

    fused = grads()
    monkeypatch.setattr(kernels, "ENABLED", False)
    for a, b in zip(fused, grads(), strict=True):
        assert torch.allclose(a, b, atol=1e-14)


def test_a_compiler_without_openmp_builds_single_threaded_kernels(tmp_path):
    """Apple's clang has no -fopenmp: the build retries without it, and the kernels still give the same numbers."""
    cc = tmp_path / "cc-no-openmp"
    cc.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && { echo "unsupported: -fopenmp" >&2; exit 1; }; '
                  'done\nexec cc "$@"\n')
    cc.chmod(0o755)
    script = ("import numpy as np\nfrom paperlib.sae import kernels\n"
              "x = np.arange(12.0).reshape(3, 4); c = np.empty(3, np.int64)\n"
              "kernels.count_at_least(x, 5.0, c)\nprint(kernels.describe()['fused_cpu_kernels'], c.tolist())\n"
              "cols, vals = kernels.gather_at_least_once(x, 5.0, c, 100)\n"
              "rows = np.repeat(np.arange(3), c)\nprint(cols.tolist(), kernels.by_latent(rows, cols, 4)[1].tolist())\n")
    env = {**os.environ, "CC": str(cc), "PAPERLIB_KERNEL_CACHE": str(tmp_path / "k")}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert res.stdout.split("\n")[:2] == ["True [0, 3, 4]", "[1, 2, 3, 0, 1, 2, 3] [3, 0, 4, 1, 5, 2, 6]"]
    libs = list((tmp_path / "k").glob("fused-*.so"))
    assert len(libs) == 1 and not list((tmp_path / "k").glob("*.so.tmp*"))
    mode, umask = libs[0].stat().st_mode & 0o777, os.umask(0)
    os.umask(umask)
    assert mode == 0o777 & ~umask  # as a compiler's own output (not mkstemp's 0600): a shared cache serves every user


def test_describe_names_the_library_in_use():
    info = kernels.describe()
    assert info["fused_cpu_kernels"] is True and info["library"].startswith("fused-")
    assert info["bf16_screen"] is blas.available()  # the run records say whether the screened encoder ran


# -- the screened encoder's kernels (float32 only) ---------------------------------------------------------------
def _bf16_reference(x: np.ndarray) -> np.ndarray:
    """bfloat16 bits of float32 x by torch's rounding (to nearest, ties to even), subnormals flushed to signed 0."""
    bits = torch.from_numpy(np.ascontiguousarray(x)).bfloat16().view(torch.int16).numpy().view(np.uint16)
    flushed = (np.signbit(x).astype(np.uint16) << 15).astype(np.uint16)
    return np.where(np.abs(x) < np.float32(2.0 ** -126), flushed, bits)


def _awkward_floats(shape, seed) -> np.ndarray:
    """Normal floats over a wide range, with ties-to-even cases, subnormals, zeros of both signs and huge values."""
    rng = _rng(seed)
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape))).astype(np.float32)
    flat = x.reshape(-1)
    flat[:6] = [0.0, -0.0, 1e-40, -3e-39, np.float32(1 + 2 ** -8), np.float32(1 + 3 * 2 ** -8)]  # exact ties
    flat[6:8] = [3.0e38, -1.5e38]
    return x


def test_bf16_conversions_round_to_nearest_even_and_flush_subnormals(threads_of):
    x = _awkward_floats((37, 53), 5)  # rows of 53: three 16-blocks and a tail
    for nt in (1, 2, 3):
        xh, norm, dnorm = np.empty(x.shape, np.uint16), np.empty(37), np.empty(37)
        threads_of(nt, kernels.rows_to_bf16, x, xh, norm, dnorm)
        np.testing.assert_array_equal(xh, _bf16_reference(x))
        back = (xh.astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_allclose(norm, np.sqrt((x.astype(np.float64) ** 2).sum(1)), rtol=1e-14)
        np.testing.assert_allclose(dnorm, np.sqrt(((x - back).astype(np.float64) ** 2).sum(1)), rtol=1e-14)
    for d, n in ((40, 96), (37, 53), (16, 16), (5, 3)):  # full 16 x 16 tiles, edges, a partial last block
        W = _awkward_floats((d, n), d)
        WT, WhT, norm, dnorm = np.empty((n, d), np.float32), np.empty((n, d), np.uint16), np.empty(n), np.empty(n)
        threads_of(2, kernels.cols_to_bf16_t, W, WT, WhT, norm, dnorm)
        np.testing.assert_array_equal(WT, W.T)
        np.testing.assert_array_equal(WhT, _bf16_reference(W.T))
        back = (WhT.astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_allclose(norm, np.sqrt((W.T.astype(np.float64) ** 2).sum(1)), rtol=1e-14)
        np.testing.assert_allclose(dnorm, np.sqrt(((W.T - back).astype(np.float64) ** 2).sum(1)), rtol=1e-14)


def test_bf16_conversion_keeps_nan_and_makes_overflow_infinite():
    x = np.array([[np.nan, np.float32(3.4e38), 1.0]], np.float32)
    xh, norm, dnorm = np.empty((1, 3), np.uint16), np.empty(1), np.empty(1)
    kernels.rows_to_bf16(x, xh, norm, dnorm)
    back = (xh.astype(np.uint32) << 16).view(np.float32)
    assert np.isnan(back[0, 0]) and np.isinf(back[0, 1]) and back[0, 2] == 1.0
    assert not np.isfinite(dnorm[0])  # the caller sees a non-finite norm and declines


def _bound_reference(P, bound, t, rel=kernels.REL_FLOAT32):
    a, b, c, f = bound
    e = a[:, None] * b[None, :] + c[:, None] * f[None, :] + np.float32(rel) * np.abs(P) + np.float32(2.0 ** -100)
    return P + e >= t, P - e >= t, P - e, P + e


def _as_bf16_bits(P):
    """(P rounded to bfloat16 as uint16 bits, those values as float32)."""
    h = torch.from_numpy(P).bfloat16().view(torch.int16).numpy().view(np.uint16)
    return h, (h.astype(np.uint32) << 16).view(np.float32)


def _screen_case(seed=6, B=37, n=53):
    rng = _rng(seed)
    P = rng.standard_normal((B, n)).astype(np.float32)
    P[3, :] = 2.0  # a full row
    P[4, 7] = np.nan  # NaN never passes
    bound = tuple(np.abs(rng.standard_normal(m)).astype(np.float32) * 0.05 for m in (B, n, B, n))
    return P, bound, np.float32(0.8)


@pytest.mark.parametrize("width", ["float32", "bfloat16"])
def test_screen_count_gather_and_compact_against_numpy(threads_of, width):
    P, bound, t = _screen_case()
    if width == "float32":
        up, low, lo_ref, hi_ref = _bound_reference(P, bound, t)
    else:  # a product rounded to bfloat16: the kernels read its bits, and the bound's relative term is wider
        P, values = _as_bf16_bits(P)
        up, low, lo_ref, hi_ref = _bound_reference(values, bound, t, kernels.REL_BFLOAT16)
    rr, cc = np.nonzero(up)
    for nt in (1, 2, 3):
        cu, cl = np.empty(37, np.int64), np.empty(37, np.int64)
        threads_of(nt, kernels.screen_count, P, bound, t, cu, cl)
        np.testing.assert_array_equal(cu, up.sum(1))
        np.testing.assert_array_equal(cl, low.sum(1))
        offsets = np.concatenate([[0], np.cumsum(cu)])
        cols, lo, hi = (np.empty(len(cc), dt) for dt in (np.int64, np.float32, np.float32))
        threads_of(nt, kernels.screen_gather, P, bound, t, offsets, cols, lo, hi)
        np.testing.assert_array_equal(cols, cc)
        np.testing.assert_array_equal(lo, lo_ref[rr, cc])
        np.testing.assert_array_equal(hi, hi_ref[rr, cc])
        total = len(cc)
        for cap in (total, total + 60, 4 * total):
            cu1, cl1 = np.full(37, -1, np.int64), np.full(37, -1, np.int64)
            once = threads_of(nt, kernels.screen_gather_once, P, bound, t, cu1, cl1, cap)
            if once is None:  # a thread's share of the slots was too small: only when slots are few
                assert nt > 1 and cap < 4 * total, (nt, cap)
                continue
            np.testing.assert_array_equal(cu1, cu)
            np.testing.assert_array_equal(cl1, cl)
            for got, ref in zip(once, (cols, lo, hi), strict=True):
                np.testing.assert_array_equal(got, ref)
    crow, kept = kernels.screen_compact(offsets, cols, hi, np.float32(1.0))
    mask = hi >= np.float32(1.0)
    np.testing.assert_array_equal(kept, cols[mask])
    np.testing.assert_array_equal(crow, np.concatenate([[0], np.cumsum(np.bincount(rr[mask], minlength=37))]))
    big = np.full((40, 200), 5.0, np.float32)
    tiny = tuple(np.zeros(m, np.float32) for m in (40, 200, 40, 200))
    assert kernels.screen_gather_once(big, tiny, np.float32(1.0), np.empty(40, np.int64), np.empty(40, np.int64),
                                      1000) is None  # more entries than slots: declined


def test_dot_entries_within_the_summation_bound_and_independent_of_threads(threads_of):
    rng = _rng(7)
    for B, d, n in ((19, 576, 40), (11, 100, 30), (5, 7, 9)):  # chunked, a partial last chunk, shorter than a chunk
        x = rng.standard_normal((B, d)).astype(np.float32)
        WT = rng.standard_normal((n, d)).astype(np.float32)
        counts = rng.integers(0, n, B)
        crow = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        cols = np.concatenate([np.sort(rng.choice(n, c, replace=False)) for c in counts]).astype(np.int64)
        rows = np.repeat(np.arange(B), counts)
        exact = np.einsum("ed,ed->e", x[rows].astype(np.float64), WT[cols].astype(np.float64))
        gamma = d * 2.0 ** -24 / (1 - d * 2.0 ** -24)
        limit = gamma * np.einsum("ed,ed->e", np.abs(x[rows]).astype(np.float64), np.abs(WT[cols]).astype(np.float64))
        outs = []
        for nt in (1, 2, 3):
            out = np.empty(len(cols), np.float32)
            threads_of(nt, kernels.dot_entries, crow, cols, x, WT, out)
            outs.append(out)
        assert np.all(np.abs(outs[0] - exact) <= limit)
        assert outs[0].tobytes() == outs[1].tobytes() == outs[2].tobytes()


def test_dot_entries_value_does_not_depend_on_the_other_entries_of_its_row():
    """A row's last group of at most DOT_FEW entries is summed entry by entry, a larger one through the 16-lane
    transposition: both give every entry the same sum, bit for bit."""
    rng = _rng(8)
    for d in (576, 100):  # whole column chunks, and a partial last one
        x = rng.standard_normal((1, d)).astype(np.float32)
        WT = rng.standard_normal((40, d)).astype(np.float32)

        def dots(group: int, x=x, WT=WT) -> np.ndarray:  # the first `group` columns as one row's entries
            out = np.empty(group, np.float32)
            kernels.dot_entries(np.array([0, group], np.int64), np.arange(group, dtype=np.int64), x, WT, out)
            return out

        alone = np.concatenate([dots(j + 1)[j:] for j in range(37)])  # entry j as the last of j + 1 entries
        for group in (3, 4, 5, 16, 20, 21, 37):  # last groups of 3, 4, 5, 16, 4, 5 and 5 entries
            np.testing.assert_array_equal(dots(group), alone[:group])


def _gram_candidates_ref(G, starts, bound, rel, slack, margin):
    """Brute-force candidate sets of kernels.gram_candidates with the threshold scaled by (1 + margin)."""
    a, b, c, f = (v.astype(np.float64) for v in bound)
    off, sets = 0, []
    for r0, r1 in zip(starts[:-1], starts[1:], strict=True):
        m = r1 - r0
        g = np.abs((G[off:off + m * m].astype(np.uint32) << 16).view(np.float32).astype(np.float64).reshape(m, m))
        off += m * m
        e = a[r0:r1, None] * b[None, r0:r1] + c[r0:r1, None] * f[None, r0:r1] + rel * g + 2.0 ** -100
        lo, hi = g - e, g + e
        np.fill_diagonal(lo, 0.0)
        t = np.maximum(lo.max(axis=1), 0.0) * (1 - slack) * (1 + margin) if m > 1 else np.zeros(m)
        for li in range(m):
            sets.append({r0 + j for j in range(m) if j != li and hi[li, j] >= t[li]})
    return sets


def test_gram_candidates_and_max_square_pick_against_numpy():
    rng = _rng(9)
    sizes = np.array([5, 1, 17, 40, 33])  # a chunk of one row has no candidates
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(starts[-1])
    vals = (rng.standard_normal(int((sizes ** 2).sum())) * 0.2).astype(np.float32)
    vals[::7] = vals[3]  # equal magnitudes: ties of the lower bounds
    G = (vals.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 bits (truncated: any bits will do)
    bound = tuple((rng.random(n) * s).astype(np.float32) for s in (0.05, 1.0, 1.0, 0.02))
    crow, cols = kernels.gram_candidates(G, starts, bound)
    got = [set(cols[crow[i]:crow[i + 1]].tolist()) for i in range(n)]
    assert all(np.all(np.diff(cols[crow[i]:crow[i + 1]]) > 0) for i in range(n))  # column order
    lo_ref = _gram_candidates_ref(G, starts, bound, kernels.REL_BFLOAT16, kernels.GRAM_SLACK, 1e-5)
    hi_ref = _gram_candidates_ref(G, starts, bound, kernels.REL_BFLOAT16, kernels.GRAM_SLACK, -1e-5)
    assert all(lo <= g <= hi for lo, g, hi in zip(lo_ref, got, hi_ref, strict=True))
    assert got[5] == set() and all(got[i] for i in range(n) if i != 5)
    v = (rng.integers(-3, 4, cols.size) * 0.25).astype(np.float32)  # many equal squares: ties to the first
    j, vs = kernels.max_square_pick(crow, cols, v)
    for i in range(n):
        seg, vv = cols[crow[i]:crow[i + 1]], v[crow[i]:crow[i + 1]]
        if seg.size == 0:
            assert j[i] == -1 and vs[i] == 0
            continue
        first = int(np.argmax(vv * vv))
        assert j[i] == seg[first] and vs[i] == vv[first]
    with pytest.raises(ValueError, match="flat bfloat16"):
        kernels.gram_candidates(G[:-1], starts, bound)
    with pytest.raises(ValueError, match="starts"):
        kernels.gram_candidates(G, starts[::-1].copy(), bound)


@pytest.mark.skipif(not kernels.amx_ready(), reason="no AMX")
def test_amx_product_and_fused_screen(threads_of):
    rng = _rng(8)
    for B, d, n in ((160, 96, 208), (64, 64, 16), (256, 576, 320)):  # a partial row block, 16-wide edges, 576
        x = rng.standard_normal((B, d)).astype(np.float32)
        W = (rng.standard_normal((d, n)) / 8).astype(np.float32)
        xh, xn, xd = np.empty((B, d), np.uint16), np.empty(B), np.empty(B)
        kernels.rows_to_bf16(x, xh, xn, xd)
        WT, Wv, wn, wd = np.empty((n, d), np.float32), np.empty(n * d, np.uint16), np.empty(n), np.empty(n)
        kernels.cols_to_bf16_t(W, WT, Wv, wn, wd, vnni=True)
        tiles = Wv.reshape(n // 16, d // 32, 16, 16, 2)  # column block, row block, pair r, column, row parity
        np.testing.assert_array_equal(tiles.transpose(1, 2, 4, 0, 3).reshape(d, n), _bf16_reference(W))
        P = np.empty((B, n), np.float32)
        threads_of(2, kernels.amx_screen, xh, Wv, n, None, 0, None, None, 0, P)
        a64 = (xh.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        w64 = (_bf16_reference(W).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        gamma = d * 2.0 ** -24 / (1 - d * 2.0 ** -24)
        assert np.all(np.abs(P - a64 @ w64) <= 2 * gamma * (np.abs(a64) @ np.abs(w64)))
        bound = tuple(np.abs(rng.standard_normal(m)).astype(np.float32) * 0.01 for m in (B, n, B, n))
        t = np.float32(np.quantile(P, 0.97))
        cu, cl = np.empty(B, np.int64), np.empty(B, np.int64)
        ref = [v.copy() for v in kernels.screen_gather_once(P, bound, t, cu, cl, B * n)]
        for nt in (1, 2, 3):
            cu2, cl2 = np.full(B, -1, np.int64), np.full(B, -1, np.int64)
            got = threads_of(nt, kernels.amx_screen, xh, Wv, n, bound, t, cu2, cl2, B * n)
            np.testing.assert_array_equal(cu2, cu)
            np.testing.assert_array_equal(cl2, cl)
            for g, r in zip(got, ref, strict=True):
                np.testing.assert_array_equal(g, r)
    with pytest.raises(ValueError, match="multiples of 32"):
        kernels.amx_screen(np.zeros((33, 32), np.uint16), np.zeros(32 * 16, np.uint16), 16, None, 0, None, None, 0,
                           P=np.empty((33, 16), np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        kernels.cols_to_bf16_t(np.zeros((48, 16), np.float32), np.empty((16, 48), np.float32),
                               np.empty(48 * 16, np.uint16), np.empty(16), np.empty(16), vnni=True)


def test_the_float32_only_kernels_refuse_other_dtypes_by_name():
    x64 = np.zeros((4, 8))
    with pytest.raises(TypeError, match="rows_to_bf16 takes float32"):
        kernels.rows_to_bf16(x64, np.empty((4, 8), np.uint16), np.empty(4), np.empty(4))
    with pytest.raises(TypeError, match="dot_entries takes float32"):
        kernels.dot_entries(np.zeros(5, np.int64), np.zeros(0, np.int64), x64, x64, np.empty(0, np.float32))
    bound = tuple(np.zeros(m, np.float32) for m in (4, 8, 4, 8))
    with pytest.raises(TypeError, match="screen_count takes screened values as float32 or bfloat16"):
        kernels.screen_count(x64, bound, 0.5, np.empty(4, np.int64), np.empty(4, np.int64))


def test_quantiles_equal_torch_quantile_bit_for_bit():
    """Random, penalty-like (several orders of magnitude) and heavily tied vectors of 1 to 2,500 values, at the
    trainer's quantiles and at the ends (0 and 1)."""
    rng = np.random.default_rng(1)
    q = np.array([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    for t in range(1500):
        n = int(rng.integers(1, 2500))
        v = [rng.random(n, dtype=np.float32), np.exp(-30 * rng.random(n)).astype(np.float32),
             (rng.integers(0, 5, n) / 7).astype(np.float32)][t % 3]
        ref = torch.quantile(torch.from_numpy(v).double(), torch.from_numpy(q)).numpy()
        got = kernels.quantiles(v, q)
        assert got is not None and np.array_equal(got.view(np.int64), ref.view(np.int64)), (t, got, ref)


def test_quantiles_refuse_non_finite_values_and_bad_input():
    q = np.array([0.5])
    assert kernels.quantiles(np.array([1.0, np.nan], np.float32), q) is None
    assert kernels.quantiles(np.array([np.inf, 1.0], np.float32), q) is None
    with pytest.raises(ValueError, match="non-empty float32 vector"):
        kernels.quantiles(np.zeros(0, np.float32), q)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        kernels.quantiles(np.ones(3, np.float32), np.array([1.5]))
    with pytest.raises(TypeError, match="float32"):
        kernels.quantiles(np.ones(3), q)


def _kth_vectors(rng, m):
    """Step-like float32 vectors: concentrated near a threshold, tied, signed with zeros of both signs,
    infinities, subnormals, several orders of magnitude."""
    tied = (rng.integers(0, 7, m) / 3).astype(np.float32)
    signed = rng.standard_normal(m).astype(np.float32)
    signed[rng.random(m) < 0.2] = 0.0
    signed[rng.random(m) < 0.2] = -0.0
    special = rng.standard_normal(m).astype(np.float32)
    special[rng.random(m) < 0.01] = np.inf
    special[rng.random(m) < 0.01] = -np.inf
    special[rng.random(m) < 0.05] = np.float32(1e-40) * rng.standard_normal()  # subnormal
    wide = np.exp(rng.uniform(-80, 80, m)).astype(np.float32) * rng.choice([-1, 1], m).astype(np.float32)
    near = (1 + 0.01 * rng.standard_normal(m)).astype(np.float32)
    return [tied, signed, special, wide, near]


def test_kth_largest_is_the_sorted_order_statistic(threads_of):
    """Against the sorted vector (brute force) on the step's kinds of values, at sizes on both sides of the numpy
    cut-off and of the kernel's single-thread cut-off, for the extreme and random ranks, at 1 and 2 threads."""
    rng = np.random.default_rng(5)
    sizes = [1, 2, 5, kernels.KTH_RADIX_MIN - 1, kernels.KTH_RADIX_MIN, 9000, 16383, 16384, 40000, 140001]
    for m in sizes:
        for v in _kth_vectors(rng, m):
            desc = np.sort(v)[::-1]
            for k in sorted({1, m, (m + 1) // 2, int(rng.integers(1, m + 1))}):
                for nt in (1, 2):
                    got = threads_of(nt, kernels.kth_largest, v, k)
                    assert got.dtype == np.float32 and got == desc[k - 1], (m, k, nt, got, desc[k - 1])


def test_kth_largest_runs_the_radix_kernel_and_keeps_numpy_for_the_rest(monkeypatch):
    """Large float32 vectors never reach numpy's partition (so the test above checks the kernel); NaN, float64 and
    small vectors do, with numpy's order (NaN largest); bad ranks are refused."""
    v = np.random.default_rng(0).standard_normal(50000).astype(np.float32)
    ref = np.sort(v)[::-1][999]
    real = np.partition

    def refuse(*a, **k):
        raise AssertionError("numpy's partition was called")
    monkeypatch.setattr(np, "partition", refuse)
    assert kernels.kth_largest(v, 1000) == ref
    monkeypatch.setattr(np, "partition", real)
    with_nan = v.copy()
    with_nan[7] = np.nan
    assert np.isnan(kernels.kth_largest(with_nan, 1))
    assert kernels.kth_largest(with_nan, 2) == np.sort(np.delete(with_nan, 7))[::-1][0]
    assert kernels.kth_largest(v.astype(np.float64), 1000) == np.float64(ref)
    assert kernels.kth_largest(v[:10], 3) == np.sort(v[:10])[::-1][2]
    for k in (0, v.size + 1):
        with pytest.raises(ValueError, match="1 <= k <= its size"):
            kernels.kth_largest(v, k)
    with pytest.raises(ValueError, match="1-D"):
        kernels.kth_largest(v.reshape(100, 500), 3)


def test_kth_largest_when_openmp_grants_fewer_threads_than_asked():
    """OMP_THREAD_LIMIT=1 with two threads asked: the kernel must use the team it got (its parts' boundaries)."""
    code = ("import numpy as np, torch\n"
            "from paperlib.sae import kernels\n"
            "torch.set_num_threads(2)\n"
            "v = np.random.default_rng(0).standard_normal(100001).astype(np.float32)\n"
            "desc = np.sort(v)[::-1]\n"
            "assert all(kernels.kth_largest(v, k) == desc[k - 1] for k in (1, 77, 50000, 100001))\n")
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
