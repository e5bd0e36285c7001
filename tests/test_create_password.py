"""create_password.py, run as an admin would: every command, its output and exit code.

It is a thin wrapper over `ragchat users`, the console command's account group: the last tests
run both on their own databases and compare what they print. The commands run on each store: a
SQLite file (DB_PATH) and PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import chainlit as cl
import pytest
from argon2 import PasswordHasher

from ragchat.auth import UserStore, user_store
from ragchat.config import load_settings

from .conftest import ROOT, environ_without_settings
from .running_app import free_port

STRONG = "correct horse battery staple"
CREATE_PASSWORD = [sys.executable, str(ROOT / "create_password.py")]
# The console script `make` installs into the venv (pip install -e . reads [project.scripts]).
RAGCHAT = Path(sys.executable).parent / "ragchat"

pytestmark = pytest.mark.slow  # each test runs the command line in processes of its own


def invoke(
    command: list[str], settings: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*command, *args],
        check=False,
        input=stdin,
        # PYTHONPATH: the console script runs this checkout's ragchat, wherever pip installed it
        env={**environ_without_settings(), "PYTHONPATH": str(ROOT), **settings},
        cwd=Path(settings["DB_PATH"]).parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "database" / "auth.db"


@pytest.fixture
def where(db_path: Path, database_url: str | None) -> dict[str, str]:
    """The settings naming the store the commands use."""
    return {"DB_PATH": str(db_path)} | ({"DATABASE_URL": database_url} if database_url else {})


@pytest.fixture
def run(where: dict[str, str]):
    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return invoke(CREATE_PASSWORD, where, *args, stdin=stdin)

    return run


@pytest.fixture
def accounts(clean_env, db_path: Path, database_url: str | None) -> UserStore:
    """The store the commands wrote to, as the app opens it."""
    return user_store(load_settings(_env_file=None, db_path=db_path, database_url=database_url))


def test_without_arguments_it_prints_a_password_and_its_argon2id_hash(run) -> None:
    result = run()
    assert result.returncode == 0
    password = re.search(r"^Password: (\S+)$", result.stdout, re.M).group(1)
    hashed = re.search(r"^Hash:     (\S+)$", result.stdout, re.M).group(1)
    assert len(password) == 20
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, password)


def test_add_generates_and_prints_a_password_that_signs_in(run, accounts: UserStore) -> None:
    result = run("add", "alice")
    assert result.returncode == 0, result.stderr
    assert "Created user alice." in result.stdout
    password = re.search(r"Password \(shown only now\): (\S+)", result.stdout).group(1)
    assert accounts.authenticate("alice", password, None).role == "user"


def test_add_admin_with_password_from_stdin(run, accounts: UserStore) -> None:
    result = run("add", "root", "--admin", "--password-stdin", stdin=STRONG + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Created admin root.\n"  # a given password is never echoed
    assert accounts.authenticate("root", STRONG, None).role == "admin"


def test_reset_disable_enable_delete_and_list(run, accounts: UserStore) -> None:
    run("add", "bob", "--password-stdin", stdin=STRONG)
    new = "another long passphrase"
    assert (
        run("reset", "bob", "--password-stdin", stdin=new).stdout
        == "Changed the password of bob.\n"
    )
    store = accounts
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


# Conversations are in SQLite here whatever the accounts' store: files only, for now.
@pytest.mark.parametrize("database_url", ["files"], indirect=True)
async def test_deleting_an_account_deletes_its_conversations_and_files(run, tmp_path: Path) -> None:
    from chainlit.context import init_http_context
    from chainlit.user import User

    from ragchat.history import HistoryDataLayer, SqliteHistory

    init_http_context()
    layer = HistoryDataLayer(
        SqliteHistory(tmp_path / "database" / "history.db"), tmp_path / "database" / "history-files"
    )
    threads = {}
    for name in ("bob", "carol"):
        run("add", name, "--password-stdin", stdin=STRONG)
        user = await layer.create_user(User(identifier=name))
        threads[name] = str(uuid.uuid4())
        await layer.update_thread(threads[name], name=f"{name}'s question", user_id=user.id)
        step = str(uuid.uuid4())
        await layer.create_step(
            {
                "id": step,
                "threadId": threads[name],
                "name": name,
                "type": "assistant_message",
                "output": "answer",
                "streaming": False,
            }
        )
        await layer.create_element(
            cl.Text(
                name="source.md", content=f"{name}'s passage", for_id=step, thread_id=threads[name]
            )
        )
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


def test_adding_an_existing_user_keeps_the_old_password(run, accounts: UserStore) -> None:
    run("add", "dan", "--password-stdin", stdin=STRONG)
    result = run("add", "DAN", "--password-stdin", stdin="a different passphrase")
    assert result.returncode == 1
    assert "The user 'DAN' already exists." in result.stderr
    assert accounts.authenticate("dan", STRONG, None) is not None


@pytest.mark.parametrize("database_url", ["files"], indirect=True)
def test_unknown_command_and_unusable_database_exit_non_zero(run, db_path: Path) -> None:
    assert run("promote", "x").returncode == 2
    db_path.parent.mkdir(parents=True)
    db_path.write_text("garbage " * 200)
    result = run("list")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: Invalid setting DB_PATH=")
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_url_is_one_line_without_the_password(db_path: Path) -> None:
    url = f"postgresql://ragchat:hunter2@127.0.0.1:{free_port()}/accounts"
    for command in (CREATE_PASSWORD, [str(RAGCHAT), "users"]):
        result = invoke(command, {"DB_PATH": str(db_path), "DATABASE_URL": url}, "list")
        assert result.returncode == 1
        assert result.stderr.startswith(
            "Error: Invalid setting DATABASE_URL='postgresql://ragchat:***@"
        )
        assert "cannot reach the database" in result.stderr
        assert len(result.stderr.splitlines()) == 1 and "hunter2" not in result.stderr


def test_the_ragchat_command_lists_the_accounts_create_password_made(run, where) -> None:
    assert RAGCHAT.is_file(), f"no console script {RAGCHAT}: `make` runs pip install -e ."
    run("add", "erin", "--password-stdin", stdin=STRONG)
    run("add", "root", "--admin", "--password-stdin", stdin=STRONG)
    run("disable", "erin")
    result = invoke([str(RAGCHAT), "users"], where, "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{'erin':32} user    (disabled)",
        f"{'root':32} admin ",
    ]


# One session of commands, good and bad, as each command prints it: only the program's name in
# a usage error may differ.
SESSION = [
    (("add", "frank", "--admin", "--password-stdin"), STRONG),
    (("add", "FRANK", "--password-stdin"), "a different passphrase"),
    (("add", "grace", "--password-stdin"), "short"),
    (("reset", "nobody"), None),
    (("disable", "frank"), None),
    (("list",), None),
    (("promote", "frank"), None),
    (("delete", "frank"), None),
    (("list",), None),
]


def test_ragchat_users_and_create_password_behave_the_same(tmp_path: Path, where) -> None:
    commands = {"create_password.py": CREATE_PASSWORD, "ragchat users": [str(RAGCHAT), "users"]}
    seen = {}
    for name, command in commands.items():  # one after the other: the session ends empty
        db_path = tmp_path / name.replace(" ", "-") / "database" / "auth.db"
        db_path.parent.parent.mkdir()
        seen[name] = [
            (result.returncode, result.stdout, result.stderr.replace(name, "PROGRAM"))
            for args, stdin in SESSION
            for result in [invoke(command, {**where, "DB_PATH": str(db_path)}, *args, stdin=stdin)]
        ]
    assert seen["ragchat users"] == seen["create_password.py"]
    assert [code for code, _, _ in seen["ragchat users"]] == [0, 1, 1, 1, 0, 0, 2, 0, 0]
    assert "Error: No such command 'promote'." in seen["ragchat users"][6][2]


def test_ragchat_users_alone_prints_a_password_and_its_hash(db_path: Path) -> None:
    result = invoke([str(RAGCHAT), "users"], {"DB_PATH": str(db_path)})
    assert result.returncode == 0, result.stderr
    password = re.search(r"^Password: (\S+)$", result.stdout, re.MULTILINE).group(1)
    hashed = re.search(r"^Hash:     (\S+)$", result.stdout, re.MULTILINE).group(1)
    assert PasswordHasher().verify(hashed, password)
