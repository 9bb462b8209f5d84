"""Offline language models and the resid_pre read through nnsight."""


from __future__ import annotations

import pytest
import torch

from paperlib.data import activations, lm


def test_hub_model_offline_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="offline profile: default, smoke, gemma-3-270m"):
        lm.load_hf("openai-community/gpt2-large-does-not-exist-offline")


@pytest.mark.parametrize("layer", [0, 2])
def test_nnsight_resid_pre_equals_hidden_states(layer):
    model = lm.load_lm("tiny-smollm2")
    ids = torch.randint(0, 1000, (3, 16))
    got = activations.resid_pre(model, ids, layer)
    with torch.no_grad():
        ref = model._module(ids, output_hidden_states=True).hidden_states[layer]
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_smollm2_offline_resid_pre_matches():
    model = lm.load_lm("smollm2-135m")
    assert len(lm.decoder_layers(model)) == 30
    ids = torch.randint(0, 1000, (2, 12))
    got = activations.resid_pre(model, ids, 12)
    with torch.no_grad():
        ref = model._module(ids, output_hidden_states=True).hidden_states[12]
    torch.testing.assert_close(got, ref, rtol=0, atol=0)

