"""A session token does not outlive its account: after `create_password.py disable`, `delete`,
`reset`, or a delete and a new account of the same name, the token issued before is refused by
every route that reads one (the cookie and the Bearer header over HTTP, `/auth/jwt`, Socket.IO
over websocket and over polling), while a fresh sign-in works.

Each test makes an account of its own and first checks that the very same requests succeed
with the token, so a refusal afterwards is the account change at work, not a bad request.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
import socketio

from ..running_app import RunningApp, auth_secret
from ..socket_client import ChatClient

SOCKET_PATH = "/ws/socket.io"
ALL_ACCEPTED = {
    "GET /user": 200,
    "GET /user (Bearer)": 200,
    "POST /project/threads": 200,
    "GET /project/thread/<own id>": 200,
    "POST /auth/jwt (Bearer)": 200,
    "Socket.IO over websocket": "connected",
    "Socket.IO over polling": "connected",
}
ALL_REFUSED = {
    "GET /user": 401,
    "GET /user (Bearer)": 401,
    "POST /project/threads": 401,
    "GET /project/thread/<own id>": 401,
    "POST /auth/jwt (Bearer)": 401,
    "Socket.IO over websocket": "refused",
    "Socket.IO over polling": "refused",
}


def new_account(app: RunningApp) -> tuple[str, str]:
    name, password = f"token-{secrets.token_hex(4)}", f"passphrase {secrets.token_hex(8)}"
    app.create_password("add", name, "--password-stdin", stdin=password)
    return name, password


def sign_in(app: RunningApp, name: str, password: str) -> str:
    """The session token Chainlit hands the browser, as its cookie."""
    response = httpx.post(
        f"{app.url}/login",
        data={"username": name, "password": password},
        headers={"Origin": app.url},
    )
    assert response.status_code == 200, response.text
    return response.cookies["access_token"]


def cookie(app: RunningApp, token: str) -> dict[str, str]:
    return {"Cookie": f"access_token={token}", "Origin": app.url}


def bearer(app: RunningApp, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Origin": app.url}


def socket_auth(thread_id: str | None = None) -> dict:
    return {
        "sessionId": str(uuid.uuid4()),
        "clientType": "webapp",
        "userEnv": "{}",
        "threadId": thread_id,
    }


async def socket_outcome(app: RunningApp, token: str, transport: str) -> str:
    """Whether the server lets a Socket.IO client in with this token, told by the server's
    CONNECT or CONNECT_ERROR packet. The client's own `connect` returns 30 s later over
    long-polling, waiting for its pending poll, so the outcome is read from the events."""
    client = socketio.AsyncClient(reconnection=False)
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    client.on("connect", lambda: outcome.done() or outcome.set_result("connected"))
    client.on("connect_error", lambda *_reason: outcome.done() or outcome.set_result("refused"))
    connecting = asyncio.create_task(
        client.connect(
            app.url,
            socketio_path=SOCKET_PATH,
            transports=[transport],
            headers=cookie(app, token),
            auth=socket_auth(),
            wait_timeout=20,
        )
    )
    try:
        return await asyncio.wait_for(outcome, 20)
    finally:
        await client.eio.disconnect(abort=True)  # ends the pending poll
        await asyncio.gather(connecting, return_exceptions=True)  # refused: ConnectionError


async def chat_once(app: RunningApp, token: str) -> str:
    """Ask one question over Socket.IO, as the browser does; the id of the new conversation."""
    async with ChatClient(app.url, {"access_token": token}) as chat:
        # Nothing in the documents: answered at once, without the LLM.
        await chat.ask("Qwzx vbnm plokj?")
        return chat.thread_id


def outcomes(app: RunningApp, token: str, thread_id: str) -> dict[str, int | str]:
    """What each route that reads a session token answers to this one."""
    with httpx.Client(base_url=app.url, timeout=30) as client:
        seen: dict[str, int | str] = {
            "GET /user": client.get("/user", headers=cookie(app, token)).status_code,
            "GET /user (Bearer)": client.get("/user", headers=bearer(app, token)).status_code,
            "POST /project/threads": client.post(
                "/project/threads",
                json={"pagination": {"first": 20}, "filter": {}},
                headers=cookie(app, token),
            ).status_code,
            "GET /project/thread/<own id>": client.get(
                f"/project/thread/{thread_id}", headers=cookie(app, token)
            ).status_code,
            "POST /auth/jwt (Bearer)": client.post(
                "/auth/jwt", headers=bearer(app, token)
            ).status_code,
        }
    for transport in ("websocket", "polling"):
        seen[f"Socket.IO over {transport}"] = asyncio.run(socket_outcome(app, token, transport))
    return seen


def signed_in_with_a_conversation(app: RunningApp) -> tuple[str, str, str, str]:
    """A new account, its token, and one of its conversations; the token works everywhere."""
    name, password = new_account(app)
    token = sign_in(app, name, password)
    thread_id = asyncio.run(chat_once(app, token))
    assert outcomes(app, token, thread_id) == ALL_ACCEPTED
    return name, password, token, thread_id


def assert_refused_and_cleared(app: RunningApp, token: str, thread_id: str) -> None:
    assert outcomes(app, token, thread_id) == ALL_REFUSED
    response = httpx.get(f"{app.url}/user", headers=cookie(app, token))
    cleared = response.headers.get_list("set-cookie")
    assert any(c.startswith("access_token=") and "Max-Age=0" in c for c in cleared), cleared


def test_a_disabled_accounts_token_is_refused_and_enabling_does_not_revive_it(
    app: RunningApp,
) -> None:
    name, password, old_token, thread_id = signed_in_with_a_conversation(app)
    app.create_password("disable", name)
    assert_refused_and_cleared(app, old_token, thread_id)

    app.create_password("enable", name)
    assert_refused_and_cleared(app, old_token, thread_id)
    assert outcomes(app, sign_in(app, name, password), thread_id) == ALL_ACCEPTED


def test_a_reset_password_ends_the_sessions_of_the_old_one(app: RunningApp) -> None:
    name, _, old_token, thread_id = signed_in_with_a_conversation(app)
    new_password = f"new passphrase {secrets.token_hex(8)}"
    app.create_password("reset", name, "--password-stdin", stdin=new_password)
    assert_refused_and_cleared(app, old_token, thread_id)
    assert outcomes(app, sign_in(app, name, new_password), thread_id) == ALL_ACCEPTED


def test_a_deleted_accounts_token_is_refused(app: RunningApp) -> None:
    name, _, old_token, thread_id = signed_in_with_a_conversation(app)
    app.create_password("delete", name)
    assert_refused_and_cleared(app, old_token, thread_id)


def test_a_deleted_accounts_token_does_not_open_a_new_account_of_the_same_name(
    app: RunningApp,
) -> None:
    name, password, old_token, _ = signed_in_with_a_conversation(app)
    app.create_password("delete", name)
    app.create_password("add", name, "--password-stdin", stdin=password)
    new_token = sign_in(app, name, password)
    new_thread = asyncio.run(chat_once(app, new_token))

    assert_refused_and_cleared(app, old_token, new_thread)
    assert outcomes(app, new_token, new_thread) == ALL_ACCEPTED


@pytest.mark.parametrize("bad_token", ["", "not-a-jwt", "a.b.c"])
def test_tokens_that_are_not_chainlits_are_left_to_chainlit(app: RunningApp, bad_token: str):
    """Only tokens with a valid signature are looked up; anything else gets Chainlit's answer."""
    response = httpx.get(f"{app.url}/user", headers=cookie(app, bad_token))
    assert response.status_code == 401
    assert response.json()["detail"] in {"Invalid authentication token", "Not authenticated"}


def test_tokens_issued_before_session_keys_are_refused(app: RunningApp) -> None:
    """Tokens signed before accounts had session keys carry none: they must sign in again."""
    name, _, _, thread_id = signed_in_with_a_conversation(app)
    secret = auth_secret(app)
    now = datetime.now(UTC)
    old_style = jwt.encode(  # what the login put in a token until now
        {
            "identifier": name,
            "display_name": None,
            "metadata": {"role": "user"},
            "exp": now + timedelta(days=15),
            "iat": now,
        },
        secret,
        algorithm="HS256",
    )
    assert_refused_and_cleared(app, old_style, thread_id)


def test_a_revoked_token_is_refused_however_it_is_sent(app: RunningApp) -> None:
    """Chainlit also reads the token from cookie chunks, and POST /auth/jwt splits the Bearer
    header on any whitespace: every spelling it accepts must be refused once the token is
    stale. (Its other routes take only `bearer <token>`, any case, of these spellings.)"""
    name, password = new_account(app)
    token = sign_in(app, name, password)
    half = len(token) // 2
    chunks = f"access_token_0={token[:half]}; access_token_1={token[half:]}"
    spellings = ["bearer {}", "Bearer\t{}", "Bearer  {}", "BEARER {}"]

    def seen() -> dict[str, int]:
        with httpx.Client(base_url=app.url, timeout=30) as client:
            answers = {
                "GET /user (chunked cookie)": client.get(
                    "/user", headers={"Cookie": chunks, "Origin": app.url}
                ).status_code,
                "GET /user ('bearer {}')": client.get(
                    "/user", headers={"Authorization": f"bearer {token}", "Origin": app.url}
                ).status_code,
            }
            for spelling in spellings:
                authorization = {"Authorization": spelling.format(token), "Origin": app.url}
                response = client.post("/auth/jwt", headers=authorization)
                answers[f"POST /auth/jwt ({spelling!r})"] = response.status_code
            return answers

    before = seen()
    assert set(before.values()) == {200}, before
    app.create_password("disable", name)
    assert seen() == dict.fromkeys(before, 401)


async def ask_on_an_open_chat_after(app: RunningApp, token: str, change) -> list[str]:
    """Errors the app answers a question with, asked on a chat that was connected before
    `change` was made to the account."""
    async with ChatClient(app.url, {"access_token": token}) as chat:
        change()
        return (await chat.ask("Which models does ragchat use?")).errors


@pytest.mark.parametrize("action", ["reset", "disable", "delete"])
def test_a_chat_left_open_stops_at_its_next_question(app: RunningApp, action: str) -> None:
    name, password = new_account(app)
    token = sign_in(app, name, password)
    arguments = ("reset", name, "--password-stdin") if action == "reset" else (action, name)
    stdin = f"new passphrase {secrets.token_hex(8)}" if action == "reset" else None
    errors = asyncio.run(
        ask_on_an_open_chat_after(app, token, lambda: app.create_password(*arguments, stdin=stdin))
    )
    assert len(errors) == 1 and errors[0].startswith("This session has ended"), errors
