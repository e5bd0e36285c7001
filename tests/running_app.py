"""The app as a user starts it: the README's first command, in a process of its own, served on
a free port of 127.0.0.1, and Chromium to talk to it.

Each app gets an app root of its own (CHAINLIT_APP_ROOT, holding a copy of `.chainlit/` and
`chainlit.md`): Chainlit keeps uploads in `<app root>/.files` and deletes that folder when it
stops, so apps that shared the repository's would delete each other's uploads.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Response, expect
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from ragchat import database

from .conftest import ROOT, environ_without_settings

CHROMIUM = "/usr/bin/chromium"
# Without the networking flags Chromium keeps dialling out, which this machine refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ANSWER = '[data-step-type="assistant_message"] .message-content'


def readme_run_command() -> str:
    """The first line of the README's first code block, without its comment."""
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "the README opens with a code block of commands"
    return block.group(1).splitlines()[0].split("#")[0].strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_served(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the app did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@dataclass(frozen=True)
class RunningApp:
    url: str
    env: dict[str, str]
    admin_password: str
    log: Path

    def create_password(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [sys.executable, "create_password.py", *args],
            input=stdin,
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout


def app_environment(root: Path, port: int, **settings: str) -> dict[str, str]:
    """A fresh installation under `root` on the embedded default models, plus `settings`."""
    app_root = root / "app-root"
    app_root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / ".chainlit", app_root / ".chainlit", dirs_exist_ok=True)
    shutil.copy(ROOT / "chainlit.md", app_root)
    env = environ_without_settings()
    env.pop("CHAINLIT_AUTH_SECRET", None)
    env.update(
        CHAINLIT_APP_ROOT=str(app_root),
        CHAINLIT_PORT=str(port),
        DATA_DIR=str(root / "data"),
        STORAGE_DIR=str(root / "storage"),
        DB_PATH=str(root / "database" / "auth.db"),
        HISTORY_DB_PATH=str(root / "database" / "history.db"),
        HISTORY_FILES_DIR=str(root / "database" / "history-files"),
        # The embedded default, even where the machine has an OpenAI key or a .env of its own.
        LLM_PROVIDER="local",
        EMBED_PROVIDER="local",
    )
    env.update(settings)
    return env


@contextmanager
def running_app(root: Path, **settings: str) -> Iterator[RunningApp]:
    """The README's run command with the settings given, until the block ends."""
    env = app_environment(root, free_port(), **settings)
    log = root / "app.log"
    # On a machine where `make test` already installed everything this takes seconds.
    with served(ROOT, env, log, timeout=1200) as url:
        started = log.read_text()
        password = re.search(r'administrator "admin" with\nthe password\n\n {4}(\S+)\n', started)
        assert password, "the first start prints the admin's password"
        yield RunningApp(url, env, password.group(1), log)


@contextmanager
def running_app_on(
    store: str, request: pytest.FixtureRequest, root: Path, **settings: str
) -> Iterator[RunningApp]:
    """running_app with every store in the local files (`store` "files", the default) or in
    a PostgreSQL database of its own ("postgresql"), for fixtures parametrized over both."""
    with ExitStack() as stack:
        if store == "postgresql":
            from .postgres_server import new_database  # which imports this module

            server = request.getfixturevalue("postgres")
            settings["DATABASE_URL"] = stack.enter_context(new_database(server))
        yield stack.enter_context(running_app(root, **settings))


@contextmanager
def served(code: Path, env: dict[str, str], log: Path, timeout: float) -> Iterator[str]:
    """The README's run command in the tree `code` with `env` (from app_environment), its
    output in `log`; its URL once it serves, until the block ends."""
    with log.open("w") as output:
        process = subprocess.Popen(
            shlex.split(readme_run_command()),
            cwd=code,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so the whole process group can be stopped
        )
    try:
        url = f"http://127.0.0.1:{env['CHAINLIT_PORT']}"
        wait_until_served(url + "/", process, log, timeout)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def sign_in(page: Page, username: str, password: str) -> None:
    page.locator("#email").fill(username)
    page.locator("#password").fill(password)
    page.keyboard.press("Enter")


def open_chat(page: Page, app: RunningApp, username: str, password: str) -> Page:
    """`page` signed in as the user, at a chat whose session is connected."""
    page.goto(app.url)
    sign_in(page, username, password)
    expect(page.locator(ANSWER).first).to_be_visible(timeout=60_000)  # the welcome message
    return page


def ask(page: Page, question: str, timeout: float = 180_000) -> None:
    """Ask in the chat and wait for the answer to come with its sources."""
    answers = page.locator(ANSWER)
    before = answers.count()
    send(page, question)
    expect(answers.nth(before)).to_contain_text("Sources:", timeout=timeout)


def send(page: Page, text: str) -> None:
    """Type `text` in the chat and send it once the chat takes it, as a person would: while a
    task runs (on_chat_start has shown the welcome but not returned) Chainlit shows a stop
    button in place of the send button, and Enter sends nothing (a flaky test in CI)."""
    page.locator("#chat-input").fill(text)
    expect(page.locator("#chat-submit")).to_be_enabled(timeout=60_000)
    page.keyboard.press("Enter")


def send_with_file(page: Page, name: str, mime: str, content: bytes, text: str) -> Response:
    """Attach a file, as a user does, and send it with `text`; the upload's response."""
    with page.expect_response(
        lambda r: r.request.method == "POST" and "/project/file?" in r.url
    ) as uploaded:
        page.locator('input[type="file"]').first.set_input_files(
            files=[{"name": name, "mimeType": mime, "buffer": content}]
        )
    assert uploaded.value.status == 200, uploaded.value.text()
    # Chainlit keeps the send button disabled until it has marked the attachment uploaded, a
    # moment after the response: send() waits for it.
    send(page, text)
    return uploaded.value


def resume_from_sidebar(page: Page, question: str) -> None:
    """Open the conversation that began with `question` from the sidebar, and wait until its
    chat is resumed on the socket: the thread shows first (read over HTTP), and the answers'
    PDF buttons, which Chainlit does not store, come back once the chat is resumed."""
    thread = page.locator('li[id^="thread-"]').filter(has_text=question)
    expect(thread).to_have_count(1, timeout=30_000)
    thread.click()
    expect(page.locator('[data-step-type="user_message"]')).to_have_text([question], timeout=30_000)
    expect(page.get_by_role("button", name="Download PDF")).to_have_count(1, timeout=60_000)


def store_rows(app: RunningApp, store: str, query: str, *args: object) -> list[dict]:
    """Rows of the app's `store` ("history" or "accounts"), wherever its settings keep it: the
    SQLite files, or DATABASE_URL's PostgreSQL. `?` marks each of `args`, as in sqlite3."""
    parts = query.split("?")
    statement = "".join(
        part + (f":p{n}" if n < len(parts) - 1 else "") for n, part in enumerate(parts)
    )
    values = {f"p{n}": value for n, value in enumerate(args)}
    if url := app.env.get("DATABASE_URL"):
        engine = database.engine(url)
    else:
        path = app.env["HISTORY_DB_PATH" if store == "history" else "DB_PATH"]
        engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    with engine.begin() as connection:
        result = connection.execute(text(statement), values)
        return [dict(row) for row in result.mappings()] if result.returns_rows else []


def history_rows(app: RunningApp, query: str, *args: object) -> list[dict]:
    return store_rows(app, "history", query, *args)


def stored_rows(app: RunningApp, query: str, *args: object, timeout: float = 10) -> list[dict]:
    """History rows once they are there: Chainlit writes a message just after showing it."""
    deadline = time.monotonic() + timeout
    while not (rows := history_rows(app, query, *args)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return rows


def accounts_table(app: RunningApp) -> str:
    """The accounts' table: `users` in SQLite, `accounts` in PostgreSQL (beside Chainlit's)."""
    return "accounts" if app.env.get("DATABASE_URL") else "users"


def auth_secret(app: RunningApp) -> str:
    """The secret the app generated to sign sessions, where it keeps it."""
    if app.env.get("DATABASE_URL"):
        [row] = store_rows(
            app, "accounts", "SELECT value FROM app_secrets WHERE name = 'chainlit_auth_secret'"
        )
        return row["value"]
    return (Path(app.env["DB_PATH"]).parent / "chainlit_auth_secret").read_text().strip()


@contextmanager
def signed_in(app: RunningApp, username: str, password: str) -> Iterator[httpx.Client]:
    """An HTTP client holding the user's session cookie, as a browser would."""
    with httpx.Client(base_url=app.url, timeout=30) as client:
        response = client.post("/login", data={"username": username, "password": password})
        assert response.status_code == 200, response.text
        yield client
