"""Several people at once, in small (bench/load.py runs the full size): four sessions over
Chainlit's Socket.IO against the app started as the README starts it, each asking two questions.
Nothing asked may be lost, every question and answer must be in the history, and each user who
waits for the model must be told their place in the queue within 0.5 s of asking."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bench.load import TOLD_WITHIN, Asked, Figures, history_check, run_load

SESSIONS, QUESTIONS = 4, 2


@pytest.fixture(scope="module")
def figures() -> Figures:
    return run_load(SESSIONS, QUESTIONS, max_tokens=16)


@pytest.mark.slow
def test_every_question_is_answered(figures: Figures) -> None:
    assert figures.all_errors == []
    assert figures.answered == SESSIONS * QUESTIONS


@pytest.mark.slow
def test_every_question_and_answer_is_stored_and_no_queue_notice(figures: Figures) -> None:
    assert figures.lost_rows == 0
    assert figures.stored_notices == 0


@pytest.mark.slow
def test_every_waiting_user_is_told_their_place_in_time(figures: Figures) -> None:
    assert figures.waiting, "with four asking at once and one model, someone waits"
    untold = [
        f"session {a.session}: told after "
        + (f"{a.told_at - a.sent_at:.2f} s" if a.told_at else "never")
        for a in figures.waiting
        if a not in figures.told_in_time
    ]
    assert untold == []


# The bench's own checks, on made-up figures and a real SQLite file: they can fail.


def test_a_question_answered_after_another_counts_as_waiting() -> None:
    # Sent a moment after the first, but taken first by the server: it did not wait.
    taken_first = Asked(session=0, sent_at=0.1, first_token=2.0, done_at=10.0, answered=True)
    sent_first = Asked(session=1, sent_at=0.0, first_token=11.0, done_at=20.0, told_at=0.2)
    told = Asked(session=2, sent_at=1.0, first_token=21.0, done_at=30.0, told_at=1.0 + TOLD_WITHIN)
    late = Asked(session=3, sent_at=2.0, done_at=35.0, told_at=2.0 + 2 * TOLD_WITHIN)
    after = Asked(session=4, sent_at=36.0, first_token=37.0, done_at=40.0)  # nobody ahead
    figures = Figures(sessions=5, questions=1, asked=[taken_first, sent_first, told, late, after])
    assert figures.waiting == [sent_first, told, late]
    assert figures.told_in_time == [sent_first, told]


def test_a_missing_answer_and_a_stored_notice_are_counted(tmp_path: Path) -> None:
    db_path = tmp_path / "history.db"
    with sqlite3.connect(db_path) as db:
        db.execute('CREATE TABLE steps ("threadId" TEXT, type TEXT, metadata TEXT)')
        rows = [
            ("t1", "user_message", "{}"),
            ("t1", "assistant_message", json.dumps({"sources": []})),
            ("t1", "user_message", "{}"),  # its answer is missing
            ("t1", "assistant_message", json.dumps({"queue": {"position": 1}})),
            ("t1", "assistant_message", "{}"),  # the welcome message: not an answer
        ]
        db.executemany('INSERT INTO steps ("threadId", type, metadata) VALUES (?, ?, ?)', rows)
    assert history_check(f"sqlite:///{db_path}", {"t1": (2, 2)}) == (1, 1)
