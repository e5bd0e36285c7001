"""Many people at once: chat sessions over Chainlit's own Socket.IO against a real app process.

The app is started as the README starts it (`make run`, an app root of its own, the embedded
default models, the user guide as its documents, LLM_MAX_TOKENS=48). Each session signs in with
an account of its own, opens a chat, asks, waits for the end of the answer and asks again, all
sessions at once. Meanwhile a probe fetches a cheap page (/auth/config) every 0.5 s, next to a
control server in this process (how much of the probe's delay is this process's own). After
the run the history database is read back: every question and answer must be stored.

Reported: first visible output (the first message, step or token after asking), first answer
token and complete times (p50/p95/max), the probe's p50/p99, answers, errors, lost history rows,
and the share of waiting users (another session's answer was being written 0.5 s after they
asked, and began before theirs) who were shown their queue position within 0.5 s of asking.

    python -m bench.load [--sessions 20] [--questions 2] [--max-tokens 48] [--repeat 3]
    python -m bench.load --old HEAD      # the same load on a commit, side by side
    python -m bench.load --watch-loop    # what held the app's event loop (bench/loop_watch)
    python -m bench.load --instances 2   # two app processes sharing one PostgreSQL (started
                                         # here, as the tests start it); sessions alternate

Run it from the repository root: `-m` puts the root on sys.path, for tests/socket_client.py.
`run_load` returns the figures, for a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import httpx
from sqlalchemy import create_engine, text

from tests.postgres_server import new_database, postgres_server
from tests.running_app import app_environment, free_port, served
from tests.socket_client import ChatClient, Event, Exchange

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "ragchat-user-guide.md"
LOOP_WATCH = ROOT / "bench" / "loop_watch"
QUESTIONS = [
    "How do I sign in?",
    "How do I add my own documents?",
    "Which models can ragchat use?",
    "What does ragchat keep about my conversations?",
    "How do I change the number of passages per answer?",
    "Who can see my documents?",
]
TOLD_WITHIN = 0.5  # seconds: a waiting user must see their place in the queue this soon
PROBE_EVERY = 0.5
PASSWORD = "a long passphrase for load testing"


@dataclass
class Asked:
    """One question of one session, with when things arrived (time.monotonic())."""

    session: int
    sent_at: float
    done_at: float
    first_visible: float | None = None
    first_token: float | None = None
    told_at: float | None = None  # the first queue notice
    answered: bool = False
    error: str | None = None


@dataclass
class Figures:
    sessions: int
    questions: int
    asked: list[Asked] = field(default_factory=list)
    probe_ms: list[float] = field(default_factory=list)
    control_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lost_rows: int = 0
    stored_notices: int = 0  # queue notices found in the history: there should be none
    stalls: list[dict] = field(default_factory=list)  # with --watch-loop
    slow_callbacks: list[str] = field(default_factory=list)  # asyncio debug mode's lines

    def _after(self, moment: str) -> list[float]:
        return [getattr(a, moment) - a.sent_at for a in self.asked if getattr(a, moment)]

    @property
    def first_visible(self) -> list[float]:
        return self._after("first_visible")

    @property
    def first_token(self) -> list[float]:
        return self._after("first_token")

    @property
    def complete(self) -> list[float]:
        return [a.done_at - a.sent_at for a in self.asked if a.answered]

    @property
    def answered(self) -> int:
        return sum(a.answered for a in self.asked)

    @property
    def waiting(self) -> list[Asked]:
        """Questions that waited for the model: another session's answer was being written
        after they were asked (still 0.5 s later) and began before theirs. Which of several
        questions sent at once the server takes first is its choice, so the order of sending
        says nothing; the order of answering does."""
        return [
            a
            for a in self.asked
            if any(
                o.session != a.session
                and o.first_token is not None
                and o.first_token < (a.first_token or math.inf)
                and o.done_at > a.sent_at + TOLD_WITHIN
                for o in self.asked
            )
        ]

    @property
    def told_in_time(self) -> list[Asked]:
        return [a for a in self.waiting if a.told_at and a.told_at - a.sent_at <= TOLD_WITHIN]

    @property
    def all_errors(self) -> list[str]:
        return self.errors + [a.error for a in self.asked if a.error]


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


# The app


@contextmanager
def served_apps(
    code: Path,
    work: Path,
    max_tokens: int,
    watch_loop: bool = False,
    instances: int = 1,
    **settings: str,
) -> Iterator[tuple[list[str], dict, Path]]:
    """The app of the tree at `code`, started with the README's command in a fresh
    installation under `work`, holding the user guide: (urls, env, log) until the block ends.
    With several instances, each is a process of its own on one PostgreSQL, sharing the data
    folder (the first starts alone, as a first deployment does)."""
    (work / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(GUIDE, work / "data")
    with ExitStack() as stack:
        if instances > 1:
            server = stack.enter_context(postgres_server())
            settings = {
                "DATABASE_URL": stack.enter_context(new_database(server)),
                "DATA_DIR": str(work / "data"),
                "HISTORY_FILES_DIR": str(work / "history-files"),
                **settings,
            }
        urls, envs = [], []
        for number in range(instances):
            home = work / f"instance-{number}" if instances > 1 else work
            env = app_environment(home, free_port(), LLM_MAX_TOKENS=str(max_tokens), **settings)
            if code != ROOT:  # an older tree: its own Chainlit config, its own modules first
                shutil.copytree(
                    code / ".chainlit", home / "app-root" / ".chainlit", dirs_exist_ok=True
                )
                env["PYTHONPATH"] = str(code)
            if watch_loop:
                env["PYTHONPATH"] = os.pathsep.join(
                    filter(None, [env.get("PYTHONPATH"), str(LOOP_WATCH)])
                )
                env.update(PYTHONASYNCIODEBUG="1", LOOP_STALL_LOG=str(home / "stalls.jsonl"))
                env.setdefault("LOOP_STALL_WARN_MS", "2")
            urls.append(stack.enter_context(served(code, env, home / "app.log", timeout=600)))
            envs.append(env)
        yield urls, envs[0], work / ("instance-0" if instances > 1 else "") / "app.log"


def history_url(env: dict) -> str:
    """Where the app stores conversations, as an SQLAlchemy URL (sync driver)."""
    if database := env.get("DATABASE_URL"):
        return database.replace("postgresql://", "postgresql+psycopg://", 1)
    return f"sqlite:///{env['HISTORY_DB_PATH']}"


def create_accounts(code: Path, env: dict, names: list[str]) -> None:
    """The accounts, made with the tree's own `create_password.py add`, four at a time."""
    for start in range(0, len(names), 4):
        adding = [
            subprocess.Popen(
                [sys.executable, "create_password.py", "add", name, "--password-stdin"],
                cwd=code,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in names[start : start + 4]
        ]
        for process in adding:
            _, error = process.communicate(PASSWORD)
            if process.returncode:
                raise RuntimeError(f"create_password.py add failed: {error}")


def older_tree(revision: str, into: Path) -> Path:
    """The files of `revision` (git archive, no checkout), sharing this tree's .venv."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / ".venv").symlink_to(ROOT / ".venv")
    # The archive dates its files at the commit: older than the venv, so `make run` installs
    # nothing into the shared .venv.
    for name in (
        "requirements.txt",
        "requirements-local.txt",
        "requirements.lock",
        "pyproject.toml",
    ):
        os.utime(into / name, (0, 0))
    return into


# The load


class _Control(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        pass


class Probe:
    """Fetches the app's page and the control server's every 0.5 s in a thread of its own."""

    def __init__(self, url: str):
        self.url = url + "/auth/config"
        self.app_ms: list[float] = []
        self.control_ms: list[float] = []
        self._stop = threading.Event()
        self._control = ThreadingHTTPServer(("127.0.0.1", 0), _Control)
        self._threads = [
            threading.Thread(target=self._control.serve_forever, daemon=True),
            threading.Thread(target=self._run, daemon=True),
        ]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._threads[1].join()
        self._control.shutdown()
        self._control.server_close()

    def _run(self) -> None:
        control = f"http://127.0.0.1:{self._control.server_address[1]}/"
        while not self._stop.wait(PROBE_EVERY):
            self.app_ms.append(_fetch_ms(self.url))
            self.control_ms.append(_fetch_ms(control))


def _fetch_ms(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


async def one_session(
    url: str, number: int, user: str, questions: list[str], timeout: float
) -> tuple[list[Asked], str | None]:
    """Sign in, open a chat, ask each question after the previous answer: (asked, thread)."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        response = await http.post("/login", data={"username": user, "password": PASSWORD})
        response.raise_for_status()
        cookies = dict(http.cookies)
    asked: list[Asked] = []
    async with ChatClient(url, cookies) as chat:
        for question in questions:
            sent_at = time.monotonic()
            try:
                exchange = await chat.ask(question, timeout=timeout)
            except (ConnectionError, TimeoutError) as error:
                asked.append(Asked(number, sent_at, time.monotonic(), error=repr(error)))
                break
            asked.append(_asked(number, exchange))
        return asked, chat.thread_id


def _asked(session: int, exchange: Exchange) -> Asked:
    shown = [  # Chainlit's "run" step of the handler is not shown as a message
        e
        for e in exchange.named("new_message", "update_message", "stream_start")
        if e.data.get("type") not in ("user_message", "run")
    ]
    notices = [e for e in shown if "queue" in (e.data.get("metadata") or {})]
    notice_ids = {e.data["id"] for e in notices}
    streamed = [
        e for e in exchange.named("stream_start", "stream_token") if e.data["id"] not in notice_ids
    ]
    if streamed and _is_quote_block(streamed[0]):  # quoted passages come before the model's
        streamed = streamed[1:]
    answers = [
        e.data
        for e in shown
        if e.name != "stream_start"
        and e.data.get("type") == "assistant_message"
        and e.data["id"] not in notice_ids
    ]
    final = answers[-1] if answers else None
    error = None
    if final is None or final.get("isError") or not final.get("output"):
        error = "no answer: " + "; ".join(exchange.errors or ["(none sent)"])[:200]
    return Asked(
        session=session,
        sent_at=exchange.sent_at,
        done_at=exchange.events[-1].at if exchange.events else exchange.sent_at,
        first_visible=shown[0].at if shown else None,
        first_token=streamed[0].at if streamed else None,
        told_at=notices[0].at if notices else None,
        answered=error is None,
        error=error,
    )


def _is_quote_block(event: Event) -> bool:
    """The passages quoted above the answer (ragchat/quotes.py), streamed as one piece."""
    text = event.data.get("output" if event.name == "stream_start" else "token") or ""
    return text.startswith("> ") and text.endswith("\n\n")


async def measure(
    urls: list[str], users: list[str], questions: int, history: str, timeout: float = 900
) -> Figures:
    """All sessions at once, each with its own account, on the instances at `urls` in turn;
    `history`: the SQLAlchemy URL of the conversations' database."""
    figures = Figures(sessions=len(users), questions=questions)
    asks = [
        [QUESTIONS[(number + turn) % len(QUESTIONS)] for turn in range(questions)]
        for number in range(len(users))
    ]
    with Probe(urls[0]) as probe:
        outcomes = await asyncio.gather(
            *(
                one_session(urls[n % len(urls)], n, user, asks[n], timeout)
                for n, user in enumerate(users)
            ),
            return_exceptions=True,
        )
    figures.probe_ms, figures.control_ms = probe.app_ms, probe.control_ms
    threads: dict[str, tuple[int, int]] = {}  # thread: (questions sent, answers received)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            figures.errors.append(f"session failed: {outcome!r}"[:300])
            continue
        asked, thread = outcome
        figures.asked += asked
        if thread:
            threads[thread] = (len(asked), sum(a.answered for a in asked))
    figures.lost_rows, figures.stored_notices = history_check(history, threads)
    return figures


def history_check(history: str, threads: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(rows missing: each question sent and each answer received, queue notices stored).
    Chainlit stores a message just after sending it: wait until the counts stop changing."""
    previous, deadline = None, time.monotonic() + 15
    while True:
        counts = _stored(history, threads)
        if counts == previous or time.monotonic() > deadline:
            break
        previous = counts
        time.sleep(1)
    lost = sum(
        max(0, sent - counts[thread][0]) + max(0, answered - counts[thread][1])
        for thread, (sent, answered) in threads.items()
    )
    return lost, sum(notices for _q, _a, notices in counts.values())


def _stored(history: str, threads: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int, int]]:
    counts: dict[str, tuple[int, int, int]] = {}
    engine = create_engine(history)
    try:
        with engine.connect() as db:
            for thread in threads:
                rows = db.execute(
                    text('SELECT type, metadata FROM steps WHERE "threadId" = :thread'),
                    {"thread": thread},
                ).all()
                metadata = [(kind, json.loads(meta or "{}")) for kind, meta in rows]
                counts[thread] = (
                    sum(kind == "user_message" for kind, _ in metadata),
                    sum(
                        kind == "assistant_message" and "sources" in meta for kind, meta in metadata
                    ),
                    sum("queue" in meta for _, meta in metadata),
                )
    finally:
        engine.dispose()
    return counts


def run_load(
    sessions: int,
    questions: int,
    max_tokens: int = 48,
    code: Path = ROOT,
    watch_loop: bool = False,
    instances: int = 1,
    **settings: str,
) -> Figures:
    """Start the app of the tree at `code` (`instances` processes), make the accounts, run the
    load, stop the app."""
    with tempfile.TemporaryDirectory(prefix="ragchat-load-") as scratch:
        work = Path(scratch)
        apps = served_apps(code, work, max_tokens, watch_loop, instances, **settings)
        with apps as (urls, env, log):
            users = [f"load{n:02d}" for n in range(sessions)]
            create_accounts(code, env, users)
            figures = asyncio.run(measure(urls, users, questions, history_url(env)))
        if watch_loop:
            figures.stalls = _read_stalls(log.parent / "stalls.jsonl")
            figures.slow_callbacks = re.findall(
                r"Executing .* took [\d.]+ seconds", log.read_text()
            )
        return figures


def _read_stalls(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# The report


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def rows(figures: Figures) -> dict[str, str]:
    waiting, told = len(figures.waiting), len(figures.told_in_time)
    line = {}
    for name, values in (
        ("first visible (s)", figures.first_visible),
        ("first token (s)", figures.first_token),
        ("complete (s)", figures.complete),
    ):
        line[f"{name} p50/p95/max"] = "/".join(_s(percentile(values, q)) for q in (0.5, 0.95, 1.0))
    probe, control = figures.probe_ms, figures.control_ms
    line["probe p50/p99 (ms)"] = "/".join(
        "-" if percentile(probe, q) is None else f"{percentile(probe, q):.0f}" for q in (0.5, 0.99)
    )
    line["control p50/p99 (ms)"] = "/".join(
        "-" if percentile(control, q) is None else f"{percentile(control, q):.0f}"
        for q in (0.5, 0.99)
    )
    line["answered / asked"] = f"{figures.answered} / {figures.sessions * figures.questions}"
    line["errors"] = str(len(figures.all_errors))
    line["lost history rows"] = str(figures.lost_rows)
    line["queue shown <= 0.5 s"] = f"{told}/{waiting}" + (
        f" ({100 * told / waiting:.0f}%)" if waiting else ""
    )
    return line


def median_rows(runs: list[Figures]) -> dict[str, str]:
    """Each figure's median over the runs (a run's own text when there is one)."""
    if len(runs) == 1:
        return rows(runs[0])
    per_run = [rows(run) for run in runs]
    merged = {}
    for key in per_run[0]:
        texts = [r[key] for r in per_run]
        merged[key] = _median_text(texts)
    return merged


def _median_text(texts: list[str]) -> str:
    """The median of each number in texts shaped alike ("1.2/3.4/5.6", "3 / 4 (75%)")."""
    numbers = [re.findall(r"[\d,.]+|-", text) for text in texts]
    template = re.sub(r"[\d,.]+|-", "{}", texts[0])
    medians = []
    for column in zip(*numbers, strict=False):
        values = [float(v.replace(",", "")) for v in column if v != "-"]
        medians.append("-" if not values else f"{statistics.median(values):g}")
    return template.format(*medians) if len({len(n) for n in numbers}) == 1 else texts[0]


def print_table(columns: dict[str, list[Figures]], title: str) -> None:
    tables = {name: median_rows(runs) for name, runs in columns.items()}
    keys = list(next(iter(tables.values())))
    print(f"\n{title}\n")
    print("| | " + " | ".join(tables) + " |")
    print("| --- |" + " --- |" * len(tables))
    for key in keys:
        print(f"| {key} | " + " | ".join(table[key] for table in tables.values()) + " |")


def print_stalls(figures: Figures, top: int = 15) -> None:
    """What held the loop, by total time: each stall put down to the place most of its
    samples show (the innermost frame of ragchat's, and the library frame it was in)."""
    total: dict[str, float] = defaultdict(float)
    count: Counter[str] = Counter()
    worst: dict[str, float] = defaultdict(float)
    callbacks: dict[str, Counter[str]] = defaultdict(Counter)
    for stall in figures.stalls:
        sites = Counter(_site(sample) for sample in stall["samples"]) or Counter(["(unsampled)"])
        site = sites.most_common(1)[0][0]
        total[site] += stall["ms"]
        count[site] += 1
        worst[site] = max(worst[site], stall["ms"])
        callbacks[site][stall["callback"]] += 1
    stalled = sum(s["ms"] for s in figures.stalls)
    print(
        f"\nLoop stalls over {os.environ.get('LOOP_STALL_WARN_MS', '2')} ms: "
        f"{len(figures.stalls)}, {stalled:,.0f} ms in all; asyncio debug lines: "
        f"{len(figures.slow_callbacks)}\n"
    )
    print("| where (innermost ours, else library) | stalls | total ms | max ms | callback |")
    print("| --- | --- | --- | --- | --- |")
    for site in sorted(total, key=total.get, reverse=True)[:top]:
        callback = callbacks[site].most_common(1)[0][0]
        print(f"| {site} | {count[site]} | {total[site]:,.0f} | {worst[site]:,.0f} | {callback} |")


def _site(sample: list[str]) -> str:
    """A sampled stack (innermost first) as one place: the innermost frame in ragchat, with
    the library frame it was in, else the innermost outside asyncio and this watcher."""
    inner = next(
        (f for f in sample if not re.match(r"(asyncio|threading|sitecustomize)", f)), sample[0]
    )
    ours = next((f for f in sample if "ragchat/" in f or "/app.py:" in f), None)
    return f"{ours} <- {inner}" if ours and ours != inner else (ours or inner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--old", metavar="REV", help="also run the commit REV, side by side")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; medians printed")
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="app processes on one PostgreSQL (started here), sessions spread over them",
    )
    parser.add_argument(
        "--watch-loop",
        action="store_true",
        help="asyncio debug mode and stack samples of loop stalls (slows the app: figures are "
        "for finding stalls, not for comparing)",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SETTING=VALUE",
        help="app settings, e.g. LLM_THREADS=1",
    )
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory(prefix="ragchat-old-") as scratch:
        if args.old:
            trees = {args.old: older_tree(args.old, Path(scratch) / "tree"), **trees}
        runs: dict[str, list[Figures]] = {name: [] for name in trees}
        for _ in range(args.repeat):  # alternately, so both see the same machine
            for name, code in trees.items():
                figures = run_load(
                    args.sessions,
                    args.questions,
                    args.max_tokens,
                    code,
                    args.watch_loop,
                    args.instances,
                    **settings,
                )
                runs[name].append(figures)
                print(
                    f"{name}: " + "; ".join(f"{k} {v}" for k, v in rows(figures).items()),
                    flush=True,
                )
                for error in figures.all_errors[:5]:
                    print("  error:", error)
                if args.watch_loop:
                    print_stalls(figures)
    print_table(
        runs,
        f"{args.sessions} sessions x {args.questions} questions"
        f"{f' on {args.instances} instances sharing PostgreSQL' if args.instances > 1 else ''}"
        ", LLM_MAX_TOKENS="
        f"{args.max_tokens}{' ' + ' '.join(args.set) if args.set else ''}"
        f"{f', medians of {args.repeat}' if args.repeat > 1 else ''}",
    )


if __name__ == "__main__":
    main()
