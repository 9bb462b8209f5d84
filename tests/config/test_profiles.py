"""Profiles: selection, validation, paper sizes."""


from __future__ import annotations

import pytest

from paperlib.config.profiles import PROFILES, get_profile


def test_profiles_selectable_and_unknown_name_lists_valid():
    for name in ("default", "smoke", "gpt2-large", "gemma-2-9b", "gemma-3-270m"):
        assert get_profile(name).name == name
    with pytest.raises(ValueError, match="valid profiles: .*default.*smoke"):
        get_profile("gpt5")


def test_profile_validation():
    with pytest.raises(ValueError, match="k=.*exceeds"):
        get_profile("smoke", k=10_000)
    with pytest.raises(ValueError, match="sigma2"):
        get_profile("smoke", grid_sigma2=(0.0,))


def test_paper_profiles_match_spec():
    p = PROFILES["gpt2-large"]
    assert (p.data.layer, p.sae.n_latents, p.sae.k, p.meta.n_meta, p.meta.k_meta) == (20, 20480, 64, 1800, 8)
    g = PROFILES["gemma-2-9b"]
    assert (g.data.layer, g.sae.n_latents, g.sae.k) == (23, 65536, 100)



def test_profiles_are_nested_by_concern_and_flat_overrides_route():
    from paperlib.config.profiles import FIELD_GROUPS, SAEConfig

    p = get_profile("smoke", lr=1e-3, layer=2, primary_seeds=3, recon_tokens=100)
    assert (p.sae.lr, p.data.layer, p.grid.primary_seeds, p.eval.recon_tokens) == (1e-3, 2, 3, 100)
    assert p.setting("lr") == p.sae.lr and FIELD_GROUPS["n_meta"] == "meta"
    q = p.replace(sae=SAEConfig(n_latents=128, k=4), name="other")
    assert q.sae.n_latents == 128 and q.name == "other" and q.data == p.data
    with pytest.raises(ValueError, match="unknown profile setting 'n_latent'"):
        get_profile("smoke", n_latent=3)
    with pytest.raises(ValueError, match="k=300 exceeds"):
        get_profile("smoke", k=300)
