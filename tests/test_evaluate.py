"""The evaluation command on real Cranfield data, with a floor under retrieval quality."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ragchat.evaluate import convert_smart, read_qrels, read_queries, scores

from .conftest import ROOT, environ_without_settings

CRANFIELD = ROOT / "tests" / "data" / "cranfield"
SLICE_QUERIES = 60
# Measured on this slice, MRR@10 / hit@5: vector 0.756 / 0.867, lexical 0.740 / 0.867, hybrid
# (the default) 0.797 / 0.850. The floor leaves room for noise, not for a worse pipeline.
FLOOR = {"mrr@10": 0.76, "hit@5": 0.82}


@pytest.fixture(scope="module")
def cranfield(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("cranfield")
    assert convert_smart(CRANFIELD, target) == (1400, 225)
    return target


def test_smart_conversion_keeps_the_collection_quirks_straight(cranfield: Path) -> None:
    queries = read_queries(cranfield / "queries.tsv")
    assert len(queries) == 225
    # .I 365 is the 225th query: judgments number queries by position, not by .I.
    assert queries["225"].startswith("what design factors can be used to control lift-drag")
    judged = read_qrels(cranfield / "qrels.tsv")
    assert len(judged) == 225
    assert judged["1"]["doc_0184.txt"] == 3  # SMART grade 2 is relevant, 5 - 2 here
    assert all(grade > 0 for grades in judged.values() for grade in grades.values())
    title = (cranfield / "docs" / "doc_0001.txt").read_text().splitlines()[0]
    assert title == "experimental investigation of the aerodynamics of a wing in a slipstream ."


def test_scores_by_hand() -> None:
    judged = {"q1": {"a": 3, "b": 1}, "q2": {"c": 2}}
    rankings = {"q1": ["x", "a", "b"], "q2": ["y", "z"]}
    result = scores(rankings, judged)
    assert result["hit@1"] == 0 and result["hit@2"] == 0.5 and result["hit@10"] == 0.5
    assert result["mrr@10"] == pytest.approx((1 / 2 + 0) / 2)
    ideal = 3 + 1 / 1.5849625007211563
    found = 3 / 1.5849625007211563 + 1 / 2
    assert result["ndcg@10"] == pytest.approx((found / ideal + 0) / 2)


def test_retrieval_on_a_slice_of_cranfield_stays_above_the_floor(
    cranfield: Path, tmp_path: Path
) -> None:
    """The first 60 judged queries over their relevant documents and 300 others."""
    judged = read_qrels(cranfield / "qrels.tsv")
    kept_queries = [str(q) for q in range(1, SLICE_QUERIES + 1)]
    documents = {f"doc_{n:04}.txt" for n in range(1, 301)}
    documents |= {name for q in kept_queries for name in judged[q]}
    (tmp_path / "docs").mkdir()
    for name in documents:
        shutil.copy(cranfield / "docs" / name, tmp_path / "docs" / name)
    with (tmp_path / "qrels.tsv").open("w") as qrels:
        for query in kept_queries:
            for name, grade in judged[query].items():
                qrels.write(f"{query}\t{name}\t{grade}\n")

    env = environ_without_settings()
    result = subprocess.run(
        [sys.executable, "-m", "ragchat", "eval", "--docs", str(tmp_path / "docs"),
         "--queries", str(cranfield / "queries.tsv"), "--qrels", str(tmp_path / "qrels.tsv"),
         "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=True,
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["queries"] == SLICE_QUERIES
    for name, floor in FLOOR.items():
        assert figures[name] >= floor, figures
