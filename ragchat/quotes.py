"""The Markdown of what backs an answer (ragchat/support.py finds it): the supporting sentences
quoted above the answer, the same sentences highlighted in the side passages, and the line under
the answer naming what no passage holds.

Chainlit shows messages and side elements as Markdown without raw HTML (`unsafe_allow_html` is
off, and stays off: passages are whatever the documents hold), so the highlight is bold, which
Chainlit 2.12 draws as a bold span; tests/test_quotes_browser.py checks that it shows as bold.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragchat.backends import Source
from ragchat.support import Quote

# (sentence, label): a sentence as it appears in the passage, and its file and page
Cited = tuple[str, str]


def quote_block(quotes: Sequence[Cited]) -> str:
    """Each sentence as a blockquote with its file and page under it, and a blank line after,
    for the answer to follow; "" for none."""
    return "".join(
        f"> {' '.join(sentence.split())}\n>\n> — {label}\n\n" for sentence, label in quotes
    )


def highlighted(passage: str, sentences: Sequence[str]) -> str:
    """The passage with each of the sentences in bold where it first appears."""
    for sentence in sentences:
        # Bold must not open or close next to a space: it would show as two asterisks.
        if (core := sentence.strip()) and core in passage:
            passage = passage.replace(core, f"**{core}**", 1)
    return passage


def unsupported_line(terms: Sequence[str]) -> str:
    """The line under an answer naming the terms no passage holds; "" for none."""
    return f"\n\n*Not found in the sources: {', '.join(terms)}*" if terms else ""


def cited(quotes: Sequence[Quote]) -> list[Cited]:
    return [(quote.sentence, quote.source.label) for quote in quotes]


def side_passage(passages: Sequence[Source], quotes: Sequence[Quote]) -> str:
    """The passages of one file and page as the side element shows them, with the sentences
    quoted from each in bold."""
    return "\n\n---\n\n".join(
        highlighted(passage.text, [q.sentence for q in quotes if q.source == passage])
        for passage in passages
    )
