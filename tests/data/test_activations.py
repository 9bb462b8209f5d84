"""The on-disk activation cache: resume and mismatch refusal."""


from __future__ import annotations

import numpy as np
import pytest
import torch

from paperlib.data import activations, corpus, lm
from tests.helpers import tiny_profile


def test_cache_resumes_and_refuses_mismatch(tmp_artifacts, monkeypatch):
    p = tiny_profile()
    monkeypatch.setattr(activations, "SHARD_TOKENS", 256)  # one LM batch per shard, 15 shards
    calls = []
    real = activations.resid_pre
    monkeypatch.setattr(activations, "resid_pre", lambda *a: calls.append(1) or real(*a))
    with pytest.raises(KeyboardInterrupt):
        activations.load_cache(p, progress=False, _stop_after_shards=3)
    shard_dir = activations.activations_dir(p) / "shards"
    assert len(list(shard_dir.glob("*.npy"))) == 3 and not list(shard_dir.glob("*.tmp"))
    assert len(calls) == 3
    cache = activations.load_cache(p, progress=False)
    resumed_calls = len(calls) - 3
    # a fresh, uninterrupted extraction elsewhere: same arrays, and the resume skipped 3 shards
    monkeypatch.setenv("PAPERLIB_ARTIFACTS", str(tmp_artifacts / "fresh"))
    calls.clear()
    fresh = activations.load_cache(p, progress=False)
    assert resumed_calls == len(calls) - 3
    for name in corpus.RANGE_NAMES:
        np.testing.assert_array_equal(cache.acts(name), fresh.acts(name))
        assert cache.acts(name).shape == (cache.n_tokens(name), cache.d)
        assert cache.positions(name).shape == (cache.n_tokens(name), 2)
    assert cache.manifest["settings"]["layer"] == 2
    assert "torch" in cache.manifest["versions"]
    # the cached activations are the model's own hidden states at the recorded positions
    model = lm.load_lm("tiny-smollm2")
    ids = torch.as_tensor(cache.token_ids("calibration")[:2])
    with torch.no_grad():
        ref = model._module(ids, output_hidden_states=True).hidden_states[2]
    pos = cache.positions("calibration")[: 2 * (p.data.context - 1)]
    np.testing.assert_allclose(cache.acts("calibration")[: len(pos)].astype(np.float32),
                               ref[pos[:, 0], pos[:, 1]].numpy(), rtol=1e-3, atol=1e-3)
    # another layer has its own folder; a cache built for other settings is refused, never silently reused
    other = p.replace(layer=1)
    assert activations.activations_dir(other) != activations.activations_dir(p)
    other_root = activations.activations_dir(other)
    other_root.mkdir(parents=True)
    (other_root / "manifest.json").write_text((activations.activations_dir(p) / "manifest.json").read_text())
    with pytest.raises(activations.CacheMismatchError, match="layer, profile differ"):
        activations.load_cache(other, progress=False)

