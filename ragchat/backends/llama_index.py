"""The local backend: retrieval over the LanceDB index, answers from llama_index's
condense-plus-context chat engine."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.llms import LLM, ChatMessage, MessageRole
from llama_index.core.memory import Memory
from llama_index.core.prompts import PromptTemplate
from llama_index.core.response_synthesizers import CompactAndRefine
from llama_index.core.schema import NodeWithScore, QueryBundle

from ragchat.backends import (
    TOP_K_MAX,
    Event,
    Source,
    Sources,
    Step,
    Token,
    Turn,
    check_question,
    checked_settings,
)
from ragchat.config import Settings
from ragchat.documents import UploadOutcome
from ragchat.ingest import IndexSyncReport, Library, add_upload
from ragchat.models import build_llm, embed_name, llm_name
from ragchat.retrieval import Mode, RelevanceGate, build_retriever

log = logging.getLogger(__name__)

CONTEXT_PROMPT = """You are {bot_name}, an assistant that answers questions about the user's documents.
Here are passages from the documents:

{context_str}

Answer the user's question from these passages only, in a few sentences. If they do not contain \
the answer, say that the documents do not say."""

NO_CONTEXT_ANSWER = (
    "I found nothing in the documents about that, so I won't guess. Try other words, or add "
    "the document that holds the answer."
)


class FollowUpChatEngine(CondensePlusContextChatEngine):
    """Condense-plus-context that can retrieve for a follow-up without an LLM rewrite.

    A 135M model rewrites "and how do I do that on Upsun?" badly. Instead, with `recent_turns`
    set, the retrieval query is built from the conversation: see `follow_up_query`.
    bench/followup_retrieval.py measures the choices.
    """

    def __init__(
        self, *args: Any, recent_turns: int | None, embed_model: BaseEmbedding, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self._recent_turns = recent_turns
        self._embed_model = embed_model

    async def _acondense_question(
        self, chat_history: list[ChatMessage], latest_message: str
    ) -> str | QueryBundle:
        if self._recent_turns is None:
            return await super()._acondense_question(chat_history, latest_message)
        return follow_up_query(chat_history, latest_message, self._recent_turns)

    async def _aget_nodes(self, message: str | QueryBundle) -> list[NodeWithScore]:
        # The parent wraps the query in a fresh QueryBundle, which would drop the weighting.
        query = message if isinstance(message, QueryBundle) else QueryBundle(message)
        # Embedded once, for the vector search and the relevance gate alike.
        query.embedding = await self._embed_model.aget_agg_embedding_from_queries(
            query.embedding_strs
        )
        nodes = await self._retriever.aretrieve(query)
        for postprocessor in self._node_postprocessors:
            nodes = await postprocessor.apostprocess_nodes(nodes, query_bundle=query)
        return nodes

    def _get_response_synthesizer(
        self, chat_history: list[ChatMessage], streaming: bool = False
    ) -> CompactAndRefine:
        synthesizer = super()._get_response_synthesizer(chat_history, streaming)
        # What is streamed when no passage passed the similarity cutoff. A synthesizer takes it
        # as `empty_response` when it is made, but the chat engine makes this one without it (it
        # would answer "Empty Response"), so it is set where the constructor keeps it. Checked by
        # tests/test_workarounds.py::test_the_no_context_answer_reaches_the_synthesizer.
        synthesizer._empty_response = NO_CONTEXT_ANSWER
        return synthesizer


def follow_up_query(history: Sequence[ChatMessage], latest: str, turns: int) -> QueryBundle:
    """A retrieval query for `latest` that also knows the last `turns` questions.

    The query vector is the mean of the embeddings of the latest question, counted twice, and
    of each earlier question: the topic of the conversation carries a bare follow-up, while a
    question on a new topic still outweighs the history.
    """
    asked = [m.content for m in history if m.role == MessageRole.USER and m.content]
    earlier = asked[-turns:] if turns else []
    return QueryBundle(
        query_str="\n".join([*earlier, latest]), custom_embedding_strs=[latest, latest, *earlier]
    )


class LlamaIndexBackend:
    def __init__(self, settings: Settings, llm: LLM, library: Library):
        self.settings = settings
        self._llm = llm
        self.library = library
        self._context_prompt = PromptTemplate(CONTEXT_PROMPT).partial_format(
            bot_name=settings.bot_name
        )
        condense = settings.followup_query == "condense" or (
            settings.followup_query == "auto" and not settings.llm_is_local
        )
        self._recent_turns = None if condense else settings.history_turns

    @classmethod
    def open_knowledge(cls, settings: Settings) -> Library:
        log.info("Embeddings: %s", embed_name(settings))
        return Library.from_settings(settings)

    @classmethod
    def from_knowledge(cls, settings: Settings, knowledge: Library) -> LlamaIndexBackend:
        log.info("LLM: %s", llm_name(settings))
        return cls(settings, build_llm(settings), knowledge)

    def sync(self, rebuild: bool = False, progress: bool = False) -> IndexSyncReport:
        return self.library.sync(rebuild, progress)

    def add_upload(self, source: Path, original_name: str) -> UploadOutcome:
        return add_upload(self.library, source, original_name)

    def new_chat(self, history: Sequence[Turn] = (), state: dict | None = None) -> LlamaIndexChat:
        memory = Memory.from_defaults(
            chat_history=[ChatMessage(role=turn.role, content=turn.content) for turn in history],
            token_limit=self.settings.prompt_room,
        )
        return LlamaIndexChat(self, memory)

    def engine(self, memory: Memory, top_k: int, mode: Mode) -> FollowUpChatEngine:
        return FollowUpChatEngine(
            retriever=build_retriever(self.library, self.settings, top_k=top_k, mode=mode),
            llm=self._llm,
            memory=memory,
            context_prompt=self._context_prompt,
            node_postprocessors=[
                RelevanceGate(
                    cutoff=self.settings.similarity_cutoff,
                    embed_model=self.library.embed_model,
                    store=self.library.store,
                )
            ],
            recent_turns=self._recent_turns,
            embed_model=self.library.embed_model,
        )


class LlamaIndexChat:
    uploads_shared = True  # an upload joins DATA_DIR and the shared index

    def __init__(self, backend: LlamaIndexBackend, memory: Memory):
        self._backend = backend
        self._memory = memory
        self.state: dict = {}  # nothing beyond the messages: memory is rebuilt from them
        self.top_k = backend.settings.top_k
        # More passages than fit the model's context window would cut the prompt.
        self.top_k_max = max(self.top_k, min(TOP_K_MAX, backend.settings.top_k_that_fits))
        self.mode: Mode = backend.settings.retrieval_mode

    def configure(self, top_k: object, mode: object) -> None:
        """Retrieve differently from the next question on (the chat settings panel)."""
        self.top_k, self.mode = checked_settings(top_k, mode, self.top_k_max)

    def add_upload(self, source: Path, original_name: str) -> UploadOutcome:
        return self._backend.add_upload(source, original_name)

    async def ask(self, question: str) -> AsyncIterator[Event]:
        # Two characters a token is the worst case of ordinary text.
        limit = 2 * self._backend.settings.prompt_room_with(self.top_k)
        check_question(question, limit, "the model reads")
        engine = self._backend.engine(self._memory, self.top_k, self.mode)
        response = await engine.astream_chat(question)
        try:
            query = str(response.sources[0].raw_input["message"])
            sources = tuple(_source(node) for node in response.source_nodes)
            yield Step(name="Retrieve", input=query, output=_passages(sources))
            async for token in response.async_response_gen():
                yield Token(token)
            if sources:
                yield Sources(sources)
        finally:
            # When the user stops the answer, stop generating it too.
            writer = response.awrite_response_to_history_task
            if writer is not None and not writer.done():
                writer.cancel()


def _source(hit: NodeWithScore) -> Source:
    metadata = hit.node.metadata
    return Source(
        file_name=metadata.get("file_name", "unknown file"),
        page=metadata.get("page_label") or None,
        text=hit.node.get_content(),
        score=hit.score,
    )


def _passages(sources: Sequence[Source]) -> str:
    if not sources:
        return "No passage was relevant enough to use."
    return "\n\n".join(
        f"**{source.label}** (similarity {source.score:.2f})\n\n{source.text}" for source in sources
    )
