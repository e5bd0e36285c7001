"""One running app shared by the attack tests, with three accounts.

Each attack test works on accounts and conversations of its own making when it changes them
(disables, deletes, resets), so the tests can run in any order against the same app. Tests
that need other settings (a trusted proxy, say) start an app of their own with `running_app`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from ..postgres_server import new_database
from ..running_app import (  # noqa: F401  (signed_in: for the attack tests)
    CHROMIUM,
    CHROMIUM_ARGS,
    RunningApp,
    running_app,
    signed_in,
    store_rows,
)

ALICE = ("alice", "alice's long passphrase")
BOB = ("bob", "bob's long passphrase")  # an ordinary user, the usual attacker
CAROL = ("carol", "carol's long admin passphrase")  # an admin: no backdoor for them either


@pytest.fixture(scope="session", params=["files", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningApp]:
    """The app on each store: every attack test runs against both."""
    with ExitStack() as stack:
        settings = {}
        if request.param == "postgresql":
            server = request.getfixturevalue("postgres")
            settings["DATABASE_URL"] = stack.enter_context(new_database(server))
        started = stack.enter_context(
            running_app(tmp_path_factory.mktemp(f"security-{request.param}"), **settings)
        )
        started.create_password("add", ALICE[0], "--password-stdin", stdin=ALICE[1])
        started.create_password("add", BOB[0], "--password-stdin", stdin=BOB[1])
        started.create_password("add", CAROL[0], "--admin", "--password-stdin", stdin=CAROL[1])
        yield started


def history_rows(app: RunningApp, query: str, *args: object) -> list[dict]:
    return store_rows(app, "history", query, *args)


def stored_rows(app: RunningApp, query: str, *args: object, timeout: float = 10) -> list[dict]:
    """Rows once they are there: Chainlit writes a message just after showing it."""
    deadline = time.monotonic() + timeout
    while not (rows := history_rows(app, query, *args)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return rows
