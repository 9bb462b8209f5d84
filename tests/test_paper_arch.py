"""The paper's architectures offline (issue 19, item 1): tiny random-weight GPT-2 and Gemma 2 models
(``tiny-gpt2``, ``tiny-gemma2``) run through the paper-scale code path on the ``paper-arch-smoke-*`` profiles.

Checked: the resid_pre read through nnsight at the profile's hook point is the model's own hidden state;
an identity "SAE" spliced in leaves the loss unchanged and the clean loss is the model's own loss; every
stage (extraction, training, calibration, co-occurrence, reconstruction, CE, SAELens export) runs end to
end; the FineWeb path (``datasets`` streaming) reads a local parquet file shaped like FineWeb's.
"""

from __future__ import annotations

import json
import math

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from paperlib.config.profiles import PAPER_ARCH_SMOKE, get_profile
from paperlib.data import activations, corpus, lm
from paperlib.metrics.ce import ce_losses, sae_splice
from paperlib.sae.arms import grid_runs
from paperlib.stages.calibrate import ensure_calibration
from paperlib.stages.ce import ensure_ce
from paperlib.stages.cooccur import ensure_cooccurrence
from paperlib.stages.export import export_runs
from paperlib.stages.recon import ensure_reconstruction
from paperlib.stages.run import as_runs
from paperlib.stages.train import ensure_trained

PROFILES = tuple(PAPER_ARCH_SMOKE)
BLOCKS = {"tiny-gpt2": "transformer.h", "tiny-gemma2": "model.layers"}


def _lm(profile: str):
    p = get_profile(profile)
    return p, lm.load_lm(p.data.model, dtype=p.data.lm_dtype, device="cpu")


def _rows(p, tokenizer, n: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tokenizer), (n, p.data.context), generator=gen)
    ids[:, 0] = lm.bos_token_id(tokenizer)
    return ids


class IdentitySAE:
    """Stands in for an SAE in :func:`sae_splice`: its reconstruction is its input."""

    W_enc = torch.zeros(1, dtype=torch.float32)

    def reconstruct(self, x: torch.Tensor, thresholds: torch.Tensor | None = None) -> torch.Tensor:
        return x


@pytest.mark.parametrize("profile", PROFILES)
def test_tiny_model_has_the_paper_architecture(profile):
    p, model = _lm(profile)
    m, paper = model._module, get_profile(PAPER_ARCH_SMOKE[profile])
    assert lm.block_path(model) == BLOCKS[p.data.model]
    assert len(lm.decoder_layers(model)) == lm.TINY_LAYERS and m.config.hidden_size == lm.TINY_WIDTH
    assert m.get_output_embeddings().weight is m.get_input_embeddings().weight  # tied embeddings
    assert p.data.lm_dtype == paper.data.lm_dtype and next(m.parameters()).dtype == getattr(torch, p.data.lm_dtype)
    assert len(model.tokenizer) == lm.TINY_VOCAB
    if p.data.model == "tiny-gemma2":
        assert (m.config.final_logit_softcapping, m.config.attn_logit_softcapping) == (30.0, 50.0)
        assert set(m.config.layer_types) == {"sliding_attention", "full_attention"}
        assert m.config.sliding_window < p.data.context  # the sliding window acts within a row
    else:
        assert isinstance(m.transformer.h[0].ln_1, torch.nn.LayerNorm)
        assert m.transformer.wpe.num_embeddings >= p.data.context  # learned positions cover a row
        assert model.tokenizer.bos_token_id == model.tokenizer.eos_token_id  # GPT-2: BOS is <|endoftext|>


@pytest.mark.parametrize("profile", PROFILES)
def test_resid_pre_through_nnsight_equals_hidden_state(profile):
    p, model = _lm(profile)
    ids = _rows(p, model.tokenizer)
    got = activations.resid_pre(model, ids, p.data.layer)
    with torch.no_grad():
        ref = model._module(ids, output_hidden_states=True).hidden_states[p.data.layer]
    assert got.dtype == getattr(torch, p.data.lm_dtype)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("profile", PROFILES)
def test_identity_splice_reproduces_the_clean_ce(profile):
    p, model = _lm(profile)
    ids = _rows(p, model.tokenizer).numpy()
    ce = ce_losses(model, ids, p.data.layer, {"clean": None, "identity": sae_splice(IdentitySAE())},
                   batch_size=2, progress=False)
    assert ce["identity"].ce == ce["clean"].ce
    assert ce["identity"].n_tokens == ids.shape[0] * (ids.shape[1] - 1)


@pytest.mark.parametrize("profile", PROFILES)
def test_clean_ce_is_the_models_own_loss(profile):
    p, model = _lm(profile)
    ids = _rows(p, model.tokenizer)
    ce = ce_losses(model, ids.numpy(), p.data.layer, {"clean": None}, batch_size=len(ids), progress=False)
    with torch.no_grad():
        own = float(model._module(ids, labels=ids).loss)
    assert ce["clean"].ce == pytest.approx(own, rel=1e-4)


@pytest.mark.parametrize("profile", PROFILES)
def test_whole_pipeline_runs_end_to_end(profile, tmp_artifacts):
    p = get_profile(profile)
    runs = as_runs(p, grid_runs(p))
    assert [r.name for r in runs] == ["solo", "joint-l0.3-s1"]
    ensure_trained(p, runs, progress=False, n_workers=1)
    for run in runs:
        cal = ensure_calibration(run, progress=False)
        co = ensure_cooccurrence(run, progress=False)
        rec = ensure_reconstruction(run, progress=False)
        assert cal.n == p.sae.n_latents and (~cal.dead).sum() > 0 and np.isfinite(cal.thresholds[~cal.dead]).all()
        assert math.isfinite(co.all.mean_abs_phi) and co.all.n_pairs > 0
        assert math.isfinite(rec.mse) and rec.mse > 0
    ce = ensure_ce(p, runs, progress=False)
    assert all(math.isfinite(c.overhead_pct) and c.ce_zero != c.ce_clean for c in ce.values())
    out = export_runs(p, runs, tmp_artifacts / "exports", progress=False)
    cfg = json.loads((out[0] / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == f"blocks.{p.data.layer}.hook_resid_pre"
    assert cfg["metadata"]["model_name"] == p.data.model


FINEWEB_COLUMNS = ("text", "id", "dump", "url", "date", "file_path", "language", "language_score", "token_count")


def _fineweb_parquet(path, n_docs: int = 40):
    docs = corpus.bbc_documents()[:n_docs]
    df = pd.DataFrame({
        "text": [d.text for d in docs], "id": [f"<urn:uuid:{i:08d}>" for i in range(n_docs)],
        "dump": "CC-MAIN-2024-10", "url": [f"https://example.org/{i}" for i in range(n_docs)],
        "date": "2024-02-21T00:00:00Z", "file_path": "s3://commoncrawl/x.warc.gz", "language": "en",
        "language_score": 0.95, "token_count": [len(d.text) // 4 for d in docs],
    })
    assert tuple(df.columns) == FINEWEB_COLUMNS
    df.to_parquet(path)
    return df


def test_fineweb_path_streams_a_local_parquet_through_datasets(tmp_artifacts, monkeypatch):
    """``corpus="fineweb"`` goes through ``datasets.load_dataset(..., streaming=True)``; here that call is
    redirected to a local parquet file with FineWeb's columns, and the whole extraction runs on it."""
    df = _fineweb_parquet(tmp_artifacts / "fineweb-sample.parquet")
    real_load, calls = datasets.load_dataset, []

    def local_fineweb(path, name=None, split=None, streaming=False, **kw):
        calls.append((path, name, split, streaming))
        return real_load("parquet", data_files=str(tmp_artifacts / "fineweb-sample.parquet"), split=split,
                         streaming=streaming)

    monkeypatch.setattr(datasets, "load_dataset", local_fineweb)
    p = get_profile("paper-arch-smoke-gpt2", corpus="fineweb")
    cache = activations.load_cache(p, progress=False)
    assert calls[0] == ("HuggingFaceFW/fineweb", "sample-10BT", "train", True)
    tok = lm.load_hf(p.data.model, device="cpu")[1]
    stream = [t for text in df["text"] for t in tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    rows = cache.token_ids("train")
    body = np.asarray(stream[:rows.size - len(rows)]).reshape(len(rows), -1)
    np.testing.assert_array_equal(rows[:, 1:], body)
    assert (rows[:, 0] == tok.bos_token_id).all()
    assert cache.acts("train").shape == (cache.n_tokens("train"), lm.TINY_WIDTH)
