"""Fixtures of the feedback tests: PostgreSQL databases (the tests skip cleanly without one)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A uniquely named PostgreSQL database for this test session (one per xdist worker),
    dropped at the end. The store tests empty it before each test (TRUNCATE), so a test that
    needs a store of its own takes `fresh_pg_url` instead of sharing this one."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_DSN, autocommit=True)
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432: {e}")
    name = f"prefloop_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[Callable[[str], str]]:
    """make(tag) -> the URL of a new empty database beside the session one; all that the test
    made are dropped after it."""
    import psycopg

    made: list[str] = []

    def make(tag: str) -> str:
        name = f"{pg_url.rsplit('/', 1)[1]}_{tag}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return pg_url.rsplit("/", 1)[0] + "/" + name

    yield make
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
