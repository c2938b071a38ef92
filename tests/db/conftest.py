"""Fixtures of the database tests that the other folders do not need."""

from __future__ import annotations

import os
from typing import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo


@pytest.fixture
def empty_db(server) -> Iterator[str]:
    """Superuser DSN of a database without pgscore's schema (pgscore migrate never ran)."""
    name = f"pgscore_t_empty_{os.getpid()}"
    with psycopg.connect(server["dsn"], autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    yield make_conninfo(server["dsn"], dbname=name)
    with psycopg.connect(server["dsn"], autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
