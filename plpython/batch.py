"""Rescoring every profile: keyset-paginated batches, one model call and one
UPDATE per batch, each batch committed on its own."""

from __future__ import annotations

from . import floatbits, plans, registry, settings, sqlpath
from .errors import INVALID_PARAMETER_VALUE, INVALID_TRANSACTION_STATE, ScoringError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any


# A batch of the Python paths: its profiles are read without locking them
# (locking wrote every row's header once more, ~2-3 s per 1M profiles) and
# each score is written only where the profile is still the row version it
# was computed from (same xmin; a concurrent complaint or edit made a new
# one, and EvalPlanQual rechecks the condition on it). The UPDATE locks in
# customer_id order, as the complaint trigger does, so the two cannot
# deadlock: its ids come in that order and IN_KEY_ORDER_SQL keeps the scan
# of the profiles in it too; the id range lets the planner read only the
# batch's profiles. The ids it skipped are read again under lock, in a
# transaction of their own, and written as scored.
BATCH_SOURCE = (
    "(SELECT p.*, p.xmin AS pgscore_version FROM public.customer_profiles p WHERE p.customer_id > $1"
    " ORDER BY p.customer_id LIMIT $2) p"
)
VERSIONS = ", array_agg(p.pgscore_version) AS pgscore_versions"
# Both UPDATEs of a Python-path batch write the scores the same way: ids
# $1, scores $2 as float8 bits (pgscore_server.floatbits), model $3, id range
# $4..$5. The arrays are unnested in the select list, where they run in
# lockstep as unnest(a, b) would, without its tuplestore (~15 ms less per
# 50k profiles).
WRITE_SCORES = (
    "UPDATE public.customer_profiles p"
    f" SET churn_score = {floatbits.FROM_BITS.format('u.score_bits')}, churn_model_id = $3, churn_scored_at = now()"
    " FROM (SELECT unnest($1::bigint[]) AS customer_id, unnest($2::bigint[]) AS score_bits{also}) AS u"
    " WHERE p.customer_id = u.customer_id AND p.customer_id BETWEEN $4 AND $5"
)
UPDATE_UNCHANGED_SQL = (WRITE_SCORES.format(also=", unnest($6::xid[]) AS version")
                        + " AND p.xmin = u.version")
# Which of the batch's profiles that UPDATE skipped (asked only when it wrote
# fewer rows than it had scores): those it wrote are now this transaction's.
SKIPPED_SQL = (
    "SELECT array_agg(u.customer_id) AS skipped FROM unnest($1::bigint[]) AS u(customer_id)"
    " WHERE NOT EXISTS (SELECT FROM public.customer_profiles p WHERE p.customer_id = u.customer_id"
    " AND p.xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id()))"
)
LOCKED_SOURCE = (
    "(SELECT * FROM public.customer_profiles WHERE customer_id = ANY($1)"
    " ORDER BY customer_id FOR NO KEY UPDATE) p"
)
UPDATE_SCORES_SQL = WRITE_SCORES.format(also="")

# A batch of the sql path: where it ends (an index-only read, no row
# locks), then one UPDATE over that id range, which computes each score from
# the row version it writes. The UPDATE locks the profiles in customer_id
# order, as the complaint trigger does, so the two cannot deadlock: it walks
# the primary key, because in that transaction the scans that would visit
# rows in table order are off (and index scans on, whatever the server's
# settings). Locking the batch first (FOR NO KEY UPDATE) cost a second
# write of every row's header, ~2-3 s per 1M profiles.
BATCH_END_SQL = (
    "SELECT count(*)::int AS n, max(customer_id) AS last_id FROM (SELECT customer_id FROM public.customer_profiles"
    " WHERE customer_id > $1 ORDER BY customer_id LIMIT $2) b"
)
IN_KEY_ORDER_SQL = (
    "SELECT pg_catalog.set_config('enable_seqscan', 'off', true),"
    " pg_catalog.set_config('enable_bitmapscan', 'off', true),"
    " pg_catalog.set_config('enable_indexscan', 'on', true)"
)
PROFILES_COUNT_SQL = "SELECT count(*) AS n FROM public.customer_profiles"
# What `SET search_path` on the procedure would do, per transaction. And
# no JIT: compiling a large model's SQL with LLVM cost more per batch
# (0.1-0.3 s for the demo GBM) than it saved.
PIN_SETTINGS_SQL = ("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true),"
                    " pg_catalog.set_config('jit', 'off', true)")


def rescore(plpy: Any, cache: dict, model_name: str, batch_size: int) -> None:
    """Rescores all profiles with the active ``model_name``, committing per batch.

    Reports progress as NOTICEs 'pgscore rescore: DONE/TOTAL profiles' (the
    CLI draws its progress bar from them). The active model is looked up per
    batch, so an activation mid-way applies to the remaining batches.
    Raises ScoringError for a bad batch size, no active model, or a model
    that fails; batches committed before the failure stay.
    """
    if batch_size is None or batch_size < 1:
        raise ScoringError(
            f"batch_size must be a positive number of profiles, not {batch_size}",
            sqlstate=INVALID_PARAMETER_VALUE,
            hint="call scoring.rescore('churn', 10000)",
        )
    _pin_settings(plpy)
    total = plpy.execute(PROFILES_COUNT_SQL)[0]["n"]
    done = 0
    last_id = -(2**63)  # below every bigint: keyset pagination starts at the first id
    while True:
        model = registry.active_model(plpy, cache, model_name)
        skipped: list[int] = []
        update = sqlpath.batches_in_sql(plpy, cache, model) if model.scoring_path == "sql" else None
        if update is not None:
            rows, last_id = _rescore_in_sql(plpy, cache, update, last_id, batch_size)
        else:
            rows, last_id, skipped = _rescore_in_python(plpy, cache, model, last_id, batch_size)
        if not rows:
            break
        done += rows
        plpy.notice(f"pgscore rescore: {done}/{max(total, done)} profiles")
        _commit(plpy)
        _pin_settings(plpy)  # SET LOCAL ended with the committed transaction
        if skipped:
            # In a transaction of their own: it locks them, in customer_id
            # order, holding no other profile's lock.
            _rescore_locked(plpy, cache, model, skipped)
            _commit(plpy)
            _pin_settings(plpy)


def _rescore_in_python(plpy: Any, cache: dict, model: registry.LoadedModel, last_id: int,
                       batch_size: int) -> tuple[int, int, list[int]]:
    """One batch through the model in Python: (profiles read, last customer_id,
    ids skipped because they changed since they were read)."""
    ids, columns, row = model.read_columns(plpy, cache, BATCH_SOURCE, ["bigint", "int"], [last_id, batch_size],
                                           also=VERSIONS)
    if not ids:
        return 0, last_id, []
    score_bits = _score_bits(plpy, cache, model, columns)
    first, last = min(ids), max(ids)
    plans.run(plpy, cache, IN_KEY_ORDER_SQL)
    written = plans.run(plpy, cache, UPDATE_UNCHANGED_SQL,
                        ["bigint[]", "bigint[]", "bigint", "bigint", "bigint", "xid[]"],
                        [ids, score_bits, model.model_id, first, last, row["pgscore_versions"]]).nrows()
    if written == len(ids):
        return len(ids), last, []
    skipped = plans.run(plpy, cache, SKIPPED_SQL, ["bigint[]"], [ids])[0]["skipped"]
    return len(ids), last, skipped or []


def _rescore_locked(plpy: Any, cache: dict, model: registry.LoadedModel, customer_ids: list[int]) -> None:
    """Rescores these profiles, locked while read (those deleted meanwhile are gone)."""
    ids, columns, _ = model.read_columns(plpy, cache, LOCKED_SOURCE, ["bigint[]"], [customer_ids])
    if ids:
        plans.run(plpy, cache, UPDATE_SCORES_SQL, ["bigint[]", "bigint[]", "bigint", "bigint", "bigint"],
                  [ids, _score_bits(plpy, cache, model, columns), model.model_id, min(ids), max(ids)])


def _score_bits(plpy: Any, cache: dict, model: registry.LoadedModel, columns: list) -> list[int]:
    scores: list[float] = []
    threads = settings.batch_threads(plpy, cache, len(columns[0]))
    for start in range(0, len(columns[0]), settings.CHUNK_ROWS):
        scores.extend(model.predict_columns([column[start : start + settings.CHUNK_ROWS] for column in columns], threads))
    return floatbits.as_bits(scores)


def _rescore_in_sql(plpy: Any, cache: dict, update: str, last_id: int, batch_size: int) -> tuple[int, int]:
    """One batch of a 'sql' model as one UPDATE (``update``, from
    sqlpath.batches_in_sql), no data through Python: (profiles rescored, last
    customer_id). A profile the model rejects raises, naming the feature, as
    the Python path does."""
    batch = plans.run(plpy, cache, BATCH_END_SQL, ["bigint", "int"], [last_id, batch_size])[0]
    if not batch["n"]:
        return 0, last_id
    plans.run(plpy, cache, IN_KEY_ORDER_SQL)
    plans.run(plpy, cache, update, ["bigint", "bigint"], [last_id, batch["last_id"]])
    return batch["n"], batch["last_id"]


def _pin_settings(plpy: Any) -> None:
    plpy.execute(PIN_SETTINGS_SQL)


def _commit(plpy: Any) -> None:
    try:
        plpy.commit()
    except Exception as exc:
        if "invalid transaction termination" in str(exc):
            raise ScoringError(
                "scoring.rescore() commits once per batch and cannot run inside a transaction block",
                sqlstate=INVALID_TRANSACTION_STATE,
                hint="run CALL scoring.rescore(...) on its own, in autocommit mode",
            ) from None
        raise
