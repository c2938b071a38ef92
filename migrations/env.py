"""Alembic environment for pgscore.

The connection is given at run time, never stored: ``config.attributes
["conninfo"]`` (pgscore.migrate), ``-x dsn=...``, ``DATABASE_URL``, or
libpq's own environment, in that order. Any libpq conninfo works (URL or
key=value), because psycopg opens the connection itself.
"""

from __future__ import annotations

import psycopg
from alembic import context
from sqlalchemy import create_engine, pool

from pgscore.connection import resolve_conninfo

config = context.config


def conninfo() -> str:
    given = config.attributes.get("conninfo") or context.get_x_argument(as_dictionary=True).get("dsn")
    return resolve_conninfo(given)


def run_offline() -> None:
    # `alembic upgrade head --sql`: print the SQL for review, connect to nothing.
    context.configure(dialect_name="postgresql", literal_binds=True, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    target = conninfo()
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(target), poolclass=pool.NullPool
    )
    with engine.connect() as connection:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
