"""Text the databases cannot store as it is, sent by a script: a message holding a NUL character
and a lone surrogate (JSON's "\\u0000" and "\\ud800", which no browser types but any client can
send). PostgreSQL refuses NUL in text, and neither asyncpg nor SQLite's driver can encode a lone
surrogate: the message was lost. It is kept, with U+FFFD in their place, and the chat resumes."""

from __future__ import annotations

from ..running_app import RunningApp
from ..socket_client import ChatClient
from .conftest import ALICE, history_rows, signed_in

QUESTION = "What can ragchat do? \x00 \ud800"
KEPT = "What can ragchat do? \ufffd \ufffd"


def stored_questions(app: RunningApp, thread_id: str) -> list[str]:
    rows = history_rows(
        app,
        'SELECT "output" FROM steps WHERE "threadId" = ? AND "type" = \'user_message\'',
        thread_id,
    )
    return [row["output"] for row in rows]


async def test_a_message_with_nul_and_a_lone_surrogate_is_kept_and_the_chat_resumes(
    app: RunningApp,
) -> None:
    with signed_in(app, *ALICE) as client:
        cookies = dict(client.cookies)
        async with ChatClient(app.url, cookies) as chat:
            exchange = await chat.ask(QUESTION)
            thread_id = chat.thread_id
        assert exchange.answer and not exchange.errors

        assert stored_questions(app, thread_id) == [KEPT]
        thread = client.get(f"/project/thread/{thread_id}").json()
        assert thread["name"] == KEPT
        assert [step["output"] for step in thread["steps"] if step["type"] == "user_message"] == [
            KEPT
        ]
        async with ChatClient(app.url, cookies, thread_id=thread_id) as resumed:
            follow_up = await resumed.ask("And what else?")
        assert follow_up.answer and not follow_up.errors
    assert stored_questions(app, thread_id) == [KEPT, "And what else?"]
