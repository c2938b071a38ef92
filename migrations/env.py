"""Alembic environment for pgscore.

The connection is given at run time, never stored: ``config.attributes
["conninfo"]`` (pgscore.migrate), ``-x dsn=...``, ``DATABASE_URL``, or
libpq's own environment, in that order. Any libpq conninfo works (URL or
key=value), because psycopg opens the connection itself.
"""

from __future__ import annotations

import psycopg
from alembic import context
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from pgscore.connection import resolve_conninfo
from pgscore.migrations import codesets
from pgscore.migrations.sqlops import run_sql

config = context.config
HEAD = ScriptDirectory.from_config(config).get_current_head()
# (is_upgrade, heads after the step) of every step this run applied. A stamp
# only writes alembic_version: it installs no code (the tables may not be there).
applied: list[tuple[bool, frozenset[str]]] = []
stamped: list[bool] = []


def record_step(ctx, step, heads, run_args) -> None:
    if step.is_stamp:
        stamped.append(True)
    else:
        applied.append((step.is_upgrade, frozenset(heads)))


# Qualified: an unqualified alembic_version would resolve to a pg_temp table
# of that name first, which code run earlier in the migration's session
# could have created.
VERSION_TABLE_SCHEMA = "public"


def conninfo() -> str:
    given = config.attributes.get("conninfo") or context.get_x_argument(as_dictionary=True).get("dsn")
    return resolve_conninfo(given)


def run_offline() -> None:
    # `alembic upgrade head --sql`: print the SQL for review, connect to nothing.
    context.configure(dialect_name="postgresql", literal_binds=True, transactional_ddl=True,
                      on_version_apply=record_step, version_table_schema=VERSION_TABLE_SCHEMA)
    with context.begin_transaction():
        context.run_migrations()
        # Offline the database is unknown: the code set is printed whenever an upgrade reaches
        # head, and alone for `upgrade head:head --sql` (to review a code change).
        if stamped:
            reached_head = False
        elif applied:
            reached_head = applied[-1] == (True, frozenset({HEAD}))
        else:
            reached_head = context.get_revision_argument() in ("head", HEAD)
        codesets.after_migrations(lambda sql: run_sql(sql, context.get_context()), None, reached_head, HEAD)


def run_online() -> None:
    target = conninfo()
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(target), poolclass=pool.NullPool
    )
    with engine.connect() as connection:
        context.configure(connection=connection, transactional_ddl=True, on_version_apply=record_step,
                          version_table_schema=VERSION_TABLE_SCHEMA)
        with context.begin_transaction():
            context.run_migrations()
            # After the revisions, in their transaction: the code set, when the database is
            # at head (and was not taken down there) and its code is not this package's.
            at_head = (context.get_context().get_current_heads() == (HEAD,) and not stamped
                       and (not applied or applied[-1][0]))

            def last_installed():
                return tuple(connection.exec_driver_sql(codesets.LAST_INSTALLED_SQL).fetchone() or ())

            codesets.after_migrations(lambda sql: run_sql(sql, context.get_context()), last_installed, at_head, HEAD)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
