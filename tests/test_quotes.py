"""The Markdown of what backs an answer, read back through a CommonMark renderer (markdown-it, as
the PDF export uses; Chainlit's own renderer is checked in tests/test_quotes_browser.py)."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from ragchat.backends import Source
from ragchat.quotes import highlighted, quote_block, side_passage, unsupported_line
from ragchat.support import Quote

render = MarkdownIt("commonmark", {"html": False}).render

K2 = "The Kestrel K2 has a rotor of 18 metres and is rated at 120 kilowatts."
PASSAGE = f"## Kestrel K2\n\n{K2} It starts turning in a wind of 3.5 metres per second."


def test_a_quote_is_a_blockquote_with_its_file_and_page_then_the_answer() -> None:
    shown = quote_block([(K2, "turbines.pdf p. 3")]) + "It is rated at 120 kW."
    assert render(shown) == (
        f"<blockquote>\n<p>{K2}</p>\n<p>— turbines.pdf p. 3</p>\n</blockquote>\n"
        "<p>It is rated at 120 kW.</p>\n"
    )


def test_each_quote_is_its_own_blockquote_and_a_sentence_over_lines_is_one_line() -> None:
    block = quote_block([("It starts\nturning at 3.5 m/s.", "a.md"), ("The K2 is\n big.", "b.md")])
    assert block == (
        "> It starts turning at 3.5 m/s.\n>\n> — a.md\n\n> The K2 is big.\n>\n> — b.md\n\n"
    )
    assert render(block).count("<blockquote>") == 2
    assert quote_block([]) == ""


@pytest.mark.parametrize(
    "sentence",
    [
        K2,
        '"Quoted," she said, "and (bracketed) too."',
        "The K2 has a rotor of\n18 metres and is rated at 120 kilowatts.",
        "The **Kestrel** K2 is the middle one.",
    ],
)
def test_the_highlighted_sentence_renders_bold_and_the_rest_does_not(sentence: str) -> None:
    passage = f"Before it. {sentence} After it."
    html = render(highlighted(passage, [sentence]))
    assert html.startswith("<p>Before it. <strong>")
    assert html.rstrip().endswith("</strong> After it.</p>")
    # Nothing of the passage is lost or added but the bold.
    assert highlighted(passage, [sentence]).replace("**", "") == passage.replace("**", "")


def test_only_the_first_occurrence_is_highlighted_and_an_absent_sentence_changes_nothing() -> None:
    assert highlighted(f"{K2} {K2}", [K2]) == f"**{K2}** {K2}"
    assert highlighted(PASSAGE, ["Not in the passage."]) == PASSAGE
    assert highlighted(PASSAGE, [""]) == PASSAGE
    assert highlighted(PASSAGE, [f" {K2}\n"]) == PASSAGE.replace(K2, f"**{K2}**")


def test_the_side_passage_highlights_only_the_sentences_quoted_from_that_passage() -> None:
    k2 = Source("turbines.md", PASSAGE, page="3")
    other = Source("turbines.md", f"An older leaflet: {K2}", page="3")
    side = side_passage([k2, other], [Quote(K2, k2)])
    assert side == f"{highlighted(PASSAGE, [K2])}\n\n---\n\nAn older leaflet: {K2}"
    assert render(side).count("<strong>") == 1


def test_the_unsupported_line_names_the_terms_in_italics() -> None:
    assert unsupported_line(["1987", "Jane Doe"]) == (
        "\n\n*Not found in the sources: 1987, Jane Doe*"
    )
    assert render("Born in 1987." + unsupported_line(["1987"])) == (
        "<p>Born in 1987.</p>\n<p><em>Not found in the sources: 1987</em></p>\n"
    )
    assert unsupported_line([]) == ""
