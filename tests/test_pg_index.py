"""What only the index on PostgreSQL has: several app instances (each its own engine, as two
processes would have) on one database and one data folder; the HNSW index; word counts kept by
triggers. What both stores share is tested on both in test_ingest.py and test_backend.py."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery
from sqlalchemy import text

from ragchat.config import ConfigError, load_settings
from ragchat.ingest import Library
from ragchat.models import build_embed_model
from ragchat.pg_index import HNSW, PgStore, prepare
from ragchat.retrieval import build_retriever

from .postgres_server import new_database, psql
from .running_app import free_port


@pytest.fixture(scope="module")
def embed_model():
    return build_embed_model(load_settings(_env_file=None))


@pytest.fixture
def database(postgres: str):
    with new_database(postgres) as url:
        yield url


@pytest.fixture
def instances(database: str, embed_model, tmp_path: Path) -> tuple[Library, Library]:
    """Two instances of the app: one data folder, one database, an engine each (the engine is
    cached per URL, so each names itself in the URL), a storage folder each."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "seed.md").write_text("The library keeps the seed file.")
    libraries = []
    for name in ("one", "two"):
        settings = load_settings(
            _env_file=None,
            data_dir=data,
            storage_dir=tmp_path / name,
            database_url=f"{database}?application_name={name}",
        )
        libraries.append(Library(settings, embed_model))
    libraries[0].sync()
    return libraries[0], libraries[1]


@pytest.fixture
def embedded(embed_model, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text embedded for the index from now on, by any instance."""
    texts: list[str] = []
    real = type(embed_model)._get_text_embeddings

    def counted(self, batch: list[str]) -> list[list[float]]:
        texts.extend(batch)
        return real(self, batch)

    monkeypatch.setattr(type(embed_model), "_get_text_embeddings", counted)
    return texts


def found(library: Library, question: str, mode: str) -> list[str]:
    retriever = build_retriever(library, library.settings, top_k=5, mode=mode)
    return [hit.node.metadata["file_name"] for hit in retriever.retrieve(question)]


@pytest.mark.parametrize("wait", [False, True], ids=["periodic", "upload"])
def test_a_file_dropped_in_is_indexed_once_and_answerable_from_every_instance(
    instances: tuple[Library, Library], embedded: list[str], wait: bool
) -> None:
    one, two = instances
    (one.data_dir / "penguins.txt").write_text("Penguins eat krill in Antarctica.")
    together = threading.Barrier(2)

    def sync(library: Library):
        together.wait()
        return library.sync(wait=wait)

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(sync, instances))

    assert sorted(report.added for report in reports) == [[], ["penguins.txt"]]
    assert len(embedded) == 1 and "Penguins eat krill" in embedded[0]  # one set, not two
    assert [report.busy for report in reports].count(True) <= (0 if wait else 1)
    assert one.store.count() == two.store.count() == 2
    for library in instances:
        for mode in ("vector", "lexical", "hybrid"):
            assert found(library, "What do penguins eat?", mode)[0] == "penguins.txt"
    assert not two.sync().changed_anything and len(embedded) == 1  # nothing left to do


def test_a_file_deleted_through_one_instance_is_gone_from_the_others_retrieval(
    instances: tuple[Library, Library],
) -> None:
    one, two = instances
    (one.data_dir / "owls.txt").write_text("Owls hunt mice at night.")
    assert one.sync().added == ["owls.txt"]
    assert found(two, "What do owls hunt?", "hybrid")[0] == "owls.txt"

    (one.data_dir / "owls.txt").unlink()
    assert one.sync().removed == ["owls.txt"]
    for mode in ("vector", "lexical", "hybrid"):
        assert "owls.txt" not in found(two, "What do owls hunt at night?", mode)
    assert two.sync().removed == []  # the other instance knows it is done


def test_the_periodic_sync_skips_while_another_instance_syncs(
    instances: tuple[Library, Library],
) -> None:
    one, two = instances
    (one.data_dir / "owls.txt").write_text("Owls hunt mice at night.")
    with one._ledger.lock() as held:
        assert held
        report = two.sync(wait=False)
    assert report.busy and not report.changed_anything
    assert report.summary() == "another process is syncing the index; this sync was skipped"
    assert two.sync(wait=False).added == ["owls.txt"]  # its next turn does it


def nodes(vectors: np.ndarray, start: int = 0) -> list[TextNode]:
    made = []
    for number, vector in enumerate(vectors, start):
        node = TextNode(
            id_=f"doc{number // 10}.txt#0-{number}",
            text=f"Chunk {number} about topic {number % 37} and subject {number % 11}",
            embedding=vector.tolist(),
            metadata={"file_name": f"doc{number // 10}.txt"},
        )
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(
            node_id=f"doc{number // 10}.txt#0"
        )
        made.append(node)
    return made


def test_the_hnsw_index_finds_what_an_exact_scan_finds(database: str) -> None:
    store = PgStore(database)
    rng = np.random.default_rng(7)
    # Clustered, as embeddings of documents are: 6,000 chunks around 60 topics (on fewer the
    # planner rightly prefers an exact scan).
    centres = rng.normal(size=(60, 128))
    vectors = centres[rng.integers(0, 60, 6000)] + 0.6 * rng.normal(size=(6000, 128))
    store.add(nodes(vectors))
    store.keep_vector_index()
    assert HNSW in psql(database, "SELECT indexname FROM pg_indexes WHERE tablename = 'chunks'")

    queries = centres[rng.integers(0, 60, 50)] + 0.6 * rng.normal(size=(50, 128))
    plan = " ".join(
        psql(
            database,
            "EXPLAIN SELECT node_id FROM chunks ORDER BY embedding <=> "
            f"'{queries[0].tolist()}' LIMIT 10",
        ).split()
    )
    assert f"Index Scan using {HNSW}" in plan
    recalls = []
    for query in queries:
        through_index = store.query(
            VectorStoreQuery(query_embedding=query.tolist(), similarity_top_k=10)
        )
        with store.client.begin() as connection:
            connection.execute(text("SET LOCAL enable_indexscan = off"))
            exact = connection.execute(
                text(
                    "SELECT node_id FROM chunks ORDER BY embedding <=> CAST(:q AS vector) LIMIT 10"
                ),
                {"q": str(query.tolist())},
            ).scalars()
            recalls.append(len(set(through_index.ids) & set(exact)) / 10)
        wanted = query / np.linalg.norm(query)
        best = vectors[int(through_index.ids[0].rsplit("-", 1)[1])]
        assert through_index.similarities[0] == pytest.approx(
            float(wanted @ best / np.linalg.norm(best)), abs=1e-5
        )  # the cosine similarity, as LanceStore gives it
    assert np.mean(recalls) >= 0.99


def test_word_counts_follow_every_write_and_text_is_stored_whatever_it_holds(
    database: str,
) -> None:
    store = PgStore(database)
    rng = np.random.default_rng(1)
    store.add(nodes(rng.normal(size=(100, 8))))
    store.add(nodes(rng.normal(size=(30, 8)), start=80))  # 20 replaced, 10 new
    store.delete_ref_docs(["doc0.txt#0", "doc3.txt#0", "doc10.txt#0"])
    odd = TextNode(id_="odd.txt#0-0", text="Badgers\x00 dig \ud800setts", embedding=[1.0] * 8)
    odd.metadata = {"file_name": "odd.txt", "note": "a\x00b"}
    store.add([odd])

    counted = psql(database, "SELECT word, ndoc FROM chunk_lexemes ORDER BY word")
    recounted = psql(
        database,
        "SELECT '', count(*) FROM chunks UNION ALL "
        "(SELECT word, ndoc FROM ts_stat('SELECT tsv FROM chunks') ORDER BY word)",
    )
    assert counted == recounted
    assert store.count() == 110 - 30 + 1
    assert [hit.node.get_content() for hit in store.lexical("where do badgers dig?", 3)] == [
        "Badgers\ufffd dig \ufffdsetts"
    ]


def test_an_unreachable_database_is_a_one_line_error_without_the_password(
    embed_model, tmp_path: Path
) -> None:
    url = f"postgresql://ann:s3cret@127.0.0.1:{free_port()}/ragchat"
    settings = load_settings(
        _env_file=None, data_dir=tmp_path, storage_dir=tmp_path, database_url=url
    )
    with pytest.raises(ConfigError) as error:
        Library(settings, embed_model)
    message = str(error.value)
    assert message.startswith(
        f"DATABASE_URL postgresql://ann:***@127.0.0.1:{url.split(':')[3].split('/')[0]}/ragchat "
        "cannot be reached ("
    )
    assert "check that the server runs" in message
    assert "s3cret" not in message and "\n" not in message


def test_instances_starting_together_on_a_database_without_pgvector_add_it_once(
    database: str,
) -> None:
    # Two first starts at once both ran CREATE EXTENSION IF NOT EXISTS, and one could fail on
    # pg_extension's unique index, which read as "has no pgvector" and stopped that instance.
    start = threading.Barrier(6)

    def start_instance(number: int) -> str:
        start.wait()
        try:
            prepare(f"{database}?application_name=instance{number}")
        except ConfigError as error:
            return str(error)
        return "started"

    for _ in range(5):
        psql(database, "DROP EXTENSION vector")
        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(start_instance, range(6))) == ["started"] * 6
        assert psql(database, "SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == "1\n"
