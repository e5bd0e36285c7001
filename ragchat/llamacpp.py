"""A GGUF chat model run by llama.cpp, as a llama_index LLM.

llama_index's own `LlamaCPP` does not fit a multi-user chat app, for three reasons this
class fixes:
- it formats prompts with a generic template unless given the model's own; here every prompt
  goes through `create_chat_completion`, which applies the chat template stored in the GGUF,
  so any model given by LOCAL_LLM_PATH is prompted the way it was trained;
- its async methods iterate the synchronous generator on the event loop, freezing every other
  user while one answer streams; here generation runs in a worker thread;
- a llama.cpp context serves one request at a time; here a lock serialises generation.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from llama_cpp import Llama
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from pydantic import PrivateAttr

T = TypeVar("T")


class LlamaCppChat(CustomLLM):
    model_path: str
    context_window: int
    max_tokens: int
    temperature: float
    top_p: float
    repeat_penalty: float

    _llama: Llama = PrivateAttr()
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, model_path: Path, *, n_threads: int | None = None, **fields: Any):
        super().__init__(model_path=str(model_path), **fields)
        self._llama = Llama(
            model_path=str(model_path),
            n_ctx=self.context_window,
            n_threads=n_threads,
            # The repeat penalty looks this many tokens back; llama.cpp's 64 lets a small
            # model repeat whole sentences.
            last_n_tokens_size=256,
            verbose=False,
        )

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self._llama.n_ctx(),
            num_output=self.max_tokens,
            is_chat_model=True,
            model_name=Path(self.model_path).name,
        )

    def _deltas(self, messages: Sequence[ChatMessage]) -> Iterator[str]:
        """Generate the reply to `messages` piece by piece, holding the model's lock."""
        with self._lock:
            chunks = self._llama.create_chat_completion(
                messages=[{"role": m.role.value, "content": m.content or ""} for m in messages],
                stream=True,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                repeat_penalty=self.repeat_penalty,
            )
            for chunk in chunks:
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    yield delta

    def _chat_stream(self, messages: Sequence[ChatMessage]) -> ChatResponseGen:
        text = ""
        for delta in self._deltas(messages):
            text += delta
            yield ChatResponse(
                message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta
            )

    def _completion_stream(self, prompt: str) -> CompletionResponseGen:
        text = ""
        for delta in self._deltas([ChatMessage(role=MessageRole.USER, content=prompt)]):
            text += delta
            yield CompletionResponse(text=text, delta=delta)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text = "".join(self._deltas(messages))
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._chat_stream(messages)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        user = ChatMessage(role=MessageRole.USER, content=prompt)
        return CompletionResponse(text="".join(self._deltas([user])))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        return self._completion_stream(prompt)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self.chat, messages)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        return iterate_in_thread(self._chat_stream(messages))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        return await asyncio.to_thread(self.complete, prompt)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return iterate_in_thread(self._completion_stream(prompt))


_DONE = object()


async def iterate_in_thread(iterator: Iterator[T]) -> AsyncIterator[T]:
    """Run a blocking iterator in its own thread and yield its items on the event loop.

    The iterator is advanced and closed only by that thread; when the consumer stops early
    (the user pressed stop), the thread stops at the next item and closes the iterator, which
    releases whatever it holds (here, the model's lock).
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[tuple[object, BaseException | None]] = asyncio.Queue()
    stop = threading.Event()

    def hand_over(item: object, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, (item, error))
        except RuntimeError:  # the loop has closed: nobody is listening any more
            stop.set()

    def produce() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    break
                hand_over(item)
        except BaseException as error:  # noqa: BLE001 - re-raised on the consumer's side
            hand_over(_DONE, error)
        else:
            hand_over(_DONE)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    threading.Thread(target=produce, name="llama.cpp generation", daemon=True).start()
    try:
        while True:
            item, error = await items.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
