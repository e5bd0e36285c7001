"""A deployment rehearsal: the repository as Upsun runs it, read-only but for its mounts.

The committed files are copied to a temporary folder and made read-only, the deploy hook and
the start command from .upsun/config.yaml run there with Upsun's environment (PORT, the
variables, HOME in the application folder), and a browser signs in and asks a question. Then a
document is copied into the data mount, as `upsun mount:upload` does, and answered without a
restart. Nothing may be written outside the mounts.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Page, expect, sync_playwright

from .conftest import ROOT, environ_without_settings
from .running_app import send
from .test_browser import (
    ANSWER,
    CHROMIUM,
    CHROMIUM_ARGS,
    free_port,
    sign_in,
    sources_of,
    wait_until_served,
)

CONFIG = yaml.safe_load((ROOT / ".upsun" / "config.yaml").read_text())
APP = CONFIG["applications"]["ragchat"]
MOUNTS = set(APP["mounts"])


def committed_files() -> list[str]:
    return subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file outside the mounts, with its size and modification time."""
    files = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if relative.parts[0] not in MOUNTS and not path.is_dir():
            files[relative.as_posix()] = (path.stat().st_size, path.stat().st_mtime_ns)
    return files


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict]]:
    app = tmp_path_factory.mktemp("upsun") / "app"
    for name in committed_files():
        if (ROOT / name).exists():  # Chainlit deletes .files (and its .gitkeep) when it stops
            (app / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, app / name)
    for mount in MOUNTS:  # Upsun mounts them whatever the build left
        (app / mount).mkdir(exist_ok=True)
    for path in app.rglob("*"):  # read-only, as after Upsun's build, but for the mounts
        if path.relative_to(app).parts[0] not in MOUNTS:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = snapshot(app)

    port = free_port()
    env = environ_without_settings()
    env.pop("CHAINLIT_AUTH_SECRET", None)
    env.update({k: str(v) for k, v in APP["variables"]["env"].items()})
    env.update(PORT=str(port), HOME=str(app), PATH=f"{Path(sys.executable).parent}:{env['PATH']}")

    subprocess.run(["sh", "-c", APP["hooks"]["deploy"]], cwd=app, env=env, check=True)
    log = app.parent / "app.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            ["sh", "-c", APP["web"]["commands"]["start"]],
            cwd=app, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_until_served(f"http://127.0.0.1:{port}/", server, log, timeout=300)
        yield f"http://127.0.0.1:{port}", app, env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    changed = {k: v for k, v in snapshot(app).items() if before.get(k) != v}
    assert changed == {}, f"written outside the mounts: {sorted(changed)}"


@pytest.fixture
def page(deployed) -> Iterator[Page]:
    url, app, env = deployed
    # What `upsun ssh -- python create_password.py add ...` does on the environment.
    subprocess.run(
        [sys.executable, "create_password.py", "add", "ops", "--admin", "--password-stdin"],
        input="a long ops passphrase", cwd=app, env=env, check=True, capture_output=True,
        text=True,
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#email")).to_be_visible(timeout=60_000)  # the login page
        sign_in(page, "ops", "a long ops passphrase")
        expect(page.locator(ANSWER).first).to_be_visible(timeout=60_000)
        yield page
        browser.close()


def ask(page: Page, question: str):
    before = page.locator(ANSWER).count()  # .last would still be the previous answer
    send(page, question)
    answer = page.locator(ANSWER).nth(before)
    expect(answer).to_contain_text("Sources:", timeout=180_000)
    return answer


def test_the_deployed_app_answers_and_follows_the_data_mount(deployed, page: Page) -> None:
    _, app, _ = deployed
    answer = ask(page, "Which file types are supported?")
    expect(sources_of(answer)).to_have_text("ragchat-user-guide.md")

    (app / "data" / "capybaras.md").write_text("Capybaras are the largest rodents on Earth.")
    page.wait_for_timeout(10_000)  # the data mount is checked every 5 s
    answer = ask(page, "Which animals are the largest rodents?")
    expect(sources_of(answer).first).to_have_text("capybaras.md")
