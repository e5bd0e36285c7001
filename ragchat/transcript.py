"""A conversation as the history keeps it: each answer stored with the sources it cites, and a
stored thread read back as questions and answers.

An answer's step carries the labels of its sources in its metadata (`{"sources": [...]}`, an
empty list for an answer that cites none); its text ends with the "Sources:" line the user
reads. The sentences quoted above the answer and the terms no passage holds are part of the text
too, so a resumed conversation shows exactly what was shown, and the metadata names them
(`"quotes": [{"sentence", "source"}]`, `"unsupported": [...]`, only when there are any). What is
decided later (a resumed answer's PDF button, the memory a resumed chat starts from) reads the
metadata, never the text: the model's memory gets its own words, without the quotes or lines the
app added.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from chainlit.step import StepDict
from chainlit.types import ThreadDict

from ragchat.backends import Turn
from ragchat.quotes import Cited, quote_block, unsupported_line

SOURCES, QUOTES, UNSUPPORTED = "sources", "quotes", "unsupported"  # the answer's metadata keys


def with_sources(
    shown: str, labels: Sequence[str], quotes: Sequence[Cited] = (), unsupported: Sequence[str] = ()
) -> tuple[str, dict]:
    """An answer's text as shown (`shown`: the quote block of `quotes`, if any, then the answer),
    with the line naming the `unsupported` terms and the "Sources:" line when it cites any
    (Chainlit links each label to the side element of that name), and the metadata stored with
    it."""
    metadata: dict = {SOURCES: list(labels)}
    if quotes:
        metadata[QUOTES] = [{"sentence": sentence, "source": label} for sentence, label in quotes]
    if unsupported:
        metadata[UNSUPPORTED] = list(unsupported)
    return shown + unsupported_line(unsupported) + _sources_line(labels), metadata


@dataclass(frozen=True)
class StoredAnswer:
    text: str  # as the model wrote it: without the "Sources:" line
    cites_sources: bool


def stored_answer(step: StepDict) -> StoredAnswer:
    output = (step.get("output") or "").strip()
    labels = _stored_labels(step)
    if labels is None:
        return _stored_by_previous_version(output)
    metadata = step["metadata"]
    text = output.removesuffix(_sources_line(labels))
    text = text.removesuffix(unsupported_line(_strings(metadata.get(UNSUPPORTED))))
    text = text.removeprefix(quote_block(_stored_quotes(metadata)).rstrip())
    return StoredAnswer(text.strip(), bool(labels))


def exchanges(thread: ThreadDict) -> list[tuple[StepDict, StepDict]]:
    """Each question of a stored thread with its answer: the first message after it that
    carries the sources fact (a message such as an upload's summary may come before it), or,
    in a conversation stored before answers carried it, the first message after it. The welcome
    message, error messages and later messages (such as a PDF export) answer no question."""
    pairs: list[tuple[StepDict, StepDict]] = []
    question: StepDict | None = None
    replies: list[StepDict] = []
    for step in sorted(thread.get("steps", []), key=lambda s: s.get("createdAt") or ""):
        if step.get("isError") or not (step.get("output") or "").strip():
            continue
        if step["type"] == "user_message":
            if question is not None and replies:
                pairs.append((question, _answer_among(replies)))
            question, replies = step, []
        elif step["type"] == "assistant_message" and question is not None:
            replies.append(step)
    if question is not None and replies:
        pairs.append((question, _answer_among(replies)))
    return pairs


def turns_from_thread(thread: ThreadDict) -> list[Turn]:
    """The conversation of a stored thread, for a resumed chat's memory."""
    turns: list[Turn] = []
    for question, answer in exchanges(thread):
        turns.append(Turn("user", question["output"].strip()))
        turns.append(Turn("assistant", stored_answer(answer).text))
    return turns


def _sources_line(labels: Sequence[str]) -> str:
    return "\n\nSources: " + ", ".join(labels) if labels else ""


def _stored_labels(answer: StepDict) -> list[str] | None:
    """The labels the answer's metadata names; None for a step that does not carry the fact."""
    metadata = answer.get("metadata")
    labels = metadata.get(SOURCES) if isinstance(metadata, dict) else None
    if isinstance(labels, list) and all(isinstance(label, str) for label in labels):
        return labels
    return None


def _strings(value: object) -> list[str]:
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else []


def _stored_quotes(metadata: dict) -> list[Cited]:
    quotes = metadata.get(QUOTES)
    if not isinstance(quotes, list) or not all(isinstance(q, dict) for q in quotes):
        return []
    cited = [(q.get("sentence"), q.get("source")) for q in quotes]
    return cited if all(isinstance(part, str) for pair in cited for part in pair) else []


def _answer_among(replies: list[StepDict]) -> StepDict:
    marked = (step for step in replies if _stored_labels(step) is not None)
    return next(marked, replies[0])  # replies[0]: stored by the previous version


# Fallback for conversations stored by ragchat before answers carried their sources in the
# step's metadata: the "Sources:" line at the end of the text was the only record of them.
_PREVIOUS_VERSION_LINE = re.compile(r"\n\nSources: [^\n]*$")


def _stored_by_previous_version(output: str) -> StoredAnswer:
    text, found = _PREVIOUS_VERSION_LINE.subn("", output)
    return StoredAnswer(text.strip(), found > 0)
