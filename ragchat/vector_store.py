"""LanceDB as the vector store, with the few changes a multi-process app needs."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
from lancedb.index import IvfFlat
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryResult
from llama_index.core.vector_stores.utils import metadata_dict_to_node
from llama_index.vector_stores.lancedb import LanceDBVectorStore

_EMPTY = VectorStoreQueryResult(nodes=[], similarities=[], ids=[])

# Past this many chunks the vectors get an IVF_FLAT index. Searched in all of its partitions it
# still compares the query with every vector, so results are exactly a full scan's, but LanceDB
# answers from its index cache: 5 ms instead of 27 ms at 50,000 chunks (bench/index_scale.py).
INDEX_MIN_ROWS = 10_000
# Rows added since the index was built are scanned as well; past this share it is rebuilt
# (about half a second at 50,000 chunks).
REINDEX_SHARE = 0.1
VECTOR_INDEX = "vector_idx"
EVERY_PARTITION = 1 << 30  # LanceDB probes at most the partitions there are


class LanceStore(LanceDBVectorStore):
    """llama_index's LanceDB store, changed where it falls short here:
    - scores are cosine similarities (the integration reports exp(-distance), a scale no
      similarity cutoff can be explained in);
    - the table is looked up again while it is missing, so a table another process (or a
      rebuild) created is found, never overwritten;
    - deletes take many documents at once and quote ids safely (file names may hold quotes);
    - queries run in a worker thread (the integration has no async query, so llama_index
      would run it on the event loop) and an empty result is not an error;
    - a large table is searched through an index, still exactly (see INDEX_MIN_ROWS).
    """

    def __init__(self, **kwargs: Any):
        super().__init__(nprobes=EVERY_PARTITION, **kwargs)

    def _current_table(self) -> Any:
        if _table_of(self) is None and _table_name_of(self) in self.client.list_tables().tables:
            _set_table(self, self.client.open_table(_table_name_of(self)))
        return _table_of(self)

    def add(self, nodes: list[BaseNode], **add_kwargs: Any) -> list[str]:
        self._current_table()
        return super().add(nodes, **add_kwargs)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        self.delete_ref_docs([ref_doc_id])

    def delete_ref_docs(self, ref_doc_ids: list[str]) -> None:
        table = self._current_table()
        ids = list(ref_doc_ids)
        for start in range(0, len(ids) if table is not None else 0, 500):
            quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids[start : start + 500])
            table.delete(f"{self.doc_id_key} IN ({quoted})")

    def drop(self) -> None:
        if self._current_table() is not None:
            self.client.drop_table(_table_name_of(self))
            _set_table(self, None)

    def version(self) -> int | None:
        table = self._current_table()
        return table.version if table is not None else None

    def all_nodes(self) -> list[BaseNode]:
        """Every chunk, with its embedding: what a lexical index is built from."""
        table = self._current_table()
        if table is None:
            return []
        rows = table.to_arrow().select(["metadata", self.vector_column_name]).to_pylist()
        nodes = []
        for row in rows:
            node = metadata_dict_to_node(row["metadata"])
            node.embedding = list(row[self.vector_column_name])
            nodes.append(node)
        return nodes

    def keep_vector_index(self) -> None:
        """Build the vector index once the table is large, and again when much was added."""
        table = self._current_table()
        rows = table.count_rows() if table is not None else 0
        if rows < INDEX_MIN_ROWS:
            return
        stats = table.index_stats(VECTOR_INDEX)
        if (
            stats is None
            or stats.index_type != "IVF_FLAT"  # one an earlier version made
            or stats.num_unindexed_rows > REINDEX_SHARE * rows
        ):
            table.create_index(
                self.vector_column_name,
                config=IvfFlat(distance_type="l2", num_partitions=round(math.sqrt(rows))),
                name=VECTOR_INDEX,
                replace=True,
            )

    def count(self) -> int:
        table = self._current_table()
        return table.count_rows() if table is not None else 0

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if self._current_table() is None:
            return _EMPTY
        try:
            result = super().query(query, **kwargs)
        except Warning:  # the integration's way of saying "query results are empty.."
            return _EMPTY
        if query.query_embedding is not None:
            wanted = np.asarray(query.query_embedding)
            result.similarities = [_cosine(wanted, node.embedding) for node in result.nodes]
        return result

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)


# The integration's private state. LanceDBVectorStore opens its table once, when it is made,
# and keeps it in `_table` (None while there is none, and then its public `table` raises), named
# by `_table_name`; it has no public way to open a table that appeared since (another process
# wrote it) or to forget one that was dropped (a rebuild), and `add` creates the table whenever
# `_table` is None. These three functions are the only code that touches those attributes;
# tests/test_workarounds.py fails if the integration renames them or stops keeping the table
# there.


def _table_of(store: LanceDBVectorStore) -> Any:
    return store._table


def _set_table(store: LanceDBVectorStore, table: Any) -> None:
    store._table = table


def _table_name_of(store: LanceDBVectorStore) -> str:
    return store._table_name


def _cosine(a: np.ndarray, b: list[float]) -> float:
    vector = np.asarray(b)
    return float(a @ vector / (np.linalg.norm(a) * np.linalg.norm(vector) or 1.0))
