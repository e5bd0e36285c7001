"""OpenAI's hosted-assistant wire protocol on 127.0.0.1, for tests: files, vector stores and
streamed Responses with the file_search tool, every payload built from the `openai` package's
own types. Searching is a plain word match over the stored files; the answer quotes the best
passage and cites its file. Failures can be ordered for the next request to /responses.

Where implementations of the protocol differ, the server behaves as OpenAI does (`OPENAI`) or as
an independent implementation met in practice does (`INDEPENDENT`)."""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openai.types import FileDeleted, FileObject, VectorStore
from openai.types.responses import (
    Response,
    ResponseCodeInterpreterCallCodeDeltaEvent,
    ResponseCodeInterpreterToolCall,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFileSearchCallCompletedEvent,
    ResponseFileSearchCallSearchingEvent,
    ResponseFileSearchToolCall,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseOutputTextAnnotationAddedEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from openai.types.vector_stores import VectorStoreFile, VectorStoreFileDeleted

NOTHING_FOUND = "The files hold nothing about that."
CODE = "print(6 * 7)"
# A 1x1 PNG, as the code interpreter's picture.
PIXEL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


# The places a response can carry its citations: streamed annotation events, the finished
# content part, the finished output item (the message) and the completed response.
CITATION_PLACES = frozenset(
    {"annotation.added", "content_part.done", "output_item.done", "completed"}
)


@dataclass(frozen=True)
class Behaviour:
    """How the server implements what implementations of the protocol do differently."""

    name: str
    citations_in: frozenset[str]  # of CITATION_PLACES; the others have no annotations
    # file_search results carry the file's id and name, not an internal document id.
    result_names: bool
    # A request offering the code interpreter is answered, not refused with 400.
    code_interpreter: bool


OPENAI = Behaviour("openai", CITATION_PLACES, result_names=True, code_interpreter=True)
INDEPENDENT = Behaviour(
    "independent",
    CITATION_PLACES - {"annotation.added"},
    result_names=False,
    code_interpreter=False,
)
NO_CODE_INTERPRETER = "Tool type 'code_interpreter' is not supported."


@dataclass
class Failure:
    """What the next /responses request gets instead of an answer."""

    status: int = 0  # an HTTP error status, with an OpenAI error body
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering at all
    drop_after_tokens: int = 0  # close the connection after this many text deltas
    reset: bool = False  # ...abruptly (a TCP reset, mid-event), not with a clean close


class AssistantServer:
    def __init__(self, behaviour: Behaviour = OPENAI) -> None:
        self.behaviour = behaviour
        self.files: dict[str, tuple[str, bytes]] = {}  # id -> (name, content)
        self.stores: dict[str, dict[str, dict]] = {}  # store id -> file id -> attributes
        self.responses: dict[str, dict] = {}  # response id -> its request
        self.asked: list[dict] = []  # every request to /responses, answered or not
        self.requests: list[tuple[str, str]] = []
        self.failures: list[Failure] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self._http.server_port}/v1"

    def __enter__(self) -> AssistantServer:
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    def new_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}_{next(self._ids)}"

    def store_files(self, store_id: str) -> dict[str, str]:
        """File name -> text of every file in a store."""
        return {self.files[f][0]: self.files[f][1].decode() for f in self.stores[store_id]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_DELETE(self) -> None:
                self._route("DELETE")

            def _route(self, method: str) -> None:
                path = self.path.split("?")[0].removeprefix("/v1")
                server.requests.append((method, path))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Authorization") != "Bearer sk-test":
                    return self._error(401, "Incorrect API key provided.")
                routes = [
                    ("POST", r"/files", server.upload),
                    ("DELETE", r"/files/([\w-]+)", server.delete_file),
                    ("POST", r"/vector_stores", server.create_store),
                    ("GET", r"/vector_stores/([\w-]+)", server.get_store),
                    ("GET", r"/vector_stores/([\w-]+)/files", server.list_store_files),
                    ("POST", r"/vector_stores/([\w-]+)/files", server.add_store_file),
                    ("DELETE", r"/vector_stores/([\w-]+)/files/([\w-]+)", server.remove_store_file),
                    ("POST", r"/responses", None),
                ]
                for verb, pattern, action in routes:
                    if verb == method and (match := re.fullmatch(pattern, path)):
                        if action is None:
                            return self._respond(json.loads(body))
                        try:
                            result = action(*match.groups(), body=body, headers=self.headers)
                        except KeyError:
                            return self._error(404, "No such object.")
                        return self._json(200, result.model_dump_json())
                self._error(404, f"No route {method} {path}")

            def _json(self, status: int, payload: str, headers: dict | None = None) -> None:
                data = payload.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, headers: dict | None = None) -> None:
                error = {"error": {"message": message, "type": "error", "code": None}}
                self._json(status, json.dumps(error), headers)

            def _respond(self, request: dict) -> None:
                server.asked.append(request)
                tools = [tool["type"] for tool in request.get("tools", [])]
                if "code_interpreter" in tools and not server.behaviour.code_interpreter:
                    return self._error(400, NO_CODE_INTERPRETER)
                failure = server.failures.pop(0) if server.failures else Failure()
                time.sleep(failure.delay)
                if failure.status:
                    return self._error(
                        failure.status, f"Failed with {failure.status}.", failure.headers
                    )
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                tokens = 0
                for event in server.answer(request):
                    if failure.drop_after_tokens and tokens == failure.drop_after_tokens:
                        if failure.reset:  # half an event, then a reset
                            self.wfile.write(b"event: response.output_text.delta\ndata: {")
                            self.wfile.flush()
                            self.connection.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                            )
                            self.connection.close()
                        else:
                            self.wfile.flush()
                            self.connection.shutdown(2)  # the connection breaks mid-answer
                        return
                    self.wfile.write(
                        f"event: {event.type}\ndata: {event.model_dump_json()}\n\n".encode()
                    )
                    self.wfile.flush()
                    tokens += event.type == "response.output_text.delta"
                self.close_connection = True

        return Handler

    # files and vector stores

    def upload(self, body: bytes, headers, **_: object) -> FileObject:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
        )
        part = next(
            p
            for p in message.iter_parts()
            if p.get_param("name", header="content-disposition") == "file"
        )
        file_id = self.new_id("file")
        self.files[file_id] = (part.get_filename(), part.get_payload(decode=True))
        return FileObject(
            id=file_id,
            bytes=len(self.files[file_id][1]),
            created_at=0,
            filename=part.get_filename(),
            object="file",
            purpose="assistants",
            status="processed",
        )

    def delete_file(self, file_id: str, **_: object) -> FileDeleted:
        del self.files[file_id]
        return FileDeleted(id=file_id, deleted=True, object="file")

    def create_store(self, body: bytes, **_: object) -> VectorStore:
        store_id = self.new_id("vs")
        self.stores[store_id] = {}
        return self.get_store(store_id)

    def get_store(self, store_id: str, **_: object) -> VectorStore:
        count = len(self.stores[store_id])
        return VectorStore(
            id=store_id,
            created_at=0,
            name="ragchat",
            object="vector_store",
            status="completed",
            usage_bytes=0,
            file_counts={
                "cancelled": 0,
                "completed": count,
                "failed": 0,
                "in_progress": 0,
                "total": count,
            },
        )

    def _store_file(self, store_id: str, file_id: str) -> VectorStoreFile:
        return VectorStoreFile(
            id=file_id,
            created_at=0,
            object="vector_store.file",
            status="completed",
            usage_bytes=len(self.files[file_id][1]),
            vector_store_id=store_id,
            attributes=self.stores[store_id][file_id],
        )

    def list_store_files(self, store_id: str, **_: object):
        from openai.pagination import SyncCursorPage

        files = [self._store_file(store_id, f) for f in self.stores[store_id]]
        return SyncCursorPage[VectorStoreFile](data=files, has_more=False)

    def add_store_file(self, store_id: str, body: bytes, **_: object) -> VectorStoreFile:
        request = json.loads(body)
        self.stores[store_id][request["file_id"]] = request.get("attributes") or {}
        self.files[request["file_id"]]  # noqa: B018 (KeyError: no such file)
        return self._store_file(store_id, request["file_id"])

    def remove_store_file(self, store_id: str, file_id: str, **_: object) -> VectorStoreFileDeleted:
        del self.stores[store_id][file_id]
        return VectorStoreFileDeleted(id=file_id, deleted=True, object="vector_store.file.deleted")

    # responses

    def search(self, store_ids: list[str], query: str) -> list[dict]:
        """file_search results: the passages sharing words with the query, best first."""
        words = set(re.findall(r"[a-z]{4,}", query.lower()))
        found = []
        for store_id in store_ids:
            for file_id, attributes in self.stores.get(store_id, {}).items():
                name, content = self.files[file_id]
                if not self.behaviour.result_names:  # named by an internal document id
                    file_id = name = str(uuid.uuid5(uuid.NAMESPACE_URL, file_id))
                for passage in re.split(r"\n\s*\n", content.decode()):
                    shared = words & set(re.findall(r"[a-z]{4,}", passage.lower()))
                    if shared:
                        found.append(
                            {
                                "file_id": file_id,
                                "filename": name,
                                "text": passage.strip(),
                                "score": len(shared) / len(words),
                                "attributes": attributes,
                            }
                        )
        return sorted(found, key=lambda hit: -hit["score"])[:3]

    def answer(self, request: dict):
        response_id = self.new_id("resp")
        self.responses[response_id] = request
        question = (
            request["input"]
            if isinstance(request["input"], str)
            else request["input"][-1]["content"]
        )
        store_ids = [
            s
            for tool in request.get("tools", [])
            if tool["type"] == "file_search"
            for s in tool["vector_store_ids"]
        ]
        hits = self.search(store_ids, question)
        call = ResponseFileSearchToolCall(
            id=self.new_id("fs"),
            queries=[question],
            status="completed",
            type="file_search_call",
            results=hits,
        )
        runs_code = any(tool["type"] == "code_interpreter" for tool in request.get("tools", []))
        code_call = (
            ResponseCodeInterpreterToolCall(
                id=self.new_id("ci"),
                type="code_interpreter_call",
                status="completed",
                container_id="cntr_1",
                code=CODE,
                outputs=[{"type": "logs", "logs": "42\n"}, {"type": "image", "url": PIXEL}],
            )
            if runs_code and "compute" in question.lower()
            else None
        )
        if hits:
            best = hits[0]
            name = best["attributes"].get("ragchat_path", best["filename"]).rsplit("/", 1)[-1]
            text = f"From {name}: {best['text'].splitlines()[0]}"
            annotations = [
                {
                    "type": "file_citation",
                    "file_id": best["file_id"],
                    "filename": best["filename"],
                    "index": len(text),
                }
            ]
        else:
            text, annotations = NOTHING_FOUND, []
        message_id = self.new_id("msg")

        def cited_in(place: str) -> list[dict]:
            return annotations if place in self.behaviour.citations_in else []

        def done_text(place: str) -> ResponseOutputText:
            return ResponseOutputText(type="output_text", text=text, annotations=cited_in(place))

        def done_message(place: str) -> ResponseOutputMessage:
            return ResponseOutputMessage(
                id=message_id,
                role="assistant",
                status="completed",
                type="message",
                content=[done_text(place)],
            )

        def response(status: str, output: list) -> Response:
            return Response(
                id=response_id,
                created_at=time.time(),
                model=request["model"],
                object="response",
                output=output,
                parallel_tool_calls=True,
                tool_choice="auto",
                tools=request.get("tools", []),
                status=status,
                previous_response_id=request.get("previous_response_id"),
            )

        sequence = itertools.count()
        yield ResponseCreatedEvent(
            type="response.created",
            sequence_number=next(sequence),
            response=response("in_progress", []),
        )
        yield ResponseFileSearchCallSearchingEvent(
            type="response.file_search_call.searching",
            item_id=call.id,
            output_index=0,
            sequence_number=next(sequence),
        )
        yield ResponseFileSearchCallCompletedEvent(
            type="response.file_search_call.completed",
            item_id=call.id,
            output_index=0,
            sequence_number=next(sequence),
        )
        yield ResponseOutputItemDoneEvent(
            type="response.output_item.done",
            item=call,
            output_index=0,
            sequence_number=next(sequence),
        )
        if code_call:
            yield ResponseCodeInterpreterCallCodeDeltaEvent(
                type="response.code_interpreter_call_code.delta",
                item_id=code_call.id,
                output_index=0,
                delta=CODE,
                sequence_number=next(sequence),
            )
            yield ResponseOutputItemDoneEvent(
                type="response.output_item.done",
                item=code_call,
                output_index=0,
                sequence_number=next(sequence),
            )
        yield ResponseOutputItemAddedEvent(
            type="response.output_item.added",
            output_index=1,
            sequence_number=next(sequence),
            item=ResponseOutputMessage(
                id=message_id, role="assistant", status="in_progress", type="message", content=[]
            ),
        )
        yield ResponseContentPartAddedEvent(
            type="response.content_part.added",
            item_id=message_id,
            output_index=1,
            content_index=0,
            part=ResponseOutputText(type="output_text", text="", annotations=[]),
            sequence_number=next(sequence),
        )
        for piece in re.findall(r"\S+\s*", text):
            yield ResponseTextDeltaEvent(
                type="response.output_text.delta",
                item_id=message_id,
                output_index=1,
                content_index=0,
                delta=piece,
                logprobs=[],
                sequence_number=next(sequence),
            )
        for number, annotation in enumerate(cited_in("annotation.added")):
            yield ResponseOutputTextAnnotationAddedEvent(
                type="response.output_text.annotation.added",
                item_id=message_id,
                output_index=1,
                content_index=0,
                annotation_index=number,
                annotation=annotation,
                sequence_number=next(sequence),
            )
        yield ResponseTextDoneEvent(
            type="response.output_text.done",
            item_id=message_id,
            output_index=1,
            content_index=0,
            text=text,
            logprobs=[],
            sequence_number=next(sequence),
        )
        yield ResponseContentPartDoneEvent(
            type="response.content_part.done",
            item_id=message_id,
            output_index=1,
            content_index=0,
            part=done_text("content_part.done"),
            sequence_number=next(sequence),
        )
        yield ResponseOutputItemDoneEvent(
            type="response.output_item.done",
            item=done_message("output_item.done"),
            output_index=1,
            sequence_number=next(sequence),
        )
        yield ResponseCompletedEvent(
            type="response.completed",
            sequence_number=next(sequence),
            response=response(
                "completed", [call, *([code_call] if code_call else []), done_message("completed")]
            ),
        )
