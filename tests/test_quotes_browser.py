"""In real Chromium, over a document of near-duplicates (three turbines of one series): the
sentence that supports the answer is quoted with its source before the answer starts, and shows
in bold inside the side passage, also in a conversation reopened from the sidebar."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from .running_app import ANSWER, CHROMIUM, CHROMIUM_ARGS, RunningApp, ask, open_chat, running_app

TURBINES = Path(__file__).parent / "data" / "quotes" / "turbines.md"
K2_RATING = "The Kestrel K2 has a rotor of 18 metres and is rated at 120 kilowatts."
K3_DESIGNER = (
    "The K3 was first installed in 2016 on the island of Orkney, where its blades were designed "
    "by the engineer Maria Lindqvist."
)
# When the quote and the answer's own text first appear in an answer, by the page's clock. The
# welcome message and the model queue's notice are not answers.
RECORD_FIRST_APPEARANCES = """(answers) => {
    window.seen = {};
    const note = (what) => { if (!(what in window.seen)) window.seen[what] = performance.now(); };
    new MutationObserver(() => {
        const messages = [...document.querySelectorAll(answers)].slice(1)
            .filter((m) => !m.innerText.startsWith('Waiting for the model'));
        for (const message of messages) {
            if (message.querySelector('blockquote')) note('quote');
            const answer = message.cloneNode(true);
            answer.querySelectorAll('blockquote').forEach((quote) => quote.remove());
            if (answer.innerText.trim()) note('answer');
        }
    }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    root = tmp_path_factory.mktemp("quotes")
    (root / "data").mkdir()
    shutil.copy(TURBINES, root / "data")
    with running_app(root) as started:
        yield started


@pytest.fixture
def page(app: RunningApp) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield open_chat(browser.new_page(), app, "admin", app.admin_password)
        browser.close()


def sentences_of(document: Path) -> list[str]:
    paragraphs = [p for p in document.read_text().split("\n\n") if not p.startswith("#")]
    return [s for p in paragraphs for s in re.split(r"(?<=\.) ", p.strip())]


def font_weight(element: Locator) -> int:
    return int(element.evaluate("(e) => getComputedStyle(e).fontWeight"))


def open_quoted_passage(answer: Locator, sentence: str) -> Locator:
    """Open the side passage from the quote's source link; the sentence as shown there."""
    quote = answer.locator("blockquote").filter(has_text=sentence)
    expect(quote).to_contain_text("— turbines.md")
    quote.locator("a.element-link", has_text="turbines.md").click()
    side = answer.page.locator("#side-view-content")
    expect(answer.page.locator("#side-view-title")).to_contain_text("turbines.md")
    return side.get_by_text(sentence, exact=True)


def test_the_supporting_sentence_is_quoted_first_and_highlighted_in_its_passage(
    page: Page,
) -> None:
    page.evaluate(RECORD_FIRST_APPEARANCES, ANSWER)
    ask(page, "What is the rated power of the Kestrel K2?")
    answer = page.locator(ANSWER).last
    seen = page.evaluate("window.seen")
    assert set(seen) == {"quote", "answer"}, seen
    assert seen["quote"] < seen["answer"], f"the answer began before the quote: {seen}"
    # The best quote is the K2's sentence, and none is one of its near-duplicates about the K1
    # or the K3.
    quotes = answer.locator("blockquote").all_inner_texts()
    assert quotes[0].startswith(K2_RATING), quotes
    assert not any("K1" in quote or "K3" in quote for quote in quotes), quotes

    highlighted = open_quoted_passage(answer, K2_RATING)
    expect(highlighted).to_be_visible()
    assert font_weight(highlighted) >= 600  # bold, as Chainlit draws **...**
    # ...and only what was quoted is.
    side = page.locator("#side-view-content")
    unquoted = [s for s in sentences_of(TURBINES) if not any(s in quote for quote in quotes)]
    shown = [side.get_by_text(s).first for s in unquoted if side.get_by_text(s).count()]
    assert shown, "the side passage shows none of the sentences that were not quoted"
    assert all(font_weight(sentence) < 600 for sentence in shown)


def test_a_reopened_conversation_shows_the_quote_and_the_highlight_again(page: Page) -> None:
    ask(page, "Who designed the blades of the Kestrel K3?")
    page.reload()
    thread = page.locator('li[id^="thread-"]').filter(has_text="Who designed the blades")
    expect(thread).to_have_count(1, timeout=30_000)
    thread.click()
    answer = page.locator(ANSWER).last
    expect(answer.locator("blockquote")).to_contain_text(K3_DESIGNER, timeout=30_000)
    highlighted = open_quoted_passage(answer, K3_DESIGNER)
    expect(highlighted).to_be_visible()
    assert font_weight(highlighted) >= 600
