"""One running app shared by the attack tests, with three accounts.

Each attack test works on accounts and conversations of its own making when it changes them
(disables, deletes, resets), so the tests can run in any order against the same app. Tests
that need other settings (a trusted proxy, say) start an app of their own with `running_app`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..running_app import (  # noqa: F401  (signed_in and the rows: for the attack tests)
    RunningApp,
    history_rows,
    running_app_on,
    signed_in,
    stored_rows,
)

ALICE = ("alice", "alice's long passphrase")
BOB = ("bob", "bob's long passphrase")  # an ordinary user, the usual attacker
CAROL = ("carol", "carol's long admin passphrase")  # an admin: no backdoor for them either


@pytest.fixture(scope="session", params=["files", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningApp]:
    """The app on each store: every attack test runs against both."""
    root = tmp_path_factory.mktemp(f"security-{request.param}")
    with running_app_on(request.param, request, root) as started:
        started.create_password("add", ALICE[0], "--password-stdin", stdin=ALICE[1])
        started.create_password("add", BOB[0], "--password-stdin", stdin=BOB[1])
        started.create_password("add", CAROL[0], "--admin", "--password-stdin", stdin=CAROL[1])
        yield started
