"""Corpus and disjoint token ranges."""


from __future__ import annotations

import json

import numpy as np
import pytest

from paperlib.config.profiles import PROFILES
from paperlib.data import corpus, lm
from tests.helpers import tiny_profile


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
    assert m1.shape == (corpus.token_ranges(p).n_rows, p.data.context)
    assert (m1[:, 0] == lm.bos_token_id(tok)).all()
    np.testing.assert_array_equal(m1, m2)


def test_corpus_too_small_is_a_clear_error(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("just a few words")
    _, tok = lm.load_hf("tiny-smollm2")
    with pytest.raises(ValueError, match="shrink the profile's token budget"):
        corpus.build_token_matrix(tiny_profile(corpus=str(path)), tok, progress=False)

