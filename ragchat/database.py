"""PostgreSQL, when DATABASE_URL names one: the URL in the forms each driver wants, one engine per
process, the lock that lets one instance at a time do what must happen once, and text made
storable. Without DATABASE_URL nothing here is used: every store stays in its files."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from urllib.parse import quote, urlsplit

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

# Upsun's relationship variables say "pgsql"; other hosts say "postgres".
_SCHEMES = {"postgresql", "postgres", "pgsql"}
_SURROGATE = re.compile("[\ud800-\udfff]")


def normalized_url(url: str) -> str:
    """`url` as postgresql://…, without a driver; ValueError with what to write instead."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme not in _SCHEMES or not parts.hostname:
        raise ValueError(
            "DATABASE_URL must be a PostgreSQL URL, e.g. postgresql://user:password@host:5432/name"
            " (leave it empty to keep everything in local files)"
        )
    return "postgresql" + url[len(parts.scheme) :]


def url_from_upsun(environ: Mapping[str, str] = os.environ) -> str | None:
    """The URL of the relationship named `postgresql` (.upsun/config.yaml), from the variables
    Upsun sets for it; None outside Upsun or without that relationship."""
    if not environ.get("POSTGRESQL_HOST"):
        return None
    user = quote(environ.get("POSTGRESQL_USERNAME", "main"), safe="")
    password = quote(environ.get("POSTGRESQL_PASSWORD", ""), safe="")
    login = f"{user}:{password}" if password else user
    host, port = environ["POSTGRESQL_HOST"], environ.get("POSTGRESQL_PORT", "5432")
    return f"postgresql://{login}@{host}:{port}/{environ.get('POSTGRESQL_PATH', 'main')}"


def with_driver(url: str, driver: str) -> str:
    """SQLAlchemy's URL for `driver` ("psycopg" for the sync stores, "asyncpg" for Chainlit's
    data layer). Named always: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, 2.0 as
    psycopg2."""
    return f"postgresql+{driver}" + url[len("postgresql") :]


def shown(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


@cache
def engine(url: str) -> Engine:
    """One pool per process and database. pre_ping: a managed server closes idle connections."""
    return create_engine(with_driver(url, "psycopg"), pool_pre_ping=True)


def lock_key(name: str) -> int:
    """A stable 64-bit advisory-lock key for `name` (the same in every process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def advisory_lock(url: str, name: str, wait: bool = True) -> Iterator[bool]:
    """Hold PostgreSQL's session lock `name` while the block runs: across every process on the
    database, one holder at a time. Yields False at once when `wait` is off and another holds it.
    The connection is not a pooled one: a pool's reset does not release session locks (so a
    pooled connection would keep the lock after the block), and a crashed holder's lock goes with
    its connection."""
    connection = create_engine(with_driver(url, "psycopg"), poolclass=NullPool).connect()
    try:
        key = lock_key(name)
        if wait:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            held = True
        else:
            held = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": key}
            ).scalar()
        connection.commit()
        try:
            yield bool(held)
        finally:
            if held:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
    finally:
        connection.close()


def storable(value: str) -> str:
    """`value` as both stores can keep it: PostgreSQL's TEXT refuses NUL characters, and neither
    asyncpg nor SQLite's driver can encode a lone surrogate (the write failed, the message was
    lost); each becomes U+FFFD."""
    return _SURROGATE.sub("\ufffd", value.replace("\x00", "\ufffd"))


def driver_message(error: Exception) -> str:
    """The first line of the driver's own message ("... port 5432 failed: Connection refused"),
    without the SQL and background link SQLAlchemy adds."""
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
