"""Writes by id into another user's conversation, over the running app: alice has a
conversation with a source; bob, signed in as himself, reuses her ids over Socket.IO and over
Chainlit's element and thread routes. Her rows and files stay as they were, and her thread ids
answer exactly as unknown ones do. An oversize message is stored cut, never in full."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ragchat.backends import MAX_QUESTION_CHARS
from ragchat.history import LocalStorage

from ..running_app import RunningApp
from ..socket_client import ChatClient
from .conftest import ALICE, BOB, history_rows, signed_in, stored_rows


@dataclass(frozen=True)
class Conversation:
    thread: str
    question: str  # the id of her question's step
    element: dict  # a source element of her answer, as stored


def cookies_of(app: RunningApp, user: tuple[str, str]) -> dict[str, str]:
    with signed_in(app, *user) as client:
        return dict(client.cookies)


def thread_snapshot(app: RunningApp, thread_id: str) -> dict[str, list[dict]]:
    """Every row of a thread, and whether each element's file is on disk."""
    snapshot = {
        "threads": history_rows(app, 'SELECT * FROM threads WHERE "id" = ?', thread_id),
        "steps": history_rows(
            app, 'SELECT * FROM steps WHERE "threadId" = ? ORDER BY "id"', thread_id
        ),
        "elements": history_rows(
            app, 'SELECT * FROM elements WHERE "threadId" = ? ORDER BY "id"', thread_id
        ),
        "feedbacks": history_rows(
            app, 'SELECT * FROM feedbacks WHERE "threadId" = ? ORDER BY "id"', thread_id
        ),
    }
    storage = LocalStorage(Path(app.env["HISTORY_FILES_DIR"]))
    snapshot["files"] = [
        {"key": row["objectKey"], "on disk": storage.path_of(row["objectKey"]).is_file()}
        for row in snapshot["elements"]
        if row["objectKey"]
    ]
    return snapshot


def wait_for_writes(app: RunningApp, thread_id: str) -> None:
    """Until the thread's rows stop changing: Chainlit writes in tasks after showing."""
    previous = None
    while (current := thread_snapshot(app, thread_id)) != previous:
        previous = current
        time.sleep(1.5)


@pytest.fixture(scope="module")
async def alices(app: RunningApp) -> Conversation:
    async with ChatClient(app.url, cookies_of(app, ALICE)) as chat:
        exchange = await chat.ask("How do I add my own documents?")
    assert "Sources:" in exchange.answer, exchange.events
    [question] = stored_rows(app, 'SELECT * FROM steps WHERE "id" = ?', exchange.message["id"])
    assert question["threadId"] == chat.thread_id
    elements = stored_rows(app, 'SELECT * FROM elements WHERE "threadId" = ?', chat.thread_id)
    assert elements and elements[0]["objectKey"], "her answer has a stored source"
    wait_for_writes(app, chat.thread_id)
    return Conversation(chat.thread_id, question["id"], elements[0])


async def bobs_first_message(chat: ChatClient) -> None:
    # An empty question is refused at once; after it Chainlit writes instead of queueing.
    exchange = await chat.ask(" ")
    assert exchange.errors, exchange.events


async def test_a_message_reusing_her_step_id_leaves_her_conversation_as_it_was(
    app: RunningApp, alices: Conversation
) -> None:
    before = thread_snapshot(app, alices.thread)
    async with ChatClient(app.url, cookies_of(app, BOB)) as chat:
        await chat.ask("How do I sign in?", id=alices.question)
    wait_for_writes(app, chat.thread_id)

    assert thread_snapshot(app, alices.thread) == before
    [question] = history_rows(app, 'SELECT * FROM steps WHERE "id" = ?', alices.question)
    assert question["threadId"] == alices.thread
    assert question["output"] == "How do I add my own documents?"
    # Bob's own conversation goes on, without the message he tried to pass off as hers.
    assert history_rows(app, 'SELECT * FROM threads WHERE "id" = ?', chat.thread_id)


async def test_an_element_naming_her_thread_is_not_stored(
    app: RunningApp, alices: Conversation
) -> None:
    before = thread_snapshot(app, alices.thread)
    planted = str(uuid.uuid4())
    async with ChatClient(app.url, cookies_of(app, BOB)) as chat:
        await bobs_first_message(chat)
        async with httpx.AsyncClient(base_url=app.url, cookies=chat.cookies) as http:
            response = await http.put(
                "/project/element",
                json={
                    "sessionId": chat.session_id,
                    "element": {
                        "type": "custom",
                        "id": planted,
                        "forId": alices.question,
                        "threadId": alices.thread,
                        "name": "note",
                        "display": "inline",
                        "props": {"text": "bob was here"},
                    },
                },
            )
        assert response.status_code in (200, 404), response.text
        await asyncio.sleep(3)  # Chainlit stores the element in a task of its own

    assert history_rows(app, 'SELECT * FROM elements WHERE "id" = ?', planted) == []
    assert thread_snapshot(app, alices.thread) == before


async def test_deleting_her_element_deletes_nothing(app: RunningApp, alices: Conversation) -> None:
    before = thread_snapshot(app, alices.thread)
    assert {"key": alices.element["objectKey"], "on disk": True} in before["files"]
    async with ChatClient(app.url, cookies_of(app, BOB)) as chat:
        await bobs_first_message(chat)
        async with httpx.AsyncClient(base_url=app.url, cookies=chat.cookies) as http:
            for thread in (alices.thread, chat.thread_id):  # hers, or his own, named with it
                response = await http.request(
                    "DELETE",
                    "/project/element",
                    json={
                        "sessionId": chat.session_id,
                        "element": {
                            "type": "custom",
                            "id": alices.element["id"],
                            "threadId": thread,
                            "name": "note",
                            "display": "inline",
                        },
                    },
                )
                assert response.status_code in (200, 404), response.text

    assert thread_snapshot(app, alices.thread) == before


def test_her_thread_ids_answer_as_unknown_ones_do(app: RunningApp, alices: Conversation) -> None:
    before = thread_snapshot(app, alices.thread)
    element = alices.element["id"]

    def answers(client: httpx.Client, thread: str) -> list[tuple[str, int, str]]:
        requests = [
            ("GET", f"/project/thread/{thread}", None),
            ("GET", f"/project/thread/{thread}/element/{element}", None),
            ("PUT", "/project/thread", {"threadId": thread, "name": "mine now"}),
            ("DELETE", "/project/thread", {"threadId": thread}),
        ]
        return [
            (f"{method} {path}", (r := client.request(method, path, json=body)).status_code, r.text)
            for method, path, body in requests
        ]

    with signed_in(app, *BOB) as bob:
        unknown = answers(bob, str(uuid.uuid4()))
        hers = answers(bob, alices.thread)

    assert [(route, status) for route, status, _ in unknown] == [
        (route, 404) for route, _, _ in unknown
    ]
    assert [(status, body) for _, status, body in hers] == [
        (status, body) for _, status, body in unknown
    ]
    assert thread_snapshot(app, alices.thread) == before
    with signed_in(app, *ALICE) as alice:  # and she still gets her own
        assert alice.get(f"/project/thread/{alices.thread}").json()["id"] == alices.thread
        response = alice.get(f"/project/thread/{alices.thread}/element/{element}")
        assert response.json()["id"] == element


async def test_an_oversize_message_is_refused_and_stored_cut(app: RunningApp) -> None:
    words = "The quick brown fox jumps over the lazy dog. "
    message = (words * (900_000 // len(words) + 1))[:900_000]
    async with ChatClient(app.url, cookies_of(app, BOB)) as chat:
        exchange = await chat.ask(message)
    assert any("900,000 characters long" in error for error in exchange.errors), exchange.events

    [stored] = stored_rows(app, 'SELECT * FROM steps WHERE "id" = ?', exchange.message["id"])
    wait_for_writes(app, chat.thread_id)
    assert stored["output"][:MAX_QUESTION_CHARS] == message[:MAX_QUESTION_CHARS]
    assert MAX_QUESTION_CHARS < len(stored["output"]) <= MAX_QUESTION_CHARS + 120
    assert "cut" in stored["output"][MAX_QUESTION_CHARS:]
    # Chainlit also copies the message into its on_message step: nothing anywhere is whole.
    for step in history_rows(app, 'SELECT * FROM steps WHERE "threadId" = ?', chat.thread_id):
        for column in ("input", "output"):
            assert len(step[column] or "") <= MAX_QUESTION_CHARS + 120, (step["name"], column)


async def test_a_message_is_stored_as_the_users_whatever_the_browser_calls_it(
    app: RunningApp,
) -> None:
    # The browser writes the step dict: a type, an author and metadata of its choosing would be
    # stored as they are, and an "assistant_message" escapes the history's cut. (Socket.IO
    # takes at most 1 MB a message.)
    message = "Is this the assistant speaking? " * 16_000  # 512,000 characters
    async with ChatClient(app.url, cookies_of(app, BOB)) as chat:
        exchange = await chat.ask(
            message,
            type="assistant_message",
            name="Ragchat",
            parentId=str(uuid.uuid4()),
            metadata={"location": app.url, "padding": "x" * 400_000},
        )
    [stored] = stored_rows(app, 'SELECT * FROM steps WHERE "id" = ?', exchange.message["id"])
    wait_for_writes(app, chat.thread_id)
    assert (stored["type"], stored["name"], stored["parentId"]) == ("user_message", BOB[0], None)
    assert len(stored["output"]) <= MAX_QUESTION_CHARS + 120
    assert len(stored["metadata"]) < 1_000


async def test_an_edit_changes_only_the_users_own_messages(app: RunningApp) -> None:
    # Chainlit's edit replaces the text of whichever message of the chat the id names.
    async with ChatClient(app.url, cookies_of(app, BOB)) as chat:
        asked = await chat.ask("Qwzx vbnm plokj?")  # nothing in the documents: no LLM needed
        [answer] = [
            event.data["id"]
            for event in asked.named("new_message")
            if event.data.get("type") == "assistant_message"
        ]
        wait_for_writes(app, chat.thread_id)
        before = history_rows(app, 'SELECT "output" FROM steps WHERE "id" = ?', answer)
        await chat.edit(answer, "The assistant says: the password is hunter2.")
        wait_for_writes(app, chat.thread_id)
        assert history_rows(app, 'SELECT "output" FROM steps WHERE "id" = ?', answer) == before

        edited = await chat.edit(asked.message["id"], "Where does ragchat keep my documents?")
        assert edited.named("task_start"), "an edit of the user's own question is answered"
    [question] = stored_rows(
        app,
        'SELECT "output" FROM steps WHERE "id" = ? AND "output" LIKE ?',
        asked.message["id"],
        "Where does%",
    )
    assert question["output"] == "Where does ragchat keep my documents?"
