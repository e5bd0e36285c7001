"""Which code holds the app's event loop: loaded by Python at start-up (as `sitecustomize`) in
an app that `bench/load.py --watch-loop` starts with this folder on PYTHONPATH; nothing else
loads it.

- Every event loop gets `slow_callback_duration` = LOOP_STALL_WARN_MS (default 2 ms), for
  asyncio's debug mode (PYTHONASYNCIODEBUG=1) to log each callback that runs longer. Under
  Chainlit it logs nothing: Chainlit applies nest_asyncio, whose own `_run_once` runs the
  callbacks without timing them.
- So each callback (`Handle._run`) is timed here, and a watcher thread samples the loop
  thread's stack while one runs longer than LOOP_STALL_WARN_MS; one JSON line per such stall
  goes to LOOP_STALL_LOG: how long, which task, the stacks seen (which code held the loop).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from asyncio import base_events, events

THRESHOLD = float(os.environ.get("LOOP_STALL_WARN_MS", "2")) / 1000
LOG = os.environ.get("LOOP_STALL_LOG")
_SAMPLES_PER_STALL = 40
_FRAMES_PER_SAMPLE = 30

_loop_init = base_events.BaseEventLoop.__init__


def _init_with_threshold(self, *args, **kwargs) -> None:
    _loop_init(self, *args, **kwargs)
    self.slow_callback_duration = THRESHOLD


base_events.BaseEventLoop.__init__ = _init_with_threshold

# thread id -> [started, handle, samples] for the callback that thread's loop is running
_running: dict[int, list] = {}
_finished: list[tuple[float, list]] = []
_handle_run = events.Handle._run


def _timed_run(self) -> None:
    thread = threading.get_ident()
    running = _running[thread] = [time.perf_counter(), self, []]
    try:
        _handle_run(self)
    finally:
        _running.pop(thread, None)
        took = time.perf_counter() - running[0]
        if took >= THRESHOLD:
            _finished.append((took, running))


def _stack(frame) -> list[str]:
    lines = []
    while frame is not None and len(lines) < _FRAMES_PER_SAMPLE:
        code = frame.f_code
        lines.append(f"{_short(code.co_filename)}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return lines  # innermost first


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] if "/" in path else path


def _callback_name(handle) -> str:
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    coro = getattr(task, "get_coro", None)
    if coro is not None and coro() is not None:
        return f"Task {coro().__qualname__}"
    return getattr(callback, "__qualname__", repr(callback))[:200]


def _watch() -> None:
    out = open(LOG, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    while True:
        time.sleep(0.001)
        now = time.perf_counter()
        frames = None
        for thread, running in list(_running.items()):
            started, _handle, samples = running
            if now - started > THRESHOLD and len(samples) < _SAMPLES_PER_STALL:
                frames = frames or sys._current_frames()
                if thread in frames:
                    samples.append(_stack(frames[thread]))
        while _finished:
            took, (_started, handle, samples) = _finished.pop(0)
            record = {"ms": round(took * 1000, 2), "callback": _callback_name(handle)}
            out.write(json.dumps({**record, "samples": samples}) + "\n")


if LOG:
    events.Handle._run = _timed_run
    threading.Thread(target=_watch, name="loop stall watcher", daemon=True).start()
