"""The interface between the chat UI and whatever answers: one `Backend` per process, one
`Chat` per conversation, and a stream of events per question.

A backend turns a question into events, in order: `Queued` while it waits for the model,
`Step`s (work shown to the user, such as the passages retrieved), `Sources` as soon as they are
known (every passage the answer is written from; a later `Sources` names what the answer cites
in their place), `Token`s (the answer as it is written) and `Image`s it made.
The UI renders them; it knows nothing about llama_index or OpenAI.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ragchat.answer_queue import Ticket
from ragchat.config import ConfigError, Settings
from ragchat.documents import SyncReport, UploadOutcome

log = logging.getLogger(__name__)

# No backend answers a longer question, and the history keeps no more of one.
MAX_QUESTION_CHARS = 20_000


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


@dataclass(frozen=True)
class Image:
    """A picture the backend made (the assistant's code interpreter draws charts)."""

    name: str
    url: str


@dataclass(frozen=True)
class Queued:
    """The question waits for the model (ragchat/answer_queue.py): `position` 1 is next, and
    a last Queued with position 0 says its turn has come. `estimate_s`: until the answer
    should start, None before any answer's time was measured."""

    position: int
    estimate_s: float | None = None


Event = Token | Step | Sources | Image | Queued


async def waiting_turn(ticket: Ticket) -> AsyncIterator[Queued]:
    """Queued events while `ticket` waits in line, the last one (position 0) when it is let
    through; nothing at all when it never waited."""
    waited = False
    async for place in ticket.places():
        waited = True
        yield Queued(place.position, place.estimate_s)
    if waited:
        yield Queued(0)


class QuestionRejected(Exception):
    """The question cannot be answered as asked; the message says why and what to do."""


def check_question(question: str, limit: int, reader: str) -> None:
    """QuestionRejected for an empty question or one longer than `limit` characters, which is
    what `reader` (say "the model reads") takes at once."""
    if not question.strip():
        raise QuestionRejected("The message is empty: type a question about your documents.")
    if len(question) > limit:
        raise QuestionRejected(
            f"The message is {len(question):,} characters long; {reader} at most {limit:,} at "
            "once. Shorten it, or ask about one part at a time."
        )


class BackendUnavailable(Exception):
    """The service a backend keeps its documents in or answers from cannot be used; the
    message says why, and what to do."""


class AnswerFailed(Exception):
    """The answer could not be (fully) given; the message says why, for the user. `partial`:
    some of the answer was already streamed, and it must be shown as incomplete."""

    def __init__(self, message: str, partial: bool = False):
        super().__init__(message)
        self.partial = partial


# What the chat settings panel offers; the browser's values are checked against them.
MODES = ("vector", "lexical", "hybrid")
TOP_K_MIN, TOP_K_MAX = 1, 12


class SettingsRejected(ValueError):
    """Chat settings outside what the panel offers; the message says what is allowed."""


def checked_settings(top_k: object, mode: object, top_k_max: int = TOP_K_MAX) -> tuple[int, str]:
    """top_k and mode as the settings panel offers them: they come from the browser (or from a
    conversation's metadata, which the browser wrote)."""
    number = isinstance(top_k, int | float) and not isinstance(top_k, bool)
    if not (number and TOP_K_MIN <= top_k <= top_k_max and top_k == int(top_k)):  # NaN fails
        raise SettingsRejected(
            f"Passages per answer must be a whole number from {TOP_K_MIN} to {top_k_max}, not "
            f"{str(top_k)[:20]}; the settings were left as they were."
        )
    if mode not in MODES:
        raise SettingsRejected(
            f"The search mode must be one of {', '.join(MODES)}, not {str(mode)[:20]}; the "
            "settings were left as they were."
        )
    return int(top_k), mode


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    content: str


class Chat(Protocol):
    top_k: int
    top_k_max: int  # the settings panel's maximum
    mode: str
    # True: an upload joins the library everyone searches (so only admins may add one);
    # False: it belongs to this conversation alone.
    uploads_shared: bool
    # What a resumed chat needs besides its messages (JSON, kept with the conversation).
    state: dict

    def ask(self, question: str) -> AsyncIterator[Event]: ...

    def configure(self, top_k: object, mode: object) -> None:
        """How many passages to retrieve, and how (vector, lexical or hybrid), from now on;
        SettingsRejected (and nothing changed) for values checked_settings refuses."""

    def add_upload(self, source: Path, original_name: str) -> UploadOutcome:
        """Check, store and index a file uploaded in the chat."""


class Knowledge(Protocol):
    """Where a backend keeps the documents it answers from: the local index, or the hosted
    assistant's vector store."""

    def sync(self, rebuild: bool = False, progress: bool = False, wait: bool = True) -> SyncReport:
        """Bring the knowledge in step with DATA_DIR (`rebuild`: all of it again; `progress`:
        with a progress bar; without `wait`, nothing while another process syncs the same
        knowledge). BackendUnavailable when its service cannot be used."""


class Backend(Knowledge, Protocol):
    def new_chat(
        self, history: Sequence[Turn] = (), state: dict | None = None, person: str = ""
    ) -> Chat:
        """A conversation of `person` (an account: the model's queue is fair across them)."""


class BackendKind(Protocol):
    """What each backend offers (as classmethods) to start it in two steps: its knowledge
    alone (what `python -m ragchat ingest` syncs), then the backend answering from it."""

    def open_knowledge(self, settings: Settings) -> Knowledge: ...

    def from_knowledge(self, settings: Settings, knowledge: Knowledge) -> Backend: ...


def backend_kind(settings: Settings) -> BackendKind:
    """The backend RAG_BACKEND names (imported only then: the assistant needs no llama_index)."""
    if settings.rag_backend == "assistant":
        from ragchat.backends.assistant import AssistantBackend

        return AssistantBackend
    from ragchat.backends.llama_index import LlamaIndexBackend

    return LlamaIndexBackend


def create_backend(settings: Settings) -> Backend:
    """Build the backend RAG_BACKEND names, loading its models and index once; ConfigError if
    its service cannot be used."""
    kind = backend_kind(settings)
    try:
        knowledge = kind.open_knowledge(settings)
        # Another instance syncing the same documents does the work for this one too.
        report = knowledge.sync(progress=True, wait=False)
    except BackendUnavailable as error:
        raise ConfigError(f"the {settings.rag_backend} backend could not start: {error}") from None
    log.info("Documents in %s: %s", settings.data_dir, report.summary())
    return kind.from_knowledge(settings, knowledge)


def group_by_label(sources: Sequence[Source]) -> dict[str, list[Source]]:
    """Sources per file and page, in the order they were first cited."""
    groups: dict[str, list[Source]] = {}
    for source in sources:
        groups.setdefault(source.label, []).append(source)
    return groups
