"""The backend interface on the real local models: events, sources, follow-ups, refusals."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from llama_index.core.llms import ChatMessage

from ragchat.backends import (
    QuestionRejected,
    Queued,
    Source,
    Sources,
    Step,
    Token,
    Turn,
    create_backend,
    group_by_label,
)
from ragchat.backends.llama_index import NO_CONTEXT_ANSWER, LlamaIndexBackend, follow_up_query
from ragchat.config import ConfigError, load_settings
from ragchat.ingest import Library

from .conftest import GUIDE
from .openai_server import REPLY, OpenAIServer

pytestmark = pytest.mark.slow  # every test builds the backend on the local models


async def collect(chat, question: str) -> list:
    return [event async for event in chat.ask(question)]


async def drain(answer) -> list:
    return [event async for event in answer]


def answer_text(events: list) -> str:
    return "".join(event.text for event in events if isinstance(event, Token))


def source_files(events: list) -> set[str]:
    """The files of the passages the answer was written from (sent before its first token)."""
    return {
        source.file_name for event in events if isinstance(event, Sources) for source in event.items
    }


async def test_the_passages_come_first_then_the_answer_streams(guide_backend) -> None:
    events = await collect(guide_backend.new_chat(), "Which file types are supported?")

    step = events[0]
    assert isinstance(step, Step) and step.name == "Retrieve"
    assert step.input == "Which file types are supported?"
    assert "ragchat-user-guide.md" in step.output

    tokens = events[2:]
    assert all(isinstance(event, Token) for event in tokens)
    assert len(tokens) > 3, "the answer arrives in pieces, not at once"
    assert answer_text(events).strip() and answer_text(events) != NO_CONTEXT_ANSWER

    sources = events[1]  # before the answer: the user reads them while it is written
    assert isinstance(sources, Sources)
    assert {source.file_name for source in sources.items} == {"ragchat-user-guide.md"}
    assert any("Markdown (.md)" in source.text for source in sources.items)
    # What the user sees is what the model was given: every source is in the step's passages.
    assert all(source.text in step.output for source in sources.items)


@pytest.mark.parametrize("question", ["How do I cook pasta?", "Who won the football world cup?"])
async def test_nothing_relevant_gives_an_honest_answer_without_sources(
    guide_backend, question: str
) -> None:
    events = await collect(guide_backend.new_chat(), question)
    assert answer_text(events) == NO_CONTEXT_ANSWER
    assert not any(isinstance(event, Sources) for event in events)
    assert events[0].output == "No passage was relevant enough to use."


async def test_follow_up_retrieves_with_the_previous_question(guide_backend) -> None:
    chat = guide_backend.new_chat()
    await collect(chat, "How do I use OpenAI models?")
    events = await collect(chat, "and which setting picks the embedding model?")
    assert events[0].input == (
        "How do I use OpenAI models?\nand which setting picks the embedding model?"
    )
    assert "OPENAI_EMBED_MODEL" in events[0].output


async def test_a_chat_resumes_from_its_stored_turns(guide_backend) -> None:
    chat = guide_backend.new_chat(
        history=[
            Turn("user", "Which language model does ragchat use?"),
            Turn("assistant", "SmolLM2-135M-Instruct, run by llama.cpp."),
        ]
    )
    events = await collect(chat, "how do I run another one instead?")
    assert events[0].input == (
        "Which language model does ragchat use?\nhow do I run another one instead?"
    )
    assert "LOCAL_LLM_PATH" in events[0].output


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("   ", "The message is empty: type a question about your documents."),
        ("Why? " * 2000, "The message is 10,000 characters long; the model reads at most 3,584 "),
    ],
)
async def test_unanswerable_messages_are_refused_and_the_chat_goes_on(
    guide_backend, question: str, expected: str
) -> None:
    chat = guide_backend.new_chat()
    with pytest.raises(QuestionRejected) as refusal:
        await collect(chat, question)
    assert str(refusal.value).startswith(expected)
    events = await collect(chat, "Which file types are supported?")
    assert source_files(events) == {"ragchat-user-guide.md"}
    assert answer_text(events).strip()


def test_follow_up_query_weights_the_latest_question_over_the_users_last_turns() -> None:
    history = [
        ChatMessage(role="user", content="first?"),
        ChatMessage(role="assistant", content="an answer"),
        ChatMessage(role="user", content="second?"),
        ChatMessage(role="assistant", content="another"),
    ]
    query = follow_up_query(history, "third?", 1)
    assert query.query_str == "second?\nthird?"
    assert query.embedding_strs == ["third?", "third?", "second?"]
    assert follow_up_query(history, "third?", 5).embedding_strs == [
        "third?",
        "third?",
        "first?",
        "second?",
    ]
    assert follow_up_query(history, "third?", 0).embedding_strs == ["third?", "third?"]


async def test_a_new_topic_is_not_drowned_by_the_history(guide_backend) -> None:
    chat = guide_backend.new_chat()
    await collect(chat, "How do I add my own documents?")
    events = await collect(chat, "Who won the football world cup?")
    assert answer_text(events) == NO_CONTEXT_ANSWER


def test_sources_are_grouped_per_file_and_page_in_citation_order() -> None:
    sources = [
        Source("b.pdf", "one", page="3"),
        Source("a.md", "two"),
        Source("b.pdf", "three", page="3"),
        Source("b.pdf", "four", page="4"),
    ]
    groups = group_by_label(sources)
    assert list(groups) == ["b.pdf p. 3", "a.md", "b.pdf p. 4"]
    assert [s.text for s in groups["b.pdf p. 3"]] == ["one", "three"]


def test_assistant_backend_without_a_key_is_refused_with_a_clear_error(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match="RAG_BACKEND=assistant needs OPENAI_API_KEY"):
        load_settings(rag_backend="assistant")


async def test_first_start_seeds_the_guide_and_an_emptied_library_says_so(
    clean_env: Path, database_url: str | None
) -> None:
    (clean_env / "data").mkdir()
    (clean_env / "data" / ".hidden").write_text("not a document")
    settings = load_settings(
        _env_file=None, data_dir="data", storage_dir="storage", database_url=database_url
    )
    backend = create_backend(settings)
    assert sorted(p.name for p in (clean_env / "data").iterdir()) == [
        ".hidden",
        "ragchat-user-guide.md",
    ]
    events = await collect(backend.new_chat(), "Which file types are supported?")
    assert source_files(events) == {"ragchat-user-guide.md"}

    (clean_env / "data" / "ragchat-user-guide.md").unlink()
    assert backend.sync().removed == ["ragchat-user-guide.md"]
    events = await collect(backend.new_chat(), "Which file types are supported?")
    assert answer_text(events) == NO_CONTEXT_ANSWER
    # Restarting does not bring the sample back: it is only for the very first start.
    create_backend(settings)
    assert sorted(p.name for p in (clean_env / "data").iterdir()) == [".hidden"]


async def test_with_an_openai_compatible_server_everything_goes_through_it(
    clean_env: Path, database_url: str | None
) -> None:
    # Nothing here may need the network: on a closed machine a download fails, and it did once
    # (the tokenizer that sizes chunks for OpenAI embeddings).
    (clean_env / "data").mkdir()
    shutil.copy(GUIDE, clean_env / "data")
    with OpenAIServer() as server:
        settings = load_settings(
            _env_file=None,
            openai_api_key="sk-test",
            openai_base_url=server.base_url,
            database_url=database_url,
        )
        backend = create_backend(settings)
        events = await collect(backend.new_chat(), "Which file types are supported?")
    assert answer_text(events) == REPLY
    assert source_files(events) == {"ragchat-user-guide.md"}
    paths = [path for path, _ in server.requests]
    assert paths.count("/v1/chat/completions") == 1
    assert "/v1/embeddings" in paths
    prompt = server.requests[paths.index("/v1/chat/completions")][1]["messages"]
    assert any("Markdown (.md)" in message["content"] for message in prompt)


async def test_the_local_model_loads_once_per_process_not_per_chat(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ragchat.llamacpp

    loads = []
    real_llama = ragchat.llamacpp.Llama
    monkeypatch.setattr(
        ragchat.llamacpp, "Llama", lambda **kwargs: loads.append(kwargs) or real_llama(**kwargs)
    )
    (clean_env / "data").mkdir()
    shutil.copy(GUIDE, clean_env / "data")
    backend = create_backend(load_settings(_env_file=None))
    for _ in range(3):
        await collect(backend.new_chat(), "What can ragchat do?")
    assert len(loads) == 1


@pytest.fixture
def guide_backend_in_each_store(guide_backend, database_url: str | None, tmp_path: Path):
    """The guide backend, and one on the same models over an index of the guide in
    PostgreSQL."""
    if database_url is None:
        return guide_backend
    shutil.copytree(guide_backend.settings.data_dir, tmp_path / "data")
    settings = guide_backend.settings.model_copy(
        update={"data_dir": tmp_path / "data", "database_url": database_url}
    )
    library = Library(settings, guide_backend.library.embed_model)
    library.sync()
    return LlamaIndexBackend.from_knowledge(settings, library)


@pytest.mark.parametrize("mode", ["vector", "lexical", "hybrid"])
async def test_a_chat_can_retrieve_fewer_passages_another_way(
    guide_backend_in_each_store, mode: str
) -> None:
    chat = guide_backend_in_each_store.new_chat()
    chat.configure(top_k=1, mode=mode)
    events = await collect(chat, "Which setting points ragchat at an OpenAI-compatible server?")
    assert events[0].output.count("**ragchat-user-guide.md**") == 1
    assert "OPENAI_BASE_URL" in events[0].output


async def test_a_second_question_waits_for_the_model_and_is_told_before_its_search(
    guide_backend,
) -> None:
    first = guide_backend.new_chat(person="ann").ask("Which file types are supported?")
    assert isinstance(await anext(first), Step)  # ann's answer holds the model from here on
    second = guide_backend.new_chat(person="bob").ask("How do I add my own documents?")
    told = await anext(second)
    assert isinstance(told, Queued) and told.position == 1, "told at once, before the search"
    bob = asyncio.create_task(drain(second))
    await asyncio.sleep(0.5)
    assert not bob.done(), "bob's answer waits for ann's"
    ann_tokens = [event async for event in first if isinstance(event, Token)]
    assert ann_tokens
    events = await asyncio.wait_for(bob, 120)
    names = [type(event).__name__ for event in events]
    # The passages while waiting, then word that the turn has come, then the answer.
    assert names[:2] == ["Step", "Sources"] and Queued(0) in events
    assert names.index("Queued") < names.index("Token")
    assert guide_backend.queue.typical_answer_s is not None  # ann's answer was timed


async def test_stopping_a_waiting_question_frees_its_place(guide_backend) -> None:
    first = guide_backend.new_chat(person="ann").ask("Which file types are supported?")
    await anext(first)
    stopped = guide_backend.new_chat(person="bob").ask("How do I add my own documents?")
    assert (await anext(stopped)).position == 1
    await stopped.aclose()  # the user pressed stop (Chainlit cancels the task)
    third = guide_backend.new_chat(person="cy").ask("Which models does ragchat use?")
    assert (await anext(third)).position == 1, "bob's place was given up"
    await first.aclose()  # ann stops her answer too: the model is free for cy
    events = await asyncio.wait_for(drain(third), 120)
    assert any(isinstance(event, Token) for event in events)
