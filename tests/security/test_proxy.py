"""Who the client is: the login throttle counts client addresses, so a client must not be able
to pick its own with X-Forwarded-For. Only a trusted proxy's word counts, and only for the
address it saw itself (the right-most entry); the scheme it reports decides the cookie's Secure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from ragchat.web_security import ClientAddress

from ..running_app import RunningApp, running_app, store_rows
from .conftest import ALICE

ADDRESS_FREE_FAILURES = 20  # ragchat/auth.py: an address locks after 20 failures


async def echo_client(scope, receive, send) -> None:
    """A tiny ASGI app answering with the client address and scheme it was given."""
    body = json.dumps({"client": scope["client"][0], "scheme": scope["scheme"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def seen_by_app(peer: str, headers: dict[str, str], **settings) -> dict:
    client = TestClient(ClientAddress(echo_client, **settings), client=(peer, 4321))
    return client.get("/", headers=headers).json()


FORGED = {
    "X-Forwarded-For": "198.51.100.1",
    "X-Client-IP": "198.51.100.2",
    "X-Forwarded-Proto": "https",
}


def test_without_proxy_settings_every_header_is_ignored() -> None:
    seen = seen_by_app("192.0.2.10", FORGED, trusted_proxies=[], client_ip_header=None)
    assert seen == {"client": "192.0.2.10", "scheme": "http"}


def test_a_trusted_proxy_gives_the_right_most_address_it_did_not_add_itself() -> None:
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7, 10.1.2.3", "X-Forwarded-Proto": "https"}
    seen = seen_by_app("10.0.0.5", headers, trusted_proxies=["10.0.0.0/8"], client_ip_header=None)
    assert seen == {"client": "203.0.113.7", "scheme": "https"}
    # The same headers from a peer that is not a proxy of ours count for nothing.
    seen = seen_by_app("192.0.2.10", headers, trusted_proxies=["10.0.0.0/8"], client_ip_header=None)
    assert seen == {"client": "192.0.2.10", "scheme": "http"}


def test_client_ip_header_names_the_client_and_x_forwarded_for_is_ignored() -> None:
    seen = seen_by_app("10.9.9.9", FORGED, trusted_proxies=[], client_ip_header="X-Client-IP")
    assert seen == {"client": "198.51.100.2", "scheme": "https"}
    # A value that is not an address is not believed: the peer stays the client.
    seen = seen_by_app(
        "10.9.9.9",
        {"X-Client-IP": "me, 1.2.3.4"},
        trusted_proxies=[],
        client_ip_header="X-Client-IP",
    )
    assert seen == {"client": "10.9.9.9", "scheme": "http"}


def failed_logins(url: str, forwarded_for: list[str], peer: str = "127.0.0.1") -> list[int]:
    """Status of one wrong login per X-Forwarded-For value, each for another username so the
    per-account lock is not what stops them."""
    transport = httpx.HTTPTransport(local_address=peer)
    with httpx.Client(base_url=url, transport=transport, timeout=30) as client:
        return [
            client.post(
                "/login",
                data={"username": f"nobody-{n}", "password": "a wrong guess"},
                headers={"X-Forwarded-For": value},
            ).status_code
            for n, value in enumerate(forwarded_for)
        ]


def rotating(count: int, suffix: str = "") -> list[str]:
    return [f"198.51.100.{n}{suffix}" for n in range(1, count + 1)]


def forget_failures(app: RunningApp, address: str) -> None:
    """Unlock an address of a shared app, so tests after this one can sign in from it."""
    store_rows(app, "accounts", "DELETE FROM login_failures WHERE key = ?", f"address:{address}")


def test_rotating_x_forwarded_for_does_not_reset_the_address_limit(app: RunningApp) -> None:
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default; ragchat must not.
    try:
        statuses = failed_logins(app.url, rotating(ADDRESS_FREE_FAILURES + 2))
    finally:
        forget_failures(app, "127.0.0.1")
    assert statuses[:ADDRESS_FREE_FAILURES] == [401] * ADDRESS_FREE_FAILURES
    assert statuses[ADDRESS_FREE_FAILURES:] == [429, 429]


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """An app behind a proxy at 127.0.0.1, started with FORWARDED_ALLOW_IPS=* as the Upsun
    configuration used to: uvicorn would then believe any X-Forwarded-For from anyone."""
    with running_app(
        tmp_path_factory.mktemp("proxied"), TRUSTED_PROXIES="127.0.0.1", FORWARDED_ALLOW_IPS="*"
    ) as started:
        started.create_password("add", ALICE[0], "--password-stdin", stdin=ALICE[1])
        yield started


def test_forwarded_allow_ips_is_ignored_with_a_warning(proxied: RunningApp) -> None:
    log = proxied.log.read_text()
    assert "FORWARDED_ALLOW_IPS is ignored" in log
    assert "TRUSTED_PROXIES" in log and "CLIENT_IP_HEADER" in log


def test_behind_a_trusted_proxy_the_right_most_address_is_the_client(
    proxied: RunningApp,
) -> None:
    statuses = failed_logins(proxied.url, rotating(ADDRESS_FREE_FAILURES + 2, ", 203.0.113.7"))
    assert statuses[ADDRESS_FREE_FAILURES:] == [429, 429]
    # Another right-most address is another client, not locked by the first one's failures.
    assert failed_logins(proxied.url, ["198.51.100.1, 203.0.113.8"]) == [401]


def test_a_peer_that_is_not_a_trusted_proxy_cannot_pick_its_address(
    proxied: RunningApp,
) -> None:
    statuses = failed_logins(proxied.url, rotating(ADDRESS_FREE_FAILURES + 2), peer="127.0.0.2")
    assert statuses[ADDRESS_FREE_FAILURES:] == [429, 429]


def login_cookie(url: str, peer: str, headers: dict[str, str]) -> str:
    transport = httpx.HTTPTransport(local_address=peer)
    with httpx.Client(base_url=url, transport=transport, timeout=30) as client:
        response = client.post(
            "/login", data={"username": ALICE[0], "password": ALICE[1]}, headers=headers
        )
    assert response.status_code == 200, response.text
    [cookie] = [c for c in response.headers.get_list("set-cookie") if "access_token" in c]
    return cookie


def test_the_cookie_is_secure_when_a_trusted_proxy_says_https(proxied: RunningApp) -> None:
    https = {"X-Forwarded-Proto": "https"}
    assert "secure" in login_cookie(proxied.url, "127.0.0.1", https).lower()
    assert "secure" not in login_cookie(proxied.url, "127.0.0.1", {}).lower()
    # Anyone else saying https does not make the request https.
    assert "secure" not in login_cookie(proxied.url, "127.0.0.3", https).lower()


def test_upsun_takes_the_client_from_its_router_header() -> None:
    from ..test_upsun import validate

    env = validate(Path(__file__).parents[2] / ".upsun")["applications"]["ragchat"]["variables"]
    assert env["env"]["CLIENT_IP_HEADER"] == "X-Client-IP"
    assert "FORWARDED_ALLOW_IPS" not in env["env"]
