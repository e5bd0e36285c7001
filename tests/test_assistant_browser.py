"""RAG_BACKEND=assistant in real Chromium, against the OpenAI-protocol server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from .assistant_server import AssistantServer
from .conftest import ROOT, environ_without_settings
from .test_browser import (
    ANSWER,
    CHROMIUM,
    CHROMIUM_ARGS,
    free_port,
    sign_in,
    sources_of,
    wait_until_served,
)

PASSWORD = "a long password for the assistant test"


@pytest.fixture(scope="module")
def assistant_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("assistant")
    (root / "data").mkdir()
    (root / "data" / "otters.md").write_text(
        "Otters hold hands while they sleep so they do not drift apart."
    )
    with AssistantServer() as server:
        port = free_port()
        env = environ_without_settings() | {
            "RAG_BACKEND": "assistant",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": server.base_url,
            "DATA_DIR": str(root / "data"),
            "STORAGE_DIR": str(root / "storage"),
            "DB_PATH": str(root / "database" / "auth.db"),
            "HISTORY_DB_PATH": str(root / "database" / "history.db"),
            "HISTORY_FILES_DIR": str(root / "database" / "history-files"),
            "CHAINLIT_PORT": str(port),
        }
        env.pop("CHAINLIT_AUTH_SECRET", None)
        subprocess.run(
            [sys.executable, "create_password.py", "add", "reader", "--password-stdin"],
            input=PASSWORD,
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        log = root / "app.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "chainlit", "run", "app.py", "--headless"],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until_served(f"http://127.0.0.1:{port}/", process, log, timeout=300)
            yield f"http://127.0.0.1:{port}", root
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
            (ROOT / ".files").mkdir(exist_ok=True)  # Chainlit removes it when it stops
            (ROOT / ".files" / ".gitkeep").touch()


def test_a_question_streams_an_answer_with_the_cited_file(assistant_app) -> None:
    url, root = assistant_app
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        sign_in(page, "reader", PASSWORD)
        expect(page.locator(ANSWER).first).to_be_visible(timeout=60_000)
        page.locator("#chat-input").fill("How do otters sleep?")
        page.keyboard.press("Enter")
        answer = page.locator(ANSWER).nth(1)
        expect(answer).to_contain_text("From otters.md: Otters hold hands", timeout=60_000)
        expect(answer).to_contain_text("Sources:")
        expect(page.get_by_text("Used Search files")).to_be_visible()
        source = sources_of(answer)
        expect(source).to_have_text("otters.md")
        source.click()
        expect(page.locator("#side-view-content")).to_contain_text("Otters hold hands")
        browser.close()

    # The assistant's conversation is kept with the thread, so a resume continues it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sqlite3.connect(root / "database" / "history.db") as db:
            rows = db.execute('SELECT "metadata" FROM threads').fetchall()
        state = [json.loads(m).get("backend_state") for (m,) in rows if m]
        if any(state):
            break
        time.sleep(0.2)
    assert [s for s in state if s][0]["previous_response_id"].startswith("resp_")
