"""The retriever the app answers from and the evaluation measures: vector, lexical or hybrid.

- vector: embedding similarity (LanceDB, or pgvector);
- lexical: the chunks' words, file name included: BM25 with English stemming and stop words
  (bm25.py), or PostgreSQL's full-text search (pg_index.py);
- hybrid: both, fused by reciprocal rank (llama_index's QueryFusionRetriever).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.retrievers import BaseRetriever, QueryFusionRetriever
from llama_index.core.retrievers.fusion_retriever import FUSION_MODES
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import VectorStoreQuery

from ragchat.config import Settings
from ragchat.ingest import Library

Mode = Literal["vector", "lexical", "hybrid"]
# How deep each retriever looks before fusion: rank fusion needs more than the final top-k.
_FUSION_DEPTH = 30


def build_retriever(
    library: Library, settings: Settings, top_k: int | None = None, mode: Mode | None = None
) -> BaseRetriever:
    """The retriever for `mode`, made when it is used: making it reads the index's size and
    version and may build the BM25 index again, a BM25 search is CPU work, and on PostgreSQL
    each search waits on the database. Awaited
    (`aretrieve`, as the chat does), all of that runs in a worker thread, so the event loop
    that serves every user never waits on it."""
    return _InWorkerThread(
        lambda: _retriever(
            library, settings, top_k or settings.top_k, mode or settings.retrieval_mode
        )
    )


def _retriever(library: Library, settings: Settings, top_k: int, mode: Mode) -> BaseRetriever:
    if mode == "vector":
        return library.index().as_retriever(similarity_top_k=top_k)
    lexical = library.lexical_retriever(max(top_k, _FUSION_DEPTH))
    if mode == "lexical":
        return _Truncated(lexical, top_k)
    return QueryFusionRetriever(
        [library.index().as_retriever(similarity_top_k=max(top_k, _FUSION_DEPTH)), lexical],
        mode=FUSION_MODES.RECIPROCAL_RANK,
        similarity_top_k=top_k,
        num_queries=1,  # fuse the two retrievers only; no LLM-written extra queries,
        llm=MockLLM(),  # so no LLM is called (without one it would look for OpenAI's)
        use_async=False,
    )


class _InWorkerThread(BaseRetriever):
    def __init__(self, make: Callable[[], BaseRetriever]):
        super().__init__()
        self._make = make

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._make().retrieve(query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)


class _Truncated(BaseRetriever):
    def __init__(self, inner: BaseRetriever, top_k: int):
        super().__init__()
        self._inner, self._top_k = inner, top_k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._inner.retrieve(query_bundle)[: self._top_k]


class RelevanceGate(BaseNodePostprocessor):
    """Passes the passages on only if the documents hold something close to the question:
    the nearest chunk by embedding reaches the cutoff.

    Whatever the retrieval mode, closeness is the cosine similarity of the embeddings, the one
    scale a cutoff can be set on: rank-fusion and BM25 scores say nothing about relevance.
    """

    cutoff: float = Field(description="Lowest cosine similarity the nearest chunk must reach.")
    embed_model: Any = Field(description="The embedding model of the index.")
    store: Any = Field(description="The vector store of the index.")

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes or query_bundle is None:
            return nodes
        wanted = query_bundle.embedding or self.embed_model.get_agg_embedding_from_queries(
            query_bundle.embedding_strs
        )
        nearest = self.store.query(VectorStoreQuery(query_embedding=wanted, similarity_top_k=1))
        return nodes if max(nearest.similarities or [-1.0]) >= self.cutoff else []

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes or query_bundle is None:
            return nodes
        wanted = query_bundle.embedding or await self.embed_model.aget_agg_embedding_from_queries(
            query_bundle.embedding_strs
        )
        nearest = await self.store.aquery(
            VectorStoreQuery(query_embedding=wanted, similarity_top_k=1)
        )
        return nodes if max(nearest.similarities or [-1.0]) >= self.cutoff else []
