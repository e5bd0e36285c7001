"""Accounts over real SQLite files: hashing, upgrades, timing parity, throttling, state."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import statistics
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher

import ragchat.auth
from ragchat.auth import (
    AccountError,
    Throttled,
    UserStore,
    create_first_admin,
    ensure_auth_secret,
    lock_seconds,
)
from ragchat.config import ConfigError

PASSWORD = "correct horse battery staple"


class Clock:
    """Stands in for time.time() in ragchat.auth, so locks can expire without waiting."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    return UserStore(tmp_path / "database" / "auth.db")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ragchat.auth.time, "time", clock)
    return clock


def stored_hash(store: UserStore, username: str) -> str:
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT password_hash FROM users WHERE username = ?", (username,)).fetchone()[0]


def test_passwords_are_argon2id_with_owasp_parameters_and_a_salt_each(store: UserStore) -> None:
    store.add("alice", PASSWORD)
    store.add("bob", PASSWORD)
    alice, bob = stored_hash(store, "alice"), stored_hash(store, "bob")
    assert alice.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert alice != bob  # same password, different salts
    assert PASSWORD not in alice
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_right_password_signs_in_and_wrong_one_does_not(store: UserStore) -> None:
    store.add("alice", PASSWORD, role="admin")
    user = store.authenticate("alice", PASSWORD, "10.0.0.1")
    assert (user.username, user.role, user.is_admin) == ("alice", "admin", True)
    assert store.authenticate("ALICE", PASSWORD, None).username == "alice"  # case-insensitive
    assert store.authenticate("alice", PASSWORD + "!", "10.0.0.1") is None
    assert store.authenticate("nobody", PASSWORD, "10.0.0.1") is None


def test_tutorial_database_and_sha256_hash_are_upgraded_on_first_login(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    with sqlite3.connect(path) as db:  # the table as the tutorial had people create it
        db.execute("CREATE TABLE users (username TEXT PRIMARY KEY, password_hash TEXT)")
        legacy = hashlib.sha256(PASSWORD.encode()).hexdigest()
        db.execute("INSERT INTO users VALUES ('carol', ?)", (legacy,))
    store = UserStore(path)
    assert store.get("carol").role == "user"
    assert store.authenticate("carol", "not the password!", None) is None
    assert stored_hash(store, "carol") == legacy
    assert store.authenticate("carol", PASSWORD, None).username == "carol"
    assert stored_hash(store, "carol").startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert store.authenticate("carol", PASSWORD, None) is not None


def test_outdated_argon2_parameters_are_upgraded_on_login(store: UserStore) -> None:
    store.add("dave", PASSWORD)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE users SET password_hash = ? WHERE username = 'dave'", (weak,))
    assert store.authenticate("dave", PASSWORD, None) is not None
    assert stored_hash(store, "dave").startswith("$argon2id$v=19$m=19456,t=2,p=1$")


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
        0, 60, 120, 240, 3600, 3600, 3600
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


def session_keys(store: UserStore) -> dict[str, str | None]:
    with sqlite3.connect(store.path) as db:
        return dict(db.execute("SELECT username, session_key FROM users"))


def test_reset_and_disable_replace_the_session_key_and_nothing_else_does(
    store: UserStore,
) -> None:
    first = store.add("kim", PASSWORD).session_key
    assert first and store.session_is_current("kim", first)
    assert store.authenticate("kim", PASSWORD, None).session_key == first  # other devices stay
    store.set_disabled("kim", False)  # enabling an enabled account
    assert session_keys(store)["kim"] == first

    store.set_password("kim", PASSWORD + " two")
    after_reset = session_keys(store)["kim"]
    assert after_reset not in {first, None}
    assert not store.session_is_current("kim", first)

    store.set_disabled("kim", True)
    assert not store.session_is_current("kim", after_reset)
    store.set_disabled("kim", False)
    after_enable = store.authenticate("kim", PASSWORD + " two", None).session_key
    assert after_enable not in {first, after_reset, None}
    assert store.session_is_current("kim", after_enable)


def test_a_login_that_upgrades_the_hash_keeps_the_session_key(store: UserStore) -> None:
    key = store.add("lou", PASSWORD).session_key
    legacy = hashlib.sha256(PASSWORD.encode()).hexdigest()
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE users SET password_hash = ? WHERE username = 'lou'", (legacy,))
    assert store.authenticate("lou", PASSWORD, None).session_key == key
    assert stored_hash(store, "lou").startswith("$argon2id$")


def test_a_new_account_with_an_old_name_has_a_new_session_key(store: UserStore) -> None:
    old = store.add("max", PASSWORD).session_key
    store.delete("max")
    assert not store.session_is_current("max", old)
    new = store.add("max", PASSWORD).session_key
    assert new != old
    assert not store.session_is_current("max", old)
    assert store.session_is_current("max", new)


def test_only_the_current_key_of_an_enabled_existing_account_is_current(store: UserStore) -> None:
    key = store.add("ned", PASSWORD).session_key
    store.add("ola", PASSWORD)
    assert store.session_is_current("ned", key)
    assert not store.session_is_current("ola", key)
    assert not store.session_is_current("nobody", key)
    assert not store.session_is_current("ned", "")
    with sqlite3.connect(store.path) as db:  # disabled by hand, key left as it was
        db.execute("UPDATE users SET disabled = 1 WHERE username = 'ned'")
    assert not store.session_is_current("ned", key)


def test_accounts_from_before_session_keys_get_one_each(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    with sqlite3.connect(path) as db:  # the table as the last release left it
        db.execute(
            "CREATE TABLE users (username TEXT PRIMARY KEY COLLATE NOCASE, password_hash TEXT "
            "NOT NULL, role TEXT NOT NULL DEFAULT 'user', disabled INTEGER NOT NULL DEFAULT 0, "
            "created_at TEXT)"
        )
        for name in ("pam", "quinn"):
            db.execute("INSERT INTO users (username, password_hash) VALUES (?, ?)", (name, "x"))
    store = UserStore(path)
    keys = session_keys(store)
    assert None not in keys.values() and len(set(keys.values())) == 2
    UserStore(path)  # the next start
    assert session_keys(store) == keys

    with sqlite3.connect(path) as db:  # added by hand while the app runs
        legacy = hashlib.sha256(PASSWORD.encode()).hexdigest()
        db.execute("INSERT INTO users (username, password_hash) VALUES ('rae', ?)", (legacy,))
    given = store.authenticate("rae", PASSWORD, None).session_key
    assert given is not None and session_keys(store)["rae"] == given
    assert store.session_is_current("rae", given)


@pytest.mark.parametrize(
    ("username", "password", "message"),
    [
        ("jo", "short", "The password has 5 characters; use at least 12."),
        ("jo", "qwertyuiop12", "The password is one of the most common ones; choose another."),
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


def test_a_file_that_is_not_a_database_stops_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    path.write_text("not sqlite at all " * 100)
    with pytest.raises(ConfigError, match=r"Invalid setting DB_PATH='.*auth.db': cannot use it"):
        UserStore(path)
    assert path.read_text().startswith("not sqlite")  # left as it was


def test_first_start_creates_one_admin_with_a_random_password(store: UserStore) -> None:
    password = create_first_admin(store)
    assert len(password) == 20 and password.isalnum()
    assert store.authenticate("admin", password, None).role == "admin"
    assert create_first_admin(store) is None
    assert store.authenticate("admin", "admin", None) is None
    assert [u.username for u in store.list()] == ["admin"]


def test_auth_secret_is_generated_once_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHAINLIT_AUTH_SECRET", raising=False)
    ensure_auth_secret(tmp_path / "database")
    secret_file = tmp_path / "database" / "chainlit_auth_secret"
    secret = os.environ["CHAINLIT_AUTH_SECRET"]
    assert len(secret) >= 64 and secret_file.read_text() == secret
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600

    monkeypatch.delenv("CHAINLIT_AUTH_SECRET")
    ensure_auth_secret(tmp_path / "database")  # a restart keeps the sessions valid
    assert os.environ["CHAINLIT_AUTH_SECRET"] == secret


def test_auth_secret_from_the_environment_is_used_as_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", "from-upsun-variables")
    ensure_auth_secret(tmp_path / "database")
    assert os.environ["CHAINLIT_AUTH_SECRET"] == "from-upsun-variables"
    assert not (tmp_path / "database").exists()
