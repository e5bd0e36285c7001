"""Does the supporting sentence hold the answer, and does the answer check catch made-up terms?

For each question-answer set of tests/data/answers/ (documents written for this project, with
near-duplicates side by side, and questions whose answer is in no document), the documents are
indexed and every question is asked, in a new chat, through the app's own local backend (its
retriever, relevance gate and settings; SmolLM2 on llama.cpp answering as in the app, with
LLM_MAX_TOKENS=96). Then, with `ragchat.support`:

1. quote holds the answer: the share of answerable questions for which a shown sentence (up to
   3) comes from the answer's document and contains the exact answer span (whitespace
   normalised). Ceiling: the share whose retrieved passages contain it. Also: the share of
   unanswerable questions for which no sentence is shown.
2. answer holds it: the share of answerable questions whose generated answer contains the span
   (case and whitespace normalised), for contrast.
3. the unsupported-term check on the generated answers. Ground truth, independent of the
   passages the check reads: a checkable term of an answer (a number, name or code, as
   `checkable_terms` extracts them) is *unsupported* when the document holding the answer does
   not contain it (for a question no document answers: when no document contains it), matched
   after lowercasing and removing thousands separators, as a whole word, small numbers also as
   words. So a term copied from a near-duplicate's passage is unsupported, and the check, which
   only asks whether some passage holds the term, cannot flag it: the recall counts that. The
   flags are scored against this truth (precision, recall); recall is also given for the terms
   no document holds at all (made up). Answer level, with only the gold answers as the truth: the
   share of wrong answers (answerable, not holding the span, not a refusal) that get a flag,
   and of right answers that get one.
4. the time supporting_sentences takes per question, cold (no passage seen before), p50 / p95
   (goal p95 <= 30 ms).

`--answers PREFIX` keeps the retrieved passages and generated answers in PREFIX.<set>.json and
reuses them on the next run (to rescore without the LLM).

    python bench/answer_support.py [--set tuning|unseen|both] [--answers PREFIX] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

from ragchat import support
from ragchat.backends import Source, Sources, Token, create_backend
from ragchat.config import load_settings
from ragchat.logs import setup_logging
from ragchat.support import checkable_terms, supporting_sentences, unsupported_terms

SETS = Path(__file__).resolve().parent.parent / "tests" / "data" / "answers"
REFUSAL = re.compile(
    r"do(?:es)? not (?:say|mention|contain|provide)|found nothing|not (?:found|"
    r"mentioned|stated)|no information|cannot (?:find|answer)",
    re.IGNORECASE,
)
# fmt: off
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve"]
# fmt: on


def flat(text: str) -> str:
    return " ".join(text.split())


def read_set(name: str) -> tuple[Path, list[dict]]:
    folder = SETS / name
    lines = (folder / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    return folder / "docs", [json.loads(line) for line in lines if line.strip()]


async def ask_all(docs: Path, questions: list[dict]) -> list[dict]:
    """Retrieved passages and generated answer per question, through the app's backend."""
    work = Path(tempfile.mkdtemp(prefix="ragchat-bench-"))
    shutil.copytree(docs, work / "data")
    settings = load_settings(
        _env_file=None, data_dir=work / "data", storage_dir=work / "storage", llm_max_tokens=96
    )
    backend = create_backend(settings)
    runs = []
    for item in questions:
        tokens, sources = [], ()
        async for event in backend.new_chat().ask(item["question"]):
            if isinstance(event, Token):
                tokens.append(event.text)
            elif isinstance(event, Sources) and not sources:  # the passages it is written from
                sources = event.items
        runs.append(
            {
                "answer": "".join(tokens),
                "sources": [
                    {"file_name": s.file_name, "text": s.text, "page": s.page} for s in sources
                ],
            }
        )
    shutil.rmtree(work)
    return runs


class Reference:
    """What a text holds, for the ground truth of the check."""

    def __init__(self, *texts: str):
        self.text = self.normal(" ".join(texts))

    @staticmethod
    def normal(text: str) -> str:
        text = re.sub(r"(?<=\d),(?=\d{3})", "", flat(text).lower())
        return re.sub(r"[’']s\b", "", text)

    def holds(self, term: str) -> bool:
        wanted = self.normal(term).strip(".,;:!?)(\"'")
        small = re.fullmatch(r"\d+", wanted) and int(wanted) < len(NUMBER_WORDS)
        if small and re.search(rf"\b{NUMBER_WORDS[int(wanted)]}\b", self.text):
            return True
        whole_word = rf"(?<![\w.]){re.escape(wanted)}(?!\w|[.,]\d)"
        return re.search(whole_word, self.text) is not None


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(name: str, answers: str | None, verbose: bool) -> dict[str, str]:
    docs, questions = read_set(name)
    saved = Path(f"{answers}.{name}.json") if answers else None
    if saved and saved.exists():
        runs = json.loads(saved.read_text(encoding="utf-8"))
    else:
        runs = asyncio.run(ask_all(docs, questions))
        if saved:
            saved.write_text(json.dumps(runs), encoding="utf-8")
    texts = {p.name: p.read_text(encoding="utf-8") for p in docs.glob("*.md")}
    everything = Reference(*texts.values())

    quoted = ceiling = answered = silent = 0
    timings: list[float] = []
    unsupported = flagged = caught = made_up = made_up_caught = 0
    wrong = wrong_flagged = right = right_flagged = 0
    answerable = [q for q in questions if q["answer"] is not None]
    for item, run in zip(questions, runs, strict=True):
        sources = [Source(**s) for s in run["sources"]]
        support._terms.cache_clear()  # timed cold, as if no passage had been seen before
        started = time.perf_counter()
        quotes = supporting_sentences(item["question"], sources)
        timings.append((time.perf_counter() - started) * 1000)

        answer = run["answer"]
        flags = set(unsupported_terms(answer, sources))
        truth = Reference(texts[item["file"]]) if item["file"] else everything
        for term in checkable_terms(answer):
            is_unsupported, is_made_up = not truth.holds(term), not everything.holds(term)
            unsupported += is_unsupported
            made_up += is_made_up
            flagged += term in flags
            caught += is_unsupported and term in flags
            made_up_caught += is_made_up and term in flags
            if verbose and is_unsupported != (term in flags):
                kind = "missed" if is_unsupported else "false flag"
                print(f"  [{kind}] {term!r} in: {flat(answer)[:120]}")

        if item["answer"] is None:
            silent += not quotes
            continue
        span = flat(item["answer"])
        hit = any(q.source.file_name == item["file"] and span in flat(q.sentence) for q in quotes)
        quoted += hit
        ceiling += any(s.file_name == item["file"] and span in flat(s.text) for s in sources)
        right_answer = span.lower() in flat(answer).lower()
        answered += right_answer
        if right_answer:
            right, right_flagged = right + 1, right_flagged + bool(flags)
            if verbose and flags:
                print(f"  [right answer flagged] {sorted(flags)} in: {flat(answer)[:150]}")
        elif not REFUSAL.search(answer):
            wrong, wrong_flagged = wrong + 1, wrong_flagged + bool(flags)
        if verbose and not hit:
            shown = " | ".join(flat(q.sentence)[:90] for q in quotes) or "(nothing)"
            print(f"  [no quote] {item['question']} -> {span!r}; shown: {shown}")

    def share(part: int, whole: int) -> str:
        return f"{part / whole:.2f} ({part}/{whole})" if whole else "n/a"

    unanswerable = len(questions) - len(answerable)
    return {
        "questions (answerable / not)": f"{len(questions)} ({len(answerable)} / {unanswerable})",
        "quote holds the answer span": share(quoted, len(answerable)),
        "retrieved passages hold it (ceiling)": share(ceiling, len(answerable)),
        "no quote for unanswerable questions": share(silent, unanswerable),
        "generated answer holds the span": share(answered, len(answerable)),
        "check: precision of flags": share(caught, flagged),
        "check: recall, unsupported terms": share(caught, unsupported),
        "check: recall, made-up terms": share(made_up_caught, made_up),
        "wrong answers flagged": share(wrong_flagged, wrong),
        "right answers flagged": share(right_flagged, right),
        "sentence selection p50 / p95": f"{percentile(timings, 0.5):.1f} / "
        f"{percentile(timings, 0.95):.1f} ms",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["tuning", "unseen", "both"], default="both")
    parser.add_argument("--answers", help="keep and reuse passages and answers (path prefix)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each miss")
    args = parser.parse_args()
    setup_logging()
    names = ["tuning", "unseen"] if args.set == "both" else [args.set]
    results = {name: measure(name, args.answers, args.verbose) for name in names}
    rows = list(next(iter(results.values())))
    print(f"\n| {'':38} | " + " | ".join(f"{name:20}" for name in names) + " |")
    print(f"| {'-' * 38} | " + " | ".join("-" * 20 for _ in names) + " |")
    for row in rows:
        print(f"| {row:38} | " + " | ".join(f"{results[n][row]:20}" for n in names) + " |")


if __name__ == "__main__":
    main()
