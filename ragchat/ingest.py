"""Keeping the index in step with DATA_DIR: the files there are the source of truth.

A sync reads only what changed. Each file's documents (one per PDF page, one for other types)
have stable ids, `<path inside DATA_DIR>#<n>`, and llama_index's ingestion pipeline upserts them
against a docstore: new documents are embedded, changed ones replaced, unchanged ones skipped.
A stat cache (size and modification time, per file) spares re-hashing unchanged files, so a
sync with nothing to do costs a directory walk whatever the corpus size.

Safety: one sync at a time across processes (a file lock); LanceDB commits each batch
atomically; the docstore and the stat cache are replaced atomically after each batch; and
before a batch is written, whatever an interrupted earlier run left of its documents is
deleted. A `kill -9` therefore loses at most the batch in flight, which the next sync redoes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import lancedb
from filelock import FileLock
from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import Document
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.readers.file import HTMLTagReader
from tqdm import tqdm

from ragchat.config import Settings
from ragchat.models import build_tokenizer, embed_name
from ragchat.vector_store import LanceStore

log = logging.getLogger(__name__)

TABLE = "chunks"
SAMPLE_DOCS = Path(__file__).resolve().parent.parent / "docs"
# The file types read, by media type (the form the chat's upload button takes them in).
UPLOAD_TYPES = {
    "text/markdown": [".md", ".markdown"],
    "text/plain": [".txt"],
    "application/pdf": [".pdf"],
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": [".docx"],
    "text/html": [".html", ".htm"],
    "text/csv": [".csv"],
}
SUPPORTED_TYPES = tuple(suffix for suffixes in UPLOAD_TYPES.values() for suffix in suffixes)
# Files that are read as text: anything but UTF-8 is refused rather than half-decoded.
_TEXT_TYPES = {".md", ".markdown", ".txt", ".csv", ".html", ".htm"}
# Files that are zip archives, which their reader (docx2txt) unzips part by part into memory.
_ZIPPED_TYPES = {".docx"}
_MB = 1024 * 1024
_READERS = {".html": HTMLTagReader(tag="body"), ".htm": HTMLTagReader(tag="body")}
# Metadata kept for bookkeeping and citations, but neither embedded nor shown to the LLM.
_HIDDEN_METADATA = ["file_sha256", "part"]
_BATCH_FILES = 16


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    chunks: int = 0
    seconds: float = 0.0
    rebuilt: bool = False

    @property
    def changed_anything(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def summary(self) -> str:
        lines = [
            f"{len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed, "
            f"{len(self.skipped)} skipped; {self.chunks} chunks written in {self.seconds:.1f} s"
        ]
        lines += [f"  skipped {name}: {reason}" for name, reason in sorted(self.skipped.items())]
        return "\n".join(lines)


class Unreadable(Exception):
    """A file that cannot be indexed; the message says why, for the person who added it."""


@dataclass(frozen=True)
class _Stat:
    size: int
    mtime_ns: int


class Library:
    """The documents of DATA_DIR and their index under STORAGE_DIR."""

    def __init__(self, settings: Settings, embed_model: BaseEmbedding):
        self.settings = settings
        self.data_dir = settings.data_dir
        self._storage = settings.storage_dir
        self._storage.mkdir(parents=True, exist_ok=True)
        self.embed_model = embed_model
        self._splitter = SentenceSplitter(
            chunk_size=settings.chunk_size,
            chunk_overlap=settings.chunk_overlap,
            tokenizer=build_tokenizer(settings),
        )
        self._signature = {
            "embed_model": embed_name(settings),
            "chunk_size": settings.chunk_size,
            "chunk_overlap": settings.chunk_overlap,
        }
        self._process_lock = threading.Lock()
        self._file_lock = FileLock(self._storage / "sync.lock")
        # Another process may write the index: look for its commits before each query.
        self._db = lancedb.connect(
            str(self._storage / "lancedb"), read_consistency_interval=timedelta(0)
        )
        self.store = LanceStore(connection=self._db, table_name=TABLE, mode="create")
        self._skipped: dict[str, tuple[_Stat, str]] = {}  # reported once per file version
        self._vector_index_checked = False  # once per process, then after each change

    def index(self) -> VectorStoreIndex:
        return VectorStoreIndex.from_vector_store(self.store, embed_model=self.embed_model)

    # --- sync ---------------------------------------------------------------------------

    def sync(self, rebuild: bool = False, progress: bool = False) -> SyncReport:
        """Bring the index in step with DATA_DIR. Safe to call from any thread or process."""
        started = time.monotonic()
        report = SyncReport()
        with self._process_lock, self._file_lock:
            recorded = self._read_json("index.json")
            if recorded and recorded != self._signature:
                log.warning(
                    "The index was built with %s; the settings now give %s. Rebuilding it.",
                    _describe(recorded),
                    _describe(self._signature),
                )
                rebuild = True
            if rebuild:
                self._clear()
                report.rebuilt = True
            if not recorded or rebuild:
                self._seed_sample_docs()
            self._sync(report, progress)
            if report.changed_anything or not self._vector_index_checked:
                self.store.keep_vector_index()
                self._vector_index_checked = True
            if recorded != self._signature:  # not every few seconds on a shared mount
                self._write_json("index.json", self._signature)
        report.seconds = time.monotonic() - started
        return report

    def _sync(self, report: SyncReport, progress: bool) -> None:
        if not self.data_dir.is_dir():
            # An unmounted or mistyped folder is not "every document was deleted".
            log.warning("%s is not a folder; the index is kept as it is", self.data_dir)
            return
        on_disk = dict(scan_folder(self.data_dir))
        recorded = self._read_json("stats.json")
        stats = {name: _Stat(size, mtime_ns) for name, (size, mtime_ns, _) in recorded.items()}
        hashes = {name: sha for name, (_, _, sha) in recorded.items()}
        known_bad = {n for n, (stat, _) in self._skipped.items() if on_disk.get(n) == stat}
        report.skipped = {name: self._skipped[name][1] for name in known_bad}
        if stats == {n: s for n, s in on_disk.items() if n not in known_bad}:
            return  # the common case: nothing to do, and not even the docstore to load

        docstore = self._load_docstore()
        indexed = _documents_by_file(docstore)
        for name in sorted(set(indexed) - set(on_disk)):
            self.store.delete_ref_docs(indexed[name])
            for doc_id in indexed[name]:
                docstore.delete_document(doc_id, raise_error=False)
            stats.pop(name, None)
            hashes.pop(name, None)
            report.removed.append(name)
        self._skipped = {k: v for k, v in self._skipped.items() if k in on_disk}

        pending = []
        for name, stat in on_disk.items():
            if (stats.get(name) == stat and name in indexed) or name in known_bad:
                continue
            readable = Path(name).suffix.lower() in SUPPORTED_TYPES
            sha = _sha256(self.data_dir / name) if readable else ""  # a video is not hashed
            if name in indexed and hashes.get(name) == sha:  # touched, not changed
                stats[name], hashes[name] = stat, sha
                continue
            pending.append((name, stat, sha))

        bar = tqdm(total=len(pending), desc="Indexing files", unit="file", disable=not progress)
        saved = time.monotonic()
        for batch in _batches(pending, _BATCH_FILES):
            documents, written = [], []
            for name, stat, sha in batch:
                try:
                    documents += self._read(name, sha)
                    written.append((name, stat, sha))
                except Unreadable as problem:
                    report.skipped[name] = str(problem)
                    self._skipped[name] = (stat, str(problem))
                    log.warning("Skipped %s: %s", name, problem)
            new_ids = {doc.id_ for doc in documents}
            for name, _, _ in written:
                gone = [i for i in indexed.get(name, []) if i not in new_ids]
                for doc_id in gone:
                    docstore.delete_document(doc_id, raise_error=False)
                self.store.delete_ref_docs(gone)
            # Chunks an interrupted run wrote without recording them in the docstore.
            self.store.delete_ref_docs([i for i in new_ids if docstore.get_document_hash(i) is None])
            nodes = self._pipeline(docstore).run(documents=documents, store_doc_text=False)
            report.chunks += len(nodes)
            for name, stat, sha in written:
                (report.changed if name in indexed else report.added).append(name)
                stats[name], hashes[name] = stat, sha
            if time.monotonic() - saved > 5:  # what a kill -9 can cost: the last few seconds
                self._save(docstore, stats, hashes)
                saved = time.monotonic()
            bar.update(len(batch))
        bar.close()
        self._save(docstore, stats, hashes)

    def _pipeline(self, docstore: SimpleDocumentStore) -> IngestionPipeline:
        return IngestionPipeline(
            transformations=[self._splitter, self.embed_model],
            vector_store=self.store,
            docstore=docstore,
            docstore_strategy=DocstoreStrategy.UPSERTS,
        )

    # --- reading ------------------------------------------------------------------------

    def _read(self, name: str, sha: str) -> list[Document]:
        path = self.data_dir / name
        suffix = path.suffix.lower()
        if problem := refusal(suffix, path.stat().st_size):
            raise Unreadable(problem)
        if suffix in _TEXT_TYPES:
            try:
                path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                raise Unreadable("the text is not UTF-8; save it as UTF-8 and add it again") from None
        if suffix in _ZIPPED_TYPES and (
            problem := unzipped_refusal(path, self.settings.unzipped_max_mb)
        ):
            raise Unreadable(problem)
        try:
            loaded = SimpleDirectoryReader(
                input_files=[path], file_extractor=_READERS, raise_on_error=True
            ).load_data()
        except Exception as error:  # every reader fails its own way on a broken file
            raise Unreadable(_reading_error(suffix, error)) from None
        pages = [doc for doc in loaded if doc.text.strip()]
        if not pages:
            raise Unreadable(
                "no text was found in it (a scanned PDF needs text recognition first)"
                if suffix == ".pdf"
                else "no text was found in it"
            )
        documents = []
        for number, page in enumerate(pages):
            page_label = page.metadata.get("page_label", "")
            metadata = {
                "file_name": name,
                # Every chunk has the same fields: LanceDB fixes its columns at the first write.
                "page_label": page_label,
                "file_sha256": sha,
                "part": number,
            }
            hidden = _HIDDEN_METADATA + ([] if page_label else ["page_label"])
            documents.append(
                Document(
                    id_=f"{name}#{number}",
                    text=page.text,
                    metadata=metadata,
                    excluded_embed_metadata_keys=hidden,
                    excluded_llm_metadata_keys=hidden,
                )
            )
        return documents

    # --- storage ------------------------------------------------------------------------

    def _load_docstore(self) -> SimpleDocumentStore:
        path = self._storage / "docstore.json"
        return SimpleDocumentStore.from_persist_path(str(path)) if path.exists() else SimpleDocumentStore()

    def _save(self, docstore: SimpleDocumentStore, stats: dict, hashes: dict) -> None:
        temporary = self._storage / "docstore.json.tmp"
        docstore.persist(str(temporary))
        os.replace(temporary, self._storage / "docstore.json")
        self._write_json(
            "stats.json",
            {name: [stat.size, stat.mtime_ns, hashes[name]] for name, stat in stats.items()},
        )

    def _read_json(self, name: str) -> dict:
        path = self._storage / name
        return json.loads(path.read_text()) if path.exists() else {}

    def _write_json(self, name: str, value: dict) -> None:
        temporary = self._storage / f"{name}.tmp"
        temporary.write_text(json.dumps(value))
        os.replace(temporary, self._storage / name)

    def _clear(self) -> None:
        self.store.drop()
        for name in ("docstore.json", "stats.json"):
            (self._storage / name).unlink(missing_ok=True)
        self._skipped.clear()

    def _seed_sample_docs(self) -> None:
        """On the very first build, give a newcomer something to ask about: the user guide."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if any(scan_folder(self.data_dir)):
            return
        for sample in SAMPLE_DOCS.glob("*.md"):
            shutil.copyfile(sample, self.data_dir / sample.name)
            log.info("Copied the sample document %s into %s", sample.name, self.data_dir)


# --- uploads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadOutcome:
    original_name: str
    stored_as: str | None = None
    chunks: int = 0
    duplicate: bool = False
    problem: str | None = None
    conversation_only: bool = False  # searched in this conversation, not in the shared library

    def summary(self) -> str:
        if self.problem:
            return f"{self.original_name} was not added: {self.problem}."
        if self.duplicate:
            return f"{self.original_name} is already in the library, as {self.stored_as}."
        if self.conversation_only:
            return f"Added {self.stored_as} to this conversation; it can be asked about now."
        passages = "1 passage" if self.chunks == 1 else f"{self.chunks} passages"
        return f"Added {self.stored_as} ({passages}); it can be asked about now."


def add_upload(library: Library, source: Path, original_name: str) -> UploadOutcome:
    """Check an uploaded file, store it in DATA_DIR and index it; a file that cannot be
    indexed is not kept."""
    suffix = Path(safe_file_name(original_name)).suffix
    if problem := refusal(suffix, source.stat().st_size, library.settings.upload_max_mb):
        return UploadOutcome(original_name, problem=problem)
    stored_as, is_new = store_upload(source, original_name, library.data_dir)
    if not is_new:
        return UploadOutcome(original_name, stored_as, duplicate=True)
    report = library.sync()
    if stored_as in report.skipped:
        (library.data_dir / stored_as).unlink(missing_ok=True)
        return UploadOutcome(original_name, problem=report.skipped[stored_as])
    return UploadOutcome(original_name, stored_as, chunks=report.chunks)


_RESERVED = re.compile(r"(con|prn|aux|nul|com\d|lpt\d)(\..*)?", re.IGNORECASE)


def safe_file_name(name: str) -> str:
    """A name that stays inside the folder it is saved in, is not hidden, and is portable."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1])
    name = "".join(c if c.isalnum() or c in " ._-()" else "_" for c in name)
    name = re.sub(r"\s+", " ", name).strip(" .")  # no hidden files, no trailing dots
    stem, suffix = os.path.splitext(name)
    stem = stem[:100] or "upload"
    if _RESERVED.fullmatch(stem):
        stem = f"_{stem}"
    return f"{stem}{suffix.lower()}"


def store_upload(source: Path, original_name: str, folder: Path) -> tuple[str, bool]:
    """Copy an uploaded file into `folder` under a safe name; never overwrite another file.
    Returns the name it has there and whether it was new (False: the same file was there)."""
    name = safe_file_name(original_name)
    sha = _sha256(source)
    stem, suffix = os.path.splitext(name)
    for attempt in range(1, 1000):
        candidate = name if attempt == 1 else f"{stem} ({attempt}){suffix}"
        target = folder / candidate
        if target.exists():
            if _sha256(target) == sha:
                return candidate, False
            continue
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{candidate}.part"  # hidden: a sync meanwhile ignores it
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
        return candidate, True
    raise Unreadable(f"too many files are already called {name}")


# --- helpers -------------------------------------------------------------------------------


def refusal(suffix: str, size: int, limit_mb: int | None = None) -> str | None:
    """Why a file of this type and size is not read, if it is not."""
    if suffix not in SUPPORTED_TYPES:
        return f"the file type {suffix or '(none)'} is not supported; use one of " + ", ".join(
            SUPPORTED_TYPES
        )
    if size == 0:
        return "the file is empty"
    if limit_mb is not None and size > limit_mb * 1024 * 1024:
        return f"it is {size / 1024 / 1024:.1f} MB and uploads are limited to {limit_mb} MB"
    return None


def unzipped_refusal(path: Path, limit_mb: int) -> str | None:
    """Why a zipped document is not read, if it is not: it would unzip to more than
    `limit_mb`, or it is not a sound archive. Costs at most unzipping `limit_mb` once, in steps
    of 1 MB, whatever the archive claims.

    The parts' declared sizes come first, and they bound what the reader gets: zipfile never
    hands out more than a part's declared size (ZipExtFile stops at ZipInfo.file_size and then
    checks the CRC). They do not bound what reading costs, though: ZipFile.read, as docx2txt
    calls it, decompresses all of a part's data in one call before cutting it to the declared
    size, so a part declaring 1 KB but holding 1.5 GB (in 1.5 MB) took 14 s and 2 GB of
    memory here. So each part is also unzipped here, in bounded steps, to check that it holds
    what it declares, and only deflate and stored parts (what Word writes) are accepted: bzip2
    and LZMA have no bounded step in zipfile."""
    try:
        with zipfile.ZipFile(path) as archive:
            parts = archive.infolist()
            declared = sum(part.file_size for part in parts)
            if declared > limit_mb * _MB:
                return (
                    f"it unzips to {declared / _MB:.1f} MB, more than the {limit_mb} MB a "
                    "document may unzip to (UNZIPPED_MAX_MB); split it into smaller documents, "
                    "or ask the administrator to raise UNZIPPED_MAX_MB"
                )
            for part in parts:
                if part.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise zipfile.BadZipFile(f"{part.filename} is compressed as Word never does")
                if _unzipped_size(archive, part) != part.file_size:
                    raise zipfile.BadZipFile(
                        f"{part.filename} is not the size the archive says; save it again"
                    )
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError) as error:
        return _reading_error(path.suffix.lower(), error)  # RuntimeError: an encrypted part
    return None


def _unzipped_size(archive: zipfile.ZipFile, part: zipfile.ZipInfo) -> int:
    """What the part really unzips to, counted up to one byte past its declared size."""
    unbounded = copy.copy(part)
    unbounded.file_size = part.file_size + 1  # so that zipfile reads past the declared end
    del unbounded.CRC  # that end is compared here, not the checksum (the reader checks it)
    size = 0
    with archive.open(unbounded) as data:
        while size <= part.file_size and (block := data.read(_MB)):
            size += len(block)
    return size


def scan_folder(folder: Path) -> Iterator[tuple[str, _Stat]]:
    """(path inside the folder, stat) of every file, hidden files and folders excepted."""
    if not folder.is_dir():
        return
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for file in files:
            if file.startswith("."):
                continue
            path = Path(root, file)
            stat = path.stat()
            yield path.relative_to(folder).as_posix(), _Stat(stat.st_size, stat.st_mtime_ns)


def _documents_by_file(docstore: SimpleDocumentStore) -> dict[str, list[str]]:
    """The ids of each file's documents: `<file>#<n>`, as recorded with their hashes."""
    files: dict[str, list[str]] = {}
    for doc_id in docstore.get_all_document_hashes().values():
        files.setdefault(doc_id.rsplit("#", 1)[0], []).append(doc_id)
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _reading_error(suffix: str, error: BaseException) -> str:
    while error.__cause__ is not None:  # the reader wraps the real reason in "Error loading file"
        error = error.__cause__
    text = str(error) or type(error).__name__
    if suffix == ".pdf" and ("decrypt" in text.lower() or "password" in text.lower()):
        return "the PDF is password-protected; remove the password and add it again"
    kind = {".pdf": "a PDF", ".docx": "a Word document", ".csv": "CSV"}.get(suffix, "text")
    return f"it could not be read as {kind} ({text})"


def _describe(signature: dict) -> str:
    return (
        f"{signature.get('embed_model')} and chunks of {signature.get('chunk_size')}"
        f"/{signature.get('chunk_overlap')} tokens"
    )
