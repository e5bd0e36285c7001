"""create_password.py, run as an admin would: every command, its output and exit code."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import chainlit as cl
import pytest
from argon2 import PasswordHasher

from ragchat.auth import UserStore

from .conftest import ROOT, environ_without_settings

STRONG = "correct horse battery staple"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "database" / "auth.db"


@pytest.fixture
def run(db_path: Path, tmp_path: Path):
    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        env = environ_without_settings()
        return subprocess.run(
            [sys.executable, str(ROOT / "create_password.py"), *args],
            input=stdin,
            env={**env, "DB_PATH": str(db_path)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def test_without_arguments_it_prints_a_password_and_its_argon2id_hash(run) -> None:
    result = run()
    assert result.returncode == 0
    password = re.search(r"^Password: (\S+)$", result.stdout, re.M).group(1)
    hashed = re.search(r"^Hash:     (\S+)$", result.stdout, re.M).group(1)
    assert len(password) == 20
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, password)


def test_add_generates_and_prints_a_password_that_signs_in(run, db_path: Path) -> None:
    result = run("add", "alice")
    assert result.returncode == 0, result.stderr
    assert "Created user alice." in result.stdout
    password = re.search(r"Password \(shown only now\): (\S+)", result.stdout).group(1)
    assert UserStore(db_path).authenticate("alice", password, None).role == "user"


def test_add_admin_with_password_from_stdin(run, db_path: Path) -> None:
    result = run("add", "root", "--admin", "--password-stdin", stdin=STRONG + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Created admin root.\n"  # a given password is never echoed
    assert UserStore(db_path).authenticate("root", STRONG, None).role == "admin"


def test_reset_disable_enable_delete_and_list(run, db_path: Path) -> None:
    run("add", "bob", "--password-stdin", stdin=STRONG)
    new = "another long passphrase"
    assert run("reset", "bob", "--password-stdin", stdin=new).stdout == "Changed the password of bob.\n"
    store = UserStore(db_path)
    assert store.authenticate("bob", STRONG, None) is None
    assert store.authenticate("bob", new, None) is not None

    assert run("disable", "bob").stdout == "Disabled bob.\n"
    assert "bob" in run("list").stdout and "(disabled)" in run("list").stdout
    assert store.authenticate("bob", new, None) is None
    assert run("enable", "bob").stdout == "Enabled bob.\n"
    assert store.authenticate("bob", new, None) is not None

    generated = run("reset", "bob")
    password = re.search(r"Password \(shown only now\): (\S+)", generated.stdout).group(1)
    assert store.authenticate("bob", password, None) is not None

    assert run("delete", "bob").stdout == "Deleted bob.\n"
    assert run("list").stdout == "No accounts yet.\n"


async def test_deleting_an_account_deletes_its_conversations_and_files(
    run, tmp_path: Path
) -> None:
    from chainlit.context import init_http_context
    from chainlit.user import User

    from ragchat.history import HistoryDataLayer

    init_http_context()
    layer = HistoryDataLayer(tmp_path / "database" / "history.db", tmp_path / "database" / "history-files")
    threads = {}
    for name in ("bob", "carol"):
        run("add", name, "--password-stdin", stdin=STRONG)
        user = await layer.create_user(User(identifier=name))
        threads[name] = str(uuid.uuid4())
        await layer.update_thread(threads[name], name=f"{name}'s question", user_id=user.id)
        step = str(uuid.uuid4())
        await layer.create_step({"id": step, "threadId": threads[name], "name": name,
                                 "type": "assistant_message", "output": "answer", "streaming": False})
        await layer.create_element(cl.Text(name="source.md", content=f"{name}'s passage",
                                           for_id=step, thread_id=threads[name]))
    files = sorted((tmp_path / "database" / "history-files").rglob("*"))
    assert len([f for f in files if f.is_file()]) == 2

    assert run("delete", "bob").stdout == "Deleted bob and 1 conversation.\n"

    assert await layer.get_thread(threads["bob"]) is None
    assert (await layer.get_thread(threads["carol"]))["elements"][0]["name"] == "source.md"
    left = [f for f in (tmp_path / "database" / "history-files").rglob("*") if f.is_file()]
    assert [f.read_text() for f in left] == ["carol's passage"]
    await layer.close()


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("add", "carol", "--password-stdin"), "short\n", "The password has 5 characters"),
        (("add", "carol", "--password-stdin"), "password1234\n", "most common ones"),
        (("add", "carol", "--password-stdin"), "", "standard input was empty"),
        (("add", "../carol"), None, "'../carol' is not a valid username"),
        (("reset", "nobody"), None, "There is no user 'nobody'."),
        (("disable", "nobody"), None, "There is no user 'nobody'."),
        (("enable", "nobody"), None, "There is no user 'nobody'."),
        (("delete", "nobody"), None, "There is no user 'nobody'."),
    ],
)
def test_every_error_is_explained_and_exits_non_zero(run, args, stdin, message) -> None:
    result = run(*args, stdin=stdin)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_adding_an_existing_user_keeps_the_old_password(run, db_path: Path) -> None:
    run("add", "dan", "--password-stdin", stdin=STRONG)
    result = run("add", "DAN", "--password-stdin", stdin="a different passphrase")
    assert result.returncode == 1
    assert "The user 'DAN' already exists." in result.stderr
    assert UserStore(db_path).authenticate("dan", STRONG, None) is not None


def test_unknown_command_and_unusable_database_exit_non_zero(run, db_path: Path) -> None:
    assert run("promote", "x").returncode == 2
    db_path.parent.mkdir(parents=True)
    db_path.write_text("garbage " * 200)
    result = run("list")
    assert result.returncode == 1
    assert "Invalid setting DB_PATH=" in result.stderr
