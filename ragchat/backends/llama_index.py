"""The local backend: retrieval over the local index (LanceDB, or PostgreSQL), answers from
llama_index's condense-plus-context chat engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.llms import LLM, ChatMessage, MessageRole
from llama_index.core.memory import Memory
from llama_index.core.prompts import PromptTemplate
from llama_index.core.response_synthesizers import CompactAndRefine
from llama_index.core.schema import NodeWithScore, QueryBundle

from ragchat.answer_queue import AnswerQueue, Ticket
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
    waiting_turn,
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
        self._retrieved: tuple[str | QueryBundle, list[NodeWithScore]] | None = None

    @property
    def condenses_with_llm(self) -> bool:
        return self._recent_turns is None

    async def aretrieve(self, message: str) -> tuple[str | QueryBundle, list[NodeWithScore]]:
        """The retrieval query and passages for `message`, found before the answer is written
        (the user sees them while waiting for the model); `astream_chat` answers from them."""
        history = await self._memory.aget(input=message)
        query = await self._acondense_question(history, message)
        self._retrieved = (query, await self._aget_nodes(query))
        return self._retrieved

    async def _acondense_question(
        self, chat_history: list[ChatMessage], latest_message: str
    ) -> str | QueryBundle:
        if self._retrieved is not None:
            return self._retrieved[0]
        if self._recent_turns is None:
            return await super()._acondense_question(chat_history, latest_message)
        return follow_up_query(chat_history, latest_message, self._recent_turns)

    async def _aget_nodes(self, message: str | QueryBundle) -> list[NodeWithScore]:
        if self._retrieved is not None:
            return self._retrieved[1]
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
        # llama.cpp writes one answer at a time; a server takes as many as it is allowed.
        self.queue = AnswerQueue(1 if settings.llm_is_local else settings.max_concurrent_answers)

    @classmethod
    def open_knowledge(cls, settings: Settings) -> Library:
        log.info("Embeddings: %s", embed_name(settings))
        return Library.from_settings(settings)

    @classmethod
    def from_knowledge(cls, settings: Settings, knowledge: Library) -> LlamaIndexBackend:
        log.info("LLM: %s", llm_name(settings))
        return cls(settings, build_llm(settings), knowledge)

    def sync(
        self, rebuild: bool = False, progress: bool = False, wait: bool = True
    ) -> IndexSyncReport:
        return self.library.sync(rebuild, progress, wait)

    def add_upload(self, source: Path, original_name: str) -> UploadOutcome:
        return add_upload(self.library, source, original_name)

    def new_chat(
        self, history: Sequence[Turn] = (), state: dict | None = None, person: str = ""
    ) -> LlamaIndexChat:
        memory = Memory.from_defaults(
            chat_history=[ChatMessage(role=turn.role, content=turn.content) for turn in history],
            token_limit=self.settings.prompt_room,
        )
        return LlamaIndexChat(self, memory, person)

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

    def __init__(self, backend: LlamaIndexBackend, memory: Memory, person: str):
        self._backend = backend
        self._memory = memory
        self._person = person
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
        ticket = self._backend.queue.join(self._person)
        try:
            turn = waiting_turn(ticket)
            if place := await anext(turn, None):  # told at once, before searching
                yield place
            if engine.condenses_with_llm:  # the search needs the model: wait for it first
                async for place in turn:
                    yield place
            query, nodes = await engine.aretrieve(question)
            sources = tuple(_source(node) for node in nodes)
            yield Step(name="Retrieve", input=str(query), output=_passages(sources))
            if sources:
                yield Sources(sources)
                async for place in turn:
                    yield place
            else:  # the answer says nothing was found: no need to wait for the model
                ticket.leave()
                await turn.aclose()
            async for token in self._answer(engine, question, ticket):
                yield token
        finally:
            ticket.leave()  # out of the line, or the model freed for the next question

    async def _answer(
        self, engine: FollowUpChatEngine, question: str, ticket: Ticket
    ) -> AsyncIterator[Token]:
        response = await engine.astream_chat(question)
        writer = response.awrite_response_to_history_task  # takes the tokens from the model
        # The model is free once it has written the answer, while the user may still be
        # receiving it: the next question need not wait for that.
        writer.add_done_callback(partial(_free_when_written, ticket))
        try:
            async for token in response.async_response_gen():
                yield Token(token)
        finally:
            if not writer.done():  # the user stopped the answer: stop generating it too
                writer.cancel()


def _free_when_written(ticket: Ticket, writer: asyncio.Task) -> None:
    if not writer.cancelled() and writer.exception() is None:
        ticket.answered()  # a stopped or failed answer leaves in `ask`, untimed


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
