"""A chat with the running app over Socket.IO, spoken as Chainlit's frontend speaks it.

The browser connects to `/ws/socket.io` with its session cookie and an `auth` of its own
(a session id it makes up, the client type, its environment, the thread to resume), says
"connection_successful", and sends each question as a `client_message` whose `message` is a
step dict (see chainlit/socket.py, chainlit/emitter.py `process_message`, chainlit/types.py
`MessagePayload`). The server answers with events, each handler's between `task_start` and
`task_end`.

    async with ChatClient(app.url, cookies) as chat:
        exchange = await chat.ask("What is ragchat?")
        exchange.answer, exchange.first_token_after, chat.thread_id
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import socketio

SOCKET_PATH = "/ws/socket.io"


@dataclass(frozen=True)
class Event:
    name: str
    data: Any
    at: float  # time.monotonic() when it arrived


@dataclass
class Exchange:
    """One message sent and every event the server emitted until it was done with it."""

    message: dict
    sent_at: float
    events: list[Event] = field(default_factory=list)

    def named(self, *names: str) -> list[Event]:
        return [event for event in self.events if event.name in names]

    @property
    def answer(self) -> str:
        """The last assistant message's text, as finally sent (not streamed)."""
        messages = [
            event.data
            for event in self.named("new_message", "update_message")
            if event.data.get("type") == "assistant_message" and not event.data.get("isError")
        ]
        return messages[-1]["output"] if messages else ""

    @property
    def replies(self) -> list[str]:
        """Every message the app sent, errors included, as first sent."""
        return [
            event.data["output"]
            for event in self.named("new_message")
            if event.data.get("type") == "assistant_message"
        ]

    @property
    def errors(self) -> list[str]:
        return [
            event.data["output"]
            for event in self.named("new_message", "update_message")
            if event.data.get("isError")
        ]

    @property
    def first_token_after(self) -> float | None:
        """Seconds from sending to the first streamed token of the answer, if one streamed."""
        tokens = self.named("stream_start", "stream_token")
        return tokens[0].at - self.sent_at if tokens else None


class ChatClient:
    """One browser tab's chat session. `cookies` are the signed-in session's (e.g. an httpx
    client's after POST /login); `thread_id` resumes that conversation."""

    def __init__(self, url: str, cookies: Mapping[str, str], thread_id: str | None = None) -> None:
        self.url = url
        self.cookies = dict(cookies)
        self.session_id = str(uuid.uuid4())
        self.thread_id = thread_id  # else the server's, once it sends a step
        self.events: list[Event] = []
        self._arrived = asyncio.Condition()
        self._socket = socketio.AsyncClient(reconnection=False)
        self._socket.on("*", self._record)
        self._socket.on("disconnect", self._dropped)
        self.dropped = False  # the connection has closed (or close() closed it)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def connect(self, timeout: float = 60, wait: bool = True) -> None:
        """Connect and, with `wait`, wait until the chat has started (on_chat_start, or
        on_chat_resume); without, return as soon as the tab has said it is connected."""
        await self._socket.connect(
            self.url,
            headers={
                "Cookie": "; ".join(f"{name}={value}" for name, value in self.cookies.items()),
                "Origin": self.url,
            },
            auth={
                "sessionId": self.session_id,
                "clientType": "webapp",
                "userEnv": "{}",
                "threadId": self.thread_id,
                "chatProfile": "",
            },
            transports=["websocket"],
            socketio_path=SOCKET_PATH,
            wait_timeout=timeout,
        )
        start = len(self.events)
        await self._socket.emit("connection_successful")
        if wait:
            await self._wait(lambda: self._tasks_done_since(start), timeout)

    async def close(self) -> None:
        await self._socket.disconnect()

    async def ask(
        self, text: str, timeout: float = 300, files: Sequence[str] = (), **fields: Any
    ) -> Exchange:
        """Send `text` as the frontend does, with the files uploaded to this session whose ids
        are `files`; `fields` override the step dict's (an id, say)."""
        message = {
            "threadId": "",
            "id": str(uuid.uuid4()),
            "name": "User",
            "type": "user_message",
            "output": text,
            "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "metadata": {"location": self.url + "/"},
            **fields,
        }
        return await self.send(message, timeout, files)

    async def send(
        self, message: dict, timeout: float = 300, files: Sequence[str] = ()
    ) -> Exchange:
        """Send a `client_message` and collect events until the server is done with it."""
        start = len(self.events)
        exchange = Exchange(message=message, sent_at=time.monotonic())
        references = [{"id": file_id} for file_id in files]
        await self._socket.emit(
            "client_message", {"message": message, "fileReferences": references}
        )
        await self._wait(lambda: self._tasks_done_since(start), timeout)
        exchange.events = self.events[start:]
        return exchange

    async def stop(self) -> None:
        """Press the stop button: Chainlit cancels the message's handler."""
        await self._socket.emit("stop")

    async def edit(self, step_id: str, text: str, timeout: float = 300) -> Exchange:
        """Edit a message of this chat, as the pen under a question does: Chainlit replaces its
        text and answers it again."""
        start = len(self.events)
        exchange = Exchange(message={"id": step_id, "output": text}, sent_at=time.monotonic())
        await self._socket.emit("edit_message", {"message": exchange.message})
        await asyncio.sleep(1)  # an edit that is refused starts no task: nothing to wait for
        if any(event.name == "task_start" for event in self.events[start:]):
            await self._wait(lambda: self._tasks_done_since(start), timeout)
        exchange.events = self.events[start:]
        return exchange

    async def change_settings(self, values: dict) -> list[str]:
        """Send the settings panel's event, as its Confirm button does; the errors it got."""
        start = len(self.events)
        await self._socket.call("chat_settings_change", values, timeout=30)  # handler done
        await asyncio.sleep(0.5)  # and the messages it sent have arrived
        return [
            event.data["output"]
            for event in self.events[start:]
            if event.name == "new_message" and event.data.get("isError")
        ]

    async def _record(self, name: str, data: Any = None) -> None:
        self.events.append(Event(name, data, time.monotonic()))
        if name == "new_message" and self.thread_id is None:
            self.thread_id = data["threadId"]  # the session's, from its first step on
        async with self._arrived:
            self._arrived.notify_all()

    def _tasks_done_since(self, start: int) -> bool:
        """Whether a task began since `start` and every task begun has ended. Chainlit wraps
        each handler in task_start/task_end, nested (process_message around on_message), and
        connecting first ends whatever task the tab had (a task_end with none begun)."""
        depth, began = 0, False
        for event in self.events[start:]:
            if event.name == "task_start":
                depth, began = depth + 1, True
            elif event.name == "task_end":
                depth = max(depth - 1, 0)
        return began and depth == 0

    async def _dropped(self, *_reason: object) -> None:
        self.dropped = True
        async with self._arrived:
            self._arrived.notify_all()

    async def _wait(self, condition: Callable[[], bool], timeout: float) -> None:
        """Until `condition`; ConnectionError at once if the connection drops meanwhile (the
        Socket.IO client gives up after 30 s without a ping from a server whose loop stalls)."""
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: condition() or self.dropped), timeout
            )
        if not condition():
            raise ConnectionError("the server's connection dropped before it answered")
