"""Work that bench/load.py --watch-loop caught holding the event loop, which every user's chat
shares, now runs in worker threads: the retriever (making it reads the index, may rebuild
BM25; a BM25 search is CPU work), the account check at each chat event (SQLite reads that
wait while a sign-in writes) and making a chat (llama_index sets up its memory in a thread of
its own and waits for it)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from chainlit.context import init_http_context
from chainlit.user import User as ChainlitUser
from llama_index.core.schema import QueryBundle
from llama_index.retrievers.bm25 import BM25Retriever

import ragchat.presenter
import ragchat.tokens
from ragchat.auth import User
from ragchat.presenter import ChatPresenter
from ragchat.retrieval import build_retriever

ALICE = User("alice", "user", disabled=False, session_key="key")


def threads_running(monkeypatch, owner: object, name: str) -> list[int]:
    """The threads each call of `owner.name` runs in, from now on."""
    seen: list[int] = []
    original = getattr(owner, name)

    def recorded(*args, **kwargs):
        seen.append(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return seen


async def test_retrieval_reads_the_index_and_searches_bm25_off_the_event_loop(
    guide_backend, monkeypatch
) -> None:
    library, settings = guide_backend.library, guide_backend.settings
    searches = threads_running(monkeypatch, BM25Retriever, "_retrieve")
    reads = threads_running(monkeypatch, type(library.store), "version")  # BM25's cache key
    retriever = build_retriever(library, settings, top_k=3, mode="hybrid")
    found = await retriever.aretrieve(QueryBundle("Which file types are supported?"))
    assert found, "the guide answers this"
    loop_thread = threading.get_ident()
    assert searches and reads
    assert loop_thread not in searches + reads


def test_retrieval_outside_the_app_still_works_synchronously(guide_backend) -> None:
    """`ragchat eval` retrieves without an event loop."""
    retriever = build_retriever(guide_backend.library, guide_backend.settings, mode="lexical")
    assert retriever.retrieve("Which file types are supported?")


async def test_the_account_is_checked_off_the_event_loop(monkeypatch) -> None:
    checks: list[tuple[int, str, str]] = []

    def current_account(users, token: str, username: str) -> User:
        checks.append((threading.get_ident(), token, username))
        return ALICE

    monkeypatch.setattr(ragchat.presenter, "current_account", current_account)
    init_http_context(user=ChainlitUser(identifier="alice"), auth_token="the session's token")
    presenter = ChatPresenter(app=type("App", (), {"users": object()})())
    assert await presenter.account() == ALICE
    assert checks == [(checks[0][0], "the session's token", "alice")]
    assert checks[0][0] != threading.get_ident()


async def test_a_chat_is_made_off_the_event_loop(monkeypatch) -> None:
    made: list[int] = []

    class Backend:
        def new_chat(self, **_kwargs):
            made.append(threading.get_ident())
            return SimpleNamespace(top_k=3, top_k_max=7, mode="hybrid")

    monkeypatch.setattr(ragchat.presenter, "current_account", lambda *_args: ALICE)
    init_http_context(user=ChainlitUser(identifier="alice"), auth_token="the session's token")
    settings = SimpleNamespace(starters=[], welcome_message="Welcome")
    app = SimpleNamespace(users=object(), backend=Backend(), settings=settings)
    await ChatPresenter(app=app).start_chat()
    assert made and made[0] != threading.get_ident()


async def test_a_requests_session_token_is_checked_off_the_event_loop(monkeypatch) -> None:
    # Every request and websocket carrying a cookie is checked against its account: with
    # PostgreSQL, a round trip over the network each time.
    checked: list[tuple[int, str]] = []

    def revoked(_users, token: str) -> bool:
        checked.append((threading.get_ident(), token))
        return token == "a revoked token"

    monkeypatch.setattr(ragchat.tokens, "revoked", revoked)
    reached: list[dict] = []

    async def app(scope, _receive, _send) -> None:
        reached.append(dict(scope["headers"]))

    middleware = ragchat.tokens.RevokedTokens(app, users=object())
    for token in ("a current token", "a revoked token"):
        scope = {"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())]}
        await middleware(scope, None, None)
    assert [token for _, token in checked] == ["a current token", "a revoked token"]
    assert threading.get_ident() not in {thread for thread, _ in checked}
    assert reached == [{b"authorization": b"Bearer a current token"}, {}]
