"""`ragchat migrate --to`: an installation in files (SQLite, LanceDB, STORAGE_DIR) copied into a
real PostgreSQL, and the app then working there as it did, with nothing of the source changed."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ragchat.auth import user_store
from ragchat.config import load_settings
from ragchat.history import history_layer, history_schema
from ragchat.ingest import Library
from ragchat.migrate import MigrationRefused, check, migrate

from .conftest import ROOT, environ_without_settings
from .postgres_server import new_database, psql
from .test_history import conversation
from .test_ingest import embed_model  # noqa: F401  (the local embedding model, once)

ALICE, BOB = ("alice", "correct horse battery 1"), ("bob", "correct horse battery 2")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder`, by its content; an SQLite database by its rows (reading one
    may fold its write-ahead log into the file, which changes its bytes but not its rows)."""
    contents = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.endswith(("-wal", "-shm")):
            continue
        if path.suffix == ".db":
            with sqlite3.connect(path) as db:
                content = "\n".join(db.iterdump()).encode()
        else:
            content = path.read_bytes()
        contents[str(path.relative_to(folder))] = hashlib.sha256(content).hexdigest()
    return contents


def files_settings(root: Path, **extra: object):
    return load_settings(
        _env_file=None,
        data_dir=root / "data",
        storage_dir=root / "storage",
        db_path=root / "database" / "auth.db",
        history_db_path=root / "database" / "history.db",
        history_files_dir=root / "database" / "history-files",
        **extra,
    )


async def test_an_installation_in_files_moves_whole_and_the_files_stay_as_they_were(
    tmp_path: Path,
    postgres: str,
    embed_model,  # noqa: F811
) -> None:
    source = files_settings(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "otters.md").write_text("# Otters\n\nSea otters hold hands while asleep.")
    (tmp_path / "data" / "herons.md").write_text("# Herons\n\nGrey herons nest in colonies.")
    accounts = user_store(source)
    accounts.add(*ALICE)
    accounts.add(*BOB, role="admin")
    accounts.set_disabled("bob", True)
    alices_key = accounts.tables.find("alice")[4]
    secret = accounts.tables.auth_secret()
    layer = history_layer(source)
    chat = await conversation(layer)
    thread_before = await layer.get_thread(chat["thread"])
    await layer.close()
    library = Library(source, embed_model)
    library.sync()
    found_before = _search(library, "Which birds nest in colonies?")
    before = snapshot(tmp_path)

    with new_database(postgres) as url:
        counts = await asyncio.to_thread(migrate, source, url, lambda _line: None)
        check(counts)
        assert {c.what: c.source for c in counts} == {
            "accounts": 2,
            "conversations: users": 1,
            "conversations: threads": 1,
            "conversations: steps": 4,
            "conversations: elements": 1,
            "conversations: feedbacks": 1,
            "index: passages": 2,
            "index: files": 2,
        }
        target = source.model_copy(update={"database_url": url})

        moved = user_store(target)
        assert moved.authenticate(*ALICE, None).username == "alice"  # the same hash
        assert moved.session_is_current("alice", alices_key)  # nobody signs in again
        assert moved.get("bob").disabled and moved.get("bob").is_admin
        assert moved.tables.auth_secret() == secret

        layer = history_layer(target)
        thread_after = await layer.get_thread(chat["thread"])
        await layer.close()
        assert _comparable(thread_after) == _comparable(thread_before)

        library = Library(target, embed_model)
        assert _search(library, "Which birds nest in colonies?") == found_before
        assert not library.sync().changed_anything  # nothing indexed or embedded again

        with pytest.raises(
            MigrationRefused, match="already holds 2 accounts, 1 conversations, 2 passages"
        ):
            migrate(source, url, lambda _line: None)
        # On Upsun the scaled deployment starts on the empty database before the migration:
        # what that start made there (an admin, the index of the data folder) is replaced.
        moved.add("admin", "a first start's admin password")
        counts = await asyncio.to_thread(migrate, source, url, lambda _line: None, True)
        check(counts)
        assert [user.username for user in user_store(target).list()] == ["alice", "bob"]
        library = Library(target, embed_model)
        assert _search(library, "Which birds nest in colonies?") == found_before
    assert snapshot(tmp_path) == before


def test_the_command_says_in_one_line_what_is_wrong_with_the_target(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ragchat", "migrate", "--to", "mysql://root:hunter2@db/app"],
        env={**environ_without_settings(), "DB_PATH": str(tmp_path / "auth.db")},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: --to must be a PostgreSQL URL, e.g. postgresql://user:password@host:5432/name, "
        "not mysql://root:***@db/app"
    )
    assert "hunter2" not in result.stdout + result.stderr


def _search(library: Library, question: str) -> list[tuple[str, str]]:
    hits = library.index().as_retriever(similarity_top_k=2).retrieve(question)
    return [(hit.node.metadata["file_name"], hit.node.get_content()) for hit in hits]


def _comparable(thread: dict) -> dict:
    return {
        "name": thread["name"],
        "user": thread["userIdentifier"],
        "steps": sorted(
            (s["id"], s["type"], s["output"], s.get("feedback") and s["feedback"]["value"])
            for s in thread["steps"]
        ),
        "elements": sorted((e["id"], e["name"], e["objectKey"]) for e in thread["elements"]),
    }


async def test_a_copy_the_target_stops_is_one_line_and_replace_starts_it_over(
    tmp_path: Path, postgres: str
) -> None:
    source = files_settings(tmp_path)
    user_store(source).add(*ALICE)
    layer = history_layer(source)
    await conversation(layer)
    await layer.close()
    before = snapshot(tmp_path)
    files = {
        "DB_PATH": source.db_path,
        "HISTORY_DB_PATH": source.history_db_path,
        "HISTORY_FILES_DIR": source.history_files_dir,
        "STORAGE_DIR": source.storage_dir,
        "DATA_DIR": tmp_path / "data",
    }
    env = {**environ_without_settings(), **{key: str(path) for key, path in files.items()}}

    def migrate_command(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ragchat", "migrate", "--to", url, *extra],
            env=env, cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip

    with new_database(postgres) as url:
        history_schema(source.model_copy(update={"database_url": url})).migrate()
        # The server refuses part way, as a full disk would.
        psql(
            url,
            "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'could not extend file: No space left on device'; END $$; "
            "CREATE TRIGGER disk_full BEFORE INSERT ON steps EXECUTE FUNCTION disk_full()",
        )
        stopped = migrate_command()
        assert stopped.returncode == 1, stopped.stderr
        assert stopped.stderr.strip().splitlines() == [
            f"Error: the copy into {url} stopped (could not extend file: No space left on "
            "device); the files are as they were. Put right what stopped it, then run the "
            "same command with --replace to start the copy over"
        ]
        psql(url, "DROP TRIGGER disk_full ON steps")
        assert "already holds 1 accounts, 1 conversations" in migrate_command().stderr
        again = migrate_command("--replace")
        assert again.returncode == 0, again.stderr
        assert "steps: 4 here, 4 in PostgreSQL" in again.stdout
    assert snapshot(tmp_path) == before
