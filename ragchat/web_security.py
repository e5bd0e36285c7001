"""The browser-facing defences, as ASGI middlewares in front of all of Chainlit's server (HTTP
and websockets, the Socket.IO mount included), outermost first:

- ClientAddress: who the client is and whether it came over https, from a proxy's headers only
  when the proxy settings say so (TRUSTED_PROXIES, CLIENT_IP_HEADER). The login throttle counts
  this address.
- SecurityHeaders: a Content-Security-Policy that keeps every other site's content out (no
  third party learns who reads what), nosniff, no framing, no Referer to other sites, and the
  Secure flag on cookies sent over https.
- OriginGuard: a request from a page of another origin is refused, websockets included. The
  browser sends the user's cookie along with requests from the same site (another port or
  subdomain), so without it any such page could act as the user.

And file_response, for the files the app serves back: only types a browser shows without
running anything are shown; everything else is a download.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import re
from pathlib import Path
from urllib.parse import quote, urlsplit

import chainlit.server as chainlit_server
from chainlit.config import config as chainlit_config
from fastapi import FastAPI
from fastapi.responses import FileResponse, PlainTextResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ragchat.config import Settings

log = logging.getLogger(__name__)

REFUSED_ORIGIN = (
    "Refused: this request comes from a page of another site ({origin}). "
    "To let that site use the app, add its origin to ALLOWED_ORIGINS."
)
# Types a browser displays without running anything in them; any other file is a download.
INLINE_TYPES = {
    "application/pdf",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "text/plain",
    "text/markdown",
    "text/csv",
}
_INLINE_SCRIPT = re.compile(
    r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE
)


def install_web_security(app: FastAPI, settings: Settings) -> None:
    """Before the server starts: the middlewares, in the order described above (Starlette runs
    the last one added first), and Chainlit's and uvicorn's own settings brought in line."""
    _turn_off_uvicorns_proxy_headers()
    _set_chainlits_cors_origins(app, settings.allowed_origins)
    app.add_middleware(OriginGuard, allowed_origins=settings.allowed_origins)
    app.add_middleware(SecurityHeaders, policy=content_security_policy(_chainlit_page()))
    app.add_middleware(
        ClientAddress,
        trusted_proxies=settings.trusted_proxies,
        client_ip_header=settings.client_ip_header,
    )


def _turn_off_uvicorns_proxy_headers() -> None:
    # `chainlit run` gives uvicorn no proxy settings, so uvicorn reads FORWARDED_ALLOW_IPS when
    # it builds its Config, after app.py is imported. Its default trusts X-Forwarded-For from
    # 127.0.0.1 and "*" trusts it from anyone, taking the left-most entry: the one the client
    # wrote. An empty value trusts nobody, so ClientAddress alone decides.
    if os.environ.get("FORWARDED_ALLOW_IPS"):
        log.warning(
            "FORWARDED_ALLOW_IPS is ignored: ragchat decides which proxy headers to believe. "
            "Set TRUSTED_PROXIES (the proxies' addresses) or CLIENT_IP_HEADER (the header the "
            "one proxy in front sets to the client's address) instead."
        )
    os.environ["FORWARDED_ALLOW_IPS"] = ""


def _set_chainlits_cors_origins(app: FastAPI, origins: list[str]) -> None:
    # Chainlit adds its CORS middleware with allow_credentials and the list from
    # .chainlit/config.toml, captured when the middleware was added; the middleware itself is
    # only built at the first request, from these arguments. ALLOWED_ORIGINS is the one list.
    chainlit_config.project.allow_origins = list(origins)
    cors = [entry for entry in app.user_middleware if entry.cls is CORSMiddleware]
    if len(cors) != 1:
        raise RuntimeError("Chainlit's CORS middleware is not where ragchat expects it")
    cors[0].kwargs["allow_origins"] = chainlit_config.project.allow_origins


class ClientAddress:
    """Sets the scope's client address and scheme from the proxy settings: with
    TRUSTED_PROXIES, a request from one of them gets the right-most X-Forwarded-For address
    that is not a trusted proxy and the scheme of X-Forwarded-Proto; with CLIENT_IP_HEADER, the
    client is that header's address (from a trusted proxy, when TRUSTED_PROXIES is set too);
    with neither, the connecting address is the client and the headers mean nothing."""

    def __init__(
        self, app: ASGIApp, trusted_proxies: list[str], client_ip_header: str | None
    ) -> None:
        self.app = app
        self.header = client_ip_header.lower().encode("latin-1") if client_ip_header else None
        self.proxies = [ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies]
        # uvicorn's middleware does exactly the X-Forwarded-For part, given an explicit list
        # (of networks written strictly: it takes "10.0.0.1/8" for a name, not a network).
        self.forwarded = ProxyHeadersMiddleware(
            app, trusted_hosts=[str(network) for network in self.proxies]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            if self.header is not None:
                if not self.proxies or self._from_proxy(scope):
                    _take_client_from_header(scope, self.header)
            elif self.proxies:
                return await self.forwarded(scope, receive, send)
        await self.app(scope, receive, send)

    def _from_proxy(self, scope: Scope) -> bool:
        peer = _address(scope["client"][0]) if scope.get("client") else None
        return peer is not None and any(peer in network for network in self.proxies)


def _take_client_from_header(scope: Scope, header: bytes) -> None:
    headers = dict(scope["headers"])  # the last of repeated headers wins: the proxy's own
    if (client := _address(headers.get(header, b"").decode("latin-1").strip())) is not None:
        scope["client"] = (str(client), 0)
    proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1").strip().lower()
    if proto in ("http", "https"):
        scope["scheme"] = proto.replace("http", "ws") if scope["type"] == "websocket" else proto


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class OriginGuard:
    """Refuses a request whose Origin is neither the app's own (its host[:port] is the request's
    Host) nor in ALLOWED_ORIGINS: 403 over HTTP (CORS preflights included), and a websocket
    closed before it is accepted. Requests without Origin (navigation, same-origin GETs) pass.
    """

    def __init__(self, app: ASGIApp, allowed_origins: list[str]) -> None:
        self.app = app
        self.allowed = {origin.lower().rstrip("/") for origin in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None or self._admits(origin, headers.get("host")):
            return await self.app(scope, receive, send)
        log.warning("Refused %s from a page of another origin: %.200s", scope["path"], origin)
        if scope["type"] == "websocket":
            await receive()  # websocket.connect; closing before accepting answers 403
            await send({"type": "websocket.close", "code": 1008})
            return
        refusal = PlainTextResponse(REFUSED_ORIGIN.format(origin=origin[:200]), status_code=403)
        await refusal(scope, receive, send)

    def _admits(self, origin: str, host: str | None) -> bool:
        if origin.lower().rstrip("/") in self.allowed:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or host is None:
            return False
        return _authority(parts.scheme, parts.netloc) == _authority(parts.scheme, host)


def _authority(scheme: str, netloc: str) -> str:
    """host[:port], lower case, without the scheme's default port."""
    return netloc.lower().removesuffix({"http": ":80", "https": ":443"}[scheme])


class SecurityHeaders:
    """Adds the protective headers to every HTTP response (a route may set a stricter one
    of its own), and Secure to every cookie of a request that came over https."""

    def __init__(self, app: ASGIApp, policy: str) -> None:
        self.app = app
        self.headers = {
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            # Not no-referrer: with it, Chromium sends "Origin: null" on the UI's own POSTs.
            "Referrer-Policy": "same-origin",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        secure = scope.get("scheme") == "https"

        async def send_protected(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
                if secure:
                    message["headers"] = [_secure_cookie(h) for h in message["headers"]]
            await send(message)

        await self.app(scope, receive, send_protected)


def _secure_cookie(header: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    name, value = header
    if name.lower() != b"set-cookie":
        return header
    attributes = {part.strip().lower() for part in value.split(b";")[1:]}
    return header if b"secure" in attributes else (name, value + b"; Secure")


def content_security_policy(page: str) -> str:
    """Everything from the app itself, and the inline scripts of its page by their hashes;
    inline styles stay allowed because the UI's components set style attributes."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    ]
    return "; ".join(
        [
            "default-src 'self'",
            " ".join(["script-src 'self'", *hashes]),
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
        ]
    )


def _chainlit_page() -> str:
    # The page as Chainlit's catch-all route serves it: its inline scripts are written at
    # serve time (theme, transports), so their hashes are taken from it, not written down.
    root_path = os.getenv("CHAINLIT_PARENT_ROOT_PATH", "") + os.getenv("CHAINLIT_ROOT_PATH", "")
    return chainlit_server.get_html_template(root_path)


def file_response(path: str | Path, name: str, mime: str | None) -> FileResponse:
    """A stored file as a response: shown in the browser if its type is harmless, else a
    download of unknown type, so an uploaded page or SVG never runs as part of the app."""
    media_type = (mime or "").split(";")[0].strip().lower()
    shown = media_type in INLINE_TYPES
    return FileResponse(
        path,
        media_type=media_type if shown else "application/octet-stream",
        headers={
            "Content-Disposition": f"{'inline' if shown else 'attachment'}; "
            f"filename*=UTF-8''{quote(name)}"
        },
    )
