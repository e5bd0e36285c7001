"""`ragchat migrate --to postgresql://...`: an installation kept in local files (accounts and
conversations in SQLite, the index in LanceDB with its bookkeeping in STORAGE_DIR) copied into
an empty PostgreSQL, where DATABASE_URL then points. Accounts keep their hashes and session keys
(nobody has to sign in again), conversations their ids, and the index its embeddings (nothing is
embedded again). Each table is counted on both sides afterwards. Nothing is deleted from the
source: until DATABASE_URL is set, the app goes on using it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy import Boolean, Engine, MetaData, Table, create_engine, func, insert, select
from sqlalchemy.exc import SQLAlchemyError

from ragchat import database
from ragchat.config import Settings

# Parents before children: the conversations' foreign keys.
HISTORY_TABLES = ("users", "threads", "steps", "elements", "feedbacks")
BATCH = 1000


class MigrationRefused(Exception):
    """The copy cannot be made as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Counted:
    what: str
    source: int
    target: int

    @property
    def agrees(self) -> bool:
        return self.source == self.target


def migrate(
    settings: Settings,
    target_url: str,
    say: Callable[[str], None] = print,
    replace: bool = False,
) -> list[Counted]:
    """Copy the installation of `settings` (its files) into the PostgreSQL at `target_url`; the
    counts of both sides. MigrationRefused when the target already holds data, unless `replace`:
    then what it holds of ragchat's goes first (on Upsun, what the scaled deployment's first
    start made there before the migration: an admin, the data folder's index)."""
    try:
        url = database.normalized_url(target_url)
    except ValueError:
        raise MigrationRefused(
            "--to must be a PostgreSQL URL, e.g. postgresql://user:password@host:5432/name, not "
            + database.shown(target_url)
        ) from None
    source = settings.model_copy(update={"database_url": None})
    target = settings.model_copy(update={"database_url": url})
    if replace:
        _empty(target)
    _refuse_unless_empty(target)
    counts = []
    try:
        say("Accounts...")
        counts += _copy_accounts(source, target)
        say("Conversations...")
        counts += _copy_history(source, target)
        say("Index...")
        counts += copy_index(source, target)
    except SQLAlchemyError as error:
        raise MigrationRefused(
            f"the copy into {database.shown(url)} stopped ({database.driver_message(error)}); "
            "the files are as they were. Put right what stopped it, then run the same command "
            "with --replace to start the copy over"
        ) from None
    return counts


def _refuse_unless_empty(target: Settings) -> None:
    from ragchat.auth import user_store
    from ragchat.history import history_schema
    from ragchat.index_stores import open_index_stores

    history_schema(target).migrate()
    held = {
        "accounts": user_store(target).count(),
        "conversations": _count(database.engine(target.database_url), "threads"),
        "passages": open_index_stores(target).vectors.count(),
    }
    if any(held.values()):
        holding = ", ".join(f"{count} {what}" for what, count in held.items() if count)
        raise MigrationRefused(
            f"{database.shown(target.database_url)} already holds {holding}: migrate into an "
            "empty database, or add --replace to delete what it holds first (nothing was copied)"
        )


def _empty(target: Settings) -> None:
    from sqlalchemy import text

    from ragchat.accounts_pg import metadata as account_tables
    from ragchat.auth import user_store
    from ragchat.history import history_schema
    from ragchat.index_stores import open_index_stores

    user_store(target)  # the tables exist, empty or not
    history_schema(target).migrate()
    with database.engine(target.database_url).begin() as connection:
        for name in reversed(HISTORY_TABLES):
            connection.execute(text(f"DELETE FROM {name}"))
        for table in account_tables.sorted_tables:
            connection.execute(table.delete())
    stores = open_index_stores(target)
    stores.vectors.drop()
    stores.ledger.clear()
    stores.ledger.keep_signature({})


def _copy_accounts(source: Settings, target: Settings) -> list[Counted]:
    from sqlalchemy.dialects.postgresql import insert as upsert

    from ragchat.accounts_pg import AUTH_SECRET, accounts, app_secrets
    from ragchat.auth import user_store

    there = user_store(target).tables
    if not source.db_path.exists():
        return [Counted("accounts", 0, there.count())]
    rows = user_store(source).tables.all()
    # One transaction, each account whole: a disabled account is never in the target enabled,
    # not even while the copy runs (on Upsun the scaled deployment may already be serving).
    with database.engine(target.database_url).begin() as connection:
        if rows:
            connection.execute(
                insert(accounts),
                [
                    {"username": name, "password_hash": hashed, "role": role,
                     "disabled": bool(disabled), "session_key": key}
                    for name, hashed, role, disabled, key in rows
                ],
            )  # fmt: skip
        # Sessions signed with the generated secret stay valid (CHAINLIT_AUTH_SECRET, when set,
        # signs them instead, and stays as it is).
        secret_file = source.db_path.parent / "chainlit_auth_secret"
        if secret_file.exists():
            connection.execute(
                upsert(app_secrets)
                .values(name=AUTH_SECRET, value=secret_file.read_text().strip())
                .on_conflict_do_nothing()
            )
    return [Counted("accounts", len(rows), there.count())]


def _copy_history(source: Settings, target: Settings) -> list[Counted]:
    from ragchat.history import history_schema

    if not source.history_db_path.exists():
        return []
    history_schema(target).migrate()  # the source as it is: the columns both have are copied
    here = create_engine(f"sqlite:///{source.history_db_path}")
    there = database.engine(target.database_url)
    counts = []
    try:
        for name in HISTORY_TABLES:
            source_table = Table(name, MetaData(), autoload_with=here)
            target_table = Table(name, MetaData(), autoload_with=there)
            columns = [c.name for c in source_table.columns if c.name in target_table.columns]
            flags = {c.name for c in target_table.columns if isinstance(c.type, Boolean)}
            with here.connect() as reading, there.begin() as writing:
                rows = reading.execute(select(*(source_table.c[c] for c in columns)))
                for batch in _batches(rows.mappings()):
                    writing.execute(
                        insert(target_table), [_storable_row(row, flags) for row in batch]
                    )
            counts.append(
                Counted(f"conversations: {name}", _count(here, name), _count(there, name))
            )
    finally:
        here.dispose()
    return counts


def copy_index(source: Settings, target: Settings) -> list[Counted]:
    """The index of `source`'s files into `target`'s PostgreSQL, embeddings and all."""
    from ragchat.index_stores import open_index_stores
    from ragchat.ledger import FileLedger
    from ragchat.pg_ledger import PgKVStore

    here, there = open_index_stores(source), open_index_stores(target)
    nodes = here.vectors.all_nodes()
    for start in range(0, len(nodes), BATCH):
        there.vectors.add(nodes[start : start + BATCH])
    there.vectors.keep_vector_index()
    # What is indexed, so that no instance indexes the same files again.
    files = FileLedger(source.storage_dir)
    there.ledger.keep_signature(files.signature())
    there.ledger.save(None, files.files())
    docstore = source.storage_dir / "docstore.json"
    if docstore.exists():
        records = PgKVStore(target.database_url)
        for collection, items in json.loads(docstore.read_text()).items():
            records.put_all(list(items.items()), collection)
    return [
        Counted("index: passages", len(nodes), there.vectors.count()),
        Counted("index: files", len(files.files()), len(there.ledger.files())),
    ]


def _batches(rows) -> Iterator[list]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _storable_row(row, flags: set[str]) -> dict:
    """A row as PostgreSQL takes it: SQLite's 0/1 as booleans, text without what it refuses."""
    values = {}
    for key, value in row.items():
        if key in flags and value is not None:
            value = bool(value)
        elif isinstance(value, str):
            value = database.storable(value)
        values[key] = value
    return values


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(Table(table, MetaData())))


def check(counts: list[Counted]) -> None:
    """MigrationRefused naming each count that differs between the source and the copy."""
    wrong = [c for c in counts if not c.agrees]
    if wrong:
        raise MigrationRefused(
            "the copy differs from the source in "
            + ", ".join(f"{c.what} ({c.source} there, {c.target} copied)" for c in wrong)
            + "; DATABASE_URL should not point at it yet"
        )
