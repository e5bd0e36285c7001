"""Where a library has no public hook, ragchat works around it in one small place; each test
here fails when the library changes under that workaround. No models: fast."""

from __future__ import annotations

from pathlib import Path

import lancedb
from lancedb.table import Table
from llama_index.core import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.memory import Memory
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.vector_stores.lancedb import LanceDBVectorStore

from ragchat.backends.llama_index import NO_CONTEXT_ANSWER, FollowUpChatEngine
from ragchat.vector_store import LanceStore, _table_name_of, _table_of


def chunks(*texts: str) -> list[TextNode]:
    return [
        TextNode(
            id_=f"{text}#chunk",
            text=text,
            embedding=[1.0, float(number), 0.0],
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"{text}#0")},
        )
        for number, text in enumerate(texts)
    ]


def test_the_lancedb_integration_keeps_its_table_where_lance_store_looks(tmp_path: Path) -> None:
    store = LanceDBVectorStore(
        connection=lancedb.connect(str(tmp_path)), table_name="chunks", mode="create"
    )
    assert _table_of(store) is None and _table_name_of(store) == "chunks"
    store.add(chunks("otters"))
    assert isinstance(_table_of(store), Table)
    assert store.table is _table_of(store)  # the one the integration searches and writes


def test_a_table_made_or_dropped_by_another_store_is_followed(tmp_path: Path) -> None:
    writer, reader = (
        LanceStore(connection=lancedb.connect(str(tmp_path)), table_name="chunks", mode="create")
        for _ in range(2)
    )
    writer.add(chunks("otters", "herons"))
    assert reader.count() == 2  # made after the reader was: opened when first needed
    reader.drop()
    assert reader.count() == 0
    reader.add(chunks("owls"))  # a table again, not "it already exists"
    assert [node.get_content() for node in reader.all_nodes()] == ["owls"]


class NothingFound(BaseRetriever):
    def _retrieve(self, query_bundle):
        return []


async def test_the_no_context_answer_reaches_the_synthesizer() -> None:
    engine = FollowUpChatEngine(
        retriever=NothingFound(),
        llm=MockLLM(),
        memory=Memory.from_defaults(token_limit=1000),
        recent_turns=0,
        embed_model=MockEmbedding(embed_dim=3),
    )
    response = await engine.astream_chat("Who won the football world cup?")
    answer = "".join([token async for token in response.async_response_gen()])
    assert answer == NO_CONTEXT_ANSWER
