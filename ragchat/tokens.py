"""Session tokens that end with their account.

Chainlit signs the user our login returns into a token (a JWT, valid 15 days) and accepts it
for as long as the signature and the expiry are good: nothing asks whether the account still
exists, is disabled, or has a new password. So every account has a session key
(ragchat.auth: replaced when the password is reset or the account disabled, new with every
account), the login puts it in the token, and `RevokedTokens` stands in front of Chainlit: a
request whose token has our signature but not the account's current key (the account is
gone or disabled, the key was replaced, or the token has none: issued before keys existed)
goes on without that token. Chainlit then answers it as a signed-out request (401 from its
API, Socket.IO refused, the login page in the browser), and the browser is told to drop the
cookie. The key is not a secret (the token is readable by its holder); the signature is what
makes tokens unforgeable, the key only says which of them are current.

Chainlit reads the token in several places, each its own way, and each must see only a token
checked here: the Cookie header (`access_token`, or chunks of it, read by Chainlit's
get_token_from_cookies) on HTTP routes and Socket.IO, and `Authorization: Bearer` on HTTP
routes and POST /auth/jwt, which split the header differently (so both splits are checked).
Several Cookie headers are made one, as HTTP/2 does: Starlette reads only the first and
Socket.IO joins them with commas, and one header leaves them nothing to disagree on.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from chainlit.auth import clear_auth_cookie, decode_jwt, get_token_from_cookies
from chainlit.user import User as SessionUser
from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import Request, cookie_parser
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragchat.auth import User, UserStore

SESSION_KEY = "session_key"  # in the metadata Chainlit signs into the token


def session_user(account: User) -> SessionUser:
    """What Chainlit signs into the session token of `account`."""
    return SessionUser(identifier=account.username, metadata={SESSION_KEY: account.session_key})


# Account checks are quick reads, but reads of a database (a network round trip with
# PostgreSQL), made for every request and chat event: not on the event loop, and in a pool of
# their own, so that they never wait behind the embeddings and searches in asyncio's default
# pool (under load a user asking could wait there for a second, and so learn their place late).
ACCOUNT_READS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="account check")


class RevokedTokens:
    """ASGI middleware: requests with a revoked session token reach Chainlit without it."""

    def __init__(self, app: ASGIApp, users: UserStore) -> None:
        self.app = app
        self.users = users

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers, cookies = [], []
        for name, value in scope["headers"]:
            if name.lower() == b"cookie":
                cookies.append(value.decode("latin-1"))
            elif name.lower() != b"authorization" or not await self.any_revoked(
                _bearer_tokens(value.decode("latin-1"))
            ):
                headers.append((name, value))
        deletions: list[bytes] = []
        if cookies:
            cookie = "; ".join(cookies)
            token = get_token_from_cookies(cookie_parser(cookie))
            if token and await self.any_revoked({token}):
                cookie, deletions = _without_auth_cookies(cookie)
            if cookie:
                headers.append((b"cookie", cookie.encode("latin-1")))
        if deletions and scope["type"] == "http":
            send = _deleting_cookies(send, deletions)
        await self.app({**scope, "headers": headers}, receive, send)

    async def any_revoked(self, tokens: set[str]) -> bool:
        loop = asyncio.get_running_loop()
        for token in tokens:
            if await loop.run_in_executor(ACCOUNT_READS, revoked, self.users, token):
                return True
        return False


def revoked(users: UserStore, token: str) -> bool:
    """Whether `token` has our signature but is no longer its account's. Also for sessions
    whose websocket was open before the account changed: they are checked at each message."""
    try:
        user = decode_jwt(token)
    except Exception:  # noqa: BLE001  (Chainlit decodes with this function, refuses what fails)
        return False
    key = user.metadata.get(SESSION_KEY) if isinstance(user.metadata, dict) else None
    return not (isinstance(key, str) and users.session_is_current(user.identifier, key))


def _bearer_tokens(authorization: str) -> set[str]:
    """The token in an Authorization header as each of Chainlit's readers takes it: its HTTP
    routes with FastAPI's get_authorization_scheme_param, POST /auth/jwt with str.split."""
    tokens = set()
    scheme, token = get_authorization_scheme_param(authorization)
    if scheme.lower() == "bearer":
        tokens.add(token)
    parts = authorization.split()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        tokens.add(parts[1])
    return tokens


def _without_auth_cookies(cookie: str) -> tuple[str, list[bytes]]:
    """`cookie` without the session-token cookies, and the Set-Cookie values deleting them,
    both as Chainlit's own clear_auth_cookie decides (the cookie name and its chunks)."""
    response = Response()
    request = Request({"type": "http", "headers": [(b"cookie", cookie.encode("latin-1"))]})
    clear_auth_cookie(request, response)
    deletions = [value for name, value in response.raw_headers if name == b"set-cookie"]
    names = {_cookie_name(value.decode("latin-1")) for value in deletions}
    kept = [part for part in cookie.split(";") if _cookie_name(part) not in names]
    return ";".join(kept).strip(), deletions


def _cookie_name(pair: str) -> str:
    """The name in `name=value` as starlette's cookie_parser reads it."""
    return pair.split("=", 1)[0].strip() if "=" in pair else ""


def _deleting_cookies(send: Send, deletions: list[bytes]) -> Send:
    """`send`, adding `deletions` to the response, except for cookies it sets itself (a new
    sign-in over a revoked cookie)."""

    async def send_deleting(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            set_here = {_cookie_name(v.decode("latin-1")) for n, v in headers if n == b"set-cookie"}
            headers += [
                (b"set-cookie", deletion)
                for deletion in deletions
                if _cookie_name(deletion.decode("latin-1")) not in set_here
            ]
            message = {**message, "headers": headers}
        await send(message)

    return send_deleting
