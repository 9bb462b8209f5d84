"""Profile overrides (issue 17, case 2): an overridden profile has its own identity (folder), and a run or
cache built for other settings is refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

import paperlib.sae.trainer as tr
from paperlib.config import paths
from paperlib.config.io import write_json
from paperlib.config.profiles import get_profile
from paperlib.data import activations
from paperlib.stages.run import Run, range_settings

D = 16


def test_overridden_profile_has_its_own_identity(tmp_artifacts):
    smoke = get_profile("smoke")
    assert smoke.identity == "smoke" and get_profile("smoke", layer=3).identity == "smoke"  # no change: same
    l2, other_model = get_profile("smoke", layer=2), get_profile("smoke", model="tiny-smollm2")
    assert l2.name == "smoke" and l2.identity.startswith("smoke-")
    assert len({smoke.identity, l2.identity, other_model.identity}) == 3
    assert get_profile("smoke", layer=2).identity == l2.identity  # stable
    assert get_profile("smoke", recon_tokens=100).identity == "smoke"  # evaluation settings are keyed per stage
    assert paths.profile_dir(l2) != paths.profile_dir("smoke")
    assert Run.of(l2, "solo").dir != Run.of("smoke", "solo").dir
    assert paths.output_dirs(l2) != paths.output_dirs("smoke")
    assert paths.output_dirs(get_profile("default", layer=5))[0] != paths.REPO_ROOT / "figures"


def test_a_run_trained_on_other_activations_is_refused(tmp_path):
    p3 = get_profile("smoke", n_latents=48, k=4, batch_size=32, train_epochs=1.0, dead_after=2, k_aux=8,
                     n_meta=8, k_meta=2)
    p2 = p3.replace(layer=2)
    acts = np.random.default_rng(0).standard_normal((128, D)).astype(np.float16)
    info3 = {"range": "train", "data": range_settings(p3, "train")}
    tr.train_run(p3, "solo", acts, tmp_path / "solo", progress=False, device="cpu", data_info=info3)
    info2 = {"range": "train", "data": range_settings(p2, "train")}
    with pytest.raises(ValueError, match=r"trained on other activations \(layer differ: trained \[3\], "
                                         r"requested \[2\]\); delete the run directory"):
        tr.train_run(p2, "solo", acts, tmp_path / "solo", progress=False, device="cpu", data_info=info2)


def test_a_cache_built_for_other_settings_is_refused(tmp_artifacts):
    l2 = get_profile("smoke", layer=2)
    root = activations.activations_dir(l2)
    write_json(root / "manifest.json", {"settings": activations.cache_settings("smoke"), "complete": {}, "d": 8})
    with pytest.raises(activations.CacheMismatchError, match="layer, profile differ"):
        activations.load_cache(l2, build=False)
