"""The hosted assistant backend, driven through the official `openai` client against a server on
127.0.0.1 that speaks OpenAI's wire protocol for files, vector stores and streamed responses.

Every test that takes the `server` fixture runs twice: against a server that behaves as OpenAI
does, and against one that behaves as an independent implementation of the protocol does
(citations only in the finished events, results named by internal ids, no code interpreter)."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr

from ragchat.backends import (
    AnswerFailed,
    Image,
    QuestionRejected,
    Source,
    Sources,
    Step,
    Token,
    create_backend,
)
from ragchat.backends.assistant import AssistantBackend
from ragchat.config import ConfigError, load_settings

from .assistant_server import (
    CITATION_PLACES,
    CODE,
    INDEPENDENT,
    NO_CODE_INTERPRETER,
    NOTHING_FOUND,
    OPENAI,
    AssistantServer,
    Behaviour,
    Failure,
)
from .conftest import ROOT, environ_without_settings

OTTERS = "Otters hold hands while they sleep so they do not drift apart.\n\nThey eat sea urchins."
HERONS = "Herons stand still in shallow water and spear fish with their beaks."


@pytest.fixture(params=[OPENAI, INDEPENDENT], ids=lambda behaviour: behaviour.name)
def server(request: pytest.FixtureRequest) -> Iterator[AssistantServer]:
    with AssistantServer(request.param) as running:
        yield running


def only(behaviour: Behaviour):
    """Run a test against a server of this behaviour only."""
    return pytest.mark.parametrize("server", [behaviour], indirect=True, ids=[behaviour.name])


@pytest.fixture
def data(clean_env: Path) -> Path:
    folder = clean_env / "data"
    folder.mkdir()
    (folder / "otters.md").write_text(OTTERS)
    (folder / "birds").mkdir()
    (folder / "birds" / "herons.txt").write_text(HERONS)
    return folder


def settings_for(server: AssistantServer, data: Path, **overrides):
    return load_settings(
        _env_file=None,
        rag_backend="assistant",
        openai_api_key="sk-test",
        openai_base_url=server.base_url,
        data_dir=data,
        storage_dir=data.parent / "storage",
        **overrides,
    )


@pytest.fixture
def backend(server: AssistantServer, data: Path) -> AssistantBackend:
    return create_backend(settings_for(server, data, openai_timeout=2))


async def collect(chat, question: str) -> list:
    return [event async for event in chat.ask(question)]


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))


def posts(server: AssistantServer, path: str) -> int:
    return sum(1 for method, p in server.requests if (method, p) == ("POST", path))


def test_the_documents_are_synced_into_a_vector_store_by_content(
    server: AssistantServer, data: Path
) -> None:
    settings = settings_for(server, data)
    backend = create_backend(settings)
    assert server.store_files(backend.store_id) == {"otters.md": OTTERS, "herons.txt": HERONS}

    # A restart finds its store again and uploads nothing that did not change.
    uploads = posts(server, "/files")
    again = create_backend(settings)
    assert again.store_id == backend.store_id and posts(server, "/files") == uploads

    (data / "otters.md").write_text(OTTERS + "\n\nOtters have the densest fur of any animal.")
    (data / "birds" / "herons.txt").unlink()
    (data / "owls.txt").write_text("Owls turn their heads 270 degrees.")
    (data / "empty.txt").write_text("")
    (data / "hawks.txt").write_text("Hawks see ultraviolet light.")
    report = again.sync()
    assert (report.added, report.changed, report.removed, report.unchanged) == (
        ["hawks.txt", "owls.txt"],
        ["otters.md"],
        ["birds/herons.txt"],
        [],
    )
    assert report.skipped == {"empty.txt": "the file is empty"}
    assert report.summary().startswith(
        "2 uploaded, 1 replaced, 1 removed, 0 unchanged, 1 skipped in "
    )
    assert report.summary().endswith(" s\n  skipped empty.txt: the file is empty")
    (data / "hawks.txt").unlink()
    summary = again.sync().summary()
    assert summary.startswith("0 uploaded, 0 replaced, 1 removed, 2 unchanged, 1 skipped in ")
    assert sorted(server.store_files(backend.store_id)) == ["otters.md", "owls.txt"]
    assert "densest fur" in server.store_files(backend.store_id)["otters.md"]
    assert len(server.files) == 2  # replaced and removed files are deleted, not only unlinked


def test_files_the_local_index_refuses_are_refused_here_too_and_not_uploaded(
    server: AssistantServer, backend: AssistantBackend, data: Path, tmp_path: Path
) -> None:
    from .test_ingest import docx_bomb

    (data / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me".encode("latin-1"))
    (data / "bomb.docx").write_bytes(docx_bomb())
    report = backend.sync()
    assert report.skipped == {
        "latin1.txt": "the text is not UTF-8; save it as UTF-8 and add it again",
        "bomb.docx": "it unzips to 60.0 MB, more than the 50 MB a document may unzip to "
        "(UNZIPPED_MAX_MB); split it into smaller documents, or ask the administrator to "
        "raise UNZIPPED_MAX_MB",
    }
    assert sorted(server.store_files(backend.store_id)) == ["herons.txt", "otters.md"]

    upload = tmp_path / "upload"
    upload.write_bytes(docx_bomb())
    uploads = posts(server, "/files")
    outcome = backend.new_chat().add_upload(upload, "bomb.docx")
    assert outcome.summary().startswith("bomb.docx was not added: it unzips to 60.0 MB")
    assert posts(server, "/files") == uploads


def team_store(server: AssistantServer) -> str:
    """A vector store someone else made, holding a file of theirs (without ragchat's
    attributes)."""
    from openai import OpenAI

    client = OpenAI(api_key="sk-test", base_url=server.base_url)
    store = client.vector_stores.create(name="team knowledge")
    theirs = client.files.create(
        file=("handbook.txt", b"Fridays are for demos."), purpose="assistants"
    )
    client.vector_stores.files.create(store.id, file_id=theirs.id)
    return store.id


def test_a_store_named_by_id_keeps_the_files_others_put_there(
    server: AssistantServer, data: Path
) -> None:
    store_id = team_store(server)
    backend = create_backend(settings_for(server, data, openai_vector_store_id=store_id))
    (data / "otters.md").unlink()
    backend.sync()
    assert sorted(server.store_files(store_id)) == ["handbook.txt", "herons.txt"]
    assert not (data.parent / "storage" / "assistant.json").exists()


@only(OPENAI)  # the other server names results by internal ids: no name to go by
async def test_a_file_the_app_did_not_upload_goes_by_its_file_name(
    server: AssistantServer, data: Path
) -> None:
    store_id = team_store(server)
    backend = create_backend(settings_for(server, data, openai_vector_store_id=store_id))
    events = await collect(backend.new_chat(), "What are Fridays for?")
    assert [(s.file_name, s.text) for s in events[-1].items] == [
        ("handbook.txt", "Fridays are for demos.")
    ]


async def test_a_two_turn_conversation_streams_cites_and_continues(
    server: AssistantServer, backend: AssistantBackend
) -> None:
    chat = backend.new_chat()
    events = await collect(chat, "How do otters sleep?")

    [step] = [e for e in events if isinstance(e, Step)]  # shown once, whatever repeats it
    assert events[0] == step and step.name == "Search files"
    assert step.input == "How do otters sleep?"
    assert step.output.startswith("**otters.md** (score 1.00)\n\nOtters hold hands")
    tokens = [e for e in events if isinstance(e, Token)]
    assert len(tokens) > 3  # streamed, not sent whole
    assert text_of(events).startswith("From otters.md: Otters hold hands")
    sources = events[-1]
    assert isinstance(sources, Sources)
    assert [s.file_name for s in sources.items] == ["otters.md"]
    assert "hold hands" in sources.items[0].text

    first = chat.state["previous_response_id"]
    await collect(chat, "And what do they eat?")
    assert server.responses[chat.state["previous_response_id"]]["previous_response_id"] == first

    # A resumed chat continues the same conversation from the state stored with the thread.
    resumed = backend.new_chat(state=dict(chat.state))
    await collect(resumed, "And herons?")
    assert (
        server.responses[resumed.state["previous_response_id"]]["previous_response_id"]
        == (chat.state["previous_response_id"])
    )


@pytest.mark.parametrize("place", sorted(CITATION_PLACES))
async def test_citations_count_wherever_the_server_puts_them(data: Path, place: str) -> None:
    behaviour = replace(INDEPENDENT, name=place, citations_in=frozenset({place}))
    with AssistantServer(behaviour) as server:
        backend = create_backend(settings_for(server, data))
        events = await collect(backend.new_chat(), "Do herons stand still?")
    assert events[-1] == Sources((Source("herons.txt", HERONS, score=1.0),))


@only(OPENAI)
async def test_the_code_interpreter_shows_its_code_output_and_pictures(
    server: AssistantServer, data: Path
) -> None:
    backend = create_backend(settings_for(server, data, assistant_code_interpreter=True))
    chat = backend.new_chat()
    events = await collect(chat, "Compute how many otters hold hands")
    [run] = [e for e in events if isinstance(e, Step) and e.name == "Run code"]
    assert (run.input, run.output, run.type) == (CODE, "42\n", "tool")
    [picture] = [e for e in events if isinstance(e, Image)]
    assert picture.url.startswith("data:image/png;base64,")
    tools = server.responses[chat.state["previous_response_id"]]["tools"]
    assert [tool["type"] for tool in tools] == ["file_search", "code_interpreter"]


@only(INDEPENDENT)
async def test_a_server_without_the_code_interpreter_is_asked_without_it_from_then_on(
    server: AssistantServer, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = create_backend(settings_for(server, data, assistant_code_interpreter=True))
    caplog.set_level(logging.INFO, logger="ragchat")
    # The question that met the refusal is answered all the same...
    events = await collect(backend.new_chat(), "How do otters sleep?")
    assert text_of(events).startswith("From otters.md: Otters hold hands")
    assert [s.file_name for s in events[-1].items] == ["otters.md"]
    # ...and no later question offers the tool again, in this chat or another.
    events = await collect(backend.new_chat(), "Compute how many otters hold hands")
    assert text_of(events).startswith("From otters.md")
    offered = [[tool["type"] for tool in asked["tools"]] for asked in server.asked]
    assert offered == [["file_search", "code_interpreter"], ["file_search"], ["file_search"]]
    assert [asked["include"] for asked in server.asked[1:]] == [["file_search_call.results"]] * 2
    [said] = [r.getMessage() for r in caplog.records if "no code interpreter" in r.getMessage()]
    assert said == (
        f"The assistant at {server.base_url} has no code interpreter ({NO_CODE_INTERPRETER}): "
        "questions are asked without it from now on. Set ASSISTANT_CODE_INTERPRETER=false "
        "to stop offering it."
    )


@only(INDEPENDENT)
async def test_a_refusal_that_is_not_about_the_code_interpreter_keeps_it(
    server: AssistantServer, data: Path
) -> None:
    backend = create_backend(settings_for(server, data, assistant_code_interpreter=True))
    server.failures = [Failure(status=400)]  # the retry without the tool is refused too
    with pytest.raises(AnswerFailed, match=r"^The assistant answered with an error \(400\)"):
        await collect(backend.new_chat(), "How do otters sleep?")
    assert backend.code_interpreter  # nothing showed the tool was the problem


async def test_nothing_found_means_no_sources(backend: AssistantBackend) -> None:
    events = await collect(backend.new_chat(), "Quantum chromodynamics?")
    assert text_of(events) == NOTHING_FOUND
    assert not any(isinstance(e, Sources) for e in events)


async def test_an_upload_is_searched_in_its_conversation_only(
    server: AssistantServer, backend: AssistantBackend, tmp_path: Path
) -> None:
    upload = tmp_path / "upload"
    upload.write_text("Wombats produce cube-shaped droppings.")
    mine, theirs = backend.new_chat(), backend.new_chat()

    outcome = mine.add_upload(upload, "../wombat facts.md")
    assert (
        outcome.summary()
        == "Added wombat facts.md to this conversation; it can be asked about now."
    )
    events = await collect(mine, "What shape are wombat droppings?")
    assert [s.file_name for s in events[-1].items] == ["wombat facts.md"]

    other = await collect(theirs, "What shape are wombat droppings?")
    assert text_of(other) == NOTHING_FOUND
    asked = server.responses[theirs.state["previous_response_id"]]
    assert asked["tools"][0]["vector_store_ids"] == [backend.store_id]
    assert "wombat facts.md" not in server.store_files(backend.store_id)

    refused = mine.add_upload(upload, "tool.exe")
    assert refused.problem.startswith("the file type .exe is not supported")


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        pytest.param(
            [Failure(delay=3)] * 3,
            "The assistant did not answer within 2 s. Try again in a moment.",
            marks=pytest.mark.slow,  # three timeouts of 2 s
        ),
        (
            [Failure(status=401)],
            "The assistant refused this server's API key. This is not "
            "something you did: ask the administrator to check OPENAI_API_KEY.",
        ),
        (
            [Failure(status=429, headers={"retry-after": "1"})] * 3,
            "The assistant is busy right now (rate limited). Try again in 1 s.",
        ),
        (
            [Failure(status=500)] * 3,
            "The assistant answered with an error (500). Try again; if it "
            "keeps happening, tell the administrator.",
        ),
    ],
    ids=["slow", "401", "429", "500"],
)
async def test_each_failure_has_its_own_message_and_the_chat_goes_on(
    server: AssistantServer, backend: AssistantBackend, failures: list, expected: str
) -> None:
    chat = backend.new_chat()
    server.failures = list(failures)
    with pytest.raises(AnswerFailed) as failed:
        await collect(chat, "How do otters sleep?")
    assert str(failed.value) == expected and not failed.value.partial
    assert server.failures == []  # transient failures were retried; 401 was not
    events = await collect(chat, "How do otters sleep?")
    assert text_of(events).startswith("From otters.md")


async def test_a_transient_error_is_retried_and_the_user_sees_only_the_answer(
    server: AssistantServer, backend: AssistantBackend
) -> None:
    server.failures = [Failure(status=503)]
    started = posts(server, "/responses")
    events = await collect(backend.new_chat(), "How do otters sleep?")
    assert text_of(events).startswith("From otters.md")
    assert posts(server, "/responses") - started == 2


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_a_stream_that_breaks_keeps_the_partial_answer_marked(
    server: AssistantServer, backend: AssistantBackend, reset: bool
) -> None:
    chat = backend.new_chat()
    server.failures = [Failure(drop_after_tokens=2, reset=reset)]
    received = []
    with pytest.raises(AnswerFailed) as failed:
        async for event in chat.ask("How do otters sleep?"):
            received.append(event)
    assert failed.value.partial
    assert (
        str(failed.value)
        == "The answer stopped because the connection to the assistant broke. Try again."
    )
    assert text_of(received) == "From otters.md: "
    events = await collect(chat, "How do otters sleep?")
    assert isinstance(events[-1], Sources)


async def test_a_refused_connection_names_the_server(data: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with AssistantServer() as server:
        backend = create_backend(settings_for(server, data, openai_timeout=2))
    started = time.monotonic()
    backend.aclient = backend.aclient.with_options(base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(AnswerFailed) as failed:
        await collect(backend.new_chat(), "How do otters sleep?")
    assert str(failed.value).startswith("The assistant could not be reached at http://127.0.0.1:")
    assert time.monotonic() - started < 30


async def test_empty_and_huge_questions_are_refused(backend: AssistantBackend) -> None:
    for question in ("  ", "why " * 6000):
        with pytest.raises(QuestionRejected):
            await collect(backend.new_chat(), question)


@pytest.mark.slow  # the command's start costs seconds
@only(OPENAI)  # the report's terms, whatever the server
def test_the_ingest_command_syncs_the_vector_store(server: AssistantServer, data: Path) -> None:
    def ingest(*args: str, base_url: str = server.base_url) -> subprocess.CompletedProcess:
        env = environ_without_settings() | {
            "RAG_BACKEND": "assistant",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": base_url,
            "DATA_DIR": str(data),
            "STORAGE_DIR": str(data.parent / "storage"),
            "OPENAI_TIMEOUT": "5",
        }
        return subprocess.run(
            [sys.executable, "-m", "ragchat", "ingest", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    first = ingest()
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(
        f"{data}: 2 uploaded, 0 replaced, 0 removed, 0 unchanged, 0 skipped in "
    )
    assert "Uploading files" in first.stderr  # the progress bar
    assert ingest().stdout.startswith(
        f"{data}: 0 uploaded, 0 replaced, 0 removed, 2 unchanged, 0 skipped in "
    )
    rebuilt = ingest("--rebuild")
    assert rebuilt.stdout.startswith(
        f"Rebuilt the index. {data}: 0 uploaded, 2 replaced, 0 removed, 0 unchanged"
    )
    assert len(server.files) == 2

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    failed = ingest(base_url=closed)
    assert failed.returncode == 1
    assert (
        failed.stderr.strip()
        .splitlines()[-1]
        .startswith("Error: The assistant could not be reached at http://127.0.0.1:")
    )


def test_the_watcher_calls_the_api_only_when_the_folder_changed(
    server: AssistantServer, backend: AssistantBackend, data: Path
) -> None:
    before = len(server.requests)
    for _ in range(3):
        assert not backend.sync().changed_anything
    assert len(server.requests) == before
    (data / "owls.txt").write_text("Owls turn their heads 270 degrees.")
    assert backend.sync().added == ["owls.txt"]


def test_a_wrong_key_stops_the_app_at_start_with_one_line(
    server: AssistantServer, data: Path
) -> None:
    settings = settings_for(server, data).model_copy(
        update={"openai_api_key": SecretStr("sk-wrong")}
    )
    with pytest.raises(
        ConfigError,
        match="^the assistant backend could not start: The assistant refused this server's API key",
    ):
        create_backend(settings)


async def test_the_passages_found_come_before_the_answer_and_those_cited_after_it(
    backend: AssistantBackend,
) -> None:
    # The chat quotes the supporting sentences of the first, before the answer is written.
    events = await collect(backend.new_chat(), "How do otters sleep?")
    first_token = next(i for i, e in enumerate(events) if isinstance(e, Token))
    [found] = [e for e in events[:first_token] if isinstance(e, Sources)]
    passage = Source("otters.md", OTTERS.split("\n\n")[0], score=1.0)  # the server's chunk
    assert passage in found.items
    assert events[-1] == Sources((passage,))
