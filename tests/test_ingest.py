"""Keeping the index in step with real files in temporary folders."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest

import ragchat.ingest
import ragchat.vector_store
from ragchat.config import load_settings
from ragchat.documents import safe_file_name, store_upload
from ragchat.ingest import Library, add_upload
from ragchat.models import build_embed_model
from ragchat.vector_store import VECTOR_INDEX

from . import files
from .conftest import ROOT, environ_without_settings
from .openai_server import OpenAIServer


@pytest.fixture(scope="module")
def embed_model():
    return build_embed_model(load_settings(_env_file=None))


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "seed.md").write_text("The library keeps the seed file.")
    return tmp_path / "data", tmp_path / "storage"


@pytest.fixture
def library(folders, embed_model, database_url) -> Library:
    """A library on each store: local files, and PostgreSQL."""
    data, storage = folders
    settings = load_settings(
        _env_file=None, data_dir=data, storage_dir=storage, database_url=database_url
    )
    return Library(settings, embed_model)


@pytest.fixture
def lance_library(folders, embed_model) -> Library:
    data, storage = folders
    return Library(load_settings(_env_file=None, data_dir=data, storage_dir=storage), embed_model)


def search(library: Library, text: str, top_k: int = 3) -> list[tuple[str, str]]:
    """(file name, passage) of the best matches."""
    hits = library.index().as_retriever(similarity_top_k=top_k).retrieve(text)
    return [(hit.node.metadata["file_name"], hit.node.get_content()) for hit in hits]


def files_in_index(library: Library) -> set[str]:
    return {name for name, _ in search(library, "anything", top_k=1000)}


def test_add_change_delete_and_rename(library: Library, folders) -> None:
    data, _ = folders
    report = library.sync()
    assert report.added == ["seed.md"] and report.chunks == 1

    (data / "notes").mkdir()
    (data / "notes" / "penguins.txt").write_text("Penguins eat krill in Antarctica.")
    report = library.sync()
    assert (report.added, report.changed, report.removed) == (["notes/penguins.txt"], [], [])
    assert search(library, "What do penguins eat?")[0] == (
        "notes/penguins.txt",
        "Penguins eat krill in Antarctica.",
    )

    (data / "notes" / "penguins.txt").write_text("Penguins eat fish and squid.")
    report = library.sync()
    assert report.changed == ["notes/penguins.txt"] and report.chunks == 1
    passages = [text for name, text in search(library, "penguins", 10) if "Penguins" in text]
    assert passages == ["Penguins eat fish and squid."]  # the old version is gone

    (data / "notes" / "penguins.txt").rename(data / "birds.txt")
    report = library.sync()
    assert (report.added, report.removed) == (["birds.txt"], ["notes/penguins.txt"])
    assert files_in_index(library) == {"seed.md", "birds.txt"}

    (data / "birds.txt").unlink()
    assert library.sync().removed == ["birds.txt"]
    assert files_in_index(library) == {"seed.md"}
    assert library.store.count() == 1


def test_a_missing_data_folder_keeps_the_index(library: Library, folders) -> None:
    data, _ = folders
    library.sync()
    data.rename(data.with_name("elsewhere"))
    assert not library.sync().changed_anything
    assert files_in_index(library) == {"seed.md"}


def test_unchanged_and_touched_files_are_not_read_again(
    library: Library, folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = folders
    library.sync()
    reads = []
    real_reader = ragchat.ingest.SimpleDirectoryReader
    monkeypatch.setattr(
        ragchat.ingest,
        "SimpleDirectoryReader",
        lambda **kwargs: reads.append(kwargs["input_files"]) or real_reader(**kwargs),
    )
    written = bookkeeping(library)
    assert not library.sync().changed_anything
    assert bookkeeping(library) == written  # a sync with nothing to do writes nothing
    os.utime(data / "seed.md", ns=(1, 1))  # touched: same content, other date
    report = library.sync()
    assert not report.changed_anything and report.chunks == 0
    assert reads == []
    # ... and a fresh process (the CLI, a restart) does not read them either.
    again = Library(library.settings, library.embed_model)
    assert not again.sync().changed_anything and reads == []


def bookkeeping(library: Library) -> object:
    """What changes whenever the library writes its bookkeeping."""
    if library.settings.database_url is None:
        return sorted(
            (p.name, p.stat().st_mtime_ns) for p in library.settings.storage_dir.glob("*.json")
        )
    from .postgres_server import psql

    return psql(
        library.settings.database_url,
        "SELECT collection, key, xmin FROM index_records ORDER BY collection, key",
    )


def test_every_supported_type_is_read_and_pdf_pages_are_kept(library: Library, folders) -> None:
    data, _ = folders
    (data / "manual.pdf").write_bytes(files.pdf("Boilers need yearly checks", "Valves face north"))
    (data / "letter.docx").write_bytes(files.docx("The tenant pays the water bill"))
    (data / "page.html").write_text(
        "<html><body><h1>Opening hours</h1><p>Open 9 to 5</p></body></html>"
    )
    (data / "prices.csv").write_text("item,price\nkettle,30\ntoaster,25\n")
    (data / "todo.txt").write_text("Paint the fence")
    (data / "readme.markdown").write_text("# Readme\nThe garden gate sticks.")
    report = library.sync()
    assert sorted(report.added) == sorted(
        [
            "seed.md",
            "manual.pdf",
            "letter.docx",
            "page.html",
            "prices.csv",
            "todo.txt",
            "readme.markdown",
        ]
    )
    assert report.skipped == {}
    hits = (
        library.index().as_retriever(similarity_top_k=1).retrieve("Which way do the valves face?")
    )
    assert hits[0].node.metadata["file_name"] == "manual.pdf"
    assert hits[0].node.metadata["page_label"] == "2"
    assert search(library, "Who pays for water?")[0][0] == "letter.docx"
    assert "Open 9 to 5" in search(library, "When is it open?")[0][1]
    assert "<p>" not in search(library, "When is it open?")[0][1]
    assert search(library, "How much is a toaster?")[0][0] == "prices.csv"


BAD_FILES = {
    "picture.png": (b"\x89PNG\r\n\x1a\n....", "the file type .png is not supported"),
    "empty.txt": (b"", "the file is empty"),
    "broken.pdf": (b"%PDF-1.4\nthis is not really a pdf", "it could not be read as a PDF"),
    "locked.pdf": (files.encrypted_pdf("Secret plans"), "the PDF is password-protected"),
    "scan.pdf": (files.image_only_pdf(), "no text was found in it (a scanned PDF needs text"),
    "latin1.txt": ("Caf\xe9 cr\xe8me".encode("latin-1"), "the text is not UTF-8"),
    "broken.docx": (b"PK\x03\x04 not a zip", "it could not be read as a Word document"),
}


def test_bad_files_are_skipped_with_reasons_and_the_rest_goes_in(library: Library, folders) -> None:
    data, _ = folders
    library.sync()
    for name, (content, _) in BAD_FILES.items():
        (data / name).write_bytes(content)
    (data / "good.txt").write_text("Owls hunt at night.")
    report = library.sync()
    assert report.added == ["good.txt"]
    assert sorted(report.skipped) == sorted(BAD_FILES)
    for name, (_, reason) in BAD_FILES.items():
        assert report.skipped[name].startswith(reason), (name, report.skipped[name])
    assert files_in_index(library) == {"seed.md", "good.txt"}  # nothing indexed was lost

    again = library.sync()  # known bad files are not read again, but still reported
    assert not again.changed_anything and sorted(again.skipped) == sorted(BAD_FILES)
    (data / "empty.txt").write_text("Now it has words about badgers.")
    assert library.sync().added == ["empty.txt"]


def test_a_changed_embedding_model_rebuilds_the_index(
    library: Library, folders, caplog: pytest.LogCaptureFixture
) -> None:
    library.sync()
    data, storage = folders
    with OpenAIServer() as server:
        settings = load_settings(
            _env_file=None,
            data_dir=data,
            storage_dir=storage,
            database_url=library.settings.database_url,
            openai_api_key="sk-test",
            openai_base_url=server.base_url,
            llm_provider="local",
        )
        other = Library(settings, build_embed_model(settings))
        report = other.sync()
        assert report.rebuilt and report.added == ["seed.md"]
        assert "Rebuilding it." in caplog.text and "text-embedding-3-small" in caplog.text
        assert search(other, "seed")[0][0] == "seed.md"  # 8 dimensions now, no mismatch
    assert library.sync().rebuilt  # and back


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("../../etc/passwd.md", "passwd.md"),
        ("..\\..\\windows\\win.ini.txt", "win.ini.txt"),
        (".bashrc.md", "bashrc.md"),
        ("CON.txt", "_CON.txt"),
        ("nul", "_nul"),
        ("report\x00\n<script>.PDF", "report___script_.pdf"),
        ("   ", "upload"),
        ("a" * 300 + ".md", "a" * 100 + ".md"),
        ("Résumé 2026.docx", "Résumé 2026.docx"),
    ],
)
def test_upload_names_are_made_safe(name: str, safe: str) -> None:
    assert safe_file_name(name) == safe


def test_uploads_never_overwrite_another_file(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    first, second = tmp_path / "one", tmp_path / "two"
    first.write_text("first version")
    second.write_text("second version")
    assert store_upload(first, "../notes.md", folder) == ("notes.md", True)
    assert store_upload(second, "notes.md", folder) == ("notes (2).md", True)
    assert store_upload(first, "notes.md", folder) == ("notes.md", False)  # same file again
    assert (folder / "notes.md").read_text() == "first version"
    assert (folder / "notes (2).md").read_text() == "second version"
    assert sorted(p.name for p in folder.iterdir()) == ["notes (2).md", "notes.md"]


def test_bad_uploads_are_refused_and_not_kept(library: Library, folders, tmp_path: Path) -> None:
    data, _ = folders
    library.sync()
    upload = tmp_path / "upload"
    cases = [
        ("virus.exe", b"MZ...", "the file type .exe is not supported"),
        ("nothing.md", b"", "the file is empty"),
        (
            "big.txt",
            b"x" * (20 * 1024 * 1024 + 1),
            "it is 20.0 MB and uploads are limited to 20 MB",
        ),
        ("scan.pdf", files.image_only_pdf(), "no text was found in it"),
    ]
    for name, content, problem in cases:
        upload.write_bytes(content)
        outcome = add_upload(library, upload, name)
        assert outcome.problem.startswith(problem), outcome
        assert outcome.summary().startswith(f"{name} was not added: {problem}")
    assert sorted(p.name for p in data.iterdir()) == ["seed.md"]

    upload.write_bytes(files.pdf("Llamas hum when content"))
    outcome = add_upload(library, upload, "../llamas.pdf")
    assert outcome.summary() == "Added llamas.pdf (1 passage); it can be asked about now."
    assert search(library, "Why do llamas hum?")[0][0] == "llamas.pdf"
    assert add_upload(library, upload, "llamas.pdf").summary() == (
        "llamas.pdf is already in the library, as llamas.pdf."
    )


def run_ingest(library: Library, *args: str, **popen) -> subprocess.Popen:
    """`python -m ragchat ingest` on the library's folders and store."""
    env = environ_without_settings()
    settings = library.settings
    env.update(DATA_DIR=str(settings.data_dir), STORAGE_DIR=str(settings.storage_dir))
    if settings.database_url:
        env.update(DATABASE_URL=settings.database_url)
    return subprocess.Popen(
        [sys.executable, "-m", "ragchat", "ingest", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def write_many(folder: Path, count: int, start: int = 0) -> None:
    """`count` files of one chunk each."""
    for i in range(start, start + count):
        (folder / f"fact{i:03}.txt").write_text(
            f"Fact number {i}: the reference code of item {i} is ZX-{i * 7919}."
        )


def added_count(output: str) -> int:
    return int(output.strip().splitlines()[-1].split(": ", 1)[1].split(" added")[0])


def test_a_kill_9_mid_ingest_loses_nothing_and_the_next_sync_finishes(
    library: Library, folders
) -> None:
    data, _ = folders
    write_many(data, 20)
    library.sync()
    write_many(data, 220, start=20)

    ingest = run_ingest(library)
    deadline = time.monotonic() + 180
    while library.store.count() < 21 + 3 * 16 and time.monotonic() < deadline:
        time.sleep(0.05)  # until a few batches are committed
    ingest.send_signal(signal.SIGKILL)
    ingest.wait()
    written = library.store.count()
    assert 21 < written < 241, "the ingest should have been killed half-way"

    reopened = Library(library.settings, library.embed_model)
    assert search(reopened, "What is the reference code of item 7?")[0][0] == "fact007.txt"
    assert search(reopened, "seed")[0][0] == "seed.md"

    finished = reopened.sync()
    assert finished.added  # the files the killed run did not finish
    assert files_in_index(reopened) == {"seed.md"} | {f"fact{i:03}.txt" for i in range(240)}
    assert reopened.store.count() == 241  # one chunk per file: nothing twice
    assert not reopened.sync().changed_anything


def test_two_processes_syncing_at_once_do_not_corrupt_the_index(library: Library, folders) -> None:
    data, _ = folders
    write_many(data, 60)
    first, second = run_ingest(library), run_ingest(library)
    outputs = [first.communicate(timeout=300)[0], second.communicate(timeout=300)[0]]
    assert first.returncode == 0 and second.returncode == 0, outputs
    assert sorted(added_count(out) for out in outputs) == [0, 61]  # one waited for the other
    assert library.store.count() == 61
    assert files_in_index(library) == {"seed.md"} | {f"fact{i:03}.txt" for i in range(60)}


def test_a_large_index_is_searched_through_a_vector_index_with_the_same_results(
    lance_library: Library, folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = lance_library
    data, _ = folders
    write_many(data, 80)
    library.sync()
    questions = ["the reference code of item 17", "item 42", "which fact is number 63?", "seed"]
    scanned = [search(library, q, top_k=5) for q in questions]
    assert library.store.table.index_stats(VECTOR_INDEX) is None  # small: a scan is enough

    monkeypatch.setattr(ragchat.vector_store, "INDEX_MIN_ROWS", 50)
    write_many(data, 2, start=80)  # a change, so the next sync runs
    library.sync()
    stats = library.store.table.index_stats(VECTOR_INDEX)
    assert (stats.index_type, stats.num_indexed_rows, stats.num_unindexed_rows) == (
        "IVF_FLAT",
        83,
        0,
    )
    # Every partition is probed, so the index finds exactly what the scan found.
    assert [search(library, q, top_k=5) for q in questions] == scanned

    write_many(data, 3, start=82)  # a few more: searched too, without a rebuild
    library.sync()
    assert library.store.table.index_stats(VECTOR_INDEX).num_unindexed_rows == 3
    assert search(library, "Fact number 84", top_k=1)[0][0] == "fact084.txt"
    write_many(data, 10, start=85)  # more than REINDEX_SHARE: rebuilt
    library.sync()
    assert library.store.table.index_stats(VECTOR_INDEX).num_unindexed_rows == 0


# --- zip bombs: a .docx is a zip archive, and the reader unzips its parts whole into memory ---

DOCUMENT_XML = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
    "<w:body>{}</w:body></w:document>"
)
CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="xml" ContentType="application/xml"/></Types>'
)


def docx_bomb(unzipped_mb: int = 60) -> bytes:
    """A valid Word document whose text is `unzipped_mb` MB of laughter, zipped to ~60 KB."""
    body = "<w:p><w:r><w:t>" + "ha" * (unzipped_mb * 1024 * 1024 // 2) + "</w:t></w:r></w:p>"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zipped:
        zipped.writestr("[Content_Types].xml", CONTENT_TYPES)
        zipped.writestr("word/document.xml", DOCUMENT_XML.format(body))
    return archive.getvalue()


def lying_docx(text: str, hidden_mb: int = 200) -> bytes:
    """A Word document whose word/document.xml declares the size (and CRC) of a short valid
    document but whose compressed data goes on for `hidden_mb` MB more: zipfile hands out only
    the declared bytes, yet ZipFile.read decompresses all of them to get there."""
    document = DOCUMENT_XML.format(f"<w:p><w:r><w:t>{text}</w:t></w:r></w:p>").encode()
    squeeze = zlib.compressobj(6, zlib.DEFLATED, -15)  # raw deflate, as in a zip archive
    zeros = bytes(1 << 20)
    data = squeeze.compress(document) + b"".join(squeeze.compress(zeros) for _ in range(hidden_mb))
    data += squeeze.flush()
    members = [
        ("[Content_Types].xml", CONTENT_TYPES.encode(), None),
        ("word/document.xml", document, data),
    ]
    local, central = b"", b""
    for name, content, deflated in members:
        raw = name.encode()
        deflated = deflated if deflated is not None else _deflate(content)
        sizes = (zlib.crc32(content), len(deflated), len(content), len(raw))
        central += (
            struct.pack(
                "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, *sizes, 0, 0, 0, 0, 0, len(local)
            )
            + raw
        )
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, *sizes, 0) + raw
        local += deflated
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 2, 2, len(central), len(local), 0)
    return local + central + end


def _deflate(content: bytes) -> bytes:
    squeeze = zlib.compressobj(6, zlib.DEFLATED, -15)
    return squeeze.compress(content) + squeeze.flush()


@pytest.fixture
def docx_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the Word documents handed to the reader (docx2txt) from now on."""
    import docx2txt

    reads: list[str] = []
    real_process = docx2txt.process

    def process(docx, *args, **kwargs):
        reads.append(Path(docx).name)
        if "bomb" in Path(docx).name:  # the test fails quickly instead of unzipping 60 MB
            raise AssertionError("the zip bomb reached the reader")
        return real_process(docx, *args, **kwargs)

    monkeypatch.setattr(docx2txt, "process", process)
    return reads


def test_a_docx_zip_bomb_in_data_dir_is_refused_before_it_is_read(
    library: Library, folders, docx_reads: list[str]
) -> None:
    data, _ = folders
    (data / "letter.docx").write_bytes(files.docx("The tenant pays the water bill"))
    library.sync()
    bomb = docx_bomb()
    assert len(bomb) < 100 * 1024
    (data / "bomb.docx").write_bytes(bomb)
    (data / "memo.docx").write_bytes(files.docx("The landlord fixes the roof"))
    started = time.monotonic()
    report = library.sync()
    assert time.monotonic() - started < 5
    assert report.skipped == {
        "bomb.docx": "it unzips to 60.0 MB, more than the 50 MB a document may unzip to "
        "(UNZIPPED_MAX_MB); split it into smaller documents, or ask the administrator to "
        "raise UNZIPPED_MAX_MB"
    }
    assert report.added == ["memo.docx"]
    assert docx_reads == ["letter.docx", "memo.docx"]  # the bomb never reached the reader
    assert files_in_index(library) == {"seed.md", "letter.docx", "memo.docx"}
    assert search(library, "Who pays for water?")[0][0] == "letter.docx"


def test_a_docx_zip_bomb_upload_is_refused_and_not_kept(
    library: Library, folders, tmp_path: Path, docx_reads: list[str]
) -> None:
    data, _ = folders
    library.sync()
    upload = tmp_path / "upload"
    upload.write_bytes(docx_bomb())
    started = time.monotonic()
    outcome = add_upload(library, upload, "bomb.docx")
    assert time.monotonic() - started < 5
    assert outcome.summary().startswith(
        "bomb.docx was not added: it unzips to 60.0 MB, more than the 50 MB a document may unzip to"
    )
    assert docx_reads == []
    assert sorted(p.name for p in data.iterdir()) == ["seed.md"]
    assert files_in_index(library) == {"seed.md"}


def test_a_docx_hiding_data_past_its_declared_sizes_is_refused(
    library: Library, folders, docx_reads: list[str]
) -> None:
    data, _ = folders
    library.sync()
    lying = lying_docx("The tenant pays the water bill")
    assert len(lying) < 1024 * 1024
    (data / "lying.docx").write_bytes(lying)
    (data / "honest.docx").write_bytes(files.docx("The landlord fixes the roof"))
    started = time.monotonic()
    report = library.sync()
    assert time.monotonic() - started < 5
    assert report.skipped == {
        "lying.docx": "it could not be read as a Word document (word/document.xml is not the "
        "size the archive says; save it again)"
    }
    assert docx_reads == ["honest.docx"]
    assert files_in_index(library) == {"seed.md", "honest.docx"}


def test_the_unzipped_limit_is_a_setting(folders, embed_model) -> None:
    data, storage = folders
    settings = load_settings(_env_file=None, data_dir=data, storage_dir=storage, unzipped_max_mb=1)
    library = Library(settings, embed_model)
    (data / "small.docx").write_bytes(files.docx("The tenant pays the water bill"))
    (data / "two-mb.docx").write_bytes(docx_bomb(unzipped_mb=2))
    report = library.sync()
    assert sorted(report.added) == ["seed.md", "small.docx"]
    assert report.skipped["two-mb.docx"].startswith("it unzips to 2.0 MB, more than the 1 MB")
