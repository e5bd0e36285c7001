"""The presenter: the chat's rules as plain functions, and a backend's events rendered by
Chainlit's own message classes into the real history (SQLite), then read back as a resumed
chat reads them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import chainlit as cl
import chainlit.data
import pytest
from chainlit.context import init_http_context
from chainlit.user import User as ChainlitUser

from ragchat.auth import User
from ragchat.backends import AnswerFailed, Event, QuestionRejected, Source, Sources, Step, Token
from ragchat.history import HistoryDataLayer, SqliteHistory
from ragchat.presenter import (
    kept_settings,
    may_add_documents,
    pdf_offers,
    render_answer,
    saved_state,
    starter_question,
    state_to_save,
)
from ragchat.quotes import cited, quote_block
from ragchat.support import supporting_sentences
from ragchat.transcript import turns_from_thread

ADMIN = User("carol", "admin", disabled=False, session_key=None)
MEMBER = User("alice", "user", disabled=False, session_key=None)


class ScriptedChat:
    """A chat whose answer is the given events, then the given failure, if any."""

    top_k, top_k_max, mode = 3, 12, "hybrid"

    def __init__(
        self,
        events: Sequence[Event] = (),
        failure: Exception | None = None,
        uploads_shared: bool = True,
        state: dict | None = None,
    ):
        self.events, self.failure = events, failure
        self.uploads_shared, self.state = uploads_shared, state or {}

    async def ask(self, question: str) -> AsyncIterator[Event]:
        for event in self.events:
            yield event
        if self.failure:
            raise self.failure


# The rules


@pytest.mark.parametrize(
    ("account", "shared", "allowed"),
    [
        (ADMIN, True, True),
        (MEMBER, True, False),  # the library everyone searches: administrators only
        (MEMBER, False, True),  # the conversation's own documents: anyone
        (None, False, False),  # a session whose account has ended
    ],
)
def test_who_may_add_documents(account: User | None, shared: bool, allowed: bool) -> None:
    assert may_add_documents(account, ScriptedChat(uploads_shared=shared)) is allowed
    assert may_add_documents(account, None) is False


@pytest.mark.parametrize(
    ("payload", "question"),
    [
        ({"question": "Which models?"}, "Which models?"),
        ({"question": "Anything I like, as the thread's title"}, None),
        ({"question": ["Which models?"]}, None),
        ({}, None),
        ("Which models?", None),
    ],
)
def test_a_starter_asks_only_a_question_the_chat_offers(payload: object, question: str) -> None:
    assert starter_question(payload, ["Which models?", "How do I add documents?"]) == question


def test_a_thread_keeps_the_settings_in_use_and_the_backends_state() -> None:
    chat = ScriptedChat(state={"conversation": "conv_1"})
    assert kept_settings(chat) == {"top_k": 3, "mode": "hybrid"}
    assert state_to_save(chat) == {"backend_state": {"conversation": "conv_1"}}
    assert state_to_save(ScriptedChat()) is None  # nothing beyond the messages
    assert saved_state({"metadata": state_to_save(chat)}) == {"conversation": "conv_1"}
    assert saved_state({"metadata": None}) is None


def step(kind: str, output: str, at: int, **fields: object) -> dict:
    return {
        "id": f"{kind}-{at}",
        "type": kind,
        "output": output,
        "createdAt": f"2026-11-22T10:00:{at:02}Z",
        "metadata": {},
        **fields,
    }


def test_the_answer_after_an_uploads_summary_is_the_one_resumed() -> None:
    thread = {
        "steps": [
            step("assistant_message", "Welcome", 0),
            step("user_message", "What is in stew.md?", 1),
            step("assistant_message", "Added stew.md (1 passage)", 2),
            step(
                "assistant_message",
                "Saffron.\n\nSources: stew.md",
                3,
                metadata={"sources": ["stew.md"]},
            ),
            step("assistant_message", "The answer as a PDF:", 4),
        ]
    }
    assert turns_from_thread(thread)[1].content == "Saffron."
    assert pdf_offers(thread) == [("What is in stew.md?", "assistant_message-3")]


def test_what_an_answer_cites_is_read_from_its_metadata_not_its_text() -> None:
    thread = {
        "steps": [
            step("user_message", "How do I cite?", 1),
            # The model wrote a line of its own like the app's; the answer cites nothing.
            step(
                "assistant_message",
                "End with a list.\n\nSources: your notes",
                2,
                metadata={"sources": []},
            ),
        ]
    }
    assert pdf_offers(thread) == []
    assert turns_from_thread(thread)[1].content == "End with a list.\n\nSources: your notes"


# The rendering, through Chainlit's classes into the real history


@pytest.fixture
async def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HistoryDataLayer:
    """The history as the app's data layer, in a Chainlit context of a signed-in user."""
    layer = HistoryDataLayer(SqliteHistory(tmp_path / "history.db"), tmp_path / "files")
    monkeypatch.setattr(chainlit.data, "_data_layer", layer)
    monkeypatch.setattr(chainlit.data, "_data_layer_initialized", True)
    user = await layer.create_user(ChainlitUser(identifier="alice"))
    init_http_context(thread_id=str(uuid.uuid4()), user=user)
    return layer


async def written() -> None:
    """Until Chainlit's writes, which it starts as tasks, have landed."""
    while pending := asyncio.all_tasks() - {asyncio.current_task()}:
        await asyncio.wait(pending, timeout=10)


async def asked_and_read_back(history: HistoryDataLayer, chat: ScriptedChat) -> dict:
    question = "Which file types are supported?"
    await cl.Message(content=question, type="user_message", author="alice").send()
    await written()  # as in the app, the question is stored long before its answer ends
    await render_answer(chat, question)
    await written()
    return await history.get_thread(cl.context.session.thread_id)


def answers(thread: dict) -> list[dict]:
    return [s for s in thread["steps"] if s["type"] == "assistant_message"]


async def test_an_answer_from_the_documents_is_stored_with_its_sources(
    history: HistoryDataLayer,
) -> None:
    chat = ScriptedChat(
        [
            Step("Retrieve", "Which file types are supported?", "2 passages"),
            Token("Markdown "),
            Token("and PDF."),
            Sources(
                (
                    Source("guide.md", "Markdown (.md)"),
                    Source("manual.pdf", "PDF files", page="2"),
                    Source("guide.md", "and PDF"),
                )
            ),
        ]
    )
    thread = await asked_and_read_back(history, chat)
    [answer] = answers(thread)
    # What the user reads, and what is stored besides.
    assert answer["output"] == "Markdown and PDF.\n\nSources: guide.md, manual.pdf p. 2"
    assert answer["metadata"] == {"sources": ["guide.md", "manual.pdf p. 2"]}
    side = {e["name"]: e for e in thread["elements"]}
    assert set(side) == {"guide.md", "manual.pdf p. 2"}
    assert {e["forId"] for e in side.values()} == {answer["id"]}
    assert [s["name"] for s in thread["steps"] if s["type"] == "retrieval"] == ["Retrieve"]
    # Read back as a resumed chat reads it.
    assert turns_from_thread(thread)[1].content == "Markdown and PDF."
    assert pdf_offers(thread) == [("Which file types are supported?", answer["id"])]


async def test_an_answer_that_found_nothing_offers_no_pdf(history: HistoryDataLayer) -> None:
    thread = await asked_and_read_back(
        history, ScriptedChat([Token("I found nothing in the documents."), Sources(())])
    )
    [answer] = answers(thread)
    assert (answer["output"], answer["metadata"]) == (
        "I found nothing in the documents.",
        {"sources": []},
    )
    assert pdf_offers(thread) == []


async def test_a_cut_answer_is_kept_marked_as_incomplete(history: HistoryDataLayer) -> None:
    chat = ScriptedChat(
        [Token("Markdown and")], failure=AnswerFailed("the model stopped", partial=True)
    )
    thread = await asked_and_read_back(history, chat)
    [answer] = answers(thread)
    assert answer["output"] == "Markdown and\n\n*Incomplete answer: the model stopped*"
    assert turns_from_thread(thread)[1].content == answer["output"]
    assert pdf_offers(thread) == []


async def test_a_rejected_question_gets_its_reason_and_no_answer(
    history: HistoryDataLayer,
) -> None:
    chat = ScriptedChat(failure=QuestionRejected("The question is empty; type one."))
    thread = await asked_and_read_back(history, chat)
    [error] = answers(thread)
    assert (error["output"], error["isError"]) == ("The question is empty; type one.", True)
    assert turns_from_thread(thread) == []


# What backs an answer: the sentences ragchat/support.py picks, quoted before the answer; the
# terms no passage holds, named under it

K2_RATING = "The Kestrel K2 has a rotor of 18 metres and is rated at 120 kilowatts."
K2 = Source("turbines.md", f"## Kestrel K2\n\n{K2_RATING} It was first installed in 2012.", "2")
K3 = Source("k3.md", "The Kestrel K3 was designed by Maria Lindqvist.")
ASKED = "What is the Kestrel K2 rated at?"


def quoted_from(passages: Sequence[Source]) -> tuple[str, list[dict]]:
    """What the answer to ASKED over the passages starts with, and the metadata naming it."""
    quotes = supporting_sentences(ASKED, passages)
    assert quotes[0].sentence == K2_RATING  # the best support: these tests need one
    return quote_block(cited(quotes)), [
        {"sentence": sentence, "source": label} for sentence, label in cited(quotes)
    ]


async def answered(history: HistoryDataLayer, chat: ScriptedChat) -> dict:
    await cl.Message(content=ASKED, type="user_message", author="alice").send()
    await written()
    await render_answer(chat, ASKED)
    await written()
    return await history.get_thread(cl.context.session.thread_id)


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each answer streams, in order, through Chainlit's own stream_token."""
    pieces: list[str] = []
    stream_token = cl.Message.stream_token

    async def recorded(self: cl.Message, token: str, is_sequence: bool = False) -> None:
        pieces.append(token)
        await stream_token(self, token, is_sequence)

    monkeypatch.setattr(cl.Message, "stream_token", recorded)
    return pieces


async def test_the_supporting_sentence_is_quoted_before_the_answer_and_kept_out_of_memory(
    history: HistoryDataLayer, streamed: list[str]
) -> None:
    quote, named = quoted_from([K2])
    chat = ScriptedChat(
        [
            Step("Retrieve", ASKED, "1 passage"),
            Sources((K2,)),
            Token("It is rated "),
            Token("at 120 kilowatts."),
        ]
    )
    thread = await answered(history, chat)
    assert streamed == [quote, "It is rated ", "at 120 kilowatts."]
    assert quote.startswith(f"> {K2_RATING}\n>\n> — turbines.md p. 2\n\n")
    [answer] = answers(thread)
    assert answer["output"] == quote + "It is rated at 120 kilowatts.\n\nSources: turbines.md p. 2"
    assert answer["metadata"] == {"sources": ["turbines.md p. 2"], "quotes": named}
    [side] = thread["elements"]
    assert side["name"] == "turbines.md p. 2"
    shown_side = history.storage.path_of(side["objectKey"]).read_text()
    assert f"**{K2_RATING}**" in shown_side and shown_side.replace("**", "") == K2.text
    # The model remembers its own words only; the PDF button is offered as before.
    assert turns_from_thread(thread)[1].content == "It is rated at 120 kilowatts."
    assert pdf_offers(thread) == [(ASKED, answer["id"])]


async def test_terms_no_passage_holds_are_named_under_the_answer(
    history: HistoryDataLayer,
) -> None:
    quote, _ = quoted_from([K2])
    chat = ScriptedChat([Sources((K2,)), Token("It is rated at 150 kilowatts, since 2012.")])
    thread = await answered(history, chat)
    [answer] = answers(thread)
    assert answer["output"] == (
        quote + "It is rated at 150 kilowatts, since 2012."
        "\n\n*Not found in the sources: 150*\n\nSources: turbines.md p. 2"
    )
    assert answer["metadata"]["unsupported"] == ["150"]
    assert turns_from_thread(thread)[1].content == "It is rated at 150 kilowatts, since 2012."


async def test_the_quote_comes_from_the_passages_found_and_the_side_from_those_cited(
    history: HistoryDataLayer, streamed: list[str]
) -> None:
    # As the hosted assistant answers: all it found first, then only what the answer cites.
    quote, _ = quoted_from([K3, K2])
    chat = ScriptedChat(
        [
            Sources((K3, K2)),
            Token("120 kilowatts; Maria Lindqvist designed the K3."),
            Sources((K2,)),
        ]
    )
    thread = await answered(history, chat)
    [answer] = answers(thread)
    assert streamed == [quote, "120 kilowatts; Maria Lindqvist designed the K3."]
    # Checked against all it found: the name is in a passage the answer does not cite.
    assert answer["output"].endswith("designed the K3.\n\nSources: turbines.md p. 2")
    assert [e["name"] for e in thread["elements"]] == ["turbines.md p. 2"]


async def test_sources_after_the_answer_began_quote_nothing(
    history: HistoryDataLayer, streamed: list[str]
) -> None:
    chat = ScriptedChat([Token("It is rated at 120 kilowatts."), Sources((K2,))])
    thread = await answered(history, chat)
    [answer] = answers(thread)
    assert streamed == ["It is rated at 120 kilowatts."]
    assert answer["metadata"] == {"sources": ["turbines.md p. 2"]}
    assert answer["output"] == "It is rated at 120 kilowatts.\n\nSources: turbines.md p. 2"


async def test_an_answer_that_fails_after_its_quote_keeps_the_quote_marked_incomplete(
    history: HistoryDataLayer,
) -> None:
    quote, named = quoted_from([K2])
    chat = ScriptedChat([Sources((K2,))], failure=AnswerFailed("The model is unreachable."))
    thread = await answered(history, chat)
    [answer] = answers(thread)
    assert answer["output"] == quote + "\n\n*Incomplete answer: The model is unreachable.*"
    assert answer["metadata"] == {"sources": [], "quotes": named}
    assert turns_from_thread(thread)[1].content == "*Incomplete answer: The model is unreachable.*"


@pytest.mark.parametrize(
    "metadata",
    [
        {"sources": []},  # stored before answers had quotes
        {"sources": [], "quotes": "> It is what it is."},
        {"sources": [], "quotes": [{"sentence": 3, "source": "a.md"}]},
        {"sources": [], "unsupported": [None]},
    ],
)
def test_an_answer_without_well_formed_quotes_is_remembered_as_written(metadata: dict) -> None:
    written_by_model = (
        "> It is what it is.\n>\n> — a.md\n\nQuoting myself.\n\n*Not found in the sources: None*"
    )
    thread = {
        "steps": [
            step("user_message", "Quote yourself", 1),
            step("assistant_message", written_by_model, 2, metadata=metadata),
        ]
    }
    assert turns_from_thread(thread)[1].content == written_by_model
