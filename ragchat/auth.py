"""Accounts in SQLite: argon2id hashes, roles, disabled accounts and login throttling.

Numbers (also in the README):
- hashes: argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane), salted per user;
- throttling: an account locks after 5 failed logins in a row, a client address after 20;
  the first lock lasts 60 s and each further failure doubles it, up to 1 hour; a success
  clears both counters, and failures are forgotten 24 hours after the last one.

Each account has a session key, which its session tokens carry (ragchat.tokens): a new
account gets a new one, and resetting the password or disabling the account replaces it, which
ends every session signed in before.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import sqlite3
import string
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ragchat.config import ConfigError

log = logging.getLogger(__name__)

Role = Literal["admin", "user"]

HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
MIN_PASSWORD_LENGTH = 12
ACCOUNT_FREE_FAILURES = 5
ADDRESS_FREE_FAILURES = 20
FIRST_LOCK_SECONDS = 60
MAX_LOCK_SECONDS = 3600
FORGET_FAILURES_AFTER = 24 * 3600

_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_LEGACY_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY COLLATE NOCASE,
    password_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS login_failures (
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_failure REAL NOT NULL,
    locked_until REAL NOT NULL
);
"""
# Columns added to a `users` table made by hand for the tutorial's script, which had only
# the first two, or by an earlier ragchat.
_USER_COLUMNS = {
    "role": "TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('admin', 'user'))",
    "disabled": "INTEGER NOT NULL DEFAULT 0",
    "created_at": "TEXT",
    "session_key": "TEXT",  # NULL until given one (at start or first login); NULL matches nothing
}


class AccountError(ValueError):
    """A user-management request that cannot be done; the message says why."""


class Throttled(Exception):
    def __init__(self, retry_after: float):
        super().__init__(f"too many failed logins; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class User:
    username: str
    role: Role
    disabled: bool
    session_key: str | None = field(repr=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


_PASSWORD_ALPHABET = string.ascii_letters + string.digits


def generate_password() -> str:
    """20 letters and digits: 119 bits, and nothing a shell or a login form trips over."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(20))


def new_session_key() -> str:
    return secrets.token_urlsafe(16)


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            f"The password has {len(password)} characters; use at least {MIN_PASSWORD_LENGTH}."
        )
    if password.lower() in _common_passwords():
        raise AccountError("The password is one of the most common ones; choose another.")


@cache
def _common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


@cache
def _dummy_hash() -> str:
    """Verified against for unknown users, so they cost what a wrong password costs."""
    return HASHER.hash(secrets.token_urlsafe(16))


class UserStore:
    def __init__(self, path: Path):
        """Open the accounts at `path`, creating or completing the tables; ConfigError if the
        file cannot be used."""
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.executescript(_SCHEMA)
                present = {row[1] for row in db.execute("PRAGMA table_info(users)")}
                for column, definition in _USER_COLUMNS.items():
                    if column not in present:
                        db.execute(f"ALTER TABLE users ADD COLUMN {column} {definition}")
                for (username,) in db.execute(
                    "SELECT username FROM users WHERE session_key IS NULL"
                ).fetchall():
                    _give_session_key(db, username)
            path.chmod(0o600)  # hashes are nobody else's business
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(
                f"Invalid setting DB_PATH='{path}': cannot use it as the accounts database "
                f"({error}); point it at a writable SQLite file"
            ) from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        try:
            with db:  # one transaction: committed, or rolled back on error
                yield db
        finally:
            db.close()

    # --- accounts ---------------------------------------------------------------------

    def add(self, username: str, password: str, role: Role = "user") -> User:
        if not _USERNAME.fullmatch(username):
            raise AccountError(
                f"{username!r} is not a valid username: use 1 to 64 letters, digits and . _ @ -, "
                "starting with a letter or digit."
            )
        check_password_strength(password)
        session_key = new_session_key()
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO users (username, password_hash, role, created_at, session_key) "
                    "VALUES (?, ?, ?, datetime('now'), ?)",
                    (username, hash_password(password), role, session_key),
                )
        except sqlite3.IntegrityError:
            raise AccountError(f"The user {username!r} already exists.") from None
        return User(username, role, disabled=False, session_key=session_key)

    def get(self, username: str) -> User | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT username, role, disabled, session_key FROM users WHERE username = ?",
                (username,),
            ).fetchone()
        return User(row[0], row[1], bool(row[2]), row[3]) if row else None

    def list(self) -> list[User]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT username, role, disabled, session_key FROM users ORDER BY username"
            )
            return [User(name, role, bool(disabled), key) for name, role, disabled, key in rows]

    def count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT count(*) FROM users").fetchone()[0]

    def set_password(self, username: str, password: str) -> None:
        """A new password, and a new session key: sessions signed in with the old one end."""
        check_password_strength(password)
        self._update(
            username,
            "password_hash = ?, session_key = ?",
            hash_password(password),
            new_session_key(),
        )

    def set_disabled(self, username: str, disabled: bool) -> None:
        """Disabling also replaces the session key, so enabling again revives no session."""
        if disabled:
            self._update(username, "disabled = 1, session_key = ?", new_session_key())
        else:
            self._update(username, "disabled = 0")

    def session_is_current(self, username: str, session_key: str) -> bool:
        """Whether a session token of `username` carrying `session_key` may still be used: the
        account exists, is enabled and has that key. One lookup by primary key."""
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM users WHERE username = ? AND session_key = ? AND NOT disabled",
                (username, session_key),
            ).fetchone()
        return row is not None

    def delete(self, username: str) -> None:
        with self._connect() as db:
            if db.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount == 0:
                raise AccountError(f"There is no user {username!r}.")

    def _update(self, username: str, assignments: str, *values: object) -> None:
        with self._connect() as db:
            changed = db.execute(
                f"UPDATE users SET {assignments} WHERE username = ?", (*values, username)
            ).rowcount
        if changed == 0:
            raise AccountError(f"There is no user {username!r}.")

    # --- login ------------------------------------------------------------------------

    def authenticate(self, username: str, password: str, address: str | None) -> User | None:
        """The active user these credentials belong to, or None; raises Throttled when the
        account or the address must wait. Unknown users, wrong passwords and disabled accounts
        look the same from outside: same answer, same work."""
        now = time.time()
        keys = [f"user:{username.lower()}"] + ([f"address:{address}"] if address else [])
        wait = max(self._locked_until(key) for key in keys) - now
        if wait > 0:
            raise Throttled(wait)

        with self._connect() as db:
            row = db.execute(
                "SELECT username, password_hash, role, disabled, session_key FROM users "
                "WHERE username = ?",
                (username,),
            ).fetchone()
        if row is not None and _verify(row[1], password) and not row[3]:
            self._forget_failures(keys)
            if _LEGACY_SHA256.fullmatch(row[1]) or HASHER.check_needs_rehash(row[1]):
                self._update(row[0], "password_hash = ?", hash_password(password))
                log.info("Upgraded the password hash of %s to current argon2id", row[0])
            session_key = row[4]
            if session_key is None:  # an account added by hand since the app started
                with self._connect() as db:
                    session_key = _give_session_key(db, row[0])
            return User(row[0], row[2], disabled=False, session_key=session_key)
        if row is None:
            _verify(_dummy_hash(), password)
        self._record_failure(keys[0], ACCOUNT_FREE_FAILURES, now)
        if address:
            self._record_failure(keys[1], ADDRESS_FREE_FAILURES, now)
        return None

    def _locked_until(self, key: str) -> float:
        with self._connect() as db:
            row = db.execute(
                "SELECT locked_until FROM login_failures WHERE key = ?", (key,)
            ).fetchone()
        return row[0] if row else 0.0

    def _record_failure(self, key: str, free_failures: int, now: float) -> None:
        with self._connect() as db:
            failures = db.execute(
                "INSERT INTO login_failures (key, failures, last_failure, locked_until) "
                "VALUES (?, 1, ?, 0) ON CONFLICT (key) DO UPDATE SET "
                "failures = CASE WHEN last_failure < ? THEN 1 ELSE failures + 1 END, "
                "last_failure = excluded.last_failure RETURNING failures",
                (key, now, now - FORGET_FAILURES_AFTER),
            ).fetchone()[0]
            db.execute(
                "UPDATE login_failures SET locked_until = ? WHERE key = ?",
                (now + lock_seconds(failures, free_failures), key),
            )

    def _forget_failures(self, keys: list[str]) -> None:
        with self._connect() as db:
            db.executemany("DELETE FROM login_failures WHERE key = ?", [(k,) for k in keys])


def _give_session_key(db: sqlite3.Connection, username: str) -> str | None:
    """The account's session key, given one if it has none (two logins at once get the same)."""
    db.execute(
        "UPDATE users SET session_key = ? WHERE username = ? AND session_key IS NULL",
        (new_session_key(), username),
    )
    row = db.execute("SELECT session_key FROM users WHERE username = ?", (username,)).fetchone()
    return row[0] if row else None


def lock_seconds(failures: int, free_failures: int) -> float:
    """How long a key stays locked after its `failures`-th failure in a row."""
    if failures < free_failures:
        return 0
    return min(MAX_LOCK_SECONDS, FIRST_LOCK_SECONDS * 2 ** (failures - free_failures))


def _verify(stored: str, password: str) -> bool:
    if _LEGACY_SHA256.fullmatch(stored):
        # The tutorial's unsalted SHA-256: accepted once, then replaced. The dummy argon2
        # verification keeps the time the same as for every other account.
        _verify(_dummy_hash(), password)
        digest = hashlib.sha256(password.encode()).hexdigest()
        return hmac.compare_digest(digest, stored.lower())
    try:
        return HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


# --- first start ---------------------------------------------------------------------------


def ensure_auth_secret(folder: Path) -> None:
    """Chainlit signs sessions with CHAINLIT_AUTH_SECRET. Without one in the environment, use
    (or create once) an owner-only file next to the database, so sessions survive restarts."""
    if os.environ.get("CHAINLIT_AUTH_SECRET"):
        return
    path = folder / "chainlit_auth_secret"
    try:
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(48))
            log.info("Generated CHAINLIT_AUTH_SECRET into %s (readable by this user only)", path)
        os.environ["CHAINLIT_AUTH_SECRET"] = path.read_text().strip()
    except OSError as error:
        raise ConfigError(
            f"CHAINLIT_AUTH_SECRET is not set and {path} cannot hold a generated one ({error}); "
            "set CHAINLIT_AUTH_SECRET or make the folder writable"
        ) from None


def create_first_admin(store: UserStore) -> str | None:
    """With no account at all, create `admin` with a random password and return it."""
    if store.count():
        return None
    password = generate_password()
    try:
        store.add("admin", password, role="admin")
    except AccountError:  # another process starting at the same time was first
        return None
    return password
