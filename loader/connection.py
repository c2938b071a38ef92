"""The one way pgscore finds and opens its database connection.

Order: an explicit conninfo (CLI ``--dsn``), else ``DATABASE_URL``, else
libpq's own environment (``PGHOST``, ``PGPORT``, ``PGUSER``, ...), which an
empty conninfo means to libpq.

A superuser's connection does not stay a superuser's: schema ``scoring``
belongs to ``scoring_owner``, and PostgreSQL runs the functions of its
views, rules and triggers (and the functions it owns that run as their
caller) with the rights of whoever queries them. So :func:`connect` first
refuses when the schema holds objects pgscore did not create
(sql/idempotent/005-schema-check.sql, which reads only the catalog), then
runs ``SET ROLE scoring_loader``. The check is the barrier, the role a
second line only: code that runs under SET ROLE in a superuser's session
may ``RESET ROLE``. ``pgscore migrate`` (alembic, not this helper) and
``pgscore approve``'s write are the superuser acts.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import psycopg

from .errors import SchemaMissing, SchemaTampered
from .render import sql_file

# What `pgscore migrate` creates and every other command reads; looked up in
# pg_catalog, which any role may read, whatever its grants on the schemas.
SCHEMA_SQL = (
    "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE (n.nspname, c.relname) IN (('scoring', 'models'), ('public', 'customer_profiles'))"
)


# The role a superuser's pgscore session runs as: what push, activate,
# rollback, rescore, models, export-sql and the demo's steps need, and no
# more (docs/security.md, "Superusers and the objects of scoring_owner").
SUPERUSER_RUNS_AS = "scoring_loader"

SUPERUSER_SQL = "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"


def resolve_conninfo(dsn: str | None = None) -> str:
    if dsn:
        return dsn
    return os.environ.get("DATABASE_URL", "")


def connect(dsn: str | None = None, *, migrated: bool = True, keep_superuser: bool = False,
            **kwargs: Any) -> psycopg.Connection:
    """A psycopg connection to the resolved database.

    With ``migrated`` (the default) the database must hold pgscore's schema,
    and a superuser's connection is checked (:func:`require_pgscore_objects_only`)
    and then runs as SUPERUSER_RUNS_AS for the rest of the session, unless
    ``keep_superuser`` (``pgscore approve`` only, which writes
    scoring_trusted and reads scoring through :func:`as_scoring_owner`).
    Raises psycopg.OperationalError when it cannot connect, SchemaMissing
    when the schema is not there, SchemaTampered when a superuser connects
    to a schema that holds objects pgscore did not create.
    """
    conn = psycopg.connect(resolve_conninfo(dsn), **kwargs)
    if migrated:
        try:
            require_schema(conn)
            if not keep_superuser and is_superuser(conn):
                require_pgscore_objects_only(conn)
                conn.execute(f"SET ROLE {SUPERUSER_RUNS_AS}")
                if not conn.autocommit:
                    conn.commit()  # a rollback would undo a SET made in its transaction
        except BaseException:
            conn.close()
            raise
    return conn


def is_superuser(conn: psycopg.Connection) -> bool:
    """Whether the connection's current role is a superuser (reads pg_catalog only)."""
    with _no_transaction_left(conn):
        return bool(conn.execute(SUPERUSER_SQL).fetchone()[0])


def require_pgscore_objects_only(conn: psycopg.Connection) -> None:
    """Raises SchemaTampered when schema scoring holds objects pgscore did
    not create: the check the migrations run first
    (sql/idempotent/005-schema-check.sql), which reads only pg_catalog and
    scoring_trusted and so runs no code of scoring_owner's."""
    try:
        with _no_transaction_left(conn):
            conn.execute(sql_file("idempotent", "005-schema-check.sql"))
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:
        raise SchemaTampered(f"{exc.diag.message_primary}; {exc.diag.message_hint}") from None


@contextlib.contextmanager
def _no_transaction_left(conn: psycopg.Connection) -> Iterator[None]:
    """Rolls back the transaction a catalog read opened, unless the caller had one open."""
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    try:
        yield
    finally:
        if idle and not conn.autocommit and not conn.closed:
            conn.rollback()


@contextlib.contextmanager
def as_scoring_owner(conn: psycopg.Connection) -> Iterator[None]:
    """A transaction in which a superuser's connection reads schema scoring:
    after the schema check (raises SchemaTampered), as ``scoring_owner``,
    with ``search_path`` pinned, so that whatever of scoring_owner's such a
    read runs, runs as scoring_owner. A non-superuser's connection just
    gets a transaction."""
    if not is_superuser(conn):
        with conn.transaction():
            yield
        return
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("as_scoring_owner needs a connection with no transaction open (SET LOCAL would outlive it)")
    require_pgscore_objects_only(conn)
    with conn.transaction():
        conn.execute("SET LOCAL ROLE scoring_owner")
        conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        yield


def require_schema(conn: psycopg.Connection) -> None:
    """Raises SchemaMissing unless ``pgscore migrate`` has run on the connection's database."""
    with _no_transaction_left(conn):
        found = conn.execute(SCHEMA_SQL).fetchone()[0]
    if found < 2:
        raise SchemaMissing(
            f"database {conn.info.dbname!r} on {describe_server(conn)} has no pgscore schema: "
            "run `pgscore migrate` on it first (as a superuser)"
        )


def describe_server(conn: psycopg.Connection) -> str:
    """'host:port' of a connection (the socket folder for a Unix socket)."""
    return f"{conn.info.host}:{conn.info.port}"


def plpython_preloaded(conn: psycopg.Connection) -> bool | None:
    """Whether the server loads PL/Python at start (``shared_preload_libraries``):
    otherwise every new backend loads and links it on its first score, ~2-4
    MiB more of its memory (docs/migrations.md). None when this role may not
    read the setting (a superuser or pg_read_all_settings may)."""
    try:
        with conn.transaction():
            setting = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        return None
    return "plpython3" in preloaded_names(setting)


def preloaded_names(setting: str) -> list[str]:
    """The libraries of a ``shared_preload_libraries`` value, by bare name:
    ``'"$libdir/plpython3.so", pg_stat_statements'`` -> plpython3, pg_stat_statements."""
    return [name.strip().strip('"').rsplit("/", 1)[-1].removesuffix(".so") for name in setting.split(",") if name.strip()]
