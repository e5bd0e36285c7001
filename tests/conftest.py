"""Fixtures over real parts: real folders, the real bundled models, a real index."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragchat.config import Settings

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "ragchat-user-guide.md"
SETTING_NAMES = {name.upper() for name in Settings.model_fields}


# A test is slow (marked so, and left out by `pytest -m "not slow"`) when it starts the app, a
# browser or the local models, through one of these fixtures or as marked by hand.
SLOW_FIXTURES = {
    "app", "assistant_app", "deployed", "proxied", "small_app",  # a running app
    "browser", "browser_page",  # Chromium
    "guide_backend", "local_llm", "embed_model", "cranfield",  # the local models
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def is_setting(variable: str) -> bool:
    # Settings are read case-insensitively: `openai_api_key` counts as OPENAI_API_KEY.
    return variable.upper() in SETTING_NAMES


def environ_without_settings() -> dict[str, str]:
    """This process's environment minus every ragchat setting, for apps the tests start.

    CI goes too: with it set, `chainlit run` replaces OPENAI_API_KEY with a fake key, and CI
    machines set it."""
    return {key: value for key, value in os.environ.items() if not is_setting(key) and key != "CI"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ragchat setting from the developer's shell or .env: each test sets its own."""
    for name in [key for key in os.environ if is_setting(key)]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # so no .env of the project is read
    return tmp_path


@pytest.fixture(scope="session")
def guide_backend(tmp_path_factory: pytest.TempPathFactory):
    """The llama_index backend on the real local models, over a folder holding the user guide."""
    from ragchat.backends import create_backend
    from ragchat.config import load_settings

    root = tmp_path_factory.mktemp("guide")
    (root / "data").mkdir()
    shutil.copy(GUIDE, root / "data")
    saved = {name: os.environ.pop(name) for name in list(os.environ) if is_setting(name)}
    try:
        settings = load_settings(
            _env_file=None, data_dir=root / "data", storage_dir=root / "storage"
        )
        yield create_backend(settings)
    finally:
        os.environ.update(saved)


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A real PostgreSQL server with pgvector, started once for the whole run."""
    from .postgres_server import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(params=["files", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Each store a test uses: the embedded default (None: local files) and PostgreSQL (a
    database of the test's own). The same test runs against both."""
    if request.param == "files":
        yield None
        return
    from .postgres_server import new_database

    with new_database(request.getfixturevalue("postgres")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Chromium (Debian's: Playwright cannot download its own here), for a module's tests."""
    from playwright.sync_api import sync_playwright

    from .running_app import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
