"""The README's first command brings the app up; in real Chromium a question about the sample
corpus gets a streamed answer with a source naming the right file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, Response, expect, sync_playwright

from .running_app import (  # noqa: F401  (re-exported for the other browser tests)
    ANSWER,
    CHROMIUM,
    CHROMIUM_ARGS,
    RunningApp,
    free_port,
    running_app,
    send,
    send_with_file,
    sign_in,
    wait_until_served,
)

BOT_NAME = "Docs Helper"
WELCOME = "Welcome to the test workspace: ask about the user guide."
RECORD_ANSWER_LENGTHS = """() => {
    window.answerLengths = [];
    new MutationObserver(() => {
        const messages = document.querySelectorAll('%s');
        if (messages.length < 2) return;  // only the welcome message so far
        const length = messages[messages.length - 1].innerText.length;
        if (window.answerLengths.at(-1) !== length) window.answerLengths.push(length);
    }).observe(document.body, {subtree: true, childList: true, characterData: true});
}""" % ANSWER


WORKSPACE = {
    "BOT_NAME": BOT_NAME,
    "WELCOME_MESSAGE": WELCOME,
    "STARTERS": "Which models does ragchat use?|How do I add my own documents?",
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    with running_app(tmp_path_factory.mktemp("app"), **WORKSPACE) as started:
        assert "Copied the sample document ragchat-user-guide.md" in started.log.read_text()
        yield started


@pytest.fixture
def browser_page(app: RunningApp) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(app.url)
        yield page
        browser.close()


@pytest.fixture
def page(app: RunningApp, browser_page: Page) -> Page:
    """Signed in as the first-start admin, at a chat whose session is connected."""
    sign_in(browser_page, "admin", app.admin_password)
    expect(browser_page.locator(ANSWER).first).to_have_text(WELCOME, timeout=60_000)
    return browser_page


def sources_of(answer: Locator) -> Locator:
    """The source links of the "Sources:" line (the answer's text may name files too)."""
    return answer.get_by_role("article").filter(has_text="Sources:").locator("a.element-link")


def is_login_post(response: Response) -> bool:
    return response.url.endswith("/login") and response.request.method == "POST"


def test_a_wrong_password_shows_an_error_and_no_chat(app: RunningApp, browser_page: Page) -> None:
    sign_in(browser_page, "admin", "not the password at all")
    expect(browser_page.get_by_role("alert")).to_have_text("Wrong username or password.")
    expect(browser_page.locator("#chat-input")).to_have_count(0)


def test_repeated_failures_bring_the_throttle_message(browser_page: Page) -> None:
    for attempt in range(5):
        with browser_page.expect_response(is_login_post) as response:
            sign_in(browser_page, "mallory", f"guess number {attempt}")
        assert response.value.status == 401
        expect(browser_page.get_by_role("alert")).to_have_text("Wrong username or password.")
    with browser_page.expect_response(is_login_post) as response:
        sign_in(browser_page, "mallory", "guess number 5")
    assert response.value.status == 429
    expect(browser_page.get_by_role("alert")).to_have_text(
        "Too many failed sign-ins. Wait a few minutes, then try again."
    )


def test_a_disabled_account_is_signed_out_at_once(app: RunningApp, browser_page: Page) -> None:
    app.create_password("add", "bob", "--password-stdin", stdin="bob's long passphrase")
    sign_in(browser_page, "bob", "bob's long passphrase")
    expect(browser_page.locator(ANSWER).first).to_have_text(WELCOME, timeout=60_000)

    app.create_password("disable", "bob")
    # (A chat left open refuses its next question: tests/security/test_tokens.py.) A reload
    # finds the session gone: the login page, which refuses bob now.
    browser_page.reload()
    expect(browser_page.locator("#email")).to_be_visible(timeout=60_000)
    expect(browser_page.get_by_text(WELCOME)).to_have_count(0)
    sign_in(browser_page, "bob", "bob's long passphrase")
    expect(browser_page.get_by_role("alert")).to_have_text("Wrong username or password.")


def test_persona_comes_from_the_settings(page: Page) -> None:
    starters = page.locator('[data-step-type="assistant_message"]').first.get_by_role("button")
    expect(starters).to_have_text(
        ["Which models does ragchat use?", "How do I add my own documents?"]
    )
    expect(page.get_by_alt_text(f"Avatar for {BOT_NAME}").first).to_be_visible()


def test_question_gets_a_streamed_answer_with_its_source(page: Page) -> None:

    # Record every length the answer is seen at while it is written; a streamed answer grows
    # in many steps, an answer sent whole appears at once.
    page.evaluate(RECORD_ANSWER_LENGTHS)
    send(page, "Which file types are supported?")

    answer = page.locator(ANSWER).nth(1)
    expect(answer).to_contain_text("Sources:", timeout=180_000)
    lengths = page.evaluate("window.answerLengths")
    assert len(lengths) >= 4, f"the answer was seen at only these lengths: {lengths}"

    expect(page.get_by_text("Used Retrieve")).to_be_visible()
    source = sources_of(answer)
    expect(source).to_have_text("ragchat-user-guide.md")
    source.click()
    expect(page.locator("#side-view-title")).to_contain_text("ragchat-user-guide.md")
    expect(page.locator("#side-view-content")).to_contain_text("Markdown (.md)")


def test_a_starter_question_is_asked_with_one_click(page: Page) -> None:
    page.get_by_role("button", name="Which models does ragchat use?").click()
    expect(page.locator('[data-step-type="user_message"]')).to_contain_text(
        "Which models does ragchat use?"
    )
    answer = page.locator(ANSWER).nth(1)
    expect(answer).to_contain_text("Sources:", timeout=180_000)
    expect(sources_of(answer)).to_have_text("ragchat-user-guide.md")


def test_an_over_long_message_gets_a_clear_refusal_and_the_chat_goes_on(page: Page) -> None:
    send(page, "Why? " * 2000)
    expect(page.get_by_text("the model reads at most")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("Shorten it, or ask about one part at a time.")).to_be_visible()

    send(page, "Which models does ragchat use?")
    answer = page.locator(ANSWER).last
    expect(answer).to_contain_text("Sources:", timeout=180_000)


def upload(page: Page, name: str, content: bytes, question: str = "") -> None:
    send_with_file(page, name, "text/markdown", content, question)


def test_an_admin_uploads_a_document_and_can_ask_about_it(page: Page) -> None:
    upload(
        page,
        "../../etc/zorblax stew?.md",
        b"The secret ingredient of the Zorblax stew is saffron.",
        "What is the secret ingredient of the Zorblax stew?",
    )
    expect(page.get_by_text("Added zorblax stew_.md (1 passage)")).to_be_visible(timeout=60_000)
    answer = page.locator(ANSWER).last
    expect(answer).to_contain_text("Sources:", timeout=180_000)
    expect(sources_of(answer).first).to_have_text("zorblax stew_.md")  # the best passage


def test_a_user_who_is_not_admin_cannot_upload(app: RunningApp, browser_page: Page) -> None:
    app.create_password("add", "carol", "--password-stdin", stdin="carol's long passphrase")
    sign_in(browser_page, "carol", "carol's long passphrase")
    expect(browser_page.locator(ANSWER).first).to_have_text(WELCOME, timeout=60_000)
    upload(browser_page, "mine.md", b"Carol's notes about otters.")
    expect(
        browser_page.get_by_text("Only administrators can add documents to the shared library")
    ).to_be_visible(timeout=30_000)
    assert not (Path(app.env["DATA_DIR"]) / "mine.md").exists()


def test_a_file_copied_into_data_is_answered_within_ten_seconds(
    app: RunningApp, page: Page
) -> None:
    # What `upsun mount:upload` does: the file appears in the folder while the app runs.
    (Path(app.env["DATA_DIR"]) / "quokkas.md").write_text(
        "Quokkas are small marsupials that live on Rottnest Island."
    )
    page.wait_for_timeout(10_000)
    send(page, "Where do quokkas live?")
    answer = page.locator(ANSWER).nth(1)
    expect(answer).to_contain_text("Sources:", timeout=180_000)
    expect(sources_of(answer).first).to_have_text("quokkas.md")


def test_the_settings_panel_changes_how_many_passages_are_retrieved(page: Page) -> None:
    page.locator("#chat-settings-open-modal").click()
    page.get_by_role("slider").press("Home")  # down to 1 passage
    page.locator("#mode").click()
    page.get_by_role("option", name="words", exact=True).click()
    page.locator("#confirm").click()

    send(page, "Which setting points ragchat at an OpenAI-compatible server?")
    expect(page.locator(ANSWER).nth(1)).to_contain_text("Sources:", timeout=180_000)
    page.get_by_text("Used Retrieve").click()
    retrieved = page.locator('[data-step-type="retrieval"]')
    expect(retrieved).to_contain_text("OPENAI_BASE_URL")
    expect(retrieved.get_by_text(re.compile(r"\(similarity"))).to_have_count(1)
