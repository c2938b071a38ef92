"""The one way pgscore finds and opens its database connection.

Order: an explicit conninfo (CLI ``--dsn``), else ``DATABASE_URL``, else
libpq's own environment (``PGHOST``, ``PGPORT``, ``PGUSER``, ...), which an
empty conninfo means to libpq.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg


def resolve_conninfo(dsn: str | None = None) -> str:
    if dsn:
        return dsn
    return os.environ.get("DATABASE_URL", "")


def connect(dsn: str | None = None, **kwargs: Any) -> psycopg.Connection:
    """A psycopg connection to the resolved database; raises psycopg.OperationalError."""
    return psycopg.connect(resolve_conninfo(dsn), **kwargs)
