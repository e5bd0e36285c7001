"""Settings: defaults, .env, and one clear line for each bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ragchat.config import ConfigError, load_settings

from .conftest import ROOT, SETTING_NAMES


def error_for(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    return str(raised.value)


def test_defaults_are_the_local_stack(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.rag_backend == "llama_index"
    assert (settings.data_dir, settings.storage_dir) == (Path("data"), Path("storage"))
    assert settings.llm_is_local and settings.embed_is_local
    assert settings.starters and settings.bot_name == "Ragchat"


def test_dotenv_file_is_read_and_environment_wins(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text(
        "BOT_NAME=Helper\nTOP_K=7\nSTARTERS=One?|  Two? |\nLOCAL_LLM_PATH=\n"
    )
    monkeypatch.setenv("TOP_K", "2")
    settings = load_settings()
    assert settings.bot_name == "Helper"
    assert settings.top_k == 2
    assert settings.starters == ["One?", "Two?"]
    assert settings.local_llm_path is None  # empty means "the default"


def test_openai_key_switches_auto_providers(clean_env: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("EMBED_PROVIDER", "local")
    settings = load_settings()
    assert not settings.llm_is_local
    assert settings.embed_is_local


def test_chainlits_stand_in_key_counts_as_no_key(clean_env: Path, monkeypatch) -> None:
    # What `chainlit run` leaves in OPENAI_API_KEY when CI is set, whatever key was there.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-FAKE-OPENAI-API-KEY")
    settings = load_settings()
    assert settings.openai_api_key is None
    assert settings.llm_is_local and settings.embed_is_local
    monkeypatch.setenv("LLM_PROVIDER", "openai")
    assert error_for(monkeypatch) == (
        "Invalid setting: LLM_PROVIDER=openai needs OPENAI_API_KEY: Chainlit replaced "
        "OPENAI_API_KEY with a fake key because the CI environment variable is set; unset CI "
        "to use your own key"
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"RAG_BACKEND": "langchain"},
            "Invalid setting RAG_BACKEND='langchain': Input should be 'llama_index' or 'assistant'",
        ),
        (
            {"LOCAL_LLM_PATH": "/nowhere/model.gguf"},
            "Invalid setting LOCAL_LLM_PATH='/nowhere/model.gguf': no file at /nowhere/model.gguf;"
            " give the path of a .gguf model file, or leave it empty to use the bundled SmolLM2",
        ),
        (
            {"LOCAL_EMBED_PATH": "/nowhere"},
            "Invalid setting LOCAL_EMBED_PATH='/nowhere': no folder at /nowhere;",
        ),
        (
            {"TOP_K": "five"},
            "Invalid setting TOP_K='five': Input should be a valid integer",
        ),
        (
            {"LLM_TEMPERATURE": "hot"},
            "Invalid setting LLM_TEMPERATURE='hot': Input should be a valid number",
        ),
        (
            {"TOP_K": "0"},
            "Invalid setting TOP_K='0': Input should be greater than or equal to 1",
        ),
        (
            {"LLM_PROVIDER": "openai"},
            "Invalid setting: LLM_PROVIDER=openai needs OPENAI_API_KEY; set it, or use 'local' or 'auto'",
        ),
        (
            {"CHUNK_SIZE": "100", "CHUNK_OVERLAP": "100"},
            "Invalid setting: CHUNK_OVERLAP (100) must be smaller than CHUNK_SIZE (100)",
        ),
        (
            {"TOP_K": "20"},
            "Invalid setting: LLM_CONTEXT_WINDOW (4096) leaves no room for the question: TOP_K (20) "
            "passages of CHUNK_SIZE (240) tokens and an answer of LLM_MAX_TOKENS (384) need about "
            "10240; raise LLM_CONTEXT_WINDOW or lower the others",
        ),
        (
            {"OPENAI_BASE_URL": "localhost:8080"},
            "Invalid setting OPENAI_BASE_URL='localhost:8080': 'localhost:8080' is not an "
            "http(s) URL",
        ),
        (
            {"FOLLOWUP_QUERY": "guess"},
            "Invalid setting FOLLOWUP_QUERY='guess': Input should be 'auto', 'condense' or "
            "'recent_turns'",
        ),
    ],
)
def test_each_bad_value_names_setting_value_and_what_is_allowed(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    message = error_for(monkeypatch, **env)
    assert message.startswith(expected)
    assert "\n" not in message


def test_several_bad_values_give_one_line_each(clean_env: Path, monkeypatch) -> None:
    message = error_for(monkeypatch, TOP_K="x", RAG_BACKEND="y")
    assert message.splitlines() == [
        "Invalid setting RAG_BACKEND='y': Input should be 'llama_index' or 'assistant'",
        "Invalid setting TOP_K='x': Input should be a valid integer, unable to parse string "
        "as an integer",
    ]


def test_secret_is_never_echoed(clean_env: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("OPENAI_BASE_URL", "nope")
    assert "sk-very-secret" not in error_for(monkeypatch)


@pytest.mark.slow  # starts chainlit
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RAG_BACKEND": "nope"}, "Invalid setting RAG_BACKEND='nope'"),
        ({"RAG_BACKEND": "assistant"}, "RAG_BACKEND=assistant needs OPENAI_API_KEY; set it"),
        ({"TOP_K": "many"}, "Invalid setting TOP_K='many'"),
        (
            {"RAG_BACKEND": "assistant", "OPENAI_API_KEY": "sk-mine", "CI": "true"},
            "Chainlit replaced OPENAI_API_KEY with a fake key because the CI environment "
            "variable is set; unset CI",
        ),
    ],
)
def test_app_refuses_to_start_with_one_clear_line(
    clean_env: Path, env: dict[str, str], expected: str
) -> None:
    """`chainlit run app.py` with a bad setting: exit code 1, the reason, no traceback."""
    result = start_app(clean_env, env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ragchat cannot start: ")
    assert expected in last_line


def start_app(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    database = folder / "database"
    return subprocess.run(
        [sys.executable, "-m", "chainlit", "run", str(ROOT / "app.py"), "--headless"],
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(folder),
            "DB_PATH": str(database / "auth.db"),
            "HISTORY_DB_PATH": str(database / "history.db"),
            "HISTORY_FILES_DIR": str(database / "history-files"),
            **env,
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # starts chainlit
def test_an_unreadable_history_stops_the_app_and_is_left_as_it_was(clean_env: Path) -> None:
    history = clean_env / "database" / "history.db"
    history.parent.mkdir()
    history.write_bytes(b"this is not a database, but it may be someone's only copy" * 100)
    before = history.read_bytes()
    result = start_app(clean_env, {"RAG_BACKEND": "llama_index"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"ragchat cannot start: {history} cannot be read as a SQLite database (file is not a "
        "database); move it away to start with an empty history, or restore a backup"
    )
    assert history.read_bytes() == before


def test_env_example_documents_every_setting_with_its_default(clean_env: Path) -> None:
    example = (ROOT / ".env.example").read_text()
    documented = dict(
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#")
    )
    assert sorted(documented) == sorted(SETTING_NAMES)
    defaults = load_settings(_env_file=None)
    from_example = load_settings(_env_file=ROOT / ".env.example")
    assert from_example == defaults
