"""Document files, whatever keeps them searchable: which files are read and which are refused
(and why), where uploads are stored, how DATA_DIR is scanned and files are hashed, and the
shape of a sync's report. Both backends use it: the local index (ingest.py) and the hosted
assistant (backends/assistant.py); it loads neither LanceDB nor llama_index.
"""

from __future__ import annotations

import codecs
import copy
import hashlib
import logging
import os
import re
import shutil
import unicodedata
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ragchat.config import Settings

log = logging.getLogger(__name__)

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
TEXT_TYPES = {".md", ".markdown", ".txt", ".csv", ".html", ".htm"}
# Files that are zip archives, which their reader (docx2txt) unzips part by part into memory.
ZIPPED_TYPES = {".docx"}
_MB = 1024 * 1024


class Unreadable(Exception):
    """A file that cannot be indexed; the message says why, for the person who added it."""


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int


# --- which files are refused ---------------------------------------------------------------


def refusal(
    path: Path, suffix: str, unzipped_max_mb: int, limit_mb: int | None = None
) -> str | None:
    """Why the file at `path`, of type `suffix`, is not read, if it is not: its type or size
    (`limit_mb`: the upload limit), text that is not UTF-8, or an archive that would unzip to
    more than `unzipped_max_mb`."""
    size = path.stat().st_size
    if suffix not in SUPPORTED_TYPES:
        return f"the file type {suffix or '(none)'} is not supported; use one of " + ", ".join(
            SUPPORTED_TYPES
        )
    if size == 0:
        return "the file is empty"
    if limit_mb is not None and size > limit_mb * _MB:
        return f"it is {size / _MB:.1f} MB and uploads are limited to {limit_mb} MB"
    if suffix in TEXT_TYPES and not _is_utf8(path):
        return "the text is not UTF-8; save it as UTF-8 and add it again"
    if suffix in ZIPPED_TYPES:
        return unzipped_refusal(path, suffix, unzipped_max_mb)
    return None


def unzipped_refusal(path: Path, suffix: str, limit_mb: int) -> str | None:
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
        return reading_error(suffix, error)  # RuntimeError: an encrypted part
    return None


def reading_error(suffix: str, error: BaseException) -> str:
    """Why a file of type `suffix` could not be read, from the error its reader raised."""
    while error.__cause__ is not None:  # the reader wraps the real reason in "Error loading file"
        error = error.__cause__
    text = str(error) or type(error).__name__
    if suffix == ".pdf" and ("decrypt" in text.lower() or "password" in text.lower()):
        return "the PDF is password-protected; remove the password and add it again"
    kind = {".pdf": "a PDF", ".docx": "a Word document", ".csv": "CSV"}.get(suffix, "text")
    return f"it could not be read as {kind} ({text})"


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


def _is_utf8(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for block in _blocks(path):
            decoder.decode(block)
        decoder.decode(b"", final=True)  # a character cut off at the end
    except UnicodeDecodeError:
        return False
    return True


# --- the files of DATA_DIR -----------------------------------------------------------------


def documents_in(folder: Path) -> dict[str, FileStat] | None:
    """Every file of DATA_DIR by its path there, or None when DATA_DIR is not a folder: an
    unmounted or mistyped folder is not "every document was deleted", so a sync keeps what it
    has."""
    if not folder.is_dir():
        log.warning("%s is not a folder; the documents already indexed are kept", folder)
        return None
    return dict(scan_folder(folder))


def scan_folder(folder: Path) -> Iterator[tuple[str, FileStat]]:
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
            yield path.relative_to(folder).as_posix(), FileStat(stat.st_size, stat.st_mtime_ns)


def sha256_of(path: Path) -> str:
    """The file's content hash, read in blocks: a large file is never held in memory."""
    digest = hashlib.sha256()
    for block in _blocks(path):
        digest.update(block)
    return digest.hexdigest()


def _blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        yield from iter(lambda: file.read(_MB), b"")


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


def refused_upload(source: Path, original_name: str, settings: Settings) -> UploadOutcome | None:
    """The outcome of an upload that is refused before it goes anywhere (its type, size or
    content, by the name it will be stored under), or None if it may go on."""
    suffix = Path(safe_file_name(original_name)).suffix
    problem = refusal(source, suffix, settings.unzipped_max_mb, settings.upload_max_mb)
    return UploadOutcome(original_name, problem=problem) if problem else None


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
    sha = sha256_of(source)
    stem, suffix = os.path.splitext(name)
    for attempt in range(1, 1000):
        candidate = name if attempt == 1 else f"{stem} ({attempt}){suffix}"
        target = folder / candidate
        if target.exists():
            if sha256_of(target) == sha:
                return candidate, False
            continue
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{candidate}.part"  # hidden: a sync meanwhile ignores it
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
        return candidate, True
    raise Unreadable(f"too many files are already called {name}")


# --- reports -------------------------------------------------------------------------------


@dataclass
class SyncReport(ABC):
    """What a sync did, in files of DATA_DIR; each store words its counts its own way."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # every file, on a rebuild of some stores
    removed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # file -> why
    seconds: float = 0.0
    rebuilt: bool = False

    @property
    def changed_anything(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    @abstractmethod
    def counts(self) -> str:
        """The first line of the summary: what changed, in the store's own terms."""

    def summary(self) -> str:
        lines = [self.counts()]
        lines += [f"  skipped {name}: {reason}" for name, reason in sorted(self.skipped.items())]
        return "\n".join(lines)
