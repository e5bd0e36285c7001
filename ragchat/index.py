"""The document index: chunks of the files in DATA_DIR, embedded into LanceDB under STORAGE_DIR."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import Document
from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryResult
from llama_index.vector_stores.lancedb import LanceDBVectorStore

from ragchat.config import Settings
from ragchat.models import build_tokenizer

log = logging.getLogger(__name__)

TABLE = "chunks"
SAMPLE_DOCS = Path(__file__).resolve().parent.parent / "docs"

# Metadata that would only add noise to what is embedded and what the LLM reads.
_HIDDEN_METADATA = ["file_path", "file_type", "file_size", "creation_date", "last_modified_date"]


class LanceStore(LanceDBVectorStore):
    """LanceDB store whose scores are cosine similarities and whose queries leave the loop free.

    The integration scores results as exp(-distance), a scale no similarity cutoff can be
    explained in, raises a bare Warning on an empty result, and has no async query, so
    llama_index would run the query on the event loop.
    """

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if self._table is None:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        try:
            result = super().query(query, **kwargs)
        except Warning:  # "query results are empty.."
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        if query.query_embedding is not None:
            wanted = np.asarray(query.query_embedding)
            result.similarities = [_cosine(wanted, node.embedding) for node in result.nodes]
        return result

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)


def _cosine(a: np.ndarray, b: list[float]) -> float:
    vector = np.asarray(b)
    return float(a @ vector / (np.linalg.norm(a) * np.linalg.norm(vector) or 1.0))


def open_index(settings: Settings, embed_model: BaseEmbedding) -> VectorStoreIndex:
    """Open the index, building it from DATA_DIR first if there is none yet."""
    db = lancedb.connect(str(settings.storage_dir / "lancedb"))
    store = LanceStore(connection=db, table_name=TABLE, mode="create")
    if store._table is None:
        build(settings, store, embed_model)
    return VectorStoreIndex.from_vector_store(store, embed_model=embed_model)


def build(settings: Settings, store: LanceStore, embed_model: BaseEmbedding) -> None:
    seed_sample_docs(settings.data_dir)
    documents = read_documents(settings.data_dir)
    if not documents:
        log.warning("No documents in %s: add files there to get answers.", settings.data_dir)
        return
    log.info("Indexing %d documents from %s", len(documents), settings.data_dir)
    splitter = SentenceSplitter(
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
        tokenizer=build_tokenizer(settings),
    )
    pipeline = IngestionPipeline(transformations=[splitter, embed_model], vector_store=store)
    nodes = pipeline.run(documents=documents, show_progress=True)
    log.info("Indexed %d chunks into %s", len(nodes), settings.storage_dir)


def seed_sample_docs(data_dir: Path) -> None:
    """On the very first build, give a newcomer something to ask about: the user guide."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if any(path.name != ".gitkeep" for path in data_dir.iterdir()):
        return
    for sample in SAMPLE_DOCS.glob("*.md"):
        shutil.copyfile(sample, data_dir / sample.name)
        log.info("Copied the sample document %s into %s", sample.name, data_dir)


def read_documents(data_dir: Path) -> list[Document]:
    files = [
        path
        for path in sorted(data_dir.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(data_dir).parts)
    ]
    if not files:
        return []
    documents = SimpleDirectoryReader(input_files=files, filename_as_id=True).load_data(
        show_progress=True
    )
    for document in documents:
        document.excluded_embed_metadata_keys = list(_HIDDEN_METADATA)
        document.excluded_llm_metadata_keys = list(_HIDDEN_METADATA)
    return documents
