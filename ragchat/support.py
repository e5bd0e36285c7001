"""What backs an answer: the sentences of the retrieved passages that best support an answer to
the question, and the answer's key terms (numbers, names, codes) that no passage holds.

Backend-neutral: both read only the passages' text, so they work the same whichever backend
retrieved them. Lexical and cheap (milliseconds for a few passages); bench/answer_support.py
measures both on question-answer sets with near-duplicate documents.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from ragchat.backends import Source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quote:
    sentence: str  # exactly as it appears in source.text (a substring of it)
    source: Source


# --- sentences -------------------------------------------------------------------------------

# A sentence ends at . ! or ? (and any closing quote or bracket) before whitespace and a capital,
# digit or opening mark; a blank line, a heading or a list item also ends one.
_SENTENCE_END = re.compile(r"""(?<=[.!?])["')\]]*\s+(?=["'(\[]?[A-Z0-9À-Ý])""")
_BLOCK_BREAK = re.compile(r"\n\s*\n|\n(?=\s*(?:#|[-*+•]\s|\d+[.)]\s|\|))")
# Words whose full stop does not end a sentence.
# fmt: off
_ABBREVIATIONS = frozenset(
    [
        "dr", "mr", "mrs", "ms", "prof", "st", "no", "nos", "vol", "fig", "figs", "approx", "ca",
        "e.g", "i.e", "etc", "vs", "cf", "jr", "sr", "inc", "ltd", "co", "jan", "feb", "mar", "apr",
        "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mt"
    ]
)
# fmt: on
_MIN_SENTENCE_CHARS = 12
# Sentences are looked for in this much of each passage: a retrieved chunk is a few thousand
# characters at most; a megabyte-long one would take seconds.
_MAX_PASSAGE_CHARS = 20_000
_MAX_SENTENCE_CHARS = 600


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, so that text[start:end] is the sentence itself,
    without surrounding whitespace or markdown markers."""
    spans: list[tuple[int, int]] = []
    for block_start, block_end in _split(text, _BLOCK_BREAK, 0, len(text)):
        start = block_start
        for match in _SENTENCE_END.finditer(text, block_start, block_end):
            word = re.search(r"(\S+)\.\W*$", text[start : match.start() + 1])
            if word and word.group(1).lower().lstrip("(\"'") in _ABBREVIATIONS:
                continue
            spans.append((start, match.start()))
            start = match.end()
        spans.append((start, block_end))
    return [span for span in (_trimmed(text, *s) for s in spans) if span[1] - span[0] > 0]


def _split(text: str, pattern: re.Pattern, start: int, end: int) -> list[tuple[int, int]]:
    pieces, at = [], start
    for match in pattern.finditer(text, start, end):
        pieces.append((at, match.start()))
        at = match.end()
    pieces.append((at, end))
    return pieces


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """Without whitespace, and without a heading's or list item's marker in front."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    marker = re.match(r"(?:#{1,6}|[-*+•]|\d+[.)]|>)\s+", text[start:end])
    if marker:
        start += marker.end()
    return start, end


# --- words -----------------------------------------------------------------------------------

# PyStemmer's stemmers "must not be called concurrently" (its docs): one per thread, since
# the chat calls this module from worker threads.
_stemmers = threading.local()
# fmt: off
_QUESTION_WORDS = frozenset(
    [
        "what", "when", "where", "which", "who", "whom", "whose", "why", "how", "does", "do", "did",
        "was", "were", "has", "have", "had", "can", "could", "would", "should", "will", "is", "are",
        "am", "been", "being", "much", "many", "there", "about", "tell", "me", "please", "give",
        "name", "list", "i", "you", "your", "my", "our", "its", "it's", "they", "their", "them",
        "he", "she", "his", "her"
    ]
)
# fmt: on
_STOPWORDS = frozenset(STOPWORDS_EN) | _QUESTION_WORDS
_WORD = re.compile(r"\w+(?:[-'’.]\w+|,\d{3}(?!\d))*")
_SEPARATOR = re.compile(r"[-'’.,]")
_POSSESSIVE = re.compile(r"['’]s$")


@functools.lru_cache(maxsize=8192)  # the same passages come back question after question
def _terms(text: str) -> tuple[str, ...]:
    """Stemmed content words of `text`; a code or number counts whole (AX-200 as ax200, 4,100 as
    4100), a hyphenated word whole and by its parts."""
    words: list[str] = []
    for word in _WORD.findall(text.lower()):
        if _SEPARATOR.search(word):
            stripped = _POSSESSIVE.sub("", word.rstrip("."))
            parts = _SEPARATOR.split(stripped)
            if any(c.isdigit() for c in stripped):
                pieces = ["".join(parts) if _is_code(stripped) else stripped.replace(",", "")]
            else:
                pieces = [stripped, *parts] if len(parts) > 1 else parts
        else:
            pieces = [word]
        words.extend(p for p in pieces if p not in _STOPWORDS and (len(p) > 1 or p.isdigit()))
    if (stemmer := getattr(_stemmers, "english", None)) is None:
        stemmer = _stemmers.english = Stemmer.Stemmer("english")
    return tuple(stemmer.stemWords(words))


def _is_code(word: str) -> bool:
    return any(c.isdigit() for c in word) and any(c.isalpha() for c in word)


# What a question names: a code, a number, a capitalised word after its first. When no passage
# names it, no sentence of theirs can support an answer (the K200 is not the K120).
_NAMED = re.compile(r"(?<=\S)\s+(?:[A-Z][\w'’-]*[a-z][\w'’-]*)|\b[\w-]*\d[\w.,-]*\b")


def _named(question: str) -> set[str]:
    found = _NAMED.finditer(_scannable(question))
    return {term for match in found for term in _terms(match.group())[:1]}


# A run of word characters longer than any name, code or number. The patterns that find those
# try each word boundary inside a run and read on to its end, so a run costs the square of its
# length: a question of "a-a-a-..." took seconds, and `re` holds the GIL, freezing every chat.
_OVERLONG_RUN = re.compile(r"[\w’'.,-]{65,}")


def _scannable(text: str) -> str:
    """`text` with overlong runs blanked, each character's position kept."""
    return _OVERLONG_RUN.sub(lambda run: " " * len(run.group()), text)


# --- question types --------------------------------------------------------------------------

_YEAR = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")
_MONTH = r"January|February|March|April|May|June|July|August|September|October|November|December"
_DATE = re.compile(rf"\b(?:{_MONTH})\b|\b\d{{1,2}}/\d{{1,2}}/\d{{2,4}}\b|{_YEAR.pattern}")
_NUMBER = re.compile(
    r"\b\d[\d,.]*\b|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"fifteen|twenty|thirty|forty|fifty|hundred|thousand|million|dozen)\b",
    re.IGNORECASE,
)
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-zà-ÿ]+(?:\s+[A-Z][a-zà-ÿ]+)+")

# What an answer to each kind of question must hold, and the bonus a sentence gets for it.
_CUES: tuple[tuple[re.Pattern, re.Pattern], ...] = (
    (
        re.compile(r"\bwhen\b|\b(?:what|which) (?:years?|dates?|days?|months?)\b", re.IGNORECASE),
        _DATE,
    ),
    (
        re.compile(
            r"\bhow (?:many|much|long|far|high|tall|wide|deep|big|heavy|old|often)\b|"
            r"\bwhat (?:is|was|were) the (?:\w+ )?(?:length|height|width|rating|capacity|"
            r"cost|price|weight|speed|number|size|span|output|dose|temperature)\b",
            re.IGNORECASE,
        ),
        _NUMBER,
    ),
    (
        re.compile(
            r"\bwho\b|\bwhose\b|\bwhich (?:engineer|person|company|firm|doctor|nurse|"
            r"team|architect|manufacturer|contractor)\b",
            re.IGNORECASE,
        ),
        _NAME,
    ),
)
_ANSWER_KIND = re.compile(r"\b(?<=(?:what|hich) )(?:years?|dates?|days?|months?)\b", re.IGNORECASE)
_CUE_BONUS = 0.5  # in units of the question's mean term weight
# A sentence says "It", "Its lead engineer", "The bridge": the words it leaves out are lent, at a
# discount, by what it is about (its passage's file name and heading) and by the sentence before.
_TOPIC_LENDS = 1.0
_PREVIOUS_LENDS = 0.4
# Near-duplicates mention each other ("five years after the K90"): a sentence whose passage is
# about what the question names is preferred, by this share of the weight its topic matches.
_TOPIC_BONUS = 0.3
_SHOW_RATIO = 0.75  # a second or third sentence is shown only if this close to the best
_MIN_MATCH = 0.34  # share of the question's weight the best sentence must match to be shown


def _wanted_cue(question: str) -> re.Pattern | None:
    for asks, holds in _CUES:
        if asks.search(question):
            return holds
    return None


# --- choosing sentences ----------------------------------------------------------------------


@dataclass
class _Candidate:
    source: Source
    start: int
    end: int
    terms: set[str]
    context: dict[str, float]  # words the sentence leaves out, and how much each is lent
    topic: set[str]  # what its passage is about: the file name and the headings above it
    position: int

    @property
    def sentence(self) -> str:
        return self.source.text[self.start : self.end]


def supporting_sentences(question: str, sources: Sequence[Source], limit: int = 3) -> list[Quote]:
    """The one to three sentences of the passages that best support an answer, best first;
    [] when none is worth showing."""
    try:
        return _supporting_sentences(question, sources, limit)
    except Exception:
        log.exception("No supporting sentence could be chosen")
        return []


def _supporting_sentences(question: str, sources: Sequence[Source], limit: int) -> list[Quote]:
    # "Which year", "what months": the kind of answer wanted, not what it is about.
    asked = set(_terms(_ANSWER_KIND.sub(" ", question or "")))
    if not asked or limit < 1:
        return []
    candidates = _candidates(sources)
    if not candidates:
        return []
    known = set().union(*(c.terms | c.topic for c in candidates))
    if not _named(question) <= known:
        return []
    # Rarer words among these sentences tell near-duplicates apart: weigh by inverse frequency.
    frequency = {term: sum(term in c.terms for c in candidates) for term in asked}
    n = len(candidates)
    weight = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}
    total = sum(weight.values()) or 1.0
    mean = total / len(weight)
    cue = _wanted_cue(question)

    scored: list[tuple[float, float, _Candidate]] = []
    for candidate in candidates:
        own = sum(weight[t] for t in asked & candidate.terms)
        lent = sum(weight[t] * candidate.context.get(t, 0.0) for t in asked - candidate.terms)
        match = own + lent
        score = match + _TOPIC_BONUS * sum(weight[t] for t in asked & candidate.topic)
        if cue is not None and cue.search(candidate.sentence):
            score += _CUE_BONUS * mean
        if len(candidate.sentence) > _MAX_SENTENCE_CHARS:
            score *= 0.8
        scored.append((score, match, candidate))
    scored.sort(key=lambda item: (-item[0], item[2].position))

    best_score, best_match, _ = scored[0]
    if best_match < _MIN_MATCH * total:
        return []
    quotes: list[Quote] = []
    seen: set[str] = set()
    for score, _, candidate in scored:
        if len(quotes) == limit or score < _SHOW_RATIO * best_score:
            break
        key = " ".join(candidate.sentence.split()).lower()
        if key not in seen:
            seen.add(key)
            quotes.append(Quote(candidate.sentence, candidate.source))
    return quotes


def _candidates(sources: Sequence[Source]) -> list[_Candidate]:
    candidates: list[_Candidate] = []
    for source in sources:
        text = source.text if isinstance(source.text, str) else ""
        name = source.file_name if isinstance(source.file_name, str) else ""
        named = set(_terms(re.sub(r"\.\w+$", "", name).replace("_", " ")))
        headings: dict[int, set[str]] = {}  # the headings above, by level
        previous: set[str] = set()
        for start, end in _sentence_spans(text[:_MAX_PASSAGE_CHARS]):
            terms = set(_terms(text[start:end]))
            level = _heading_level(text, start, end)
            if level:
                headings = {lvl: words for lvl, words in headings.items() if lvl < level}
                headings[level] = terms
            elif end - start >= _MIN_SENTENCE_CHARS:
                topic = named.union(*headings.values())
                context = dict.fromkeys(previous, _PREVIOUS_LENDS) | dict.fromkeys(
                    topic, _TOPIC_LENDS
                )
                candidates.append(
                    _Candidate(source, start, end, terms, context, topic, len(candidates))
                )
            previous = terms
    return candidates


def _heading_level(text: str, start: int, end: int) -> int:
    """1 to 6 for a markdown heading, 7 for a short line alone without a full stop, else 0."""
    line_start = start
    while line_start > 0 and text[line_start - 1] in " \t#":
        line_start -= 1
    if line_start > 0 and text[line_start - 1] != "\n":
        return 0  # not at the start of a line
    marker = re.fullmatch(r"\s*(#{1,6})\s+", text[line_start:start])
    if marker:
        return len(marker.group(1))
    alone = text[line_start:start].strip() == "" and text[end : end + 1] in ("\n", "")
    if alone and end - start < 80 and not re.search(r"[.!?:;,]$", text[start:end]):
        return 7
    return 0


# --- checking an answer ----------------------------------------------------------------------

# One pass over the answer, the first kind that matches: a code (AX-200, K300, version 4.2.1,
# date 2025-03-18), a number with or without its unit (1,200; 3.5; 12%; 4.2MW), a run of
# capitalised words.
_CHECKABLE = re.compile(
    r"(?P<code>\b(?=[A-Za-z0-9-]*\d)(?=[A-Za-z0-9-]*[A-Za-z])[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+\b"
    r"|\b[A-Z]{1,6}\d+[A-Za-z0-9]*\b|\bv?\d+(?:\.\d+){2,}\b|\b\d{4}-\d\d-\d\d\b)"
    r"|(?P<number>(?<![\w.,])(?:\d{1,3}(?:[, ]\d{3})+(?![\d,])|\d+)(?:\.\d+)?"
    r"(?=[A-Za-z]{0,3}\b|\W|$))"
    r"|(?P<name>\b[A-Z][\w’'-]*[a-z][\w’'-]*(?:\s+(?:(?:of|de|van|von|du|la|del|the)\s+)?"
    r"[A-Z][\w’'-]*)*)"
)
_LIST_MARKER = re.compile(r"(?m)^[ \t]*(\d+)[.)]\s")
_TITLES = frozenset(["dr", "mr", "mrs", "ms", "prof", "sir", "st", "mt"])
# Capitalised for grammar, not names; at the start of a sentence any word is.
# fmt: off
_NOT_NAMES = frozenset(
    [
        "i", "the", "a", "an", "this", "that", "these", "those", "it", "its", "in", "on", "at",
        "of", "for", "by", "with", "from", "to", "as", "and", "but", "or", "however", "yes", "no",
        "according", "based", "source", "sources", "document", "documents", "passage", "passages",
        "answer", "note", "also", "there", "here", "they", "he", "she", "we", "you"
    ]
)
# fmt: on
# fmt: off
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate([
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
        "nineteen", "twenty",
    ])
} | {"thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "thousand": "1000"}
# fmt: on


def unsupported_terms(answer: str, sources: Sequence[Source]) -> list[str]:
    """Key terms of the answer (names, numbers, dates...) that appear in no passage, in order,
    deduplicated; [] when everything checkable is found."""
    try:
        return _unsupported_terms(answer, sources)
    except Exception:
        log.exception("The answer could not be checked against its sources")
        return []


def checkable_terms(answer: str) -> list[str]:
    """The terms of `answer` that unsupported_terms checks, in order, deduplicated."""
    terms: dict[str, str] = {}
    for _, surface, key in _checkable_terms(answer if isinstance(answer, str) else ""):
        terms.setdefault(key, surface)
    return list(terms.values())


def _unsupported_terms(answer: str, sources: Sequence[Source]) -> list[str]:
    if not isinstance(answer, str) or not answer.strip():
        return []
    found = _Found([s.text for s in sources if isinstance(s.text, str)])
    missing: dict[str, str] = {}
    for kind, surface, key in _checkable_terms(answer):
        if key not in missing and not found.holds(kind, key):
            missing[key] = surface
    return list(missing.values())


def _checkable_terms(answer: str) -> list[tuple[str, str, str]]:
    """(kind, as written, normalised) for each checkable term of the answer, in order."""
    list_markers = {m.start(1) for m in _LIST_MARKER.finditer(answer)}
    terms = []
    for match in _CHECKABLE.finditer(_scannable(answer)):
        kind, surface = match.lastgroup, match.group().strip()
        if kind == "number":
            if match.start() not in list_markers:
                terms.append((kind, surface, _number_key(surface)))
        elif kind == "code":
            terms.append((kind, surface, _code_key(surface)))
        else:
            name = _name_words(answer, match.start(), surface)
            if name:
                terms.append((kind, name, _phrase_key(name)))
    return terms


def _name_words(text: str, start: int, run: str) -> str:
    """The name in a run of capitalised words: without a leading "The", a title, or the
    sentence's first word when that is an ordinary word; "" when nothing is left."""
    words = run.split()
    before = text[max(0, start - 8) : start]
    at_sentence_start = start == 0 or re.search(r"(?:^|[.!?:\n])\s*[\"'(]?$", before)
    while words and (
        words[0].lower().strip("’'") in _NOT_NAMES or words[0].lower().rstrip(".") in _TITLES
    ):
        words.pop(0)
        at_sentence_start = False
    if at_sentence_start and len(words) == 1:
        return ""
    return " ".join(words)


def _number_key(surface: str) -> str:
    digits = re.sub(r"(?<=\d)[, ](?=\d{3})", "", surface)
    if "." in digits:
        digits = digits.rstrip("0").rstrip(".")
    return digits.lstrip("0") or "0"


def _code_key(surface: str) -> str:
    return re.sub(r"[^0-9a-z]|^v(?=\d)", "", surface.lower())


def _phrase_key(surface: str) -> str:
    text = re.sub(r"[’']s\b", "", surface.lower())
    return " ".join(re.findall(r"\w+", text))


class _Found:
    """What the passages hold, normalised as the answer's terms are."""

    def __init__(self, texts: Sequence[str]):
        joined = "\n".join(texts)
        self.numbers = {
            _number_key(n)
            for text in (joined, re.sub(r"(?<=\d)[, ](?=\d{3}\b)", "", joined))
            for n in re.findall(r"\d+(?:\.\d+)?", text)
        }
        lowered = joined.lower()
        self.numbers |= {v for w, v in _NUMBER_WORDS.items() if re.search(rf"\b{w}\b", lowered)}
        self.codes = {_code_key(m) for m in re.findall(r"\b[\w-]*\d[\w.-]*\b", _scannable(joined))}
        self.phrases = f" {_phrase_key(joined)} "

    def holds(self, kind: str, key: str) -> bool:
        if kind == "number":
            return key in self.numbers
        if kind == "code":
            return key in self.codes or f" {key} " in self.phrases
        return f" {key} " in self.phrases
