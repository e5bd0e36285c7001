"""Another web site on the same machine: a server on another port of 127.0.0.1.

For the browser it is another origin but the same site as the app (cookies do not look at the
port), as another subdomain of the app's domain would be. It answers every GET with the page
it was given (a 1x1 PNG for paths ending in .png) and remembers every path it was asked for.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..running_app import free_port

PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@dataclass
class OtherSite:
    url: str
    requests: list[str] = field(default_factory=list)


@contextmanager
def other_site(page: str = "", port: int | None = None) -> Iterator[OtherSite]:
    port = port or free_port()
    site = OtherSite(f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            site.requests.append(self.path)
            is_image = self.path.split("?")[0].endswith(".png")
            body = PIXEL if is_image else page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "image/png" if is_image else "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
