"""The line in front of a model (ragchat/answer_queue.py): who goes next, what each waiting
question is told, and what leaving does."""

import asyncio

import pytest

from ragchat.answer_queue import AnswerQueue, Place
from ragchat.backends import Queued, waiting_turn
from ragchat.queue_notice import waiting_text


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def positions(queue: AnswerQueue, tickets) -> list[int | None]:
    return [None if (place := t.place()) is None else place.position for t in tickets]


def test_one_at_a_time_in_order_of_arrival():
    queue = AnswerQueue(capacity=1)
    first, second, third = (queue.join(who) for who in ("ann", "bob", "cy"))
    assert first.let_through and not second.let_through
    assert positions(queue, [first, second, third]) == [None, 1, 2]
    first.answered()
    assert second.let_through
    assert positions(queue, [second, third]) == [None, 1]


def test_many_tabs_of_one_person_do_not_push_others_back():
    queue = AnswerQueue(capacity=1)
    ann = [queue.join("ann") for _ in range(4)]  # four tabs, asking at once
    bob = queue.join("bob")
    cy = queue.join("cy")
    # ann's first is being answered; bob and cy each go before her second.
    assert positions(queue, [bob, cy, *ann[1:]]) == [1, 2, 3, 4, 5]
    order = []
    for _ in range(6):
        serving = next(t for t in [*ann, bob, cy] if t.let_through)
        order.append(serving.who)
        serving.answered()
    assert order == ["ann", "bob", "cy", "ann", "ann", "ann"]


def test_a_person_asking_again_later_waits_their_turn_like_anyone():
    queue = AnswerQueue(capacity=1)
    ann = queue.join("ann")
    bob = queue.join("bob")
    ann.answered()  # bob is answered now
    ann_again = queue.join("ann")
    cy = queue.join("cy")
    assert bob.let_through
    assert positions(queue, [ann_again, cy]) == [1, 2]  # arrival order among equals


def test_capacity_lets_that_many_through_at_once():
    queue = AnswerQueue(capacity=3)
    tickets = [queue.join(f"user{n}") for n in range(5)]
    assert [t.let_through for t in tickets] == [True, True, True, False, False]
    tickets[1].leave()
    assert tickets[3].let_through and positions(queue, [tickets[4]]) == [1]


def test_leaving_the_line_moves_everyone_behind_up():
    queue = AnswerQueue(capacity=1)
    serving, stopped, waiting = (queue.join(who) for who in ("ann", "bob", "cy"))
    stopped.leave()  # bob pressed stop while waiting
    stopped.leave()  # twice is harmless
    assert stopped.place() is None and not stopped.let_through
    assert positions(queue, [waiting]) == [1]
    serving.answered()
    assert waiting.let_through


def test_the_estimate_comes_from_measured_answers():
    clock = Clock()
    queue = AnswerQueue(capacity=1, clock=clock)
    first = queue.join("ann")
    second = queue.join("bob")
    assert second.place() == Place(1, None)  # nothing measured yet: no guess
    clock.now += 10
    first.answered()  # 10 s
    third = queue.join("cy")
    fourth = queue.join("dee")
    clock.now += 4  # second has been answered for 4 s of a typical 10
    assert third.place() == Place(1, pytest.approx(6.0))
    assert fourth.place() == Place(2, pytest.approx(16.0))


def test_answers_that_did_not_finish_do_not_count_in_the_estimate():
    clock = Clock()
    queue = AnswerQueue(capacity=1, clock=clock)
    stopped = queue.join("ann")
    clock.now += 1
    stopped.leave()  # stopped after 1 s
    assert queue.typical_answer_s is None


async def test_a_waiting_question_is_told_each_move_and_when_its_turn_comes():
    queue = AnswerQueue(capacity=1)
    first, second = queue.join("ann"), queue.join("bob")
    third = queue.join("cy")
    told: list[Queued] = []

    async def wait() -> None:
        async for event in waiting_turn(third):
            told.append(event)

    waiter = asyncio.create_task(wait())
    await asyncio.sleep(0.01)
    first.answered()
    await asyncio.sleep(0.01)
    second.answered()
    await asyncio.wait_for(waiter, 1)  # moved at once, not at the next refresh
    assert [event.position for event in told] == [2, 1, 0]
    assert third.let_through


async def test_a_question_let_through_at_once_is_told_nothing():
    queue = AnswerQueue(capacity=1)
    assert [event async for event in waiting_turn(queue.join("ann"))] == []


async def test_stopping_a_waiting_question_takes_it_out_of_the_line():
    queue = AnswerQueue(capacity=1)
    serving = queue.join("ann")
    waiting = queue.join("bob")
    behind = queue.join("cy")

    async def ask() -> None:
        try:
            async for _ in waiting_turn(waiting):
                pass
        finally:
            waiting.leave()

    task = asyncio.create_task(ask())
    await asyncio.sleep(0.01)
    task.cancel()  # what Chainlit does when the user presses stop
    with pytest.raises(asyncio.CancelledError):
        await task
    assert positions(queue, [waiting, behind]) == [None, 1]
    serving.answered()
    assert behind.let_through and not waiting.let_through


def test_the_notice_says_where_and_how_long():
    assert waiting_text(Queued(1, None)) == "Waiting for the model: your question is next."
    assert waiting_text(Queued(3, 42.0)) == (
        "Waiting for the model: your question is 3rd in line; your answer should start in "
        "about 40 s."
    )
    assert "12th in line" in waiting_text(Queued(12, 200.0))
    assert waiting_text(Queued(22, 200.0)).endswith(
        "22nd in line; your answer should start in about 3 min."
    )
    assert waiting_text(Queued(2, 1.0)).endswith("in a few seconds.")


async def test_a_waiting_question_is_told_on_moves_and_refreshes_not_all_the_time():
    clock = Clock()
    queue = AnswerQueue(capacity=1, clock=clock)
    measured = queue.join("ann")
    clock.now += 2
    measured.answered()  # from now on every look gives a new estimate
    queue.join("bob")
    waiting = queue.join("cy")
    told = 0

    async def count() -> None:
        nonlocal told
        async for _ in waiting.places(refresh=0.1):
            told += 1
            clock.now += 0.01

    counting = asyncio.create_task(count())
    await asyncio.sleep(0.35)
    counting.cancel()
    assert 1 <= told <= 5, f"told {told} times in 0.35 s"


async def test_someone_moved_back_by_a_newcomer_is_told_at_once():
    queue = AnswerQueue(capacity=1)
    queue.join("ann")
    second_tab = queue.join("ann")
    told: list[int] = []

    async def wait() -> None:
        async for place in second_tab.places(refresh=60):
            told.append(place.position)

    waiter = asyncio.create_task(wait())
    await asyncio.sleep(0.01)
    queue.join("bob")  # one question per person per round: bob goes first
    await asyncio.sleep(0.01)
    waiter.cancel()
    assert told == [1, 2]
