"""Fixtures of the database tests that the other folders do not need."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo


@contextlib.contextmanager
def fresh_database(server: dict, name: str) -> Iterator[str]:
    """Superuser DSN of a new, empty database ``name``, dropped afterwards."""
    with psycopg.connect(server["dsn"], autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield make_conninfo(server["dsn"], dbname=name)
    finally:
        with psycopg.connect(server["dsn"], autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_db(server) -> Iterator[str]:
    """Superuser DSN of a database without pgscore's schema (pgscore migrate never ran)."""
    with fresh_database(server, f"pgscore_t_empty_{os.getpid()}") as dsn:
        yield dsn


@pytest.fixture
def second_empty_db(server) -> Iterator[str]:
    """Another one, beside empty_db."""
    with fresh_database(server, f"pgscore_t_second_{os.getpid()}") as dsn:
        yield dsn
