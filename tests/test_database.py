"""PostgreSQL's part of the settings and the lock shared by every instance, on a real server."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from ragchat import database
from ragchat.config import ConfigError, load_settings


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/app", "postgresql://u:p@db:5432/app"),
        ("postgres://u@db/app", "postgresql://u@db/app"),
        (
            "pgsql://main@postgresql.internal:5432/main",
            "postgresql://main@postgresql.internal:5432/main",
        ),
        ("postgresql+asyncpg://u@db/app", "postgresql://u@db/app"),
    ],
)
def test_every_way_hosts_write_a_postgresql_url_is_read(
    clean_env, given: str, expected: str
) -> None:
    assert load_settings(_env_file=None, database_url=given).database_url == expected


def test_a_url_that_is_not_postgresql_is_refused_without_showing_its_password(clean_env) -> None:
    with pytest.raises(ConfigError) as refusal:
        load_settings(_env_file=None, database_url="mysql://admin:hunter2@db/app")
    assert str(refusal.value) == (
        "Invalid setting DATABASE_URL='mysql://admin:***@db/app': DATABASE_URL must be a "
        "PostgreSQL URL, e.g. postgresql://user:password@host:5432/name (leave it empty to keep "
        "everything in local files)"
    )


def test_on_upsun_the_relationship_gives_the_url(clean_env, monkeypatch) -> None:
    for name, value in {
        "POSTGRESQL_SCHEME": "pgsql",
        "POSTGRESQL_HOST": "postgresql.internal",
        "POSTGRESQL_PORT": "5432",
        "POSTGRESQL_USERNAME": "main",
        "POSTGRESQL_PASSWORD": "p@ss/word",
        "POSTGRESQL_PATH": "main",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(_env_file=None)
    assert settings.database_url == "postgresql://main:p%40ss%2Fword@postgresql.internal:5432/main"
    # One set by hand wins.
    assert load_settings(_env_file=None, database_url="postgresql://x@y/z").database_url == (
        "postgresql://x@y/z"
    )


def test_without_any_the_stores_stay_in_files(clean_env) -> None:
    assert load_settings(_env_file=None).database_url is None


def test_one_holder_of_a_lock_across_connections_and_a_dead_holders_lock_is_free(postgres) -> None:
    with database.advisory_lock(postgres, "ingest") as first:
        with database.advisory_lock(postgres, "ingest", wait=False) as second:
            assert (first, second) == (True, False)
        with database.advisory_lock(postgres, "another", wait=False) as other:
            assert other
        holder = database.engine(postgres).connect()
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": database.lock_key("crash")})
    with database.advisory_lock(postgres, "ingest", wait=False) as after:
        assert after, "the lock outlived its block"
    with database.advisory_lock(postgres, "crash", wait=False) as taken:
        assert not taken
    holder.invalidate()  # the holder's connection dies, as with a killed instance
    with database.advisory_lock(postgres, "crash", wait=False) as taken:
        assert taken


def test_text_postgresql_refuses_is_made_storable_and_the_rest_kept() -> None:
    assert database.storable("a\x00b\ud800c? é") == "a\ufffdb\ufffdc? é"
