"""The complaint trigger's Python path: counters and fresh scores, once per statement.

Per INSERT or COPY into complaints, the statement-level trigger passes the
customer_id of every new row (transition table ``new_complaints``) here,
unless the active model is scored by generated SQL (pgscore_server.sqlpath).
Usually two prepared statements:

1. count the new rows per customer, lock those profiles in customer_id
   order (so concurrent multi-row inserts cannot deadlock), read the
   features of the model the previous statement used, with complaint_count
   as it will be after this insert, and which model is active now; only
   when that changed, load the active model and read again;
2. after one model call for all of them, write counters and scores with one
   UPDATE.

A scoring failure never loses the complaint: with scoring.on_error = 'keep'
the counter still grows, the old score stays, and the failure goes to
scoring.errors and a WARNING; with 'raise' the insert fails. The setting is
read only when something failed. What this client statement recorded
already is kept in the backend's cache (GD), keyed by transaction and
statement, never in a setting that any role could forge.

:func:`score_profile` is the other entry: the generated PL/pgSQL trigger
(pgscore_server.sqlpath) locks and updates the profile itself and calls it
from inside its UPDATE for one customer's profile, so Python only scores.
"""

from __future__ import annotations

from collections import Counter

from . import catalog, paths, plans, registry, settings
from .errors import ScoringError, as_scoring_error
from .scorers import REFERENCE as REFERENCE_SCORER

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

# New rows per customer. One customer (the usual statement) comes as scalar
# parameters: an array's length changes the planner's estimates, so a plan
# over an array parameter is planned again at every call.
ONE_CUSTOMER = ("(SELECT $1::bigint AS customer_id, $2::int AS n)", ["bigint", "int"])
MANY_CUSTOMERS = ("unnest($1::bigint[], $2::int[])", ["bigint[]", "int[]"])
LOCK_ONLY_SQL = (
    "SELECT p.customer_id, c.n AS pgscore_new FROM public.customer_profiles p"
    " JOIN {source} AS c(customer_id, n) USING (customer_id)"
    " ORDER BY p.customer_id FOR NO KEY UPDATE OF p"
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
# The usual statement inserts complaints for one customer: an index lookup,
# where the generic plan of the unnest() join above may scan the table.
UPDATE_ONE_SQL = (
    "UPDATE public.customer_profiles p"
    " SET complaint_count = p.complaint_count + $2,"
    "     churn_score = coalesce($3, p.churn_score),"
    "     churn_model_id = CASE WHEN $3::float8 IS NULL THEN p.churn_model_id ELSE $4 END,"
    "     churn_scored_at = CASE WHEN $3::float8 IS NULL THEN p.churn_scored_at ELSE now() END"
    " WHERE p.customer_id = $1"
)
RECORD_ERRORS_SQL = (
    "INSERT INTO scoring.errors (model_id, customer_id, sqlstate, message, scorer, entity_key)"
    " SELECT $1, e.customer_id, e.sqlstate, e.message, $5, e.entity_key"
    " FROM unnest($2::bigint[], $3::text[], $4::text[], $6::text[]) AS e(customer_id, sqlstate, message, entity_key)"
    " RETURNING entity_key, error_id"
)
# The client statement this backend is running: transaction and statement start.
STATEMENT_SQL = (
    "SELECT pg_catalog.pg_current_xact_id()::text || ' ' || pg_catalog.statement_timestamp()::text AS statement"
)
STILL_RECORDED_SQL = "SELECT coalesce(array_agg(error_id), '{}') AS kept FROM scoring.errors WHERE error_id = ANY($1)"
MODEL_LABEL_SQL = (
    "SELECT pg_catalog.format('model %L v%s (model_id %s)', m.name, m.version, m.model_id) AS label"
    " FROM scoring.models m WHERE m.model_id = $1"
)


def on_complaints_inserted(plpy: Any, cache: dict, model_name: str, new_ids: list[int]) -> None:
    per_customer = Counter(new_ids)
    if not per_customer:
        return
    (source, types), args = (
        (ONE_CUSTOMER, list(per_customer.items())[0]) if len(per_customer) == 1
        else (MANY_CUSTOMERS, [list(per_customer), list(per_customer.values())]))
    guesses = cache.setdefault("pgscore.trigger_models", {})
    model = guesses.get(model_name)
    rows = None
    if model is not None:
        # The model the last statement used, checked against the active one
        # inside the same query that locks and reads the profiles.
        rows = plans.run(plpy, cache, _fetch_sql(plpy, cache, model, model_name, source), types, args)
        if rows.nrows() and rows[0]["pgscore_active"] != _active_key(model):
            model, rows = None, None
    load_failure = None
    active = None
    if rows is None:
        active = registry.active_model_id(plpy, cache, model_name)
        if active is not None:
            model = registry.cached(cache, *active)
            if model is None:
                try:
                    # A subtransaction, so that a failed query while loading does
                    # not abort the inserting transaction under 'keep'.
                    with plpy.subtransaction():
                        model = registry.load(plpy, cache, *active)
                except Exception as exc:
                    load_failure = as_scoring_error(exc, f"loading the active {model_name!r} model failed")
                    if settings.on_error(plpy, cache) == "raise":
                        raise load_failure from None
        guesses[model_name] = model
        sql = LOCK_ONLY_SQL.format(source=source) if model is None else _fetch_sql(plpy, cache, model, model_name,
                                                                                      source)
        rows = plans.run(plpy, cache, sql, types, args)
    if rows.nrows() == 0:
        return
    ids = [row["customer_id"] for row in rows]
    counts = [row["pgscore_new"] for row in rows]
    scores: list[float | None] = [None] * len(ids)
    failures: dict[int, ScoringError] = {}
    if model is not None:
        scores, failures = _score_each(model, ids, rows)
        if failures and settings.on_error(plpy, cache) == "raise":
            raise next(iter(failures.values()))
    elif load_failure is not None:
        failures = {customer_id: load_failure for customer_id in ids}
    model_id = model.model_id if model is not None else None
    if len(ids) == 1:
        plans.run(plpy, cache, UPDATE_ONE_SQL, ["bigint", "int", "float8", "bigint"],
                  [ids[0], counts[0], scores[0], model_id])
    else:
        plans.run(plpy, cache, UPDATE_SQL, ["bigint[]", "int[]", "float8[]", "bigint"], [ids, counts, scores, model_id])
    if failures:
        _record(plpy, cache, model_id if model is not None else (active[0] if active else None), failures)


def _active_key(model: registry.LoadedModel) -> str:
    return f"{model.model_id}:{model.sha256}:{model.scoring_path}"


def _fetch_sql(plpy: Any, cache: dict, model: registry.LoadedModel, model_name: str, source: str) -> str:
    """Locks the new complaints' profiles in customer_id order and reads the
    model's features, complaint_count counting the new rows, and which model
    is active now (as model_id:sha256:scoring_path)."""
    sql = model.plan_cache.get(("trigger", model_name, source))
    if sql is None:
        columns = catalog.profile_columns(plpy, cache)
        select_list = catalog.select_list(
            plpy, model.feature_names, columns, overrides={"complaint_count": "p.complaint_count + c.n"}
        )
        active = "(" + registry.ACTIVE_MODEL_SQL.format(
            columns="d.model_id || ':' || m.sha256 || ':' || m.scoring_path", name=plpy.quote_literal(model_name)) + ")"
        sql = (
            f"SELECT p.customer_id, c.n AS pgscore_new, {active} AS pgscore_active, {select_list}"
            f" FROM public.customer_profiles p JOIN {source} AS c(customer_id, n) USING (customer_id)"
            " ORDER BY p.customer_id FOR NO KEY UPDATE OF p"
        )
        model.plan_cache[("trigger", model_name, source)] = sql
    return sql


def _score_each(model: registry.LoadedModel, ids: list, rows: Any) -> tuple[list, dict]:
    """Scores in ``ids`` order (None where scoring failed) and the failures by customer.

    One model call for all; only if that fails, one call per row, so that
    one bad profile does not cost the others their fresh score.
    """
    try:
        return model.predict(rows), {}
    except ScoringError as exc:
        if len(ids) == 1:
            return [None], {ids[0]: exc}
    scores, failures = [], {}
    for customer_id, row in zip(ids, rows):
        try:
            scores.append(model.predict([row])[0])
        except ScoringError as exc:
            scores.append(None)
            failures[customer_id] = exc
    return scores, failures


def _record(plpy: Any, cache: dict, model_id: int | None, failures: dict[Any, ScoringError],
            scorer: str = REFERENCE_SCORER) -> None:
    """Records scoring failures by entity key (of any key type) in scoring.errors, once per client statement."""
    originals = {str(key): key for key in failures}
    failures, recorded = _not_yet_recorded(plpy, cache, model_id, {(scorer, str(k)): e for k, e in failures.items()})
    if not failures:
        return
    keys = [key for _, key in failures]
    messages = [failure.message for failure in failures.values()]
    # customer_id: the key, where it is a whole number (bigint and integer keys).
    integer_keys = [originals[key] if isinstance(originals[key], int) else None for key in keys]
    rows = plans.run(
        plpy, cache, RECORD_ERRORS_SQL, ["bigint", "bigint[]", "text[]", "text[]", "text", "text[]"],
        [model_id, integer_keys, [failure.sqlstate for failure in failures.values()], messages, scorer, keys],
    )
    recorded.update({(model_id, scorer, row["entity_key"]): row["error_id"] for row in rows})
    first = messages[0]
    if scorer == REFERENCE_SCORER:
        more = f" (and {len(keys) - 1} more customers)" if len(keys) > 1 else ""
        message = f"complaint saved but not scored for customer_id {keys[0]}{more}: {first}"
    else:
        more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
        message = f"scorer {scorer!r}: the change is saved but key {keys[0]}{more} was not scored: {first}"
    plpy.warning(message, hint="see scoring.errors; SET scoring.on_error = 'raise' to make such statements fail instead")


def _not_yet_recorded(plpy: Any, cache: dict, model_id: int | None, failures: dict[tuple[str, str], ScoringError]
                      ) -> tuple[dict[tuple[str, str], ScoringError], dict[tuple[int | None, str, str], int]]:
    """``failures`` less those this client statement already recorded, and its record.

    When a concurrent insert for the same customer committed first,
    PostgreSQL evaluates the generated trigger's UPDATE again on the newer
    row version (EvalPlanQual), and the same failure comes here twice. It is
    recorded once, unless its row was rolled back since (a savepoint).
    Only failures pay for this: two small queries.
    """
    statement = plans.run(plpy, cache, STATEMENT_SQL)[0]["statement"]
    known = cache.get("pgscore.recorded")
    if known is None or known[0] != statement:
        known = cache["pgscore.recorded"] = (statement, {})
    recorded = known[1]
    earlier = {c: recorded[(model_id, *c)] for c in failures if (model_id, *c) in recorded}
    if earlier:
        kept = set(plans.run(plpy, cache, STILL_RECORDED_SQL, ["bigint[]"], [list(earlier.values())])[0]["kept"])
        failures = {c: e for c, e in failures.items() if earlier.get(c) not in kept}
    return failures, recorded


def score_rejected(plpy: Any, cache: dict, model_id: int, customer_id: int, message: str | None,
                   mode: str | None) -> None:
    """A profile the generated SQL of the 'sql' path rejects (``message``
    names the feature and the value): raises under 'raise' (``mode``, else
    scoring.on_error), else records it as this path records its own failures
    (once per client statement) and returns None, so the old score stays.
    """
    message = message or ""
    rows = plans.run(plpy, cache, MODEL_LABEL_SQL, ["bigint"], [model_id])
    label = rows[0]["label"] if rows.nrows() else f"model_id {model_id}"
    prefix = "pgscore: "
    reason = message[len(prefix):] if message.startswith(prefix) else message
    failure = ScoringError(f"{label} failed to score: {reason}")
    if settings.on_error(plpy, cache, mode) == "raise":
        raise failure
    _record(plpy, cache, model_id, {customer_id: failure})
    return None


def score_profile(plpy: Any, cache: dict, model_id: int, customer_id: int, layout: str,
                  arrays: tuple[list | None, ...]) -> float | None:
    """P(churn) of one profile, its features passed as arrays by kind, each
    in feature order; ``layout`` says per feature which array holds it.

    A failure follows scoring.on_error: 'keep' records it and returns None
    (the trigger then keeps the old score), 'raise' raises.
    """
    try:
        model = _profile_model(plpy, cache, model_id)
        slots = _slots(cache, layout)
        if len(slots) != len(model.feature_names):
            raise ScoringError(
                f"{model.label} has {len(model.feature_names)} features, the complaint trigger passed {len(slots)}",
                hint="rewrite the trigger: SELECT scoring._install_scoring_functions()",
            )
        return model.predict_one([arrays[k][i] for k, i in slots])
    except ScoringError as exc:
        if settings.on_error(plpy, cache) == "raise":
            raise
        _record(plpy, cache, model_id, {customer_id: exc})
        return None


def _profile_model(plpy: Any, cache: dict, model_id: int) -> registry.LoadedModel:
    # What a model_id scores never changes: once loaded here, no query at all.
    # Only this function's callers (compiled or long-sql models) use the
    # compiled form; a copy this backend loaded for the scikit-learn path
    # before the path changed would score ~500x slower: load it again.
    model = registry.cached(cache, model_id)
    if model is not None and model.scoring_path in paths.COMPILED_PATHS:
        return model
    registry.forget(cache, model_id)
    try:
        # A subtransaction, so that a failed query while loading does not
        # abort the inserting transaction under 'keep'.
        with plpy.subtransaction():
            return registry.load(plpy, cache, model_id)
    except Exception as exc:
        raise as_scoring_error(exc, f"loading model_id {model_id} failed") from None


def _slots(cache: dict, layout: str) -> list[tuple[int, int]]:
    """(array, position) per feature for a layout such as 'tifb' (catalog.ROW_ARRAYS)."""
    known = cache.setdefault("pgscore.row_layouts", {})
    slots = known.get(layout)
    if slots is None:
        letters = [letter for letter, _ in catalog.ROW_ARRAYS]
        seen = [0] * len(letters)
        slots = []
        for letter in layout:
            k = letters.index(letter)
            slots.append((k, seen[k]))
            seen[k] += 1
        known[layout] = slots
    return slots

