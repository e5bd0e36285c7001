"""Chat history: Chainlit's SQLAlchemy data layer with its schema, its bugs fixed, and a storage
client that keeps element files in a folder (HISTORY_FILES_DIR, shared by every instance).

The history is kept in SQLite (HISTORY_DB_PATH), or in PostgreSQL when DATABASE_URL is set
(history_pg.py): the same tables, the same SQL and the same `HistoryDataLayer` on both. What
differs (making and upgrading the tables, listing their columns, the engine) is a
`HistorySchema`, chosen by `history_layer(settings)`.

Chainlit creates no tables, so `migrate()` does, versioned (SQLite's `user_version`, a table
on PostgreSQL). Version 1 is the schema Chainlit documents; version 2 adds what Chainlit 2.x
writes that the documented schema lacks. A database made from Chainlit's documentation is
upgraded in place.

`HistoryDataLayer` fixes what the base layer gets wrong:
- thread and step tags were bound as a Python list (chainlit#2528): they are stored as JSON;
- a step's `modes` dict was bound as-is (chainlit#2750): JSON as well;
- steps carry keys with no documented column, such as `autoCollapse` (chainlit#2832): the schema
  has them, and a key with no column is dropped with a warning instead of failing the write;
- the creation of a step could overwrite its update (both are upserts, run as racing tasks):
  step writes are kept in order;
- SQL errors were swallowed into a warning: they are logged as errors naming the statement;
- thread ids come from the browser and are pasted into one of the base layer's queries: a
  thread id that is not a UUID is refused before it is stored;
- writes by id went wherever the id pointed: a message reusing another's step id moved that
  step into the sender's thread, and Chainlit's element routes wrote into, or deleted from, any
  thread named. Every write by id now checks the owner (see `acting_user`);
- an unknown thread's author was a ValueError (a 500, where another's thread is a 401): it is
  None, and routes.py answers both alike;
- the user's message was stored in full, however long: it is cut to MAX_QUESTION_CHARS;
- a NUL character or a lone surrogate in a message (a crafted client can send both) made the
  write fail, on PostgreSQL for both and on SQLite for the surrogate: the step was lost. Every
  text is stored with them replaced by U+FFFD (`database.storable`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import mimetypes
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import aiofiles
from chainlit.context import ChainlitContextException, context
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.data.storage_clients.base import BaseStorageClient
from chainlit.element import ElementDict
from chainlit.types import Feedback, ThreadDict
from chainlit.user import PersistedUser, User
from sqlalchemy import event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from ragchat.backends import MAX_QUESTION_CHARS
from ragchat.database import storable

if TYPE_CHECKING:
    from ragchat.config import Settings

log = logging.getLogger(__name__)

FILES_ROUTE = "/ragchat/files"
TITLE_LENGTH = 60

_DOCUMENTED_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    "id" TEXT PRIMARY KEY,
    "identifier" TEXT NOT NULL UNIQUE,
    "metadata" TEXT NOT NULL DEFAULT '{}',
    "createdAt" TEXT
);
CREATE TABLE IF NOT EXISTS threads (
    "id" TEXT PRIMARY KEY,
    "createdAt" TEXT,
    "name" TEXT,
    "userId" TEXT,
    "userIdentifier" TEXT,
    "tags" TEXT,
    "metadata" TEXT,
    FOREIGN KEY ("userId") REFERENCES users("id") ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS steps (
    "id" TEXT PRIMARY KEY,
    "name" TEXT NOT NULL,
    "type" TEXT NOT NULL,
    "threadId" TEXT NOT NULL,
    "parentId" TEXT,
    "streaming" BOOLEAN NOT NULL,
    "waitForAnswer" BOOLEAN,
    "isError" BOOLEAN,
    "metadata" TEXT,
    "tags" TEXT,
    "input" TEXT,
    "output" TEXT,
    "createdAt" TEXT,
    "command" TEXT,
    "start" TEXT,
    "end" TEXT,
    "generation" TEXT,
    "showInput" TEXT,
    "language" TEXT,
    "indent" INT,
    "defaultOpen" BOOLEAN,
    FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS elements (
    "id" TEXT PRIMARY KEY,
    "threadId" TEXT,
    "type" TEXT,
    "url" TEXT,
    "chainlitKey" TEXT,
    "name" TEXT NOT NULL,
    "display" TEXT,
    "objectKey" TEXT,
    "size" TEXT,
    "page" INT,
    "language" TEXT,
    "forId" TEXT,
    "mime" TEXT,
    "props" TEXT,
    FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS feedbacks (
    "id" TEXT PRIMARY KEY,
    "forId" TEXT NOT NULL,
    "threadId" TEXT,
    "value" INT NOT NULL,
    "comment" TEXT,
    FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE
);
"""

# Columns Chainlit 2.x writes that its documented schema does not have.
_COLUMNS_SINCE_2 = {
    "steps": {"modes": "TEXT", "autoCollapse": "BOOLEAN", "icon": "TEXT"},
    "elements": {"autoPlay": "BOOLEAN", "playerConfig": "TEXT"},
}
_INDEXES_SINCE_2 = """
CREATE INDEX IF NOT EXISTS threads_by_user ON threads ("userId");
CREATE INDEX IF NOT EXISTS steps_by_thread ON steps ("threadId");
CREATE INDEX IF NOT EXISTS elements_by_thread ON elements ("threadId");
CREATE INDEX IF NOT EXISTS elements_by_object_key ON elements ("objectKey");
CREATE INDEX IF NOT EXISTS feedbacks_by_step ON feedbacks ("forId");
"""
SCHEMA_VERSION = 2


class HistorySchemaError(Exception):
    """The history database cannot be used by this version of ragchat."""


class HistorySchema(Protocol):
    """What differs between the stores the history can be kept in. SqliteHistory below;
    PostgresHistory in history_pg.py."""

    def migrate(self) -> int:
        """Create or upgrade the tables; the version they were at before. Safe to run at every
        start, from several processes at once; HistorySchemaError when they cannot be used."""

    def columns(self) -> dict[str, set[str]]:
        """Each table's column names."""

    def engine(self) -> AsyncEngine:
        """A new engine for Chainlit's layer, with the connection settings the store needs."""

    def exists(self) -> bool:
        """Whether anything can be stored there yet (a SQLite file not made yet holds nothing)."""


def history_schema(settings: Settings) -> HistorySchema:
    """PostgreSQL when DATABASE_URL is set, else the SQLite file HISTORY_DB_PATH."""
    if settings.database_url:
        from ragchat.history_pg import PostgresHistory

        return PostgresHistory(settings.database_url)
    return SqliteHistory(settings.history_db_path)


def history_layer(settings: Settings) -> HistoryDataLayer:
    """The app's chat history, in the store the settings choose (the tables made or upgraded)."""
    return HistoryDataLayer(history_schema(settings), settings.history_files_dir)


def newer_schema(where: str, found: int) -> HistorySchemaError:
    return HistorySchemaError(
        f"{where} has history schema version {found}, newer than this ragchat knows "
        f"({SCHEMA_VERSION}); run the newer ragchat or restore a backup"
    )


def upgrade(
    found: int, run: Callable[[str], object], columns_of: Callable[[str], set[str]]
) -> None:
    """The migration's steps from version `found` on, in the caller's transaction: the same
    statements on both stores (the schema's types are ones SQLite and PostgreSQL both take)."""
    if found < 1:
        for statement in _statements(_DOCUMENTED_SCHEMA):
            run(statement)
    if found < 2:
        for table, columns in _COLUMNS_SINCE_2.items():
            present = columns_of(table)
            for column, kind in columns.items():
                if column not in present:
                    run(f'ALTER TABLE {table} ADD COLUMN "{column}" {kind}')
        for statement in _statements(_INDEXES_SINCE_2):
            run(statement)


def _statements(script: str) -> list[str]:
    # Not sqlite3's executescript(): it commits first, which would split the migration's
    # transaction.
    return [statement for statement in script.split(";") if statement.strip()]


class SqliteHistory:
    """The history in one SQLite file (HISTORY_DB_PATH), versioned with its `user_version`."""

    def __init__(self, db_path: Path):
        self.db_path = db_path

    def migrate(self) -> int:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._migrate()
        except sqlite3.DatabaseError as error:
            raise HistorySchemaError(
                f"{self.db_path} cannot be read as a SQLite database ({error}); move it away to "
                "start with an empty history, or restore a backup"
            ) from None

    def _migrate(self) -> int:
        with sqlite3.connect(self.db_path, timeout=30, isolation_level=None) as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for a streaming answer
            db.execute("BEGIN IMMEDIATE")
            try:
                found = db.execute("PRAGMA user_version").fetchone()[0]
                if found > SCHEMA_VERSION:
                    raise newer_schema(str(self.db_path), found)
                upgrade(found, db.execute, lambda table: _table_columns(db, table))
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return found

    def columns(self) -> dict[str, set[str]]:
        with sqlite3.connect(self.db_path) as db:
            tables = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
            return {table: _table_columns(db, table) for (table,) in tables}

    def engine(self) -> AsyncEngine:
        engine = create_async_engine(f"sqlite+aiosqlite:///{self.db_path}")
        event.listen(engine.sync_engine, "connect", _on_connect)
        return engine

    def exists(self) -> bool:
        return self.db_path.exists()


def _table_columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def acting_user() -> str | None:
    """The identifier of the signed-in user a write is made for: the user of the Chainlit
    session it runs in (a socket event, or an HTTP route that takes up a socket session, as the
    element routes do). None outside any session: the app's own code and Chainlit's HTTP thread
    routes, which check the thread's author before they write (routes.py makes that check
    answer alike for unknown and foreign threads). Those writes are not checked here: there is
    no user to check them against, and refusing them would refuse every rename and deletion."""
    user = _session_user()
    return user.identifier if user is not None else None


def _session_user() -> User | None:
    try:
        return context.session.user
    except ChainlitContextException:
        return None


def cut_for_history(message: str) -> str:
    """A user's message as the history keeps it: at most MAX_QUESTION_CHARS, and marked when
    cut. No backend answers a longer one; the chat says so, and the rest is not worth storing."""
    if len(message) <= MAX_QUESTION_CHARS:
        return message
    return (
        message[:MAX_QUESTION_CHARS]
        + f"\n\n[cut here: the message was {len(message):,} characters long]"
    )


class LocalStorage(BaseStorageClient):
    """Element files on the local disk (Chainlit ships only cloud storage clients).

    Object keys name files by user, element and original name, all chosen by others, so the
    file on disk is named by a hash of the key: no name can reach outside the folder. Files are
    served by FILES_ROUTE only to the owner of the thread they belong to (see routes.py).

    A key is taken as the history stores it (`storable`): the key read back from an element's
    row then names the same file as the key it was uploaded under."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path_of(self, object_key: str) -> Path:
        digest = hashlib.sha256(storable(object_key).encode()).hexdigest()
        return self.folder / digest[:2] / digest

    async def upload_file(
        self,
        object_key: str,
        data: bytes | str,
        mime: str = "application/octet-stream",
        overwrite: bool = True,
        content_disposition: str | None = None,
    ) -> dict[str, Any]:
        path = self.path_of(object_key)
        if path.exists() and not overwrite:
            return {"object_key": object_key, "url": await self.get_read_url(object_key)}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        async with aiofiles.open(partial, "wb") as file:
            await file.write(data.encode() if isinstance(data, str) else data)
        partial.replace(path)  # a crash never leaves half a file under the real name
        return {"object_key": object_key, "url": await self.get_read_url(object_key)}

    async def delete_file(self, object_key: str) -> bool:
        self.path_of(object_key).unlink(missing_ok=True)
        return True

    async def get_read_url(self, object_key: str) -> str:
        return f"{FILES_ROUTE}/{quote(storable(object_key), safe='')}"

    async def close(self) -> None:
        pass


class OwnerUnreadable(Exception):
    """The read an ownership check needs failed: a write it guards must not go ahead as if
    the thread were nobody's."""


def _refused_when_owner_unreadable(write: Callable) -> Callable:
    @functools.wraps(write)
    async def checked(self: HistoryDataLayer, *args: Any, **kwargs: Any) -> None:
        try:
            await write(self, *args, **kwargs)
        except OwnerUnreadable:
            log.error("Chat history: refused %s: its owner could not be read", write.__name__)

    return checked


class HistoryDataLayer(SQLAlchemyDataLayer):
    def __init__(self, schema: HistorySchema, files_folder: Path):
        schema.migrate()
        self.columns = schema.columns()
        self.storage = LocalStorage(files_folder)
        self._step_writes = asyncio.Lock()
        engine = schema.engine()
        super().__init__(
            conninfo=engine.url.render_as_string(hide_password=False), storage_provider=self.storage
        )
        # The base layer builds a bare engine from the URL, before anything connects; the
        # store's own carries its connection settings (SQLite's PRAGMAs, PostgreSQL's pre-ping).
        self.engine = engine
        self.async_session = async_sessionmaker(bind=engine, expire_on_commit=False)

    async def execute_sql(self, query: str, parameters: dict) -> list[dict] | int | None:
        # PostgreSQL refuses NUL in text and asyncpg cannot encode a lone surrogate, nor can
        # SQLite's driver: the whole write failed, and a user's message was lost.
        parameters = {
            key: storable(value) if isinstance(value, str) else value
            for key, value in parameters.items()
        }
        async with self.async_session() as session:
            try:
                async with session.begin():
                    result = await session.execute(text(query), parameters)
                    if result.returns_rows:
                        return self.clean_result([dict(row._mapping) for row in result.fetchall()])
                    return result.rowcount
            except SQLAlchemyError as error:
                # The base layer logs a warning and carries on, so a lost message went unnoticed.
                log.error("Chat history: %s failed: %s", _statement(query), error)
                return None

    # Users

    async def create_user(self, user: User) -> PersistedUser | None:
        # Chainlit's create_user reads, then inserts: two logins at once (two tabs) both
        # inserted, and one failed with "UNIQUE constraint failed: users.identifier". One
        # statement creates or updates (SQLite 3.24+ and PostgreSQL alike).
        await self.execute_sql(
            'INSERT INTO users ("id", "identifier", "createdAt", "metadata") '
            "VALUES (:id, :identifier, :createdAt, :metadata) "
            'ON CONFLICT ("identifier") DO UPDATE SET "metadata" = excluded."metadata"',
            {
                "id": str(uuid.uuid4()),
                "identifier": user.identifier,
                "createdAt": await self.get_current_timestamp(),
                "metadata": json.dumps(user.metadata),
            },
        )
        return await self.get_user(user.identifier)

    # Threads

    @_refused_when_owner_unreadable
    async def update_thread(
        self,
        thread_id: str,
        name: str | None = None,
        user_id: str | None = None,
        metadata: dict | None = None,
        tags: list[str] | None = None,
    ) -> None:
        if not is_uuid(thread_id):
            raise ValueError(f"refused to store a thread whose id is not a UUID: {thread_id!r}")
        if (user := _session_user()) is not None:
            owner = await self.get_thread_author(thread_id)
            if not self._permits(user.identifier, owner, "a change to a conversation"):
                return
            if owner is None and user_id is None and isinstance(user, PersistedUser):
                # Chainlit names a new thread's owner in a task of its own (init_thread), after
                # the first step has made the thread: until then a reconnect to it was refused
                # ("Authorization for the thread failed") and anyone could write into it.
                user_id = user.id
        await super().update_thread(
            thread_id,
            name=thread_title(name) if name is not None else None,
            user_id=user_id,
            metadata=metadata,
            tags=json.dumps(tags) if tags is not None else None,  # type: ignore[arg-type]
        )

    @_refused_when_owner_unreadable
    async def delete_thread(self, thread_id: str) -> None:
        if await self._may_write(thread_id, "the deletion of a conversation"):
            await super().delete_thread(thread_id)

    async def get_thread_author(self, thread_id: str) -> str | None:  # type: ignore[override]
        """The thread's owner; None for an unknown thread, which the base layer raised for."""
        rows = await self._owner_read(
            'SELECT "userIdentifier" FROM threads WHERE "id" = :id', {"id": thread_id}
        )
        return rows[0]["userIdentifier"] if rows else None

    async def _may_write(self, thread_id: str, what: str) -> bool:
        """Whether the acting user may write into this thread: theirs, or nobody's yet (Chainlit
        writes a thread's first step before it names the thread's owner)."""
        user = acting_user()
        return user is None or self._permits(user, await self.get_thread_author(thread_id), what)

    @staticmethod
    def _permits(user: str, owner: str | None, what: str) -> bool:
        if owner is None or owner == user:
            return True
        log.warning("Chat history: refused %s by %s: it belongs to another user", what, user)
        return False

    async def get_all_user_threads(
        self, user_id: str | None = None, thread_id: str | None = None
    ) -> list[ThreadDict] | None:
        threads = await super().get_all_user_threads(user_id=user_id, thread_id=thread_id)
        for thread in threads or []:
            thread["tags"] = _json(thread.get("tags"), [])
            thread["metadata"] = _json(thread.get("metadata"), {})
            for step in thread["steps"]:
                for key, empty in (("tags", None), ("metadata", {}), ("generation", None)):
                    step[key] = _json(step.get(key), empty)  # type: ignore[literal-required]
            for element in thread["elements"]:
                element["props"] = _json(element.get("props"), {})
        return threads

    # Steps

    @_refused_when_owner_unreadable
    async def create_step(self, step_dict: dict) -> None:  # type: ignore[override]
        unknown = set(step_dict) - self.columns["steps"] - {"feedback"}
        if unknown:
            log.warning("Chat history: step fields with no column, not stored: %s", sorted(unknown))
        row = {key: value for key, value in step_dict.items() if key in self.columns["steps"]}
        for key in ("modes", "tags"):
            if isinstance(row.get(key), (dict, list)):
                row[key] = json.dumps(row[key])
        # The user's message is the output of a user_message step, and Chainlit copies it into
        # the input of the "run" step of on_message.
        for kind, field in (("user_message", "output"), ("run", "input")):
            if row.get("type") == kind and isinstance(row.get(field), str):
                row[field] = cut_for_history(row[field])
        # Chainlit starts the creation and the update of a step as two tasks, and both are
        # upserts: unordered, the creation could land last and blank the step. The lock is
        # taken before the first await, so writes land in the order the tasks were started.
        async with self._step_writes:
            if await self._step_may_be_written(row):
                await super().create_step(row)  # type: ignore[arg-type]

    async def _step_may_be_written(self, row: dict) -> bool:
        # The step's id comes from the browser for a user's message, and the base layer's
        # upsert would move a step of any thread into this one, with the new text.
        stored = await self._thread_of("steps", row.get("id"))
        if stored is not None and stored != row.get("threadId"):
            log.warning(
                "Chat history: refused a step by %s whose id is a step of another conversation",
                acting_user() or "the app",
            )
            return False
        return await self._may_write(row.get("threadId") or "", "a step")

    @_refused_when_owner_unreadable
    async def delete_step(self, step_id: str) -> None:
        thread_id = await self._thread_of("steps", step_id)
        if thread_id is None or await self._may_write(thread_id, "a step's deletion"):
            await super().delete_step(step_id)

    async def _thread_of(self, table: str, row_id: object) -> str | None:
        """The thread a stored step or element belongs to, None when there is no such row."""
        rows = await self._owner_read(
            f'SELECT "threadId" FROM {table} WHERE "id" = :id', {"id": row_id}
        )
        return rows[0]["threadId"] if rows else None

    async def _owner_read(self, query: str, parameters: dict) -> list[dict]:
        # execute_sql answers a failure with None, which would read as "no such row".
        rows = await self.execute_sql(query, parameters)
        if not isinstance(rows, list):
            raise OwnerUnreadable
        return rows

    async def owner_of_step(self, step_id: str) -> str | None:
        rows = await self.execute_sql(
            'SELECT t."userIdentifier" FROM steps s JOIN threads t ON t."id" = s."threadId" '
            'WHERE s."id" = :id',
            {"id": step_id},
        )
        return rows[0]["userIdentifier"] if rows else None

    # Feedback

    async def upsert_feedback(self, feedback: Feedback) -> str:
        if feedback.threadId is None:  # the UI leaves it out; the step knows its thread
            rows = await self.execute_sql(
                'SELECT "threadId" FROM steps WHERE "id" = :id', {"id": feedback.forId}
            )
            feedback.threadId = rows[0]["threadId"] if rows else None
        return await super().upsert_feedback(feedback)

    async def owner_of_feedback(self, feedback_id: str) -> str | None:
        rows = await self.execute_sql(
            'SELECT t."userIdentifier" FROM feedbacks f JOIN steps s ON s."id" = f."forId" '
            'JOIN threads t ON t."id" = s."threadId" WHERE f."id" = :id',
            {"id": feedback_id},
        )
        return rows[0]["userIdentifier"] if rows else None

    # Elements

    async def get_element(self, thread_id: str, element_id: str) -> ElementDict | None:
        # The base layer calls json.loads() on "props", which is NULL for most elements.
        rows = await self.execute_sql(
            'SELECT * FROM elements WHERE "threadId" = :thread AND "id" = :id',
            {"thread": thread_id, "id": element_id},
        )
        if not rows:
            return None
        row = rows[0]
        row["props"] = _json(row.get("props"), {})
        row["playerConfig"] = _json(row.get("playerConfig"), None)
        return ElementDict(
            **{key: row.get(key) for key in ElementDict.__annotations__ if key != "path"}
        )

    @_refused_when_owner_unreadable
    async def create_element(self, element: Any) -> None:
        # Chainlit's element routes take the element, its id and its thread from the browser,
        # and the base layer's upsert would move an element of any thread into the one named.
        stored = await self._thread_of("elements", element.id)
        if stored is not None and stored != element.thread_id:
            log.warning(
                "Chat history: refused an element by %s whose id is an element of another "
                "conversation",
                acting_user() or "the app",
            )
            return
        if await self._may_write(element.thread_id or "", "an element"):
            # Chainlit stores a message's files and creates its thread in separate tasks: the
            # file may come first, and the thread's foreign key would refuse it. Its create_step
            # makes the thread first; its create_element does not.
            if element.thread_id:
                await self.update_thread(element.thread_id)
            await super().create_element(element)

    @_refused_when_owner_unreadable
    async def delete_element(self, element_id: str, thread_id: str | None = None) -> None:
        # The thread that counts is the element's own, not the one the browser named.
        stored = await self._thread_of("elements", element_id)
        if stored is None or await self._may_write(stored, "an element's deletion"):
            await super().delete_element(element_id, thread_id)

    async def owned_file(
        self, object_key: str, user_identifier: str
    ) -> tuple[Path, str, str] | None:
        """The file, name and type of an element of one of this user's threads, else None."""
        rows = await self.execute_sql(
            'SELECT e."name", e."mime" FROM elements e JOIN threads t ON t."id" = e."threadId" '
            'WHERE e."objectKey" = :key AND t."userIdentifier" = :user',
            {"key": object_key, "user": user_identifier},
        )
        path = self.storage.path_of(object_key)
        if not rows or not path.is_file():
            return None
        name = rows[0]["name"]
        mime = rows[0]["mime"] or mimetypes.guess_type(name)[0] or "application/octet-stream"
        return path, name, mime

    # Accounts deleted

    async def delete_conversations(self, user_identifier: str) -> int:
        """Delete the user, their threads with all steps, elements, feedback and stored files, in
        one transaction; how many threads went. Feedback on their steps goes too, whatever
        thread it names (the UI leaves the thread out)."""
        user = {"user": user_identifier}
        threads = 'SELECT "id" FROM threads WHERE "userIdentifier" = :user'
        steps = f'SELECT "id" FROM steps WHERE "threadId" IN ({threads})'
        files = f'SELECT "objectKey" FROM elements WHERE "threadId" IN ({threads})'
        async with self.engine.begin() as connection:
            deleted = len((await connection.execute(text(threads), user)).all())
            keys = (await connection.execute(text(files), user)).scalars().all()
            for statement in (
                f'DELETE FROM feedbacks WHERE "threadId" IN ({threads}) OR "forId" IN ({steps})',
                f'DELETE FROM elements WHERE "threadId" IN ({threads})',
                f'DELETE FROM steps WHERE "threadId" IN ({threads})',
                'DELETE FROM threads WHERE "userIdentifier" = :user',
                'DELETE FROM users WHERE "identifier" = :user',
            ):
                await connection.execute(text(statement), user)
        for key in filter(None, keys):  # after the commit: a file without its row is only waste
            await self.storage.delete_file(key)
        return deleted


def thread_title(first_message: str) -> str:
    """The first question, on one line and at most TITLE_LENGTH characters."""
    title = " ".join(first_message.split())
    if len(title) <= TITLE_LENGTH:
        return title or "New chat"
    return title[: TITLE_LENGTH - 1].rsplit(" ", 1)[0].rstrip(" ,.;:") + "…"


def is_uuid(value: object) -> bool:
    try:
        return str(uuid.UUID(str(value))) == str(value).lower()
    except ValueError:
        return False


def _statement(query: str) -> str:
    words = query.split()
    return " ".join(words[:3]) if words else "an empty statement"


def _json(value: object, empty: object) -> object:
    if not isinstance(value, str):
        return value if value is not None else empty
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _on_connect(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def delete_conversations(settings: Settings, user_identifier: str) -> int:
    """Delete everything a user left in the history: their threads with all steps, elements,
    feedback and stored files. Returns how many threads went. For deleted accounts."""
    schema = history_schema(settings)
    if not schema.exists():
        return 0

    async def delete() -> int:
        layer = HistoryDataLayer(schema, settings.history_files_dir)
        try:
            return await layer.delete_conversations(user_identifier)
        finally:
            await layer.close()

    return asyncio.run(delete())
