"""Stream mode (issue 19, item 2): activations produced by the language model on the fly equal the cache's, and a
killed one-pass stream resumes to the same weights, with no activation cache written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paperlib.config import paths
from paperlib.config.profiles import get_profile
from paperlib.data.activations import load_cache
from paperlib.data.lm import load_lm
from paperlib.data.stream import CacheSource, LMSource, default_rows_per_chunk
from paperlib.sae import multirun
from paperlib.sae.multirun import PassConfig, train_one_pass

PROFILE = get_profile("paper-arch-smoke-gpt2", n_latents=64, n_meta=8, k=4, k_meta=2, batch_size=256,
                      checkpoint_every=4)
RUNS = ["solo", "joint-l0.3-s1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    return load_lm("tiny-gpt2", dtype="float32", device="cpu")


def _weights(d) -> dict[str, bytes]:
    return {f.relative_to(d).as_posix(): f.read_bytes() for f in sorted(d.rglob("*.safetensors"))}


def test_lm_chunks_equal_the_cache_and_nothing_is_written(tmp_artifacts, lm):
    src = LMSource(PROFILE, lm=lm)
    assert not paths.activations_dir(PROFILE).exists()  # stream mode reads no cache and writes none
    rows = default_rows_per_chunk(PROFILE)
    assert rows % PROFILE.data.lm_batch_size == 0
    cache = CacheSource(load_cache(PROFILE, progress=False, lm=lm).acts("train"), src.per_row)
    assert (src.n_rows, src.per_row, src.d) == (cache.n_rows, cache.per_row, cache.d)
    for r0 in (0, rows, src.n_rows - rows):
        assert torch.equal(src.read(r0, r0 + rows), cache.read(r0, r0 + rows))


def test_killed_stream_pass_resumes_to_the_same_weights_as_the_cache_pass(tmp_artifacts, lm, monkeypatch):
    cfg = PassConfig(rows_per_chunk=8, buffer_batches=2)
    src = LMSource(PROFILE, lm=lm)

    def kill(g):
        if g == 9:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(multirun, "_chunk_hook", kill)
    with pytest.raises(KeyboardInterrupt):
        train_one_pass(PROFILE, RUNS, src, tmp_artifacts / "stream", pass_cfg=cfg, progress=False, device="cpu")
    monkeypatch.setattr(multirun, "_chunk_hook", None)
    out = train_one_pass(PROFILE, RUNS, src, tmp_artifacts / "stream", pass_cfg=cfg, progress=False, device="cpu")
    ref = train_one_pass(PROFILE, RUNS, src, tmp_artifacts / "ref", pass_cfg=cfg, progress=False, device="cpu")
    for name in out:
        assert _weights(out[name]) and _weights(out[name]) == _weights(ref[name])
    # the cache holds the same bits: a pass over it gives the same weights as the stream
    acts = load_cache(PROFILE, progress=False, lm=lm).acts("train")
    cached = train_one_pass(PROFILE, RUNS, CacheSource(acts, src.per_row), tmp_artifacts / "cache", pass_cfg=cfg,
                            progress=False, device="cpu")
    for name in out:
        assert _weights(cached[name]) == _weights(out[name])


def test_dim_token_norm_is_refused_in_stream_mode(tmp_artifacts, lm):
    p = get_profile(PROFILE, input_norm="dim+token")
    with pytest.raises(ValueError, match="input_norm='dim\\+token'"):
        train_one_pass(p, ["solo"], LMSource(p, lm=lm), tmp_artifacts / "x", pass_cfg=PassConfig(rows_per_chunk=8),
                       progress=False, device="cpu")


def test_lm_source_rejects_tokens_of_the_wrong_shape(lm):
    with pytest.raises(ValueError, match="tokens must be"):
        LMSource(PROFILE, lm=lm, tokens=np.zeros((4, 7), dtype=np.int32))
