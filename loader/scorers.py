"""Scorers: a model name bound to an entity table of the user's own
(``scoring.attach``, ``scoring.attach_events``, ``scoring.detach``, the view
``scoring.scorers``; docs/contract.md).

The server does the work and every check: these functions only call it,
with every name the user gives passed as a parameter (an entity or event
table as text that the server casts to ``regclass``, so
``'"CRM"."Subscribers"'`` works; a column exactly as it is spelled in the
catalog, unquoted). :class:`Entity` is what push needs to know of the table
a model name scores: where to read features and real rows from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import psycopg
from psycopg import sql

from .connection import connect, is_superuser, require_pgscore_objects_only
from .errors import ScorerNotFound

# The key types a scorer may have (scoring.scorers.key_type), and the array
# type a list of keys is sent as: the only SQL type names composed into a query.
KEY_ARRAY_TYPES = {"bigint": "bigint[]", "integer": "integer[]", "text": "text[]", "uuid": "uuid[]"}


@dataclass(frozen=True)
class Entity:
    """The entity table of one scorer, as push reads it."""

    scorer: str
    model_name: str
    schema: str
    table_name: str
    key: str        # the key column, as in pg_attribute
    key_type: str   # one of KEY_ARRAY_TYPES
    table: str      # schema.table as SQL spells it (quoted where needed): for messages
    oid: int | None = None  # None: look ``table`` up by name

    @property
    def relation(self) -> str:
        """Text that casts to the table's regclass. By oid where known: that
        needs no USAGE on its schema, so a role that may not read the table
        can still be told why."""
        return self.table if self.oid is None else str(self.oid)

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table_name)

    @property
    def key_array(self) -> sql.SQL:
        return sql.SQL(KEY_ARRAY_TYPES[self.key_type])

    @property
    def is_reference(self) -> bool:
        """The reference scorer on its own table, scored by the functions that
        predate scorers (scoring.score_with_model): push keeps using them there."""
        return (self.scorer, self.schema, self.table_name, self.key, self.key_type) == \
            ("churn", "public", "customer_profiles", "customer_id", "bigint")


# The reference tables' scorer, for callers that name no entity (the
# parity helpers' defaults, and what tests read profiles with).
REFERENCE = Entity("churn", "churn", "public", "customer_profiles", "customer_id", "bigint", "public.customer_profiles")


ENTITIES_SQL = (
    "SELECT s.scorer, s.model_name, n.nspname::text, c.relname::text, s.key_column, s.key_type,"
    " pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), c.oid::bigint"
    " FROM scoring.scorers s"
    " JOIN pg_catalog.pg_class c ON c.oid = s.entity"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE s.model_name = %s ORDER BY s.scorer"
)


def entities_for_model(conn: psycopg.Connection, model_name: str) -> list[Entity]:
    """The entity tables of every scorer that scores with ``model_name``,
    by scorer name. Raises ScorerNotFound when there is none."""
    found = [Entity(*row) for row in conn.execute(ENTITIES_SQL, [model_name]).fetchall()]
    if not found:
        raise ScorerNotFound(
            f"no scorer scores with model name {model_name!r}; attach one first: "
            f"pgscore attach {model_name} --entity TABLE --key COLUMN (list them: pgscore scorers)")
    unknown = [entity for entity in found if entity.key_type not in KEY_ARRAY_TYPES]
    if unknown:  # the server allows no other; a newer server than this loader might
        raise ScorerNotFound(f"scorer {unknown[0].scorer!r} has a key of type {unknown[0].key_type}, which this "
                             "pgscore cannot read; upgrade pgscore")
    return found


# -- attach, detach, list

Event = Sequence[str | None]  # (events table, its column holding the entity's key, counter column or None)


def _connect_as_caller(dsn: str | None) -> psycopg.Connection:
    """A connection that runs as its own role: attach and detach need the
    entity's owner or a superuser, not the role pgscore's other commands put
    a superuser's session in (pgscore.connection). A superuser's connection
    is checked first, as everywhere (raises SchemaTampered)."""
    conn = connect(dsn, keep_superuser=True)
    try:
        if is_superuser(conn):
            require_pgscore_objects_only(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def attach(
    dsn: str | None,
    scorer: str,
    entity: str,
    key: str,
    *,
    score_column: str | None = None,
    model_id_column: str | None = None,
    scored_at_column: str | None = None,
    model_name: str | None = None,
    features: Iterable[str] | None = None,
    score_on_insert: bool = True,
    events: Iterable[Event] = (),
) -> list[str]:
    """``scoring.attach`` and then ``scoring.attach_events`` for each of
    ``events``, in one transaction: all of them, or nothing. Returns the
    server's one-line summaries, in that order.

    ``entity`` and each events table are table names as SQL writes them
    (``'"CRM"."Subscribers"'``), resolved with the connection's search_path;
    ``key``, the column arguments and ``features`` are column names exactly
    as the catalog spells them (not quoted). With no ``score_column`` the
    scores go to pgscore's own table ``scoring_scores.<scorer>``.
    Must run as the entity's owner (or a member of its role) or a superuser.
    Raises psycopg errors for what the server refuses (psycopg.errors.UndefinedTable
    for a table that does not exist, InsufficientPrivilege for a caller who
    does not own it, ...), SchemaMissing before ``pgscore migrate``.
    """
    event_rows = [_event(event) for event in events]
    with _connect_as_caller(dsn) as conn, conn.transaction():
        lines = [conn.execute(
            "SELECT scoring.attach(%s, %s::regclass, %s, %s, %s, %s, %s, %s::text[], %s)",
            [scorer, entity, key, score_column, model_id_column, scored_at_column, model_name,
             None if features is None else list(features), score_on_insert]).fetchone()[0]]
        for table, entity_key, counter in event_rows:
            lines.append(conn.execute("SELECT scoring.attach_events(%s, %s::regclass, %s, %s)",
                                      [scorer, table, entity_key, counter]).fetchone()[0])
    return lines


def _event(event: Event) -> tuple[str, str, str | None]:
    if isinstance(event, str) or len(event) not in (2, 3):
        raise ValueError(f"an event source is (events table, entity key column[, counter column]), not {event!r}")
    table, entity_key, counter = (*event, None)[:3]
    return str(table), str(entity_key), counter


def detach(dsn: str | None, scorer: str) -> str:
    """``scoring.detach``: drops the scorer's triggers, generated functions and
    score table; the entity, its events and their columns stay. Returns the
    server's summary. Must run as the entity's owner or a superuser; raises
    psycopg.errors.UndefinedObject for a scorer that does not exist."""
    with _connect_as_caller(dsn) as conn, conn.transaction():
        return conn.execute("SELECT scoring.detach(%s)", [scorer]).fetchone()[0]


def list_scorers(dsn: str | None = None) -> list[dict]:
    """Every row of the view ``scoring.scorers``, by scorer name; ``entity``,
    ``score_table`` (regclass) come as text, and they and the tables in
    ``events`` are schema-qualified (``public.customer_profiles``)."""
    with connect(dsn) as conn, conn.transaction(), conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        # A regclass prints its schema unless the search_path finds it: read with none.
        cur.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        cur.execute(
            "SELECT scorer, model_name, entity::text AS entity, key_column, key_type, score_target, score_column,"
            " model_id_column, scored_at_column, score_table::text AS score_table, features, score_on_insert, mode,"
            " events, active_model_id, active_version, scoring_path, attached_at, attached_by"
            " FROM scoring.scorers ORDER BY scorer")
        return cur.fetchall()
