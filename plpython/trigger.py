"""The complaint trigger: counters and fresh scores, once per statement.

Per INSERT or COPY into complaints (statement-level, transition table
``new_complaints``): lock the affected profiles in customer_id order (so
concurrent multi-row inserts cannot deadlock), score them all with one
model call, then write counters and scores with one UPDATE.

A scoring failure never loses the complaint: with scoring.on_error = 'keep'
the counter still grows, the old score stays, and the failure goes to
scoring.errors and a WARNING; with 'raise' the insert fails.
"""

from __future__ import annotations

from typing import Any

from . import plans, registry, settings
from .errors import ScoringError, as_scoring_error

NEW_COUNTS_SQL = (
    "SELECT coalesce(array_agg(customer_id ORDER BY customer_id), '{}') AS ids,"
    " coalesce(array_agg(n ORDER BY customer_id), '{}') AS counts"
    " FROM (SELECT customer_id, count(*)::int AS n FROM new_complaints GROUP BY customer_id) c"
)
LOCK_SQL = (
    "SELECT p.customer_id FROM public.customer_profiles p"
    " WHERE p.customer_id = ANY($1) ORDER BY p.customer_id FOR NO KEY UPDATE"
)
UPDATE_SQL = (
    "UPDATE public.customer_profiles p"
    " SET complaint_count = p.complaint_count + u.n,"
    "     churn_score = coalesce(u.score, p.churn_score),"
    "     churn_model_id = CASE WHEN u.score IS NULL THEN p.churn_model_id ELSE $4 END,"
    "     churn_scored_at = CASE WHEN u.score IS NULL THEN p.churn_scored_at ELSE now() END"
    " FROM unnest($1::bigint[], $2::int[], $3::float8[]) AS u(customer_id, n, score)"
    " WHERE p.customer_id = u.customer_id"
)
RECORD_ERRORS_SQL = (
    "INSERT INTO scoring.errors (model_id, customer_id, sqlstate, message)"
    " SELECT $1, e.customer_id, e.sqlstate, e.message"
    " FROM unnest($2::bigint[], $3::text[], $4::text[]) AS e(customer_id, sqlstate, message)"
)


def on_complaints_inserted(plpy: Any, cache: dict, model_name: str) -> None:
    policy = settings.on_error(plpy, cache)
    new = plpy.execute(NEW_COUNTS_SQL)[0]
    ids, counts = list(new["ids"]), list(new["counts"])
    if not ids:
        return
    failures: dict[int, ScoringError] = {}
    model = None
    active = None
    try:
        # A subtransaction, so that a failed query while loading (a bad blob,
        # say) does not abort the inserting transaction under 'keep'.
        with plpy.subtransaction():
            active = registry.active_model_id(plpy, cache, model_name)
            if active is not None:
                model = registry.load(plpy, cache, *active)
    except Exception as exc:
        failure = as_scoring_error(exc, f"loading the active {model_name!r} model failed")
        if policy == "raise":
            raise failure from None
        failures = {customer_id: failure for customer_id in ids}
    scores: list[float | None] = [None] * len(ids)
    if model is None:
        plans.run(plpy, cache, LOCK_SQL, ["bigint[]"], [ids])
    else:
        rows = _lock_and_fetch(plpy, cache, model, ids, counts)
        scores, failures = _score_each(model, ids, rows)
        if failures and policy == "raise":
            raise next(iter(failures.values()))
    plans.run(
        plpy, cache, UPDATE_SQL, ["bigint[]", "int[]", "float8[]", "bigint"],
        [ids, counts, scores, model.model_id if model is not None else None],
    )
    if failures:
        _record(plpy, cache, active[0] if active is not None else None, failures)


def _lock_and_fetch(plpy: Any, cache: dict, model: registry.LoadedModel, ids: list, counts: list) -> dict[int, Any]:
    """Locks the profiles in customer_id order and reads the model's features,
    with complaint_count as it will be after this statement."""
    key = ("trigger", model.model_id)
    sql = model.plan_cache.get(key)
    if sql is None:
        from . import catalog

        columns = catalog.profile_columns(plpy, cache)
        select_list = catalog.select_list(
            plpy, model.feature_names, columns, overrides={"complaint_count": "p.complaint_count + c.n"}
        )
        sql = (
            f"SELECT p.customer_id, {select_list} FROM public.customer_profiles p"
            " JOIN unnest($1::bigint[], $2::int[]) AS c(customer_id, n) USING (customer_id)"
            " ORDER BY p.customer_id FOR NO KEY UPDATE OF p"
        )
        model.plan_cache[key] = sql
    rows = plans.run(plpy, cache, sql, ["bigint[]", "int[]"], [ids, counts])
    return {row["customer_id"]: row for row in rows}


def _score_each(model: registry.LoadedModel, ids: list, rows: dict) -> tuple[list, dict]:
    """Scores for ``ids`` (None where scoring failed) and the failures by customer.

    One model call for all; only if that fails, one call per row, so that
    one bad profile does not cost the others their fresh score.
    """
    present = [customer_id for customer_id in ids if customer_id in rows]
    try:
        by_id = dict(zip(present, model.predict([rows[customer_id] for customer_id in present])))
        return [by_id.get(customer_id) for customer_id in ids], {}
    except ScoringError as exc:
        if len(present) == 1:
            return [None] * len(ids), {present[0]: exc}
    by_id, failures = {}, {}
    for customer_id in present:
        try:
            by_id[customer_id] = model.predict([rows[customer_id]])[0]
        except ScoringError as exc:
            failures[customer_id] = exc
    return [by_id.get(customer_id) for customer_id in ids], failures


def _record(plpy: Any, cache: dict, model_id: int | None, failures: dict[int, ScoringError]) -> None:
    customer_ids = list(failures)
    messages = [failures[customer_id].message for customer_id in customer_ids]
    plans.run(
        plpy, cache, RECORD_ERRORS_SQL, ["bigint", "bigint[]", "text[]", "text[]"],
        [model_id, customer_ids, [failures[c].sqlstate for c in customer_ids], messages],
    )
    first = messages[0]
    more = f" (and {len(customer_ids) - 1} more customers)" if len(customer_ids) > 1 else ""
    plpy.warning(
        f"complaint saved but not scored for customer_id {customer_ids[0]}{more}: {first}",
        hint="see scoring.errors; SET scoring.on_error = 'raise' to make such inserts fail instead",
    )
