"""An OpenAI-compatible HTTP server on 127.0.0.1, for tests: the wire protocol of chat
completions (plain and streamed) and embeddings, built from the `openai` package's own types.
It answers every chat with a fixed reply and records the requests it received."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openai.types import CreateEmbeddingResponse, Embedding
from openai.types.chat import ChatCompletion, ChatCompletionChunk

REPLY = "The answer comes from the loopback server."
DIMENSIONS = 8


class OpenAIServer:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self._http.server_port}/v1"

    def __enter__(self) -> OpenAIServer:
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, body))
                if self.path.endswith("/embeddings"):
                    self._json(embeddings(body))
                elif self.path.endswith("/chat/completions") and body.get("stream"):
                    self._stream(body["model"])
                elif self.path.endswith("/chat/completions"):
                    self._json(completion(body["model"]))
                else:
                    self.send_error(404)

            def _json(self, payload: str) -> None:
                data = payload.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, model: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for chunk in chunks(model):
                    self.wfile.write(f"data: {chunk}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        return Handler


def completion(model: str) -> str:
    return ChatCompletion(
        id="chatcmpl-1",
        object="chat.completion",
        created=int(time.time()),
        model=model,
        choices=[
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": REPLY},
            }
        ],
    ).model_dump_json()


def chunks(model: str) -> list[str]:
    words = REPLY.split(" ")
    pieces = [word + " " for word in words[:-1]] + [words[-1]]
    return [
        ChatCompletionChunk(
            id="chatcmpl-1",
            object="chat.completion.chunk",
            created=int(time.time()),
            model=model,
            choices=[
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": piece},
                    "finish_reason": "stop" if i == len(pieces) - 1 else None,
                }
            ],
        ).model_dump_json()
        for i, piece in enumerate(pieces)
    ]


def embeddings(body: dict) -> str:
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    return CreateEmbeddingResponse(
        object="list",
        model=body["model"],
        data=[
            Embedding(object="embedding", index=i, embedding=fake_vector(str(text)))
            for i, text in enumerate(texts)
        ],
        usage={"prompt_tokens": 1, "total_tokens": 1},
    ).model_dump_json()


def fake_vector(text: str) -> list[float]:
    """A deterministic vector per text, so equal texts embed equally."""
    digest = hashlib.sha256(text.encode()).digest()
    return [byte / 255 for byte in digest[:DIMENSIONS]]
