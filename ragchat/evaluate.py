"""Retrieval quality on a test collection, measured through the app's own ingestion and retriever.

Layout: a folder of documents, `queries.tsv` (query_id<TAB>text) and `qrels.tsv`
(query_id<TAB>file_name<TAB>grade, where grade > 0 is relevant and larger is more relevant).
A hit is any chunk of a relevant file; chunks of one file count once, at their best rank.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
import tempfile
import time
from pathlib import Path

from ragchat.config import Settings
from ragchat.ingest import Library
from ragchat.retrieval import build_retriever

DEPTH = 10
CUTOFFS = (1, 2, 5, 10)


def read_queries(path: Path) -> dict[str, str]:
    with path.open(newline="") as file:
        return {row[0]: row[1] for row in csv.reader(file, delimiter="\t") if len(row) >= 2}


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    judged: dict[str, dict[str, int]] = {}
    with path.open(newline="") as file:
        for query_id, file_name, grade in csv.reader(file, delimiter="\t"):
            if int(grade) > 0:
                judged.setdefault(query_id, {})[file_name] = int(grade)
    return judged


def evaluate(
    settings: Settings,
    docs: Path,
    queries: dict[str, str],
    qrels: dict,
    storage: Path | None = None,
) -> dict:
    """hit@k, MRR@10, nDCG@10 and retrieval latency p50 over the judged queries. The index is
    built in `storage` (kept, so other modes can be measured on it) or in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="ragchat-eval-") as temporary:
        storage = storage or Path(temporary)
        settings = settings.model_copy(update={"data_dir": docs, "storage_dir": storage})
        library = Library.from_settings(settings)
        library.sync(progress=True)
        # Deep enough that ten distinct files come out even when files have several chunks.
        retriever = build_retriever(library, settings, top_k=3 * DEPTH)
        rankings, latencies = {}, []
        for query_id in sorted(qrels, key=_natural):
            started = time.perf_counter()
            hits = retriever.retrieve(queries[query_id])
            latencies.append(time.perf_counter() - started)
            rankings[query_id] = list(dict.fromkeys(h.node.metadata["file_name"] for h in hits))
    return scores(rankings, qrels) | {"latency_p50_ms": statistics.median(latencies) * 1000}


def scores(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict:
    totals = {f"hit@{k}": 0.0 for k in CUTOFFS} | {"mrr@10": 0.0, "ndcg@10": 0.0}
    for query_id, relevant in qrels.items():
        ranked = rankings.get(query_id, [])[:DEPTH]
        first = next((rank for rank, name in enumerate(ranked, 1) if name in relevant), None)
        for k in CUTOFFS:
            totals[f"hit@{k}"] += first is not None and first <= k
        totals["mrr@10"] += 1 / first if first else 0.0
        gains = sorted(relevant.values(), reverse=True)[:DEPTH]
        ideal = sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, 1))
        found = sum(relevant.get(n, 0) / math.log2(rank + 1) for rank, n in enumerate(ranked, 1))
        totals["ndcg@10"] += found / ideal
    return {name: value / len(qrels) for name, value in totals.items()} | {"queries": len(qrels)}


def convert_smart(source: Path, target: Path) -> tuple[int, int]:
    """A SMART collection (`*.all.*` documents, `*.qry` queries, `*qrel*` judgments, as
    Cranfield) into the layout above. Returns (documents, judged queries)."""
    documents = _smart_blocks(next(source.glob("*.all.*")).read_text())
    queries = _smart_blocks(next(source.glob("*.qry")).read_text())
    (target / "docs").mkdir(parents=True, exist_ok=True)
    for number, fields in documents:
        title = " ".join(fields.get("T", "").split())
        (target / "docs" / f"doc_{int(number):04}.txt").write_text(
            f"{title}\n\n{fields.get('W', '').strip()}\n"
        )
    # The judgments number queries 1, 2, 3... in file order, whatever their .I says.
    with (target / "queries.tsv").open("w", newline="") as file:
        writer = csv.writer(file, delimiter="\t")
        for position, (_, fields) in enumerate(queries, start=1):
            writer.writerow([position, " ".join(fields.get("W", "").split())])
    judged = set()
    with (target / "qrels.tsv").open("w", newline="") as file:
        writer = csv.writer(file, delimiter="\t")
        for line in next(source.glob("*qrel*")).read_text().splitlines():
            query, document, grade = line.split()[:3]
            if int(grade) > 0:  # -1: judged of no interest
                # SMART grades 1 (best) to 4; here larger means more relevant.
                writer.writerow([query, f"doc_{int(document):04}.txt", 5 - int(grade)])
                judged.add(query)
    return len(documents), len(judged)


def _smart_blocks(text: str) -> list[tuple[str, dict[str, str]]]:
    blocks = []
    for block in re.split(r"^\.I\s+", text, flags=re.MULTILINE)[1:]:
        number, _, body = block.partition("\n")
        fields = dict(
            re.findall(r"^\.([A-Z])\n(.*?)(?=^\.[A-Z]\n|\Z)", body, flags=re.MULTILINE | re.DOTALL)
        )
        blocks.append((number.strip(), fields))
    return blocks


def _natural(query_id: str) -> tuple:
    return (0, int(query_id)) if query_id.isdigit() else (1, query_id)
