"""The index in PostgreSQL, when DATABASE_URL names one: chunks with their pgvector embeddings
and a full-text vector, searched by SQL, so that no app process holds a copy of the corpus and
every instance sees every change at once.

Not llama_index's PGVectorStore: it pins SQLAlchemy below 2.1 (the lock has 2.1), its "hybrid"
concatenates two result lists without fusing them, and its lexical query ranks every chunk that
shares any word with the question (384 ms at 50,000 chunks).
Here the vector store is a llama_index store like LanceStore, and the lexical side is a
retriever of its own that retrieval.py fuses with it exactly as it fuses BM25 on LanceDB.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from pgvector.sqlalchemy import Vector
from sqlalchemy import Column, Engine, MetaData, Table, Text, bindparam, exc, text
from sqlalchemy.dialects.postgresql import JSONB, insert

from ragchat.config import ConfigError
from ragchat.database import driver_message, engine, lock_key, shown, storable

# Past this many chunks the embeddings get an HNSW index, built once over what is there (a graph
# built in one go finds more of the true neighbours than one grown chunk by chunk) and kept up to
# date by PostgreSQL from then on. Below it an exact scan costs a few ms.
INDEX_MIN_ROWS = 1_000
HNSW = "chunks_embedding_hnsw"
# How many candidates an HNSW search keeps: the smallest whose results match an exact scan's
# (recall >= 0.99) on bench/index_scale.py's corpus at 50,000 chunks: 200 gave 0.93, 400 0.98,
# 800 0.996 (vector query p50 1.5, 1.9, 2.9 ms).
EF_SEARCH = 800
# The lexical search ranks at most about this many chunks, those holding the question's rarest
# words (more did not find more relevant chunks on Cranfield's queries, and cost more).
LEXICAL_BUDGET = 500
_WRITE_BATCH = 500

_EMPTY = VectorStoreQueryResult(nodes=[], similarities=[], ids=[])

_chunks = Table(
    "chunks",
    MetaData(),
    Column("node_id", Text, primary_key=True),
    Column("ref_doc_id", Text),
    Column("file_name", Text),
    Column("text", Text),
    Column("metadata", JSONB),
    Column("embedding", Vector()),
)

# `chunk_lexemes` counts, per word (lexeme), the chunks holding it: the lexical search reads the
# rarest words' chunks first and weighs words by rarity. Triggers keep it exact in the same
# transaction as each write; the row with the empty word (never a lexeme) counts all chunks.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    node_id text PRIMARY KEY,
    ref_doc_id text NOT NULL,
    file_name text NOT NULL,
    text text NOT NULL,
    metadata jsonb NOT NULL,
    embedding vector({dim}) NOT NULL,
    tsv tsvector GENERATED ALWAYS AS
        (setweight(to_tsvector('english', file_name), 'A') || to_tsvector('english', text)) STORED
);
-- Kept in the row, not in the TOAST table: the lexical search reads it for each candidate
-- several times, and a TOAST lookup each time made it 3x slower at 50,000 chunks.
ALTER TABLE chunks ALTER tsv SET STORAGE MAIN;
CREATE INDEX IF NOT EXISTS chunks_ref_doc_id ON chunks (ref_doc_id);
CREATE INDEX IF NOT EXISTS chunks_tsv ON chunks USING gin (tsv);
CREATE TABLE IF NOT EXISTS chunk_lexemes (word text PRIMARY KEY, ndoc bigint NOT NULL);
INSERT INTO chunk_lexemes VALUES ('', 0) ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION chunk_lexemes_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        -- An upsert fires the UPDATE trigger too, with no rows when it inserted only.
        IF EXISTS (SELECT FROM old_rows) THEN
            UPDATE chunk_lexemes l SET ndoc = l.ndoc - gone.n
            FROM (SELECT word, count(*) AS n FROM old_rows, unnest(tsvector_to_array(tsv)) word
                  GROUP BY word
                  UNION ALL SELECT '', count(*) FROM old_rows) gone
            WHERE l.word = gone.word;
            DELETE FROM chunk_lexemes WHERE ndoc <= 0 AND word IN
                (SELECT unnest(tsvector_to_array(tsv)) FROM old_rows);
        END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO chunk_lexemes
        SELECT word, count(*) FROM new_rows, unnest(tsvector_to_array(tsv)) word GROUP BY word
        UNION ALL SELECT '', count(*) FROM new_rows
        ON CONFLICT (word) DO UPDATE SET ndoc = chunk_lexemes.ndoc + excluded.ndoc;
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER chunks_inserted AFTER INSERT ON chunks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION chunk_lexemes_count();
CREATE OR REPLACE TRIGGER chunks_updated AFTER UPDATE ON chunks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chunk_lexemes_count();
CREATE OR REPLACE TRIGGER chunks_deleted AFTER DELETE ON chunks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION chunk_lexemes_count();
"""

_NEAREST = text(
    "SELECT node_id, text, metadata, 1 - (embedding <=> :wanted) AS similarity FROM chunks "
    "ORDER BY embedding <=> :wanted LIMIT :k"
).bindparams(bindparam("wanted", type_=Vector()))

# One statement per question, about 15 ms at 10,000 chunks and as bounded at 50,000. Candidates:
# the chunks holding the question's rarest words, taken rarest first while they add up to at most
# LEXICAL_BUDGET chunks (the rarest always), found through the GIN index; matching every word of
# the question would rank most of the corpus for a long question (400 ms at 50,000 chunks).
# Score: BM25 (k1 = 1.5, b = 0.75, Lucene's idf, as the bm25s retriever on LanceDB), a chunk's
# length being its number of distinct words and the average that of the candidates.
_LEXICAL = text(
    """
WITH wanted AS (
    SELECT l.word, l.ndoc, quote_literal(l.word)::tsquery AS query,
           ln(1 + (total.ndoc - l.ndoc + 0.5) / (l.ndoc + 0.5)) AS idf
    FROM chunk_lexemes l, chunk_lexemes total
    WHERE total.word = '' AND l.word <> ''
      AND l.word = ANY (tsvector_to_array(to_tsvector('english', :question)))
), rarest AS (
    SELECT query FROM (
        SELECT query, ndoc, sum(ndoc) OVER (ORDER BY ndoc, word) AS reach FROM wanted
    ) counted
    WHERE reach <= :budget OR reach = ndoc
), found AS MATERIALIZED (
    SELECT node_id, tsv, length(tsv) AS length FROM chunks
    WHERE tsv @@ (SELECT string_agg(query::text, ' | ')::tsquery FROM rarest)
    LIMIT :budget  -- a question of common words only: some of their chunks, not all
), scored AS (
    SELECT found.node_id,
           sum(wanted.idf * cardinality(word.positions) * 2.5 / (cardinality(word.positions)
               + 1.5 * (0.25 + 0.75 * found.length / average.length))) AS score
    FROM found CROSS JOIN (SELECT avg(length) AS length FROM found) average
         CROSS JOIN unnest(found.tsv) word JOIN wanted ON wanted.word = word.lexeme
    GROUP BY found.node_id ORDER BY score DESC, found.node_id LIMIT :k
)
SELECT c.node_id, c.text, c.metadata, s.score
FROM scored s JOIN chunks c USING (node_id) ORDER BY s.score DESC, s.node_id
"""
)


def prepare(url: str) -> None:
    """Check that the database can be reached and has pgvector (ConfigError saying what to do
    if not): better a clear message at start than a traceback at the first document."""
    try:
        with engine(url).begin() as connection:
            # Two first starts at once would both create it, and one fail on pg_extension's
            # unique index: IF NOT EXISTS is not safe against a concurrent CREATE.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key("ragchat pgvector")}
            )
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    except exc.OperationalError as error:
        reason = driver_message(error)
        raise ConfigError(
            f"DATABASE_URL {shown(url)} cannot be reached ({reason}): check that the server runs"
            " and that the URL's host, port, user and password are right"
        ) from None
    except exc.DBAPIError as error:
        raise ConfigError(
            f"DATABASE_URL {shown(url)} has no pgvector and ragchat may not add it "
            f"({driver_message(error)}): enable the extension `vector` (on "
            "Upsun: `configuration: extensions: [vector]` in the postgresql service)"
        ) from None


class PgStore(BasePydanticVectorStore):
    """The chunks table as a llama_index vector store. Its similarities are the embeddings'
    cosine similarities, as LanceStore's are (the relevance cutoff is set on that scale)."""

    stores_text: bool = True
    flat_metadata: bool = False
    url: str
    _engine: Engine = PrivateAttr()

    def __init__(self, url: str, **kwargs: Any):
        super().__init__(url=url, **kwargs)
        self._engine = engine(url)

    @property
    def client(self) -> Engine:
        return self._engine

    # --- writing ------------------------------------------------------------------------

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Upsert, a batch per statement: a node added again replaces itself."""
        if not nodes:
            return []
        self._create(len(nodes[0].get_embedding()))
        rows = [_row(node) for node in nodes]
        with self._engine.begin() as connection:
            for start in range(0, len(rows), _WRITE_BATCH):
                # One multi-row statement, not executemany (psycopg would send one statement
                # per row, and the word-count trigger runs once per statement).
                statement = insert(_chunks).values(rows[start : start + _WRITE_BATCH])
                connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=["node_id"],
                        set_={
                            name: statement.excluded[name] for name in rows[0] if name != "node_id"
                        },
                    )
                )
        return [row["node_id"] for row in rows]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        self.delete_ref_docs([ref_doc_id])

    def delete_ref_docs(self, ref_doc_ids: Sequence[str]) -> None:
        if not ref_doc_ids:
            return
        with self._engine.begin() as connection:
            if self._exists(connection):
                connection.execute(
                    text("DELETE FROM chunks WHERE ref_doc_id = ANY(:ids)"),
                    {"ids": list(ref_doc_ids)},
                )

    def drop(self) -> None:
        with self._engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS chunks, chunk_lexemes"))

    def keep_vector_index(self) -> None:
        """Build the HNSW index once the table is large enough (see INDEX_MIN_ROWS)."""
        if self.count() < INDEX_MIN_ROWS:
            return
        with self._engine.begin() as connection:
            connection.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
            connection.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS {HNSW} ON chunks "
                    "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 128)"
                )
            )

    def _create(self, dimensions: int) -> None:
        with self._engine.begin() as connection:
            if self._exists(connection):
                return
            # Two instances creating it at once would collide in PostgreSQL's catalogue.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key("ragchat chunks")}
            )
            connection.exec_driver_sql(_SCHEMA.format(dim=int(dimensions)))

    @staticmethod
    def _exists(connection: Any) -> bool:
        return connection.execute(text("SELECT to_regclass('chunks') IS NOT NULL")).scalar()

    # --- reading ------------------------------------------------------------------------

    def count(self) -> int:
        with self._engine.connect() as connection:
            if not self._exists(connection):
                return 0
            return connection.execute(text("SELECT count(*) FROM chunks")).scalar()

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if query.query_embedding is None or query.similarity_top_k < 1:
            return _EMPTY
        rows = self._rows(_NEAREST, {"wanted": query.query_embedding, "k": query.similarity_top_k})
        return VectorStoreQueryResult(
            nodes=[_node(row) for row in rows],
            similarities=[float(row.similarity) for row in rows],
            ids=[row.node_id for row in rows],
        )

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)

    def lexical(self, question: str, k: int) -> list[NodeWithScore]:
        rows = self._rows(_LEXICAL, {"question": question, "k": k, "budget": LEXICAL_BUDGET})
        return [NodeWithScore(node=_node(row), score=float(row.score)) for row in rows]

    def _rows(self, statement: Any, values: dict) -> list:
        try:
            with self._engine.begin() as connection:
                # LOCAL: for this transaction only, never left on a pooled connection.
                connection.execute(text(f"SET LOCAL hnsw.ef_search = {EF_SEARCH}"))
                return list(connection.execute(statement, values))
        except exc.ProgrammingError as error:
            if getattr(error.orig, "sqlstate", None) == "42P01":  # no table yet, or rebuilding
                return []
            raise

    def all_nodes(self) -> list[BaseNode]:
        """Every chunk, with its embedding (to copy the index elsewhere)."""
        with self._engine.connect() as connection:
            if not self._exists(connection):
                return []
            rows = connection.execute(
                text(
                    "SELECT node_id, text, metadata, embedding FROM chunks ORDER BY node_id"
                ).columns(embedding=Vector())
            )
            nodes = []
            for row in rows:
                node = _node(row)
                node.embedding = [float(x) for x in row.embedding]
                nodes.append(node)
            return nodes


class PgLexicalRetriever(BaseRetriever):
    """The lexical half of hybrid retrieval on PostgreSQL: one SQL query per question."""

    def __init__(self, store: PgStore, depth: int):
        super().__init__()
        self._store, self._depth = store, depth

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._store.lexical(query_bundle.query_str, self._depth)


def _row(node: BaseNode) -> dict:
    metadata = node_to_metadata_dict(node, remove_text=True, flat_metadata=False)
    return {
        "node_id": node.node_id,
        "ref_doc_id": node.ref_doc_id or node.node_id,
        "file_name": storable(str(node.metadata.get("file_name", ""))),
        "text": storable(node.get_content()),
        "metadata": _storable_json(metadata),
        "embedding": node.get_embedding(),
    }


def _storable_json(value: Any) -> Any:
    """`value` with every string storable: jsonb refuses the escape of a NUL as TEXT does it."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(key): _storable_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable_json(item) for item in value]
    return value


def _node(row: Any) -> BaseNode:
    metadata = row.metadata if isinstance(row.metadata, dict) else json.loads(row.metadata)
    node = metadata_dict_to_node(metadata)
    node.set_content(row.text)
    return node
