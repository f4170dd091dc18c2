"""Citation markup from grounded answers becomes highlighted spans + footnotes, also while streaming."""

from __future__ import annotations

import pytest

from cohere_cli.chat.citations import CitationStream, render_citations

COMMAND_R = (
    "Relevant Documents: 0,1\nCited Documents: 0,1\nAnswer: The Emperor Penguin is the tallest.\n"
    "Grounded answer: The <co: 0>Emperor Penguin</co: 0> is the <co: 0>tallest</co: 0> and "
    "<co: 1>lives only in Antarctica</co: 1>."
)
CMD3 = "The <co>Emperor Penguin</co: 0:[1]> is <co>the tallest</co: 0:[0,1]> penguin; 3 < 4 holds."
TITLES = ["penguins.txt", "antarctica.md"]


def stream(text: str, step: int, markdown: bool) -> tuple[str, list[str]]:
    cs = CitationStream(TITLES, markdown=markdown)
    out = "".join(cs.feed(text[i : i + step]) for i in range(0, len(text), step)) + cs.finish()
    return out, cs.footnote_lines()


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_command_r_grounded_answer(step):
    out, notes = stream(COMMAND_R, step, markdown=False)
    assert out == "The Emperor Penguin[1] is the tallest[1] and lives only in Antarctica[2]."
    assert notes == ["[1] penguins.txt", "[2] antarctica.md"]
    out, _ = stream(COMMAND_R, step, markdown=True)
    assert out == "The **Emperor Penguin**[1] is the **tallest**[1] and **lives only in Antarctica**[2]."


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_cmd3_citations(step):
    out, notes = stream(CMD3, step, markdown=False)
    assert out == "The Emperor Penguin[1] is the tallest[2,1] penguin; 3 < 4 holds."
    assert notes == ["[1] antarctica.md", "[2] penguins.txt"]  # numbered in order of first citation


def test_no_raw_tag_is_ever_shown_mid_stream():
    cs = CitationStream(TITLES, markdown=False)
    shown = []
    for ch in COMMAND_R:
        shown.append(cs.feed(ch))
        assert "<co" not in "".join(shown) and "</co" not in "".join(shown)
    assert "Relevant Documents" not in "".join(shown)


def test_answer_without_grounded_section_falls_back_to_plain_answer():
    text, notes = render_citations("Relevant Documents: None\nCited Documents: None\nAnswer: I don't know.", TITLES)
    assert text == "I don't know." and notes == []


def test_citation_of_a_missing_document_is_named():
    _, notes = render_citations("x <co: 5>y</co: 5>", TITLES)
    assert notes == ["[1] document 5 (not attached)"]
