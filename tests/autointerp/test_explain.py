"""The context explainer tells apart two latents that fire on the same token in different senses."""

import pytest

from paperlib.autointerp.explain import ContextExplainer
from paperlib.autointerp.judge import JudgeItem


def _item(before, word=" bank"):
    toks = [" the", *before, " the", word, " ."]
    return JudgeItem(toks, [t == word for t in toks])


def test_same_token_different_senses_get_different_explanations():
    bg = {" the": 1000, " river": 5, " water": 5, " interest": 5, " loan": 5, " bank": 20, " .": 500}
    ex = ContextExplainer(bg)
    river = ex.explain([_item([" river", " water"]), _item([" river"]), _item([" water", " fish"])])
    money = ex.explain([_item([" interest", " loan"]), _item([" loan"]), _item([" interest"])])
    assert river != money
    assert '"bank"' in river and '"river"' in river and '"water"' in river and "loan" not in river
    assert '"bank"' in money and '"loan"' in money and '"interest"' in money and "river" not in money


def test_rare_words_rank_first_and_parameters_are_checked():
    bg = {" common": 10_000, " rare": 1}
    ex = ContextExplainer(bg, n_context=1)
    out = ex.explain([_item([" common", " rare"]) for _ in range(3)])
    assert '"rare"' in out and "common" not in out
    assert "im_start" not in ContextExplainer({}).explain([_item(["<|im_start|>", " x"]) for _ in range(3)])
    assert ex.explain([JudgeItem([" a"], [False])]) == "unclear text patterns"
    with pytest.raises(ValueError, match="n_before"):
        ContextExplainer(bg, n_before=0)
