"""Accounts over each real store (a SQLite file, a PostgreSQL database): hashing, upgrades,
timing parity, throttling, state. What only PostgreSQL has, several instances on one database,
is in test_accounts_pg.py."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import statistics
import time
from contextlib import closing
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import text

import ragchat.auth
from ragchat import database
from ragchat.auth import (
    AccountError,
    Throttled,
    UserStore,
    create_first_admin,
    ensure_auth_secret,
    lock_seconds,
    user_store,
)
from ragchat.config import ConfigError, Settings, load_settings

PASSWORD = "correct horse battery staple"


class Clock:
    """Stands in for time.time() in ragchat.auth, so locks can expire without waiting."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(clean_env: Path, database_url: str | None) -> Settings:
    """The accounts in a SQLite file of the test's own, or in a PostgreSQL database of its own."""
    return load_settings(
        _env_file=None, db_path=clean_env / "database" / "auth.db", database_url=database_url
    )


@pytest.fixture
def store(settings: Settings) -> UserStore:
    return user_store(settings)


def sql(settings: Settings, statement: str, **values: object) -> list[tuple]:
    """`statement` run on the store's own tables, as an administrator would by hand; its
    `{accounts}` is the accounts table of that store."""
    if settings.database_url is None:
        with closing(sqlite3.connect(settings.db_path)) as db, db:
            return db.execute(statement.format(accounts="users"), values).fetchall()
    with database.engine(settings.database_url).begin() as connection:
        result = connection.execute(text(statement.format(accounts="accounts")), values)
        return [tuple(row) for row in result] if result.returns_rows else []


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ragchat.auth.time, "time", clock)
    return clock


def stored_hash(settings: Settings, username: str) -> str:
    [(hashed,)] = sql(
        settings, "SELECT password_hash FROM {accounts} WHERE username = :u", u=username
    )
    return hashed


def test_passwords_are_argon2id_with_owasp_parameters_and_a_salt_each(
    store: UserStore, settings: Settings
) -> None:
    store.add("alice", PASSWORD)
    store.add("bob", PASSWORD)
    alice, bob = stored_hash(settings, "alice"), stored_hash(settings, "bob")
    assert alice.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert alice != bob  # same password, different salts
    assert PASSWORD not in alice
    if settings.database_url is None:
        assert stat.S_IMODE(settings.db_path.stat().st_mode) == 0o600


def test_right_password_signs_in_and_wrong_one_does_not(store: UserStore) -> None:
    store.add("alice", PASSWORD, role="admin")
    user = store.authenticate("alice", PASSWORD, "10.0.0.1")
    assert (user.username, user.role, user.is_admin) == ("alice", "admin", True)
    assert store.authenticate("ALICE", PASSWORD, None).username == "alice"  # case-insensitive
    assert store.authenticate("alice", PASSWORD + "!", "10.0.0.1") is None
    assert store.authenticate("nobody", PASSWORD, "10.0.0.1") is None


def test_a_name_in_another_case_is_the_same_account(store: UserStore) -> None:
    store.add("Alice", PASSWORD)
    with pytest.raises(AccountError, match="The user 'alice' already exists."):
        store.add("alice", PASSWORD + " two")
    assert [u.username for u in store.list()] == ["Alice"]
    assert store.get("ALICE").username == "Alice"
    assert store.authenticate("alice", PASSWORD, None).username == "Alice"
    assert store.authenticate("alice", PASSWORD + " two", None) is None
    store.set_disabled("aLiCe", True)
    assert store.get("Alice").disabled
    store.delete("alice")
    assert store.count() == 0


@pytest.mark.parametrize("odd", ["\x00", "\ud800"], ids=["NUL", "lone surrogate"])
def test_text_no_database_stores_gets_the_usual_answers(store: UserStore, clock, odd) -> None:
    """A browser's JSON can carry both; PostgreSQL refuses NUL in text, and neither driver
    encodes a lone surrogate."""
    key = store.add("alice", PASSWORD).session_key
    for _ in range(5):
        assert store.authenticate(f"alice{odd}", PASSWORD, f"10.0.0.1{odd}") is None
        assert store.authenticate("alice", PASSWORD + odd, None) is None
    with pytest.raises(Throttled):  # counted as failures like any other
        store.authenticate("alice", PASSWORD, None)
    clock.now += 3600
    assert store.authenticate("alice", PASSWORD, None).session_key == key
    assert store.get(f"alice{odd}") is None
    assert not store.session_is_current(f"alice{odd}", key)
    assert not store.session_is_current("alice", key + odd)
    for change in (store.delete, lambda name: store.set_disabled(name, True)):
        with pytest.raises(AccountError, match="There is no user"):
            change(f"alice{odd}")
    with pytest.raises(AccountError, match="is not a valid username"):
        store.add(f"bob{odd}", PASSWORD)
    assert [u.username for u in store.list()] == ["alice"]


def test_tutorial_database_and_sha256_hash_are_upgraded_on_first_login(clean_env: Path) -> None:
    settings = load_settings(_env_file=None, db_path=clean_env / "auth.db")
    with (
        closing(sqlite3.connect(settings.db_path)) as db,
        db,
    ):  # the table as the tutorial had people create it
        db.execute("CREATE TABLE users (username TEXT PRIMARY KEY, password_hash TEXT)")
        legacy = hashlib.sha256(PASSWORD.encode()).hexdigest()
        db.execute("INSERT INTO users VALUES ('carol', ?)", (legacy,))
    store = user_store(settings)
    assert store.get("carol").role == "user"
    assert store.authenticate("carol", "not the password!", None) is None
    assert stored_hash(settings, "carol") == legacy
    assert store.authenticate("carol", PASSWORD, None).username == "carol"
    assert stored_hash(settings, "carol").startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert store.authenticate("carol", PASSWORD, None) is not None


def test_outdated_argon2_parameters_are_upgraded_on_login(
    store: UserStore, settings: Settings
) -> None:
    store.add("dave", PASSWORD)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    sql(settings, "UPDATE {accounts} SET password_hash = :weak WHERE username = 'dave'", weak=weak)
    assert stored_hash(settings, "dave").startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert store.authenticate("dave", PASSWORD, None) is not None
    assert stored_hash(settings, "dave").startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_unknown_user_costs_the_same_time_as_a_wrong_password(store: UserStore) -> None:
    known = [f"user{i}" for i in range(25)]
    for name in known:
        store.add(name, PASSWORD)
    unknown_times, wrong_times = [], []
    for i, name in enumerate(known):  # alternate, so machine noise hits both alike
        for times, username in ((unknown_times, f"ghost{i}"), (wrong_times, name)):
            started = time.perf_counter()
            assert store.authenticate(username, "wrong password!!", None) is None
            times.append(time.perf_counter() - started)
    unknown, wrong = statistics.median(unknown_times), statistics.median(wrong_times)
    assert abs(unknown - wrong) / wrong < 0.10, (unknown, wrong)


def test_account_locks_after_five_failures_from_any_address(store: UserStore, clock) -> None:
    store.add("erin", PASSWORD)
    for attempt in range(5):
        assert store.authenticate("erin", "wrong password!!", f"10.0.0.{attempt}") is None
    with pytest.raises(Throttled) as locked:
        store.authenticate("erin", PASSWORD, "10.9.9.9")  # even the right password waits
    assert locked.value.retry_after == pytest.approx(60)

    clock.now += 61
    assert store.authenticate("erin", "wrong password!!", None) is None  # sixth failure
    with pytest.raises(Throttled) as locked:
        store.authenticate("erin", PASSWORD, None)
    assert locked.value.retry_after == pytest.approx(120)  # doubled

    clock.now += 121
    assert store.authenticate("erin", PASSWORD, None).username == "erin"
    for _ in range(4):  # the success cleared the count
        assert store.authenticate("erin", "wrong password!!", None) is None
    assert store.authenticate("erin", PASSWORD, None) is not None


def test_failures_are_forgotten_after_a_day(store: UserStore, clock) -> None:
    store.add("fay", PASSWORD)
    for _ in range(4):
        store.authenticate("fay", "wrong password!!", None)
    clock.now += 24 * 3600 + 1
    for _ in range(4):
        assert store.authenticate("fay", "wrong password!!", None) is None
    assert store.authenticate("fay", PASSWORD, None) is not None


def test_address_locks_after_twenty_failures_across_accounts(store: UserStore, clock) -> None:
    store.add("gina", PASSWORD)
    for attempt in range(20):
        assert store.authenticate(f"guess{attempt}", "wrong password!!", "192.0.2.7") is None
    with pytest.raises(Throttled):
        store.authenticate("gina", PASSWORD, "192.0.2.7")
    assert store.authenticate("gina", PASSWORD, "192.0.2.8") is not None  # other addresses


def test_lock_grows_to_an_hour_and_a_thousand_guesses_take_weeks(store: UserStore, clock) -> None:
    assert [lock_seconds(n, 5) for n in (4, 5, 6, 7, 11, 12, 50)] == [
        0,
        60,
        120,
        240,
        3600,
        3600,
        3600,
    ]
    store.add("hank", PASSWORD)
    started, guesses = clock.now, 0
    while guesses < 100:  # an attacker who waits out every lock
        try:
            store.authenticate("hank", f"guess number {guesses}", None)
            guesses += 1
        except Throttled as locked:
            clock.now += locked.retry_after
    waited = clock.now - started
    assert waited == pytest.approx(sum(lock_seconds(n, 5) for n in range(1, 100)))
    thousand_guesses_days = sum(lock_seconds(n, 5) for n in range(1, 1000)) / 86400
    assert thousand_guesses_days == pytest.approx(41.25, abs=0.01)


def test_disabled_and_deleted_accounts_cannot_sign_in(store: UserStore) -> None:
    store.add("ivy", PASSWORD)
    store.set_disabled("ivy", True)
    assert store.get("ivy").disabled
    assert store.authenticate("ivy", PASSWORD, None) is None
    store.set_disabled("ivy", False)
    assert store.authenticate("ivy", PASSWORD, None) is not None
    store.delete("ivy")
    assert store.get("ivy") is None
    assert store.authenticate("ivy", PASSWORD, None) is None
    with pytest.raises(AccountError, match="There is no user 'ivy'"):
        store.delete("ivy")


def session_keys(settings: Settings) -> dict[str, str | None]:
    return dict(sql(settings, "SELECT username, session_key FROM {accounts}"))


def test_reset_and_disable_replace_the_session_key_and_nothing_else_does(
    store: UserStore, settings: Settings
) -> None:
    first = store.add("kim", PASSWORD).session_key
    assert first and store.session_is_current("kim", first)
    assert store.authenticate("kim", PASSWORD, None).session_key == first  # other devices stay
    store.set_disabled("kim", False)  # enabling an enabled account
    assert session_keys(settings)["kim"] == first

    store.set_password("kim", PASSWORD + " two")
    after_reset = session_keys(settings)["kim"]
    assert after_reset not in {first, None}
    assert not store.session_is_current("kim", first)

    store.set_disabled("kim", True)
    assert not store.session_is_current("kim", after_reset)
    store.set_disabled("kim", False)
    after_enable = store.authenticate("kim", PASSWORD + " two", None).session_key
    assert after_enable not in {first, after_reset, None}
    assert store.session_is_current("kim", after_enable)


def test_a_login_that_upgrades_the_hash_keeps_the_session_key(
    store: UserStore, settings: Settings
) -> None:
    key = store.add("lou", PASSWORD).session_key
    legacy = hashlib.sha256(PASSWORD.encode()).hexdigest()
    sql(settings, "UPDATE {accounts} SET password_hash = :h WHERE username = 'lou'", h=legacy)
    assert store.authenticate("lou", PASSWORD, None).session_key == key
    assert stored_hash(settings, "lou").startswith("$argon2id$")


def test_a_new_account_with_an_old_name_has_a_new_session_key(store: UserStore) -> None:
    old = store.add("max", PASSWORD).session_key
    store.delete("max")
    assert not store.session_is_current("max", old)
    new = store.add("max", PASSWORD).session_key
    assert new != old
    assert not store.session_is_current("max", old)
    assert store.session_is_current("max", new)


def test_only_the_current_key_of_an_enabled_existing_account_is_current(
    store: UserStore, settings: Settings
) -> None:
    key = store.add("ned", PASSWORD).session_key
    store.add("ola", PASSWORD)
    assert store.session_is_current("ned", key)
    assert not store.session_is_current("ola", key)
    assert not store.session_is_current("nobody", key)
    assert not store.session_is_current("ned", "")
    # disabled by hand, key left as it was
    sql(settings, "UPDATE {accounts} SET disabled = :yes WHERE username = 'ned'", yes=True)
    assert not store.session_is_current("ned", key)


def test_accounts_from_before_session_keys_get_one_each(clean_env: Path) -> None:
    settings = load_settings(_env_file=None, db_path=clean_env / "auth.db")
    path = settings.db_path
    with closing(sqlite3.connect(path)) as db, db:  # the table as the last release left it
        db.execute(
            "CREATE TABLE users (username TEXT PRIMARY KEY COLLATE NOCASE, password_hash TEXT "
            "NOT NULL, role TEXT NOT NULL DEFAULT 'user', disabled INTEGER NOT NULL DEFAULT 0, "
            "created_at TEXT)"
        )
        for name in ("pam", "quinn"):
            db.execute("INSERT INTO users (username, password_hash) VALUES (?, ?)", (name, "x"))
    store = user_store(settings)
    keys = session_keys(settings)
    assert None not in keys.values() and len(set(keys.values())) == 2
    user_store(settings)  # the next start
    assert session_keys(settings) == keys

    with closing(sqlite3.connect(path)) as db, db:  # added by hand while the app runs
        legacy = hashlib.sha256(PASSWORD.encode()).hexdigest()
        db.execute("INSERT INTO users (username, password_hash) VALUES ('rae', ?)", (legacy,))
    given = store.authenticate("rae", PASSWORD, None).session_key
    assert given is not None and session_keys(settings)["rae"] == given
    assert store.session_is_current("rae", given)


@pytest.mark.parametrize(
    ("username", "password", "message"),
    [
        ("jo", "short", "The password has 5 characters; use at least 12."),
        ("jo", "qwertyuiop12", "The password is one of the most common ones; choose another."),
        ("jo", PASSWORD + "\udcff", "The password holds bytes that are not text (UTF-8)"),
        ("../etc", PASSWORD, "'../etc' is not a valid username"),
        ("", PASSWORD, "'' is not a valid username"),
        ("x" * 65, PASSWORD, "is not a valid username"),
    ],
)
def test_bad_accounts_are_refused_clearly(
    store: UserStore, username: str, password: str, message: str
) -> None:
    with pytest.raises(AccountError) as refused:
        store.add(username, password)
    assert message in str(refused.value)
    assert store.count() == 0


def test_a_file_that_is_not_a_database_stops_with_a_clear_error(clean_env: Path) -> None:
    path = clean_env / "auth.db"
    path.write_text("not sqlite at all " * 100)
    with pytest.raises(ConfigError, match=r"Invalid setting DB_PATH='.*auth.db': cannot use it"):
        user_store(load_settings(_env_file=None, db_path=path))
    assert path.read_text().startswith("not sqlite")  # left as it was


def test_first_start_creates_one_admin_with_a_random_password(store: UserStore) -> None:
    password = create_first_admin(store)
    assert len(password) == 20 and password.isalnum()
    assert store.authenticate("admin", password, None).role == "admin"
    assert create_first_admin(store) is None
    assert store.authenticate("admin", "admin", None) is None
    assert [u.username for u in store.list()] == ["admin"]


def stored_secret(settings: Settings) -> str | None:
    """The signing secret where the store keeps it: a file beside SQLite's, a row in PostgreSQL."""
    if settings.database_url is None:
        path = settings.db_path.parent / "chainlit_auth_secret"
        return path.read_text() if path.exists() else None
    rows = sql(settings, "SELECT value FROM app_secrets WHERE name = 'chainlit_auth_secret'")
    return rows[0][0] if rows else None


def test_auth_secret_is_generated_once_and_kept_by_the_store(
    store: UserStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHAINLIT_AUTH_SECRET", raising=False)
    ensure_auth_secret(store)
    secret = os.environ["CHAINLIT_AUTH_SECRET"]
    assert len(secret) >= 64 and stored_secret(settings) == secret
    if settings.database_url is None:
        secret_file = settings.db_path.parent / "chainlit_auth_secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert sorted(p.name for p in secret_file.parent.iterdir()) == ["auth.db", secret_file.name]

    monkeypatch.delenv("CHAINLIT_AUTH_SECRET")
    ensure_auth_secret(user_store(settings))  # a restart keeps the sessions valid
    assert os.environ["CHAINLIT_AUTH_SECRET"] == secret


def test_auth_secret_from_the_environment_is_used_as_is(
    store: UserStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", "from-upsun-variables")
    ensure_auth_secret(store)
    assert os.environ["CHAINLIT_AUTH_SECRET"] == "from-upsun-variables"
    assert stored_secret(settings) is None
