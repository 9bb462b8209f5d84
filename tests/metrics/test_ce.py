"""CE splice: identity splice reproduces the clean loss; an SAE splice changes it."""

from __future__ import annotations

import numpy as np
import torch

from paperlib.data import lm
from paperlib.metrics import ce
from paperlib.sae.models import BatchTopKSAE


def _reference_ce(model, ids):
    with torch.no_grad():
        logits = model._module(torch.as_tensor(ids)).logits.double()
    lp = torch.log_softmax(logits[:, :-1], -1)
    return float(-lp.gather(-1, torch.as_tensor(ids)[:, 1:, None]).mean())


def test_identity_splice_reproduces_clean_loss():
    model = lm.load_lm("tiny-smollm2")
    ids = np.random.default_rng(0).integers(0, 1000, (5, 24))
    res = ce.ce_losses(model, ids, 2, {"clean": None, "identity": lambda h: h.clone(),
                                        "zero": ce.zero_splice}, batch_size=2, progress=False)
    ref = _reference_ce(model, ids)
    assert abs(res["clean"].ce - ref) < 1e-6
    assert abs(res["identity"].ce - ref) < 1e-6
    assert res["clean"].n_tokens == 5 * 23
    assert abs(res["zero"].ce - ref) > 1e-3  # the splice really reaches the model


def test_sae_splice_uses_raw_scale_reconstruction():
    model = lm.load_lm("tiny-smollm2")
    d = model._module.config.hidden_size
    sae = BatchTopKSAE(d, 4 * d, 8, seed=0)
    h = torch.randn(2, 5, d) * 3 + 1
    out = ce.sae_splice(sae, thresholds=torch.zeros(4 * d))(h)
    ref = sae.reconstruct(h.reshape(-1, d), thresholds=torch.zeros(4 * d)).reshape(2, 5, d)
    torch.testing.assert_close(out, ref)
    ids = np.random.default_rng(1).integers(0, 1000, (2, 16))
    res = ce.ce_losses(model, ids, 2, {"clean": None, "sae": ce.sae_splice(sae)}, progress=False)
    assert res["sae"].ce != res["clean"].ce


def test_sae_splice_inverts_per_dim_standardisation():
    """Closed form: an SAE with latents [I, −I] reconstructs x̃ exactly, so the spliced h is h itself."""
    d = 8
    sae = BatchTopKSAE(d, 2 * d, 2 * d, seed=0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(d, generator=g) * 100
    mu[2] = 5000.0  # massive outlier dimension
    sd = torch.rand(d, generator=g) * 3 + 0.5
    sd[2] = 1800.0
    sae.set_input_standardisation(mu, sd)
    h = torch.randn(2, 5, d, generator=g) * sd + mu
    for th in (None, torch.zeros(2 * d)):
        torch.testing.assert_close(ce.sae_splice(sae, thresholds=th)(h), h, atol=2e-3, rtol=1e-5)
