"""The supporting sentences and the answer check of ragchat.support, over the tuning set of
tests/data/answers (near-duplicate documents) and handwritten cases."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ragchat.backends import Source
from ragchat.support import checkable_terms, supporting_sentences, unsupported_terms

TUNING = Path(__file__).parent / "data" / "answers" / "tuning"
DOCS = {p.name: p.read_text(encoding="utf-8") for p in sorted((TUNING / "docs").glob("*.md"))}
QUESTIONS = [
    json.loads(line)
    for line in (TUNING / "questions.jsonl").read_text(encoding="utf-8").splitlines()
]
TURBINES = [Source(name, DOCS[name]) for name in DOCS if name.startswith("kestrel")]
BRIDGES = [Source(name, DOCS[name]) for name in DOCS if name.startswith("orrin")]


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(
    ("question", "file", "expected"),
    [
        ("Who was the lead engineer for the K120?", "kestrel-k120.md", "Tomasz Wierzbicki"),
        ("Who was the lead engineer of the K150 turbine?", "kestrel-k150.md", "Priya Raman"),
        ("Who was the lead engineer on the K90?", "kestrel-k90.md", "Helen Garside"),
        ("When was the K120 commissioned?", "kestrel-k120.md", "October 2011"),
        ("How much did the K150 cost?", "kestrel-k150.md", "£5.6 million"),
    ],
)
def test_the_best_sentence_is_the_one_about_the_turbine_asked_about(question, file, expected):
    quotes = supporting_sentences(question, TURBINES)

    assert quotes, question
    assert quotes[0].source.file_name == file
    assert expected in flat(quotes[0].sentence)


@pytest.mark.parametrize(
    ("question", "file", "expected"),
    [
        ("Who designed the lower footbridge?", "orrin-lower-footbridge.md", "Fiona MacLeod"),
        ("Who designed the upper footbridge?", "orrin-upper-footbridge.md", "Alasdair Munro"),
        (
            "How wide is the deck of the upper footbridge?",
            "orrin-upper-footbridge.md",
            "1.2 metres",
        ),
        ("When was the lower footbridge opened?", "orrin-lower-footbridge.md", "May 1996"),
    ],
)
def test_the_best_sentence_is_the_one_about_the_bridge_asked_about(question, file, expected):
    quotes = supporting_sentences(question, BRIDGES)

    assert quotes[0].source.file_name == file
    assert expected in flat(quotes[0].sentence)


def test_over_the_whole_tuning_set_a_shown_sentence_holds_most_answers():
    """Every document given as a passage: harder than the app's 4 retrieved chunks."""
    sources = [Source(name, text) for name, text in DOCS.items()]
    answerable = [q for q in QUESTIONS if q["answer"]]
    held = [
        q["question"]
        for q in answerable
        if any(
            quote.source.file_name == q["file"] and flat(q["answer"]) in flat(quote.sentence)
            for quote in supporting_sentences(q["question"], sources)
        )
    ]
    assert len(held) / len(answerable) >= 0.9, sorted(
        {q["question"] for q in answerable} - set(held)
    )


def test_each_quote_is_a_sentence_as_written_in_its_passage():
    sources = [Source(name, text, page="2") for name, text in DOCS.items()]
    for q in QUESTIONS:
        for quote in supporting_sentences(q["question"], sources):
            assert quote.sentence in quote.source.text
            assert quote.sentence == quote.sentence.strip()
            assert not quote.sentence.startswith("#")
            assert quote.source in sources


def test_at_most_limit_quotes_best_first_and_no_repeats():
    twice = TURBINES + TURBINES
    quotes = supporting_sentences("When was the K90 turbine commissioned?", twice, limit=2)

    assert 1 <= len(quotes) <= 2
    assert "April 2006" in flat(quotes[0].sentence)
    assert len({flat(q.sentence) for q in quotes}) == len(quotes)
    assert supporting_sentences("When was the K90 turbine commissioned?", twice, limit=0) == []


def test_a_sentence_is_not_cut_at_an_abbreviation_or_a_decimal_point():
    text = "The clinic is run by Dr. Imogen Achterberg. Its fridge holds 2.5 litres at 4 °C."
    quotes = supporting_sentences("Who runs the clinic?", [Source("c.md", text)])

    assert quotes[0].sentence == "The clinic is run by Dr. Imogen Achterberg."


def test_nothing_is_shown_when_no_sentence_is_about_the_question():
    assert supporting_sentences("What is the recipe for a sourdough loaf?", TURBINES) == []


def test_nothing_is_shown_when_the_passages_never_name_what_the_question_names():
    """The K200 is in no document: its neighbours' engineers would be a misleading quote."""
    assert supporting_sentences("Who was the lead engineer of the K120 turbine?", TURBINES)
    assert supporting_sentences("Who was the lead engineer of the K200 turbine?", TURBINES) == []


@pytest.mark.parametrize("asked", ["K-120", "k120", "K120's"])
def test_a_code_is_recognised_however_it_is_written(asked):
    quotes = supporting_sentences(f"What was the cost of the {asked}?", TURBINES)

    assert quotes[0].source.file_name == "kestrel-k120.md"
    assert "£3.1 million" in quotes[0].sentence


@pytest.mark.parametrize(
    "sources",
    [
        [],
        [Source("empty.md", "")],
        [Source("blank.md", " \n\n\t ")],
        [Source("marks.md", "... !!! ??? ---")],
        [Source("head.md", "# K90\n## K120\n")],
        [Source("unicode.md", "Ünïcödé 🌬️ turbine K90 was commissioned in 2006 — ok. 風力")],
        [Source("long.md", "The K90 turbine was commissioned in April 2006. " * 20_000)],
        [Source("one.md", "K90" * 50_000)],
    ],
)
def test_odd_passages_do_not_raise(sources, caplog):
    started = time.perf_counter()
    quotes = supporting_sentences("When was the K90 commissioned?", sources)
    flags = unsupported_terms("The K90 was commissioned in 2006 by Ånna Öberg.", sources)

    assert time.perf_counter() - started < 5
    assert all(q.sentence in q.source.text for q in quotes)
    assert set(flags) <= {"K90", "2006", "Ånna Öberg"}
    assert not caplog.records  # not by way of the catch-all that logs what it catches


@pytest.mark.parametrize("run", ["a-", "A-", "_-", "-11", "\n"])
def test_a_crafted_message_does_not_hold_the_app(run):
    """Attack: 20,000 characters of a repeated pair. Each took seconds (the square of the run's
    length) in one regex, and `re` holds the GIL, so every chat froze while it ran."""
    crafted = "How long is the K90? " + run * (20_000 // len(run))
    slowest = 0.0
    for question, answer, sources in [
        (crafted, "The K90 is 80 metres.", TURBINES),  # the question, as typed
        ("How long is the K90?", crafted, TURBINES),  # an answer that echoes it
        ("How long is the K90?", "The K90 is 80 metres.", [Source("odd.md", crafted)]),
    ]:
        started = time.perf_counter()
        supporting_sentences(question, sources)
        unsupported_terms(answer, sources)
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 1.0  # 2 to 8 s before (one run, 2 busy cores), 0.04-0.1 s now


@pytest.mark.parametrize("question", ["", "   ", "?", "the of and", "🌬️" * 1000, "K90 " * 5000])
def test_odd_questions_do_not_raise(question, caplog):
    quotes = supporting_sentences(question, TURBINES)

    assert all(q.sentence in q.source.text for q in quotes)
    assert not caplog.records


def test_odd_answers_are_not_checked():
    assert unsupported_terms("", TURBINES) == []
    assert unsupported_terms("   \n", TURBINES) == []
    assert unsupported_terms(None, TURBINES) == []  # type: ignore[arg-type]


K90 = [Source("kestrel-k90.md", DOCS["kestrel-k90.md"])]


@pytest.mark.parametrize(
    "answer",
    [
        "The K90 produced 4100 MWh in its first full year.",  # the passage writes 4,100
        "It produced 4,100 MWh.",
        "The foundation was poured to a depth of 4.20 metres.",
        "Her team numbered 11 people.",  # the passage writes eleven
        "The lead engineer was Helen Garside.",
        "Helen Garside's team poured the foundation.",
        "The turbine was commissioned in April 2006, by the Aldby Community Energy Cooperative.",
        "1. It was commissioned in 2006.\n2. It is rated at 1.8 MW.",  # list numbers
        "The Kestrel K90 has a rotor diameter of 90 metres.",
    ],
)
def test_supported_terms_are_not_flagged(answer):
    assert unsupported_terms(answer, K90) == []


@pytest.mark.parametrize(
    ("answer", "flagged"),
    [
        ("The K90 was commissioned in April 1987.", ["1987"]),
        ("The lead engineer was Tomasz Wierzbicki.", ["Tomasz Wierzbicki"]),
        ("It is rated at 2.5 MW and cost £3.1 million.", ["2.5", "3.1"]),
        ("The K90 and the K-200 stand side by side.", ["K-200"]),
        (
            "It produced 4,100 MWh in 2006 and 4,100 MWh in 2007, then 5,200 in 2007.",
            ["2007", "5,200"],
        ),
        ("The engineer was Dr. Anna Berg, who built it in 1987.", ["Anna Berg", "1987"]),
    ],
)
def test_terms_found_in_no_passage_are_flagged_in_order_once(answer, flagged):
    assert unsupported_terms(answer, K90) == flagged


CHANGELOG = [
    Source(
        "changelog.md",
        "## 4.2.1 (2025-02-04)\n\n### Fixed\n- Restored the Ctrl+K shortcut, which v4.2.0 had "
        "broken.\n- Invoices with more than 200 lines no longer time out (LED-1790).",
    )
]


@pytest.mark.parametrize(
    ("answer", "flagged"),
    [
        ("Version 4.2.1 restored the shortcut that 4.2.0 broke.", []),
        ("It was fixed in 4.2.5.", ["4.2.5"]),  # not "4.2" and "5", which the passage holds
        ("It was released on 2025-02-04, ticket led-1790.", []),
        ("It was released on 2025-02-14.", ["2025-02-14"]),
        ("The fix was ticket LED-1970.", ["LED-1970"]),
        ("Invoices with 200+ lines, up to 200lines.", []),
    ],
)
def test_versions_dates_and_tickets_are_checked_whole(answer, flagged):
    assert unsupported_terms(answer, CHANGELOG) == flagged


def test_a_term_is_supported_by_any_of_the_passages():
    answer = "The K90 was built in 2006, the K120 in 2011 by Tomasz Wierzbicki."
    assert unsupported_terms(answer, K90) == ["K120", "2011", "Tomasz Wierzbicki"]
    assert unsupported_terms(answer, TURBINES) == []


def test_the_checked_terms_are_numbers_names_and_codes():
    answer = "The K-300 turbine, built by Hallam & Rowe for Maria Lind in 1998, gives 3.5 MW."
    assert checkable_terms(answer) == ["K-300", "Hallam", "Rowe", "Maria Lind", "1998", "3.5"]
