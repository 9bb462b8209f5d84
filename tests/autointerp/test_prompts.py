"""Prompt builders and reply parsers."""

from paperlib.autointerp.judge import JudgeItem
from paperlib.autointerp.prompts import (
    ACTIVATION_SYSTEM,
    DETECTION_SYSTEM,
    EXPLAIN_SYSTEM,
    FUZZ_SYSTEM,
    PICK_SYSTEM,
    activation_messages,
    binary_messages,
    explain_messages,
    likelihood_prefixes,
    parse_binary_list,
    parse_choice,
    parse_explanation,
    parse_number_list,
    pick_messages,
)

ITEMS = [JudgeItem(["a", " cat"], [False, True]), JudgeItem(["a", " dog"], [True, False])]


def test_parsers():
    assert parse_binary_list("Sure: [1, 0, 1]", 3) == [True, False, True]
    assert parse_binary_list("[1, 0]", 3) is None
    assert parse_binary_list("[1, 2, 0]", 3) is None
    assert parse_explanation("blah\nSummary: the word cat") == "the word cat"
    assert parse_explanation("") is None
    assert parse_explanation("first\nSummary: a\n**Summary:** b ") == "b"
    assert parse_explanation("thinking\nthe word cat\n\n") == "the word cat"
    assert parse_number_list("[1, 2] then [0, 7.5, -1]", 3) == [0.0, 7.5, -1.0]
    assert parse_number_list("[0, 7.5, -1] then [1, 2]", 3) == [0.0, 7.5, -1.0]
    assert parse_number_list("0, 1, 2", 3) is None and parse_number_list(None, 1) is None
    assert parse_choice("2", 2) == 1 and parse_choice("Text 1.", 2) == 0
    assert parse_choice("3", 2) is None and parse_choice("none", 2) is None and parse_choice("", 2) is None


def test_chat_messages():
    m = explain_messages(ITEMS)
    assert m[0] == {"role": "system", "content": EXPLAIN_SYSTEM}
    assert m[1] == {"role": "user", "content": "Passage 1: a<< cat>>\nPassage 2: <<a>> dog"}
    assert '"Summary:"' in EXPLAIN_SYSTEM.splitlines()[-1]
    for task, system in (("fuzz", FUZZ_SYSTEM), ("detection", DETECTION_SYSTEM)):
        m = binary_messages("cats", ITEMS, task)
        assert m[0]["content"] == system and "bracketed list of 0s and 1s" in system
        assert m[1]["content"] == ("Description of the unit: cats\n\n"
                                   "Passage 1: a<< cat>>\n\nPassage 2: <<a>> dog")
    m = activation_messages("cats", ITEMS[0])
    assert m[0]["content"] == ACTIVATION_SYSTEM
    assert m[1]["content"] == 'Description of the unit: cats\n\n2 tokens:\n1\t"a"\n2\t" cat"'
    m = pick_messages("cats", ["x", "y"])
    assert m[0]["content"] == PICK_SYSTEM
    assert m[1]["content"] == ("Description: cats\n\nPassage 1: x\n\nPassage 2: y\n\n"
                               "Which passage fits the description? Give its number.")


def test_likelihood_prefixes():
    assert likelihood_prefixes(" cats. ", fuzz=False) == (
        "The following text is about cats.\n\n", "The following text is a short excerpt.\n\n")
    assert likelihood_prefixes("cats", fuzz=True) == (
        "In the following text, the words related to cats are marked with << and >>.\n\n",
        "In the following text, some words are marked with << and >>.\n\n")


def test_the_method_sources_are_credited_where_the_prompts_are_described():
    """The scoring method is credited (Bills et al. 2023; Paulo et al. 2024, Delphi) in the prompt module, the
    README and docs/method.md, each saying the wording is this project's own."""
    from pathlib import Path

    from paperlib.autointerp import prompts

    root = Path(__file__).parents[2]
    for name, text in (("prompts.py", prompts.__doc__), ("README.md", (root / "README.md").read_text()),
                       ("docs/method.md", (root / "docs" / "method.md").read_text())):
        assert "Bills et al" in text and "Paulo et al" in text, name
        assert "own" in text, name
