"""The line in front of a model: at most `capacity` answers are written at once, the others wait
their turn, told where they stand and for about how long.

Turns are fair across people, not across questions: each person's questions are served one per
round (start-time fair queueing with one unit per answer), so someone asking from five tabs
waits behind their own questions while a newcomer goes ahead of the second to fifth. The
estimate comes from how long recent answers held the model.

Everything here runs on the event loop and takes microseconds; it is asyncio-only.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

# How often a waiting person's estimate is refreshed when nothing else moves the line.
REFRESH_SECONDS = 5.0


@dataclass(frozen=True)
class Place:
    """Where a question stands: `position` 1 is next; `estimate_s` is the time until its
    answer should start, None until an answer's time has been measured."""

    position: int
    estimate_s: float | None


class AnswerQueue:
    def __init__(self, capacity: int, recent: int = 20, clock=time.monotonic):
        if capacity < 1:
            raise ValueError("a queue must let at least one answer through")
        self.capacity = capacity
        self._clock = clock
        self._serving: dict[Ticket, float] = {}  # ticket -> when it was let through
        self._waiting: list[Ticket] = []  # in the order they will be served
        self._next_round: dict[str, int] = {}  # per person: the round of their next question
        self._round = 0  # the round of the question let through last
        self._arrival = itertools.count()
        self._durations: deque[float] = deque(maxlen=recent)

    def join(self, who: str) -> Ticket:
        """A place in line for `who` (an account); let through at once when there is room and
        nobody is waiting."""
        round_ = max(self._round, self._next_round.get(who, 0))
        self._next_round[who] = round_ + 1
        ticket = Ticket(self, who, (round_, next(self._arrival)))
        self._waiting.append(ticket)
        self._waiting.sort(key=lambda waiting: waiting.order)
        self._let_through()
        self._tell_everyone()  # it may have gone ahead of someone
        return ticket

    @property
    def typical_answer_s(self) -> float | None:
        return statistics.median(self._durations) if self._durations else None

    def place_of(self, ticket: Ticket) -> Place | None:
        """None once the ticket has been let through (or has left)."""
        if ticket not in self._waiting:
            return None
        position = self._waiting.index(ticket) + 1
        return Place(position, self._estimate(position))

    def _estimate(self, position: int) -> float | None:
        typical = self.typical_answer_s
        if typical is None:
            return None
        now = self._clock()
        # When each slot frees: answers being written are assumed to take the typical time
        # (at least a moment more), then each one in line ahead takes it again.
        free_at = [max(typical - (now - since), 0.5) for since in self._serving.values()]
        free_at += [0.0] * (self.capacity - len(free_at))
        heapq.heapify(free_at)
        start = 0.0
        for _ in range(position):
            start = heapq.heappop(free_at)
            heapq.heappush(free_at, start + typical)
        return float(round(start))  # whole seconds: a notice changes when its text would

    def _leave(self, ticket: Ticket, answered: bool) -> None:
        if ticket in self._waiting:
            self._waiting.remove(ticket)
        elif (since := self._serving.pop(ticket, None)) is not None:
            if answered:
                self._durations.append(self._clock() - since)
        else:
            return
        if not self._waiting_from(ticket.who) and ticket.who not in self._serving_whom():
            # Nothing of theirs is left in line: their next question starts a new round.
            self._next_round.pop(ticket.who, None)
        self._let_through()
        self._tell_everyone()

    def _waiting_from(self, who: str) -> bool:
        return any(waiting.who == who for waiting in self._waiting)

    def _serving_whom(self) -> set[str]:
        return {serving.who for serving in self._serving}

    def _let_through(self) -> None:
        while self._waiting and len(self._serving) < self.capacity:
            ticket = self._waiting.pop(0)
            self._round = max(self._round, ticket.order[0])
            self._serving[ticket] = self._clock()
            ticket._moved.set()

    def _tell_everyone(self) -> None:
        for ticket in self._waiting:
            ticket._moved.set()


class Ticket:
    """One question's place in line. `answered()` when its answer is complete (its time goes
    into the estimates); `leave()` in a `finally` whatever happened: a waiting question leaves
    the line, an answer being written frees the model. Both may be called more than once."""

    def __init__(self, queue: AnswerQueue, who: str, order: tuple[int, int]):
        self._queue = queue
        self.who = who
        self.order = order
        self._moved = asyncio.Event()

    @property
    def let_through(self) -> bool:
        return self in self._queue._serving

    def place(self) -> Place | None:
        return self._queue.place_of(self)

    async def places(self, refresh: float = REFRESH_SECONDS) -> AsyncIterator[Place]:
        """Each new place while the question waits (a changed position, or a fresh estimate
        every `refresh` seconds); ends when it is let through."""
        shown = None
        while True:
            self._moved.clear()  # before looking: a move while the caller was busy counts
            place = self.place()
            if place is None:
                return
            if place != shown:  # the estimate changes as time passes: yield, then wait
                yield place
                shown = place
            try:
                await asyncio.wait_for(self._moved.wait(), refresh)
            except TimeoutError:
                pass

    def answered(self) -> None:
        self._queue._leave(self, answered=True)

    def leave(self) -> None:
        self._queue._leave(self, answered=False)
