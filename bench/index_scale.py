"""The index at 50,000 chunks: ragchat's LanceDB index, the same index in PostgreSQL (what
DATABASE_URL selects) and llama_index's default JSON store.

Builds a corpus of real English (Cranfield abstracts, each file a run of them, each abstract
made unique by a report number), ingests it with the app's own sync into LanceDB, copies the
very same chunks, embeddings and bookkeeping into a throwaway PostgreSQL (started as the tests
start theirs), then measures each store in a fresh process so that memory is its own:
- time to open the index (and answer a first hybrid question);
- vector and hybrid retrieval p50 and p95 (query embeddings computed beforehand);
- time to add one document and to delete one through the app's sync, and the first hybrid
  retrieval after each (LanceDB's BM25 is rebuilt from every chunk then; PostgreSQL rebuilds
  nothing);
- peak memory (max RSS) of the process, and its growth over the loaded models;
- Cranfield's 225 queries: a relevant abstract among the top 10 (lexical and hybrid).
Ingest throughput is the app's sync against the raw sentence-transformers encode of the same
chunks, side by side on a sample.

Above 10,000 chunks the LanceDB table is searched through its IVF_FLAT index probed in every
partition; the benchmark checks that this returns exactly what a full scan returns. PostgreSQL
searches an HNSW index, approximate: its recall against an exact scan is measured at several
ef_search values.

Goals: open <= 2 s, vector p50 <= 20 ms, hybrid p50 <= 30 ms, add or delete one document <= 1 s,
HNSW recall >= 0.99, throughput >= 0.9 of the raw encoder.

    python bench/index_scale.py [--chunks 50000] [--sample 2000] [--work DIR]

It takes a while on 2 cores (the embedding of 50,000 chunks dominates: about 20 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The shared evaluation data sits beside the checkout (or beside the worktrees' folder).
CRANFIELD = next(
    (
        folder / "shared" / "eval" / "cranfield" / "cran.all.1400"
        for folder in (ROOT.parent, ROOT.parent.parent)
        if (folder / "shared" / "eval" / "cranfield").is_dir()
    ),
    ROOT.parent / "shared" / "eval" / "cranfield" / "cran.all.1400",
)
PER_FILE = 20
QUERIES = [
    "boundary layer transition on a flat plate",
    "heat transfer in hypersonic flow",
    "buckling of thin cylindrical shells",
    "shock wave interaction with a wedge",
    "laminar flow separation near the trailing edge",
]


def abstracts() -> list[str]:
    text = CRANFIELD.read_text()
    return [block.split("\n.W\n", 1)[-1].strip() for block in text.split(".I ")[1:]]


def cranfield_queries() -> list[str]:
    text = (CRANFIELD.parent / "cran.qry").read_text()
    return [" ".join(block.split("\n.W\n", 1)[-1].split()) for block in text.split(".I ")[1:]]


def write_corpus(folder: Path, chunks: int) -> None:
    texts = abstracts()
    folder.mkdir(parents=True)
    for start in range(0, chunks, PER_FILE):
        body = "\n\n".join(
            f"Report {n}. {texts[n % len(texts)]}"
            for n in range(start, min(start + PER_FILE, chunks))
        )
        (folder / f"report-{start // PER_FILE:05}.txt").write_text(body)


def relevant() -> dict[int, set[int]]:
    """Cranfield's judgements: query number -> the abstracts (0-based) relevant to it."""
    judged: dict[int, set[int]] = {}
    for line in (CRANFIELD.parent / "cranqrel").read_text().split("\n"):
        if line.strip():
            query, abstract = line.split()[:2]
            judged.setdefault(int(query), set()).add(int(abstract) - 1)
    return judged


def abstracts_in(chunk: str) -> set[int]:
    return {int(n) % len(abstracts()) for n in re.findall(r"Report (\d+)\.", chunk)}


def settings_for(work: Path, database_url: str | None = None):
    from ragchat.config import load_settings

    return load_settings(
        _env_file=None,
        data_dir=work / "data",
        storage_dir=work / "storage",
        database_url=database_url,
    )


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- phases, each run in its own process ---------------------------------------------------


def build(work: Path) -> dict:
    from ragchat.ingest import Library
    from ragchat.models import build_embed_model

    settings = settings_for(work)
    library = Library(settings, build_embed_model(settings))
    started = time.perf_counter()
    report = library.sync(progress=True)
    return {
        "seconds": time.perf_counter() - started,
        "chunks": library.store.count(),
        "files": len(report.added),
    }


def throughput(work: Path, sample: int) -> dict:
    """The app's ingest and the raw encoder on the same sample, alternately, best of two."""
    from llama_index.core.schema import MetadataMode
    from llama_index.core.vector_stores.utils import metadata_dict_to_node
    from sentence_transformers import SentenceTransformer

    from ragchat.ingest import Library
    from ragchat.models import build_embed_model, bundled_embed_path

    sample_dir = work / "sample"
    shutil.rmtree(sample_dir, ignore_errors=True)
    write_corpus(sample_dir / "data", sample)
    settings = settings_for(sample_dir)
    embed_model = build_embed_model(settings)
    ours, raw = [], []
    for _ in range(2):
        shutil.rmtree(sample_dir / "storage", ignore_errors=True)
        library = Library(settings, embed_model)
        started = time.perf_counter()
        library.sync()
        ours.append(library.store.count() / (time.perf_counter() - started))
        # Exactly the strings the app embedded: chunk text with its file name.
        rows = library.store.table.search().limit(None).select(["metadata"]).to_list()
        texts = [
            metadata_dict_to_node(row["metadata"]).get_content(metadata_mode=MetadataMode.EMBED)
            for row in rows
        ]
        encoder = SentenceTransformer(str(bundled_embed_path()), device="cpu")
        started = time.perf_counter()
        encoder.encode(texts)
        raw.append(len(texts) / (time.perf_counter() - started))
    return {"ours": max(ours), "raw": max(raw)}


def export_json_store(work: Path) -> dict:
    """The same chunks and embeddings in llama_index's default SimpleVectorStore."""
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore

    from ragchat.ingest import Library
    from ragchat.models import build_embed_model

    settings = settings_for(work)
    library = Library(settings, build_embed_model(settings))
    rows = (
        library.store.table.search()
        .limit(None)
        .select(["id", "doc_id", "text", "vector"])
        .to_list()
    )
    nodes = [TextNode(id_=r["id"], text=r["text"], embedding=list(r["vector"])) for r in rows]
    for node, row in zip(nodes, rows):
        node.relationships = {}
        node.metadata = {"doc_id": row["doc_id"]}
    context = StorageContext.from_defaults(vector_store=SimpleVectorStore())
    VectorStoreIndex(nodes, storage_context=context, embed_model=library.embed_model)
    started = time.perf_counter()
    context.persist(str(work / "json"))
    return {"persist": time.perf_counter() - started}


def copy_to_postgresql(work: Path, url: str) -> dict:
    """The LanceDB index, with its embeddings and bookkeeping, copied into PostgreSQL as
    `ragchat migrate` copies it: the index the app would have built there."""
    from ragchat.migrate import copy_index

    started = time.perf_counter()
    [passages, _files] = copy_index(settings_for(work), settings_for(work, url))
    return {"seconds": time.perf_counter() - started, "chunks": passages.target}


def measure(work: Path, store: str, url: str | None) -> dict:
    from llama_index.core import StorageContext, load_index_from_storage
    from llama_index.core.schema import Document, QueryBundle

    from ragchat.ingest import Library
    from ragchat.models import build_embed_model
    from ragchat.retrieval import build_retriever

    settings = settings_for(work, url)
    embed_model = build_embed_model(settings)
    vectors = [embed_model.get_query_embedding(q) for q in QUERIES]
    checks = cranfield_queries()
    check_vectors = embed_model.get_text_embedding_batch(checks)
    baseline = rss_mb()  # the models and the query vectors, before any index is opened

    def hybrid(query: str, vector: list[float], mode: str = "hybrid", top_k: int | None = None):
        retriever = build_retriever(library, settings, top_k=top_k, mode=mode)
        return retriever.retrieve(QueryBundle(query, embedding=vector))

    started = time.perf_counter()
    if store == "json":
        context = StorageContext.from_defaults(persist_dir=str(work / "json"))
        index = load_index_from_storage(context, embed_model=embed_model)
    else:
        library = Library(settings, embed_model)
        index = library.index()
        hybrid(QUERIES[0], vectors[0])  # the first question: LanceDB builds its BM25 here
    opened = time.perf_counter() - started

    retriever = index.as_retriever(similarity_top_k=settings.top_k)
    figures: dict = {"open": opened}
    if store == "lancedb":  # the vector index must find exactly what a full scan finds
        table = library.store.table
        figures["same_as_scan"] = sum(
            {hit.node.node_id for hit in retriever.retrieve(QueryBundle(q, embedding=v))}
            == {
                row["id"]
                for row in table.search(v).bypass_vector_index().limit(settings.top_k).to_list()
            }
            for q, v in zip(checks, check_vectors)
        ) / len(checks)
    if store == "postgresql":
        figures["recall"] = hnsw_recall(library.store, check_vectors, settings.top_k)
    if store != "json":
        judged = relevant()
        for mode in ("lexical", "hybrid"):
            found = [
                set().union(
                    *(abstracts_in(hit.node.get_content()) for hit in hybrid(q, v, mode, 10))
                )
                for q, v in zip(checks, check_vectors)
            ]
            figures[f"{mode}_hit10"] = sum(
                bool(f & judged.get(number, set())) for number, f in enumerate(found, 1)
            ) / len(checks)

    def timed(search) -> list[float]:
        latencies = []
        for _ in range(20):
            for query, vector in zip(QUERIES, vectors):
                started = time.perf_counter()
                search(query, vector)
                latencies.append(time.perf_counter() - started)
        return sorted(latencies)

    vector_times = timed(lambda q, v: retriever.retrieve(QueryBundle(q, embedding=v)))
    figures |= {
        "p50": statistics.median(vector_times),
        "p95": vector_times[int(len(vector_times) * 0.95)],
    }
    if store != "json":
        hybrid_times = timed(hybrid)
        figures |= {
            "hybrid_p50": statistics.median(hybrid_times),
            "hybrid_p95": hybrid_times[int(len(hybrid_times) * 0.95)],
        }

    new_file = work / "data" / "zz-new-report.txt"
    text = "Report new. " + abstracts()[7]
    started = time.perf_counter()
    if store == "json":
        index.insert(Document(text=text, id_="zz-new-report.txt"))
        context.persist(str(work / "json"))
    else:
        new_file.write_text(text)
        library.sync()
    figures["add"] = time.perf_counter() - started
    if store != "json":
        started = time.perf_counter()
        hybrid(QUERIES[1], vectors[1])
        figures["hybrid_after_add"] = time.perf_counter() - started

    started = time.perf_counter()
    if store == "json":
        index.delete_ref_doc("zz-new-report.txt")
        context.persist(str(work / "json"))
    else:
        new_file.unlink()
        library.sync()
    figures["delete"] = time.perf_counter() - started
    if store != "json":
        started = time.perf_counter()
        hybrid(QUERIES[2], vectors[2])
        figures["hybrid_after_delete"] = time.perf_counter() - started

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures | {"max_rss_mb": peak, "growth_mb": peak - baseline}


def hnsw_recall(store, vectors: list[list[float]], k: int) -> dict[int, dict[str, float]]:
    """Per ef_search: recall against an exact scan, by id (the share of the scan's top k
    returned) and by distance (the share of the returned k at most as far as the scan's k-th).
    The corpus repeats each abstract under many report numbers, so several chunks can sit at
    the k-th distance: which of those an index returns is arbitrary, and recall by id counts
    each such tie as a miss; by distance it is a miss only when a nearer chunk was skipped.
    Timed too: the query p50 at each ef_search."""
    from llama_index.core.vector_stores.types import VectorStoreQuery
    from sqlalchemy import text

    import ragchat.pg_index

    with store.client.begin() as connection:
        connection.execute(text("SET LOCAL enable_indexscan = off"))
        exact = [
            connection.execute(
                text(
                    "SELECT node_id, 1 - (embedding <=> CAST(:q AS vector)) AS similarity "
                    "FROM chunks ORDER BY embedding <=> CAST(:q AS vector) LIMIT :k"
                ),
                {"q": str(v), "k": k},
            ).all()
            for v in vectors
        ]
    chosen, recalls = ragchat.pg_index.EF_SEARCH, {}
    for ef in sorted({100, chosen, 400, 800}):
        ragchat.pg_index.EF_SEARCH = ef
        by_id, by_distance, times = [], [], []
        for vector, scan in zip(vectors, exact):
            started = time.perf_counter()
            found = store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=k))
            times.append(time.perf_counter() - started)
            by_id.append(len(set(found.ids) & {row[0] for row in scan}) / len(scan))
            kth = scan[-1][1] - 1e-6
            by_distance.append(sum(s >= kth for s in found.similarities) / len(scan))
        recalls[ef] = {
            "by_id": statistics.mean(by_id),
            "by_distance": statistics.mean(by_distance),
            "p50_ms": statistics.median(times) * 1000,
        }
    ragchat.pg_index.EF_SEARCH = chosen
    return recalls


def in_child(phase: str, work: Path, *args: str) -> dict:
    # This checkout's ragchat, whichever one the environment has installed.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--work", str(work), *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=50_000)
    parser.add_argument("--sample", type=int, default=2_000)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--phase")
    parser.add_argument("--database-url")
    args = parser.parse_args()

    if args.phase:  # a child process: one phase, its figures as the last line
        from ragchat.logs import setup_logging

        setup_logging()
        url = args.database_url
        phases = {
            "build": lambda: build(args.work),
            "throughput": lambda: throughput(args.work, args.sample),
            "export": lambda: export_json_store(args.work),
            "copy": lambda: copy_to_postgresql(args.work, url),
            "lancedb": lambda: measure(args.work, "lancedb", None),
            "postgresql": lambda: measure(args.work, "postgresql", url),
            "json": lambda: measure(args.work, "json", None),
        }
        print(json.dumps(phases[args.phase]()))
        return

    sys.path.insert(0, str(ROOT))
    from tests.postgres_server import new_database, postgres_server

    work = args.work or Path(tempfile.mkdtemp(prefix="ragchat-scale-"))
    if not (work / "data").exists():
        write_corpus(work / "data", args.chunks)
    built = in_child("build", work)
    speed = (
        None if args.skip_throughput else in_child("throughput", work, "--sample", str(args.sample))
    )
    exported = in_child("export", work)
    with postgres_server() as server, new_database(server) as url:
        copied = in_child("copy", work, "--database-url", url)
        pg = in_child("postgresql", work, "--database-url", url)
    lance, simple = in_child("lancedb", work), in_child("json", work)
    report(built, speed, exported, copied, lance, pg, simple, args.sample, settings_for(work).top_k)


def report(built, speed, exported, copied, lance, pg, simple, sample: int, top_k: int) -> None:
    print(
        f"\n{built['chunks']:,} chunks in {built['files']:,} files; first build "
        f"{built['seconds']:.0f} s ({built['chunks'] / built['seconds']:.1f} chunks/s)"
    )
    print(f"{'':36}{'LanceDB':>10}{'PostgreSQL':>12}{'JSON':>8}   goal")
    rows = [
        ("open the index (s)", "open", "{:.2f}", 1, "<= 2"),
        ("vector retrieval p50 (ms)", "p50", "{:.1f}", 1000, "<= 20"),
        ("vector retrieval p95 (ms)", "p95", "{:.1f}", 1000, ""),
        ("hybrid retrieval p50 (ms)", "hybrid_p50", "{:.1f}", 1000, "<= 30"),
        ("hybrid retrieval p95 (ms)", "hybrid_p95", "{:.1f}", 1000, ""),
        ("add one document (s)", "add", "{:.2f}", 1, "<= 1"),
        ("first hybrid retrieval after (ms)", "hybrid_after_add", "{:.0f}", 1000, ""),
        ("delete one document (s)", "delete", "{:.2f}", 1, "<= 1"),
        ("first hybrid retrieval after (ms)", "hybrid_after_delete", "{:.0f}", 1000, ""),
        ("peak memory (MB)", "max_rss_mb", "{:.0f}", 1, ""),
        ("memory beyond the models (MB)", "growth_mb", "{:.0f}", 1, ""),
        ("lexical: relevant in top 10", "lexical_hit10", "{:.1%}", 1, ""),
        ("hybrid: relevant in top 10", "hybrid_hit10", "{:.1%}", 1, ""),
    ]
    for label, key, form, scale, goal in rows:
        cells = [form.format(f[key] * scale) if key in f else "-" for f in (lance, pg, simple)]
        print(f"{label:36}{cells[0]:>10}{cells[1]:>12}{cells[2]:>8}   {goal}")
    print(
        f"{'persist after the build (s)':36}{'per batch':>10}{'per batch':>12}"
        f"{exported['persist']:>8.1f}"
    )
    print(
        f"PostgreSQL copy (ragchat migrate's): {copied['chunks']:,} chunks with their HNSW "
        f"index in {copied['seconds']:.0f} s"
    )
    print(
        f"Cranfield's 225 queries whose top-{top_k} through LanceDB's vector index equals a full "
        f"scan's: {lance['same_as_scan']:.1%}"
    )
    print(f"PostgreSQL HNSW recall@{top_k} against an exact scan, by ef_search:")
    for ef, recall in pg["recall"].items():
        print(
            f"  {ef}: by distance {recall['by_distance']:.3f}, by id {recall['by_id']:.3f}, "
            f"vector query p50 {recall['p50_ms']:.1f} ms"
        )
    if speed:
        ratio = speed["ours"] / speed["raw"]
        print(
            f"ingest throughput on {sample:,} chunks: {speed['ours']:.1f} chunks/s vs raw "
            f"encoder {speed['raw']:.1f} chunks/s = {ratio:.2f}   goal >= 0.9"
        )


if __name__ == "__main__":
    main()
