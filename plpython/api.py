"""The SQL entry points: each scoring.* PL/Python function body calls one of these.

Every function takes ``plpy`` and the backend's cache dict (``GD``).
ScoringError becomes a PostgreSQL error with its SQLSTATE and hint; any
other Python exception from a model is reported in one line, never as a
traceback in the message. PL/Python still puts a traceback in CONTEXT and
the exception's class before the message: the functions users call are
PL/pgSQL around these and raise such errors again without either
(scoring._raise_python_error in sql/idempotent/030-score.sql).
"""

from __future__ import annotations

import functools

from . import catalog, features, floatbits, paths, plans, registry, runtime, settings
from .errors import INVALID_PARAMETER_VALUE, MODEL_FAILED, NO_DATA_FOUND, ScoringError

# The modules of one kind of call (batch, freshness, scorers, sqlpath,
# trigger) are imported by the entry points that use them: a backend that
# scores one customer then reads and keeps half the runtime's code (P6 in
# docs/performance.md). The runtime's loader reads a module when it is
# first imported.

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Callable, Sequence, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MODEL = "churn"

# runtime_info's schema revision, as alembic recorded it.
MIGRATED_SQL = "SELECT to_regclass('public.alembic_version') IS NOT NULL AS migrated"
REVISION_SQL = "SELECT string_agg(version_num, ',') AS v FROM public.alembic_version"


def sql_errors(func: F) -> F:
    """Report ScoringError through plpy.error with its SQLSTATE, hint and detail."""

    @functools.wraps(func)
    def wrapper(plpy: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(plpy, *args, **kwargs)
        except ScoringError as exc:
            failure = exc
        # PL/Python would print a None detail or hint as the word "None".
        extra = {key: value for key, value in (("detail", failure.detail), ("hint", failure.hint)) if value}
        plpy.error(failure.message, sqlstate=failure.sqlstate, **extra)

    return wrapper  # type: ignore[return-value]


@sql_errors
def score_customer(plpy: Any, cache: dict, customer_id: int) -> float:
    model = registry.active_model(plpy, cache, DEFAULT_MODEL)
    # A scalar parameter, not ANY($1): a plan over an array is planned at every call.
    sql = f"SELECT {model.select_list} FROM public.customer_profiles p WHERE p.customer_id = $1"
    rows = plans.run(plpy, cache, sql, ["bigint"], [customer_id])
    if not rows.nrows():
        raise unknown_customers([customer_id])
    return model.predict([rows[0]])[0]


@sql_errors
def score_features(plpy: Any, cache: dict, model_name: str, document: str | None) -> float:
    model = registry.active_model(plpy, cache, model_name)
    if document is None:
        raise ScoringError(
            "features is NULL", sqlstate=INVALID_PARAMETER_VALUE, hint=f"{model.label} needs: {', '.join(model.feature_names)}"
        )
    import json  # here: a backend that only scores profiles never needs it (re and enum, ~1 MiB)

    parsed = json.loads(document) if isinstance(document, str) else document
    columns = catalog.profile_columns(plpy, cache)
    row = features.from_document(parsed, model.feature_names, columns, model.label)
    return model.predict([row])[0]


@sql_errors
def score_bits_in_order(plpy: Any, cache: dict, customer_ids: list[int] | None, model_name: str) -> list[int]:
    """scoring.score_many on the Python paths: one score per id, in input
    order, as float8 bits (SQL decodes them and pairs them with the ids)."""
    settings.check_batch_ids(plpy, cache, len(customer_ids or ()))
    model = registry.active_model(plpy, cache, model_name)
    return floatbits.as_bits(_score_ids(plpy, cache, model, customer_ids))


@sql_errors
def score_with_model(plpy: Any, cache: dict, model_id: int, customer_ids: list[int] | None) -> list[tuple[int, float]]:
    model = registry.load(plpy, cache, model_id)
    return list(zip(customer_ids or [], _score_ids(plpy, cache, model, customer_ids)))


# Where a chunk of ids is read from (distinct, sorted). A chunk of
# consecutive ids is a range of the primary key: reading 1M profiles in
# chunks took ~2 s less that way than one index descent per id (= ANY).
IDS_IN_RANGE = "public.customer_profiles p WHERE p.customer_id BETWEEN $1 AND $2"
IDS_LISTED = "public.customer_profiles p WHERE p.customer_id = ANY($1)"


def _score_ids(plpy: Any, cache: dict, model: registry.LoadedModel, customer_ids: list[int] | None) -> list[float]:
    """The score of each id in input order, one model call per chunk of
    distinct ids, each feature read as one array."""
    if not customer_ids:
        return []
    if any(customer_id is None for customer_id in customer_ids):
        raise ScoringError(
            "customer_ids contains NULL", sqlstate=INVALID_PARAMETER_VALUE, hint="remove NULLs, e.g. array_remove(ids, NULL)"
        )
    distinct = sorted(set(customer_ids))
    threads = settings.batch_threads(plpy, cache, len(distinct))
    scores: dict[int, float] = {}
    for start in range(0, len(distinct), settings.CHUNK_ROWS):
        chunk = distinct[start : start + settings.CHUNK_ROWS]
        if chunk[-1] - chunk[0] + 1 == len(chunk):  # every id of a range: walk it
            ids, columns, _ = model.read_columns(plpy, cache, IDS_IN_RANGE, ["bigint", "bigint"], [chunk[0], chunk[-1]])
        else:
            ids, columns, _ = model.read_columns(plpy, cache, IDS_LISTED, ["bigint[]"], [chunk])
        if len(ids) < len(chunk):
            present = set(ids)
            raise unknown_customers([customer_id for customer_id in chunk if customer_id not in present])
        scores.update(zip(ids, model.predict_columns(columns, threads)))
    return list(map(scores.__getitem__, customer_ids))


def unknown_customers(customer_ids: Sequence[int]) -> ScoringError:
    shown = ", ".join(str(customer_id) for customer_id in customer_ids[:10])
    more = f" and {len(customer_ids) - 10} more" if len(customer_ids) > 10 else ""
    noun = "customer_id" if len(customer_ids) == 1 else "customer_ids"
    return ScoringError(
        f"no customer profile with {noun} {shown}{more}",
        sqlstate=NO_DATA_FOUND,
        hint="check the id against public.customer_profiles",
    )


@sql_errors
def on_complaints_inserted(plpy: Any, cache: dict, new_ids: list[int]) -> None:
    from . import trigger

    trigger.on_complaints_inserted(plpy, cache, DEFAULT_MODEL, new_ids)


@sql_errors
def score_profile(plpy: Any, cache: dict, model_id: int, customer_id: int, layout: str,
                  floats: list | None, ints: list | None, flags: list | None, texts: list | None) -> float | None:
    from . import trigger

    return trigger.score_profile(plpy, cache, model_id, customer_id, layout, (floats, ints, flags, texts))


@sql_errors
def score_rejected(plpy: Any, cache: dict, model_id: int, customer_id: int, message: str | None,
                   mode: str | None) -> None:
    from . import trigger

    return trigger.score_rejected(plpy, cache, model_id, customer_id, message, mode)


@sql_errors
def install_scoring_functions(plpy: Any, cache: dict) -> str:
    return paths.install(plpy, cache)


@sql_errors
def sql_expression(plpy: Any, cache: dict, model_id: int) -> str:
    from . import sqlpath

    return sqlpath.expression_for(plpy, cache, model_id)


def rescore(plpy: Any, cache: dict, model_name: str, batch_size: int) -> list[str | None] | None:
    """scoring._rescore_plpython: rescores, and returns a failure as
    [sqlstate, message, detail, hint] rather than raising it: the procedure
    that calls it commits, so it cannot catch an error to report it without
    PL/Python's traceback. None when every batch was rescored."""
    from . import batch, scorers

    spi_error = getattr(plpy, "SPIError", ())  # an error of SQL run by the Python (a model the SQL path rejects)
    try:
        if model_name != scorers.REFERENCE and _is_scorer(plpy, cache, model_name):
            _rescore_scorer(plpy, model_name, batch_size)
        else:
            batch.rescore(plpy, cache, model_name, batch_size)
    except ScoringError as exc:
        return [exc.sqlstate, exc.message, exc.detail, exc.hint]
    except spi_error as exc:
        return [getattr(exc, "sqlstate", None) or MODEL_FAILED, str(exc.args[0] if exc.args else exc),
                getattr(exc, "detail", None), getattr(exc, "hint", None)]
    return None


# A scorer's batches run as scoring_owner (the caller may not write its
# entity) in a SECURITY DEFINER function; the procedure commits between them.
# These run before anything pinned search_path (the procedure runs as its
# caller, on the caller's path): no name in them resolves through it.
RESCORE_BATCH_SQL = "SELECT scoring._rescore_batch($1, $2, $3) AS last"
RESCORE_BATCH_TYPES = ["pg_catalog.text", "pg_catalog.text", "pg_catalog.int4"]
SCORER_ROWS_SQL = "SELECT scoring._scorer_rows($1) AS n"
IS_SCORER_SQL = "SELECT EXISTS (SELECT FROM scoring.scorers WHERE scorer OPERATOR(pg_catalog.=) $1) AS found"


def _is_scorer(plpy: Any, cache: dict, name: str | None) -> bool:
    return bool(plans.run(plpy, cache, IS_SCORER_SQL, ["pg_catalog.text"], [name])[0]["found"])


def _rescore_scorer(plpy: Any, scorer: str, batch_size: int) -> None:
    """scoring.rescore of an attached scorer: batches in key order, each
    committed; NOTICEs 'pgscore rescore: DONE/TOTAL rows' as batch.rescore's."""
    from . import batch

    plan = plpy.prepare(RESCORE_BATCH_SQL, RESCORE_BATCH_TYPES)
    total = plpy.execute(plpy.prepare(SCORER_ROWS_SQL, ["pg_catalog.text"]), [scorer])[0]["n"]
    done, last = 0, None
    while True:
        last = plpy.execute(plan, [scorer, last, batch_size])[0]["last"]
        if last is None:
            break
        done = min(done + batch_size, max(total, done + 1))
        plpy.notice(f"pgscore rescore: {done}/{max(total, done)} rows")
        batch._commit(plpy)


@sql_errors
def rescore_batch(plpy: Any, cache: dict, scorer: str, after: str | None, batch_size: int) -> str | None:
    from . import freshness, scorers

    return freshness.rescore_batch(plpy, cache, scorers.get(plpy, cache, scorer), after, batch_size)


@sql_errors
def recount(plpy: Any, cache: dict, scorer: str, events: int) -> int:
    from . import freshness, scorers

    found = scorers.get(plpy, cache, scorer)
    return freshness.recount(plpy, cache, found, found.events_of(int(events)))


@sql_errors
def scorer_rows(plpy: Any, cache: dict, scorer: str) -> int:
    from . import freshness, scorers

    return freshness.count(plpy, cache, scorers.get(plpy, cache, scorer))


@sql_errors
def scorer_trigger(plpy: Any, cache: dict, td: dict) -> str | None:
    """scoring._scorer_trigger(): every trigger of every scorer (pgscore_server.freshness)."""
    from . import freshness

    return freshness.on_trigger(plpy, cache, td)


@sql_errors
def score_key(plpy: Any, cache: dict, scorer: str, key: str | None) -> float:
    from . import freshness, scorers

    return freshness.score_keys(plpy, cache, scorers.get(plpy, cache, scorer), [key])[0]


@sql_errors
def score_keys(plpy: Any, cache: dict, scorer: str, keys: list[str] | None) -> list[tuple[str, float]]:
    from . import freshness, scorers

    keys = list(keys or [])
    settings.check_batch_ids(plpy, cache, len(keys))
    return list(zip(keys, freshness.score_keys(plpy, cache, scorers.get(plpy, cache, scorer), keys)))


@sql_errors
def score_keys_with_model(plpy: Any, cache: dict, model_id: int, scorer: str, keys: list[str] | None
                          ) -> list[tuple[str, float]]:
    """scoring.score_keys_with_model: push's parity check on a scorer's rows, with a model not yet active."""
    from . import freshness, scorers

    keys = list(keys or [])
    found = scorers.get(plpy, cache, scorer)
    return list(zip(keys, freshness.score_keys(plpy, cache, found, keys, model_id=model_id)))


@sql_errors
def warmup(plpy: Any, cache: dict, model_name: str) -> None:
    model = registry.active_model(plpy, cache, model_name)
    if model.scoring_path in paths.COMPILED_PATHS:
        model.estimator.warm()  # the trigger's single-row code, compiled before the first insert


@sql_errors
def require_loadable(plpy: Any, cache: dict, model_id: int, path: str | None) -> None:
    """scoring._require_loadable: refuses a pickle no superuser approved (approvals.check_model)."""
    from . import approvals

    approvals.check_model(plpy, cache, model_id, path)


def unknown_model_hint(plpy: Any, cache: dict, model_name: str | None) -> str:
    """scoring._unknown_model_hint: the HINT of activate's and rollback's error
    for a model name never pushed (their message says that much in SQL)."""
    return registry.unknown_model_hint(model_name, registry.pushed_names(plpy, cache))


@sql_errors
def runtime_info(plpy: Any, cache: dict) -> str:
    import json  # here, as in score_features: scoring profiles never needs it

    info: dict[str, Any] = dict(runtime.versions())
    info["schema_revision"] = None
    if plpy.execute(MIGRATED_SQL)[0]["migrated"]:
        revision = plpy.execute(REVISION_SQL)
        info["schema_revision"] = revision[0]["v"]
    info["code_sha"] = cache.get("pgscore_server.code_sha")
    # 'bytecode', or 'source' once a module this backend imported was compiled from source
    info["code_from"] = cache.get("pgscore_server.code_from")
    info["modules"] = runtime.top_level_modules()
    return json.dumps(info)
