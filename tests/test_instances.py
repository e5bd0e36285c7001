"""Two instances of the app on one PostgreSQL behave as one app: two `chainlit run` processes on
two ports, one database, one shared data folder and one shared folder of conversation files, as
on Upsun with the scaled variant (.upsun/scaled)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from .conftest import ROOT
from .postgres_server import new_database, psql
from .running_app import (
    ANSWER,
    RunningApp,
    app_environment,
    ask,
    free_port,
    open_chat,
    resume_from_sidebar,
    send_with_file,
    served,
    sign_in,
)
from .test_browser import sources_of

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Instances:
    apps: tuple[RunningApp, RunningApp]  # both with the first one's admin
    database: str
    data: Path

    @property
    def urls(self) -> tuple[str, str]:
        return self.apps[0].url, self.apps[1].url


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory, postgres: str) -> Iterator[Instances]:
    root = tmp_path_factory.mktemp("instances")
    (root / "data").mkdir()
    with ExitStack() as stack:
        database = stack.enter_context(new_database(postgres))
        shared = {
            "DATABASE_URL": database,
            "DATA_DIR": str(root / "data"),
            "HISTORY_FILES_DIR": str(root / "files"),
            "WATCH_INTERVAL": "1",
        }
        envs = [app_environment(root / name, free_port(), **shared) for name in ("a", "b")]
        # The first starts alone, as the first deployment does: it makes the schema, the admin
        # and the index of the user guide; the second finds them.
        first = stack.enter_context(served(ROOT, envs[0], root / "a.log", timeout=1200))
        started = (root / "a.log").read_text()
        password = re.search(r'administrator "admin" with\nthe password\n\n {4}(\S+)\n', started)
        assert password, started[-2000:]
        second = stack.enter_context(served(ROOT, envs[1], root / "b.log", timeout=1200))
        assert "administrator" not in (root / "b.log").read_text()
        apps = tuple(
            RunningApp(url, env, password.group(1), root / f"{name}.log")
            for url, env, name in zip((first, second), envs, "ab", strict=True)
        )
        yield Instances(apps, database, root / "data")


@pytest.fixture
def alice(instances: Instances) -> tuple[str, str]:
    name = f"alice{uuid.uuid4().hex[:6]}"
    password = f"correct horse {uuid.uuid4().hex}"
    instances.apps[0].create_password("add", name, "--password-stdin", stdin=password)
    return name, password


def test_a_conversation_started_on_one_resumes_on_the_other(
    instances: Instances, alice: tuple[str, str], browser: Browser
) -> None:
    page = open_chat(browser.new_context().new_page(), instances.apps[0], *alice)
    ask(page, "How do I use OpenAI models?")

    other = browser.new_context().new_page()
    other.goto(instances.urls[1])
    sign_in(other, *alice)
    resume_from_sidebar(other, "How do I use OpenAI models?")
    expect(other.locator(ANSWER).last).to_contain_text("Sources:")
    ask(other, "and which setting picks the embedding model?")
    # The follow-up on the second instance was searched with the question asked on the first.
    searched = psql(
        instances.database,
        'SELECT count(*) FROM steps WHERE "type" = \'retrieval\' AND "input" = '
        "'How do I use OpenAI models?' || chr(10) || "
        "'and which setting picks the embedding model?'",
    )
    assert searched.strip() == "1"


def test_a_document_added_through_one_is_answered_by_the_other(
    instances: Instances, browser: Browser
) -> None:
    page = open_chat(
        browser.new_context().new_page(),
        instances.apps[0],
        "admin",
        instances.apps[0].admin_password,
    )
    fact = f"The quartermaster's code word is {uuid.uuid4().hex[:8]}."
    send_with_file(page, "quartermaster.md", "text/markdown", fact.encode(), "")
    expect(page.get_by_text("Added quartermaster.md (1 passage)")).to_be_visible(timeout=60_000)

    other = open_chat(
        browser.new_context().new_page(),
        instances.apps[1],
        "admin",
        instances.apps[0].admin_password,
    )
    ask(other, "What is the quartermaster's code word?")
    expect(sources_of(other.locator(ANSWER).last).first).to_have_text("quartermaster.md")


def test_a_file_dropped_into_the_shared_folder_is_indexed_once(instances: Instances) -> None:
    name = f"lighthouse-{uuid.uuid4().hex[:6]}.md"
    (instances.data / name).write_text(
        "# Lighthouse keeping\n\nThe lamp of the Skerry lighthouse is lit at dusk by the keeper.\n"
    )
    # Both instances watch the folder every second; one of them indexes it, once.
    chunks = _wait_for_chunks(instances, name)
    assert chunks == 1, f"{name}'s one passage is in the index {chunks} times"


def test_a_login_lock_earned_on_one_holds_on_the_other(
    instances: Instances, alice: tuple[str, str]
) -> None:
    name, password = alice
    for _ in range(5):
        wrong = httpx.post(f"{instances.urls[0]}/login", data={"username": name, "password": "no"})
        assert wrong.status_code == 401
    locked = httpx.post(f"{instances.urls[1]}/login", data={"username": name, "password": password})
    assert locked.status_code == 429, locked.text


def test_an_account_disabled_on_one_is_signed_out_of_both(
    instances: Instances, alice: tuple[str, str]
) -> None:
    clients = [httpx.Client(base_url=url) for url in instances.urls]
    for client in clients:
        assert (
            client.post("/login", data=dict(zip(("username", "password"), alice))).status_code
            == 200
        )
        assert client.get("/user").status_code == 200
    instances.apps[1].create_password("disable", alice[0])
    assert [client.get("/user").status_code for client in clients] == [401, 401]
    assert (
        httpx.post(
            f"{instances.urls[1]}/login", data=dict(zip(("username", "password"), alice))
        ).status_code
        == 401
    )


def _wait_for_chunks(instances: Instances, name: str, timeout: float = 120) -> int:
    """How many times `name`'s passages are in the index, once it is there and both instances
    have had time to sync again."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline and not count:
        time.sleep(1)
        count = int(
            psql(instances.database, f"SELECT count(*) FROM chunks WHERE file_name = '{name}'")
        )
    time.sleep(5)  # several more syncs of each instance
    return int(psql(instances.database, f"SELECT count(*) FROM chunks WHERE file_name = '{name}'"))
