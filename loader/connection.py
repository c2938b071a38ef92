"""The one way pgscore finds and opens its database connection.

Order: an explicit conninfo (CLI ``--dsn``), else ``DATABASE_URL``, else
libpq's own environment (``PGHOST``, ``PGPORT``, ``PGUSER``, ...), which an
empty conninfo means to libpq.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

from .errors import PgscoreError

# What `pgscore migrate` creates and every other command reads; looked up in
# pg_catalog, which any role may read, whatever its grants on the schemas.
SCHEMA_SQL = (
    "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE (n.nspname, c.relname) IN (('scoring', 'models'), ('public', 'customer_profiles'))"
)


class SchemaMissing(PgscoreError, RuntimeError):
    """The database has no pgscore schema: ``pgscore migrate`` has not run on it."""


def resolve_conninfo(dsn: str | None = None) -> str:
    if dsn:
        return dsn
    return os.environ.get("DATABASE_URL", "")


def connect(dsn: str | None = None, *, migrated: bool = True, **kwargs: Any) -> psycopg.Connection:
    """A psycopg connection to the resolved database.

    With ``migrated`` (the default) the database must hold pgscore's schema.
    Raises psycopg.OperationalError when it cannot connect, SchemaMissing
    when the schema is not there.
    """
    conn = psycopg.connect(resolve_conninfo(dsn), **kwargs)
    if migrated:
        try:
            require_schema(conn)
        except BaseException:
            conn.close()
            raise
    return conn


def require_schema(conn: psycopg.Connection) -> None:
    """Raises SchemaMissing unless ``pgscore migrate`` has run on the connection's database."""
    found = conn.execute(SCHEMA_SQL).fetchone()[0]
    if not conn.autocommit:
        conn.rollback()  # leave no transaction open behind the caller's back
    if found < 2:
        raise SchemaMissing(
            f"database {conn.info.dbname!r} on {describe_server(conn)} has no pgscore schema: "
            "run `pgscore migrate` on it first (as a superuser)"
        )


def describe_server(conn: psycopg.Connection) -> str:
    """'host:port' of a connection (the socket folder for a Unix socket)."""
    return f"{conn.info.host}:{conn.info.port}"
