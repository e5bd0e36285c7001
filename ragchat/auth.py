"""Accounts: argon2id hashes, roles, disabled accounts and login throttling.

Numbers (also in the README):
- hashes: argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane), salted per user;
- throttling: an account locks after 5 failed logins in a row, a client address after 20;
  the first lock lasts 60 s and each further failure doubles it, up to 1 hour; a success
  clears both counters, and failures are forgotten 24 hours after the last one.

Each account has a session key, which its session tokens carry (ragchat.tokens): a new
account gets a new one, and resetting the password or disabling the account replaces it, which
ends every session signed in before.

The rules live in UserStore, once; where the rows are kept is an AccountTables: a SQLite file
(SqliteAccounts, the default) or PostgreSQL (ragchat.accounts_pg) when DATABASE_URL is set, so
that every instance of the app sees the same accounts, locks and session keys. `user_store`
chooses.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ragchat.config import ConfigError
from ragchat.database import storable

if TYPE_CHECKING:
    from ragchat.config import Settings

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
    if not _encodable(password):
        raise AccountError("The password holds bytes that are not text (UTF-8); type it again.")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            f"The password has {len(password)} characters; use at least {MIN_PASSWORD_LENGTH}."
        )
    if password.lower() in _common_passwords():
        raise AccountError("The password is one of the most common ones; choose another.")


def _encodable(password: str) -> bool:
    """Whether `password` is UTF-8 text: a lone surrogate (from JSON's \\ud800, or stdin's
    undecodable bytes) makes argon2 and SHA-256 raise instead of answering."""
    try:
        password.encode()
    except UnicodeEncodeError:
        return False
    return True


@cache
def _common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


@cache
def _dummy_hash() -> str:
    """Verified against for unknown users, so they cost what a wrong password costs."""
    return HASHER.hash(secrets.token_urlsafe(16))


# An account as its table holds it: username, password hash, role, disabled, session key.
Row = tuple[str, str, Role, bool, str | None]


class AccountTables(Protocol):
    """Where accounts and login failures are kept; only this differs between stores. Usernames
    are looked up without regard to case ("Alice" is "alice"), and each method is one
    transaction."""

    def insert(self, username: str, password_hash: str, role: Role, session_key: str) -> bool:
        """Add an account; False when its name, in any case, is taken."""

    def find(self, username: str) -> Row | None: ...

    def all(self) -> list[Row]:
        """Every account, by username."""

    def count(self) -> int: ...

    def update(self, username: str, values: dict[str, object]) -> bool:
        """Set columns (password_hash, session_key, disabled); False when there is no such
        account."""

    def is_current(self, username: str, session_key: str) -> bool:
        """Whether the account exists, is enabled and has this session key."""

    def remove(self, username: str) -> bool: ...

    def without_session_key(self) -> list[str]: ...

    def give_session_key(self, username: str, session_key: str) -> str | None:
        """Set `session_key` unless the account has one already; the key it has then (two
        logins at once get the same)."""

    def locked_until(self, keys: list[str]) -> float:
        """The latest time any of `keys` is locked until (0 when none is)."""

    def count_failure(
        self, key: str, now: float, forget_before: float, lock_for: Callable[[int], float]
    ) -> None:
        """One more failure for `key` (the first again when its last was before
        `forget_before`), and `key` locked until lock_for(failures). The count is the
        transaction's first statement and locks the row until the commit, so failures counted
        at once, by any process, are each counted and each lock follows its own count."""

    def forget_failures(self, keys: list[str]) -> None: ...

    def auth_secret(self) -> str:
        """The secret that signs sessions: generated on first use, the same ever after."""


def user_store(settings: Settings) -> UserStore:
    """The accounts of these settings: in DATABASE_URL's PostgreSQL when it is set, otherwise
    in the SQLite file DB_PATH. ConfigError when they cannot be used."""
    if settings.database_url is None:
        return UserStore(SqliteAccounts(settings.db_path))
    from ragchat.accounts_pg import PgAccounts  # loads SQLAlchemy and psycopg: only then

    return UserStore(PgAccounts(settings.database_url))


class UserStore:
    """The accounts and their rules, over the tables of one store."""

    def __init__(self, tables: AccountTables):
        self.tables = tables
        for username in tables.without_session_key():  # accounts from before session keys
            tables.give_session_key(username, new_session_key())

    # --- accounts ---------------------------------------------------------------------

    def add(self, username: str, password: str, role: Role = "user") -> User:
        if not _USERNAME.fullmatch(username):
            raise AccountError(
                f"{username!r} is not a valid username: use 1 to 64 letters, digits and . _ @ -, "
                "starting with a letter or digit."
            )
        check_password_strength(password)
        session_key = new_session_key()
        if not self.tables.insert(username, hash_password(password), role, session_key):
            raise AccountError(f"The user {username!r} already exists.")
        return User(username, role, disabled=False, session_key=session_key)

    def get(self, username: str) -> User | None:
        row = self.tables.find(storable(username))
        return _user(row) if row else None

    def list(self) -> list[User]:
        return [_user(row) for row in self.tables.all()]

    def count(self) -> int:
        return self.tables.count()

    def set_password(self, username: str, password: str) -> None:
        """A new password, and a new session key: sessions signed in with the old one end."""
        check_password_strength(password)
        self._update(username, password_hash=hash_password(password), session_key=new_session_key())

    def set_disabled(self, username: str, disabled: bool) -> None:
        """Disabling also replaces the session key, so enabling again revives no session."""
        if disabled:
            self._update(username, disabled=True, session_key=new_session_key())
        else:
            self._update(username, disabled=False)

    def session_is_current(self, username: str, session_key: str) -> bool:
        """Whether a session token of `username` carrying `session_key` may still be used: the
        account exists, is enabled and has that key. One indexed lookup."""
        return self.tables.is_current(storable(username), storable(session_key))

    def delete(self, username: str) -> None:
        if not self.tables.remove(storable(username)):
            raise AccountError(f"There is no user {username!r}.")

    def _update(self, username: str, **values: object) -> None:
        if not self.tables.update(storable(username), values):
            raise AccountError(f"There is no user {username!r}.")

    # --- login ------------------------------------------------------------------------

    def authenticate(self, username: str, password: str, address: str | None) -> User | None:
        """The active user these credentials belong to, or None; raises Throttled when the
        account or the address must wait. Unknown users, wrong passwords and disabled accounts
        look the same from outside: same answer, same work. Whatever the client sent, even text
        no database stores (NUL, lone surrogates), gets that answer."""
        username, address = storable(username), address and storable(address)
        now = time.time()
        keys = [f"user:{username.lower()}"] + ([f"address:{address}"] if address else [])
        wait = self.tables.locked_until(keys) - now
        if wait > 0:
            raise Throttled(wait)

        row = self.tables.find(username)
        if row is not None and _verify(row[1], password) and not row[3]:
            self.tables.forget_failures(keys)
            if _LEGACY_SHA256.fullmatch(row[1]) or HASHER.check_needs_rehash(row[1]):
                self.tables.update(row[0], {"password_hash": hash_password(password)})
                log.info("Upgraded the password hash of %s to current argon2id", row[0])
            session_key = row[4]
            if session_key is None:  # an account added by hand since the app started
                session_key = self.tables.give_session_key(row[0], new_session_key())
            return User(row[0], row[2], disabled=False, session_key=session_key)
        if row is None:
            _verify(_dummy_hash(), password)
        forget_before = now - FORGET_FAILURES_AFTER
        for key, free_failures in zip(keys, (ACCOUNT_FREE_FAILURES, ADDRESS_FREE_FAILURES)):
            self.tables.count_failure(
                key,
                now,
                forget_before,
                lambda failures, free=free_failures: now + lock_seconds(failures, free),
            )
        return None


def _user(row: Row) -> User:
    username, _, role, disabled, session_key = row
    return User(username, role, bool(disabled), session_key)


# --- SQLite ------------------------------------------------------------------------------

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
_ROW = "SELECT username, password_hash, role, disabled, session_key FROM users"


class SqliteAccounts:
    """Accounts in one SQLite file (DB_PATH), readable by its owner only."""

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

    def insert(self, username: str, password_hash: str, role: Role, session_key: str) -> bool:
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO users (username, password_hash, role, created_at, session_key) "
                    "VALUES (?, ?, ?, datetime('now'), ?)",
                    (username, password_hash, role, session_key),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def find(self, username: str) -> Row | None:
        with self._connect() as db:  # the column's COLLATE NOCASE ignores case
            return db.execute(f"{_ROW} WHERE username = ?", (username,)).fetchone()

    def all(self) -> list[Row]:
        with self._connect() as db:
            return db.execute(f"{_ROW} ORDER BY username").fetchall()

    def count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT count(*) FROM users").fetchone()[0]

    def update(self, username: str, values: dict[str, object]) -> bool:
        assignments = ", ".join(f"{column} = ?" for column in values)
        with self._connect() as db:
            changed = db.execute(
                f"UPDATE users SET {assignments} WHERE username = ?", (*values.values(), username)
            ).rowcount
        return changed > 0

    def is_current(self, username: str, session_key: str) -> bool:
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM users WHERE username = ? AND session_key = ? AND NOT disabled",
                (username, session_key),
            ).fetchone()
        return row is not None

    def remove(self, username: str) -> bool:
        with self._connect() as db:
            return db.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount > 0

    def without_session_key(self) -> list[str]:
        with self._connect() as db:
            rows = db.execute("SELECT username FROM users WHERE session_key IS NULL").fetchall()
        return [username for (username,) in rows]

    def give_session_key(self, username: str, session_key: str) -> str | None:
        with self._connect() as db:
            db.execute(
                "UPDATE users SET session_key = ? WHERE username = ? AND session_key IS NULL",
                (session_key, username),
            )
            row = db.execute(
                "SELECT session_key FROM users WHERE username = ?", (username,)
            ).fetchone()
        return row[0] if row else None

    def locked_until(self, keys: list[str]) -> float:
        marks = ", ".join("?" * len(keys))
        with self._connect() as db:
            (until,) = db.execute(
                f"SELECT max(locked_until) FROM login_failures WHERE key IN ({marks})", keys
            ).fetchone()
        return until or 0.0

    def count_failure(
        self, key: str, now: float, forget_before: float, lock_for: Callable[[int], float]
    ) -> None:
        with self._connect() as db:  # the INSERT takes the database's write lock
            failures = db.execute(
                "INSERT INTO login_failures (key, failures, last_failure, locked_until) "
                "VALUES (?, 1, ?, 0) ON CONFLICT (key) DO UPDATE SET "
                "failures = CASE WHEN last_failure < ? THEN 1 ELSE failures + 1 END, "
                "last_failure = excluded.last_failure RETURNING failures",
                (key, now, forget_before),
            ).fetchone()[0]
            db.execute(
                "UPDATE login_failures SET locked_until = ? WHERE key = ?",
                (lock_for(failures), key),
            )

    def forget_failures(self, keys: list[str]) -> None:
        with self._connect() as db:
            db.executemany("DELETE FROM login_failures WHERE key = ?", [(k,) for k in keys])

    def auth_secret(self) -> str:
        """Kept in an owner-only file next to the database. Written whole under a temporary
        name and linked into place, so two processes starting at once read the same one."""
        path = self.path.parent / "chainlit_auth_secret"
        try:
            if not path.exists():
                draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
                descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "w") as file:
                    file.write(new_auth_secret())
                try:
                    os.link(draft, path)
                    log.info("Generated CHAINLIT_AUTH_SECRET into %s (owner-only)", path)
                except FileExistsError:  # another process was first: use theirs
                    pass
                finally:
                    draft.unlink()
            return path.read_text().strip()
        except OSError as error:
            raise ConfigError(
                f"CHAINLIT_AUTH_SECRET is not set and {path} cannot hold a generated one "
                f"({error}); set CHAINLIT_AUTH_SECRET or make the folder writable"
            ) from None


# --- every store ---------------------------------------------------------------------------


def lock_seconds(failures: int, free_failures: int) -> float:
    """How long a key stays locked after its `failures`-th failure in a row."""
    if failures < free_failures:
        return 0
    return min(MAX_LOCK_SECONDS, FIRST_LOCK_SECONDS * 2 ** (failures - free_failures))


def _verify(stored: str, password: str) -> bool:
    if not _encodable(password):  # no password set here holds one: a wrong password
        return False
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


def new_auth_secret() -> str:
    return secrets.token_urlsafe(48)


def ensure_auth_secret(store: UserStore) -> None:
    """Chainlit signs sessions with CHAINLIT_AUTH_SECRET. Without one in the environment, use
    the one the account store keeps (generated on the first start), so that sessions survive
    restarts and every instance on one database signs them alike."""
    if not os.environ.get("CHAINLIT_AUTH_SECRET"):
        os.environ["CHAINLIT_AUTH_SECRET"] = store.tables.auth_secret()


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
