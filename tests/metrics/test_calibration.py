import numpy as np
import pytest
import torch

from paperlib.metrics import calibration as cal


def test_eer_hand_case():
    # merged order: 1U 2U 3A 3.5U 4A 5A 6A 7U
    # g = CDF_A + CDF_U - 1 on [3,3.5): .25+.5-1 = -.25 ; on [3.5,4): .25+.75-1 = 0 ; on [4,5): +.25
    A = np.array([3, 4, 5, 6], dtype=np.float32)
    U = np.array([1, 2, 3.5, 7], dtype=np.float32)
    theta, eer, lo, hi = cal.eer_threshold_exact(A, U)
    assert theta == 3.75 and eer == 0.0 and (lo, hi) == (3.5, 4.0)
    assert cal.eer_threshold_exact(A, np.zeros(0, np.float32))[0] == 0.0  # no inactive: fire when pre > 0
    assert cal.eer_threshold_exact(np.zeros(0, np.float32), U)[0] == np.inf  # dead


def test_end_to_end_hand_case():
    # k=1, B=2: top-2 entries of each flattened batch are selected
    b1 = torch.tensor([[5.0, 1.0], [4.0, 0.0]])  # selects f0:5, f0:4 ; f1 inactive {1}
    b2 = torch.tensor([[2.0, 3.0], [0.5, 6.0]])  # selects f1:6, f1:3 ; f0 inactive {2, .5}
    c = cal.calibrate_from_pre([b1, b2], k=1, progress=False)
    # f0: A={4,5}, U={.5,2}: g(2)=0 -> θ = (2+4)/2 ; f1: A={3,6}, U={1}: g(1)=0 -> θ = (1+3)/2
    np.testing.assert_array_equal(c.thresholds, [3.0, 2.0])
    np.testing.assert_array_equal(c.n_active, [2, 2])
    np.testing.assert_array_equal(c.n_inactive, [2, 1])
    np.testing.assert_array_equal(c.n_threshold_fire, [2, 2])
    np.testing.assert_allclose(c.batchtopk_rate, [0.5, 0.5])
    np.testing.assert_allclose(c.recall, [1.0, 1.0])
    assert c.n_tokens == 4
    c1 = cal.calibrate_from_pre([b1], k=1, progress=False)
    assert c1.thresholds[0] == 0.0 and c1.thresholds[1] == np.inf and c1.dead[1]


def test_batch_topk_select():
    pre = torch.relu(torch.randn(8, 20, generator=torch.Generator().manual_seed(0)))
    m = cal.batch_topk_select(pre, 3)
    assert m.sum() == 24
    assert pre[m].min() >= pre[~m].max()


def _random_batches(seed=0, n_batches=6, B=256, n=16, d=8):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, n, generator=g) * torch.linspace(0.3, 2.0, n)
    out = []
    for _ in range(n_batches):
        x = torch.randn(B, d, generator=g)
        out.append(torch.relu(x @ W))
    return out


def _brute_eer(batches, k):
    n = batches[0].shape[1]
    A = [[] for _ in range(n)]
    U = [[] for _ in range(n)]
    for pre in batches:
        flat = pre.flatten().numpy()
        order = np.argsort(-flat, kind="stable")[: k * pre.shape[0]]
        sel = np.zeros(flat.size, bool)
        sel[order] = True
        sel = sel.reshape(pre.shape) & (pre.numpy() > 0)
        p = pre.numpy()
        for i in range(n):
            A[i] += list(p[sel[:, i], i])
            U[i] += list(p[(p[:, i] > 0) & ~sel[:, i], i])
    best = []
    for i in range(n):
        a, u = np.array(A[i]), np.array(U[i])
        if a.size == 0:
            best.append(None)
            continue
        cands = np.unique(np.concatenate([a, u]))
        gs = [abs((a <= c).mean() + ((u <= c).mean() if u.size else 0) - 1) for c in cands]
        best.append(min(gs))
    return best


def test_exact_matches_brute_force_and_rates():
    batches = _random_batches()
    k = 2
    c = cal.calibrate_from_pre(batches, k, progress=False)
    best = _brute_eer(batches, k)
    allpre = torch.cat(batches).numpy()
    for i in range(c.n):
        if best[i] is None:
            assert c.thresholds[i] == np.inf
            continue
        assert c.eer[i] == pytest.approx(best[i], abs=1e-12)
        assert c.eer_lo[i] <= c.thresholds[i] < c.eer_hi[i]
        assert c.n_threshold_fire[i] == (allpre[:, i] > c.thresholds[i]).sum()
    assert c.n_active.sum() == k * allpre.shape[0]


def test_hist_close_to_exact_within_bound():
    batches = _random_batches(seed=1, n_batches=8)
    ex = cal.calibrate_from_pre(batches, 2, progress=False)
    for nb in (64, 1024):
        h = cal.calibrate_from_pre(batches, 2, mode="hist", n_bins=nb, progress=False)
        np.testing.assert_array_equal(h.n_active, ex.n_active)
        alive = ~ex.dead
        th = h.thresholds.astype(np.float64)[alive]
        lo, hi = ex.eer_lo[alive], ex.eer_hi[alive]
        dist = np.maximum(0, np.maximum(lo - th, th - hi))
        assert np.all(dist <= h.theta_err[alive] * (1 + 1e-6) + 1e-7)
        assert h.max_theta_err == pytest.approx(h.theta_err[alive].max())
        allpre = torch.cat(batches).numpy()
        direct = (allpre[:, alive] > h.thresholds[alive]).sum(0)
        np.testing.assert_array_equal(h.n_threshold_fire[alive], direct)
    with pytest.raises(ValueError):
        cal.calibrate_from_pre(iter(batches), 2, mode="hist", progress=False)


class _FakeSAE:
    k = 2
    n_latents = 16

    def __init__(self, W):
        self.W = W

    def pre_acts(self, x):
        return torch.relu(x @ self.W)


def test_calibrate_sae_and_save_load(tmp_path):
    g = torch.Generator().manual_seed(3)
    W = torch.randn(8, 16, generator=g)
    acts = torch.randn(1000, 8, generator=g).numpy().astype(np.float16)
    sae = _FakeSAE(W)
    c = cal.calibrate_sae(sae, acts, batch_size=256, progress=False)
    ref = cal.calibrate_from_pre(
        [torch.relu(torch.as_tensor(acts[s:s + 256]).float() @ W) for s in range(0, 1000, 256)], 2,
        progress=False)
    np.testing.assert_array_equal(c.thresholds, ref.thresholds)
    c.save(tmp_path / "cal")
    c2 = cal.Calibration.load(tmp_path / "cal")
    np.testing.assert_array_equal(c2.thresholds, c.thresholds)
    np.testing.assert_array_equal(c2.n_threshold_fire, c.n_threshold_fire)
    assert c2.n_tokens == 1000 and c2.meta["batch_size"] == 256
    df = c.frame()
    assert len(df) == 16 and {"batchtopk_rate", "threshold_rate"} <= set(df.columns)
    s = c.summary()
    assert s["batchtopk_L0"] == pytest.approx(2.0)
    ch = cal.calibrate_sae(sae, acts, batch_size=256, mode="hist", n_bins=256, progress=False)
    assert ch.mode == "hist"
    # held in memory (default) or encoded twice (nothing held): the same histogram thresholds and counts
    ch2 = cal.calibrate_sae(sae, acts, batch_size=256, mode="hist", n_bins=256, progress=False, max_held_bytes=0)
    for name in cal.ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(ch, name), getattr(ch2, name))



def _full_topk_select(pre, k):
    """The selection calibration used before it shared the SAE's: one torch.topk over all B·n entries."""
    B, n = pre.shape
    mask = torch.zeros(B * n, dtype=torch.bool)
    mask[torch.topk(pre.reshape(-1), min(k * B, B * n), sorted=False).indices] = True
    return mask.view(B, n) & (pre > 0)


def test_batch_topk_select_is_the_sae_selection_with_ties():
    from paperlib.sae.models import batch_topk_mask

    g = torch.Generator().manual_seed(0)
    n_split = 0
    for trial in range(300):
        B, n = int(torch.randint(1, 150, (1,), generator=g)), int(torch.randint(2, 40, (1,), generator=g))
        k = int(torch.randint(1, n + 2, (1,), generator=g))
        if trial % 3 == 0:  # continuous values: no ties
            pre = torch.relu(torch.randn(B, n, generator=g))
        else:  # a few levels: many ties, zeros included
            pre = torch.relu(torch.randint(-2, int(torch.randint(1, 6, (1,), generator=g)), (B, n), generator=g)
                             .float())
        sel = cal.batch_topk_select(pre, k)
        # one selection, the SAE's (same entries, same tie-breaking)
        assert torch.equal(sel, batch_topk_mask(pre, k) & (pre > 0))
        old = _full_topk_select(pre, k)
        # same number of selections and the same selected values as the full top-k ...
        assert int(sel.sum()) == int(old.sum())
        assert torch.equal(pre[sel].sort().values, pre[old].sort().values)
        # ... and the same entries unless equal values straddle the k·B boundary: then which of the
        # equal entries (hence which feature) is taken is the SAE's choice, as in training
        kk = min(k * B, B * n)
        t = pre.reshape(-1).topk(kk).values.min()
        split = t > 0 and int((pre >= t).sum()) > kk
        n_split += split
        if not split:
            assert torch.equal(sel, old)
    assert n_split > 20
