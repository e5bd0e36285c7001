"""Conversations that last, on the running app with its stores in the local files and in
PostgreSQL: resumed from the sidebar with their context, answers downloaded as PDF, and nobody
reaching another user's conversations over HTTP."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from .running_app import (
    ask,
    history_rows,
    resume_from_sidebar,
    running_app_on,
    send,
    signed_in,
    stored_rows,
)
from .test_browser import (  # noqa: F401  (browser_page and page are fixtures)
    ANSWER,
    CHROMIUM,
    CHROMIUM_ARGS,
    WELCOME,
    WORKSPACE,
    RunningApp,
    browser_page,
    page,
    sign_in,
    sources_of,
)

ALICE = ("alice", "alice's long passphrase")
BOB = ("bob", "bob's long admin passphrase")


@pytest.fixture(scope="module", params=["files", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningApp]:
    root = tmp_path_factory.mktemp(f"conversations-{request.param}")
    with running_app_on(request.param, request, root, **WORKSPACE) as started:
        yield started


def test_a_conversation_resumes_from_the_sidebar_and_keeps_its_context(
    app: RunningApp, page: Page
) -> None:
    ask(page, "How do I use OpenAI models?")
    page.reload()
    resume_from_sidebar(page, "How do I use OpenAI models?")
    expect(page.locator(ANSWER).last).to_contain_text("Sources:")

    ask(page, "and which setting picks the embedding model?")
    # The follow-up was searched together with the question asked before the reload.
    [retrieval] = stored_rows(
        app,
        'SELECT "input", "output" FROM steps WHERE "type" = \'retrieval\' AND "input" LIKE ?',
        "%and which setting picks the embedding model?",
    )
    assert retrieval["input"] == (
        "How do I use OpenAI models?\nand which setting picks the embedding model?"
    )
    assert "OPENAI_EMBED_MODEL" in retrieval["output"]
    expect(sources_of(page.locator(ANSWER).last)).to_have_text("ragchat-user-guide.md")


def test_an_honest_nothing_found_has_no_pdf_to_download(page: Page) -> None:
    send(page, "Who won the football world cup?")
    answer = page.locator('[data-step-type="assistant_message"]').nth(1)
    expect(answer).to_contain_text("I found nothing in the documents", timeout=180_000)
    expect(answer.get_by_role("button", name="Download PDF")).to_have_count(0)


def test_an_answer_is_rated_with_a_comment(app: RunningApp, page: Page) -> None:
    ask(page, "Which models does ragchat use?")
    answer = page.locator('[data-step-type="assistant_message"]').last
    answer.locator("button:has(svg.lucide-thumbs-down)").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_placeholder("Your feedback...").fill("It left out the embedding model.")
    dialog.get_by_role("button", name=re.compile("submit", re.IGNORECASE)).click()
    [feedback] = stored_rows(
        app, "SELECT * FROM feedbacks WHERE \"comment\" = 'It left out the embedding model.'"
    )
    assert feedback["value"] == 0
    # Chainlit rates the run that produced the answer: the answer is that run's message.
    [run] = history_rows(app, 'SELECT * FROM steps WHERE "id" = ?', feedback["forId"])
    assert (run["type"], run["input"]) == ("run", "Which models does ragchat use?")
    assert feedback["threadId"] == run["threadId"]
    [answer_step] = history_rows(
        app,
        'SELECT * FROM steps WHERE "parentId" = ? AND "type" = ?',
        run["id"],
        "assistant_message",
    )
    assert "Sources: ragchat-user-guide.md" in answer_step["output"]  # what the user reads
    # ...and the fact a resumed chat decides from (its PDF button, its memory).
    metadata = json.loads(answer_step["metadata"])
    assert metadata["sources"] == ["ragchat-user-guide.md"]
    assert all(quote["source"] == "ragchat-user-guide.md" for quote in metadata["quotes"])


def test_a_thread_begun_with_a_starter_is_titled_by_its_question(page: Page) -> None:
    page.get_by_role("button", name="How do I add my own documents?").click()
    expect(page.locator(ANSWER).nth(1)).to_contain_text("Sources:", timeout=180_000)
    page.reload()
    expect(page.locator('li[id^="thread-"]').first).to_have_text(
        "How do I add my own documents?", timeout=30_000
    )


def test_an_answer_downloads_as_a_pdf_with_its_text(page: Page, tmp_path: Path) -> None:
    ask(page, "Which file types are supported?")
    answer_text = page.locator(ANSWER).last.inner_text()
    page.get_by_role("button", name="Download PDF").last.click()
    link = page.locator("a.inline-file").filter(has_text="which-file-types-are-supported.pdf")
    expect(link).to_be_visible(timeout=60_000)
    with page.expect_download(timeout=60_000) as download:
        link.click()
    saved = tmp_path / "answer.pdf"
    download.value.save_as(saved)
    text = subprocess.run(
        ["pdftotext", str(saved), "-"], capture_output=True, text=True, check=True
    ).stdout
    words = " ".join(text.split())
    assert "Which file types are supported?" in words
    assert "Sources: ragchat-user-guide.md" in words
    first_words = " ".join(answer_text.split()[:5])
    assert first_words in words, f"{first_words!r} is not in the PDF: {words[:300]!r}"


@pytest.fixture(scope="module")
def alices_conversation(app: RunningApp) -> dict:
    """Alice asks a question in the browser, exports the answer and rates it."""
    app.create_password("add", ALICE[0], "--password-stdin", stdin=ALICE[1])
    app.create_password("add", BOB[0], "--admin", "--password-stdin", stdin=BOB[1])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        alice_page = browser.new_page()
        alice_page.goto(app.url)
        sign_in(alice_page, *ALICE)
        expect(alice_page.locator(ANSWER).first).to_have_text(WELCOME, timeout=60_000)
        ask(alice_page, "Where does ragchat keep my documents?")
        alice_page.get_by_role("button", name="Download PDF").click()
        expect(alice_page.locator("a.inline-file")).to_have_count(1, timeout=30_000)
        browser.close()
    [thread] = stored_rows(app, "SELECT * FROM threads WHERE \"userIdentifier\" = 'alice'")
    [answer] = stored_rows(
        app,
        'SELECT "id" FROM steps WHERE "threadId" = ? AND "output" LIKE \'%Sources:%\'',
        thread["id"],
    )
    elements = history_rows(app, 'SELECT * FROM elements WHERE "threadId" = ?', thread["id"])
    assert {e["name"] for e in elements} == {
        "ragchat-user-guide.md",
        "where-does-ragchat-keep-my-documents.pdf",
    }
    with signed_in(app, *ALICE) as alice:
        rated = alice.put(
            "/feedback",
            json={
                "feedback": {"forId": answer["id"], "value": 1, "comment": "clear"},
                "sessionId": "s",
            },
        )
        assert rated.status_code == 200, rated.text
    return {
        "thread": thread["id"],
        "answer": answer["id"],
        "elements": elements,
        "feedback": rated.json()["feedbackId"],
    }


@pytest.fixture
def alice(app: RunningApp) -> Iterator[httpx.Client]:
    with signed_in(app, *ALICE) as client:
        yield client


@pytest.fixture
def bob(app: RunningApp) -> Iterator[httpx.Client]:
    with signed_in(app, *BOB) as client:  # an admin: no backdoor for them either
        yield client


def test_the_owner_reaches_her_thread_elements_and_files(alices_conversation, alice) -> None:
    thread = alices_conversation["thread"]
    listed = alice.post("/project/threads", json={"pagination": {"first": 20}, "filter": {}})
    assert [t["id"] for t in listed.json()["data"]] == [thread]
    assert alice.get(f"/project/thread/{thread}").json()["userIdentifier"] == "alice"
    for element in alices_conversation["elements"]:
        assert (
            alice.get(f"/project/thread/{thread}/element/{element['id']}").json()["name"]
            == (element["name"])
        )
        assert alice.get(element["url"]).status_code == 200
    pdf = next(e for e in alices_conversation["elements"] if e["name"].endswith(".pdf"))
    assert alice.get(pdf["url"]).content.startswith(b"%PDF-")


def test_another_user_gets_nothing_of_hers_whatever_the_ids(
    app: RunningApp, alices_conversation, bob
) -> None:
    thread = alices_conversation["thread"]
    listed = bob.post("/project/threads", json={"pagination": {"first": 20}, "filter": {}})
    assert listed.status_code == 200 and listed.json()["data"] == []
    assert bob.get(f"/project/thread/{thread}").status_code in (401, 404)
    for element in alices_conversation["elements"]:
        assert bob.get(f"/project/thread/{thread}/element/{element['id']}").status_code in (
            401,
            404,
        )
        refused = bob.get(element["url"])
        assert refused.status_code == 404 and b"%PDF" not in refused.content
    assert bob.put(
        "/project/thread", json={"threadId": thread, "name": "mine now"}
    ).status_code in (401, 404)
    deleted = bob.request("DELETE", "/project/thread", json={"threadId": thread})
    assert deleted.status_code in (401, 404)
    rated = bob.put(
        "/feedback",
        json={"feedback": {"forId": alices_conversation["answer"], "value": 0}, "sessionId": "s"},
    )
    assert rated.status_code == 404
    overwritten = bob.put(
        "/feedback",
        json={
            "feedback": {"id": alices_conversation["feedback"], "forId": "x", "value": 0},
            "sessionId": "s",
        },
    )
    assert overwritten.status_code == 404
    unrated = bob.request(
        "DELETE", "/feedback", json={"feedbackId": alices_conversation["feedback"]}
    )
    assert unrated.status_code == 404

    # Everything of Alice's is as she left it.
    [kept] = history_rows(app, 'SELECT * FROM threads WHERE "id" = ?', thread)
    assert kept["name"] == "Where does ragchat keep my documents?"
    [feedback] = history_rows(
        app, 'SELECT * FROM feedbacks WHERE "id" = ?', alices_conversation["feedback"]
    )
    assert (feedback["value"], feedback["comment"]) == (1, "clear")


def test_conversations_cannot_be_shared_with_anyone(
    app: RunningApp, alices_conversation, alice
) -> None:
    thread = alices_conversation["thread"]
    shared = alice.put("/project/thread/share", json={"threadId": thread, "isShared": True})
    assert shared.status_code == 404
    assert httpx.get(f"{app.url}/project/share/{thread}").status_code == 404


def test_opening_her_thread_in_the_browser_shows_another_user_nothing(
    app: RunningApp, alices_conversation, browser_page: Page
) -> None:
    sign_in(browser_page, *BOB)
    expect(browser_page.locator("#chat-input")).to_be_visible(timeout=60_000)
    browser_page.goto(f"{app.url}/thread/{alices_conversation['thread']}")
    expect(browser_page.locator("#chat-input")).to_be_visible(timeout=60_000)
    browser_page.wait_for_timeout(3_000)
    expect(browser_page.get_by_text("Where does ragchat keep my documents?")).to_have_count(0)
