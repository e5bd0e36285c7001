"""A page of another origin on the same site (another port of 127.0.0.1, as another subdomain
would be) must not act as the signed-in user: the browser sends her cookie along, so the app
must refuse the request by its Origin."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, expect
from starlette.testclient import TestClient

from ragchat.web_security import OriginGuard

from ..running_app import ANSWER, RunningApp, free_port, open_chat, running_app, send
from .conftest import ALICE, history_rows, stored_rows
from .other_site import other_site

# What a hostile page does with a visitor who is signed in to the app: read her account, her
# conversations and one of them, then chat in her name over the websocket, speaking Socket.IO
# (Engine.IO 4) by hand as Chainlit's client does.
HOSTILE_PAGE = """<!doctype html><title>You won a prize</title><script>
async function read(url, init) {
  try {
    const response = await fetch(url, {credentials: 'include', ...init});
    return {status: response.status, body: await response.text()};
  } catch (error) {
    return {error: String(error)};
  }
}

function chat(url, text) {
  return new Promise(resolve => {
    const heard = [];
    const socket = new WebSocket(url);
    const finish = () => { socket.close(); resolve(heard); };
    setTimeout(finish, 10000);
    socket.onerror = () => heard.push('error');
    socket.onclose = event => { heard.push('closed ' + event.code); resolve(heard); };
    socket.onmessage = event => {
      const packet = String(event.data);
      heard.push(packet.slice(0, 300));
      if (packet.startsWith('0{')) {
        socket.send('40' + JSON.stringify({sessionId: crypto.randomUUID(), clientType: 'webapp'}));
      } else if (packet.startsWith('40')) {
        socket.send('42' + JSON.stringify(['connection_successful']));
        socket.send('42' + JSON.stringify(['client_message', {
          message: {id: crypto.randomUUID(), type: 'user_message', output: text, name: 'alice',
                    createdAt: new Date().toISOString()},
          fileReferences: [],
        }]));
        setTimeout(finish, 4000);
      } else if (packet === '2') {
        socket.send('3');
      }
    };
  });
}

async function attack(app, threadId, text) {
  return {
    user: await read(app + '/user'),
    threads: await read(app + '/project/threads', {
      method: 'POST',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({pagination: {first: 20}, filter: {}}),
    }),
    thread: await read(app + '/project/thread/' + threadId),
    socket: await chat(app.replace('http', 'ws') + '/ws/socket.io/?EIO=4&transport=websocket',
                       text),
  };
}
</script>"""


def signed_in_context(browser: Browser, app: RunningApp, user: tuple[str, str]) -> BrowserContext:
    """A browser profile whose user is signed in to the app and has a chat open."""
    context = browser.new_context()
    open_chat(context.new_page(), app, *user)
    return context


def alices_rows(app: RunningApp) -> dict[str, list]:
    return {
        "threads": history_rows(
            app, 'SELECT "id" FROM threads WHERE "userIdentifier" = ? ORDER BY "id"', ALICE[0]
        ),
        "steps": history_rows(
            app,
            'SELECT s."id", s."type", s."name" FROM steps s '
            'JOIN threads t ON t."id" = s."threadId" WHERE t."userIdentifier" = ? ORDER BY s."id"',
            ALICE[0],
        ),
    }


def settled_rows(app: RunningApp) -> dict[str, list]:
    rows, deadline = alices_rows(app), time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(3)
        if (again := alices_rows(app)) == rows:
            return rows
        rows = again
    pytest.fail("alice's conversation kept changing for a minute")


def test_a_page_of_another_origin_can_neither_read_nor_chat_as_the_user(
    app: RunningApp, browser: Browser
) -> None:
    context = signed_in_context(browser, app, ALICE)
    chat = context.pages[0]
    send(chat, "What does ragchat do?")
    [thread] = stored_rows(
        app, 'SELECT "id" FROM threads WHERE "userIdentifier" = ? LIMIT 1', ALICE[0]
    )
    # The quotes stream first; "Sources:" closes the answer, which Chainlit stores just after.
    expect(chat.locator(ANSWER).nth(1)).to_contain_text("Sources:", timeout=180_000)
    before = settled_rows(app)
    words = f"Posted by another site {uuid.uuid4()}"

    with other_site(HOSTILE_PAGE) as site:
        hostile = context.new_page()
        hostile.goto(f"{site.url}/prize.html")
        stolen = hostile.evaluate(
            "([app, thread, words]) => attack(app, thread, words)", [app.url, thread["id"], words]
        )

    for name in ("user", "threads", "thread"):
        assert "body" not in stolen[name], f"the other site read {name}: {stolen[name]}"
    assert not [packet for packet in stolen["socket"] if packet.startswith("40")], (
        f"the other site got a Socket.IO session: {stolen['socket']}"
    )
    assert not stored_rows(app, 'SELECT "id" FROM steps WHERE "output" = ?', words, timeout=5)
    after = alices_rows(app)
    assert after == before, [row for row in after["steps"] if row not in before["steps"]]
    context.close()


def test_requests_from_another_origin_are_refused_and_the_apps_own_pass(app: RunningApp) -> None:
    hostile = "http://127.0.0.1:9"
    preflight = httpx.options(
        f"{app.url}/project/threads",
        headers={
            "Origin": hostile,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    credentials = {"username": ALICE[0], "password": ALICE[1]}
    forged = httpx.post(f"{app.url}/login", data=credentials, headers={"Origin": hostile})
    assert forged.status_code == 403
    assert "ALLOWED_ORIGINS" in forged.text
    assert "set-cookie" not in forged.headers
    # The app's own page sends its origin on every POST and websocket: those pass.
    own = httpx.post(f"{app.url}/login", data=credentials, headers={"Origin": app.url})
    assert own.status_code == 200
    assert "access_token" in own.headers["set-cookie"]


async def answered_ok(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    ("origin", "host", "status"),
    [
        ("https://chat.example.com", "chat.example.com", 200),
        ("https://chat.example.com:443", "chat.example.com", 200),
        ("http://CHAT.example.com:8000", "chat.example.com:8000", 200),
        ("https://widget.example.org", "chat.example.com", 200),  # in ALLOWED_ORIGINS
        ("https://chat.example.com:8443", "chat.example.com", 403),
        ("https://evil.example.com", "chat.example.com", 403),
        ("null", "chat.example.com", 403),
        ("chat.example.com", "chat.example.com", 403),
    ],
)
def test_the_guard_compares_the_origin_with_the_host_and_the_allowed_list(
    origin: str, host: str, status: int
) -> None:
    guard = OriginGuard(answered_ok, allowed_origins=["https://widget.example.org"])
    response = TestClient(guard).get("/user", headers={"Origin": origin, "Host": host})
    assert response.status_code == status


def test_an_origin_listed_in_allowed_origins_may_read(tmp_path: Path, browser: Browser) -> None:
    """The control: the same page, once its origin is allowed, reads the user, so the test
    above fails because of the guard, not because of a page that cannot work."""
    port = free_port()
    with running_app(tmp_path, ALLOWED_ORIGINS=f"http://127.0.0.1:{port}") as allowing:
        allowing.create_password("add", ALICE[0], "--password-stdin", stdin=ALICE[1])
        context = signed_in_context(browser, allowing, ALICE)
        with other_site(HOSTILE_PAGE, port=port) as site:
            friendly = context.new_page()
            friendly.goto(f"{site.url}/widget.html")
            user = friendly.evaluate("app => read(app + '/user')", allowing.url)
        context.close()
    assert user["status"] == 200, user
    assert '"identifier":"alice"' in user["body"].replace(" ", "")
