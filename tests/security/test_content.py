"""What the browser may load and run: no content from other sites (a Markdown image in a
message or a document would tell a third party who reads what), the protective headers on
every response, and no file of the user's served back as a page of the app."""

from __future__ import annotations

import base64
import hashlib
import re
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
from playwright.sync_api import Browser, expect

from ragchat.history import FILES_ROUTE

from ..running_app import ANSWER, RunningApp, open_chat, send, send_with_file
from .conftest import ALICE, CAROL, signed_in, stored_rows
from .other_site import other_site


def csp_of(response: httpx.Response) -> dict[str, list[str]]:
    policy = response.headers["content-security-policy"]
    return {
        directive.split()[0]: directive.split()[1:]
        for directive in policy.split(";")
        if directive.strip()
    }


def assert_protective_headers(response: httpx.Response) -> None:
    csp = csp_of(response)
    assert csp["default-src"] == ["'self'"]
    assert csp["img-src"] == ["'self'", "data:", "blob:"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["object-src"] == ["'none'"]
    assert "'unsafe-inline'" not in csp["script-src"] and "'unsafe-eval'" not in csp["script-src"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] in ("no-referrer", "same-origin")


def test_the_page_and_the_api_send_the_protective_headers(app: RunningApp) -> None:
    assert_protective_headers(httpx.get(app.url, timeout=30))
    with signed_in(app, *ALICE) as client:
        assert_protective_headers(client.get("/user"))
        assert_protective_headers(
            client.post("/project/threads", json={"pagination": {"first": 5}, "filter": {}})
        )
        assert_protective_headers(client.get("/no/such/route"))


def test_every_inline_script_of_chainlits_page_is_allowed_by_its_hash(app: RunningApp) -> None:
    """Chainlit writes inline <script> blocks into its page; the policy allows exactly those by
    hash. If a Chainlit upgrade changes them, this says so before the UI goes blank."""
    page = httpx.get(app.url, timeout=30)
    inline = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", page.text, re.DOTALL)
    assert inline, "Chainlit's page has inline scripts (if not, drop the hashes)"
    hashes = {
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in inline
    }
    assert hashes <= set(csp_of(page)["script-src"])


def write_document(app: RunningApp, name: str, text: str) -> None:
    """A file copied into DATA_DIR, waited for until the watcher has indexed it."""
    changes = app.log.read_text().count("Documents changed")
    (Path(app.env["DATA_DIR"]) / name).write_text(text)
    deadline = time.monotonic() + 120
    while app.log.read_text().count("Documents changed") == changes:
        assert time.monotonic() < deadline, "the watcher did not index the new document"
        time.sleep(1)


def test_markdown_images_from_other_sites_are_not_fetched(
    app: RunningApp, browser: Browser
) -> None:
    with other_site() as tracker:
        write_document(
            app,
            "quokka-husbandry.md",
            "# Quokka husbandry\n\nQuokkas in the Rottnest enclosure are fed saltbush at dawn.\n\n"
            f"![feeding chart]({tracker.url}/chart.png?from=document)\n",
        )
        page = open_chat(browser.new_context().new_page(), app, *ALICE)
        refused_scripts = []
        page.on(
            "console",
            lambda message: (
                refused_scripts.append(message.text)
                if "script" in message.text and "Content Security Policy" in message.text
                else None
            ),
        )

        # First, so that the message below does not become part of the search.
        send(page, "What are quokkas in the Rottnest enclosure fed?")
        answer = page.locator(ANSWER).last
        expect(answer).to_contain_text("Sources:", timeout=180_000)
        # The last link: the one in the closing "Sources:" line (the quotes link it too).
        answer.locator("a.element-link").filter(has_text="quokka-husbandry.md").last.click()
        expect(page.locator('#side-view-content img[src*="from=document"]')).to_have_count(1)
        time.sleep(2)  # time enough for the request the image would make
        assert tracker.requests == [], "a document's image was fetched from another site"

        send(page, f"Look at this: ![pixel]({tracker.url}/pixel.png?from=message)")
        expect(
            page.locator('[data-step-type="user_message"] img[src*="from=message"]')
        ).to_have_count(1, timeout=30_000)
        time.sleep(2)
        assert tracker.requests == [], "a message's image was fetched from another site"
    assert refused_scripts == []


def test_an_uploaded_html_file_comes_back_as_a_download_never_as_a_page(
    app: RunningApp, browser: Browser
) -> None:
    # An admin: her upload is kept in the library too.
    page = open_chat(browser.new_context().new_page(), app, *CAROL)
    name = f"prize-{uuid.uuid4().hex[:8]}.html"
    uploaded = send_with_file(
        page,
        name,
        "text/html",
        b"<html><script>alert(document.cookie)</script>A prize</html>",
        "Here is the page",
    )
    file_id = uploaded.json()["id"]
    session_id = re.search(r"session_id=([^&]+)", uploaded.url).group(1)
    [element] = stored_rows(app, 'SELECT "objectKey" FROM elements WHERE "name" = ?', name)

    for url in (
        f"{app.url}/project/file/{file_id}?session_id={session_id}",
        f"{app.url}{FILES_ROUTE}/{quote(element['objectKey'], safe='')}",
    ):
        response = page.request.get(url)
        assert response.status == 200, url
        assert response.headers["content-type"] == "application/octet-stream", url
        assert response.headers["content-disposition"].startswith("attachment;"), url
        assert response.headers["x-content-type-options"] == "nosniff"
