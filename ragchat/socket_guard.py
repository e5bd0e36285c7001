"""A message from the browser is the user's message, whatever the browser says it is, and an
edit changes only a message of the user's.

Chainlit builds the stored step of a `client_message` from the step dict the browser sends
(chainlit/emitter.py process_message, Message.from_dict): its type, author, parent, language
and metadata included. So a message could be stored as the assistant's answer (which the
history then replays as one, and which escapes the history's cut of over-long user messages),
under another author's name, or with a megabyte of metadata. The handler of that event is
replaced by one that keeps what the browser may choose (the id, the text, the command) and sets
the rest, then hands the message to Chainlit's own handler. Chainlit's `edit_message` replaces
the text of whichever message of the chat the id names, the assistant's answers included: it
is let through only for the user's own messages.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from chainlit import socket as chainlit_socket
from chainlit.chat_context import chat_context
from chainlit.context import init_ws_context
from chainlit.server import sio
from chainlit.session import WebsocketSession

log = logging.getLogger(__name__)

# The frontend sends {"location": <the page's URL>}; nothing longer is worth storing.
METADATA_MAX_CHARS = 2_000
COMMAND_MAX_CHARS = 100


def accept_only_user_messages() -> None:
    """Put these handlers in place of Chainlit's for the same events; each calls Chainlit's."""
    sio.on("client_message", handler=user_message)
    sio.on("edit_message", handler=edited_user_message)


async def user_message(sid: str, payload: Any) -> None:
    step = payload.get("message") if isinstance(payload, dict) else None
    if not isinstance(step, dict) or not isinstance(step.get("output"), str):
        log.warning("Refused a chat message that is not a message: %.200r", payload)
        return
    user = WebsocketSession.require(sid).user
    author = user.identifier if user else "User"  # what the frontend itself sends
    await chainlit_socket.message(sid, {**payload, "message": as_user_message(step, author)})


async def edited_user_message(sid: str, payload: Any) -> None:
    step = payload.get("message") if isinstance(payload, dict) else None
    if not isinstance(step, dict) or not isinstance(step.get("output"), str):
        log.warning("Refused an edit that is not a message: %.200r", payload)
        return
    init_ws_context(WebsocketSession.require(sid))
    if not any(m.id == step.get("id") and m.type == "user_message" for m in chat_context.get()):
        log.warning("Refused an edit of a message that is not one of the user's")
        return
    await chainlit_socket.edit_message(
        sid, {"message": {"id": step["id"], "output": step["output"]}}
    )


def as_user_message(step: dict, author: str) -> dict:
    """The step Chainlit may store for a message the browser sent, by `author`."""
    command = step.get("command")
    if not isinstance(command, str) or len(command) > COMMAND_MAX_CHARS:
        command = None
    metadata = step.get("metadata")
    if not isinstance(metadata, dict) or len(json.dumps(metadata)) > METADATA_MAX_CHARS:
        metadata = {}
    return {
        "id": step.get("id"),  # Chainlit checks it is a UUID; the history checks its owner
        "threadId": "",
        "type": "user_message",
        "name": author,
        "output": step["output"],  # the history keeps at most MAX_QUESTION_CHARS of it
        "createdAt": step.get("createdAt") or "",  # Chainlit sets its own time anyway
        "command": command,
        "metadata": metadata,
    }
