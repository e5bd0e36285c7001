"""What the local index holds, in files of STORAGE_DIR (the default, without DATABASE_URL): the
settings it was built with (index.json), each indexed file's size, modification time and hash
(stats.json), llama_index's docstore of document hashes (docstore.json), and the file lock that
lets one process at a time sync. Each file is replaced atomically. pg_ledger.py keeps the same
in PostgreSQL."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from llama_index.core.storage.docstore import BaseDocumentStore, SimpleDocumentStore

from ragchat.documents import FileStat

# name -> (size and modification time, sha256): what each indexed file was when it was read
Files = dict[str, tuple[FileStat, str]]


class FileLedger:
    def __init__(self, storage: Path):
        self._storage = storage
        self._storage.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(storage / "sync.lock")

    @contextmanager
    def lock(self, wait: bool = True) -> Iterator[bool]:
        """One syncing process at a time; yields False at once if `wait` is off and another
        process syncs."""
        try:
            self._lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            self._lock.release()

    def signature(self) -> dict:
        return self._read("index.json")

    def keep_signature(self, signature: dict) -> None:
        self._write("index.json", signature)

    def files(self) -> Files:
        return {
            name: (FileStat(size, mtime_ns), sha)
            for name, (size, mtime_ns, sha) in self._read("stats.json").items()
        }

    def docstore(self) -> BaseDocumentStore:
        path = self._storage / "docstore.json"
        return (
            SimpleDocumentStore.from_persist_path(str(path))
            if path.exists()
            else SimpleDocumentStore()
        )

    def save(self, docstore: BaseDocumentStore, files: Files) -> None:
        temporary = self._storage / "docstore.json.tmp"
        docstore.persist(str(temporary))
        os.replace(temporary, self._storage / "docstore.json")
        self._write(
            "stats.json",
            {name: [stat.size, stat.mtime_ns, sha] for name, (stat, sha) in files.items()},
        )

    def clear(self) -> None:
        for name in ("docstore.json", "stats.json"):
            (self._storage / name).unlink(missing_ok=True)

    def _read(self, name: str) -> dict:
        path = self._storage / name
        return json.loads(path.read_text()) if path.exists() else {}

    def _write(self, name: str, value: dict) -> None:
        temporary = self._storage / f"{name}.tmp"
        temporary.write_text(json.dumps(value))
        os.replace(temporary, self._storage / name)
