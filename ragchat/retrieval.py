"""The retriever the app answers from and the evaluation measures: vector, lexical or hybrid.

- vector: embedding similarity in LanceDB;
- lexical: BM25 with English stemming and stop words (llama_index's bm25s retriever) over the
  same chunks, file name included;
- hybrid: both, fused by reciprocal rank (llama_index's QueryFusionRetriever).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.retrievers import BaseRetriever, QueryFusionRetriever
from llama_index.core.retrievers.fusion_retriever import FUSION_MODES
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import VectorStoreQuery
from llama_index.retrievers.bm25 import BM25Retriever

from ragchat.config import Settings
from ragchat.ingest import Library

# bm25s sets its own logger to DEBUG when imported.
logging.getLogger("bm25s").setLevel(logging.WARNING)

Mode = Literal["vector", "lexical", "hybrid"]
# How deep each retriever looks before fusion: rank fusion needs more than the final top-k.
_FUSION_DEPTH = 30


def build_retriever(
    library: Library, settings: Settings, top_k: int | None = None, mode: Mode | None = None
) -> BaseRetriever:
    top_k = top_k or settings.top_k
    mode = mode or settings.retrieval_mode
    chunks = library.store.count()
    if mode == "vector" or chunks == 0:
        return library.index().as_retriever(similarity_top_k=top_k)
    # bm25s cannot return more than it holds.
    lexical = _lexical(library, min(max(top_k, _FUSION_DEPTH), chunks))
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


_lexical_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lexical_lock = threading.Lock()


def _lexical(library: Library, depth: int) -> BM25Retriever:
    """A BM25 index of the library's chunks, built again only when the index has changed
    (in this process or another: the LanceDB table's version tells)."""
    version = library.store.version()
    with _lexical_lock:
        cached = _lexical_cache.get(library)
        if cached is None or cached[:2] != (version, depth):
            bm25 = BM25Retriever.from_defaults(
                nodes=library.store.all_nodes(), similarity_top_k=depth
            )
            cached = _lexical_cache[library] = (version, depth, bm25)
        return cached[2]


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
