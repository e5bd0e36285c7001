"""The chat history in PostgreSQL (DATABASE_URL), shared by every instance of the app.

The tables are the SQLite ones, verbatim (history.py): their JSON is TEXT, not Chainlit's
documented JSONB and TEXT[], because HistoryDataLayer stores tags, modes and metadata as JSON
strings (its fixes for chainlit#2528 and #2750), matches favourites with LIKE on that text, and
Chainlit's timestamps are ISO strings, which asyncpg refuses for a TIMESTAMP column (tables made
from Chainlit's documented schema are therefore refused, untouched). Chainlit's layer talks to
it through asyncpg; the migration runs on the process's psycopg engine (database.engine), as
the app builds the layer before its event loop runs."""

from __future__ import annotations

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ragchat import database
from ragchat.history import SCHEMA_VERSION, HistorySchemaError, newer_schema, upgrade

# The version of the tables; PostgreSQL has no SQLite `user_version`.
_VERSION_TABLE = "history_schema_version"


class PostgresHistory:
    def __init__(self, url: str):
        self.url = url

    def migrate(self) -> int:
        """In one transaction under an advisory lock: instances started together take turns (two
        `CREATE TABLE IF NOT EXISTS` at once can still fail, on a unique index of pg_type), and
        a failed step leaves the tables as they were (PostgreSQL's DDL is transactional)."""
        try:
            with database.engine(self.url).begin() as connection:
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": database.lock_key("ragchat history schema")},
                )
                connection.exec_driver_sql(
                    f"CREATE TABLE IF NOT EXISTS {_VERSION_TABLE} (version INT NOT NULL)"
                )
                found = connection.scalar(text(f"SELECT max(version) FROM {_VERSION_TABLE}")) or 0
                if found > SCHEMA_VERSION:
                    raise newer_schema(f"DATABASE_URL {database.shown(self.url)}", found)
                if found == 0 and (typed := _typed_columns(connection)):
                    raise HistorySchemaError(
                        f"DATABASE_URL {database.shown(self.url)} holds chat tables in "
                        f"Chainlit's documented schema ({typed[0]}), which ragchat's history "
                        "cannot write to; point DATABASE_URL at a database of ragchat's own"
                    )
                upgrade(
                    found,
                    connection.exec_driver_sql,
                    lambda table: _columns(connection).get(table, set()),
                )
                connection.exec_driver_sql(f"DELETE FROM {_VERSION_TABLE}")
                connection.execute(
                    text(f"INSERT INTO {_VERSION_TABLE} VALUES (:version)"),
                    {"version": SCHEMA_VERSION},
                )
        except DBAPIError as error:
            raise self._unusable(error) from None
        return found

    def columns(self) -> dict[str, set[str]]:
        try:
            with database.engine(self.url).connect() as connection:
                return _columns(connection)
        except DBAPIError as error:
            raise self._unusable(error) from None

    def engine(self) -> AsyncEngine:
        # pre-ping: a managed server (Upsun's) closes idle connections, and the first write on
        # one of them would fail and be lost.
        return create_async_engine(database.with_driver(self.url, "asyncpg"), pool_pre_ping=True)

    def exists(self) -> bool:
        return True

    def _unusable(self, error: DBAPIError) -> HistorySchemaError:
        reason = database.driver_message(error)
        return HistorySchemaError(
            f"DATABASE_URL {database.shown(self.url)} cannot be used for the chat history "
            f"({reason}): check that the server runs, and that the URL's user may create tables"
        )


def _columns(connection: Connection) -> dict[str, set[str]]:
    columns: dict[str, set[str]] = {}
    for table, column in connection.execute(
        text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        )
    ):
        columns.setdefault(table, set()).add(column)
    return columns


def _typed_columns(connection: Connection) -> list[str]:
    """The chat tables' columns typed as Chainlit's documented schema types them (JSONB, TEXT[],
    UUID), which ragchat's tables keep as TEXT: "threads.metadata is jsonb", say, JSON first."""
    return [
        f"{table}.{column} is {kind}"
        for table, column, kind in connection.execute(
            text(
                "SELECT table_name, column_name, udt_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND udt_name IN ('jsonb', '_text', 'uuid') "
                "AND table_name IN ('users', 'threads', 'steps', 'elements', 'feedbacks') "
                "ORDER BY udt_name = 'uuid', table_name, column_name"
            )
        )
    ]
