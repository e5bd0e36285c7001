"""The lexical half of hybrid retrieval on the local index: BM25 with English stemming and stop
words (llama_index's bm25s retriever) over every chunk of LanceDB, file name included, held in
memory and built again whenever the table has changed (in this process or another: the LanceDB
table's version tells). On PostgreSQL, pg_index.py searches in the database instead."""

from __future__ import annotations

import logging
import threading

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.retrievers.bm25 import BM25Retriever

from ragchat.vector_store import LanceStore

# bm25s sets its own logger to DEBUG when imported.
logging.getLogger("bm25s").setLevel(logging.WARNING)


class Bm25Index:
    def __init__(self, store: LanceStore):
        self._store = store
        self._lock = threading.Lock()
        self._cached: tuple[int | None, int, BaseRetriever] | None = None

    def retriever(self, depth: int) -> BaseRetriever:
        """A retriever of the `depth` best chunks by BM25."""
        version = self._store.version()
        with self._lock:
            if self._cached is None or self._cached[:2] != (version, depth):
                nodes = self._store.all_nodes()
                retriever = (
                    # bm25s cannot return more than it holds, nor search nothing.
                    _OneAtATime(
                        BM25Retriever.from_defaults(
                            nodes=nodes, similarity_top_k=min(depth, len(nodes))
                        )
                    )
                    if nodes
                    else _Nothing()
                )
                self._cached = (version, depth, retriever)
            return self._cached[2]


class _OneAtATime(BaseRetriever):
    """One search at a time: the BM25 index is shared by every chat, and its query stemmer
    (PyStemmer's) "must not be called concurrently"."""

    def __init__(self, inner: BaseRetriever):
        super().__init__()
        self._inner, self._lock = inner, threading.Lock()

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        with self._lock:
            return self._inner.retrieve(query_bundle)


class _Nothing(BaseRetriever):
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return []
