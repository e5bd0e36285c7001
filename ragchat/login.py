"""Chainlit's password login, wired to the account store and its throttle.

Chainlit calls the login callback with only a username and a password, and turns whatever it
raises into "wrong credentials". A middleware on /login therefore hands the client address to
the callback and, when the callback found the account or address locked, answers 429 with an
error key the login page shows as "too many attempts".
"""

from __future__ import annotations

import asyncio
import math
from contextvars import ContextVar
from dataclasses import dataclass

import chainlit as cl
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ragchat.auth import Throttled, UserStore
from ragchat.tokens import session_user


@dataclass
class _LoginAttempt:
    address: str | None
    retry_after: float = 0.0


_attempt: ContextVar[_LoginAttempt | None] = ContextVar("login_attempt", default=None)


def throttle_logins(app: FastAPI) -> None:
    @app.middleware("http")
    async def login_throttle(request: Request, call_next):
        if request.method != "POST" or not request.url.path.endswith("/login"):
            return await call_next(request)
        # The client address as web_security.ClientAddress set it from the proxy settings.
        attempt = _LoginAttempt(address=request.client.host if request.client else None)
        token = _attempt.set(attempt)
        try:
            response = await call_next(request)
        finally:
            _attempt.reset(token)
        if attempt.retry_after:
            return JSONResponse(
                {"detail": "tooManyAttempts"},
                status_code=429,
                headers={"Retry-After": str(math.ceil(attempt.retry_after))},
            )
        return response


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
