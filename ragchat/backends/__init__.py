"""The interface between the chat UI and whatever answers: one `Backend` per process, one
`Chat` per conversation, and a stream of events per question.

A backend turns a question into events, in order: `Step`s (work shown to the user, such as
the passages retrieved), `Token`s (the answer as it is written) and, at the end, `Sources`.
The UI renders them; it knows nothing about llama_index or OpenAI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from ragchat.config import ConfigError, Settings

if TYPE_CHECKING:
    from ragchat.ingest import SyncReport, UploadOutcome


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Step:
    name: str
    input: str
    output: str
    type: Literal["retrieval", "tool", "llm"] = "retrieval"


@dataclass(frozen=True)
class Source:
    file_name: str
    text: str
    page: str | None = None
    score: float | None = None

    @property
    def label(self) -> str:
        return f"{self.file_name} p. {self.page}" if self.page else self.file_name


@dataclass(frozen=True)
class Sources:
    items: tuple[Source, ...]


Event = Token | Step | Sources


class QuestionRejected(Exception):
    """The question cannot be answered as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    content: str


class Chat(Protocol):
    top_k: int
    mode: str

    def ask(self, question: str) -> AsyncIterator[Event]: ...

    def configure(self, top_k: int, mode: str) -> None:
        """How many passages to retrieve, and how (vector, lexical or hybrid), from now on."""


class Backend(Protocol):
    def new_chat(self, history: Sequence[Turn] = ()) -> Chat: ...

    def sync(self) -> SyncReport:
        """Bring the knowledge in step with DATA_DIR."""

    def add_upload(self, source: Path, original_name: str) -> UploadOutcome:
        """Check, store and index a file uploaded in the chat."""


def create_backend(settings: Settings) -> Backend:
    """Build the backend RAG_BACKEND names, loading its models and index once."""
    if settings.rag_backend == "assistant":
        raise ConfigError(
            "Invalid setting RAG_BACKEND='assistant': the hosted assistant backend is not "
            "available in this version yet; use RAG_BACKEND=llama_index"
        )
    from ragchat.backends.llama_index import LlamaIndexBackend

    return LlamaIndexBackend.from_settings(settings)


def group_by_label(sources: Sequence[Source]) -> dict[str, list[Source]]:
    """Sources per file and page, in the order they were first cited."""
    groups: dict[str, list[Source]] = {}
    for source in sources:
        groups.setdefault(source.label, []).append(source)
    return groups
