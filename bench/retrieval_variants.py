"""Which general retrieval techniques beat the app's hybrid search on a test collection?

Each variant re-ranks the app's own index (its chunks and stored MiniLM vectors, built by the
app's ingestion), so the only difference from the app is the technique itself:
- vector, lexical, hybrid: the app's three modes (hybrid fuses chunk lists by reciprocal rank);
- document-level fusion:   both lists collapsed to files before reciprocal-rank fusion;
- dense feedback:          Rocchio on the vector side, the question's vector plus the mean of
                           the 5 best fused chunks', searched again, then fused;
- lexical feedback:        RM3-style, the 10 commonest stems of the 5 best fused chunks added
                           to the BM25 query at half weight, then fused;
- lexical with bigrams:    BM25 over adjacent stem pairs added at half weight to BM25 over
                           stems (a sequential-dependence-style phrase signal), then fused.
For each it prints the figures of `python -m ragchat eval` and, against the app's hybrid, the
mean difference in reciprocal rank with its 95% paired-bootstrap interval: an interval that
holds 0 is no evidence of a gain.

    python -m ragchat convert-smart tests/data/cranfield /tmp/cranfield
    python bench/retrieval_variants.py --docs /tmp/cranfield/docs \
        --queries /tmp/cranfield/queries.tsv --qrels /tmp/cranfield/qrels.tsv [--storage DIR]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from llama_index.core.schema import MetadataMode

from ragchat.config import load_settings
from ragchat.evaluate import DEPTH, read_qrels, read_queries, scores
from ragchat.ingest import Library
from ragchat.models import build_embed_model

POOL = 30  # how deep each side looks before fusion, as in the app
FEEDBACK = 5


class Collection:
    """The app's chunks with their vectors, a BM25 index over the text the app's BM25 reads,
    and the judged queries."""

    def __init__(self, library: Library, queries: dict[str, str], qrels: dict) -> None:
        nodes = library.store.all_nodes()
        self.files = [node.metadata["file_name"] for node in nodes]
        texts = [node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]
        vectors = np.array([node.embedding for node in nodes], dtype=np.float32)
        self.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.stemmer = Stemmer.Stemmer("english")
        self.stems = [self.tokens(text) for text in texts]
        self.bm25 = self._index(self.stems)
        self.pairs = [_bigrams(stems) for stems in self.stems]
        self.pair_ids: dict[str, int] = {}
        self.bigram_bm25 = self._index(self.pairs, self.pair_ids)
        self.qrels = qrels
        self.ids = list(qrels)
        embed = library.embed_model
        self.questions = {q: queries[q] for q in self.ids}
        self.query_vectors = {
            q: np.array(embed.get_query_embedding(text), dtype=np.float32)
            for q, text in self.questions.items()
        }

    def tokens(self, text: str) -> list[str]:
        return bm25s.tokenize(
            text, stemmer=self.stemmer, stopwords="en", return_ids=False, show_progress=False
        )[0]

    @staticmethod
    def _index(documents: list[list[str]], vocabulary: dict[str, int] | None = None):
        vocabulary = {} if vocabulary is None else vocabulary
        ids = [[vocabulary.setdefault(token, len(vocabulary)) for token in d] for d in documents]
        index = bm25s.BM25()
        index.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocabulary), show_progress=False)
        return index

    def bm25_scores(self, stems: list[str]) -> np.ndarray:
        known = [s for s in stems if s in self.bm25.vocab_dict]
        return self.bm25.get_scores(known) if known else np.zeros(len(self.files))

    def bigram_scores(self, stems: list[str]) -> np.ndarray:
        known = [p for p in _bigrams(stems) if p in self.pair_ids]
        return self.bigram_bm25.get_scores(known) if known else np.zeros(len(self.files))


def _bigrams(stems: list[str]) -> list[str]:
    return [f"{a} {b}" for a, b in zip(stems, stems[1:], strict=False)]


def _top(values: np.ndarray) -> list[int]:
    return list(np.argsort(-values, kind="stable")[:POOL])


def _fuse(*rankings: list, k: int = 60) -> list:
    fused: dict = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1 / (k + rank)
    return sorted(fused, key=lambda item: -fused[item])


def variants(c: Collection) -> dict[str, dict[str, list[str]]]:
    """Per variant, per query: the files in ranked order."""
    files = lambda chunks: list(dict.fromkeys(c.files[i] for i in chunks))  # noqa: E731
    out: dict[str, dict[str, list[str]]] = collections.defaultdict(dict)
    for q in c.ids:
        stems = c.tokens(c.questions[q])
        lexical_scores = c.bm25_scores(stems)
        vector, lexical = _top(c.vectors @ c.query_vectors[q]), _top(lexical_scores)
        hybrid = _fuse(vector, lexical)
        feedback = hybrid[:FEEDBACK]
        out["vector"][q], out["lexical (BM25)"][q] = files(vector), files(lexical)
        out["hybrid (the app)"][q] = files(hybrid)
        out["document-level fusion"][q] = _fuse(files(vector), files(lexical))

        rocchio = c.query_vectors[q] + c.vectors[feedback].mean(axis=0)
        out["dense feedback"][q] = files(_fuse(_top(c.vectors @ rocchio), lexical))

        weights = collections.Counter()
        for chunk in feedback:
            counts = collections.Counter(c.stems[chunk])
            for stem, n in counts.items():
                weights[stem] += n / sum(counts.values()) / FEEDBACK
        expansion = weights.most_common(10)
        total = sum(w for _, w in expansion) or 1.0
        extra = sum(w / total * c.bm25_scores([stem]) for stem, w in expansion)
        expanded = 0.5 * lexical_scores / (lexical_scores.max() or 1) + 0.5 * extra / (
            extra.max() or 1
        )
        out["lexical feedback"][q] = files(_fuse(vector, _top(expanded)))

        phrases = lexical_scores + 0.5 * c.bigram_scores(stems)
        out["lexical with bigrams"][q] = files(_fuse(vector, _top(phrases)))
    return out


def reciprocal_ranks(ranking: dict[str, list[str]], qrels: dict) -> np.ndarray:
    return np.array(
        [
            next((1 / r for r, f in enumerate(ranking[q][:DEPTH], 1) if f in qrels[q]), 0.0)
            for q in qrels
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--qrels", type=Path, required=True)
    parser.add_argument("--storage", type=Path, help="index folder to build or reuse")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ragchat-variants-") as temporary:
        settings = load_settings(
            _env_file=None, data_dir=args.docs, storage_dir=args.storage or Path(temporary)
        )
        library = Library(settings, build_embed_model(settings))
        library.sync(progress=True)
        qrels = read_qrels(args.qrels)
        collection = Collection(library, read_queries(args.queries), qrels)
    results = variants(collection)
    baseline = reciprocal_ranks(results["hybrid (the app)"], qrels)
    rng = np.random.default_rng(0)
    print(f"{len(qrels)} queries, {len(collection.files)} chunks\n")
    print("| variant | hit@1 | hit@5 | hit@10 | MRR@10 | nDCG@10 | MRR vs the app (95% CI) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, ranking in results.items():
        s = scores(ranking, qrels)
        gain = reciprocal_ranks(ranking, qrels) - baseline
        samples = [gain[rng.integers(0, len(gain), len(gain))].mean() for _ in range(5000)]
        low, high = np.percentile(samples, [2.5, 97.5])
        print(
            f"| {name} | {s['hit@1']:.3f} | {s['hit@5']:.3f} | {s['hit@10']:.3f} | "
            f"{s['mrr@10']:.3f} | {s['ndcg@10']:.3f} | "
            f"{gain.mean():+.3f} ({low:+.3f}, {high:+.3f}) |"
        )


if __name__ == "__main__":
    main()
