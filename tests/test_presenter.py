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
from ragchat.history import HistoryDataLayer
from ragchat.presenter import (
    kept_settings,
    may_add_documents,
    pdf_offers,
    render_answer,
    saved_state,
    starter_question,
    state_to_save,
)
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
    layer = HistoryDataLayer(tmp_path / "history.db", tmp_path / "files")
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
