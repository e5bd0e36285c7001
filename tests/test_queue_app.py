"""The model's queue as people meet it in the running app, over Chainlit's Socket.IO: told
their place at once, fair across people, stop leaves the line, and the notice is never stored."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time

import pytest
from playwright.sync_api import expect, sync_playwright

from .running_app import (
    ANSWER,
    CHROMIUM,
    CHROMIUM_ARGS,
    RunningApp,
    open_chat,
    running_app,
    send,
    signed_in,
)
from .socket_client import ChatClient

ANN = ("ann", "ann's long passphrase")
BOB = ("bob", "bob's long passphrase")
QUESTION = "Which file types are supported?"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    with running_app(tmp_path_factory.mktemp("queue")) as started:
        for name, password in (ANN, BOB):
            started.create_password("add", name, "--password-stdin", stdin=password)
        yield started


def cookies(app: RunningApp, account: tuple[str, str]) -> dict:
    with signed_in(app, *account) as client:
        return dict(client.cookies)


def places(chat: ChatClient, since: int = 0) -> list[tuple[float, int]]:
    """(when, position) of each queue notice the tab was sent or updated with."""
    return [
        (event.at, event.data["metadata"]["queue"]["position"])
        for event in chat.events[since:]
        if event.name in ("new_message", "update_message")
        and "queue" in (event.data.get("metadata") or {})
    ]


async def until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_waiting_people_are_told_fairly_and_stopping_leaves_the_line(app) -> None:
    ann_cookies, bob_cookies = cookies(app, ANN), cookies(app, BOB)
    async with (
        ChatClient(app.url, ann_cookies) as ann_first,
        ChatClient(app.url, ann_cookies) as ann_second,
        ChatClient(app.url, bob_cookies) as bob,
    ):
        answering = asyncio.create_task(ann_first.ask(QUESTION))
        await until(lambda: any(e.name == "stream_token" for e in ann_first.events))
        # ann asks again from a second tab while her first answer is written...
        asked_at = time.monotonic()
        ann_waits = asyncio.create_task(ann_second.ask(QUESTION))
        await until(lambda: places(ann_second))
        assert places(ann_second)[0] == (pytest.approx(asked_at, abs=0.5), 1)
        # ...then bob asks: he goes before her second question, which is told it moved back.
        start = len(bob.events)
        bob_waits = asyncio.create_task(bob.ask(QUESTION))
        await until(lambda: places(bob, start))
        assert places(bob, start)[0][1] == 1
        await until(lambda: places(ann_second)[-1][1] == 2)
        # bob stops his waiting question: ann's second is next again.
        await bob.stop()
        await until(lambda: places(ann_second)[-1][1] == 1)
        await asyncio.wait_for(bob_waits, 30)
        assert not any(e.name == "stream_token" for e in bob.events[start:]), "bob got no answer"
        first, second = await asyncio.wait_for(asyncio.gather(answering, ann_waits), 300)
    assert first.answer and second.answer and not second.errors
    # The notice went when the answer began, and no notice was stored with the conversation.
    assert any(event.name == "delete_message" for event in second.events)
    with sqlite3.connect(app.env["HISTORY_DB_PATH"]) as db:
        stored = [row[0] for row in db.execute('SELECT "output" FROM steps')]
    assert stored and not [text for text in stored if "Waiting for the model" in (text or "")]


def test_in_the_browser_the_notice_shows_while_waiting_and_goes_when_the_answer_starts(
    app,
) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ann = open_chat(browser.new_page(), app, *ANN)
        bob = open_chat(browser.new_page(), app, *BOB)
        send(ann, QUESTION)
        expect(ann.locator(ANSWER).nth(1)).not_to_be_empty(timeout=120_000)  # ann is answered
        send(bob, "How do I add my own documents?")
        notice = bob.locator(ANSWER).filter(has_text="Waiting for the model")
        expect(notice).to_have_text(
            re.compile(r"Waiting for the model: your question is next"), timeout=2_000
        )
        expect(bob.locator(ANSWER).last).to_contain_text("Sources:", timeout=180_000)
        expect(notice).to_have_count(0)
        browser.close()
