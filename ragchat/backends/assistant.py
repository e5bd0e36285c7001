"""The hosted assistant: OpenAI's Responses API with the file_search tool over a vector store.

The documents in DATA_DIR are kept in an OpenAI vector store, synced by content hash: each file
carries its path and SHA-256 as attributes, so a restart uploads only what changed, and files
someone else put in a store given by OPENAI_VECTOR_STORE_ID are left alone. A conversation
continues through `previous_response_id`; files uploaded in a chat go into a vector store of
that chat only, searched together with the shared one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import openai
from openai import AsyncOpenAI, OpenAI
from tqdm import tqdm

from ragchat.backends import (
    AnswerFailed,
    Event,
    Image,
    QuestionRejected,
    Source,
    Sources,
    Step,
    Token,
    Turn,
)
from ragchat.config import ConfigError, Settings
from ragchat.ingest import SyncReport, UploadOutcome, refusal, safe_file_name, scan_folder

log = logging.getLogger(__name__)

STORE_FILE = "assistant.json"  # in STORAGE_DIR: the id of the vector store the app made
MAX_QUESTION_CHARS = 20_000
BROKEN_STREAM = "The answer stopped because the connection to the assistant broke. Try again."


class AssistantBackend:
    def __init__(self, settings: Settings, client: OpenAI, aclient: AsyncOpenAI, store_id: str):
        self.settings = settings
        self.client = client
        self.aclient = aclient
        self.store_id = store_id
        self._hashes: dict = {}  # path -> (stat, sha256), so unchanged files are not read again
        self._synced: dict = {}  # DATA_DIR as it was at the last complete sync

    @classmethod
    def from_settings(cls, settings: Settings) -> AssistantBackend:
        try:
            backend = cls.connect(settings)
            report = backend.sync(progress=True)
        except openai.OpenAIError as error:
            raise ConfigError(
                f"the assistant backend could not start: {describe_failure(error, settings)}"
            ) from None
        log.info(
            "Assistant: %s with file_search over vector store %s",
            settings.openai_model,
            backend.store_id,
        )
        log.info("Documents in %s: %s", settings.data_dir, report.summary())
        return backend

    @classmethod
    def connect(cls, settings: Settings) -> AssistantBackend:
        options = dict(
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url,
            timeout=settings.openai_timeout,
            max_retries=2,  # with backoff, honouring Retry-After, before a stream starts
        )
        client = OpenAI(**options)
        store_id = settings.openai_vector_store_id or _app_store(client, settings.storage_dir)
        return cls(settings, client, AsyncOpenAI(**options), store_id)

    # knowledge

    def sync(self, rebuild: bool = False, progress: bool = False) -> SyncReport:
        """Upload new and changed files of DATA_DIR to the vector store, remove deleted ones
        (`rebuild`: upload every file again)."""
        started = time.monotonic()
        report = SyncReport()
        if not self.settings.data_dir.is_dir():
            # An unmounted or mistyped folder is not "every document was deleted".
            log.warning(
                "%s is not a folder; the vector store is kept as it is", self.settings.data_dir
            )
            return report
        on_disk = dict(scan_folder(self.settings.data_dir))
        self._hashes = {name: known for name, known in self._hashes.items() if name in on_disk}
        if on_disk == self._synced and not rebuild:
            return report  # the watcher's common case: no API call while nothing changed
        ours = {}  # path -> (file id, sha256) of the files this app put in the store
        for item in self.client.vector_stores.files.list(self.store_id):
            attributes = item.attributes or {}
            if "ragchat_path" in attributes:
                ours[str(attributes["ragchat_path"])] = (item.id, attributes.get("ragchat_sha256"))
        for name in sorted(set(ours) - set(on_disk)):
            self._remove(ours[name][0])
            report.removed.append(name)
        pending = []
        for name, stat in on_disk.items():
            path = self.settings.data_dir / name
            if problem := refusal(path.suffix.lower(), stat.size):
                report.skipped[name] = problem
                continue
            if self._hashes.get(name, (None,))[0] != stat:  # hash only what was touched
                self._hashes[name] = (stat, hashlib.sha256(path.read_bytes()).hexdigest())
            sha = self._hashes[name][1]
            if rebuild or ours.get(name, (None, None))[1] != sha:
                pending.append((name, path, sha))
        for name, path, sha in tqdm(
            pending, desc="Uploading files", unit="file", disable=not progress
        ):
            try:
                self._upload(self.store_id, path, name, sha)
            except openai.BadRequestError as refused:  # this file only; the others go on
                report.skipped[name] = f"the assistant refused it: {refused.message}"
                log.warning("Skipped %s: %s", name, report.skipped[name])
                continue
            if name in ours:
                self._remove(ours[name][0])
            (report.changed if name in ours else report.added).append(name)
        self._synced = on_disk  # a refused file is tried again once it changes
        report.seconds = time.monotonic() - started
        report.rebuilt = rebuild
        return report

    def _upload(self, store_id: str, path: Path, name: str, sha: str) -> str:
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

    def new_chat(self, history: Sequence[Turn] = (), state: dict | None = None) -> AssistantChat:
        return AssistantChat(self, dict(state or {}))


class AssistantChat:
    uploads_shared = False  # an upload joins this conversation's own vector store

    def __init__(self, backend: AssistantBackend, state: dict):
        self._backend = backend
        self.state = state  # previous_response_id and this chat's vector store, kept in the thread
        self.top_k = backend.settings.top_k
        self.mode = "hybrid"  # OpenAI's file_search combines meaning and words itself

    def configure(self, top_k: int, mode: str) -> None:
        self.top_k = top_k

    def add_upload(self, source: Path, original_name: str) -> UploadOutcome:
        name = safe_file_name(original_name)
        if problem := refusal(
            Path(name).suffix.lower(), source.stat().st_size, self._backend.settings.upload_max_mb
        ):
            return UploadOutcome(original_name, problem=problem)
        client = self._backend.client
        if "vector_store_id" not in self.state:
            store = client.vector_stores.create(
                name="ragchat conversation", expires_after={"anchor": "last_active_at", "days": 30}
            )
            self.state["vector_store_id"] = store.id
        sha = hashlib.sha256(source.read_bytes()).hexdigest()
        self._backend._upload(self.state["vector_store_id"], source, name, sha)
        return UploadOutcome(original_name, stored_as=name, conversation_only=True)

    async def ask(self, question: str) -> AsyncIterator[Event]:
        if not question.strip():
            raise QuestionRejected("The message is empty: type a question about your documents.")
        if len(question) > MAX_QUESTION_CHARS:
            raise QuestionRejected(
                f"The message is {len(question):,} characters long; the assistant takes at most "
                f"{MAX_QUESTION_CHARS:,}. Shorten it, or ask about one part at a time."
            )
        settings = self._backend.settings
        stores = [self._backend.store_id] + (
            [self.state["vector_store_id"]] if "vector_store_id" in self.state else []
        )
        tools: list[dict] = [
            {"type": "file_search", "vector_store_ids": stores, "max_num_results": self.top_k}
        ]
        include = ["file_search_call.results"]
        if settings.assistant_code_interpreter:
            tools.append({"type": "code_interpreter", "container": {"type": "auto"}})
            include.append("code_interpreter_call.outputs")
        request = dict(
            model=settings.openai_model,
            input=question,
            instructions=settings.assistant_instructions,
            tools=tools,
            include=include,
            temperature=settings.llm_temperature,
            stream=True,
        )
        if previous := self.state.get("previous_response_id"):
            request["previous_response_id"] = previous
        written = completed = False
        results: dict[str, list[Source]] = {}  # file id -> passages found
        cited: list[tuple[str, str]] = []  # (file id, file name) in citation order
        try:
            stream = await self._backend.aclient.responses.create(**request)
            async for event in stream:
                match event.type:
                    case "response.output_item.done" if event.item.type == "file_search_call":
                        call = event.item
                        for result in call.results or []:
                            results.setdefault(result.file_id, []).append(_source(result))
                        yield Step(
                            "Search files", "\n".join(call.queries), _found(call.results or [])
                        )
                    case "response.output_item.done" if event.item.type == "code_interpreter_call":
                        outputs = event.item.outputs or []
                        logs = "\n".join(o.logs for o in outputs if o.type == "logs")
                        yield Step("Run code", event.item.code or "", logs or "(no output)", "tool")
                        images = [o.url for o in outputs if o.type == "image"]
                        for number, url in enumerate(images, 1):
                            yield Image(f"figure {number}", url)
                    case "response.output_text.delta":
                        written = True
                        yield Token(event.delta)
                    case "response.output_text.annotation.added":
                        annotation = _as_dict(event.annotation)
                        if annotation.get("type") == "file_citation":
                            cited.append((annotation["file_id"], annotation.get("filename", "")))
                    case "response.completed":
                        self.state["previous_response_id"] = event.response.id
                        completed = True
                    case "response.failed" | "error":
                        raise AnswerFailed(
                            "The assistant could not finish the answer. Try again.", partial=written
                        )
        except (openai.OpenAIError, httpx.HTTPError) as error:
            # Anything else is a bug here, for the app's own handler to log.
            raise AnswerFailed(describe_failure(error, settings), partial=written) from error
        if not completed:  # the stream ended early: a proxy or the network cut it
            raise AnswerFailed(BROKEN_STREAM, partial=written)
        sources = []
        for file_id, file_name in dict.fromkeys(cited):
            passages = results.get(file_id) or [Source(file_name or file_id, "")]
            sources += [Source(file_name or p.file_name, p.text, score=p.score) for p in passages]
        if sources:
            yield Sources(tuple(sources))


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


def _source(result) -> Source:
    attributes = result.attributes or {}
    name = result.filename or str(attributes.get("ragchat_path") or result.file_id)
    return Source(Path(name).name, result.text or "", score=result.score)


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
