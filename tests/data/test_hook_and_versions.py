"""Issue 19 fixes: resid_pre at layer 0 on the paper architectures; the tiny models' recipe version in the
activation cache's settings."""

from __future__ import annotations

import pytest
import torch

from paperlib.data import activations, lm
from paperlib.data.activations import cache_settings, resid_pre
from paperlib.data.lm import load_lm, tiny_model_version


@pytest.mark.parametrize("key", ["tiny-gpt2", "tiny-gemma2"])
def test_resid_pre_at_layer_0_is_the_models_first_hidden_state(key):
    model = load_lm(key, dtype="float32", device="cpu")
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    got = resid_pre(model, ids, 0)
    with torch.no_grad():
        out = model._module(ids, output_hidden_states=True)
        raw = model._module.get_input_embeddings()(ids)
    assert torch.equal(got, out.hidden_states[0])
    if key == "tiny-gpt2":  # the learned position embedding is included (wte alone is not resid_pre)
        assert not torch.allclose(got, raw)


def test_resid_pre_rejects_a_layer_beyond_the_model():
    model = load_lm("tiny-gpt2", dtype="float32", device="cpu")
    with pytest.raises(ValueError, match="layer 9 out of range"):
        resid_pre(model, torch.zeros(1, 4, dtype=torch.long), 9)


def test_tiny_model_version_is_in_the_cache_settings_and_follows_the_recipe(monkeypatch):
    s = cache_settings("paper-arch-smoke-gpt2")
    v = tiny_model_version("tiny-gpt2")
    assert v.startswith("tiny-gpt2-v") and v in s["model_package_version"]
    assert "tiny" not in cache_settings("default")["model_package_version"]  # real models: package version only
    monkeypatch.setattr(lm, "TINY_WIDTH", lm.TINY_WIDTH * 2)
    v2 = tiny_model_version("tiny-gpt2")
    assert v2 != v and v2 in activations.cache_settings("paper-arch-smoke-gpt2")["model_package_version"]
    with pytest.raises(ValueError, match="key='gpt2'"):
        tiny_model_version("gpt2")
