"""The accounts' tables in PostgreSQL (DATABASE_URL), shared by every instance of the app: a
login lock, a disabled account or a reset password on one holds on all. The rules are
ragchat.auth's; only the SQL is here.

Differences from the SQLite tables, each for a reason:
- the table is `accounts`, not `users`: Chainlit's conversation tables, in the same database,
  have a `users` table of their own;
- SQLite's `COLLATE NOCASE` becomes a unique index on lower(username), and every lookup
  compares lower() with lower() (citext would do it, but it is an extension not every server
  has; the test server's build has none);
- `disabled` is a boolean, `created_at` a timestamp;
- the secret that signs sessions is a row (`app_secrets`), not a file: instances on several
  machines must sign alike, and only the database do they all share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    case,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from ragchat import database
from ragchat.auth import Role, Row, new_auth_secret
from ragchat.config import ConfigError

log = logging.getLogger(__name__)

metadata = MetaData()
accounts = Table(
    "accounts",
    metadata,
    Column("username", Text, primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("role", Text, CheckConstraint("role IN ('admin', 'user')"), nullable=False),
    Column("disabled", Boolean, nullable=False, server_default="false"),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
    Column("session_key", Text),  # NULL until given one; NULL matches nothing
)
Index("accounts_username_any_case", func.lower(accounts.c.username), unique=True)
login_failures = Table(
    "login_failures",
    metadata,
    Column("key", Text, primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("last_failure", Double, nullable=False),
    Column("locked_until", Double, nullable=False),
)
app_secrets = Table(
    "app_secrets",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
AUTH_SECRET = "chainlit_auth_secret"
_ROW = select(
    accounts.c.username,
    accounts.c.password_hash,
    accounts.c.role,
    accounts.c.disabled,
    accounts.c.session_key,
)


def _named(username: str):
    """The account called `username`, in any case (through the lower(username) index)."""
    return func.lower(accounts.c.username) == func.lower(username)


class PgAccounts:
    """ragchat.auth.AccountTables in PostgreSQL, over the process's engine for DATABASE_URL."""

    def __init__(self, url: str):
        """Create the tables unless they exist; ConfigError when the server cannot be reached
        or refuses. Under a transaction-scoped advisory lock: two instances starting at once
        would otherwise both try CREATE TABLE, and the second can fail on pg_type's unique
        index even with IF NOT EXISTS."""
        self.url = url
        self.engine = database.engine(url)
        try:
            with self.engine.begin() as connection:
                key = database.lock_key("ragchat accounts schema")
                connection.execute(select(func.pg_advisory_xact_lock(key)))
                metadata.create_all(connection)
        except OperationalError as error:
            raise ConfigError(
                f"Invalid setting DATABASE_URL='{database.shown(url)}': cannot reach the "
                f"database ({database.driver_message(error)}); check that the server runs and "
                "that the host, port, user, password and database name are right"
            ) from None
        except SQLAlchemyError as error:
            raise ConfigError(
                f"Invalid setting DATABASE_URL='{database.shown(url)}': cannot create the "
                f"accounts tables ({database.driver_message(error)}); the user must be allowed "
                "to create tables in that database"
            ) from None

    def insert(self, username: str, password_hash: str, role: Role, session_key: str) -> bool:
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    accounts.insert().values(
                        username=username,
                        password_hash=password_hash,
                        role=role,
                        session_key=session_key,
                    )
                )
        except IntegrityError:  # the name, in some case, is taken
            return False
        return True

    def find(self, username: str) -> Row | None:
        with self.engine.begin() as connection:
            row = connection.execute(_ROW.where(_named(username))).first()
        return tuple(row) if row else None

    def all(self) -> list[Row]:
        with self.engine.begin() as connection:
            rows = connection.execute(_ROW.order_by(func.lower(accounts.c.username)))
            return [tuple(row) for row in rows]

    def count(self) -> int:
        with self.engine.begin() as connection:
            return connection.execute(select(func.count()).select_from(accounts)).scalar_one()

    def update(self, username: str, values: dict[str, object]) -> bool:
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(accounts).where(_named(username)).values(**values)
            ).rowcount
        return changed > 0

    def is_current(self, username: str, session_key: str) -> bool:
        with self.engine.begin() as connection:
            row = connection.execute(
                select(1).where(
                    _named(username),
                    accounts.c.session_key == session_key,
                    accounts.c.disabled.is_(False),
                )
            ).first()
        return row is not None

    def remove(self, username: str) -> bool:
        with self.engine.begin() as connection:
            return connection.execute(delete(accounts).where(_named(username))).rowcount > 0

    def without_session_key(self) -> list[str]:
        with self.engine.begin() as connection:
            query = select(accounts.c.username).where(accounts.c.session_key.is_(None))
            return list(connection.execute(query).scalars())

    def give_session_key(self, username: str, session_key: str) -> str | None:
        with self.engine.begin() as connection:
            return connection.execute(
                update(accounts)
                .where(_named(username))
                .values(session_key=func.coalesce(accounts.c.session_key, session_key))
                .returning(accounts.c.session_key)
            ).scalar()

    def locked_until(self, keys: list[str]) -> float:
        with self.engine.begin() as connection:
            until = connection.execute(
                select(func.max(login_failures.c.locked_until)).where(
                    login_failures.c.key.in_(keys)
                )
            ).scalar()
        return until or 0.0

    def count_failure(
        self, key: str, now: float, forget_before: float, lock_for: Callable[[int], float]
    ) -> None:
        first = insert(login_failures).values(key=key, failures=1, last_failure=now, locked_until=0)
        count = first.on_conflict_do_update(
            index_elements=[login_failures.c.key],
            set_={
                "failures": case(
                    (login_failures.c.last_failure < forget_before, 1),
                    else_=login_failures.c.failures + 1,
                ),
                "last_failure": first.excluded.last_failure,
            },
        ).returning(login_failures.c.failures)
        # The upsert locks the row until the commit: a count by another instance waits for it.
        with self.engine.begin() as connection:
            failures = connection.execute(count).scalar_one()
            connection.execute(
                update(login_failures)
                .where(login_failures.c.key == key)
                .values(locked_until=lock_for(failures))
            )

    def forget_failures(self, keys: list[str]) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(login_failures).where(login_failures.c.key.in_(keys)))

    def auth_secret(self) -> str:
        """A row written once: of instances starting together, the first insert wins, the
        others' do nothing (ON CONFLICT waits for the winner's commit), and all read its
        value."""
        with self.engine.begin() as connection:
            created = connection.execute(
                insert(app_secrets)
                .values(name=AUTH_SECRET, value=new_auth_secret())
                .on_conflict_do_nothing()
            ).rowcount
            if created:
                log.info("Generated CHAINLIT_AUTH_SECRET into the database (table app_secrets)")
            return connection.execute(
                select(app_secrets.c.value).where(app_secrets.c.name == AUTH_SECRET)
            ).scalar_one()


