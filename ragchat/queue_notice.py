"""The notice that tells a waiting user where their question stands in the model's line.

It is one message, updated as the line moves and removed when the answer starts. It is sent
through Chainlit's emitter rather than `cl.Message.send`, which would also write it to the
history: a notice that is out of date the moment the answer starts has no place there, and
twenty people waiting would otherwise write to the database at every move of the line.
"""

from __future__ import annotations

import chainlit as cl
from chainlit.context import context

from ragchat.backends import Queued


def waiting_text(place: Queued) -> str:
    where = "next" if place.position == 1 else f"{_ordinal(place.position)} in line"
    when = "" if place.estimate_s is None else f"; your answer should start {_in(place.estimate_s)}"
    return f"Waiting for the model: your question is {where}{when}."


def _ordinal(number: int) -> str:
    suffix = (
        "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    )
    return f"{number}{suffix}"


def _in(seconds: float) -> str:
    if seconds < 5:
        return "in a few seconds"
    if seconds < 90:
        return f"in about {5 * round(seconds / 5)} s"
    return f"in about {round(seconds / 60)} min"


class QueueNotice:
    def __init__(self) -> None:
        self._message: cl.Message | None = None

    async def show(self, place: Queued) -> None:
        """Say where the question stands; position 0 (its turn has come) removes the notice."""
        if place.position == 0:
            return await self.clear()
        content = waiting_text(place)
        metadata = {"queue": {"position": place.position, "estimate_s": place.estimate_s}}
        if self._message is None:
            self._message = cl.Message(content=content, metadata=metadata)
            await context.emitter.send_step(self._message.to_dict())
        else:
            self._message.content, self._message.metadata = content, metadata
            await context.emitter.update_step(self._message.to_dict())

    async def clear(self) -> None:
        if self._message is not None:
            await context.emitter.delete_step(self._message.to_dict())
            self._message = None
