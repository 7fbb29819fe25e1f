"""The fleet store's tests get a real PostgreSQL server they start themselves (lab/postgres.py):
one per test module, one fresh database per test."""

from __future__ import annotations

import itertools

import pytest

from firsttrust.lab.postgres import available, postgres_server

_databases = itertools.count(1)


@pytest.fixture(scope="module")
def pg_server():
    reason = available()
    if reason:
        pytest.skip(reason)
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a new, empty database on the module's server."""
    import psycopg

    name = f"fleet{next(_databases)}"
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_server.url(name)
