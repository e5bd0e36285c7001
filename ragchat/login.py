"""Chainlit's password login, wired to the account store and its throttle.

Chainlit calls the login callback with only a username and a password, and turns whatever it
raises into "wrong credentials". A middleware on /login (LoginThrottle) therefore hands the
client address to the callback and, when the callback found the account or address locked,
answers 429 with an error key the login page shows as "too many attempts".
"""

from __future__ import annotations

import asyncio
import math
from contextvars import ContextVar
from dataclasses import dataclass

import chainlit as cl
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragchat.auth import Throttled, UserStore
from ragchat.tokens import session_user


@dataclass
class _LoginAttempt:
    address: str | None
    retry_after: float = 0.0


_attempt: ContextVar[_LoginAttempt | None] = ContextVar("login_attempt", default=None)


def throttle_logins(app: FastAPI) -> None:
    app.add_middleware(LoginThrottle)


class LoginThrottle:
    """ASGI middleware on POST /login: the client address goes to the login callback, and a
    lock it found becomes a 429 in place of Chainlit's answer. (Plain ASGI, not Starlette's
    BaseHTTPMiddleware, which logs "No response returned" for every request its client
    abandons, such as Socket.IO's long polls.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith("/login")
        ):
            await self.app(scope, receive, send)
            return
        # The client address as web_security.ClientAddress set it from the proxy settings.
        client = scope.get("client")
        attempt = _LoginAttempt(address=client[0] if client else None)
        token = _attempt.set(attempt)
        refused = False

        async def send_or_refuse(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and attempt.retry_after:
                refused = True
                response = JSONResponse(
                    {"detail": "tooManyAttempts"},
                    status_code=429,
                    headers={"Retry-After": str(math.ceil(attempt.retry_after))},
                )
                await response(scope, receive, send)
            elif not refused:
                await send(message)

        try:
            await self.app(scope, receive, send_or_refuse)
        finally:
            _attempt.reset(token)


async def login(users: UserStore, username: str, password: str) -> cl.User | None:
    attempt = _attempt.get() or _LoginAttempt(address=None)
    try:
        # argon2 takes tens of milliseconds of CPU: keep it off the event loop.
        user = await asyncio.to_thread(users.authenticate, username, password, attempt.address)
    except Throttled as throttled:
        attempt.retry_after = throttled.retry_after
        return None
    if user is None:
        return None
    return session_user(user)
