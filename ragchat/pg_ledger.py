"""What the index holds, in PostgreSQL (with DATABASE_URL): the same records ledger.py keeps in
STORAGE_DIR, in one table every instance reads, so that no instance embeds again what another
has indexed; and PostgreSQL's advisory lock instead of the file lock, so one instance at a time
syncs. Only what changed is written: a file's row, a document's hash."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AbstractContextManager

from llama_index.core.storage.docstore import BaseDocumentStore
from llama_index.core.storage.docstore.keyval_docstore import KVDocumentStore
from llama_index.core.storage.kvstore.types import DEFAULT_COLLECTION, BaseKVStore
from sqlalchemy import Column, MetaData, Table, Text, text
from sqlalchemy.dialects.postgresql import JSONB, insert

from ragchat.database import advisory_lock, engine, lock_key
from ragchat.documents import FileStat
from ragchat.ledger import Files

SYNC_LOCK = "ragchat index sync"
_SETTINGS, _FILES, _DOCSTORE = "index/settings", "index/files", "docstore"

_records = Table(
    "index_records",
    MetaData(),
    Column("collection", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", JSONB, nullable=False),
)


class PgKVStore(BaseKVStore):
    """llama_index's key-value store interface on one table, so that its docstore (document
    hashes, what the ingestion pipeline upserts against) lives in the database."""

    def __init__(self, url: str):
        self._engine = engine(url)
        with self._engine.begin() as connection:
            # Two instances creating it at once would collide in PostgreSQL's catalogue.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key("ragchat records")}
            )
            _records.create(connection, checkfirst=True)

    def put(self, key: str, val: dict, collection: str = DEFAULT_COLLECTION) -> None:
        self.put_all([(key, val)], collection)

    def put_all(
        self, kv_pairs: list[tuple[str, dict]], collection: str = DEFAULT_COLLECTION, **_: object
    ) -> None:
        # One statement (psycopg's executemany sends one per row), and a key once in it.
        values = dict(kv_pairs)
        if not values:
            return
        statement = insert(_records).values(
            [{"collection": collection, "key": key, "value": val} for key, val in values.items()]
        )
        with self._engine.begin() as connection:
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["collection", "key"], set_={"value": statement.excluded.value}
                )
            )

    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict | None:
        with self._engine.connect() as connection:
            return connection.execute(
                text("SELECT value FROM index_records WHERE collection = :c AND key = :k"),
                {"c": collection, "k": key},
            ).scalar()

    def get_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict]:
        with self._engine.connect() as connection:
            rows = connection.execute(
                text("SELECT key, value FROM index_records WHERE collection = :c"),
                {"c": collection},
            )
            return {key: value for key, value in rows}

    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        return self.delete_all([key], collection) > 0

    def delete_all(self, keys: list[str], collection: str = DEFAULT_COLLECTION) -> int:
        with self._engine.begin() as connection:
            return connection.execute(
                text("DELETE FROM index_records WHERE collection = :c AND key = ANY(:keys)"),
                {"c": collection, "keys": list(keys)},
            ).rowcount

    def clear(self, prefix: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                text("DELETE FROM index_records WHERE starts_with(collection, :prefix)"),
                {"prefix": prefix},
            )

    # llama_index awaits these in its async paths; the app's ingestion runs in a worker thread.
    async def aput(self, key: str, val: dict, collection: str = DEFAULT_COLLECTION) -> None:
        await asyncio.to_thread(self.put, key, val, collection)

    async def aget(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict | None:
        return await asyncio.to_thread(self.get, key, collection)

    async def aget_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict]:
        return await asyncio.to_thread(self.get_all, collection)

    async def adelete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        return await asyncio.to_thread(self.delete, key, collection)


class PgLedger:
    def __init__(self, url: str):
        self._url = url
        self._records = PgKVStore(url)
        self._saved: dict[str, dict] = {}  # the files as last read or written: what to update

    def lock(self, wait: bool = True) -> AbstractContextManager[bool]:
        """One syncing instance at a time, across every process on the database."""
        return advisory_lock(self._url, SYNC_LOCK, wait)

    def signature(self) -> dict:
        return self._records.get("signature", _SETTINGS) or {}

    def keep_signature(self, signature: dict) -> None:
        self._records.put("signature", signature, _SETTINGS)

    def files(self) -> Files:
        self._saved = self._records.get_all(_FILES)
        return {
            name: (FileStat(row["size"], row["mtime_ns"]), row["sha256"])
            for name, row in self._saved.items()
        }

    def docstore(self) -> BaseDocumentStore:
        return KVDocumentStore(self._records, namespace=_DOCSTORE)  # writes as it goes

    def save(self, docstore: BaseDocumentStore, files: Files) -> None:
        rows = dict(_file_rows(files))
        self._records.put_all(
            [(name, row) for name, row in rows.items() if self._saved.get(name) != row], _FILES
        )
        self._records.delete_all([name for name in self._saved if name not in rows], _FILES)
        self._saved = rows

    def clear(self) -> None:
        self._records.clear(_DOCSTORE)
        self._records.clear(_FILES)
        self._saved = {}


def _file_rows(files: Files) -> Iterator[tuple[str, dict]]:
    for name, (stat, sha) in files.items():
        yield name, {"size": stat.size, "mtime_ns": stat.mtime_ns, "sha256": sha}
