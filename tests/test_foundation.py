"""Profiles, corpus token ranges, offline LMs and the activation cache (issue: foundation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from paperlib import activations, corpus, lm
from paperlib.profiles import PROFILES, TokenBudget, get_profile
from paperlib.runs import RunSpec, grid_runs, parse_run, select_runs


def tiny_profile(**changes):
    """A seconds-fast profile on the random tiny SmolLM2-architecture model."""
    base = dict(
        model="tiny-smollm2", layer=2, context=32, lm_batch_size=8,
        tokens=TokenBudget(train=2048, calibration=512, cooccurrence=512, autointerp=512, ce=256),
    )
    base.update(changes)
    return get_profile("smoke", **base)


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


def test_token_ranges_disjoint_and_deterministic():
    for name in PROFILES:
        r = corpus.token_ranges(name)
        spans = sorted(r.spans.values())
        for (_a0, a1), (b0, _b1) in zip(spans, spans[1:], strict=False):
            assert a1 <= b0, f"{name}: ranges overlap"
        assert all(b > a for a, b in spans)
        assert corpus.token_ranges(name) == r


def test_bbc_corpus_deterministic():
    a, b = corpus.bbc_documents(), corpus.bbc_documents()
    assert len(a) == 2225
    assert [d.doc_id for d in a] == [d.doc_id for d in b]
    assert {d.label for d in a} == {"business", "entertainment", "politics", "sports", "tech"}


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'bbc', 'fineweb' nor an existing path"):
        list(corpus.iter_documents(str(tmp_path / "nope.txt")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt, .jsonl or .parquet"):
        list(corpus.iter_documents(str(tmp_path / "empty")))


def test_local_jsonl_corpus_and_token_matrix(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = (json.dumps({"text": f"The cat sat on the mat number {i}."}) for i in range(400))
    path.write_text("\n".join(lines))
    p = tiny_profile(corpus=str(path))
    _, tok = lm.load_hf("tiny-smollm2")
    m1 = corpus.build_token_matrix(p, tok, progress=False)
    m2 = corpus.build_token_matrix(p, tok, progress=False)
    assert m1.shape == (corpus.token_ranges(p).n_rows, p.context)
    assert (m1[:, 0] == lm.bos_token_id(tok)).all()
    np.testing.assert_array_equal(m1, m2)


def test_corpus_too_small_is_a_clear_error(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("just a few words")
    _, tok = lm.load_hf("tiny-smollm2")
    with pytest.raises(ValueError, match="shrink the profile's token budget"):
        corpus.build_token_matrix(tiny_profile(corpus=str(path)), tok, progress=False)


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
    pos = cache.positions("calibration")[: 2 * (p.context - 1)]
    np.testing.assert_allclose(cache.acts("calibration")[: len(pos)].astype(np.float32),
                               ref[pos[:, 0], pos[:, 1]].numpy(), rtol=1e-3, atol=1e-3)
    # a cache built for other settings is refused, never silently reused
    with pytest.raises(activations.CacheMismatchError, match="layer differ"):
        activations.load_cache(p.replace(layer=1), progress=False)


def test_runs_names_round_trip():
    for spec in grid_runs("default"):
        assert parse_run(spec.name) == spec
    assert parse_run("joint-l0.3-s1.0") == RunSpec("joint", lambda2=0.3, sigma2=1.0)
    assert [r.name for r in select_runs("smoke", "solo,control")] == ["solo", "control"]
    with pytest.raises(ValueError, match="cannot parse run name"):
        parse_run("jointy")
    names = [r.name for r in grid_runs("default")]
    assert names[0] == "solo" and "control" in names and "solo-seed3" in names
    assert sum(n.startswith("joint-") for n in names) == 9


def test_git_revision_ignores_published_outputs(tmp_path):
    """A run rewrites figures/ and tables/; only other tracked changes make the revision dirty."""
    import shutil
    import subprocess

    from paperlib.io import git_revision

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "t.md").write_text("a")
    (tmp_path / "code.py").write_text("a")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(git + ["add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "x"], cwd=tmp_path, check=True)
    clean = git_revision(tmp_path)
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "tables" / "t.md").write_text("b")
    assert git_revision(tmp_path) == clean
    (tmp_path / "code.py").write_text("b")
    assert git_revision(tmp_path) == clean + "-dirty"
    assert git_revision(tmp_path / "tables") == clean + "-dirty"  # from a subfolder too
