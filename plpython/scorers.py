"""Scorers: what a scorer binds (scoring.scorer_entities, scoring.scorer_events),
read once per backend and checked on every use.

A scorer scores the rows of one entity table (a single-column key of type
bigint, integer, text or uuid) with the active model of its model name and
writes each score either into columns of the entity (``score_column``,
optionally ``model_id_column`` and ``scored_at_column``) or into its own
narrow table ``scoring_scores."<scorer>"``. Event tables keep a counter
column of the entity equal to their number of rows per key. The reference
tables are the scorer 'churn'.

Every name here comes from the catalog and is quoted by PostgreSQL
(quote_ident): a :class:`Scorer`'s SQL fragments are safe to write into
statements. The stamp (the registry rows' and the entity's catalog row
versions) changes with an attach, a detach, a rename or an ALTER TABLE, and
then the scorer is read again.
"""

from __future__ import annotations

from . import plans
from .errors import INSUFFICIENT_PRIVILEGE, UNDEFINED_OBJECT, ScoringError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

# The reference scorer: public.customer_profiles and public.complaints.
REFERENCE = "churn"
SCORE_SCHEMA = "scoring_scores"
HOOK_SCHEMA = "scoring_hooks"

# One row per scorer: its binding with every name quoted, the entity's
# columns, and the stamp that tells a cached copy from a stale one.
SCORER_SQL = """
SELECT e.scorer, e.model_name, e.entity::oid AS entity_oid,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS entity,
       e.key_column, e.key_type, e.score_column, e.features,
       -- The hooks run as the entity's owner: never as anyone else (the owner
       -- may alter them; made to run as their caller, they would run as scoring_owner).
       (SELECT pg_catalog.bool_and(coalesce(p.prosecdef AND p.proowner = c.relowner, false))
          FROM pg_catalog.unnest(ARRAY[
                   pg_catalog.to_regprocedure(pg_catalog.format('scoring_hooks.%I(%s[])', e.scorer || '_lock', e.key_type)),
                   pg_catalog.to_regprocedure(pg_catalog.format('scoring_hooks.%I(%s[], integer[], double precision[], bigint, text)',
                                                     e.scorer || '_write', e.key_type))]) AS h(oid)
          LEFT JOIN pg_catalog.pg_proc p ON p.oid = h.oid) AS hooks_run_as_owner,
       e.xmin::text || ':' || c.xmin::text || ':' || coalesce(
           (SELECT pg_catalog.string_agg(v.xmin::text || '/' || v.events::oid::text || '/' || ec.xmin::text, ',' ORDER BY v.events::oid)
              FROM scoring.scorer_events v JOIN pg_catalog.pg_class ec ON ec.oid = v.events
             WHERE v.scorer = e.scorer), '') AS stamp
  FROM scoring.scorer_entities e
  JOIN pg_catalog.pg_class c ON c.oid = e.entity
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE e.scorer = $1
   -- What attach checked, checked again at every use (the registry is the
   -- owners' to write): a table without row-level security (its policies
   -- would run as scoring_owner), whose key is of the type recorded.
   AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity
   AND e.key_type = (SELECT pg_catalog.format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attname = e.key_column AND NOT a.attisdropped)
"""
EVENTS_SQL = """
SELECT v.events::oid AS events_oid,
       pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS events,
       v.key_column, v.counter_column, c.relkind IN ('r', 'p') AND NOT c.relrowsecurity AS usable
  FROM scoring.scorer_events v
  JOIN pg_catalog.pg_class c ON c.oid = v.events
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE v.scorer = $1
 ORDER BY v.events::oid
"""
COLUMNS_SQL = (
    "SELECT attname::text AS name, pg_catalog.format_type(atttypid, NULL) AS type"
    " FROM pg_catalog.pg_attribute"
    " WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped"
    " ORDER BY attnum"
)


class Events:
    """One event table of a scorer: its key column and the entity's counter it keeps (or None)."""

    __slots__ = ("oid", "table", "key", "counter", "counter_name")

    def __init__(self, oid: int, table: str, key: str, counter: str | None, counter_name: str | None) -> None:
        self.oid = oid
        self.table = table
        self.key = key
        self.counter = counter
        self.counter_name = counter_name


class Scorer:
    """A scorer's binding, every identifier already quoted.

    ``entity`` is the qualified entity table, ``key`` its key column
    (``key_name`` unquoted), ``columns`` the entity's column types. Its
    writes go through the entity owner's ``lock_hook`` and ``write_hook``
    (the score columns are written in there); a ``narrow`` scorer's scores
    go to ``score_table``. ``plan_cache`` holds SQL built for this version
    of the scorer.
    """

    __slots__ = ("name", "model_name", "entity_oid", "entity", "key", "key_name", "key_type", "narrow",
                 "score_table", "lock_hook", "write_hook", "features", "events", "columns", "stamp", "plan_cache")

    def __init__(self, row: Any, events: list[Events], columns: dict[str, str], quote_ident: Any) -> None:
        self.name = row["scorer"]
        self.model_name = row["model_name"]
        self.entity_oid = int(row["entity_oid"])
        self.entity = row["entity"]
        self.key_name = row["key_column"]
        self.key = quote_ident(self.key_name)
        self.key_type = row["key_type"]
        # No score column: scores go to pgscore's own table, never to the entity.
        self.narrow = row["score_column"] is None
        self.score_table = f"{SCORE_SCHEMA}.{quote_ident(self.name)}" if self.narrow else None
        # The entity's writes run as its owner, in functions attach created (scoring._create_scorer_triggers).
        self.lock_hook = f"{HOOK_SCHEMA}.{quote_ident(self.name + '_lock')}"
        self.write_hook = f"{HOOK_SCHEMA}.{quote_ident(self.name + '_write')}"
        self.features = list(row["features"])
        self.events = events
        self.columns = columns
        self.stamp = row["stamp"]
        self.plan_cache: dict = {}

    def events_of(self, oid: int) -> Events:
        for events in self.events:
            if events.oid == oid:
                return events
        raise ScoringError(f"table with oid {oid} does not drive scorer {self.name!r}", sqlstate=UNDEFINED_OBJECT,
                           hint=f"see SELECT * FROM scoring.scorers WHERE scorer = '{self.name}'")


def get(plpy: Any, cache: dict, name: str) -> Scorer:
    """The scorer ``name``, read again when the catalog changed since this backend last read it.

    Raises ScoringError (42704) for an unknown name, naming the scorers there are.
    """
    rows = plans.run(plpy, cache, SCORER_SQL, ["text"], [name])
    if not rows.nrows():
        raise unknown_scorer(plpy, cache, name)
    row = rows[0]
    if not row["hooks_run_as_owner"]:
        raise ScoringError(
            f"scorer {name!r}: its functions scoring_hooks.{name}_lock and _write are missing, or no longer run"
            " as the owner of its entity (SECURITY DEFINER, owned by the table's owner); pgscore will not call them",
            sqlstate=INSUFFICIENT_PRIVILEGE,
            hint=f"the entity's owner can write them again: SELECT scoring._create_scorer_triggers('{name}')")
    known = cache.setdefault("pgscore.scorers", {})
    scorer = known.get(name)
    if scorer is None or scorer.stamp != row["stamp"]:
        event_rows = plans.run(plpy, cache, EVENTS_SQL, ["text"], [name])
        unusable = [r["events"] for r in event_rows if not r["usable"]]
        if unusable:
            raise ScoringError(
                f"scorer {name!r} cannot read its events from {unusable[0]}: it is not a table, or it has row-level"
                " security (its policies would run as scoring_owner)", sqlstate=INSUFFICIENT_PRIVILEGE,
                hint=f"disable row-level security on it, or detach the scorer: SELECT scoring.detach('{name}')")
        events = [Events(r["events_oid"], r["events"], plpy.quote_ident(r["key_column"]),
                         None if r["counter_column"] is None else plpy.quote_ident(r["counter_column"]),
                         r["counter_column"])
                  for r in event_rows]
        column_rows = plans.run(plpy, cache, COLUMNS_SQL, ["oid"], [row["entity_oid"]])
        columns = {r["name"]: r["type"] for r in column_rows}
        scorer = known[name] = Scorer(row, events, columns, plpy.quote_ident)
    return scorer


def unknown_scorer(plpy: Any, cache: dict, name: str) -> ScoringError:
    names = [r["scorer"] for r in plans.run(plpy, cache, "SELECT scorer FROM scoring.scorer_entities ORDER BY 1")]
    if name in names:
        return ScoringError(
            f"scorer {name!r} cannot be used: its entity or an event table is gone, is not a table, has row-level"
            " security (its policies would run as scoring_owner), or its key is no longer of the type attached",
            sqlstate=UNDEFINED_OBJECT,
            hint=f"see SELECT * FROM scoring.scorers WHERE scorer = '{name}'; detach it or attach it again")
    known = f"scorers: {', '.join(names[:10])}" if names else "no scorer is attached yet"
    return ScoringError(
        f"no scorer named {name!r}", sqlstate=UNDEFINED_OBJECT,
        hint=f"{known}; attach one with SELECT scoring.attach('{name}', 'schema.table', 'key_column')"
             if names or name else known)
