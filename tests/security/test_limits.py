"""Limits the browser alone enforced, tried by a script: more uploads than the upload box
allows, a request whose size is over the limit, a Word document that unzips to far more than
it weighs, and chat settings outside the settings panel's range. Each is refused with a
message naming the limit, and what was there before stays as it was."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import socket
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from ragchat.backends import TOP_K_MAX, SettingsRejected, checked_settings
from ragchat.config import load_settings

from ..running_app import ANSWER, CHROMIUM, CHROMIUM_ARGS, RunningApp, running_app, sign_in
from ..socket_client import ChatClient
from .conftest import history_rows, signed_in, stored_rows

MB = 1024 * 1024
QUESTION = "What can ragchat do?"  # a starter: the user guide answers it, with passages


def add_account(app: RunningApp, *, admin: bool = False) -> tuple[str, str]:
    """An account of this file's own: the limits count per user, and this file fills them."""
    user = (f"limits-{uuid.uuid4().hex[:8]}", "a long passphrase for the limits")
    app.create_password(
        "add", user[0], *(["--admin"] if admin else []), "--password-stdin", stdin=user[1]
    )
    return user


def cookies_of(app: RunningApp, user: tuple[str, str]) -> dict[str, str]:
    with signed_in(app, *user) as client:
        return dict(client.cookies)


async def upload(
    client: httpx.AsyncClient, session_id: str, name: str, content: bytes, mime: str = "text/plain"
) -> httpx.Response:
    return await client.post(
        "/project/file", params={"session_id": session_id}, files={"file": (name, content, mime)}
    )


def kept_files(app: RunningApp, session_id: str) -> set[str]:
    """The ids of the files Chainlit keeps for a session (stored as <id><extension>)."""
    folder = Path(app.env["CHAINLIT_APP_ROOT"]) / ".files" / session_id
    return {path.stem for path in folder.iterdir()} if folder.is_dir() else set()


def retrieved_passages(app: RunningApp, thread_id: str) -> list[int]:
    """How many passages each stored Retrieve step of the thread shows, in order."""
    rows = stored_rows(
        app,
        'SELECT "output" FROM steps WHERE "threadId" = ? AND "name" = ? ORDER BY "createdAt"',
        thread_id,
        "Retrieve",
    )
    return [row["output"].count("(similarity ") for row in rows]


def saved_chat_settings(app: RunningApp, thread_id: str, unlike: dict | None = None) -> dict:
    """The chat settings saved with the thread (Chainlit saves them when the tab closes), once
    they are there and differ from `unlike`."""
    deadline = time.monotonic() + 10
    while True:
        rows = history_rows(app, 'SELECT "metadata" FROM threads WHERE "id" = ?', thread_id)
        saved = json.loads(rows[0]["metadata"] or "{}").get("chat_settings") if rows else None
        if (saved is not None and saved != unlike) or time.monotonic() > deadline:
            return saved
        time.sleep(0.2)


# --- uploads: how many files, on the shared app (UPLOAD_MAX_FILES 20) ---------------------


async def test_the_21st_upload_is_refused_with_the_limit_named(app: RunningApp) -> None:
    user, other = add_account(app), add_account(app)
    async with (
        ChatClient(app.url, cookies_of(app, user)) as chat,
        ChatClient(app.url, cookies_of(app, user)) as second_tab,
        ChatClient(app.url, cookies_of(app, other)) as others_chat,
        httpx.AsyncClient(base_url=app.url, cookies=cookies_of(app, user), timeout=60) as http,
    ):
        accepted = []
        for number in range(20):
            response = await upload(http, chat.session_id, f"part{number}.txt", b"x" * MB)
            assert response.status_code == 200, response.text
            accepted.append(response.json()["id"])

        refused = await upload(http, chat.session_id, "part20.txt", b"x" * MB)
        assert refused.status_code == 413
        assert refused.json()["detail"].startswith(
            "Upload refused: your open chats already hold 20 uploaded files, the most allowed "
            "(UPLOAD_MAX_FILES). A chat's uploads are cleared 60 min after it is closed"
        )
        # The limit is the user's, whichever of their chats the file is sent to ...
        assert (await upload(http, second_tab.session_id, "more.txt", b"x")).status_code == 413
        assert kept_files(app, chat.session_id) == set(accepted)
        assert kept_files(app, second_tab.session_id) == set()
        # ... and nobody else's.
        async with httpx.AsyncClient(
            base_url=app.url, cookies=cookies_of(app, other), timeout=60
        ) as others_http:
            response = await upload(others_http, others_chat.session_id, "theirs.txt", b"x" * MB)
            assert response.status_code == 200, response.text


# --- uploads: megabytes, the request's size, and uploads at once, on an app of its own -----


@pytest.fixture(scope="module")
def small_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    with running_app(
        tmp_path_factory.mktemp("limits"),
        UPLOAD_MAX_FILES="4",
        UPLOAD_QUOTA_MB="2",
        UPLOAD_MAX_MB="1",
        WATCH_INTERVAL="0",
    ) as started:
        yield started


async def test_an_upload_past_the_quota_in_mb_is_refused(small_app: RunningApp) -> None:
    user = add_account(small_app)
    async with (
        ChatClient(small_app.url, cookies_of(small_app, user)) as chat,
        httpx.AsyncClient(
            base_url=small_app.url, cookies=cookies_of(small_app, user), timeout=60
        ) as http,
    ):
        first = await upload(http, chat.session_id, "one.txt", b"x" * MB)
        second = await upload(http, chat.session_id, "two.txt", b"y" * MB)
        assert (first.status_code, second.status_code) == (200, 200)  # 2 MB: the quota, not over

        refused = await upload(http, chat.session_id, "three.txt", b"z" * 1000)
        assert refused.status_code == 413
        assert refused.json()["detail"].startswith(
            "Upload refused: this file (0.0 MB) would bring your uploads in open chats to 2.0 MB, "
            "over the 2 MB allowed (UPLOAD_QUOTA_MB)."
        )
        assert kept_files(small_app, chat.session_id) == {
            first.json()["id"],
            second.json()["id"],
        }


async def test_uploads_sent_at_once_cannot_all_take_the_last_places(small_app: RunningApp) -> None:
    user = add_account(small_app)
    async with (
        ChatClient(small_app.url, cookies_of(small_app, user)) as chat,
        httpx.AsyncClient(
            base_url=small_app.url, cookies=cookies_of(small_app, user), timeout=60
        ) as http,
    ):
        responses = await asyncio.gather(
            *(upload(http, chat.session_id, f"f{n}.txt", b"x" * (MB // 4)) for n in range(8))
        )
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] * 4 + [413] * 4  # UPLOAD_MAX_FILES is 4
        accepted = {r.json()["id"] for r in responses if r.status_code == 200}
        assert kept_files(small_app, chat.session_id) == accepted


def raw_upload_headers(
    app: RunningApp, cookies: dict, session_id: str, length: int
) -> tuple[int, dict]:
    """The status and JSON the server answers to an upload's headers alone, the body unsent."""
    host, port = app.url.removeprefix("http://").split(":")
    cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
    request = (
        f"POST /project/file?session_id={session_id} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Cookie: {cookie}\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request.encode())
        response = http.client.HTTPResponse(connection)
        response.begin()  # a timeout here: the server is waiting for the body
        return response.status, json.loads(response.read())


async def test_an_oversize_upload_is_refused_from_its_stated_size(small_app: RunningApp) -> None:
    user = add_account(small_app)
    cookies = cookies_of(small_app, user)
    async with ChatClient(small_app.url, cookies) as chat:
        status, answer = await asyncio.to_thread(
            raw_upload_headers, small_app, cookies, chat.session_id, 50 * MB
        )
        assert status == 413
        assert answer["detail"] == (
            "Upload refused: this file is 50.0 MB and one upload may be at most 1 MB "
            "(UPLOAD_MAX_MB)"
        )
        assert kept_files(small_app, chat.session_id) == set()


def test_the_browser_shows_why_an_upload_was_refused(small_app: RunningApp) -> None:
    user = add_account(small_app)

    async def fill_the_quota() -> ChatClient:
        chat = ChatClient(small_app.url, cookies_of(small_app, user))
        await chat.connect()
        async with httpx.AsyncClient(
            base_url=small_app.url, cookies=cookies_of(small_app, user), timeout=60
        ) as http:
            for number in range(4):
                assert (await upload(http, chat.session_id, f"{number}.txt", b"x")).is_success
        return chat

    loop = asyncio.new_event_loop()
    try:
        other_tab = loop.run_until_complete(fill_the_quota())
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(small_app.url)
            sign_in(page, *user)
            # The welcome message: the tab's chat session is connected, uploads can go to it.
            expect(page.locator(ANSWER).first).to_be_visible(timeout=60_000)
            page.locator('input[type="file"]').first.set_input_files(
                files=[{"name": "notes.md", "mimeType": "text/markdown", "buffer": b"# Notes"}]
            )
            expect(
                page.get_by_text(
                    "Failed to upload notes.md: Upload refused: your open "
                    "chats already hold 4 uploaded files"
                )
            ).to_be_visible()
            browser.close()
        loop.run_until_complete(other_tab.close())
    finally:
        loop.close()


# --- a zip bomb uploaded by an administrator -----------------------------------------------


def docx_bomb() -> bytes:
    """A valid Word document whose text is 60 MB of laughter, zipped to about 60 KB."""
    document = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        "<w:body><w:p><w:r><w:t>" + "ha" * (30 * MB) + "</w:t></w:r></w:p></w:body></w:document>"
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zipped:
        zipped.writestr("word/document.xml", document)
    return archive.getvalue()


async def test_an_admins_zip_bomb_upload_is_refused_quickly(small_app: RunningApp) -> None:
    admin = add_account(small_app, admin=True)
    bomb = docx_bomb()
    assert len(bomb) < 100 * 1024
    docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    async with (
        ChatClient(small_app.url, cookies_of(small_app, admin)) as chat,
        httpx.AsyncClient(
            base_url=small_app.url, cookies=cookies_of(small_app, admin), timeout=60
        ) as http,
    ):
        uploaded = await upload(http, chat.session_id, "bomb.docx", bomb, docx)
        assert uploaded.status_code == 200, uploaded.text
        started = time.monotonic()
        replies = (await chat.ask("", files=[uploaded.json()["id"]])).replies
        assert time.monotonic() - started < 10
        assert replies[-1] == (
            "bomb.docx was not added: it unzips to 60.0 MB, more than the 50 MB a document may "
            "unzip to (UNZIPPED_MAX_MB); split it into smaller documents, or ask the "
            "administrator to raise UNZIPPED_MAX_MB."
        )
        assert not (Path(small_app.env["DATA_DIR"]) / "bomb.docx").exists()
        answer = await chat.ask(QUESTION)  # what was indexed before still answers
        assert "Sources: ragchat-user-guide.md" in answer.answer


# --- chat settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("top_k", "mode", "refusal"),
    [
        (1000, "hybrid", "Passages per answer must be a whole number from 1 to 12, not 1000;"),
        (0, "hybrid", "Passages per answer must be a whole number from 1 to 12, not 0;"),
        (2.5, "hybrid", "Passages per answer must be a whole number from 1 to 12, not 2.5;"),
        ("4", "hybrid", "Passages per answer must be a whole number from 1 to 12, not 4;"),
        (True, "hybrid", "Passages per answer must be a whole number from 1 to 12, not True;"),
        (float("nan"), "hybrid", "Passages per answer must be a whole number from 1 to 12, not"),
        (4, "bogus", "The search mode must be one of vector, lexical, hybrid, not bogus;"),
        (4, None, "The search mode must be one of vector, lexical, hybrid, not None;"),
    ],
)
def test_settings_outside_the_panel_are_refused(top_k: object, mode: object, refusal: str) -> None:
    with pytest.raises(SettingsRejected) as rejection:
        checked_settings(top_k, mode)
    assert str(rejection.value).startswith(refusal)
    assert str(rejection.value).endswith("the settings were left as they were.")


def test_the_panels_own_values_are_taken(guide_backend) -> None:
    chat = guide_backend.new_chat()
    for mode in ("vector", "lexical", "hybrid"):
        chat.configure(top_k=chat.top_k_max, mode=mode)
        assert (chat.top_k, chat.mode) == (chat.top_k_max, mode)
    chat.configure(top_k=3.0, mode="vector")  # a slider's number may come as a float
    assert (chat.top_k, chat.mode) == (3, "vector")
    with pytest.raises(SettingsRejected):
        chat.configure(top_k=1000, mode="lexical")
    assert (chat.top_k, chat.mode) == (3, "vector")  # nothing changed


def test_the_panel_offers_no_more_passages_than_the_context_window_holds(guide_backend) -> None:
    # 4,096 tokens, 384 of them for the answer and 256 for the question: 7 passages of 240
    # tokens (counted double) fit, 8 would cut the prompt.
    chat = guide_backend.new_chat()
    assert chat.top_k_max == 7 < TOP_K_MAX
    with pytest.raises(SettingsRejected, match="from 1 to 7, not 8"):
        chat.configure(top_k=8, mode="hybrid")


def test_the_hosted_assistant_checks_them_too(clean_env: Path) -> None:
    from ragchat.backends.assistant import AssistantChat

    backend = SimpleNamespace(settings=load_settings(_env_file=None))  # all a chat reads of it
    chat = AssistantChat(backend, state={}, person="bob")
    chat.configure(top_k=7, mode="lexical")
    assert (chat.top_k, chat.mode) == (7, "hybrid")  # file_search has one mode
    for top_k, mode in [(1000, "hybrid"), (3, "bogus")]:
        with pytest.raises(SettingsRejected):
            chat.configure(top_k=top_k, mode=mode)
    assert chat.top_k == 7


async def test_a_crafted_settings_change_is_refused_and_the_previous_settings_stay(
    app: RunningApp,
) -> None:
    user = add_account(app)
    async with ChatClient(app.url, cookies_of(app, user)) as chat:
        assert await chat.change_settings({"top_k": 2, "mode": "lexical"}) == []
        assert await chat.change_settings({"top_k": 1000, "mode": "lexical"}) == [
            "Passages per answer must be a whole number from 1 to 7, not 1000; the settings "
            "were left as they were."
        ]
        assert await chat.change_settings({"top_k": 2, "mode": "bogus"}) == [
            "The search mode must be one of vector, lexical, hybrid, not bogus; the settings "
            "were left as they were."
        ]
        await chat.ask(QUESTION)
        thread_id = chat.thread_id
    assert retrieved_passages(app, thread_id) == [2]
    # What is saved with the conversation (for resume) is what the chat used, not the attempt.
    assert saved_chat_settings(app, thread_id, unlike={}) == {"top_k": 2, "mode": "lexical"}


async def test_settings_restored_on_resume_are_checked(app: RunningApp) -> None:
    user = add_account(app)
    cookies = cookies_of(app, user)
    async with ChatClient(app.url, cookies) as chat:
        await chat.ask(QUESTION)
        thread_id = chat.thread_id
    # The thread's metadata holds what a browser once sent (before this check, any value).
    planted = {"top_k": 1000, "mode": "bogus"}
    assert saved_chat_settings(app, thread_id) is not None  # saved as the tab closed
    history_rows(
        app,
        'UPDATE threads SET "metadata" = ? WHERE "id" = ?',
        json.dumps({"chat_settings": planted}),
        thread_id,
    )
    async with ChatClient(app.url, cookies, thread_id=thread_id) as resumed:
        refusals = [
            event.data["output"]
            for event in resumed.events
            if event.name == "new_message" and event.data.get("isError")
        ]
        assert refusals == [
            "Passages per answer must be a whole number from 1 to 7, not 1000; the settings "
            "were left as they were."
        ]
        await resumed.ask(QUESTION)
    assert retrieved_passages(app, thread_id) == [4, 4]  # TOP_K, the default, both times
    assert saved_chat_settings(app, thread_id, unlike=planted) == {"top_k": 4, "mode": "hybrid"}
