"""The hosted assistant: OpenAI's Responses API with the file_search tool over a vector store.

The documents in DATA_DIR are kept in an OpenAI vector store, synced by content hash: each file
carries its path and SHA-256 as attributes, so a restart uploads only what changed, and files
someone else put in a store given by OPENAI_VECTOR_STORE_ID are left alone. A conversation
continues through `previous_response_id`; files uploaded in a chat go into a vector store of
that chat only, searched together with the shared one.

Servers other than OpenAI's speak the same protocol with differences, so the stream is read
wherever a server puts things: citations come from the streamed annotation events, the finished
content part or output item, or the completed response; a file is named by the path the app
stored with it, not by the server's `filename`, which may be an internal document id; and a
server without the code interpreter is asked without it once it has refused it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
from openai import AsyncOpenAI, OpenAI
from tqdm import tqdm

from ragchat.answer_queue import AnswerQueue
from ragchat.backends import (
    MAX_QUESTION_CHARS,
    TOP_K_MAX,
    AnswerFailed,
    BackendUnavailable,
    Event,
    Image,
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
from ragchat.documents import (
    FileStat,
    SyncReport,
    UploadOutcome,
    documents_in,
    refusal,
    refused_upload,
    safe_file_name,
    sha256_of,
)

log = logging.getLogger(__name__)

STORE_FILE = "assistant.json"  # in STORAGE_DIR: the id of the vector store the app made
BROKEN_STREAM = "The answer stopped because the connection to the assistant broke. Try again."


@dataclass
class StoreSyncReport(SyncReport):
    """What a sync did to the vector store (which chunks files itself): new files uploaded,
    changed ones replaced (every file, on a rebuild)."""

    unchanged: list[str] = field(default_factory=list)

    def counts(self) -> str:
        return (
            f"{len(self.added)} uploaded, {len(self.changed)} replaced, "
            f"{len(self.removed)} removed, {len(self.unchanged)} unchanged, "
            f"{len(self.skipped)} skipped in {self.seconds:.1f} s"
        )


class AssistantBackend:
    def __init__(self, settings: Settings, client: OpenAI, aclient: AsyncOpenAI, store_id: str):
        self.settings = settings
        self.client = client
        self.aclient = aclient
        self.store_id = store_id
        self.queue = AnswerQueue(settings.max_concurrent_answers)
        # Offered until the server refuses it (not every server has one).
        self.code_interpreter = settings.assistant_code_interpreter
        # path -> (stat, sha256, why it is refused): a file is read again only once it changed
        self._checked: dict[str, tuple[FileStat, str, str | None]] = {}
        self._synced: dict = {}  # DATA_DIR as it was at the last complete sync
        self._skipped: dict = {}  # ...and the files it skipped, with the reason

    @classmethod
    def open_knowledge(cls, settings: Settings) -> AssistantBackend:
        """The client and vector store; BackendUnavailable if the server cannot be used."""
        options = {
            "api_key": settings.openai_api_key.get_secret_value(),
            "base_url": settings.openai_base_url,
            "timeout": settings.openai_timeout,
            "max_retries": 2,  # with backoff, honouring Retry-After, before a stream starts
        }
        client = OpenAI(**options)
        with _explained(settings):
            store_id = settings.openai_vector_store_id or _app_store(client, settings.storage_dir)
        return cls(settings, client, AsyncOpenAI(**options), store_id)

    @classmethod
    def from_knowledge(cls, settings: Settings, knowledge: AssistantBackend) -> AssistantBackend:
        """The vector store is all the assistant needs: the server answers."""
        log.info(
            "Assistant: %s with file_search%s over vector store %s",
            settings.openai_model,
            " and the code interpreter" if knowledge.code_interpreter else "",
            knowledge.store_id,
        )
        return knowledge

    # knowledge

    def sync(
        self, rebuild: bool = False, progress: bool = False, wait: bool = True
    ) -> StoreSyncReport:
        """Upload new and changed files of DATA_DIR to the vector store, remove deleted ones
        (`rebuild`: upload every file again; `wait` is moot: nothing is locked)."""
        with _explained(self.settings):
            return self._sync(rebuild, progress)

    def _sync(self, rebuild: bool, progress: bool) -> StoreSyncReport:
        started = time.monotonic()
        report = StoreSyncReport(rebuilt=rebuild)
        if (on_disk := documents_in(self.settings.data_dir)) is None:
            return report
        self._checked = {name: known for name, known in self._checked.items() if name in on_disk}
        if on_disk == self._synced and not rebuild:
            # The watcher's common case: no API call while nothing changed.
            report.skipped = dict(self._skipped)
            report.unchanged = sorted(set(on_disk) - set(self._skipped))
            return report
        ours = {}  # path -> (file id, sha256) of the files this app put in the store
        for item in self.client.vector_stores.files.list(self.store_id):
            attributes = item.attributes or {}
            if "ragchat_path" in attributes:
                ours[str(attributes["ragchat_path"])] = (item.id, attributes.get("ragchat_sha256"))
        for name in sorted(set(ours) - set(on_disk)):
            self._remove(ours[name][0])
            report.removed.append(name)
        pending = []
        for name, stat in sorted(on_disk.items()):
            path = self.settings.data_dir / name
            if self._checked.get(name, (None,))[0] != stat:  # read only what was touched
                problem = refusal(path, path.suffix.lower(), self.settings.unzipped_max_mb)
                self._checked[name] = (stat, "" if problem else sha256_of(path), problem)
            _, sha, problem = self._checked[name]
            if problem:
                report.skipped[name] = problem
            elif rebuild or ours.get(name, (None, None))[1] != sha:
                pending.append((name, path, sha))
            else:
                report.unchanged.append(name)
        for name, path, sha in tqdm(
            pending, desc="Uploading files", unit="file", disable=not progress
        ):
            try:
                self.upload(self.store_id, path, name, sha)
            except openai.BadRequestError as refused:  # this file only; the others go on
                report.skipped[name] = f"the assistant refused it: {server_message(refused)}"
                log.warning("Skipped %s: %s", name, report.skipped[name])
                continue
            if name in ours:
                self._remove(ours[name][0])
            (report.changed if name in ours else report.added).append(name)
        self._synced = on_disk  # a refused file is tried again once it changes
        self._skipped = dict(report.skipped)
        report.seconds = time.monotonic() - started
        return report

    def upload(self, store_id: str, path: Path, name: str, sha: str) -> str:
        """Put a file into a vector store, tagged with its path and hash; returns its file id."""
        with path.open("rb") as file:
            uploaded = self.client.files.create(file=(Path(name).name, file), purpose="assistants")
        self.client.vector_stores.files.create(
            store_id, file_id=uploaded.id, attributes={"ragchat_path": name, "ragchat_sha256": sha}
        )
        return uploaded.id

    def _remove(self, file_id: str) -> None:
        self.client.vector_stores.files.delete(file_id, vector_store_id=self.store_id)
        try:
            self.client.files.delete(file_id)
        except openai.NotFoundError:
            pass

    def new_chat(
        self, history: Sequence[Turn] = (), state: dict | None = None, person: str = ""
    ) -> AssistantChat:
        return AssistantChat(self, dict(state or {}), person)

    def drop_code_interpreter(self, refused: openai.BadRequestError) -> None:
        """The server refused a request only because it offered the code interpreter: say so
        once, and offer it no more."""
        if self.code_interpreter:
            self.code_interpreter = False
            log.warning(
                "The assistant at %s has no code interpreter (%s): questions are asked without "
                "it from now on. Set ASSISTANT_CODE_INTERPRETER=false to stop offering it.",
                self.settings.openai_base_url or "OpenAI",
                server_message(refused),
            )


class AssistantChat:
    uploads_shared = False  # an upload joins this conversation's own vector store

    def __init__(self, backend: AssistantBackend, state: dict, person: str):
        self._backend = backend
        self._person = person
        self.state = state  # previous_response_id and this chat's vector store, kept in the thread
        self.top_k = backend.settings.top_k
        self.top_k_max = max(self.top_k, TOP_K_MAX)  # file_search's results are not our prompt
        self.mode = "hybrid"  # OpenAI's file_search combines meaning and words itself

    def configure(self, top_k: object, mode: object) -> None:
        # file_search has one mode, see __init__
        self.top_k, _ = checked_settings(top_k, mode, self.top_k_max)

    def add_upload(self, source: Path, original_name: str) -> UploadOutcome:
        if refused := refused_upload(source, original_name, self._backend.settings):
            return refused
        name = safe_file_name(original_name)
        client = self._backend.client
        if "vector_store_id" not in self.state:
            store = client.vector_stores.create(
                name="ragchat conversation", expires_after={"anchor": "last_active_at", "days": 30}
            )
            self.state["vector_store_id"] = store.id
        self._backend.upload(self.state["vector_store_id"], source, name, sha256_of(source))
        return UploadOutcome(original_name, stored_as=name, conversation_only=True)

    async def ask(self, question: str) -> AsyncIterator[Event]:
        check_question(question, MAX_QUESTION_CHARS, "the assistant takes")
        ticket = self._backend.queue.join(self._person)
        try:
            async for place in waiting_turn(ticket):
                yield place
            async for event in self._answer(question):
                yield event
            ticket.answered()
        finally:
            ticket.leave()  # out of the line, or a place freed for the next question

    async def _answer(self, question: str) -> AsyncIterator[Event]:
        reader = _ResponseReader()
        try:
            stream = await self._open(question)
            async for event in stream:
                for shown in reader.read(event):
                    yield shown
        except (openai.OpenAIError, httpx.HTTPError) as error:
            # Anything else is a bug here, for the app's own handler to log.
            raise AnswerFailed(
                describe_failure(error, self._backend.settings), partial=reader.written
            ) from error
        if reader.response_id is None:  # the stream ended early: a proxy or the network cut it
            raise AnswerFailed(BROKEN_STREAM, partial=reader.written)
        self.state["previous_response_id"] = reader.response_id
        if (sources := reader.sources()) or reader.found:
            yield Sources(sources)  # what the answer cites, in place of all the search found

    async def _open(self, question: str) -> openai.AsyncStream:
        """The response's event stream. A server without the code interpreter refuses a request
        that offers it: the question is asked again without it, and if that is answered, the
        tool was the reason and is offered no more."""
        backend = self._backend
        offered = backend.code_interpreter
        try:
            return await backend.aclient.responses.create(**self._request(question, offered))
        except openai.BadRequestError as refused:
            if not offered:
                raise
            stream = await backend.aclient.responses.create(**self._request(question, False))
            backend.drop_code_interpreter(refused)
            return stream

    def _request(self, question: str, code_interpreter: bool) -> dict:
        settings = self._backend.settings
        stores = [self._backend.store_id] + (
            [self.state["vector_store_id"]] if "vector_store_id" in self.state else []
        )
        tools: list[dict] = [
            {"type": "file_search", "vector_store_ids": stores, "max_num_results": self.top_k}
        ]
        include = ["file_search_call.results"]
        if code_interpreter:
            tools.append({"type": "code_interpreter", "container": {"type": "auto"}})
            include.append("code_interpreter_call.outputs")
        request = {
            "model": settings.openai_model,
            "input": question,
            "instructions": settings.assistant_instructions,
            "tools": tools,
            "include": include,
            "temperature": settings.llm_temperature,
            "stream": True,
        }
        if previous := self.state.get("previous_response_id"):
            request["previous_response_id"] = previous
        return request


class _ResponseReader:
    """The chat's events from one streamed response, wherever the server put what they show.

    Servers differ: OpenAI streams each citation as an annotation event and repeats it in the
    finished content part, output item and response; others give it only in some of those.
    Every place is read, and each tool call and each cited file counts once."""

    def __init__(self) -> None:
        self.written = False  # some of the answer was streamed
        self.found = False  # the search found passages (shown as Sources before the answer)
        self.response_id: str | None = None  # set when the response completed
        self._passages: dict[str, list[Source]] = {}  # file id -> passages the search found
        self._cited: dict[str, str] = {}  # file id -> its name in the citation, in order
        self._shown: set[str] = set()  # the tool calls already shown as steps

    def read(self, event) -> Iterator[Event]:
        match event.type:
            case "response.output_text.delta":
                self.written = True
                yield Token(event.delta)
            case "response.output_text.annotation.added":
                self._cite(event.annotation)
            case "response.content_part.done":
                self._cite_part(event.part)
            case "response.output_item.done":
                yield from self._item(event.item)
            case "response.completed":
                for item in event.response.output or []:
                    yield from self._item(item)
                self.response_id = event.response.id
            case "response.failed" | "error":
                raise AnswerFailed(
                    "The assistant could not finish the answer. Try again.", partial=self.written
                )

    def sources(self) -> tuple[Source, ...]:
        """The passages of each cited file (or the file alone, if the search did not show it)."""
        found: list[Source] = []
        for file_id, name in self._cited.items():
            found += self._passages.get(file_id) or [Source(name or file_id, "")]
        return tuple(found)

    def _item(self, item) -> Iterator[Event]:
        if item.type == "message":
            for part in getattr(item, "content", None) or []:
                self._cite_part(part)
            return
        key = getattr(item, "id", None) or item.model_dump_json()
        if key in self._shown:
            return
        if item.type == "file_search_call":
            self._shown.add(key)
            results = item.results or []
            for result in results:
                self._passages.setdefault(result.file_id, []).append(_source(result))
            yield Step("Search files", "\n".join(item.queries or []), _found(results))
            if results:  # before the answer is written: its supporting sentences are shown first
                self.found = True
                yield Sources(tuple(_source(result) for result in results))
        elif item.type == "code_interpreter_call":
            self._shown.add(key)
            outputs = item.outputs or []
            logs = "\n".join(o.logs for o in outputs if o.type == "logs")
            yield Step("Run code", item.code or "", logs or "(no output)", "tool")
            images = [o.url for o in outputs if o.type == "image"]
            for number, url in enumerate(images, 1):
                yield Image(f"figure {number}", url)

    def _cite_part(self, part) -> None:
        for annotation in getattr(part, "annotations", None) or []:
            self._cite(annotation)

    def _cite(self, annotation: object) -> None:
        annotation = _as_dict(annotation)
        if annotation.get("type") == "file_citation" and annotation.get("file_id"):
            self._cited.setdefault(annotation["file_id"], annotation.get("filename") or "")


def describe_failure(error: Exception, settings: Settings) -> str:
    """What went wrong, for the person in the chat, and what they (or the admin) can do."""
    where = settings.openai_base_url or "OpenAI"
    match error:
        case openai.APITimeoutError():
            return (
                f"The assistant did not answer within {settings.openai_timeout:.0f} s. "
                "Try again in a moment."
            )
        case openai.AuthenticationError() | openai.PermissionDeniedError():
            return (
                "The assistant refused this server's API key. This is not something you "
                "did: ask the administrator to check OPENAI_API_KEY."
            )
        case openai.RateLimitError():
            wait = error.response.headers.get("retry-after")
            later = f"in {wait} s" if wait else "in a minute"
            return f"The assistant is busy right now (rate limited). Try again {later}."
        case openai.APIStatusError():
            return (
                f"The assistant answered with an error ({error.status_code}). Try again; if "
                "it keeps happening, tell the administrator."
            )
        case openai.APIConnectionError():
            return (
                f"The assistant could not be reached at {where}. Try again; if it keeps "
                "happening, tell the administrator."
            )
    return BROKEN_STREAM


@contextmanager
def _explained(settings: Settings) -> Iterator[None]:
    """The server's failures as BackendUnavailable, saying what went wrong and what to do."""
    try:
        yield
    except openai.OpenAIError as error:
        raise BackendUnavailable(describe_failure(error, settings)) from None


def server_message(error: openai.APIStatusError) -> str:
    """What the server said, without the client's "Error code: 400 - {...}" around it."""
    body = error.body
    said = (body.get("message") or body.get("detail")) if isinstance(body, dict) else None
    return said if isinstance(said, str) else error.message


def _source(result) -> Source:
    return Source(_file_name(result), result.text or "", score=result.score)


def _file_name(result) -> str:
    """The file's name as its owner knows it. A file the app put in a store carries its path as
    an attribute, which is its real name whatever the server calls it: some servers give an
    internal document id as the result's `filename`. Other files go by that `filename`."""
    attributes = result.attributes or {}
    return Path(str(attributes.get("ragchat_path") or result.filename or result.file_id)).name


def _found(results) -> str:
    if not results:
        return "Nothing was found in the files."
    return "\n\n".join(
        f"**{_source(r).file_name}** (score {r.score or 0:.2f})\n\n{r.text or ''}" for r in results
    )


def _as_dict(annotation: object) -> dict:
    if isinstance(annotation, dict):
        return annotation
    return annotation.model_dump() if hasattr(annotation, "model_dump") else {}


def _app_store(client: OpenAI, storage: Path) -> str:
    """The vector store this app created (its id is kept in STORAGE_DIR), or a new one."""
    record = storage / STORE_FILE
    if record.exists():
        store_id = json.loads(record.read_text())["vector_store_id"]
        try:
            client.vector_stores.retrieve(store_id)
            return store_id
        except openai.NotFoundError:
            log.warning("The vector store %s is gone; creating a new one", store_id)
    store = client.vector_stores.create(name="ragchat")
    storage.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"vector_store_id": store.id}))
    return store.id
