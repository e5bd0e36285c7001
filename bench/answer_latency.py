"""Answer latency of the local backend, side by side with the raw llama.cpp call it wraps.

Prints, as medians over several runs measured alternately in one process:
- time to first token through the backend (retrieval, prompt building, streaming) vs. a raw
  `create_chat_completion` with the very same messages (goal: ratio <= 1.15);
- tokens per second of both;
- the event loop's lag p99 while one answer streams and another coroutine ticks every 10 ms
  (goal: <= 50 ms), next to the lag of iterating the generator on the loop, as a tutorial does.

Every timed call starts from an empty llama.cpp cache, so neither side reuses the other's prompt.

    python bench/answer_latency.py [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent
from llama_index.core.llms.custom import CustomLLM

from ragchat.backends import Token, create_backend
from ragchat.config import load_settings
from ragchat.logs import setup_logging

QUESTION = "Which file types are supported, and how do I add my own documents?"
GUIDE = Path(__file__).resolve().parent.parent / "docs" / "ragchat-user-guide.md"


class PromptRecorder(BaseEventHandler):
    """Keeps the messages of the last chat call, to replay them raw."""

    messages: list = []

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, LLMChatStartEvent):
            self.messages = [{"role": m.role.value, "content": m.content} for m in event.messages]


async def through_backend(backend, llama) -> tuple[float, int, float]:
    llama.reset()
    started = time.perf_counter()
    first, tokens = None, 0
    async for event in backend.new_chat().ask(QUESTION):
        if isinstance(event, Token):
            first = first or time.perf_counter() - started
            tokens += 1
    return first, tokens, time.perf_counter() - started


def raw_call(llm, messages) -> tuple[float, int, float]:
    llm._llama.reset()
    started = time.perf_counter()
    first, tokens = None, 0
    for chunk in llm._llama.create_chat_completion(
        messages=messages,
        stream=True,
        max_tokens=llm.max_tokens,
        temperature=llm.temperature,
        top_p=llm.top_p,
        repeat_penalty=llm.repeat_penalty,
    ):
        if chunk["choices"][0]["delta"].get("content"):
            first = first or time.perf_counter() - started
            tokens += 1
    return first, tokens, time.perf_counter() - started


async def loop_lag_p99(stream_answer) -> float:
    """p99 of how late a 10 ms ticker wakes up while `stream_answer` runs."""
    lags: list[float] = []
    done = False

    async def ticker() -> None:
        while not done:
            expected = time.perf_counter() + 0.010
            await asyncio.sleep(0.010)
            lags.append(max(0.0, time.perf_counter() - expected))

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # let the ticker set its first alarm before the answer starts
    await stream_answer()
    done = True
    await ticking
    return statistics.quantiles(lags, n=100)[98] if len(lags) > 2 else max(lags, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    setup_logging()

    work = Path(tempfile.mkdtemp(prefix="ragchat-bench-"))
    (work / "data").mkdir()
    shutil.copy(GUIDE, work / "data")
    settings = load_settings(_env_file=None, data_dir=work / "data", storage_dir=work / "storage")
    backend = create_backend(settings)
    llm = backend._llm
    recorder = PromptRecorder()
    get_dispatcher().add_event_handler(recorder)

    ours, raw = [], []
    asyncio.run(through_backend(backend, llm._llama))  # warm-up: loads, caches, JIT paths
    for _ in range(args.runs):
        ours.append(asyncio.run(through_backend(backend, llm._llama)))
        raw.append(raw_call(llm, recorder.messages))

    async def stream_ours() -> None:
        async for _ in backend.new_chat().ask(QUESTION):
            pass

    async def stream_on_the_loop() -> None:  # llama_index's default: the generator on the loop
        async for _ in await CustomLLM.astream_chat(llm, _messages(recorder.messages)):
            pass

    lag_ours = [asyncio.run(loop_lag_p99(stream_ours)) for _ in range(3)]
    lag_blocking = [asyncio.run(loop_lag_p99(stream_on_the_loop)) for _ in range(3)]
    shutil.rmtree(work)

    def median(rows, column):
        return statistics.median(row[column] for row in rows)

    def rate(rows):
        return statistics.median(
            (row[1] - 1) / (row[2] - row[0]) for row in rows if row[1] > 1 and row[2] > row[0]
        )

    ttft_ours, ttft_raw = median(ours, 0), median(raw, 0)
    print(f"model: {Path(llm.model_path).name}, prompt: {len(str(recorder.messages))} chars, "
          f"runs: {args.runs} (medians)")
    print(f"{'':32}{'backend':>10}{'raw llama.cpp':>15}{'ratio':>8}")
    print(f"{'time to first token (ms)':32}{ttft_ours*1000:>10.0f}{ttft_raw*1000:>15.0f}"
          f"{ttft_ours/ttft_raw:>8.2f}   goal <= 1.15")
    print(f"{'tokens per second':32}{rate(ours):>10.1f}{rate(raw):>15.1f}"
          f"{rate(ours)/rate(raw):>8.2f}")
    print(f"{'event loop lag p99 (ms)':32}{statistics.median(lag_ours)*1000:>10.1f}"
          f"{'':>23}goal <= 50")
    print(f"  the same with the token generator iterated on the loop (llama_index's default): "
          f"{statistics.median(lag_blocking)*1000:.1f} ms")


def _messages(messages):
    from llama_index.core.llms import ChatMessage

    return [ChatMessage(role=m["role"], content=m["content"]) for m in messages]


if __name__ == "__main__":
    main()
