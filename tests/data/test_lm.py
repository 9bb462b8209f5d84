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



@pytest.mark.parametrize("key", ["tiny-gpt2", "tiny-gemma2"])
def test_tiny_paper_arch_tokenizer_is_offline_deterministic_and_byte_level(key):
    a, b = lm.tiny_tokenizer(key), lm.tiny_tokenizer(key)
    text = "Gemma 2 and GPT-2 read BBC News: £5bn, café, 東京."
    assert len(a) == lm.TINY_VOCAB and a(text)["input_ids"] == b(text)["input_ids"]
    assert a.decode(a(text, add_special_tokens=False)["input_ids"]) == text
    assert lm.bos_token_id(a) == a.convert_tokens_to_ids(lm.TINY_SPECIALS[key]["bos_token"])


def test_tiny_config_names_the_valid_keys():
    with pytest.raises(ValueError, match="key='tiny-llama' must be one of tiny-gpt2, tiny-gemma2"):
        lm.tiny_config("tiny-llama", None)


@pytest.mark.parametrize("key", ["tiny-gpt2", "tiny-gemma2"])
def test_tiny_paper_arch_model_is_saved_once_and_reloads_identically(key):
    path = lm.model_dir(key)
    assert path == lm.model_dir(key) and (path / "config.json").exists()
    m1, _ = lm.load_hf(key, device="cpu")
    m2, _ = lm.load_hf(key, device="cpu")
    assert all(torch.equal(x, y) for x, y in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
