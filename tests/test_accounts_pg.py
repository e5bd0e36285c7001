"""What only PostgreSQL has: several instances of the app on one database of accounts. Each
instance is a store on an engine of its own (as in two processes), or a process of its own.
The rules every store shares are tested on both in test_auth.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import text

import ragchat.auth
from ragchat import database
from ragchat.auth import Throttled, UserStore, create_first_admin, user_store
from ragchat.config import ConfigError, Settings, load_settings

from .conftest import ROOT, environ_without_settings
from .postgres_server import new_database
from .running_app import free_port

PASSWORD = "correct horse battery staple"


@pytest.fixture
def url(postgres: str) -> Iterator[str]:
    with new_database(postgres) as url:
        yield url


def instance(url: str, name: str) -> UserStore:
    """The accounts as the instance `name` sees them: its own engine and connections (the
    engine is one per URL and process, and the application name makes the URL its own)."""
    store = user_store(settings_for(f"{url}?application_name={name}"))
    assert store.tables.engine is not database.engine(url)
    return store


def settings_for(url: str) -> Settings:
    return load_settings(_env_file=None, database_url=url)


def failures(url: str, key: str) -> int:
    with database.engine(url).begin() as connection:
        return connection.execute(
            text("SELECT failures FROM login_failures WHERE key = :key"), {"key": key}
        ).scalar_one()


def test_a_lock_earned_on_one_instance_holds_on_the_other(clean_env, url: str) -> None:
    one, other = instance(url, "one"), instance(url, "other")
    one.add("erin", PASSWORD)
    for attempt in range(3):
        assert one.authenticate("erin", "wrong password!!", f"10.0.0.{attempt}") is None
    for attempt in range(2):
        assert other.authenticate("ERIN", "wrong password!!", None) is None
    with pytest.raises(Throttled) as locked:  # the fifth failure, counted across both
        one.authenticate("erin", PASSWORD, None)
    assert locked.value.retry_after == pytest.approx(60, abs=2)
    with pytest.raises(Throttled):
        other.authenticate("erin", PASSWORD, None)


def test_disabling_or_resetting_on_one_instance_ends_the_sessions_on_the_other(
    clean_env, url: str
) -> None:
    one, other = instance(url, "one"), instance(url, "other")
    key = one.add("kim", PASSWORD).session_key
    assert other.session_is_current("kim", key)
    one.set_disabled("kim", True)
    assert not other.session_is_current("kim", key)
    assert other.authenticate("kim", PASSWORD, None) is None

    other.set_disabled("kim", False)
    key = one.authenticate("kim", PASSWORD, None).session_key
    assert other.session_is_current("kim", key)
    other.set_password("kim", PASSWORD + " two")
    assert not one.session_is_current("kim", key)
    assert one.authenticate("kim", PASSWORD + " two", None) is not None


def test_failures_counted_at_once_on_two_instances_are_each_counted(
    clean_env, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No lock, so that every attempt reaches the count (a lock would refuse it before).
    monkeypatch.setattr(ragchat.auth, "ACCOUNT_FREE_FAILURES", 10_000)
    stores = [instance(url, "one"), instance(url, "other")]
    stores[0].add("hank", PASSWORD)
    threads, attempts = 8, 15
    refused: list[bool] = []
    start = threading.Barrier(threads)

    def guess(store: UserStore) -> None:
        start.wait()
        for n in range(attempts):
            refused.append(store.authenticate("hank", f"guess {n}", None) is None)

    workers = [threading.Thread(target=guess, args=(stores[i % 2],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert refused == [True] * threads * attempts
    assert failures(url, "user:hank") == threads * attempts


def test_instances_asking_for_the_secret_at_once_get_one(clean_env, url: str) -> None:
    stores = [instance(url, "one"), instance(url, "other")]
    threads = 8
    start, secrets = threading.Barrier(threads), []

    def ask(store: UserStore) -> None:
        start.wait()
        secrets.append(store.tables.auth_secret())

    workers = [threading.Thread(target=ask, args=(stores[i % 2],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(secrets) == threads and len(set(secrets)) == 1
    with database.engine(url).begin() as connection:
        assert connection.execute(text("SELECT value FROM app_secrets")).scalars().all() == [
            secrets[0]
        ]


# Each process is an instance starting: settings, accounts, the signing secret, the first admin.
INSTANCE_START = """
import json, os, sys
from ragchat.auth import create_first_admin, ensure_auth_secret, user_store
from ragchat.config import load_settings

settings = load_settings(_env_file=None)
print("ready", flush=True)
sys.stdin.readline()
store = user_store(settings)
ensure_auth_secret(store)
admin = create_first_admin(store)
print(json.dumps({"secret": os.environ["CHAINLIT_AUTH_SECRET"], "admin": admin}), flush=True)
"""


def test_instances_starting_together_share_one_schema_one_secret_and_one_admin(
    clean_env, url: str
) -> None:
    environ = {**environ_without_settings(), "DATABASE_URL": url}
    environ.pop("CHAINLIT_AUTH_SECRET", None)
    starting = [
        subprocess.Popen(
            [sys.executable, "-c", INSTANCE_START],
            env=environ,
            cwd=ROOT,  # this checkout's ragchat
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for process in starting:  # all imported, then all go at once
        assert process.stdout.readline() == "ready\n", process.stderr.read()
    for process in starting:
        process.stdin.write("go\n")
        process.stdin.flush()
    started = []
    for process in starting:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        started.append(json.loads(out))

    secrets = {each["secret"] for each in started}
    assert len(secrets) == 1 and len(secrets.pop()) >= 64
    [password] = [each["admin"] for each in started if each["admin"]]
    store = user_store(settings_for(url))
    assert [u.username for u in store.list()] == ["admin"]
    assert store.authenticate("admin", password, None).is_admin
    assert create_first_admin(store) is None


def test_an_unreachable_server_is_named_without_its_password(clean_env) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(ConfigError) as refusal:
        user_store(settings_for(f"postgresql://ragchat:hunter2@127.0.0.1:{port}/accounts"))
    message = str(refusal.value)
    assert message.startswith(
        f"Invalid setting DATABASE_URL='postgresql://ragchat:***@127.0.0.1:{port}/accounts': "
    )
    assert "cannot reach the database (connection failed:" in message
    assert message.endswith(
        "check that the server runs and that the host, port, user, password and database name "
        "are right"
    )
    assert "hunter2" not in message and "\n" not in message


def test_an_unknown_user_or_database_is_explained(clean_env, postgres: str) -> None:
    server = postgres.rsplit("@", 1)[1].rsplit("/", 1)[0]
    for url, reason in [
        (f"postgresql://nobody:secret@{server}/postgres", 'role "nobody" does not exist'),
        (f"postgresql://postgres@{server}/no_such_db", 'database "no_such_db" does not exist'),
    ]:
        with pytest.raises(ConfigError, match="cannot reach the database") as refusal:
            user_store(settings_for(url))
        assert reason in str(refusal.value)
        assert "secret" not in str(refusal.value)
