"""Keeping a scorer's scores fresh as the rows behind them change: the
generic path of every scorer's triggers (scoring._scorer_trigger, one
static PL/Python function for all of them).

Events (a statement on an event table, seen through its transition tables):

- INSERT, COPY: +1 per new row for its entity key; DELETE: -1 per old row;
  an UPDATE that moves an event to another key: the counters of the keys
  involved are counted again (an UPDATE that moves nothing changes
  nothing); TRUNCATE: every counter of the entity goes back to 0.
- Per statement, :func:`apply` locks the affected entity rows in key order
  (so that concurrent statements cannot deadlock: every path of pgscore
  takes an entity's row locks in that order), reads the features with the
  counter as it will be, scores them with one model call and writes
  counters and scores, all in the event's transaction.

Entity rows:

- an UPDATE that changes a column the active model reads: that row is
  scored again in the same statement, as stored (:func:`row_updated` notes
  its key, :func:`_rows_updated` rescores the statement's keys; the
  scores' own write names no feature, so nothing recurses); an UPDATE of
  other columns, or of the score columns alone, is not rescored;
- INSERT (when the scorer scores new rows): their counters recounted, then
  scored like an event with no counter;
- DELETE and TRUNCATE (narrow score table): their scores go too.

A scoring failure follows scoring.on_error, as on the reference path: with
'keep' counters still move, the old score stays and the failure goes to
scoring.errors (with the scorer and the key) and a WARNING.

The reference scorer's INSERTs into complaints keep their generated fast
path (pgscore_server.sqlpath); everything else of every scorer comes here.
"""

from __future__ import annotations

from . import catalog, plans, registry, scorers, settings, trigger
from .errors import INVALID_PARAMETER_VALUE, NO_DATA_FOUND, ScoringError, as_scoring_error

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Sequence

ROOT_SQL = "SELECT pg_catalog.pg_partition_root($1::pg_catalog.regclass)::pg_catalog.oid AS root"
# The transition tables of every pgscore trigger.
NEW_ROWS = "pgscore_new"
OLD_ROWS = "pgscore_old"


def on_trigger(plpy: Any, cache: dict, td: dict) -> str | None:
    """scoring._scorer_trigger(): dispatches on the table and the event."""
    if td["level"] == "ROW":
        # Only notes keys (no write): the scorer this backend read, checked
        # again by the statement's trigger before anything is written.
        known = cache.get("pgscore.scorers", {}).get(td["args"][0])
        if known is not None and int(td["relid"]) == known.entity_oid:
            return row_updated(plpy, cache, known, td["old"], td["new"])
    scorer = scorers.get(plpy, cache, td["args"][0])
    relid = int(td["relid"])
    if relid != scorer.entity_oid and relid not in {events.oid for events in scorer.events}:
        # A statement run on a partition directly: the partitioned table's scorer.
        relid = int(plans.run(plpy, cache, ROOT_SQL, ["oid"], [relid])[0]["root"] or relid)
    event = td["event"]
    if relid == scorer.entity_oid:
        return _on_entity(plpy, cache, scorer, td, event)
    events = scorer.events_of(relid)
    if event == "TRUNCATE":  # a recount of an empty table: every counter back to 0
        recount(plpy, cache, scorer, events)
        return None
    key = events.key
    parts = []
    if event in ("INSERT", "UPDATE"):
        parts.append(f"SELECT e.{key} AS k, 1 AS d FROM {NEW_ROWS} e")
    if event in ("DELETE", "UPDATE"):
        parts.append(f"SELECT e.{key} AS k, -1 AS d FROM {OLD_ROWS} e")
    rows = plpy.execute(
        f"SELECT k, sum(d)::int AS n FROM ({' UNION ALL '.join(parts)}) x"
        " WHERE k IS NOT NULL GROUP BY k HAVING sum(d) <> 0 ORDER BY k")
    if not rows.nrows():
        return None
    keys = [r["k"] for r in rows]
    if event == "UPDATE" and events.counter is not None:
        # A move: the counters of the keys involved are counted again, which
        # stays exact when the entity's key itself changed and its events
        # followed (ON UPDATE CASCADE: the counter moved with the row).
        recount(plpy, cache, scorer, events, keys)
    else:
        apply(plpy, cache, scorer, events, keys, [r["n"] for r in rows])
    return None


def recount(plpy: Any, cache: dict, scorer: scorers.Scorer, events: scorers.Events,
            keys: Sequence[Any] | None = None) -> int:
    """Sets the counter ``events`` keeps to its number of event rows wherever
    it differs (attach_events on tables with rows, TRUNCATE; only for
    ``keys`` when given: moves, new entity rows), rescoring those rows.
    Returns how many counters moved. The entity's rows are locked (in key
    order) before they are counted, so that the count and the write agree."""
    if events.counter is None:
        return 0
    key_array = f"{scorer.key_type}[]"
    if keys is not None:
        plans.run(plpy, cache, f"SELECT {scorer.lock_hook}($1::{key_array})", [key_array], [list(keys)])
    only = "" if keys is None else f" AND p.{scorer.key} = ANY($1::{key_array})"
    only_events = "" if keys is None else f" WHERE e.{events.key} = ANY($1::{key_array})"
    rows = plans.run(plpy, cache,
        f"SELECT p.{scorer.key} AS k, (coalesce(c.n, 0) - p.{events.counter})::int AS d FROM {scorer.entity} p"
        f" LEFT JOIN (SELECT e.{events.key} AS k, count(*) AS n FROM {events.table} e{only_events} GROUP BY 1) c"
        f" ON c.k = p.{scorer.key} WHERE coalesce(c.n, 0) IS DISTINCT FROM p.{events.counter}{only} ORDER BY 1",
        [key_array] if keys is not None else [], [list(keys)] if keys is not None else [])
    if rows.nrows():
        apply(plpy, cache, scorer, events, [r["k"] for r in rows], [r["d"] for r in rows])
    return rows.nrows()


def _on_entity(plpy: Any, cache: dict, scorer: scorers.Scorer, td: dict, event: str) -> str | None:
    if event == "UPDATE" and td["level"] == "ROW":
        return row_updated(plpy, cache, scorer, td["old"], td["new"])
    if event == "UPDATE":
        _rows_updated(plpy, cache, scorer)
    elif event == "INSERT":
        # New rows (the scorer scores them): their counters count the events
        # there are already (events without a foreign key may come first).
        keys = [r["k"] for r in plpy.execute(f"SELECT e.{scorer.key} AS k FROM {NEW_ROWS} e ORDER BY 1")]
        if keys:
            for events in scorer.events:
                recount(plpy, cache, scorer, events, keys)
            apply(plpy, cache, scorer, None, keys, [0] * len(keys))
    elif event == "DELETE" and scorer.narrow:
        plpy.execute(f"DELETE FROM {scorer.score_table} s USING {OLD_ROWS} e WHERE s.{scorer.key} = e.{scorer.key}")
    elif event == "TRUNCATE" and scorer.narrow:
        plpy.execute(f"TRUNCATE {scorer.score_table}")
    return None


def apply(plpy: Any, cache: dict, scorer: scorers.Scorer, events: scorers.Events | None, keys: Sequence[Any],
          deltas: Sequence[int]) -> int:
    """Grows the counter ``events`` keeps (if any: ``events`` None or
    without a counter, the deltas are ignored) of each key's entity row by
    its delta and rescores those rows, with one model call. Keys whose row
    does not exist (an event for a deleted entity) are skipped. Returns the
    number of rows rescored.

    Locks, always in key order and the entity rows first (by the owner's
    lock hook): with score columns, the rows are then read with the counter
    as it will be and written once; with the narrow table, the counters are
    written, then the score rows locked, and the features read after that
    (a statement of its own, which sees every change committed before the
    score rows were locked). A writer of the same score holds its score row
    until it commits, so no score is computed from a row version older than
    the one it overwrites.
    """
    model, load_failure, active_id = _active(plpy, cache, scorer)
    counter = events if events is not None and events.counter is not None else None
    key_array = f"{scorer.key_type}[]"
    keys, deltas = list(keys), list(deltas)
    # The entity rows first, always, in key order (by its owner's function: scoring_owner may not lock them).
    plans.run(plpy, cache, f"SELECT {scorer.lock_hook}($1::{key_array})", [key_array], [keys])
    if scorer.narrow:
        if counter is not None:
            _write_entity(plpy, cache, scorer, counter, keys, deltas, [None] * len(keys), None)
        plans.run(plpy, cache, _narrow_sql(scorer, "claim"), [key_array], [keys])
        plans.run(plpy, cache, _narrow_sql(scorer, "lock_scores"), [key_array], [keys])
        rows = plans.run(plpy, cache, _read_sql(plpy, scorer, model, None), [key_array, "int[]"], [keys, deltas])
    else:
        rows = plans.run(plpy, cache, _read_sql(plpy, scorer, model, counter), [key_array, "int[]"], [keys, deltas])
    if not rows.nrows():
        return 0
    ids = [row["pgscore_key"] for row in rows]
    scores: list[float | None] = [None] * len(ids)
    failures: dict = {}
    if model is not None:
        scores, failures = trigger._score_each(model, ids, rows)
        if failures and settings.on_error(plpy, cache) == "raise":
            raise next(iter(failures.values()))
    elif load_failure is not None:
        failures = {key: load_failure for key in ids}
    model_id = model.model_id if model is not None else None
    if scorer.narrow:
        plans.run(plpy, cache, _narrow_sql(scorer, "write"), [key_array, "float8[]", "bigint"], [ids, scores, model_id])
    else:
        counts = [row["pgscore_delta"] for row in rows]
        _write_entity(plpy, cache, scorer, counter, ids, counts, scores, model_id)
    if failures:
        trigger._record(plpy, cache, model_id if model is not None else active_id, failures, scorer.name)
    return len(ids)


def rescore_batch(plpy: Any, cache: dict, scorer: scorers.Scorer, after: str | None, batch_size: int) -> str | None:
    """One batch of scoring.rescore for a scorer: the ``batch_size`` keys after
    ``after`` (text; None: from the first), rescored by :func:`apply`.
    Returns the batch's last key as text, None when there were no keys left."""
    if batch_size is None or batch_size < 1:
        raise ScoringError(f"batch_size must be a positive number of rows, not {batch_size}",
                           sqlstate=INVALID_PARAMETER_VALUE, hint=f"call scoring.rescore('{scorer.name}', 10000)")
    _require_active(plpy, cache, scorer)
    where = "" if after is None else f" WHERE p.{scorer.key} > $2::text::{scorer.key_type}"
    rows = plans.run(plpy, cache, f"SELECT p.{scorer.key} AS k FROM {scorer.entity} p{where}"
                                  f" ORDER BY p.{scorer.key} LIMIT $1", ["int", "text"], [batch_size, after])
    keys = [row["k"] for row in rows]
    if not keys:
        return None
    apply(plpy, cache, scorer, None, keys, [0] * len(keys))
    return str(keys[-1])


def count(plpy: Any, cache: dict, scorer: scorers.Scorer) -> int:
    return plans.run(plpy, cache, f"SELECT count(*) AS n FROM {scorer.entity}")[0]["n"]


def row_updated(plpy: Any, cache: dict, scorer: scorers.Scorer, old: dict, new: dict) -> None:
    """One entity row an UPDATE changed (AFTER ROW: as stored, after the
    table's own BEFORE triggers and generated columns): its key is noted when
    a feature of the active model changed (or, for the narrow table, the key
    itself), and the statement's trigger rescores all noted keys at once, in
    key order (:func:`_rows_updated`), as every other writer does. One query,
    the active model (its features from this backend's copy; every column
    the scorer may read when it has none)."""
    active = registry.active_model_id(plpy, cache, scorer.model_name)
    if active is None:
        return None
    model = registry.cached(cache, active[0], active[1], active[2])
    names = model.feature_names if model is not None else scorer.features
    moved = scorer.narrow and old[scorer.key_name] != new[scorer.key_name]
    if not moved and all(old.get(name) == new.get(name) for name in names):
        return None
    noted = cache.setdefault("pgscore.updated_keys", {}).setdefault(scorer.name, ([], []))
    noted[0].append(new[scorer.key_name])
    if moved:
        noted[1].append(old[scorer.key_name])
    return None


def _rows_updated(plpy: Any, cache: dict, scorer: scorers.Scorer) -> None:
    """After an UPDATE statement of a scorer's entity: the rows whose features
    changed (noted by :func:`row_updated`) rescored, and the score rows of
    keys that moved away (narrow table) deleted, in key order."""
    keys, gone = cache.get("pgscore.updated_keys", {}).pop(scorer.name, ([], []))
    if gone:
        plans.run(plpy, cache, _narrow_sql(scorer, "forget"), [f"{scorer.key_type}[]"], [sorted(set(gone))])
    if keys:
        keys = sorted(set(keys))
        apply(plpy, cache, scorer, None, keys, [0] * len(keys))


def score_keys(plpy: Any, cache: dict, scorer: scorers.Scorer, keys: Sequence[Any], model_id: int | None = None
               ) -> list[float]:
    """Fresh scores of ``keys`` (in order) with the scorer's active model (or
    ``model_id``: push's parity check); reads only. Raises ScoringError
    naming the keys that have no row."""
    if any(key is None for key in keys):
        raise ScoringError("keys contains NULL", sqlstate=INVALID_PARAMETER_VALUE,
                           hint="remove NULLs, e.g. array_remove(keys, NULL)")
    if model_id is None:
        model = registry.load(plpy, cache, *_require_active(plpy, cache, scorer), scorer=scorer)
    else:
        model = registry.load(plpy, cache, model_id, scorer=scorer)
    if not keys:
        return []
    rows = plans.run(plpy, cache,
                     f"SELECT u.k AS pgscore_key, {model.select_list} FROM unnest($1::text[]) AS u(k)"
                     f" JOIN {scorer.entity} p ON p.{scorer.key} = u.k::{scorer.key_type}", ["text[]"],
                     [sorted(set(keys))])
    found = {row["pgscore_key"]: row for row in rows}
    missing = sorted(set(keys) - found.keys())
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ScoringError(f"no row of {scorer.entity} with {scorer.key} {shown}", sqlstate=NO_DATA_FOUND,
                           hint=f"check the key against {scorer.entity}")
    distinct = list(found)
    scored = dict(zip(distinct, model.predict([found[key] for key in distinct])))
    return [scored[key] for key in keys]


def _require_active(plpy: Any, cache: dict, scorer: scorers.Scorer) -> tuple[int, str, str]:
    active = registry.active_model_id(plpy, cache, scorer.model_name)
    if active is None:
        raise registry.no_active_model(plpy, cache, scorer.model_name)
    return active


def _active(plpy: Any, cache: dict, scorer: scorers.Scorer) -> tuple[Any, ScoringError | None, int | None]:
    """(the scorer's active model loaded for its entity or None, why it could not be loaded, its model_id)."""
    active = registry.active_model_id(plpy, cache, scorer.model_name)
    if active is None:
        return None, None, None
    try:
        # A subtransaction, so that a failed query while loading does not
        # abort the event's transaction under 'keep'.
        with plpy.subtransaction():
            return registry.load(plpy, cache, *active, scorer=scorer), None, active[0]
    except Exception as exc:
        failure = as_scoring_error(exc, f"loading the active {scorer.model_name!r} model failed")
        if settings.on_error(plpy, cache) == "raise":
            raise failure from None
        return None, failure, active[0]


def _read_sql(plpy: Any, scorer: scorers.Scorer, model: Any, counter: scorers.Events | None) -> str:
    """Reads each key's delta and the model's features (``counter``'s column
    as it will be after the statement) of rows the lock hook locked."""
    cache_key = ("read", counter.counter if counter else None, model.model_id if model else None)
    cached = scorer.plan_cache.get(cache_key)
    if cached is not None:
        return cached
    select_list = ""
    if model is not None:
        overrides = {}
        if counter is not None:
            overrides[counter.counter_name] = f"p.{counter.counter} + u.n"
        select_list = ", " + catalog.select_list(plpy, model.feature_names, scorer.columns, overrides=overrides)
    sql = (f"SELECT p.{scorer.key} AS pgscore_key, u.n AS pgscore_delta{select_list}"
           f" FROM {scorer.entity} p JOIN unnest($1::{scorer.key_type}[], $2::int[]) AS u(k, n) ON p.{scorer.key} = u.k"
           f" ORDER BY p.{scorer.key}")
    scorer.plan_cache[cache_key] = sql
    return sql


def _narrow_sql(scorer: scorers.Scorer, step: str) -> str:
    """The statements of the narrow table's protocol (:func:`apply`), keys as $1."""
    key, entity, table, keys = scorer.key, scorer.entity, scorer.score_table, f"$1::{scorer.key_type}[]"
    return {
        # Score rows for keys that have none yet, then every score row locked, in key order.
        "claim": f"INSERT INTO {table} ({key}) SELECT DISTINCT u.k FROM unnest({keys}) AS u(k)"
                 f" JOIN {entity} p ON p.{key} = u.k ORDER BY 1 ON CONFLICT ({key}) DO NOTHING",
        "lock_scores": f"SELECT FROM {table} s WHERE s.{key} = ANY({keys}) ORDER BY s.{key} FOR UPDATE",
        # The score rows of keys that left the entity, locked in key order first.
        "forget": f"DELETE FROM {table} s WHERE s.{key} IN"
                  f" (SELECT f.{key} FROM {table} f WHERE f.{key} = ANY({keys}) ORDER BY 1 FOR UPDATE)",
        "write": f"UPDATE {table} s SET score = u.score, model_id = $3, scored_at = now()"
                 f" FROM unnest({keys}, $2::float8[]) AS u(k, score) WHERE s.{key} = u.k AND u.score IS NOT NULL",
    }[step]


def _write_entity(plpy: Any, cache: dict, scorer: scorers.Scorer, counter: scorers.Events | None, keys: list,
                  deltas: list, scores: list, model_id: int | None) -> None:
    """Counters and score columns of entity rows :func:`apply` locked, by the
    owner's write hook (a None score keeps the old one); the hook names the
    counter by its column name."""
    counter_name = None if counter is None else counter.counter_name
    key_array = f"{scorer.key_type}[]"
    plans.run(plpy, cache, f"SELECT {scorer.write_hook}($1::{key_array}, $2::int[], $3::float8[], $4::bigint, $5::text)",
              [key_array, "int[]", "float8[]", "bigint", "text"], [keys, deltas, scores, model_id, counter_name])
