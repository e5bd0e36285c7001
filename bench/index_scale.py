"""The index at 50,000 chunks: ragchat's LanceDB index next to llama_index's default JSON store.

Builds a corpus of real English (Cranfield abstracts, each file a run of them, each abstract
made unique by a report number), ingests it with the app's own sync, then measures both stores
on the very same chunks and embeddings, each in a fresh process so that memory is its own:
- time to open the index;
- retrieval p50 and p95 of the store query (query embeddings computed beforehand);
- time to add one document and to delete one, including what makes the change durable;
- peak memory (max RSS) of the process.
Ingest throughput is the app's sync against the raw sentence-transformers encode of the same
chunks, side by side on a sample.

Above 10,000 chunks the LanceDB table is searched through its IVF_FLAT index probed in every
partition; the benchmark checks that this returns exactly what a full scan returns.

Goals: open <= 2 s, retrieval p50 <= 20 ms, add or delete one document <= 1 s, throughput >= 0.9
of the raw encoder.

    python bench/index_scale.py [--chunks 50000] [--sample 2000] [--work DIR]

It takes a while on 2 cores (the embedding of 50,000 chunks dominates: about 20 minutes).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CRANFIELD = ROOT.parent / "shared" / "eval" / "cranfield" / "cran.all.1400"
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
            f"Report {n}. {texts[n % len(texts)]}" for n in range(start, min(start + PER_FILE, chunks))
        )
        (folder / f"report-{start // PER_FILE:05}.txt").write_text(body)


def settings_for(work: Path):
    from ragchat.config import load_settings

    return load_settings(_env_file=None, data_dir=work / "data", storage_dir=work / "storage")


# --- phases, each run in its own process ---------------------------------------------------


def build(work: Path) -> dict:
    from ragchat.ingest import Library
    from ragchat.models import build_embed_model

    settings = settings_for(work)
    library = Library(settings, build_embed_model(settings))
    started = time.perf_counter()
    report = library.sync(progress=True)
    return {"seconds": time.perf_counter() - started, "chunks": library.store.count(),
            "files": len(report.added)}


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
    rows = library.store.table.search().limit(None).select(["id", "doc_id", "text", "vector"]).to_list()
    nodes = [TextNode(id_=r["id"], text=r["text"], embedding=list(r["vector"])) for r in rows]
    for node, row in zip(nodes, rows):
        node.relationships = {}
        node.metadata = {"doc_id": row["doc_id"]}
    context = StorageContext.from_defaults(vector_store=SimpleVectorStore())
    VectorStoreIndex(nodes, storage_context=context, embed_model=library.embed_model)
    started = time.perf_counter()
    context.persist(str(work / "json"))
    return {"persist": time.perf_counter() - started}


def measure(work: Path, store: str) -> dict:
    from llama_index.core import StorageContext, load_index_from_storage
    from llama_index.core.schema import Document, QueryBundle

    from ragchat.ingest import Library
    from ragchat.models import build_embed_model

    settings = settings_for(work)
    embed_model = build_embed_model(settings)
    vectors = [embed_model.get_query_embedding(q) for q in QUERIES]
    started = time.perf_counter()
    if store == "lancedb":
        library = Library(settings, embed_model)
        index = library.index()
        index.as_retriever().retrieve(QueryBundle("warm-up", embedding=vectors[0]))
    else:
        context = StorageContext.from_defaults(persist_dir=str(work / "json"))
        index = load_index_from_storage(context, embed_model=embed_model)
    opened = time.perf_counter() - started

    retriever = index.as_retriever(similarity_top_k=settings.top_k)
    same_as_scan = None
    if store == "lancedb":  # the vector index must find exactly what a full scan finds
        table = library.store.table
        checks = cranfield_queries()
        same_as_scan = sum(
            {hit.node.node_id for hit in retriever.retrieve(QueryBundle(q, embedding=v))}
            == {row["id"] for row in table.search(v).bypass_vector_index().limit(settings.top_k).to_list()}
            for q, v in zip(checks, embed_model.get_text_embedding_batch(checks))
        ) / len(checks)
    latencies = []
    for round_ in range(20):
        for query, vector in zip(QUERIES, vectors):
            started = time.perf_counter()
            retriever.retrieve(QueryBundle(query, embedding=vector))
            latencies.append(time.perf_counter() - started)

    new_file = work / "data" / "zz-new-report.txt"
    text = "Report new. " + abstracts()[7]
    started = time.perf_counter()
    if store == "lancedb":
        new_file.write_text(text)
        library.sync()
    else:
        index.insert(Document(text=text, id_="zz-new-report.txt"))
        context.persist(str(work / "json"))
    added = time.perf_counter() - started

    started = time.perf_counter()
    if store == "lancedb":
        new_file.unlink()
        library.sync()
    else:
        index.delete_ref_doc("zz-new-report.txt")
        context.persist(str(work / "json"))
    deleted = time.perf_counter() - started

    latencies.sort()
    return {
        "open": opened,
        "p50": statistics.median(latencies),
        "p95": latencies[int(len(latencies) * 0.95)],
        "add": added,
        "delete": deleted,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "same_as_scan": same_as_scan,
    }


# --- orchestration -------------------------------------------------------------------------


def in_child(phase: str, work: Path, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--work", str(work), *args],
        check=True, stdout=subprocess.PIPE, text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=50_000)
    parser.add_argument("--sample", type=int, default=2_000)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--phase")
    args = parser.parse_args()

    if args.phase:  # a child process: one phase, its figures as the last line
        from ragchat.logs import setup_logging

        setup_logging()
        phases = {
            "build": lambda: build(args.work),
            "throughput": lambda: throughput(args.work, args.sample),
            "export": lambda: export_json_store(args.work),
            "lancedb": lambda: measure(args.work, "lancedb"),
            "json": lambda: measure(args.work, "json"),
        }
        print(json.dumps(phases[args.phase]()))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="ragchat-scale-"))
    if not (work / "data").exists():
        write_corpus(work / "data", args.chunks)
    built = in_child("build", work)
    speed = in_child("throughput", work, "--sample", str(args.sample))
    exported = in_child("export", work)
    lance, simple = in_child("lancedb", work), in_child("json", work)

    print(f"\n{built['chunks']:,} chunks in {built['files']:,} files; first build "
          f"{built['seconds']:.0f} s ({built['chunks'] / built['seconds']:.1f} chunks/s)")
    print(f"{'':34}{'ragchat (LanceDB)':>18}{'llama_index JSON':>18}   goal")
    rows = [
        ("open the index (s)", "open", "{:.2f}", "<= 2"),
        ("retrieval p50 (ms)", "p50", "{:.1f}", "<= 20"),
        ("retrieval p95 (ms)", "p95", "{:.1f}", ""),
        ("add one document (s)", "add", "{:.2f}", "<= 1"),
        ("delete one document (s)", "delete", "{:.2f}", "<= 1"),
        ("peak memory (MB)", "max_rss_mb", "{:.0f}", ""),
    ]
    for label, key, form, goal in rows:
        scale = 1000 if key in ("p50", "p95") else 1
        print(f"{label:34}{form.format(lance[key] * scale):>18}{form.format(simple[key] * scale):>18}   {goal}")
    print(f"{'persist after the build (s)':34}{'(per batch)':>18}{exported['persist']:>18.1f}")
    print(f"Cranfield's 225 queries whose top-{settings_for(work).top_k} through the vector index "
          f"equals a full scan's: {lance['same_as_scan']:.1%}")
    ratio = speed["ours"] / speed["raw"]
    print(f"ingest throughput on {args.sample:,} chunks: {speed['ours']:.1f} chunks/s vs raw encoder "
          f"{speed['raw']:.1f} chunks/s = {ratio:.2f}   goal >= 0.9")


if __name__ == "__main__":
    main()
