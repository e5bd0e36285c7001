"""The local index: DATA_DIR's documents as chunks (in LanceDB, or in PostgreSQL), kept in step
with the files there, which are the source of truth. Which files are read, and why one is
refused: documents.py.

A sync reads only what changed. Each file's documents (one per PDF page, one for other types)
have stable ids, `<path inside DATA_DIR>#<n>`, and llama_index's ingestion pipeline upserts them
against a docstore: new documents are embedded, changed ones replaced, unchanged ones skipped.
A stat cache (size and modification time, per file) spares re-hashing unchanged files, so a
sync with nothing to do costs a directory walk whatever the corpus size.

Where the chunks and this bookkeeping are kept (local files, or PostgreSQL shared by several
instances) is index_stores.py's choice; the sync is the same for both.

Safety: one sync at a time across processes (a file lock, or PostgreSQL's advisory lock across
instances: the periodic sync skips its turn while another runs, an upload waits); each batch of
chunks is committed atomically; the docstore and the stat cache are saved after each batch (in
STORAGE_DIR, replaced atomically; in PostgreSQL, row by row as they change); and
before a batch is written, whatever an interrupted earlier run left of its documents is
deleted. A `kill -9` therefore loses at most the batch in flight, which the next sync redoes.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import Document
from llama_index.core.storage.docstore import BaseDocumentStore
from llama_index.readers.file import HTMLTagReader
from tqdm import tqdm

from ragchat.config import Settings
from ragchat.documents import (
    SUPPORTED_TYPES,
    FileStat,
    SyncReport,
    Unreadable,
    UploadOutcome,
    documents_in,
    reading_error,
    refusal,
    refused_upload,
    scan_folder,
    sha256_of,
    store_upload,
)
from ragchat.index_stores import open_index_stores
from ragchat.models import build_embed_model, build_tokenizer, embed_name

log = logging.getLogger(__name__)

SAMPLE_DOCS = Path(__file__).resolve().parent.parent / "docs"
_READERS = {".html": HTMLTagReader(tag="body"), ".htm": HTMLTagReader(tag="body")}
# Metadata kept for bookkeeping and citations, but neither embedded nor shown to the LLM.
_HIDDEN_METADATA = ["file_sha256", "part"]
_BATCH_FILES = 16


@dataclass
class IndexSyncReport(SyncReport):
    """What a sync did to the local index, and how many chunks it wrote."""

    chunks: int = 0
    busy: bool = False  # another process was syncing, and this sync did not wait for it

    def counts(self) -> str:
        if self.busy:
            return "another process is syncing the index; this sync was skipped"
        return (
            f"{len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed, "
            f"{len(self.skipped)} skipped; {self.chunks} chunks written in {self.seconds:.1f} s"
        )


class Library:
    """The documents of DATA_DIR and their index."""

    def __init__(self, settings: Settings, embed_model: BaseEmbedding):
        self.settings = settings
        self.data_dir = settings.data_dir
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
        stores = open_index_stores(settings)
        self.store, self._ledger, self._lexical = stores.vectors, stores.ledger, stores.lexical
        self._skipped: dict[str, tuple[FileStat, str]] = {}  # reported once per file version
        self._vector_index_checked = False  # once per process, then after each change

    @classmethod
    def from_settings(cls, settings: Settings) -> Library:
        return cls(settings, build_embed_model(settings))

    def index(self) -> VectorStoreIndex:
        return VectorStoreIndex.from_vector_store(self.store, embed_model=self.embed_model)

    def lexical_retriever(self, depth: int) -> BaseRetriever:
        """The `depth` best chunks by their words: what hybrid retrieval fuses with vectors."""
        return self._lexical(depth)

    # --- sync ---------------------------------------------------------------------------

    def sync(
        self, rebuild: bool = False, progress: bool = False, wait: bool = True
    ) -> IndexSyncReport:
        """Bring the index in step with DATA_DIR. Safe to call from any thread or process.
        Without `wait`, a sync while another runs does nothing (its report says it was busy):
        what the periodic sync wants, since the other one does the same work."""
        started = time.monotonic()
        report = IndexSyncReport()
        if not self._process_lock.acquire(blocking=wait):
            report.busy = True
            return report
        try:
            with self._ledger.lock(wait) as held:
                if held:
                    self._sync_locked(report, rebuild, progress)
                else:
                    report.busy = True
        finally:
            self._process_lock.release()
        report.seconds = time.monotonic() - started
        return report

    def _sync_locked(self, report: IndexSyncReport, rebuild: bool, progress: bool) -> None:
        recorded = self._ledger.signature()
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
            self._ledger.keep_signature(self._signature)

    def _sync(self, report: IndexSyncReport, progress: bool) -> None:
        if (on_disk := documents_in(self.data_dir)) is None:
            return
        recorded = self._ledger.files()
        stats = {name: stat for name, (stat, _) in recorded.items()}
        hashes = {name: sha for name, (_, sha) in recorded.items()}
        known_bad = {n for n, (stat, _) in self._skipped.items() if on_disk.get(n) == stat}
        report.skipped = {name: self._skipped[name][1] for name in known_bad}
        if stats == {n: s for n, s in on_disk.items() if n not in known_bad}:
            return  # the common case: nothing to do, and not even the docstore to load

        docstore = self._ledger.docstore()
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
            sha = sha256_of(self.data_dir / name) if readable else ""  # a video is not hashed
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
            self.store.delete_ref_docs(
                [i for i in new_ids if docstore.get_document_hash(i) is None]
            )
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

    def _pipeline(self, docstore: BaseDocumentStore) -> IngestionPipeline:
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
        if problem := refusal(path, suffix, self.settings.unzipped_max_mb):
            raise Unreadable(problem)
        try:
            loaded = SimpleDirectoryReader(
                input_files=[path], file_extractor=_READERS, raise_on_error=True
            ).load_data()
        except Exception as error:  # noqa: BLE001 every reader fails its own way on a broken file
            raise Unreadable(reading_error(suffix, error)) from None
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

    def _save(self, docstore: BaseDocumentStore, stats: dict, hashes: dict) -> None:
        self._ledger.save(docstore, {name: (stat, hashes[name]) for name, stat in stats.items()})

    def _clear(self) -> None:
        self.store.drop()
        self._ledger.clear()
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


def add_upload(library: Library, source: Path, original_name: str) -> UploadOutcome:
    """Check an uploaded file, store it in DATA_DIR and index it; a file that cannot be
    indexed is not kept."""
    if refused := refused_upload(source, original_name, library.settings):
        return refused
    stored_as, is_new = store_upload(source, original_name, library.data_dir)
    if not is_new:
        return UploadOutcome(original_name, stored_as, duplicate=True)
    report = library.sync()  # waits for another sync: the user wants this file indexed
    if stored_as in report.skipped:
        (library.data_dir / stored_as).unlink(missing_ok=True)
        return UploadOutcome(original_name, problem=report.skipped[stored_as])
    return UploadOutcome(original_name, stored_as, chunks=report.chunks)


# --- helpers -------------------------------------------------------------------------------


def _documents_by_file(docstore: BaseDocumentStore) -> dict[str, list[str]]:
    """The ids of each file's documents: `<file>#<n>`, as recorded with their hashes."""
    files: dict[str, list[str]] = {}
    for doc_id in docstore.get_all_document_hashes().values():
        files.setdefault(doc_id.rsplit("#", 1)[0], []).append(doc_id)
    return files


def _batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _describe(signature: dict) -> str:
    return (
        f"{signature.get('embed_model')} and chunks of {signature.get('chunk_size')}"
        f"/{signature.get('chunk_overlap')} tokens"
    )
