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
    assert (p.layer, p.n_latents, p.k, p.n_meta, p.k_meta) == (20, 20480, 64, 1800, 8)
    g = PROFILES["gemma-2-9b"]
    assert (g.layer, g.n_latents, g.k) == (23, 65536, 100)

