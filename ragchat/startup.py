"""Everything the app builds once per process, before Chainlit serves the first page."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass

from ragchat.auth import UserStore, create_first_admin, ensure_auth_secret, user_store
from ragchat.backends import Backend, create_backend
from ragchat.config import ConfigError, Settings, load_settings
from ragchat.history import HistoryDataLayer, HistorySchemaError, history_layer
from ragchat.logs import setup_logging

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class App:
    settings: Settings
    users: UserStore
    backend: Backend
    history: HistoryDataLayer


def start() -> App:
    """Settings, accounts and the backend (models and index, loaded once); a setting the app
    cannot run with stops it with one line saying what is wrong."""
    setup_logging()
    try:
        settings = load_settings()
        users = user_store(settings)
        ensure_auth_secret(users)
        history = history_layer(settings)
        backend = create_backend(settings)
    except (ConfigError, HistorySchemaError) as error:
        sys.exit(f"ragchat cannot start: {error}")
    if password := create_first_admin(users):
        print(FIRST_ADMIN_NOTICE.format(password=password), flush=True)
    return App(settings, users, backend, history)


async def keep_in_sync(backend: Backend, interval: float) -> None:
    """Check DATA_DIR every `interval` seconds, so files copied in (`upsun mount:upload`),
    changed or deleted while the app runs are picked up without a restart. Polling rather
    than file-system events: those do not cross network mounts."""
    while True:
        await asyncio.sleep(interval)
        try:
            # Skipped while another instance syncs: it does the same work.
            report = await asyncio.to_thread(backend.sync, wait=False)
        except Exception:
            log.exception("Syncing the documents failed; trying again in %s s", interval)
            continue
        if report.changed_anything:
            log.info("Documents changed: %s", report.summary())


FIRST_ADMIN_NOTICE = """
======================================================================
No account existed, so ragchat created the administrator "admin" with
the password

    {password}

It is shown only this once. Sign in with it, then change it with

    python create_password.py reset admin
======================================================================
"""
