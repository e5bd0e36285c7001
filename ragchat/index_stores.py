"""Where the index lives, chosen here and nowhere else: in local files (LanceDB, BM25 in memory,
bookkeeping in STORAGE_DIR) by default, or in PostgreSQL when DATABASE_URL names one (pgvector,
full-text search and bookkeeping in the database, shared by every instance)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING

from llama_index.core.retrievers import BaseRetriever

from ragchat.config import Settings
from ragchat.ledger import FileLedger

if TYPE_CHECKING:
    from ragchat.pg_index import PgStore
    from ragchat.pg_ledger import PgLedger
    from ragchat.vector_store import LanceStore

TABLE = "chunks"


@dataclass(frozen=True)
class IndexStores:
    vectors: LanceStore | PgStore
    ledger: FileLedger | PgLedger  # what is indexed, and the lock: one syncer at a time
    lexical: Callable[[int], BaseRetriever]  # the lexical retriever of a given depth


def open_index_stores(settings: Settings) -> IndexStores:
    """The stores DATABASE_URL selects; ConfigError if its database cannot be used."""
    if settings.database_url:
        from ragchat.pg_index import PgLexicalRetriever, PgStore, prepare
        from ragchat.pg_ledger import PgLedger

        prepare(settings.database_url)
        store = PgStore(settings.database_url)
        return IndexStores(
            store, PgLedger(settings.database_url), partial(PgLexicalRetriever, store)
        )
    import lancedb

    from ragchat.bm25 import Bm25Index
    from ragchat.vector_store import LanceStore

    ledger = FileLedger(settings.storage_dir)
    # Another process may write the index: look for its commits before each query.
    connection = lancedb.connect(
        str(settings.storage_dir / "lancedb"), read_consistency_interval=timedelta(0)
    )
    store = LanceStore(connection=connection, table_name=TABLE, mode="create")
    return IndexStores(store, ledger, Bm25Index(store).retriever)
