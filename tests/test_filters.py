"""The Gopher dialogue heuristic: at least `min_turns` consecutive paragraphs alternating two speakers."""
from __future__ import annotations

import pytest

from rlhf.data.filters import filter_dialogues, is_dialogue


def turns(speakers: str, sep: str = "\n") -> str:
    return sep.join(f"{s}: message number {i}" for i, s in enumerate(speakers.split()))


@pytest.mark.parametrize("doc", [
    turns("A B A B A B"),
    turns("Human Assistant Human Assistant Human Assistant", sep="\n\n"),
    turns("Alice Bob Alice Bob Alice Bob Alice Bob"),
    "Some prose first.\n" + turns("A B A B A B") + "\nand prose after.",
    turns("C C A B A B A B"),  # a run starts after the repeated speaker
    turns("A B C B C B C B"),  # a third speaker starts a new pair
    "Dr. Smith: hello\n\nMr. Jones: hi\n\nDr. Smith: how are you\n\nMr. Jones: fine\n\nDr. Smith: good\n\nMr. Jones: "
    "bye",
])
def test_dialogues_pass(doc):
    assert is_dialogue(doc)


@pytest.mark.parametrize("doc", [
    "",
    "Just a paragraph of prose.\n\nAnother paragraph without any speaker.",
    turns("A B A B A"),  # five turns only
    turns("A A A A A A"),  # one speaker
    turns("A B C A B C"),  # three speakers rotating
    turns("A B A A B A B"),  # the repeat breaks the run into 3 + 4
    turns("A B A") + "\nAn interruption.\n" + turns("B A B"),
])
def test_non_dialogues_fail(doc):
    assert not is_dialogue(doc)


def test_min_turns_is_a_parameter():
    assert is_dialogue(turns("A B A"), min_turns=3)
    assert not is_dialogue(turns("A B"), min_turns=3)


def test_filter_dialogues_keeps_order():
    docs = [turns("A B A B A B"), "prose", turns("X Y X Y X Y X")]
    assert filter_dialogues(docs) == [docs[0], docs[2]]
