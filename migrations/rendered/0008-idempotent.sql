-- sql/idempotent/010-runtime.sql
-- scoring._load_runtime(): imports the in-database Python that the
-- migration stored in scoring.runtime_modules into this backend, replacing
-- an older copy. Every PL/Python function calls it once per backend (and
-- again after a migration changed the code, which changes CODE_SHA).
-- The modules come as the code objects the migration compiled with the
-- server's Python (about 1 ms and 0.7 MiB for all of them, where compiling
-- the sources costs a new backend ~30 ms and ~4 MiB); from source when that
-- code is missing or stamped for another interpreter or another code sha.
CREATE OR REPLACE FUNCTION scoring._load_runtime()
RETURNS void
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
import importlib.machinery
import marshal
import sys
# What importlib.util.MAGIC_NUMBER is, without importing importlib.util.
from importlib._bootstrap_external import MAGIC_NUMBER

stamp = MAGIC_NUMBER + b"66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1"
stored = plpy.execute("SELECT module, bytecode FROM scoring.runtime_modules")
if all(row["bytecode"] is not None and row["bytecode"].startswith(stamp) for row in stored):
    code_from = "bytecode"
    modules = {row["module"]: row["bytecode"] for row in stored}
else:
    code_from = "source"
    modules = {row["module"]: row["source"] for row in
               plpy.execute("SELECT module, source FROM scoring.runtime_modules")}
del stored

# A finder and loader by protocol, not by the importlib.abc classes, whose
# import costs a new backend about 15 ms.
class StoredModules:
    """Serves pgscore_server.* from scoring.runtime_modules, never from disk."""
    def find_spec(self, fullname, path=None, target=None):
        if fullname in modules:
            return importlib.machinery.ModuleSpec(
                fullname, self, is_package=fullname == "pgscore_server")
        return None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        name = module.__name__
        if code_from == "bytecode":
            # Only the migrating superuser can write this table, as the sources.
            code = marshal.loads(memoryview(modules[name])[len(stamp):])
        else:
            code = compile(modules[name], "scoring.runtime_modules:" + name, "exec")
        exec(code, module.__dict__)

for name in [m for m in sys.modules if m == "pgscore_server" or m.startswith("pgscore_server.")]:
    del sys.modules[name]
# What the old code left in this backend's cache (loaded models, their
# evaluators, plans) must not meet the new code: an old evaluator does not
# know the new code's types (it took 0007's category codes of text features
# for unknown categories).
for key in [key for key in GD if key.startswith("pgscore.")]:
    del GD[key]
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "StoredModules"]
sys.meta_path.insert(0, StoredModules())
import pgscore_server.api
GD["pgscore_server.code_sha"] = "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1"
GD["pgscore_server.code_from"] = code_from
$python$;
COMMENT ON FUNCTION scoring._load_runtime() IS 'internal: (re)imports pgscore_server from scoring.runtime_modules';

DELETE FROM scoring.runtime_modules;
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server', $pgscore_source$"""pgscore_server: the Python that runs inside PostgreSQL (plpython3u).

Every entry point takes ``plpy`` and the backend's cache dict (PL/Python's
``GD``) as arguments, so the package imports and unit-tests outside the
database. Inside the server, migrations store these sources in
``scoring.runtime_modules`` and ``scoring._load_runtime()`` imports them.

Modules name their annotations' types under ``TYPE_CHECKING = False`` /
``if TYPE_CHECKING:`` (which type checkers read as true) rather than
importing typing: every new backend would pay ~0.6 MiB for it.
"""
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.api', $pgscore_source$"""The SQL entry points: each scoring.* PL/Python function body calls one of these.

Every function takes ``plpy`` and the backend's cache dict (``GD``).
ScoringError becomes a PostgreSQL error with its SQLSTATE and hint; any
other Python exception from a model is reported in one line, never as a
traceback in the message.
"""

from __future__ import annotations

import functools

from . import (
    batch,
    catalog,
    features,
    floatbits,
    plans,
    registry,
    runtime,
    settings,
    sqlpath,
    trigger,
)
from .errors import INVALID_PARAMETER_VALUE, NO_DATA_FOUND, ScoringError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Callable, Sequence, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MODEL = "churn"


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
    for start in range(0, len(distinct), batch.CHUNK):
        chunk = distinct[start : start + batch.CHUNK]
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
    trigger.on_complaints_inserted(plpy, cache, DEFAULT_MODEL, new_ids)


@sql_errors
def score_profile(plpy: Any, cache: dict, model_id: int, customer_id: int, layout: str,
                  floats: list | None, ints: list | None, flags: list | None, texts: list | None) -> float | None:
    return trigger.score_profile(plpy, cache, model_id, customer_id, layout, (floats, ints, flags, texts))


@sql_errors
def install_generated_scoring(plpy: Any, cache: dict, model_id: int) -> str:
    return sqlpath.install(plpy, cache, model_id)


@sql_errors
def sql_expression(plpy: Any, cache: dict, model_id: int) -> str:
    return sqlpath.expression_for(plpy, cache, model_id)


@sql_errors
def rescore(plpy: Any, cache: dict, model_name: str, batch_size: int) -> None:
    batch.rescore(plpy, cache, model_name, batch_size)


@sql_errors
def warmup(plpy: Any, cache: dict, model_name: str) -> None:
    model = registry.active_model(plpy, cache, model_name)
    if model.scoring_path in registry.COMPILED_PATHS:
        model.estimator.warm()  # the trigger's single-row code, compiled before the first insert


@sql_errors
def runtime_info(plpy: Any, cache: dict) -> str:
    import json  # here, as in score_features: scoring profiles never needs it

    info: dict[str, Any] = dict(runtime.versions())
    info["schema_revision"] = None
    if plpy.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL AS migrated")[0]["migrated"]:
        revision = plpy.execute("SELECT string_agg(version_num, ',') AS v FROM public.alembic_version")
        info["schema_revision"] = revision[0]["v"]
    info["code_sha"] = cache.get("pgscore_server.code_sha")
    info["code_from"] = cache.get("pgscore_server.code_from")  # 'bytecode' or 'source'
    return json.dumps(info)
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.batch', $pgscore_source$"""Rescoring every profile: keyset-paginated batches, one model call and one
UPDATE per batch, each batch committed on its own."""

from __future__ import annotations

from . import floatbits, plans, registry, settings, sqlpath
from .errors import INVALID_PARAMETER_VALUE, ScoringError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

# Largest number of rows handed to one model call by the set-based paths.
CHUNK = 50_000

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
    total = plpy.execute("SELECT count(*) AS n FROM public.customer_profiles")[0]["n"]
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
    for start in range(0, len(columns[0]), CHUNK):
        scores.extend(model.predict_columns([column[start : start + CHUNK] for column in columns], threads))
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
    # What `SET search_path` on the procedure would do, per transaction. And
    # no JIT: compiling a large model's SQL with LLVM cost more per batch
    # (0.1-0.3 s for the demo GBM) than it saved.
    plpy.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true),"
                 " pg_catalog.set_config('jit', 'off', true)")


def _commit(plpy: Any) -> None:
    try:
        plpy.commit()
    except Exception as exc:
        if "invalid transaction termination" in str(exc):
            raise ScoringError(
                "scoring.rescore() commits once per batch and cannot run inside a transaction block",
                sqlstate="2D000",
                hint="run CALL scoring.rescore(...) on its own, in autocommit mode",
            ) from None
        raise
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.catalog', $pgscore_source$"""What the server knows about public.customer_profiles: its columns and types.

A model's features are profile columns; these helpers check that and build
the SELECT list that reads them as the plain Python values that
:func:`pgscore_server.features.to_frame` expects (numeric read as float8).
"""

from __future__ import annotations

from . import plans
from .errors import UNDEFINED_OBJECT, ScoringError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Mapping, Sequence

PROFILES = "public.customer_profiles"

# PostgreSQL type -> the kind of JSON value a what-if feature must have.
NUMBER_TYPES = {"smallint", "integer", "bigint", "numeric", "real", "double precision"}
INTEGER_TYPES = {"smallint", "integer", "bigint"}
BOOLEAN_TYPES = {"boolean"}
TEXT_TYPES = {"text", "character varying", "character"}
SUPPORTED_TYPES = NUMBER_TYPES | BOOLEAN_TYPES | TEXT_TYPES


PROFILE_COLUMNS_SQL = (
    "SELECT attname::text AS name, format_type(atttypid, NULL) AS type,"
    " format_type(atttypid, atttypmod) AS declared"
    " FROM pg_catalog.pg_attribute"
    " WHERE attrelid = 'public.customer_profiles'::regclass AND attnum > 0 AND NOT attisdropped"
    " ORDER BY attnum"
)


def profile_columns(plpy: Any, cache: dict) -> dict[str, str]:
    """Column name -> type name of public.customer_profiles (cached per backend)."""
    return _profile_columns(plpy, cache)[0]


def declared_types(plpy: Any, cache: dict) -> dict[str, str]:
    """Column name -> type with its modifier (``numeric(10,2)``), which lets
    generated SQL compare tree splits as decimals."""
    return _profile_columns(plpy, cache)[1]


def _profile_columns(plpy: Any, cache: dict) -> tuple[dict[str, str], dict[str, str]]:
    found = cache.get("pgscore.profile_columns")
    if found is None:
        rows = plans.run(plpy, cache, PROFILE_COLUMNS_SQL)
        found = ({row["name"]: row["type"] for row in rows}, {row["name"]: row["declared"] for row in rows})
        cache["pgscore.profile_columns"] = found
    return found


def check_features(feature_names: Sequence[str], columns: Mapping[str, str], model_label: str) -> None:
    """Raises ScoringError unless every feature is a profile column of a supported type."""
    for name in feature_names:
        column_type = columns.get(name)
        if column_type is None:
            raise ScoringError(
                f"{model_label} uses feature {name!r}, which is not a column of {PROFILES}",
                sqlstate=UNDEFINED_OBJECT,
                hint=f"add the column to {PROFILES} or push a model trained on its columns",
            )
        if column_type not in SUPPORTED_TYPES:
            raise ScoringError(
                f"{model_label} uses feature {name!r} of type {column_type}, which pgscore cannot feed to a model",
                sqlstate=UNDEFINED_OBJECT,
                hint="use numeric, integer, boolean or text columns as features",
            )


# The arrays scoring._score_profile takes a profile's features in, in its
# argument order: (layout letter, element type). Per column type, the letter
# of the array that holds the value as select_list reads it. character(n)
# has none: a cast to text drops its padding.
ROW_ARRAYS = (("f", "float8"), ("i", "bigint"), ("b", "boolean"), ("t", "text"))
ROW_LETTERS = {**{t: "f" for t in NUMBER_TYPES - INTEGER_TYPES}, **{t: "i" for t in INTEGER_TYPES},
               **{t: "b" for t in BOOLEAN_TYPES}, "text": "t", "character varying": "t"}


def row_layout(feature_names: Sequence[str], columns: Mapping[str, str]) -> str | None:
    """One letter per feature (see ROW_LETTERS), or None if a column has no array form."""
    letters = [ROW_LETTERS.get(columns[name]) for name in feature_names]
    return None if None in letters else "".join(letters)  # type: ignore[arg-type]


def select_list(
    quoter: Any,
    feature_names: Sequence[str],
    columns: Mapping[str, str],
    alias: str = "p",
    overrides: Mapping[str, str] | None = None,
    aggregate: str | None = None,
) -> str:
    """``p.a AS a, p.b::float8 AS b, ...``: the features as plain Python values.

    ``quoter`` has ``quote_ident`` (plpy, or the loader's stand-in).
    ``overrides`` replaces a column's expression (the trigger reads
    complaint_count as the count after the new complaints). ``aggregate``
    wraps each expression (``array_agg``: one array per feature, in the
    same row order for all of them).
    """
    items = []
    for name in feature_names:
        ident = quoter.quote_ident(name)
        expr = (overrides or {}).get(name, f"{alias}.{ident}")
        if columns[name] in NUMBER_TYPES - INTEGER_TYPES:
            expr = f"({expr})::float8"
        if aggregate:
            expr = f"{aggregate}({expr})"
        items.append(f"{expr} AS {ident}")
    return ", ".join(items)


# Text features of batch reads arrive as one string per column joined by
# this separator: string_agg and one str.split cost 1M profiles ~0.7 s less
# than array_agg and a list of strings from PL/Python.
JOIN_SEPARATOR = "\x1f"  # ASCII unit separator
JOIN_SEPARATOR_SQL = "E'\\x1f'"
JOINED_TYPES = {"text", "character varying"}  # character(n) would lose its padding


def joined_features(feature_names: Sequence[str], columns: Mapping[str, str]) -> list[int]:
    """Positions of the features a batch read joins into one string."""
    return [k for k, name in enumerate(feature_names) if columns[name] in JOINED_TYPES]


def batch_list(quoter: Any, feature_names: Sequence[str], columns: Mapping[str, str], alias: str = "p",
               coded: Mapping[int, Sequence[str]] | None = None) -> str:
    """:func:`select_list` aggregated for a batch read: ``array_agg`` per
    feature, except the :func:`joined_features`, read as
    ``string_agg(.., JOIN_SEPARATOR)`` plus ``count(..) AS pgscore_count_<k>``
    (string_agg skips NULLs; a count short of the rows tells), and the
    ``coded`` ones (position -> categories; text columns only): one code
    character per row, see :func:`category_codes`."""
    items = []
    for k, name in enumerate(feature_names):
        if coded and k in coded:
            column = f"{alias}.{quoter.quote_ident(name)}"
            items.append(f"string_agg({category_codes(quoter, column, coded[k])}, '') AS {quoter.quote_ident(name)}")
        elif columns[name] in JOINED_TYPES:
            column = f"{alias}.{quoter.quote_ident(name)}"
            items.append(f"string_agg({column}, {JOIN_SEPARATOR_SQL}) AS {quoter.quote_ident(name)},"
                         f" count({column}) AS pgscore_count_{k}")
        else:
            items.append(select_list(quoter, [name], columns, alias, aggregate="array_agg"))
    return ", ".join(items)


def category_codes(quoter: Any, column: str, categories: Sequence[str]) -> str:
    """The code character of a text column's value (pgscore_server.compiled:
    CODE_FIRST + i for categories[i], CODE_NULL, CODE_OTHER), compared byte
    for byte (COLLATE "C") as Python compares strings."""
    from .compiled import CODE_FIRST, CODE_NULL, CODE_OTHER

    whens = " ".join(f"WHEN {quoter.quote_literal(category)} THEN {quoter.quote_literal(chr(CODE_FIRST + i))}"
                     for i, category in enumerate(categories))
    return (f'CASE {column} COLLATE "C" {whens} ELSE CASE WHEN {column} IS NULL'
            f" THEN {quoter.quote_literal(chr(CODE_NULL))} ELSE {quoter.quote_literal(chr(CODE_OTHER))} END END")
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.compiled', $pgscore_source$"""Scoring a compiled scikit-learn pipeline with numpy alone.

This module runs inside PostgreSQL: it imports only numpy and the standard
library, never scikit-learn, pandas or scipy, and numpy only on first use: a
tree model scoring one row at a time (the complaint trigger) runs on the
standard library alone. ``pgscore.compile`` turns a fitted pipeline into
bytes (a ``.npz`` archive: a JSON manifest plus plain numeric arrays, no
pickle); :func:`load` reads them back and the returned :class:`Evaluator`
reproduces ``pipeline.predict_proba(to_frame(rows))[:, 1]``.

"Reproduces" includes the quirks of that reference. ``to_frame`` builds a
pandas DataFrame, and pandas infers each column's dtype from the whole batch:
``None`` becomes NaN in a column of numbers or of strings, but stays ``None``
in a column holding only ``None`` (one row) or mixing booleans with ``None``.
scikit-learn's OneHotEncoder and most_frequent/constant SimpleImputer treat
``None`` and NaN differently, so the evaluator infers the same column kinds
per batch (:func:`_infer_kind`) before it looks categories up.

Trees compare the float32-rounded feature against the float64 threshold (as
scikit-learn's Cython does) and sums are accumulated tree by tree in the
estimator's order, so the results agree with scikit-learn to the last bit or
close to it.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from array import array
from collections.abc import Mapping, Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Iterable

    import numpy as np

FORMAT = "pgscore-compiled"
FORMAT_VERSION = 1

_NAN = float("nan")
_INF = float("inf")
_NONE_TYPE = type(None)
# Rows processed per vectorised tree-traversal chunk: (rows x trees) index
# matrices of ~131k entries (1 MiB) stay in cache between the gathers of one
# level; 1M-entry chunks walked 1.2-1.6x slower (GBM, RF of the demo).
_TREE_CHUNK_CELLS = 1 << 17
# Below this many rows a batch walks in the calling thread alone
# (pgscore_server.settings.batch_threads asks for no threads then).
THREADED_MIN_ROWS = 20_000

# A one-hot encoded text feature may reach a batch as one code character per
# row instead of its strings (pgscore_server.catalog.batch_list writes the
# CASE that codes it): decoding 1M profiles' strings and looking each up
# cost ~0.4 s per feature, the codes ~1 ms. Category i is CODE_FIRST + i.
CODE_NULL = 33  # '!': NULL
CODE_OTHER = 34  # '"': a string that is no category
CODE_FIRST = 35  # '#' .. '~'
MAX_CODED_CATEGORIES = 127 - CODE_FIRST


class _NanKey:
    """The category "missing as NaN", distinct from ``None`` as scikit-learn keeps it.

    NaN cannot be a dict key (it is unequal to itself), so categories and
    imputation values use the one instance :data:`NAN_KEY` for it.
    """

    def __repr__(self) -> str:
        return "nan"


NAN_KEY = _NanKey()


class _Numpy:
    """Stands in for numpy until first used; then the module's ``np`` is numpy
    itself. A backend that never scores a batch never imports it (~12 MiB and
    ~0.1 s per backend)."""

    def __getattr__(self, name: str) -> Any:
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


if not TYPE_CHECKING:
    np = _Numpy()

# The .npy element types pgscore.compile writes, as array typecodes.
_NPY_TYPECODES = {"<f8": "d", "<i4": "i", "<i8": "q", "|u1": "B", "|b1": "B"}


def load(data: bytes) -> "Evaluator":
    """Read bytes written by ``pgscore.compile.CompiledModel.to_bytes``.

    Raises ValueError if the bytes are not a compiled model of a format
    version this module understands, or are inconsistent.
    """
    try:
        arrays = _read_npz(bytes(data))
    except (ValueError, struct.error, zlib.error, UnicodeDecodeError) as exc:  # all "not ours"
        raise ValueError(f"not a compiled pgscore model: {exc}") from exc
    if "manifest" not in arrays:
        raise ValueError("not a compiled pgscore model: no manifest")
    manifest = _json_document(arrays.pop("manifest").tobytes().decode("utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"not a compiled pgscore model: format {manifest.get('format')!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"compiled model format version {manifest.get('format_version')!r} is not supported "
            f"by this server (it reads version {FORMAT_VERSION})"
        )
    try:
        return Evaluator(manifest, arrays)
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"compiled model is malformed: {exc!r}") from exc


class _JsonDefaults:
    """What ``json.JSONDecoder()`` hands its C scanner: json.loads' defaults,
    except that NaN and infinities are refused (pgscore.compile never writes
    them: ``allow_nan=False``)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"the manifest holds {name}, which is not a JSON number")


def _json_document(text: str) -> Any:
    """``json.loads(text)`` without importing json, which imports re and enum:
    ~1 MiB of private memory in every backend that scores one row. It runs
    json's own C scanner (``_json``, what json.loads runs) and, as json.loads
    does, allows whitespace around the one value and nothing else."""
    try:
        import _json
    except ImportError:  # a Python built without the accelerator
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _json.make_scanner(_JsonDefaults())(text, start)
    except StopIteration as stop:
        raise ValueError(f"the manifest is not JSON (no value at character {stop.value})") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError(f"the manifest is not JSON (extra data at character {end})")
    return value


def _read_npz(data: bytes) -> dict[str, array]:
    """The flat arrays of a ``.npz`` archive as ``pgscore.compile`` writes it
    (a zip of ``.npy`` files, stored or deflated), without numpy or zipfile.

    Raises ValueError for anything else: another zip layout, a damaged
    member (CRC), an element type or memory order it does not write.
    """
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65_557))
    if end < 0:
        raise ValueError("not a zip archive")
    count, _size, offset = struct.unpack_from("<HII", data, end + 10)
    arrays: dict[str, array] = {}
    for _ in range(count):
        if data[offset:offset + 4] != b"PK\x01\x02":
            raise ValueError("damaged zip directory")
        method, crc, packed, size, name_len, extra_len, comment_len = struct.unpack_from("<H4xIIIHHH", data, offset + 10)
        (local,) = struct.unpack_from("<I", data, offset + 42)
        name = data[offset + 46:offset + 46 + name_len].decode("utf-8")
        offset += 46 + name_len + extra_len + comment_len
        if data[local:local + 4] != b"PK\x03\x04":
            raise ValueError(f"damaged zip member {name!r}")
        start = local + 30 + sum(struct.unpack_from("<HH", data, local + 26))
        body = data[start:start + packed]
        if method == 8:
            body = zlib.decompress(body, -15)
        elif method != 0:
            raise ValueError(f"zip member {name!r}: compression method {method}")
        if len(body) != size or zlib.crc32(body) != crc:
            raise ValueError(f"zip member {name!r} is damaged")
        if not name.endswith(".npy"):
            raise ValueError(f"zip member {name!r} is not an array")
        arrays[name[:-4]] = _read_npy(body, name)
    return arrays


def _read_npy(body: bytes, name: str) -> array:
    """One ``.npy`` file (format 1.0-3.0) written by ``numpy.lib.format.write_array``, flattened."""
    if body[:6] != b"\x93NUMPY" or body[6] not in (1, 2, 3):
        raise ValueError(f"{name!r} is not an .npy array")
    length_format = "<H" if body[6] == 1 else "<I"
    (header_len,) = struct.unpack_from(length_format, body, 8)
    data_start = 8 + struct.calcsize(length_format) + header_len
    header = body[data_start - header_len:data_start].decode("latin-1")

    def field(key: str, opening: str, closing: str) -> str:
        start = header.find(f"'{key}': {opening}")
        if start < 0:
            raise ValueError(f"{name!r}: no {key} in the .npy header")
        start += len(key) + 4 + len(opening)
        return header[start:header.index(closing, start)]

    typecode = _NPY_TYPECODES.get(field("descr", "'", "'"))
    if typecode is None or "'fortran_order': False" not in header:
        raise ValueError(f"{name!r}: element type or memory order not written by pgscore")
    values = array(typecode)
    values.frombytes(memoryview(body)[data_start:])  # no copy of the data first
    count = 1
    for dim in field("shape", "(", ")").split(","):
        if dim.strip():
            count *= int(dim)
    if len(values) != count:
        raise ValueError(f"{name!r}: data does not match its shape")
    if sys.byteorder != "little" and values.itemsize > 1:
        values.byteswap()
    return values


def _scalar(values: Any) -> float:
    """The one float of a single-element array (array.array or numpy)."""
    items = values.tolist()
    if isinstance(items, list):
        if len(items) != 1:
            raise ValueError("expected a single value")
        items = items[0]
    return float(items)


def _as_array(values: Any, typecode: str) -> array:
    """``values`` as an array.array of ``typecode`` (the archive's own arrays need no copy)."""
    if isinstance(values, array) and values.typecode == typecode:
        return values
    return array(typecode, values.tolist())


def decode_value(tagged: Sequence[Any]) -> Any:
    """A category or fill value from its manifest form (see ``pgscore.compile``).

    Raises ValueError on an unknown tag.
    """
    tag = tagged[0]
    if tag == "none":
        return None
    if tag == "nan":
        return NAN_KEY
    if tag == "str":
        return str(tagged[1])
    if tag == "bool":
        return bool(tagged[1])
    if tag == "int":
        return int(tagged[1])
    if tag == "float":
        return float.fromhex(tagged[1])
    raise ValueError(f"unknown value tag {tag!r} in compiled model")


def _infer_kind(column: Sequence[Any]) -> tuple[str, bool]:
    """The dtype pandas' ``DataFrame.from_records`` gives this column, and whether it has gaps.

    The kind is 'int', 'float', 'bool', 'str' or 'object'. In 'float' and
    'str' columns pandas turns ``None`` into NaN; in 'object' columns it
    stays ``None``. The flag is False when no value is None or a float (so
    no NaN either): such a column needs no canonicalisation.
    """
    types = set(map(type, column))
    has_gaps = _NONE_TYPE in types or float in types
    has_none = _NONE_TYPE in types
    types.discard(_NONE_TYPE)
    if not types:
        return "object", has_gaps
    if bool in types:
        return ("bool" if types == {bool} and not has_none else "object"), has_gaps
    if types <= {int, float}:
        return ("int" if types == {int} and not has_none else "float"), has_gaps
    if types == {str}:
        return "str", has_gaps
    # NaN next to strings is pandas' missing marker, not a number.
    if types == {str, float} and all(v != v for v in column if type(v) is float):
        return "str", has_gaps
    return "object", has_gaps


def _canonical(column: Sequence[Any], none_is_nan: bool) -> list[Any]:
    """The column with NaN (and ``None`` where pandas converts it) as :data:`NAN_KEY`."""
    out = []
    append = out.append
    for v in column:
        if v is None:
            append(NAN_KEY if none_is_nan else None)
        elif v.__class__ is float and v != v:
            append(NAN_KEY)
        else:
            append(v)
    return out


def _to_float(value: Any, feature: str) -> float:
    """One value as scikit-learn's float64 conversion of an object column sees it.

    Raises ValueError naming the feature if the value is not a number.
    """
    cls = value.__class__
    if cls is float:
        return value
    if value is None or value is NAN_KEY:
        return _NAN
    try:
        # numpy's object-to-float cast calls float(): bools, ints and
        # numeric strings pass, as they do through scikit-learn.
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"feature {feature!r}: {value!r} is not a number") from None


def _column_to_float(column: Sequence[Any], feature: str) -> np.ndarray:
    """A float64 array of the column; raises ValueError naming the feature."""
    try:
        return np.array(column, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        for value in column:
            _to_float(value, feature)
        raise ValueError(f"feature {feature!r}: values are not numbers") from None


class CategoryCodes:
    """A text column of a batch as codes (see CODE_FIRST), one byte per row.

    Only :meth:`Evaluator.codes_usable` codes reach the evaluator: the batch
    is read again as strings where a code stands for a string the codes
    cannot name (one that is no category of a model that names it in its
    error).
    """

    __slots__ = ("codes",)

    def __init__(self, codes: np.ndarray):
        self.codes = codes

    @classmethod
    def from_text(cls, text: str | None) -> CategoryCodes:
        return cls(np.frombuffer((text or "").encode("ascii"), dtype=np.uint8))

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, part: slice) -> CategoryCodes:
        return CategoryCodes(self.codes[part])

    def only_null(self) -> bool:
        """NULLs only (or no rows): pandas makes that an object column, where None is no NaN."""
        return not (self.codes != CODE_NULL).any()


def _kind(column: Sequence[Any] | CategoryCodes) -> str:
    """:func:`_infer_kind` of a column; codes are strings, some perhaps NULL."""
    if isinstance(column, CategoryCodes):
        return "object" if column.only_null() else "str"
    return _infer_kind(column)[0]


class _NumericBlock:
    """Input columns that end as one numeric model column each.

    ``fills`` are value-level imputations (most_frequent / constant
    SimpleImputer before any float conversion), then ``ops`` run on float64:
    ``fill`` (NaN -> value), ``sub``, ``div``, per column, in pipeline order.
    """

    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], names: Sequence[str]):
        self.step: str = spec["step"]
        self.inputs: list[int] = [int(i) for i in spec["inputs"]]
        self.outputs: list[int] = [int(o) for o in spec["outputs"]]
        self.names = [names[i] for i in self.inputs]
        self.fills: list[list[Any]] = [[decode_value(v) for v in step] for step in spec["fills"]]
        self.ops: list[tuple[str, list[float]]] = []
        for code, array_name in spec["ops"]:
            if code not in ("fill", "sub", "div"):
                raise ValueError(f"unknown numeric operation {code!r} in compiled model")
            values = [float(v) for v in arrays[array_name].tolist()]
            if len(values) != len(self.inputs):
                raise ValueError(f"array {array_name!r} has the wrong shape")
            self.ops.append((code, values))
        # SimpleImputer and StandardScaler check their input with
        # ensure_all_finite='allow-nan': infinity is refused before any model
        # sees it, even one that accepts infinity itself (HistGradientBoosting).
        self.refuses_inf = bool(self.ops)
        # Per column, as Python floats: the single-row path avoids numpy calls.
        self._columns_one = [
            (
                self.inputs[k],
                self.outputs[k],
                self.names[k],
                tuple(step[k] for step in self.fills),
                tuple((code, values[k]) for code, values in self.ops),
            )
            for k in range(len(self.inputs))
        ]

    def fill_batch(self, columns: Sequence[Sequence[Any]], X: np.ndarray) -> None:
        block = np.empty((len(self.inputs), X.shape[0]), dtype=np.float64)
        for k, i in enumerate(self.inputs):
            column = columns[i]
            if self.fills:
                kind, _ = _infer_kind(column)
                column = _canonical(column, kind in ("float", "str"))
                for step in self.fills:
                    fill = step[k]
                    column = [fill if v is NAN_KEY else v for v in column]
                column = [_NAN if v is NAN_KEY else v for v in column]
            block[k] = _column_to_float(column, self.names[k])
            if self.refuses_inf:
                infinite = np.isinf(block[k])
                if infinite.any():
                    raise self._infinite(self.names[k], float(block[k][infinite.argmax()]))
        for code, values in self.ops:
            column_values = np.asarray(values, dtype=np.float64)[:, None]
            if code == "fill":
                np.copyto(block, column_values, where=np.isnan(block))
            elif code == "sub":
                block -= column_values
            else:
                block /= column_values
        X[:, self.outputs] = block.T

    def fill_one(self, row: Sequence[Any], x: list[float]) -> None:
        for i, out, name, fills, ops in self._columns_one:
            v = row[i]
            if fills:
                # A lone None is an object column for pandas: not missing for
                # a value-level imputer, only NaN is.
                if v.__class__ is float and v != v:
                    v = NAN_KEY
                for fill in fills:
                    if v is NAN_KEY:
                        v = fill
            f = v if v.__class__ is float else _to_float(v, name)
            if self.refuses_inf and (f == _INF or f == -_INF):
                raise self._infinite(name, f)
            for code, c in ops:
                if code == "fill":
                    if f != f:
                        f = c
                elif code == "sub":
                    f = f - c
                else:
                    f = f / c
            x[out] = f

    def _infinite(self, name: str, value: float) -> ValueError:
        return ValueError(
            f"feature {name!r}: value {value} is infinite, which the pipeline's "
            f"SimpleImputer/StandardScaler in step {self.step!r} refuses"
        )


def _kind_one(value: Any) -> str:
    """:func:`_infer_kind` of a one-row column."""
    cls = value.__class__
    if cls is float:
        return "float"
    if cls is int:
        return "int"
    if cls is bool:
        return "bool"
    if cls is str:
        return "str"
    return "object"


# np.can_cast(from, to, casting="same_kind") for the kinds a block can have.
_SAME_KIND = {
    "b": {"b", "i", "u", "f", "O"},
    "i": {"i", "f", "O"},
    "u": {"i", "u", "f", "O"},
    "f": {"f", "O"},
    "O": {"O"},
}


class _ImputerDtypeCheck:
    """Batch dtypes a most_frequent / constant SimpleImputer refuses (see ``pgscore.compile``)."""

    def __init__(self, spec: Mapping[str, Any], names: Sequence[str]):
        self.step: str = spec["step"]
        self.inputs = [int(i) for i in spec["inputs"]]
        self.names = [names[i] for i in self.inputs]
        self.fill_kind: str | None = spec["fill_kind"]

    def check(self, kinds: Sequence[str]) -> None:
        """Raise ValueError if scikit-learn refuses a block whose columns have these kinds."""
        # The block's dtype as scikit-learn's check_array computes it from a DataFrame.
        if any(k in ("str", "object") for k in kinds):
            block = "O"
        elif all(k == "bool" for k in kinds):
            block = "b"
        elif any(k == "float" for k in kinds):
            block = "f"
        else:
            block = "i"
        features = ", ".join(repr(n) for n in self.names)
        if block == "b":
            raise ValueError(
                f"features {features}: SimpleImputer in step {self.step!r} does not accept a batch "
                "where these are all booleans (scikit-learn rejects bool data)"
            )
        if self.fill_kind is not None and block not in _SAME_KIND.get(self.fill_kind, {"O"}):
            raise ValueError(
                f"features {features}: SimpleImputer in step {self.step!r} was fitted on another dtype "
                "than these values have (e.g. a float fill value for integer values)"
            )

    def check_batch(self, columns: Sequence[Sequence[Any]]) -> None:
        self.check([_kind(columns[i]) for i in self.inputs])

    def check_one(self, row: Sequence[Any]) -> None:
        self.check([_kind_one(row[i]) for i in self.inputs])


class _OneHotColumn:
    """One input column through OneHotEncoder (optionally after value-level imputers)."""

    def __init__(self, spec: Mapping[str, Any], names: Sequence[str]):
        self.step: str = spec["step"]
        self.input = int(spec["input"])
        self.name = names[self.input]
        self.fills = [decode_value(v) for v in spec["fills"]]
        categories = [decode_value(v) for v in spec["categories"]]
        outputs = [int(o) for o in spec["outputs"]]
        if len(categories) != len(outputs):
            raise ValueError(f"one-hot column {self.name!r}: categories and outputs differ in length")
        # -1 marks a dropped category: known, but no output column.
        self.table: dict[Any, int] = dict(zip(categories, outputs))
        self.raise_unknown = spec["unknown"] == "error"
        if spec["unknown"] not in ("error", "ignore"):
            raise ValueError(f"unknown handle_unknown {spec['unknown']!r} in compiled model")
        # scikit-learn fails (TypeError deep inside) when an int or float
        # column meets categories of object dtype (e.g. learned from
        # strings); we fail with a clear message. Bool columns do not fail.
        self.reject_numeric = bool(spec["object_categories"]) and not self.fills
        # An unknown value in a bool column makes scikit-learn write the first
        # category into the bool array and look bool(first) up again; it
        # fails ("previously unseen labels") unless that bool is a category.
        self.bool_unknown_fails = not self.fills and bool(categories[0]) not in self.table
        # The categories a batch may send as codes (CategoryCodes), in code order.
        self.strings = [c for c in categories if c.__class__ is str]
        self._code_table: np.ndarray | None = None

    def _unknown(self, value: Any) -> ValueError:
        shown = "NaN" if value is NAN_KEY else repr(value)
        known = ", ".join(repr(c) for c in list(self.table)[:10])
        why = "handle_unknown='error'" if self.raise_unknown else "a bool value it cannot ignore"
        return ValueError(
            f"feature {self.name!r}: unknown category {shown} "
            f"(OneHotEncoder in step {self.step!r}: {why}; known: {known})"
        )

    def _numeric(self, value: Any) -> ValueError:
        return ValueError(
            f"feature {self.name!r}: got a number ({value!r}) where the model expects a category "
            f"(OneHotEncoder in step {self.step!r} learned non-numeric categories)"
        )

    def codes_batch(self, column: Sequence[Any]) -> np.ndarray:
        """Model column per row; -1 for a dropped category, -2 for an ignored unknown value.

        Raises ValueError naming the feature where scikit-learn raises.
        """
        kind, has_gaps = _infer_kind(column)
        if self.reject_numeric and kind in ("int", "float"):
            raise self._numeric(column[0])
        if has_gaps or self.fills:
            column = _canonical(column, kind in ("float", "str"))
            for fill in self.fills:
                column = [fill if v is NAN_KEY else v for v in column]
        get = self.table.get
        try:
            codes = [get(v, -2) for v in column]
        except TypeError:
            raise ValueError(f"feature {self.name!r}: a value is not a valid category (unhashable)") from None
        codes_arr = np.array(codes, dtype=np.intp)
        if self.raise_unknown or (kind == "bool" and self.bool_unknown_fails):
            unknown = np.flatnonzero(codes_arr == -2)
            if unknown.size:
                raise self._unknown(column[int(unknown[0])])
        return codes_arr

    def _null_value(self) -> Any:
        """What a missing value (NaN; NULL in a column of strings, which pandas
        makes NaN) is once the value-level imputers filled it."""
        value: Any = NAN_KEY
        for fill in self.fills:
            if value is NAN_KEY:
                value = fill
        return value

    def code_table(self) -> np.ndarray:
        """Model column per code byte, as :meth:`codes_batch` maps the value
        the code stands for: -3 where that value raises, -4 where the code
        does not say which value it was (or is no code)."""
        if self._code_table is None:
            table = np.full(256, -4, dtype=np.intp)
            for i, category in enumerate(self.strings):
                table[CODE_FIRST + i] = self.table[category]
            null = self.table.get(self._null_value(), -2)
            table[CODE_NULL] = -3 if null == -2 and self.raise_unknown else null
            if not self.raise_unknown:
                table[CODE_OTHER] = -2  # ignored, as any unknown string
            self._code_table = table
        return self._code_table

    def codes_from(self, coded: CategoryCodes) -> np.ndarray:
        """:meth:`codes_batch` of a column sent as codes."""
        if coded.only_null():
            return self.codes_batch([None] * len(coded))
        codes = self.code_table()[coded.codes]
        if codes.size and codes.min() < -2:
            if (codes == -4).any():
                raise ValueError(f"feature {self.name!r}: category codes the evaluator cannot use")
            raise self._unknown(self._null_value())
        return codes

    def code_one(self, value: Any) -> int:
        cls = value.__class__
        if self.reject_numeric and (cls is int or cls is float):
            raise self._numeric(value)
        if cls is float and value != value:
            value = NAN_KEY
        if value is NAN_KEY:
            value = self._null_value()
        try:
            code = self.table.get(value, -2)
        except TypeError:
            raise ValueError(f"feature {self.name!r}: {value!r} is not a valid category (unhashable)") from None
        if code == -2 and (self.raise_unknown or (cls is bool and self.bool_unknown_fails)):
            raise self._unknown(value)
        return code


def _expit(z: float) -> float:
    # scipy.special.expit computes 1 / (1 + exp(-z)); same operations here.
    try:
        return 1.0 / (1.0 + math.exp(-z))
    except OverflowError:
        return 0.0


class _Linear:
    """Linear classifiers whose predict_proba is a link of ``X @ coef.T + intercept``."""

    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], output_names: Sequence[str]):
        self.estimator: str = spec["estimator"]
        self.link: str = spec["link"]
        if self.link not in ("logistic", "modified_huber"):
            raise ValueError(f"unknown link {self.link!r} in compiled model")
        # Same (1, p) layout and transpose as scikit-learn, so BLAS sums in the same order.
        self.coef = np.ascontiguousarray(arrays["coef"], dtype=np.float64).reshape(1, -1)
        self.intercept = np.asarray(arrays["intercept"], dtype=np.float64).reshape(1)
        self.output_names = list(output_names)

    def check(self, X: np.ndarray) -> None:
        if not np.isfinite(X).all():
            bad = np.argwhere(~np.isfinite(X))[0]
            value = X[bad[0], bad[1]]
            what = "missing (None/NaN)" if np.isnan(value) else f"infinite ({value})"
            raise ValueError(
                f"feature {self.output_names[bad[1]]!r}: value is {what} and {self.estimator} does not "
                "accept missing or infinite values (impute it in the pipeline)"
            )

    def predict_batch(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """``threads`` is for the trees' signature: one matrix product needs none."""
        self.check(X)
        z = (X @ self.coef.T + self.intercept).reshape(-1)
        if self.link == "logistic":
            with np.errstate(over="ignore"):
                return 1.0 / (1.0 + np.exp(-z))
        return (np.clip(z, -1.0, 1.0) + 1.0) / 2.0

    def predict_one(self, x: list[float]) -> float:
        X = np.array(x, dtype=np.float64).reshape(1, -1)
        if not math.isfinite(sum(x)):
            self.check(X)
        z = float((X @ self.coef.T + self.intercept)[0, 0])
        if self.link == "logistic":
            return _expit(z)
        return (min(max(z, -1.0), 1.0) + 1.0) / 2.0


class _Trees:
    """Tree ensembles, all trees flattened into one node table.

    ``combine`` says how leaf values become P(class 1):
    - 'boosting' (GradientBoosting): expit(init + sum(learning_rate * leaf));
    - 'hist_boosting' (HistGradientBoosting): expit(baseline + sum(leaf));
    - 'average' (forests, single trees): mean of per-tree P(class 1).
    Many rows: traversal goes level by level over all trees at once (numpy
    fancy indexing). One row: generated Python for small ensembles
    (:class:`_RowCode`), else a Python loop over nodes unless numpy's
    per-level cost is clearly lower (wide, shallow ensembles).
    """

    # One numpy level step costs about as much as this many Python node
    # steps (demo forest, one row: 8 levels 115 us, 750 node steps 127 us).
    # A tie goes to Python, which needs no numpy in the backend.
    _LEVEL_COST = 100

    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, Any], output_names: Sequence[str]):
        self.estimator: str = spec["estimator"]
        self.combine: str = spec["combine"]
        if self.combine not in ("boosting", "hist_boosting", "average"):
            raise ValueError(f"unknown tree combination {self.combine!r} in compiled model")
        self.cast_float32 = bool(spec["cast_float32"])
        self.route_missing = spec["missing"] == "route"
        self.allow_inf = bool(spec["allow_inf"])
        self.max_depth = int(spec["max_depth"])
        self.init = _scalar(arrays["init"])
        self.learning_rate = _scalar(arrays["learning_rate"])
        self.output_names = list(output_names)

        # The node table as compact arrays: the one-row walk reads them, the
        # batch walk's numpy arrays are made from them on first use.
        self.node_feature = _as_array(arrays["tree_feature"], "i")
        self.node_threshold = _as_array(arrays["tree_threshold"], "d")
        self.node_left = _as_array(arrays["tree_left"], "i")
        self.node_right = _as_array(arrays["tree_right"], "i")
        self.node_missing_left = _as_array(arrays["tree_missing_left"], "B")
        self.node_value = _as_array(arrays["tree_value"], "d")
        self.node_roots = _as_array(arrays["tree_roots"], "i")
        n_nodes = len(self.node_feature)
        for name in ("threshold", "left", "right", "missing_left", "value"):
            if len(getattr(self, f"node_{name}")) != n_nodes:
                raise ValueError(f"tree array {name!r} has the wrong shape")
        self.n_trees = len(self.node_roots)
        self._check_nodes(n_nodes, len(output_names))
        self.python_one = self._leaf_depth_total() <= self._LEVEL_COST * self.max_depth
        small = n_nodes <= _RowCode.MAX_NODES and self.max_depth <= _RowCode.MAX_DEPTH
        no_nan = all(t == t for f, t in zip(self.node_feature, self.node_threshold) if f >= 0)
        self.row_code = (_RowCode(self, self.node_feature, self.node_threshold, self.node_left, self.node_right,
                                  self.node_value, self.node_roots)
                         if small and no_nan else None)
        self.children: np.ndarray | None = None  # the batch walk's arrays: _numpy_ready()

    def _check_nodes(self, n_nodes: int, n_outputs: int) -> None:
        """Raise ValueError unless every root and inner node's children are nodes
        and every tested feature is a model column."""
        if n_nodes == 0 or self.n_trees == 0 or not all(0 <= r < n_nodes for r in self.node_roots):
            raise ValueError("tree arrays of the compiled model are inconsistent")
        for f, left, right in zip(self.node_feature, self.node_left, self.node_right):
            if f >= 0 and not (f < n_outputs and 0 <= left < n_nodes and 0 <= right < n_nodes):
                raise ValueError("tree arrays of the compiled model are inconsistent")

    def _leaf_depth_total(self) -> float:
        """Sum over trees of the mean leaf depth: the node steps of one Python walk.

        Raises ValueError if some path is longer than max_depth (the
        vectorised walk would stop short of a leaf).
        """
        feature, left, right = self.node_feature, self.node_left, self.node_right
        total = 0.0
        for root in self.node_roots:
            depths = leaves = 0
            stack = [(root, 0)]
            while stack:
                node, depth = stack.pop()
                if depth > self.max_depth:
                    raise ValueError("tree arrays of the compiled model are inconsistent (deeper than max_depth)")
                if feature[node] < 0:
                    depths += depth
                    leaves += 1
                else:
                    stack.append((left[node], depth + 1))
                    stack.append((right[node], depth + 1))
            total += depths / max(leaves, 1)
        return total

    def _numpy_ready(self) -> None:
        """The batch walk's numpy arrays, made on its first use in this backend.

        The walk numbers node k as 2k (and 2k + 1): a step is then
        ``children[node + went_right]``, one gather, and the per-node arrays
        hold each value twice. Features cast to float32 meet float32
        thresholds, each rounded down: for a float32 x, x > t exactly when
        x > (the largest float32 <= t), and the gathers move half the bytes.
        Both together walked the demo forest ~25% faster.
        """
        if self.children is not None:
            return
        feature = np.asarray(self.node_feature, dtype=np.intp)
        is_leaf = feature < 0
        nodes = np.arange(feature.shape[0])
        # Leaves loop onto themselves, so every row can take max_depth steps
        # without asking whether it already reached a leaf.
        left = np.where(is_leaf, nodes, np.asarray(self.node_left, dtype=np.intp))
        right = np.where(is_leaf, nodes, np.asarray(self.node_right, dtype=np.intp))
        self.roots2 = 2 * np.asarray(self.node_roots, dtype=np.intp)
        self.feature2 = np.repeat(np.where(is_leaf, 0, feature), 2)
        self.value2 = np.repeat(np.asarray(self.node_value, dtype=np.float64), 2)
        self.missing_right2 = np.repeat(~np.asarray(self.node_missing_left, dtype=bool), 2)
        self.threshold2 = np.repeat(np.asarray(self.node_threshold, dtype=np.float64), 2)
        with np.errstate(over="ignore"):  # beyond float32: inf, stepped down to its largest value
            threshold32 = self.threshold2.astype(np.float32)
        above = threshold32.astype(np.float64) > self.threshold2
        threshold32[above] = np.nextafter(threshold32[above], np.float32(-np.inf))
        self.threshold2_32 = threshold32
        self.children = 2 * np.stack([left, right], axis=1).ravel()  # last: the others are ready

    def _check_one(self, x: list[float]) -> None:
        """:meth:`_check` of one row (after the float32 cast), without numpy."""
        if self.route_missing and self.allow_inf:
            return
        for column, v in enumerate(x):
            if v - v == 0.0:
                continue
            missing = v != v
            if missing and self.route_missing or not missing and self.allow_inf:
                continue
            raise self._refused(column, missing)

    def _check(self, X: np.ndarray) -> None:
        """Reject NaN / infinity as scikit-learn's check_array does for this estimator."""
        if self.route_missing and self.allow_inf:
            return
        finite = np.isfinite(X)
        if finite.all():
            return
        if self.route_missing:
            bad = ~(finite | np.isnan(X))
        elif self.allow_inf:
            bad = np.isnan(X)
        else:
            bad = ~finite
        if not bad.any():
            return
        row, col = np.argwhere(bad)[0]
        raise self._refused(int(col), bool(np.isnan(X[row, col])))

    def _refused(self, column: int, missing: bool) -> ValueError:
        if missing:
            return ValueError(
                f"feature {self.output_names[column]!r}: value is missing (None/NaN) and {self.estimator} "
                "does not accept missing values here (impute it in the pipeline)"
            )
        return ValueError(
            f"feature {self.output_names[column]!r}: value is infinite or too large for float32, "
            f"which {self.estimator} rejects"
        )

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        if self.cast_float32:
            # scikit-learn trees see float32 features (compared with float64 thresholds).
            with np.errstate(over="ignore"):
                X = X.astype(np.float32)
        self._check(X)
        return X

    def _walk(self, x: np.ndarray) -> np.ndarray:
        """Leaf values reached from the roots (one row: shape (trees,); rows: (rows, trees))."""
        has_nan = self.route_missing and bool(np.isnan(x).any())
        feature, children = self.feature2, self.children
        threshold = self.threshold2_32 if x.dtype == np.float32 else self.threshold2
        flat = x.ravel()
        # Position of each entry's row in the flattened matrix.
        base = 0 if x.ndim == 1 else (np.arange(x.shape[0]) * x.shape[1])[:, None]
        node = np.ascontiguousarray(np.broadcast_to(self.roots2, x.shape[:-1] + self.roots2.shape))
        # One buffer per intermediate, reused level after level; indices are
        # in range by construction (_check_nodes), so take() need not check.
        position, child = np.empty_like(node), np.empty_like(node)
        xv, t = np.empty(node.shape, dtype=x.dtype), np.empty(node.shape, dtype=threshold.dtype)
        went_right = np.empty(node.shape, dtype=bool)
        for _ in range(self.max_depth):
            np.take(feature, node, out=position, mode="clip")
            position += base
            np.take(flat, position, out=xv, mode="clip")
            np.take(threshold, node, out=t, mode="clip")
            # NaN compares False: it goes left unless routed below.
            np.greater(xv, t, out=went_right)
            if has_nan:
                nan = np.isnan(xv)
                if nan.any():
                    went_right[nan] = self.missing_right2[node[nan]]
            node += went_right
            np.take(children, node, out=child, mode="clip")
            node, child = child, node
        return self.value2[node]

    def _combine(self, leaves: np.ndarray) -> np.ndarray:
        """P(class 1) from leaf values (rows, trees), summing tree by tree in order.

        A pairwise np.sum would round differently from scikit-learn's loop.
        """
        n = leaves.shape[0]
        if self.combine == "average":
            acc = np.zeros(n)
            for tree_values in np.ascontiguousarray(leaves.T):
                acc += tree_values
            return acc / self.n_trees
        if self.combine == "boosting":
            leaves = leaves * self.learning_rate
        raw = np.full(n, self.init)
        for tree_values in np.ascontiguousarray(leaves.T):
            raw += tree_values
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-raw))

    def predict_batch(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        self._numpy_ready()
        X = self._prepare(X)
        n = X.shape[0]
        out = np.empty(n, dtype=np.float64)
        chunk = max(1, _TREE_CHUNK_CELLS // self.n_trees)

        def walk(starts: Sequence[int]) -> None:
            for start in starts:
                out[start:start + chunk] = self._combine(self._walk(X[start:start + chunk]))

        starts = range(0, n, chunk)
        if threads > 1 and n >= THREADED_MIN_ROWS:
            _in_threads(walk, starts, threads)
        else:
            walk(starts)
        return out

    def _walk_python(self, x: list[float]) -> list[float]:
        feature, threshold = self.node_feature, self.node_threshold
        left, right, value = self.node_left, self.node_right, self.node_value
        leaves = []
        if self.route_missing and not math.isfinite(sum(x)):
            missing_left = self.node_missing_left
            for node in self.node_roots:
                f = feature[node]
                while f >= 0:
                    v = x[f]
                    if v <= threshold[node]:
                        node = left[node]
                    elif v != v:
                        node = left[node] if missing_left[node] else right[node]
                    else:
                        node = right[node]
                    f = feature[node]
                leaves.append(value[node])
        else:
            for node in self.node_roots:
                f = feature[node]
                while f >= 0:
                    node = left[node] if x[f] <= threshold[node] else right[node]
                    f = feature[node]
                leaves.append(value[node])
        return leaves

    def finish(self, raw: float) -> float:
        """P(class 1) from the leaves' sum of :class:`_RowCode` (same operations as below)."""
        return raw / self.n_trees if self.combine == "average" else _expit(raw)

    def predict_one(self, x: list[float]) -> float:
        if self.row_code is not None:
            raw = self.row_code.raw(x)
            if raw is not None:
                return self.finish(raw)
        if self.python_one:
            # array('f') rounds to float32 as numpy's cast does (overflow to +-inf included).
            xs = array("f", x).tolist() if self.cast_float32 else x
            self._check_one(xs)
            leaves = self._walk_python(xs)
        else:
            self._numpy_ready()
            xa = self._prepare(np.array([x], dtype=np.float64))[0]
            leaves = self._walk(xa).tolist()
        # Same operations as _combine, on Python floats (cheaper for one row).
        if self.combine == "average":
            acc = 0.0
            for v in leaves:
                acc += v
            return acc / self.n_trees
        raw = self.init
        if self.combine == "boosting":
            lr = self.learning_rate
            for v in leaves:
                raw += lr * v
        else:
            for v in leaves:
                raw += v
        return _expit(raw)


class _RowCode:
    """One row through a small ensemble as generated Python: the trees as
    nested ifs with the thresholds and leaf contributions written in, about
    three times faster than the numpy walk (no numpy call at all).

    The source holds only integers (feature positions) and floats (repr,
    which round-trips exactly), generated here from the arrays; it is
    compiled on the first row, about 10 ms per 1,000 nodes. Rows with NaN or
    infinity (after the float32 cast) return None: the general path checks
    them and routes missing values.
    """

    MAX_NODES = 4096
    MAX_DEPTH = 64  # Python's tokenizer allows 100 levels of indentation

    def __init__(self, trees: _Trees, feature: array, threshold: array, left: array,
                 right: array, value: array, roots: array):
        self.cast_float32 = trees.cast_float32
        self._arrays = (feature, threshold, left, right, value, roots)  # as lists only when writing the source
        # What raw() starts from and what each leaf adds: the operations of _Trees.predict_one.
        self._start = 0.0 if trees.combine == "average" else trees.init
        self._scale = trees.learning_rate if trees.combine == "boosting" else None
        self._function: Any = None

    def raw(self, x: list[float]) -> float | None:
        """The leaves' sum (from init for boosting), or None for a non-finite row."""
        values = array("f", x).tolist() if self.cast_float32 else x
        total = sum(values)
        if total - total != 0.0:
            return None
        return self.function()(values)

    def function(self) -> Any:
        """The compiled function (compiled now if this is the first call)."""
        if self._function is None:
            self._function = _define_raw(self.source(), {}, "<pgscore compiled trees>")
        return self._function

    def source(self, prologue: Sequence[str] = (), condition: Any = None) -> str:
        """``def raw(x)``; :class:`_PipelineCode` passes its own prologue and
        ``condition(column, threshold)``: the Python test for "goes left"."""
        feature, threshold, left, right, value, roots = (a.tolist() for a in self._arrays)
        if condition is None:

            def condition(column: int, t: float) -> str:
                return f"x[{column}] <= {_float_literal(t)}"

        lines = ["def raw(x):", *prologue, f"    s = {_float_literal(self._start)}"]

        def emit(node: int, indent: str) -> None:
            if feature[node] < 0:
                leaf = value[node] if self._scale is None else self._scale * value[node]
                lines.append(f"{indent}s += {_float_literal(leaf)}")
                return
            test = condition(int(feature[node]), threshold[node])
            if test in ("True", "False"):  # a one-hot column's test that every value answers alike
                emit(left[node] if test == "True" else right[node], indent)
                return
            lines.append(f"{indent}if {test}:")
            emit(left[node], indent + "    ")
            lines.append(f"{indent}else:")
            emit(right[node], indent + "    ")

        for root in roots:
            emit(root, "    ")
        lines.append("    return s")
        return "\n".join(lines) + "\n"


class _PipelineCode:
    """One row from its raw values through preprocessing and a small
    ensemble as one generated function: no model-input vector at all.

    Numeric columns are converted and scaled with the same operations as
    :meth:`_NumericBlock.fill_one` (constants written in), cast to float32
    like the batch; a one-hot column becomes its category's code, and a
    tree's test on an indicator column becomes a comparison of that code.
    Only the usual row takes this path: a value of another type, a missing
    or non-finite value, or a category the table does not know returns None,
    and :meth:`Evaluator.predict_one` takes the general path, which imputes,
    routes or raises exactly as before.
    """

    def __init__(self, evaluator: "Evaluator", trees: _Trees):
        self._evaluator = evaluator
        self._row_code = trees.row_code
        self._function: Any = None

    def raw(self, values: Sequence[Any]) -> float | None:
        if self._function is None:
            self.function()
        try:
            return self._function(values)
        except ArithmeticError:  # e.g. an int too large for a float: the general path names the feature
            return None

    def function(self) -> Any:
        if self._function is None:
            namespace: dict[str, Any] = {"array": array}
            for j, column in enumerate(self._evaluator.onehot):
                namespace[f"T{j}"] = column.table
            self._function = _define_raw(self.source(), namespace, "<pgscore compiled pipeline>")
        return self._function

    def source(self) -> str:
        evaluator = self._evaluator
        prologue: list[str] = []
        numeric: list[str] = []
        for block in evaluator.numeric:
            for i, out, _name, _fills, ops in block._columns_one:
                a = f"x{out}"
                numeric.append(a)
                prologue += [
                    f"    {a} = x[{i}]",
                    f"    if {a}.__class__ is not float:",
                    f"        if {a}.__class__ is int or {a}.__class__ is bool:",
                    f"            {a} = float({a})",
                    "        else:",
                    "            return None",
                ]
                for code, c in ops:
                    # 'fill' changes only NaN, and a NaN row leaves this path below.
                    if code == "sub":
                        prologue.append(f"    {a} = {a} - {_float_literal(c)}")
                    elif code == "div":
                        prologue.append(f"    {a} = {a} / {_float_literal(c)}")
        if numeric:
            if self._row_code.cast_float32:
                prologue.append(f"    {', '.join(numeric)}, = array('f', ({', '.join(numeric)},)).tolist()")
            # NaN or infinity anywhere (after the cast, as the batch sees it): the general path.
            prologue += [f"    t = {' + '.join(numeric)}", "    if t - t != 0.0:", "        return None"]
        indicator: dict[int, tuple[str, int]] = {}
        # Named by position: a ColumnTransformer may encode one input twice.
        for j, column in enumerate(evaluator.onehot):
            c = f"c{j}"
            prologue += [
                f"    {c} = x[{column.input}]",
                f"    if {c}.__class__ is str or {c}.__class__ is bool:",
                f"        {c} = T{j}.get({c}, -3)",
                "    else:",
                "        return None",
                f"    if {c} == -3:",
                "        return None",
            ]
            for out in column.table.values():
                if out >= 0:
                    indicator[out] = (c, out)

        def condition(column: int, threshold: float) -> str:
            if column not in indicator:
                return f"x{column} <= {_float_literal(threshold)}"
            # The indicator is 1.0 for this code and 0.0 for every other one.
            code, out = indicator[column]
            when_one, when_zero = 1.0 <= threshold, 0.0 <= threshold
            if when_one == when_zero:
                return str(when_one)
            return f"{code} == {out}" if when_one else f"{code} != {out}"

        return self._row_code.source(prologue, condition)


def _define_raw(source: str, namespace: dict[str, Any], filename: str) -> Any:
    """The function ``raw`` that ``source`` (generated here from a model's
    numbers, never from text anyone supplied) defines in ``namespace``."""
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102
    return namespace["raw"]


def _float_literal(value: float) -> str:
    if math.isfinite(value):
        return repr(float(value))
    return "float('nan')" if math.isnan(value) else ("float('inf')" if value > 0 else "-float('inf')")


class Evaluator:
    """P(class 1) of a compiled pipeline for rows of plain Python values.

    Rows are dicts keyed by feature name (a missing key counts as NaN, as in
    ``DataFrame.from_records``) or sequences in :attr:`feature_names` order.
    Values are bool, int, float, str or None.
    """

    def __init__(self, manifest: Mapping[str, Any], arrays: Mapping[str, np.ndarray]):
        self.manifest = manifest
        self.arrays = arrays  # kept for pgscore_server.sqlgen, which writes the same model as SQL
        self.feature_names: list[str] = [str(n) for n in manifest["feature_names"]]
        n_inputs = len(self.feature_names)
        transform = manifest["transform"]
        self.n_outputs = int(transform["n_outputs"])
        self.numeric = [_NumericBlock(b, arrays, self.feature_names) for b in transform["numeric"]]
        self.onehot = [_OneHotColumn(c, self.feature_names) for c in transform["onehot"]]
        self.dtype_checks = [_ImputerDtypeCheck(c, self.feature_names) for c in transform["dtype_checks"]]
        output_names = [""] * self.n_outputs
        covered = [0] * self.n_outputs
        for block in self.numeric:
            for i, out in zip(block.inputs, block.outputs):
                output_names[out] = self.feature_names[i]
                covered[out] += 1
        for column in self.onehot:
            for out in column.table.values():
                if out >= 0:
                    output_names[out] = column.name
                    covered[out] += 1
        used = [i for b in self.numeric for i in b.inputs] + [c.input for c in self.onehot]
        used += [i for c in self.dtype_checks for i in c.inputs]
        if any(c != 1 for c in covered) or any(not 0 <= i < n_inputs for i in used):
            raise ValueError("compiled model: transform does not map inputs onto model columns one to one")
        model = manifest["model"]
        if model["kind"] == "linear":
            self.model: _Linear | _Trees = _Linear(model, arrays, output_names)
            if self.model.coef.shape[1] != self.n_outputs:
                raise ValueError("compiled model: coefficient count does not match the transform")
        elif model["kind"] == "trees":
            self.model = _Trees(model, arrays, output_names)
        else:
            raise ValueError(f"compiled model: unknown model kind {model['kind']!r}")
        self._index = {name: k for k, name in enumerate(self.feature_names)}
        # Inputs a batch may send as CategoryCodes: those that only a one-hot
        # column reads, with up to MAX_CODED_CATEGORIES string categories.
        # (A dtype check needs only the column's kind, which codes tell.)
        readers = [i for b in self.numeric for i in b.inputs] + [c.input for c in self.onehot]
        self._coded = {c.input: c for c in self.onehot
                       if readers.count(c.input) == 1 and 0 < len(c.strings) <= MAX_CODED_CATEGORIES}
        self.pipeline_code = (_PipelineCode(self, self.model)
                              if isinstance(self.model, _Trees) and self.model.row_code is not None else None)

    def _row(self, row: Mapping[str, Any] | Sequence[Any]) -> Sequence[Any]:
        if isinstance(row, Mapping):
            get = row.get
            return [get(name, _NAN) for name in self.feature_names]
        if len(row) != len(self.feature_names):
            raise ValueError(f"row has {len(row)} values, the model expects {len(self.feature_names)} features")
        return row

    def features_one(self, row: Mapping[str, Any] | Sequence[Any]) -> list[float]:
        """The model-input vector (after the compiled preprocessing) of one row."""
        values = self._row(row)
        for check in self.dtype_checks:
            check.check_one(values)
        x = [0.0] * self.n_outputs
        for block in self.numeric:
            block.fill_one(values, x)
        for column in self.onehot:
            code = column.code_one(values[column.input])
            if code >= 0:
                x[code] = 1.0
        return x

    def features(self, rows: Sequence[Mapping[str, Any] | Sequence[Any]]) -> np.ndarray:
        """The model-input matrix (n_rows, n_model_columns), float64."""
        n = len(rows)
        if n and isinstance(rows[0], Mapping):
            columns: list[Sequence[Any]] = [
                [r.get(name, _NAN) for r in rows] for name in self.feature_names
            ]
        else:
            width = len(self.feature_names)
            for r in rows:
                if len(r) != width:
                    raise ValueError(f"row has {len(r)} values, the model expects {width} features")
            columns = list(zip(*rows)) if n else [()] * width
        return self.features_from_columns(columns, n)

    def features_from_columns(self, columns: Sequence[Sequence[Any]], n: int) -> np.ndarray:
        """:meth:`features` from one sequence of ``n`` values per feature, in feature_names order."""
        X = np.zeros((n, self.n_outputs), dtype=np.float64)
        if n == 0:
            return X
        for check in self.dtype_checks:
            check.check_batch(columns)
        for block in self.numeric:
            block.fill_batch(columns, X)
        all_rows = np.arange(n)
        for column in self.onehot:
            values = columns[column.input]
            codes = column.codes_from(values) if isinstance(values, CategoryCodes) else column.codes_batch(values)
            hit = codes >= 0
            X[all_rows[hit], codes[hit]] = 1.0
        return X

    def category_inputs(self) -> dict[int, list[str]]:
        """Input position -> categories, for the inputs a batch may send as
        :class:`CategoryCodes` (code ``CODE_FIRST + i`` is ``categories[i]``)."""
        return {position: list(column.strings) for position, column in self._coded.items()}

    def codes_usable(self, position: int, coded: CategoryCodes) -> bool:
        """False where the batch must be read as strings instead: a string
        that is no category of a model that raises naming it."""
        return not (self._coded[position].code_table()[coded.codes] == -4).any()

    def warm(self) -> None:
        """Does now what the first single-row score would (for scoring.warmup)."""
        if self.pipeline_code is not None:
            self.pipeline_code.function()

    def predict_one(self, row: Mapping[str, Any] | Sequence[Any]) -> float:
        """P(class 1) of one row, as ``predict([row])[0]``.

        Raises ValueError naming the feature for a mistyped or unknown value
        the pipeline rejects (unknown category with handle_unknown='error',
        a missing value reaching a model that does not accept NaN, ...).
        """
        if self.pipeline_code is not None:
            values = self._row(row)
            for check in self.dtype_checks:
                check.check_one(values)
            raw = self.pipeline_code.raw(values)
            if raw is not None:
                return self.model.finish(raw)
        return self.model.predict_one(self.features_one(row))

    def predict(self, rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> np.ndarray:
        """P(class 1) per row, float64 array; raises ValueError as :meth:`predict_one`."""
        rows = rows if isinstance(rows, Sequence) else list(rows)
        if len(rows) == 1:
            return np.array([self.predict_one(rows[0])])
        if not rows:
            return np.empty(0, dtype=np.float64)
        return self.model.predict_batch(self.features(rows))

    def predict_columns(self, columns: Sequence[Sequence[Any]], threads: int = 1) -> np.ndarray:
        """P(class 1) from column sequences in feature_names order: the batch
        paths read each feature as one array, which skips building row objects.
        ``threads``: how many threads a large tree batch may walk in."""
        if len(columns) != len(self.feature_names):
            raise ValueError(f"{len(columns)} columns given, the model expects {len(self.feature_names)} features")
        n = len(columns[0]) if columns else 0
        if n == 0:
            return np.empty(0, dtype=np.float64)
        return self.model.predict_batch(self.features_from_columns(columns, n), threads)


def _in_threads(work: Any, items: Sequence[Any], threads: int) -> None:
    """``work(part)`` for ``threads`` contiguous parts of ``items``: one in
    this thread, the others in helper threads, joined before returning; the
    first exception is raised here.

    Only numpy runs in the helpers (it releases the GIL, so the tree walk
    of a large batch uses several CPUs), never plpy or anything of
    PostgreSQL's. They are started with every signal blocked, so that the
    server's signal handlers keep running in the backend's own thread.
    """
    import signal
    import threading

    size = -(-len(items) // threads)
    parts = [items[k:k + size] for k in range(0, len(items), size)]
    failures: list[BaseException] = []

    def run(part: Sequence[Any]) -> None:
        try:
            work(part)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which raises it
            failures.append(exc)

    helpers = [threading.Thread(target=run, args=(part,), name="pgscore-walk") for part in parts[1:]]
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        for helper in helpers:
            helper.start()  # a new thread inherits the blocked mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
    run(parts[0])
    for helper in helpers:
        helper.join()
    if failures:
        raise failures[0]

$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.errors', $pgscore_source$"""The one exception type of in-database scoring, carrying a SQLSTATE and a hint.

Library code raises :class:`ScoringError`; the SQL entry points in
:mod:`pgscore_server.api` turn it into a PostgreSQL error with
``plpy.error(message, detail=..., hint=..., sqlstate=...)``.
"""

from __future__ import annotations

# SQLSTATEs used by pgscore (PostgreSQL's own codes, so callers can catch them
# by class, e.g. psycopg.errors.NoDataFound).
NO_DATA_FOUND = "P0002"             # unknown customer id
UNDEFINED_OBJECT = "42704"          # unknown model name, feature not a column
NOT_IN_PREREQUISITE_STATE = "55000"  # no active model
INVALID_PARAMETER_VALUE = "22023"   # bad feature document, bad argument
DATATYPE_MISMATCH = "42804"         # mistyped feature value
MODEL_LOAD_FAILED = "38000"         # external_routine_exception: blob, runtime
MODEL_FAILED = "39000"              # external_routine_invocation_exception: predict


class ScoringError(Exception):
    """A scoring failure with a message that names the object and the next step."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str = MODEL_FAILED,
        hint: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.hint = hint
        self.detail = detail

    def __str__(self) -> str:
        return self.message


def describe(exc: BaseException) -> str:
    """One line for an unexpected exception: its type and message, no traceback."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def as_scoring_error(exc: BaseException, context: str) -> ScoringError:
    """Wrap an unexpected exception from a model or library as a ScoringError."""
    if isinstance(exc, ScoringError):
        return exc
    sqlstate = getattr(exc, "sqlstate", None) or MODEL_FAILED
    return ScoringError(f"{context}: {describe(exc)}", sqlstate=sqlstate)
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.features', $pgscore_source$"""Turning profile rows into the model's input, the same way on both sides.

The loader (training, parity checks) and the server (scoring) both build a
model's input with :func:`to_frame`, so a model sees identical dtypes in and
out of the database. Rows hold plain Python values: ``bool``, ``int``,
``float``, ``str`` or ``None`` (numeric columns are read as float8).
"""

from __future__ import annotations

import math

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Iterable, Mapping, Sequence

def to_frame(rows: Iterable[Mapping[str, Any]], feature_names: Sequence[str]) -> Any:
    """A pandas DataFrame with exactly ``feature_names`` as columns, in order."""
    import pandas as pd

    return pd.DataFrame.from_records(list(rows), columns=list(feature_names))


def from_document(document: Any, feature_names: Sequence[str], columns: Mapping[str, str], model_label: str) -> dict:
    """One row of features from a what-if JSON document (already parsed).

    Keys that are profile columns but not features are ignored, so
    ``to_jsonb(p)`` of a whole profile works. Raises ScoringError naming the
    feature when one is missing, mistyped or not finite, or when a key is
    not a profile column at all (a typo).
    """
    from .catalog import BOOLEAN_TYPES, INTEGER_TYPES, NUMBER_TYPES, PROFILES
    from .errors import DATATYPE_MISMATCH, INVALID_PARAMETER_VALUE, ScoringError

    if not isinstance(document, dict):
        raise ScoringError(
            f"features must be a JSON object of column: value, not a JSON {_json_kind(document)}",
            sqlstate=INVALID_PARAMETER_VALUE,
            hint="""for example '{"tenure_months": 3, "contract": "Month-to-month", ...}'::jsonb""",
        )
    unknown = sorted(key for key in document if key not in columns)
    if unknown:
        raise ScoringError(
            f"feature document has keys that are not columns of {PROFILES}: {', '.join(map(repr, unknown[:10]))}",
            sqlstate=INVALID_PARAMETER_VALUE,
            hint=f"{model_label} needs: {', '.join(feature_names)}",
        )
    missing = [name for name in feature_names if name not in document]
    if missing:
        raise ScoringError(
            f"feature {missing[0]!r} is missing from the feature document"
            + (f" (and {len(missing) - 1} more: {', '.join(missing[1:])})" if len(missing) > 1 else ""),
            sqlstate=INVALID_PARAMETER_VALUE,
            hint=f"{model_label} needs: {', '.join(feature_names)}",
        )
    row = {}
    for name in feature_names:
        value = document[name]
        column_type = columns[name]
        if value is None:
            row[name] = None
            continue
        if column_type in BOOLEAN_TYPES:
            ok = isinstance(value, bool)
            expected = "true or false"
        elif column_type in INTEGER_TYPES:
            low, high = INTEGER_RANGES[column_type]
            ok = isinstance(value, int) and not isinstance(value, bool) or (
                isinstance(value, float) and value.is_integer()
            )
            expected = f"a whole number from {low} to {high}"
            if ok:
                value = int(value)
                ok = low <= value <= high
        elif column_type in NUMBER_TYPES:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            expected = "a finite number"
            if ok:
                try:
                    value = float(value)
                except OverflowError:  # a JSON integer beyond float range
                    ok = False
                else:
                    ok = math.isfinite(value)
        else:
            ok = isinstance(value, str)
            expected = "a string"
        if not ok:
            raise ScoringError(
                f"feature {name!r} must be {expected} (column type {column_type}), not {_show(value)}",
                sqlstate=DATATYPE_MISMATCH,
                hint=f"fix {name!r} in the feature document",
            )
        row[name] = value
    return row


INTEGER_RANGES = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return f"{_json_kind(value)} {text[:60] + '...' if len(text) > 60 else text}"
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.floatbits', $pgscore_source$"""Scores as they cross from Python to SQL: the bigint of each float8's bits.

PL/Python converts a float parameter or result through its text form
(Python prints it, PostgreSQL parses it: ~1 us a score, about 1 s per 1M
profiles); an int costs a fraction of that. scoring._float8_from_bits
(sql/idempotent/030-score.sql) turns the bits back into the same float8.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

# What SQL writes around a bigint of bits to get the float8 back.
FROM_BITS = "scoring._float8_from_bits({})"


def as_bits(scores: Any) -> list[int]:
    """The IEEE 754 bits of each score, as ints. Scores are probabilities,
    so never negative; -0.0 is sent as 0.0 (adding 0.0 makes it so)."""
    import numpy as np

    return (np.asarray(scores, dtype=np.float64) + 0.0).view(np.int64).tolist()
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.formats', $pgscore_source$"""Model blob formats, and what may be loaded from them.

- 'skops' (the default of ``pgscore push``): skops.io's format, which
  rebuilds only the types it is told to trust; anything else is refused
  with the list of offending types, nothing executed.
- 'joblib': a pickle. Loading it runs whatever code it names, so it is
  pushed only on explicit request (``pgscore push --format joblib``), by
  the loader role, and its sha256 is verified before it is loaded.

The loader and the server share this module, so both trust the same list.
"""

from __future__ import annotations

import io

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

FORMATS = ("skops", "joblib")

# Types skops does not trust by default that scikit-learn's own estimators
# need (tree structures, dtypes). Nothing here can run code when rebuilt.
SKOPS_TRUSTED_TYPES = (
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


class UntrustedTypes(Exception):
    """A skops blob needs types outside SKOPS_TRUSTED_TYPES."""

    def __init__(self, types: list[str]) -> None:
        super().__init__(", ".join(types))
        self.types = types


def dumps(estimator: Any, fmt: str) -> bytes:
    """``estimator`` serialised in ``fmt`` ('skops' or 'joblib')."""
    if fmt == "skops":
        import skops.io

        return skops.io.dumps(estimator)
    if fmt == "joblib":
        import joblib

        buffer = io.BytesIO()
        joblib.dump(estimator, buffer)
        return buffer.getvalue()
    raise ValueError(f"unknown model format {fmt!r}; use one of {', '.join(FORMATS)}")


def untrusted_types(blob: bytes) -> list[str]:
    """The types a skops blob needs that are not trusted here (empty: loadable)."""
    import skops.io

    return sorted(set(skops.io.get_untrusted_types(data=blob)) - set(SKOPS_TRUSTED_TYPES))


def loads(blob: bytes, fmt: str) -> Any:
    """The estimator in ``blob``. Raises UntrustedTypes for a skops blob that
    needs untrusted types, ValueError for an unknown format, and whatever the
    format's loader raises for a damaged blob."""
    if fmt == "skops":
        refused = untrusted_types(blob)
        if refused:
            raise UntrustedTypes(refused)
        import skops.io

        return skops.io.loads(blob, trusted=list(SKOPS_TRUSTED_TYPES))
    if fmt == "joblib":
        import joblib

        return joblib.load(io.BytesIO(blob))
    raise ValueError(f"unknown model format {fmt!r}; use one of {', '.join(FORMATS)}")
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.plans', $pgscore_source$"""Prepared SPI plans, prepared once per backend and kept in the cache dict."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Sequence


def run(plpy: Any, cache: dict, sql: str, types: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
    """Execute ``sql`` through a plan prepared on first use in this backend."""
    plans = cache.setdefault("pgscore.plans", {})
    plan = plans.get(sql)
    if plan is None:
        plan = plpy.prepare(sql, list(types))
        plans[sql] = plan
    return plpy.execute(plan, list(args))
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.registry', $pgscore_source$"""Which model is active, and loading it once per backend.

The active model of a name is looked up on every scoring call (one indexed
read), so an activation or rollback in any session takes effect on the next
call here. The loaded model is cached by model_id and checked against its
sha256 and scoring path.

Two ways to evaluate a model:
- 'compiled': the data-only arrays of ``scoring.models.compiled``, evaluated
  with numpy by :mod:`pgscore_server.compiled`; nothing is unpickled and
  scikit-learn is never imported.
- 'sklearn': the pickled blob, sha256-verified before it is unpickled, after
  checking the scikit-learn/numpy versions it was saved with.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

from . import catalog, features, plans, runtime
from .errors import (
    INVALID_PARAMETER_VALUE,
    MODEL_FAILED,
    MODEL_LOAD_FAILED,
    NOT_IN_PREREQUISITE_STATE,
    UNDEFINED_OBJECT,
    ScoringError,
    as_scoring_error,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Sequence

# Loaded models kept per backend: the active one plus a few recent ones
# (rollback, score_with_model) without holding every version in memory.
CACHE_SIZE = 4

# Paths evaluated here with the compiled arrays. A 'sql' model is scored by
# generated SQL in the trigger and score(bigint) (pgscore_server.sqlpath);
# everything else that scores it in Python uses the same arrays.
COMPILED_PATHS = ("compiled", "sql")

ACTIVE_SQL = (
    "SELECT d.model_id, m.sha256, m.scoring_path FROM scoring.deployments d"
    " JOIN scoring.models m USING (model_id)"
    " WHERE d.name = $1 ORDER BY d.deployment_id DESC LIMIT 1"
)
MODEL_SQL = (
    "SELECT model_id, name, version, format, sha256, scoring_path, feature_names, runtime::text AS runtime,"
    " CASE WHEN scoring_path IN ('compiled', 'sql') THEN compiled END AS compiled"
    " FROM scoring.models WHERE model_id = $1"
)
BLOB_SQL = "SELECT blob FROM scoring.models WHERE model_id = $1"
NAME_EXISTS_SQL = "SELECT EXISTS (SELECT FROM scoring.models WHERE name = $1) AS pushed"


class LoadedModel:
    """A model ready to score in this backend.

    A plain class: importing dataclasses (and with it inspect, ast, dis and
    tokenize) would cost every new backend ~1.5 MiB.
    """

    def __init__(self, model_id: int, name: str, version: int, sha256: str, feature_names: list[str],
                 estimator: Any, scoring_path: str = "sklearn", select_list: str = "",
                 array_list: str = "", batch_list: str = "", joined: Sequence[int] = (),
                 coded: Sequence[int] = ()) -> None:
        self.model_id = model_id
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.feature_names = feature_names
        self.estimator = estimator
        self.scoring_path = scoring_path
        self.select_list = select_list
        self.array_list = array_list
        self.batch_list = batch_list or array_list
        self.joined = list(joined)  # features batch_list reads as one joined string
        self.coded = list(coded)  # ... and as category codes (compiled.CategoryCodes)
        self.plan_cache: dict = {}

    @property
    def label(self) -> str:
        return f"model {self.name!r} v{self.version} (model_id {self.model_id})"

    def read_columns(self, plpy: Any, cache: dict, source: str, types: Sequence[str],
                     args: Sequence[Any], also: str = "") -> tuple[list[int], list, Mapping[str, Any]]:
        """(customer_ids, one sequence per feature, the aggregate row) of the
        profiles ``source`` (a FROM clause aliased ``p``) yields; all arrays
        come from one aggregate pass, so they are in the same row order.
        ``also`` adds aggregates to that pass (``, array_agg(..) AS name``),
        found in the row. Text features come joined or as category codes
        (catalog.batch_list); where a column has NULLs or a value holding the
        separator, or codes the model cannot use
        (compiled.Evaluator.codes_usable), the batch is read again as arrays."""
        def aggregate(select_list: str) -> Any:
            sql = (f"SELECT count(*) AS pgscore_rows, array_agg(p.customer_id) AS pgscore_ids, {select_list}{also}"
                   f" FROM {source}")
            return plans.run(plpy, cache, sql, types, args)[0]

        row = aggregate(self.batch_list)
        columns = [row[name] or [] for name in self.feature_names]
        if not self._compact_columns_usable(row, columns):
            row = aggregate(self.array_list)
            columns = [row[name] or [] for name in self.feature_names]
        return list(row["pgscore_ids"] or []), columns, row

    def _compact_columns_usable(self, row: Mapping[str, Any], columns: list) -> bool:
        """Decodes the joined and coded features of a batch read into
        ``columns``; False if one must be read as an array instead."""
        rows = row["pgscore_rows"]
        for k in self.joined:
            joined = row[self.feature_names[k]]
            values = joined.split(catalog.JOIN_SEPARATOR) if joined is not None else []
            if row[f"pgscore_count_{k}"] != rows or len(values) != rows:
                return False
            columns[k] = values
        if self.coded:
            from .compiled import CategoryCodes

            for k in self.coded:
                codes = CategoryCodes.from_text(row[self.feature_names[k]])
                if len(codes) != rows or not self.estimator.codes_usable(k, codes):
                    return False
                columns[k] = codes
        return True

    def predict_columns(self, columns: Sequence[Sequence[Any]], threads: int = 1) -> list[float]:
        """:meth:`predict` from one list per feature (feature_names order);
        a compiled tree model may walk a large batch in ``threads`` threads."""
        if not columns or not len(columns[0]):
            return []
        if self.scoring_path in COMPILED_PATHS:
            return self._checked(lambda: self.estimator.predict_columns(columns, threads), [])
        return self.predict(list(zip(*columns)))

    def predict(self, rows: Sequence[Any]) -> list[float]:
        """P(churn) for each row; raises ScoringError if the model fails or
        returns anything but a probability for any row."""
        if not rows:
            return []
        if self.scoring_path in COMPILED_PATHS:
            if len(rows) == 1:
                return [self.predict_one(rows[0])]  # no numpy for one row of a tree model
            return self._checked(lambda: self.estimator.predict(rows), rows)
        return self._checked(
            lambda: self.estimator.predict_proba(features.to_frame(rows, self.feature_names))[:, 1], rows)

    def predict_one(self, row: Sequence[Any]) -> float:
        """:meth:`predict` of one row, without the batch's arrays on the compiled paths."""
        if self.scoring_path in COMPILED_PATHS:
            return self._checked(lambda: (self.estimator.predict_one(row),), (row,))[0]
        return self.predict([row])[0]

    def _checked(self, call: Any, rows: Sequence[Any]) -> list[float]:
        try:
            proba = call()
        except Exception as exc:
            # The compiled evaluator names the feature itself; scikit-learn often does not.
            cause = "" if self.scoring_path in COMPILED_PATHS else explain_failure(self.estimator, rows, self.feature_names)
            context = f"{self.label} failed to score" + (f" ({cause})" if cause else "")
            raise as_scoring_error(exc, context) from None
        if hasattr(proba, "tolist"):  # numpy: one vectorised check (NaN fails both comparisons)
            scores = proba.tolist()
            probabilities = (proba >= 0.0) & (proba <= 1.0)
            wrong = None if probabilities.all() else scores[int(probabilities.argmin())]
        else:
            scores = [float(p) for p in proba]
            wrong = next((score for score in scores if not (math.isfinite(score) and 0.0 <= score <= 1.0)), None)
        if wrong is not None:
            raise ScoringError(
                f"{self.label} returned {wrong!r}, which is not a probability",
                sqlstate=MODEL_FAILED,
                hint="check the model's input features for NULLs or out-of-range values",
            )
        return scores


def explain_failure(estimator: Any, rows: Sequence[Any], feature_names: Sequence[str]) -> str:
    """Which feature a scikit-learn failure is about, where that can be told:
    NULL features, and categories a OneHotEncoder(handle_unknown='error') never saw."""
    rows = [row if isinstance(row, Mapping) else dict(zip(feature_names, row)) for row in rows]
    nulls = [name for name in feature_names if any(row[name] is None for row in rows)]
    if nulls:
        return "NULL " + ", ".join(f"feature {name!r}" for name in nulls)
    unknown = []
    for columns, categories in _strict_encoders(estimator):
        for name, known in zip(columns, categories):
            seen = {value for value in known if isinstance(value, str)}
            unknown += [f"feature {name!r}: unknown category {row[name]!r}" for row in rows
                        if name in row and isinstance(row[name], str) and row[name] not in seen]
    return "; ".join(dict.fromkeys(unknown))


def _strict_encoders(estimator: Any) -> list[tuple[list[str], list[Any]]]:
    """(input columns, learned categories) of each OneHotEncoder(handle_unknown='error')
    inside a pipeline's ColumnTransformer."""
    found = []
    steps = getattr(estimator, "steps", [("", estimator)])
    for _, step in steps:
        for _, transformer, columns in getattr(step, "transformers_", []):
            parts = getattr(transformer, "steps", [("", transformer)])
            for _, part in parts:
                if type(part).__name__ == "OneHotEncoder" and part.handle_unknown == "error" and \
                        isinstance(columns, (list, tuple)) and all(isinstance(c, str) for c in columns):
                    found.append((list(columns), list(part.categories_)))
    return found


def active_model_id(plpy: Any, cache: dict, name: str) -> tuple[int, str, str] | None:
    """(model_id, sha256, scoring_path) of the active model of ``name``, or None."""
    rows = plans.run(plpy, cache, ACTIVE_SQL, ["text"], [name])
    if not rows:
        return None
    return rows[0]["model_id"], rows[0]["sha256"], rows[0]["scoring_path"]


def cached(cache: dict, model_id: int, sha256: str | None = None,
           scoring_path: str | None = None) -> LoadedModel | None:
    """The model if this backend has it loaded (as recorded, where ``sha256``
    and ``scoring_path`` are given), else None. Runs no query."""
    found = cache.get("pgscore.models", {}).get(model_id)
    if found is None or (sha256 is not None and found.sha256 != sha256):
        return None
    return found if scoring_path is None or found.scoring_path == scoring_path else None


def forget(cache: dict, model_id: int) -> None:
    """Drops this backend's copy of the model: the next load reads it again."""
    cache.get("pgscore.models", {}).pop(model_id, None)


def active_model(plpy: Any, cache: dict, name: str) -> LoadedModel:
    """The active model of ``name``, loaded. Raises ScoringError when there is none."""
    if name is None:
        raise ScoringError("model name is NULL", sqlstate=INVALID_PARAMETER_VALUE, hint="pass a model name such as 'churn'")
    active = active_model_id(plpy, cache, name)
    if active is None:
        raise no_active_model(plpy, cache, name)
    return load(plpy, cache, *active)


def no_active_model(plpy: Any, cache: dict, name: str) -> ScoringError:
    pushed = plans.run(plpy, cache, NAME_EXISTS_SQL, ["text"], [name])[0]["pushed"]
    if not pushed:
        return ScoringError(
            f"no model named {name!r} has been pushed",
            sqlstate=UNDEFINED_OBJECT,
            hint=f"push one with: pgscore push FILE --name {name} --activate",
        )
    return ScoringError(
        f"no active model named {name!r}",
        sqlstate=NOT_IN_PREREQUISITE_STATE,
        hint=f"activate a version with: pgscore activate {name} VERSION",
    )


def load(plpy: Any, cache: dict, model_id: int, expected_sha256: str | None = None,
         expected_path: str | None = None) -> LoadedModel:
    """The model with ``model_id``, from this backend's cache or the models table.

    Raises ScoringError when it does not exist, its compiled form is
    unreadable, or (scikit-learn path) its blob fails the sha256 check, it was
    saved with another runtime, or it cannot be unpickled.
    """
    models: OrderedDict[int, LoadedModel] = cache.setdefault("pgscore.models", OrderedDict())
    found = models.get(model_id)
    if found is not None and (expected_sha256 is None or found.sha256 == expected_sha256) and (
            expected_path is None or found.scoring_path == expected_path):
        models.move_to_end(model_id)
        return found
    rows = plans.run(plpy, cache, MODEL_SQL, ["bigint"], [model_id])
    if not rows:
        raise ScoringError(
            f"no model with model_id {model_id}",
            sqlstate=UNDEFINED_OBJECT,
            hint="list the models with: pgscore models",
        )
    row = rows[0]
    label = f"model {row['name']!r} v{row['version']} (model_id {model_id})"
    feature_names = list(row["feature_names"])
    columns = catalog.profile_columns(plpy, cache)
    catalog.check_features(feature_names, columns, label)
    coded: dict[int, list[str]] = {}
    if row["scoring_path"] in COMPILED_PATHS:
        estimator = load_compiled(bytes(row["compiled"]), label)
        coded = {k: categories for k, categories in estimator.category_inputs().items()
                 if columns[feature_names[k]] in catalog.JOINED_TYPES}
    else:
        blob = bytes(plans.run(plpy, cache, BLOB_SQL, ["bigint"], [model_id])[0]["blob"])
        verify_blob(blob, row["sha256"], expected_sha256, label, row["name"])
        runtime.check_compatible(runtime.parse_recorded(row["runtime"]), label)
        estimator = deserialize(row["format"], blob, label)
    model = LoadedModel(
        model_id=model_id,
        name=row["name"],
        version=row["version"],
        sha256=row["sha256"],
        feature_names=feature_names,
        estimator=estimator,
        scoring_path=row["scoring_path"],
        select_list=catalog.select_list(plpy, feature_names, columns),
        array_list=catalog.select_list(plpy, feature_names, columns, aggregate="array_agg"),
        batch_list=catalog.batch_list(plpy, feature_names, columns, coded=coded),
        joined=[k for k in catalog.joined_features(feature_names, columns) if k not in coded],
        coded=list(coded),
    )
    models[model_id] = model
    models.move_to_end(model_id)
    while len(models) > CACHE_SIZE:
        models.popitem(last=False)
    return model


def verify_blob(blob: bytes, recorded: str, expected: str | None, label: str, name: str) -> None:
    """Raises ScoringError unless the blob's sha256 is the recorded (and expected) one."""
    import hashlib  # here: the compiled and sql paths never need it (OpenSSL's pages in every backend)

    digest = hashlib.sha256(blob).hexdigest()
    if digest != recorded or (expected is not None and digest != expected):
        raise ScoringError(
            f"{label}: the blob's sha256 is {digest}, not the recorded {recorded}; refusing to load it",
            sqlstate=MODEL_LOAD_FAILED,
            hint=f"push the model again and activate the new version, or roll back: pgscore rollback {name}",
        )


def load_compiled(data: bytes, label: str) -> Any:
    from . import compiled

    try:
        return compiled.load(data)
    except ValueError as exc:
        raise ScoringError(
            f"{label}: its compiled form cannot be read: {exc}",
            sqlstate=MODEL_LOAD_FAILED,
            hint="push the model again, or evaluate it with scikit-learn: "
                 "SELECT scoring.set_scoring_path(NAME, VERSION, 'sklearn')",
        ) from None


def deserialize(fmt: str, blob: bytes, label: str) -> Any:
    """The estimator in ``blob``. Only called on a blob whose sha256 was verified."""
    from . import formats

    try:
        estimator = formats.loads(blob, fmt)
    except formats.UntrustedTypes as exc:
        raise ScoringError(
            f"{label} needs types pgscore does not trust: {', '.join(exc.types)}; refusing to load it",
            sqlstate=MODEL_LOAD_FAILED,
            hint="push a model built from scikit-learn estimators only",
        ) from None
    except Exception as exc:
        raise ScoringError(
            f"{label} could not be loaded: {runtime.describe_load_error(exc)}",
            sqlstate=MODEL_LOAD_FAILED,
            hint="push a model saved with the server's runtime (see SELECT scoring.runtime_info())",
        ) from None
    if not hasattr(estimator, "predict_proba"):
        raise ScoringError(
            f"{label} has no predict_proba", sqlstate=MODEL_LOAD_FAILED, hint="push a classifier"
        )
    return estimator
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.runtime', $pgscore_source$"""The server's ML runtime: which versions it has, and whether a model fits it.

Versions are read from package metadata, without importing scikit-learn,
so asking costs nothing on a cold backend.
"""

from __future__ import annotations

from .errors import MODEL_LOAD_FAILED, ScoringError, describe

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Mapping

# Distributions whose versions decide whether a pickled model loads.
PACKAGES = ("scikit-learn", "numpy", "scipy", "joblib", "pandas", "threadpoolctl", "skops")


def versions() -> dict[str, str | None]:
    """Python and library versions of this interpreter; None for a missing library."""
    # Imported here: importlib.metadata costs a new backend tens of
    # milliseconds, and only the scikit-learn path and runtime_info need it.
    import platform
    from importlib import metadata

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def parse_recorded(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        import json  # here: only the scikit-learn path reads the recorded runtime

        return json.loads(value)
    return dict(value)


def incompatibilities(recorded: Mapping[str, Any], available: Mapping[str, Any]) -> list[str]:
    """Why a model saved under ``recorded`` versions won't load under ``available`` ones.

    scikit-learn must match exactly (its pickles change between releases);
    numpy must match in its major version (1.x and 2.x pickles differ).
    """
    problems = []
    saved_sklearn = recorded.get("scikit-learn")
    have_sklearn = available.get("scikit-learn")
    if saved_sklearn and saved_sklearn != have_sklearn:
        problems.append(f"scikit-learn {saved_sklearn} (here: {have_sklearn or 'not installed'})")
    saved_numpy = recorded.get("numpy")
    have_numpy = available.get("numpy")
    if saved_numpy and (not have_numpy or saved_numpy.split(".")[0] != have_numpy.split(".")[0]):
        problems.append(f"numpy {saved_numpy} (here: {have_numpy or 'not installed'})")
    return problems


def check_compatible(recorded: Mapping[str, Any], label: str) -> None:
    """Raises ScoringError when the model was saved with a runtime this server lacks."""
    problems = incompatibilities(recorded, versions())
    if problems:
        raise ScoringError(
            f"{label} was saved with " + " and ".join(problems) + "; the server cannot load it",
            sqlstate=MODEL_LOAD_FAILED,
            hint="re-save the model with the server's versions (SELECT scoring.runtime_info()) and push it again",
        )


def describe_load_error(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError):
        return f"it needs the Python module {exc.name!r}, which the server's runtime does not have"
    return describe(exc)
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.settings', $pgscore_source$"""The settings pgscore reads (its scoring.* GUCs and PostgreSQL's own), in one place."""

from __future__ import annotations

import os

from . import plans
from .errors import INVALID_PARAMETER_VALUE, ScoringError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

ON_ERROR_CHOICES = ("keep", "raise")


def on_error(plpy: Any, cache: dict) -> str:
    """``scoring.on_error``: 'keep' (default) or 'raise'.

    Raises ScoringError for any other value, naming the allowed ones.
    """
    rows = plans.run(plpy, cache, "SELECT current_setting('scoring.on_error', true) AS v")
    value = (rows[0]["v"] or "keep").strip().lower()
    if value not in ON_ERROR_CHOICES:
        raise ScoringError(
            f"scoring.on_error is {value!r}; it must be 'keep' or 'raise'",
            sqlstate=INVALID_PARAMETER_VALUE,
            hint="SET scoring.on_error = 'keep'  -- or 'raise'",
        )
    return value


def batch_threads(plpy: Any, cache: dict, rows: int) -> int:
    """Threads the tree walk of a batch of ``rows`` may use in this backend:
    the leader plus ``max_parallel_workers_per_gather`` (PostgreSQL's own
    bound for one query's parallelism, so 0 means one thread), at most one
    per CPU; one, without asking, for a batch too small to be walked in threads."""
    # Imported here: a backend on the sql path never loads compiled.
    from .compiled import THREADED_MIN_ROWS

    if rows < THREADED_MIN_ROWS:
        return 1
    setting = plans.run(plpy, cache, "SELECT current_setting('max_parallel_workers_per_gather')::int AS v")
    return max(1, min(1 + setting[0]["v"], os.cpu_count() or 1))
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.sqlgen', $pgscore_source$"""Plain-SQL scoring of compiled linear and tree models: no plpython3u needed.

:func:`to_sql` turns a compiled model (:class:`pgscore.compile.CompiledModel`
or the server's :class:`pgscore_server.compiled.Evaluator`) into one SQL
expression of type double precision, P(class 1), over the columns
``alias.<feature>`` of ``public.customer_profiles``; :func:`sql_function`
wraps it in ``CREATE OR REPLACE FUNCTION scoring.<name>(p public.customer_profiles)``,
a ``LANGUAGE sql`` function with a SQL-standard body (PostgreSQL 14+), so
it runs on managed PostgreSQL where plpython3u is not allowed::

    SELECT p.customer_id, scoring.churn_sql(p) FROM public.customer_profiles p;

The expression reproduces ``pipeline.predict_proba(to_frame(rows))[:, 1]``
on rows read as the server reads them (numeric columns as float8), which
is what the plpython path (``pgscore_server.compiled``) computes:

- OneHotEncoder on text columns (str categories), boolean columns (bool
  categories) and integer columns (int categories); ``handle_unknown`` =
  'ignore' gives zeros for an unknown or NULL value, 'error' is a rejected
  row (below). Dropped categories (``drop=``) are supported.
- SimpleImputer with a numeric statistic (mean, median, ...: scikit-learn
  works on float64 there), StandardScaler, passthrough; NULL and NaN are
  missing, as in pandas.
- LogisticRegression(CV) and SGDClassifier (log_loss, modified_huber);
  the logistic link is ``1/(1+exp(-z))`` with the exponent clamped to
  [-700, 700] (PostgreSQL's exp() raises on overflow and underflow; the
  clamp changes the result by less than 1e-300).
- DecisionTree/ExtraTree, RandomForest/ExtraTrees (mean of the leaves'
  P(class 1), in estimator order), GradientBoosting (init + sum of
  learning_rate * leaf, then the logistic link), HistGradientBoosting
  (numeric splits), as nested CASE expressions, one per tree, summed in
  estimator order so the sums round as scikit-learn's do.

Trees compare the float32-rounded transformed feature with the float64
threshold. Instead of evaluating the transform and the float32 rounding at
every node, the generator inverts them exactly: the transform (sub, div by
a positive scale) and the rounding are monotone, so "float32(f(x)) <= t"
holds exactly for the raw values x up to some x*, which is found by a
binary search over all doubles with numpy doing the same float64 and
float32 operations as the evaluator. A node then reads
``p.tenure_months <= 12`` or ``p.total_charges <= 1520.35`` (for
numeric(p,s) columns: the largest s-decimal whose float8 value is <= x*),
with no arithmetic and no cast at all. NULL / NaN go where the Python
evaluator sends them (the imputed value's branch, or the tree's missing
branch for estimators that route missing values).

Rejected rows. Where the Python evaluator raises for a row (an unknown or
NULL category under handle_unknown='error', a missing value reaching a
model without imputation, a value that overflows float32 for a tree),
the expression gives NULL with ``invalid='null'`` (the default: one bad row
does not abort a whole ``SELECT``), or raises with ``invalid='raise'``: it
casts a message naming the feature to float8, so the error reads
``invalid input syntax for type double precision: "pgscore: feature ..."``
(SQLSTATE 22P02).

Not supported (:class:`SqlUnsupported`, with the reason): value-level
imputers (most_frequent / constant before any float conversion) and
categories that are None/NaN (whether pandas turns a NULL into NaN there
depends on the whole batch's dtype, which a per-row expression cannot
know), one-hot encoding of numeric columns or of values of another type,
transforms of text columns into numbers, columns of other types, and any
manifest kind this module does not know.

Known, documented differences: PostgreSQL raises 'value out of range' for
float8 overflow/underflow inside arithmetic where numpy would saturate
(reachable only with values near 1e±300, not with the reference table's
numeric(10,2)/numeric(12,2)/integer columns), and the linear sum runs left
to right where BLAS may sum in another order (about 1e-16).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable, Mapping

import numpy as np

from .compiled import NAN_KEY, decode_value

__all__ = ["SqlUnsupported", "PROFILE_COLUMN_TYPES", "to_sql", "sql_function"]


class SqlUnsupported(Exception):
    """The compiled model cannot be expressed exactly in plain SQL; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


#: Column types of the reference ``public.customer_profiles`` (DESIGN.md), with typmods.
PROFILE_COLUMN_TYPES: dict[str, str] = {
    "customer_id": "bigint",
    "gender": "text",
    "senior_citizen": "boolean",
    "partner": "boolean",
    "dependents": "boolean",
    "tenure_months": "integer",
    "phone_service": "boolean",
    "multiple_lines": "text",
    "internet_service": "text",
    "online_security": "text",
    "online_backup": "text",
    "device_protection": "text",
    "tech_support": "text",
    "streaming_tv": "text",
    "streaming_movies": "text",
    "contract": "text",
    "paperless_billing": "boolean",
    "payment_method": "text",
    "monthly_charges": "numeric(10,2)",
    "total_charges": "numeric(12,2)",
    "complaint_count": "integer",
    "churn_score": "double precision",
    "churn_model_id": "bigint",
}

#: The exponent of the logistic link is clamped to +-this (exp() in PostgreSQL raises beyond ~708).
EXP_CLAMP = 700.0

_IDENT = re.compile(r"[a-z_][a-z0-9_$]*\Z")
_INT_BITS = {"smallint": 16, "integer": 32, "bigint": 64}


def to_sql(
    compiled: Any,
    alias: str = "p",
    *,
    column_types: Mapping[str, str] | None = None,
    invalid: str = "null",
    reject: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> str:
    """One SQL expression (double precision): P(class 1) of the row ``alias``.

    ``column_types`` maps feature names to their PostgreSQL types as
    ``format_type(atttypid, atttypmod)`` spells them (default: the
    reference table, :data:`PROFILE_COLUMN_TYPES`); numeric typmods make
    tree splits plain numeric comparisons. ``invalid`` is 'null' or
    'raise': what a row gets that the Python evaluator rejects. ``reject``,
    when given, replaces both: a SQL template with a ``{message}``
    placeholder (a text expression naming the feature and the value), e.g.
    ``scoring._score_rejected(7, p.customer_id, {message}, 'raise')``.
    ``overrides`` maps a feature to the SQL that stands for it instead of
    ``alias.feature`` (the complaint trigger scores complaint_count as it
    will be after the insert).

    Raises SqlUnsupported for anything it cannot express exactly.
    """
    if invalid not in ("null", "raise"):
        raise ValueError(f"invalid must be 'null' or 'raise', not {invalid!r}")
    if reject is not None and "{message}" not in reject:
        raise ValueError("reject must contain a {message} placeholder")
    return _Generator(compiled.manifest, compiled.arrays, alias, column_types or PROFILE_COLUMN_TYPES, invalid,
                      reject, overrides or {}).build()


def sql_function(
    compiled: Any,
    name: str,
    *,
    column_types: Mapping[str, str] | None = None,
    invalid: str = "null",
    pin_search_path: bool = False,
) -> str:
    """``CREATE OR REPLACE FUNCTION scoring.<name>(p public.customer_profiles)`` for :func:`to_sql`.

    LANGUAGE sql, IMMUTABLE, PARALLEL SAFE, with a SQL-standard body
    (``RETURN ...``, PostgreSQL 14+): names in it are resolved when the
    statement runs, so run it with a safe search_path (pg_catalog first).
    ``pin_search_path`` adds ``SET search_path = pg_catalog, pg_temp``;
    PostgreSQL never inlines a function that has a SET clause, so
    ``pin_search_path=False`` gives a function the planner inlines into the
    calling query; the body is already bound, so the SET adds no safety to
    a SQL-standard body. Not inlined, PostgreSQL sets the whole expression
    up again on every call: scoring 3,000 profiles took about 1 s instead
    of 40 ms for the 100-tree GradientBoosting demo model, and 37 s
    instead of 0.3 s for the 100-tree RandomForest (PostgreSQL 15, jit off).
    """
    expression = to_sql(compiled, "p", column_types=column_types, invalid=invalid)
    setting = "SET search_path = pg_catalog, pg_temp\n" if pin_search_path else ""
    source = compiled.manifest.get("source", {})
    comment = " ".join(f"pgscore plain-SQL scoring of {source.get('estimator', 'a compiled model')}".split())
    return (
        f"CREATE OR REPLACE FUNCTION scoring.{_quote_ident(name)}(p public.customer_profiles)\n"
        "RETURNS double precision\n"
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE\n"
        f"{setting}"
        f"-- {comment}\n"
        f"RETURN {expression};\n"
    )


# -- SQL text helpers ----------------------------------------------------------

def _quote_ident(name: str) -> str:
    if _IDENT.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    if "\x00" in text:
        raise SqlUnsupported(f"category {text!r} contains a NUL character")
    return "'" + text.replace("'", "''") + "'"


def _f8(value: float) -> str:
    """A float8 constant that reads back as exactly ``value``."""
    value = float(value)
    if math.isnan(value):
        return "'NaN'::float8"
    if math.isinf(value):
        return "'Infinity'::float8" if value > 0 else "'-Infinity'::float8"
    return f"'{value!r}'::float8"


# -- doubles as ordered integer keys (for the exact threshold inversion) -----

_SIGN = np.uint64(1 << 63)
_MAG = np.uint64((1 << 63) - 1)


def _keys(x: np.ndarray) -> np.ndarray:
    """uint64 keys ordered as the doubles are (-0.0 and 0.0 share a key)."""
    bits = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
    negative = (bits & _SIGN) != 0
    mag = bits & _MAG
    with np.errstate(over="ignore"):
        return np.where(negative, _SIGN - mag, _SIGN + mag)


def _doubles(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.uint64)
    negative = keys < _SIGN
    with np.errstate(over="ignore"):
        bits = np.where(negative, (_SIGN - keys) | _SIGN, keys - _SIGN)
    return bits.view(np.float64)


_KEY_MIN = int(_keys(np.array([-math.inf]))[0])
_KEY_MAX = int(_keys(np.array([math.inf]))[0])


def _largest_true(pred: Callable[[np.ndarray], np.ndarray], n: int) -> np.ndarray:
    """Per problem, the largest double x (-inf..inf) with pred(x) true; NaN if none.

    ``pred`` maps an array of n doubles (one per problem) to n booleans and
    must be monotone per problem: true, then false, in the doubles' order.
    """
    lo = np.full(n, _KEY_MIN - 1, dtype=np.uint64)  # virtually true
    hi = np.full(n, _KEY_MAX + 1, dtype=np.uint64)  # virtually false
    while True:
        active = hi - lo > 1
        if not active.any():
            break
        mid = lo + (hi - lo) // np.uint64(2)
        ok = pred(_doubles(mid))
        lo = np.where(active & ok, mid, lo)
        hi = np.where(active & ~ok, mid, hi)
    out = _doubles(np.maximum(lo, np.uint64(_KEY_MIN)))
    out[lo < np.uint64(_KEY_MIN)] = math.nan
    return out


# -- columns -------------------------------------------------------------------

@dataclass(frozen=True)
class _Column:
    """A profile column as the Python evaluator sees it (numeric read as float8)."""

    name: str
    ref: str  # alias.column
    kind: str  # text | bool | int | num
    int_bits: int = 0
    precision: int | None = None  # numeric(p, s) with a usable typmod
    scale: int | None = None

    @property
    def missing_sql(self) -> str:
        """TRUE for a missing value (NULL, or NaN where the type has one), never NULL."""
        if self.kind == "num":
            return f"({self.ref} IS NULL OR {self.ref} = 'NaN')"
        return f"{self.ref} IS NULL"

    def domain(self) -> tuple[float, float]:
        """Smallest and largest non-missing value as a Python float."""
        if self.kind == "bool":
            return 0.0, 1.0
        if self.kind == "int":
            top = 2 ** (self.int_bits - 1)
            return float(-top), float(top - 1)
        if self.precision is not None:
            top = float(Decimal(10) ** (self.precision - self.scale) - Decimal(10) ** (-self.scale))
            return -top, top
        return -math.inf, math.inf

    def float_sql(self) -> str:
        """The value as float8, as the evaluator converts it."""
        if self.kind == "bool":
            return f"{self.ref}::int::float8"
        return f"{self.ref}::float8"


def _parse_column(name: str, type_name: str, alias: str, ref: str | None = None) -> _Column:
    ref = ref or f"{alias}.{_quote_ident(name)}"
    t = type_name.strip().lower()
    if t in ("text", "character varying") or t.startswith("character varying("):
        return _Column(name, ref, "text")
    if t == "boolean":
        return _Column(name, ref, "bool")
    if t in _INT_BITS:
        return _Column(name, ref, "int", int_bits=_INT_BITS[t])
    if t in ("real", "double precision", "numeric"):
        return _Column(name, ref, "num")
    m = re.fullmatch(r"numeric\(\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?\)", t)
    if m:
        precision, scale = int(m.group(1)), int(m.group(2) or 0)
        if precision - scale <= 300:  # its values stay far inside float8's range
            return _Column(name, ref, "num", precision=precision, scale=scale)
        return _Column(name, ref, "num")
    raise SqlUnsupported(f"feature {name!r} has type {type_name}, which the SQL generator does not handle")


@dataclass
class _Cut:
    """The test "x <= x*" over the non-missing values of a column, as SQL.

    ``const`` is True/False when the answer is the same for every
    non-missing value; otherwise ``le`` is TRUE exactly for the values
    <= x* and ``gt`` exactly for the values > x* (both NULL for NULL and
    FALSE for NaN).
    """

    const: bool | None
    le: str = ""
    gt: str = ""


def _cut(column: _Column, xstar: float) -> _Cut:
    if math.isnan(xstar):
        return _Cut(False)
    low, high = column.domain()
    if xstar >= high:
        return _Cut(True)
    if xstar < low:
        return _Cut(False)
    ref = column.ref
    if column.kind == "bool":
        # Only 0 <= x* < 1 is left: false goes left, true goes right.
        return _Cut(None, le=f"NOT {ref}", gt=ref)
    if column.kind == "int":
        if column.int_bits < 64 or abs(xstar) < 2.0 ** 53:
            k = math.floor(xstar)
            return _Cut(None, le=f"{ref} <= {k}", gt=f"{ref} > {k}")
        lit = _f8(xstar)
        return _Cut(None, le=f"{ref}::float8 <= {lit}", gt=f"{ref}::float8 > {lit}")
    if column.precision is not None:
        lit = _decimal_cut(xstar, column.scale)
        return _Cut(None, le=f"{ref} <= {lit}", gt=f"({ref} > {lit} AND {ref} <> 'NaN')")
    lit = _f8(xstar)
    return _Cut(None, le=f"{ref}::float8 <= {lit}", gt=f"({ref}::float8 > {lit} AND {ref} <> 'NaN')")


def _decimal_cut(xstar: float, scale: int) -> str:
    """The largest decimal d with ``scale`` digits whose float8 value is <= x*, as SQL text.

    float8(d) rounds to nearest, ties to even: float8(d) <= x* exactly when
    d < m, or d == m and the tie goes to x*, m being the midpoint between x*
    and the next double up.
    """
    up = math.nextafter(xstar, math.inf)
    mid = (Fraction(xstar) + Fraction(up)) / 2
    step = Fraction(10) ** (-scale)
    q = math.floor(mid / step)
    tie_goes_up = (int(np.array(xstar, dtype=np.float64).view(np.uint64)) & 1) == 1 and xstar != 0.0
    if q * step == mid and tie_goes_up:
        q -= 1
    return format(Decimal(q).scaleb(-scale), "f")


# -- the model's inputs ----------------------------------------------------------

@dataclass
class _NumFeature:
    column: _Column
    ops: list[tuple[str, float]]  # fill / sub / div, in pipeline order

    def transform(self, x: np.ndarray) -> np.ndarray:
        """What the evaluator computes from raw values (float64; NaN is missing)."""
        v = np.array(x, dtype=np.float64)
        with np.errstate(all="ignore"):
            for code, c in self.ops:
                if code == "fill":
                    v = np.where(np.isnan(v), c, v)
                elif code == "sub":
                    v = v - c
                else:
                    v = v / c
        return v


@dataclass
class _HotColumn:
    column: _Column
    step: str
    table: list[tuple[Any, int]]  # (category, model column or -1 if dropped)
    unknown: str  # ignore | error

    def is_sql(self, value: Any) -> str:
        """TRUE when the column holds this category (NULL when the column is NULL)."""
        ref = self.column.ref
        if self.column.kind == "bool":
            return ref if value else f"NOT {ref}"
        if self.column.kind == "int":
            return f"{ref} = {int(value)}"
        return f"{ref} = {_quote_literal(value)}"

    def literal(self, value: Any) -> str:
        if self.column.kind == "bool":
            return "true" if value else "false"
        if self.column.kind == "int":
            return str(int(value))
        return _quote_literal(value)


def _hot_table(column: _Column, spec: Mapping[str, Any]) -> list[tuple[Any, int]]:
    step = spec["step"]
    if spec["fills"]:
        raise SqlUnsupported(
            f"feature {column.name!r}: a most_frequent/constant SimpleImputer before the OneHotEncoder "
            f"in step {step!r} treats NULL as missing or not depending on the whole batch's pandas dtype, "
            "which a per-row SQL expression cannot know"
        )
    table = []
    for tagged, out in zip(spec["categories"], spec["outputs"]):
        value = decode_value(tagged)
        if value is None or value is NAN_KEY:
            raise SqlUnsupported(
                f"feature {column.name!r}: the OneHotEncoder in step {step!r} has a missing-value category; "
                "whether a NULL matches it depends on the whole batch's pandas dtype"
            )
        kind = column.kind
        if kind == "text":
            if type(value) is not str:
                continue  # a text value never equals a number or a bool
        elif kind == "bool":
            if type(value) is not bool:
                raise SqlUnsupported(f"feature {column.name!r}: boolean column one-hot encoded with {value!r}")
        elif kind == "int":
            if type(value) is not int:
                raise SqlUnsupported(f"feature {column.name!r}: integer column one-hot encoded with {value!r}")
            top = 2 ** (column.int_bits - 1)
            if not -top <= value < top:
                continue  # the column cannot hold it
        else:
            raise SqlUnsupported(
                f"feature {column.name!r}: one-hot encoding a {kind} column is not supported by the SQL generator"
            )
        table.append((value, int(out)))
    return table


# -- the generator -------------------------------------------------------------------

_LEFT, _RIGHT, _ANY = "L", "R", "X"


class _Generator:
    def __init__(self, manifest: Mapping[str, Any], arrays: Mapping[str, np.ndarray], alias: str,
                 column_types: Mapping[str, str], invalid: str, reject: str | None = None,
                 overrides: Mapping[str, str] | None = None):
        if manifest.get("format") != "pgscore-compiled":
            raise SqlUnsupported(f"not a compiled pgscore model: format {manifest.get('format')!r}")
        if manifest.get("format_version") != 1:
            raise SqlUnsupported(f"compiled format version {manifest.get('format_version')!r} is not known here")
        self.arrays = arrays
        self.invalid = invalid
        self.reject = reject
        self.alias = _quote_ident(alias)
        overrides = overrides or {}
        names = [str(n) for n in manifest["feature_names"]]
        columns = []
        for name in names:
            if name not in column_types:
                raise SqlUnsupported(f"feature {name!r} is not a column of public.customer_profiles")
            columns.append(_parse_column(name, column_types[name], self.alias, overrides.get(name)))
        transform = manifest["transform"]
        if transform.get("dtype_checks"):
            raise SqlUnsupported(
                "a most_frequent/constant SimpleImputer accepts or refuses a batch by its pandas dtypes, "
                "which a per-row SQL expression cannot reproduce"
            )
        self.n_outputs = int(transform["n_outputs"])
        self.outputs: list[Any] = [None] * self.n_outputs  # _NumFeature | (_HotColumn, category)
        self.numeric: list[_NumFeature] = []
        for block in transform["numeric"]:
            if block["fills"]:
                raise SqlUnsupported(
                    f"step {block['step']!r}: a most_frequent/constant SimpleImputer on numbers treats NULL "
                    "as missing or not depending on the whole batch's pandas dtype"
                )
            op_values = [(code, np.asarray(arrays[array], dtype=np.float64)) for code, array in block["ops"]]
            for k, (source, out) in enumerate(zip(block["inputs"], block["outputs"])):
                column = columns[int(source)]
                if column.kind == "text":
                    raise SqlUnsupported(
                        f"feature {column.name!r}: a text column turned into a number (step {block['step']!r})"
                    )
                ops = []
                for code, values in op_values:
                    if code not in ("fill", "sub", "div"):
                        raise SqlUnsupported(f"unknown numeric operation {code!r}")
                    value = float(values[k])
                    if code == "sub" and not math.isfinite(value):
                        raise SqlUnsupported(f"feature {column.name!r}: non-finite offset {value!r}")
                    if code == "div" and not (math.isfinite(value) and value > 0):
                        raise SqlUnsupported(f"feature {column.name!r}: scale {value!r} is not positive and finite")
                    ops.append((code, value))
                feature = _NumFeature(column, ops)
                self.numeric.append(feature)
                self.outputs[int(out)] = feature
        self.hot: list[_HotColumn] = []
        for spec in transform["onehot"]:
            column = columns[int(spec["input"])]
            if spec["unknown"] not in ("ignore", "error"):
                raise SqlUnsupported(f"unknown handle_unknown {spec['unknown']!r}")
            hot = _HotColumn(column, spec["step"], _hot_table(column, spec), spec["unknown"])
            self.hot.append(hot)
            for value, out in hot.table:
                if out >= 0:
                    self.outputs[out] = (hot, value)
        if any(o is None for o in self.outputs):
            raise SqlUnsupported("the compiled transform does not cover every model column")
        self.model = manifest["model"]
        kind = self.model.get("kind")
        if kind == "linear":
            if self.model.get("link") not in ("logistic", "modified_huber"):
                raise SqlUnsupported(f"unknown link {self.model.get('link')!r}")
            self.cast32, self.allow_inf, self.route = False, False, False
        elif kind == "trees":
            if self.model.get("combine") not in ("average", "boosting", "hist_boosting"):
                raise SqlUnsupported(f"unknown tree combination {self.model.get('combine')!r}")
            self.cast32 = bool(self.model["cast_float32"])
            self.allow_inf = bool(self.model["allow_inf"])
            self.route = self.model["missing"] == "route"
        else:
            raise SqlUnsupported(f"model kind {kind!r} is not supported by the SQL generator")
        self.estimator = str(self.model.get("estimator", kind))

    # -- what the model sees -------------------------------------------------------

    def _seen(self, v: np.ndarray) -> np.ndarray:
        """The transformed value as the model compares it (float32-rounded for sklearn trees)."""
        if self.cast32:
            with np.errstate(over="ignore"):
                return v.astype(np.float32).astype(np.float64)
        return v

    def _missing(self, feature: _NumFeature) -> tuple[str, float]:
        """('value', w) when a missing input becomes w, ('route', nan) or ('invalid', nan)."""
        w = float(self._seen(feature.transform(np.array([math.nan])))[0])
        if math.isnan(w):
            return ("route", w) if self.route else ("invalid", w)
        if math.isinf(w) and not self.allow_inf:
            return "invalid", w
        return "value", w

    # -- validity guard -------------------------------------------------------------

    def _guards(self) -> list[tuple[str, str]]:
        """(condition, message SQL) per way a row can be rejected by the Python evaluator."""
        guards = []
        for hot in self.hot:
            if hot.unknown != "error":
                continue
            ref = hot.column.ref
            known = [hot.literal(v) for v, _ in hot.table]
            if hot.column.kind == "bool":
                values = {v for v, _ in hot.table}
                cond = f"{ref} IS NULL" + ("" if True in values else f" OR {ref}") + ("" if False in values else f" OR NOT {ref}")
            elif known:
                cond = f"{ref} IS NULL OR {ref} NOT IN ({', '.join(known)})"
            else:
                cond = "true"
            message = (
                f"'pgscore: feature ''{_quote_literal(hot.column.name)[1:-1]}'': unknown category ' || "
                f"pg_catalog.quote_nullable({ref}::text) || "
                f"' (OneHotEncoder in step {_quote_literal(hot.step)[1:-1]}: handle_unknown=''error'')'"
            )
            guards.append((cond, message))
        for feature in self.numeric:
            column = feature.column
            name = _quote_literal(column.name)[1:-1]
            status, _ = self._missing(feature)
            if status == "invalid":
                guards.append((
                    column.missing_sql,
                    f"'pgscore: feature ''{name}'': value ' || pg_catalog.quote_nullable({column.ref}::text) || "
                    f"' is missing and {self.estimator} does not accept missing values here'",
                ))
            if self.allow_inf:
                # SimpleImputer and StandardScaler refuse infinite input
                # (ensure_all_finite='allow-nan') before the model sees it.
                if feature.ops and column.kind == "num" and column.precision is None:
                    guards.append((
                        f"({column.ref} = 'Infinity' OR {column.ref} = '-Infinity')",
                        f"'pgscore: feature ''{name}'': value ' || pg_catalog.quote_nullable({column.ref}::text) || "
                        "' is infinite, which the pipeline''s SimpleImputer/StandardScaler refuses'",
                    ))
                continue
            # The valid non-missing values form an interval (the transform is monotone).
            seen = lambda x: self._seen(feature.transform(x))  # noqa: E731
            below = _largest_true(lambda x: seen(x) == -math.inf, 1)[0]  # largest x mapped to -inf
            top = _largest_true(lambda x: seen(x) < math.inf, 1)[0]  # largest x mapped below +inf
            conds = []
            low_cut = _cut(column, below)
            if low_cut.const is True:
                conds.append("true")
            elif low_cut.const is None:
                conds.append(low_cut.le)
            high_cut = _cut(column, top)
            if high_cut.const is False:
                conds.append(f"NOT {column.missing_sql}")
            elif high_cut.const is None:
                conds.append(high_cut.gt)
            if conds:
                guards.append((
                    " OR ".join(f"({c})" for c in conds),
                    f"'pgscore: feature ''{name}'': value ' || pg_catalog.quote_nullable({column.ref}::text) || "
                    f"' is infinite or too large for {self.estimator}'",
                ))
        return guards

    def build(self) -> str:
        body = self._linear() if self.model["kind"] == "linear" else self._trees()
        guards = self._guards()
        if not guards:
            return body
        if self.reject is not None:
            whens = "\n".join(f"  WHEN {c}\n    THEN {self.reject.format(message=m)}" for c, m in guards)
            return f"CASE\n{whens}\nELSE\n{body}\nEND"
        if self.invalid == "null":
            conds = "\n  OR ".join(f"({c})" for c, _ in guards)
            return f"CASE WHEN {conds}\n  THEN NULL::float8\nELSE\n{body}\nEND"
        # Each message names the row's value: a constant would be cast (and
        # raise) when the function is created or planned, not when it runs.
        whens = "\n".join(f"  WHEN {c}\n    THEN ({m})::float8" for c, m in guards)
        return f"CASE\n{whens}\nELSE\n{body}\nEND"

    # -- linear -----------------------------------------------------------------------

    def _numeric_sql(self, feature: _NumFeature) -> str:
        column = feature.column
        status, _ = self._missing(feature)
        expr = column.float_sql()
        if status == "value" and column.kind == "num":
            expr = f"NULLIF({expr}, 'NaN'::float8)"
        for code, c in feature.ops:
            if code == "fill":
                if status == "value":
                    expr = f"COALESCE({expr}, {_f8(c)})"
            elif code == "sub":
                expr = f"({expr} - {_f8(c)})"
            else:
                expr = f"({expr} / {_f8(c)})"
        return expr

    def _folded_term(self, feature: _NumFeature, weight: float) -> tuple[str, float] | None:
        """``weight * transform(x)`` as ``a * COALESCE(x, fill)`` plus a constant,
        when the transform is an optional fill then sub/div steps (the usual
        imputer + scaler): fewer operations per row, which PostgreSQL sets up
        again in every statement. Rounds differently from the step-by-step form
        by about 1e-16 (the push-time parity check bounds it by 1e-9)."""
        ops = feature.ops
        fill = None
        if ops and ops[0][0] == "fill":
            fill, ops = ops[0][1], ops[1:]
        if any(code not in ("sub", "div") for code, _ in ops):
            return None
        scale, shift = 1.0, 0.0  # transform(x) = scale * x + shift
        for code, c in ops:
            if code == "sub":
                shift -= c
            else:
                scale, shift = scale / c, shift / c
        a, b = weight * scale, weight * shift
        if not (math.isfinite(a) and math.isfinite(b)):
            return None
        column = feature.column
        status, _ = self._missing(feature)
        x = column.float_sql()
        if status == "value" and column.kind == "num":
            x = f"NULLIF({x}, 'NaN'::float8)"
        if status == "value" and fill is not None:
            x = f"COALESCE({x}, {_f8(fill)})"
        return f"{_f8(a)} * {x}", b

    def _linear(self) -> str:
        coef = np.asarray(self.arrays["coef"], dtype=np.float64).reshape(-1)
        intercept = float(np.asarray(self.arrays["intercept"], dtype=np.float64).reshape(-1)[0])
        if coef.shape[0] != self.n_outputs:
            raise SqlUnsupported("coefficient count does not match the transform")
        terms = []
        for j, feature in enumerate(self.outputs):
            if isinstance(feature, _NumFeature) and coef[j] != 0.0:
                folded = self._folded_term(feature, float(coef[j]))
                if folded is None:
                    terms.append(f"{_f8(float(coef[j]))} * {self._numeric_sql(feature)}")
                else:
                    terms.append(folded[0])
                    intercept += folded[1]
        for hot in self.hot:
            whens = [
                f"WHEN {hot.literal(v)} THEN {_f8(float(coef[out]))}"
                for v, out in hot.table
                if out >= 0 and coef[out] != 0.0
            ]
            if whens:
                terms.append(f"CASE {hot.column.ref} " + " ".join(whens) + " ELSE 0::float8 END")
        z = "\n    + ".join(terms + [_f8(intercept)])
        z = f"(\n    {z}\n  )"
        if self.model["link"] == "logistic":
            return (
                f"1::float8 / (1::float8 + pg_catalog.exp(LEAST(GREATEST(-{z}, "
                f"{_f8(-EXP_CLAMP)}), {_f8(EXP_CLAMP)})))"
            )
        return f"(LEAST(GREATEST({z}, -1::float8), 1::float8) + 1::float8) / 2::float8"

    # -- trees ------------------------------------------------------------------------

    def _trees(self) -> str:
        a = self.arrays
        feature = np.asarray(a["tree_feature"], dtype=np.int64)
        threshold = np.asarray(a["tree_threshold"], dtype=np.float64)
        left = np.asarray(a["tree_left"], dtype=np.int64)
        right = np.asarray(a["tree_right"], dtype=np.int64)
        missing_left = np.asarray(a["tree_missing_left"], dtype=bool)
        value = np.asarray(a["tree_value"], dtype=np.float64)
        roots = np.asarray(a["tree_roots"], dtype=np.int64).tolist()
        init = float(np.asarray(a["init"]).reshape(()))
        rate = float(np.asarray(a["learning_rate"]).reshape(()))
        combine = self.model["combine"]
        n_nodes = feature.shape[0]
        if (feature >= self.n_outputs).any():
            raise SqlUnsupported("tree arrays refer to a model column that does not exist")

        # Per inner node: SQL condition pieces and where missing values go.
        cuts: dict[int, _Cut] = {}
        missing_dir: dict[int, str] = {}
        for j in sorted(set(feature[feature >= 0].tolist())):
            nodes = np.flatnonzero(feature == j)
            out = self.outputs[j]
            t = threshold[nodes]
            if isinstance(out, _NumFeature):
                status, w = self._missing(out)
                xs = _largest_true(lambda x, t=t, out=out: self._seen(out.transform(x)) <= t, len(nodes))
                for k, node in enumerate(nodes.tolist()):
                    cuts[node] = _cut(out.column, float(xs[k]))
                    if status == "value":
                        missing_dir[node] = _LEFT if w <= t[k] else _RIGHT
                    elif status == "route":
                        missing_dir[node] = _LEFT if missing_left[node] else _RIGHT
                    else:
                        missing_dir[node] = _ANY
            else:
                hot, category = out
                one = self._seen(np.array([1.0]))[0]
                zero = self._seen(np.array([0.0]))[0]
                for k, node in enumerate(nodes.tolist()):
                    left1, left0 = bool(one <= t[k]), bool(zero <= t[k])
                    if left1 == left0:
                        cuts[node] = _Cut(left1)
                    elif left0:  # the category goes right
                        cuts[node] = _Cut(None, le=f"NOT ({hot.is_sql(category)})", gt=hot.is_sql(category))
                    else:
                        raise SqlUnsupported("a split sends 1 left and 0 right (thresholds are not monotone)")
                    # A NULL (or unknown) category is a 0: it goes with the others.
                    missing_dir[node] = _LEFT if left0 else _RIGHT

        scale = rate if combine == "boosting" else 1.0

        def leaf(node: int) -> str:
            return _f8(scale * float(value[node]) if combine == "boosting" else float(value[node]))

        def emit(node: int, depth: int) -> str:
            if depth > 200:
                raise SqlUnsupported("a tree deeper than 200 levels")
            if not 0 <= node < n_nodes:
                raise SqlUnsupported("tree arrays are inconsistent")
            if feature[node] < 0:
                return leaf(node)
            cut = cuts[node]
            md = missing_dir[node]
            if cut.const is not None:
                direction = _LEFT if cut.const else _RIGHT
                chosen = emit(int(left[node] if cut.const else right[node]), depth + 1)
                if md in (_ANY, direction):
                    return chosen
                other = emit(int(left[node] if md == _LEFT else right[node]), depth + 1)
                column = self.outputs[int(feature[node])].column
                return _case(column.missing_sql, other, chosen, depth)
            lsql = emit(int(left[node]), depth + 1)
            rsql = emit(int(right[node]), depth + 1)
            if lsql == rsql:
                return lsql
            if md == _LEFT:
                return _case(cut.gt, rsql, lsql, depth)
            return _case(cut.le, lsql, rsql, depth)

        trees = [emit(int(r), 1) for r in roots]
        if not trees:
            raise SqlUnsupported("an ensemble without trees")
        joined = "\n  + ".join(trees)
        if combine == "average":
            return f"(\n  {joined}\n  ) / {_f8(float(len(trees)))}"
        raw = f"(\n  {_f8(init)}\n  + {joined}\n  )"
        return (
            f"1::float8 / (1::float8 + pg_catalog.exp(LEAST(GREATEST(-{raw}, "
            f"{_f8(-EXP_CLAMP)}), {_f8(EXP_CLAMP)})))"
        )


def _case(condition: str, then: str, otherwise: str, depth: int) -> str:
    if "\n" not in then and "\n" not in otherwise and len(then) + len(otherwise) + len(condition) < 120:
        return f"CASE WHEN {condition} THEN {then} ELSE {otherwise} END"
    pad = "  " * depth
    return f"CASE WHEN {condition}\n{pad}  THEN {then}\n{pad}  ELSE {otherwise}\n{pad}END"
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.sqlpath', $pgscore_source$"""Generated PL/pgSQL for the active churn model: the complaint trigger, and
for the 'sql' path score(bigint) and score_many.

A PL/Python call costs tens of microseconds before any scoring starts
(argument and result conversion, the Python frame, SPI round trips); a
small model written as one SQL expression costs a few. For an active churn
model with a compiled form, :func:`install` therefore replaces PL/pgSQL
functions with versions that have the model written in:

- ``scoring._on_complaints_inserted()``, the statement-level complaint
  trigger. One customer (the usual statement): one UPDATE that grows the
  counter and scores in the same row version, with the model's SQL
  expression ('sql' path, short expressions) or a call of
  ``scoring._score_profile`` (Python scores only; no SPI round trips), for
  'compiled' models and for 'sql' models whose expression is long:
  PostgreSQL sets an expression up anew in every statement, about 3.5 us
  per 1,000 characters here, where the Python call costs about 60 us.
  Several customers: for 'sql' models, a lock of the profiles in
  customer_id order (no deadlocks between concurrent inserts), then one
  UPDATE with the expression; for 'compiled' ones the vectorised Python
  path (``scoring._score_new_complaints``).
- ``scoring.score(bigint)`` and ``scoring.score_many(ids)`` for a 'sql'
  model: no Python in the backend at all. A long expression's batches
  (score_many, rescore) are scored with the compiled arrays in Python
  instead (BATCH_SQL_MAX_CHARS).

The SQL is generated here, in the database, from the model's compiled
arrays (numbers and quoted category literals only), never taken from text
a loader supplied: these functions run as the schema owner. Every other
model gets the Python path back (``scoring._install_scoring_functions()``
in sql/idempotent/050-complaint-trigger.sql writes it first, then calls
:func:`install` for models with a compiled form); the triggers on
scoring.deployments and scoring.models call it whenever the active model
or its path changes, in the same transaction.
"""

from __future__ import annotations

from . import catalog, plans, registry
from .errors import NOT_IN_PREREQUISITE_STATE, ScoringError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

REJECT = "scoring._score_rejected({model_id}, p.customer_id, {{message}}, {mode})"

# Each generated function: PL/pgSQL, run as the owner with a pinned search_path.
FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION {signature}
RETURNS {returns}
LANGUAGE plpgsql
{attributes}SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
{settings}AS {body}
"""
TRIGGER_SIGNATURE = dict(signature="scoring._on_complaints_inserted()", returns="trigger", attributes="",
                         settings="")

TRIGGER_BODY = """
-- Generated by pgscore_server.sqlpath for model_id {model_id} (scoring_path '{path}').
DECLARE
    v_first bigint;
    v_last bigint;
    v_rows integer;
BEGIN
    SELECT min(customer_id), max(customer_id), count(*)::int INTO v_first, v_last, v_rows
      FROM new_complaints;
    IF v_first = v_last THEN
        UPDATE public.customer_profiles p
           SET complaint_count = p.complaint_count + v_rows,
               {one}
         WHERE p.customer_id = v_first;
    ELSIF v_rows > 0 THEN
{many}
    END IF;
    RETURN NULL;
END
"""
MANY_IN_SQL = """\
        -- Lock in customer_id order: concurrent multi-customer inserts cannot deadlock.
        PERFORM FROM public.customer_profiles p
          WHERE p.customer_id IN (SELECT customer_id FROM new_complaints)
          ORDER BY p.customer_id FOR NO KEY UPDATE OF p;
        UPDATE public.customer_profiles p
           SET complaint_count = p.complaint_count + c.n,
               {assign}
          FROM (SELECT customer_id, count(*)::int AS n FROM new_complaints GROUP BY customer_id) c
         WHERE p.customer_id = c.customer_id;"""
MANY_IN_PYTHON = """\
        PERFORM scoring._score_new_complaints(array_agg(customer_id)) FROM new_complaints;"""

# Longer expressions score one customer faster through scoring._score_profile (module docstring).
SQL_ONE_ROW_MAX_CHARS = 16_000
# complaint_count as it will be after the statement, in the one-customer branch.
ONE_CUSTOMER_COUNT = "(p.complaint_count + v_rows)"

SCORE_SIGNATURE = dict(signature="scoring.score(customer_id bigint)", returns="double precision",
                       attributes="STABLE STRICT\n", settings="")

SCORE_BODY = """
-- Generated by pgscore_server.sqlpath for model_id {model_id} (scoring_path 'sql').
DECLARE
    v_score double precision;
BEGIN
    SELECT {expression} INTO v_score FROM public.customer_profiles p WHERE p.customer_id = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no customer profile with customer_id %', $1
            USING ERRCODE = 'no_data_found', HINT = 'check the id against public.customer_profiles';
    END IF;
    RETURN v_score;
END
"""

# The score columns' assignments. A model that rejects some rows (NULL or an
# unknown category where the pipeline has no imputer or ignores nothing), and
# scoring._score_profile under scoring.on_error = 'keep', keep the old score
# and its provenance for them; the score is computed once, in a subquery. An
# expression with no rejecting branch is never NULL and is assigned
# directly, which is cheaper.
ASSIGN_TOTAL = "churn_score = {expression}, churn_model_id = {model_id}, churn_scored_at = now()"
ASSIGN_GUARDED = """(churn_score, churn_model_id, churn_scored_at) = (
                   SELECT coalesce(s.score, p.churn_score),
                          CASE WHEN s.score IS NULL THEN p.churn_model_id ELSE {model_id} END,
                          CASE WHEN s.score IS NULL THEN p.churn_scored_at ELSE now() END
                     FROM (SELECT {expression} AS score OFFSET 0) s)"""

# score_many's query, run by EXECUTE so that it is planned for the array at
# hand (never as a generic plan): one join in input order.
SCORE_MANY_JOIN = """\
SELECT u.customer_id, {expression}
  FROM unnest($1) WITH ORDINALITY AS u(customer_id, ord)
  JOIN public.customer_profiles p ON p.customer_id = u.customer_id
 ORDER BY u.ord"""
# ... and for every id from $1 to $2 in ascending order, the usual "score
# them all": a walk of the primary key, without the join and the sort that
# put the scores in input order (1M profiles, the demo LR: 1.32-1.34 s
# against 3.37-3.89 s, plus ~0.17 s to see that the ids are such a range).
SCORE_MANY_RANGE = """\
SELECT p.customer_id, {expression}
  FROM public.customer_profiles p
 WHERE p.customer_id BETWEEN $1 AND $2
 ORDER BY p.customer_id"""
# A longer expression scores batches (score_many, rescore) slower than the
# compiled arrays in Python: PostgreSQL evaluates every split of it in its
# expression interpreter (~10 us per profile for the 100-tree demo GBM,
# 68 kB). Side by side on 1M profiles the GBM's score_many took 7.2-8.1 s
# through Python against 9.2-12.1 s as SQL in parallel workers, and its
# rescore 14.8-16.8 s against 20.8-23.0 s. Such a model keeps its SQL where
# one statement's set-up is shared by many rows (the trigger's
# multi-customer branch: a bulk insert of 100k complaints took 4.6-6.6 s
# against 6.8-7.5 s) and in score(bigint), which imports no Python.
BATCH_SQL_MAX_CHARS = 16_000

# jit = off: LLVM compiling a large model's expression costs more than it saves.
SCORE_MANY_SIGNATURE = dict(signature="scoring.score_many(customer_ids bigint[], model_name text DEFAULT 'churn')",
                            returns="TABLE (customer_id bigint, score double precision)",
                            attributes="STABLE\n", settings="SET jit = off\n")

SCORE_MANY_BODY = """
-- Generated by pgscore_server.sqlpath for model_id {model_id} (scoring_path 'sql').
#variable_conflict use_column
DECLARE
    v_rows bigint;
    v_count integer := coalesce(cardinality(customer_ids), 0);
    v_missing bigint[];
    v_bits bigint[];
BEGIN
    IF model_name IS DISTINCT FROM 'churn' THEN
        -- Not inside RETURN QUERY, where planning would call it a second time.
        v_bits := scoring._score_bits_py(customer_ids, model_name);
        -- unnest in the select list: the arrays run in lockstep, as in
        -- unnest(a, b), without its tuplestore.
        RETURN QUERY SELECT unnest(customer_ids), scoring._float8_from_bits(unnest(v_bits));
        RETURN;
    END IF;
    IF array_position(customer_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'customer_ids contains NULL'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'remove NULLs, e.g. array_remove(ids, NULL)';
    END IF;
    -- Every id from the first to the last, ascending (numeric: no overflow
    -- for far-apart ids; the array comparison runs only for that many ids).
    IF customer_ids[v_count]::numeric - customer_ids[1] = v_count - 1
       AND customer_ids = ARRAY(SELECT generate_series(customer_ids[1], customer_ids[v_count])) THEN
        RETURN QUERY EXECUTE {range_query} USING customer_ids[1], customer_ids[v_count];
    ELSE
        RETURN QUERY EXECUTE {query} USING customer_ids;
    END IF;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF v_rows < v_count THEN
        v_missing := ARRAY(SELECT DISTINCT u.customer_id FROM unnest(customer_ids) AS u(customer_id)
                            WHERE NOT EXISTS (SELECT FROM public.customer_profiles p
                                               WHERE p.customer_id = u.customer_id)
                            ORDER BY 1);
        RAISE EXCEPTION '%', format('no customer profile with customer_id%s %s%s',
                                    CASE WHEN cardinality(v_missing) > 1 THEN 's' ELSE '' END,
                                    array_to_string(v_missing[1:10], ', '),
                                    CASE WHEN cardinality(v_missing) > 10
                                         THEN format(' and %s more', cardinality(v_missing) - 10) ELSE '' END)
            USING ERRCODE = 'no_data_found', HINT = 'check the id against public.customer_profiles';
    END IF;
END
"""

MODEL_SQL = "SELECT compiled, scoring_path, feature_names FROM scoring.models WHERE model_id = $1"


def expression_for(plpy: Any, cache: dict, model_id: int, *, reject: str | None = None,
                   overrides: dict[str, str] | None = None) -> str:
    """The SQL expression of ``model_id`` over ``p`` (public.customer_profiles).

    Raises ScoringError when the model has no compiled form or SQL cannot
    express it exactly (the reason from the generator).
    """
    evaluator = _evaluator(plpy, cache, model_id, _model_row(plpy, cache, model_id))
    return _to_sql(plpy, cache, model_id, evaluator, reject=reject, overrides=overrides)


def install(plpy: Any, cache: dict, model_id: int) -> str:
    """Writes ``model_id`` into the complaint trigger, and for the 'sql'
    path into score(bigint) and score_many."""
    model_id = int(model_id)
    cache.pop("pgscore.profile_columns", None)  # the profiles may just have been altered in this backend
    row = _model_row(plpy, cache, model_id)
    if row["scoring_path"] == "sql":
        return _install_sql(plpy, cache, model_id, _evaluator(plpy, cache, model_id, row))
    return _install_compiled(plpy, cache, model_id, list(row["feature_names"]))


def _install_sql(plpy: Any, cache: dict, model_id: int, evaluator: Any) -> str:
    def assignments(new_count: str) -> str:
        expression = _to_sql(plpy, cache, model_id, evaluator, reject=REJECT.format(model_id=model_id, mode="NULL"),
                             overrides={"complaint_count": new_count})
        form = ASSIGN_GUARDED if "scoring._score_rejected(" in expression else ASSIGN_TOTAL
        return form.format(expression=expression, model_id=model_id)

    one = assignments(ONE_CUSTOMER_COUNT)
    layout = catalog.row_layout(evaluator.feature_names, catalog.profile_columns(plpy, cache))
    if len(one) > SQL_ONE_ROW_MAX_CHARS and layout is not None:
        one = _python_assignment(plpy, model_id, evaluator.feature_names, layout)
    many = MANY_IN_SQL.format(assign=assignments("(p.complaint_count + c.n)"))
    raising = _to_sql(plpy, cache, model_id, evaluator, reject=REJECT.format(model_id=model_id, mode="'raise'"))
    _write(plpy, TRIGGER_SIGNATURE, TRIGGER_BODY.format(model_id=model_id, path="sql", one=one, many=many))
    _write(plpy, SCORE_SIGNATURE, SCORE_BODY.format(model_id=model_id, expression=raising))
    if len(raising) > BATCH_SQL_MAX_CHARS:
        # score_many stays the Python path that _install_scoring_functions wrote.
        return f"model_id {model_id} scored by generated SQL (batches in Python)"
    query = plpy.quote_literal(SCORE_MANY_JOIN.format(expression=raising))
    range_query = plpy.quote_literal(SCORE_MANY_RANGE.format(expression=raising))
    _write(plpy, SCORE_MANY_SIGNATURE, SCORE_MANY_BODY.format(model_id=model_id, query=query, range_query=range_query))
    return f"model_id {model_id} scored by generated SQL"


def batches_in_sql(plpy: Any, cache: dict, model: registry.LoadedModel) -> str | None:
    """The UPDATE that rescores a batch (an id range) of a 'sql' model, or
    None where the model's batches are scored in Python (BATCH_SQL_MAX_CHARS)."""
    if "rescore" not in model.plan_cache:
        expression = expression_for(plpy, cache, model.model_id,
                                    reject=REJECT.format(model_id=int(model.model_id), mode="'raise'"))
        model.plan_cache["rescore"] = None if len(expression) > BATCH_SQL_MAX_CHARS else (
            "UPDATE public.customer_profiles p"
            f" SET churn_score = {expression}, churn_model_id = {int(model.model_id)}, churn_scored_at = now()"
            " WHERE p.customer_id > $1 AND p.customer_id <= $2"
        )
    return model.plan_cache["rescore"]


def _install_compiled(plpy: Any, cache: dict, model_id: int, feature_names: list[str]) -> str:
    """The trigger of a 'compiled' model. Needs only the feature names: a
    compiled form that cannot be read fails at insert time, under
    scoring.on_error, as on the Python path."""
    columns = catalog.profile_columns(plpy, cache)
    layout = catalog.row_layout(feature_names, columns) if set(feature_names) <= columns.keys() else None
    if layout is None:
        return f"model_id {model_id} scored in Python (a feature is not a profile column of a plain type)"
    one = _python_assignment(plpy, model_id, feature_names, layout)
    _write(plpy, TRIGGER_SIGNATURE,
           TRIGGER_BODY.format(model_id=model_id, path="compiled", one=one, many=MANY_IN_PYTHON))
    return f"model_id {model_id} scored by generated PL/pgSQL calling Python"


def _write(plpy: Any, signature: dict, body: str) -> None:
    # Quoted as one string literal: no dollar tag a category could close.
    plpy.execute(FUNCTION_SQL.format(body=plpy.quote_literal(body), **signature))


def _python_assignment(plpy: Any, model_id: int, feature_names: list[str], layout: str) -> str:
    """The score assignment through scoring._score_profile: the features as
    one array per kind (cheaper to hand to Python than a whole row)."""
    arrays = []
    for letter, kind in catalog.ROW_ARRAYS:
        items = [ONE_CUSTOMER_COUNT if name == "complaint_count" else f"p.{plpy.quote_ident(name)}"
                 for name, used in zip(feature_names, layout) if used == letter]
        arrays.append(f"ARRAY[{', '.join(items)}]::{kind}[]" if items else f"'{{}}'::{kind}[]")
    call = f"scoring._score_profile({model_id}, p.customer_id, '{layout}', {', '.join(arrays)})"
    return ASSIGN_GUARDED.format(expression=call, model_id=model_id)


def _model_row(plpy: Any, cache: dict, model_id: int) -> Any:
    rows = plans.run(plpy, cache, MODEL_SQL, ["bigint"], [model_id])
    if not rows:
        raise ScoringError(f"no model with model_id {model_id}", sqlstate="42704",
                           hint="list the models with: pgscore models")
    return rows[0]


def _evaluator(plpy: Any, cache: dict, model_id: int, row: Any) -> Any:
    """The model's compiled arrays, read and checked against the profile table."""
    if row["compiled"] is None:
        raise ScoringError(f"model_id {model_id} has no compiled form, which the SQL path is written from",
                           sqlstate=NOT_IN_PREREQUISITE_STATE,
                           hint="see path_note in pgscore models for why it could not be compiled")
    evaluator = registry.load_compiled(bytes(row["compiled"]), f"model_id {model_id}")
    catalog.check_features(evaluator.feature_names, catalog.profile_columns(plpy, cache), f"model_id {model_id}")
    return evaluator


def _to_sql(plpy: Any, cache: dict, model_id: int, evaluator: Any, **options: Any) -> str:
    # Imported only to write SQL: sqlgen needs numpy, which a sql-path backend never loads.
    from . import sqlgen

    try:
        return sqlgen.to_sql(evaluator, "p", column_types=catalog.declared_types(plpy, cache), **options)
    except sqlgen.SqlUnsupported as exc:
        raise ScoringError(f"model_id {model_id} cannot be scored by plain SQL: {exc.reason}",
                           sqlstate=NOT_IN_PREREQUISITE_STATE,
                           hint="keep its scoring_path 'compiled'") from None
$pgscore_source$);
INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server.trigger', $pgscore_source$"""The complaint trigger's Python path: counters and fresh scores, once per statement.

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
read only when something failed.

:func:`score_profile` is the other entry: the generated PL/pgSQL trigger
(pgscore_server.sqlpath) locks and updates the profile itself and calls it
from inside its UPDATE for one customer's profile, so Python only scores.
"""

from __future__ import annotations

from collections import Counter

from . import catalog, plans, registry, settings
from .errors import ScoringError, as_scoring_error

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
    "INSERT INTO scoring.errors (model_id, customer_id, sqlstate, message)"
    " SELECT $1, e.customer_id, e.sqlstate, e.message"
    " FROM unnest($2::bigint[], $3::text[], $4::text[]) AS e(customer_id, sqlstate, message)"
    " RETURNING customer_id, error_id"
)
# The client statement this backend is running: transaction and statement start.
STATEMENT_SQL = (
    "SELECT pg_catalog.pg_current_xact_id()::text || ' ' || pg_catalog.statement_timestamp()::text AS statement"
)
STILL_RECORDED_SQL = "SELECT coalesce(array_agg(error_id), '{}') AS kept FROM scoring.errors WHERE error_id = ANY($1)"


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
        active = (
            "(SELECT d.model_id || ':' || m.sha256 || ':' || m.scoring_path FROM scoring.deployments d"
            f" JOIN scoring.models m USING (model_id) WHERE d.name = {plpy.quote_literal(model_name)}"
            " ORDER BY d.deployment_id DESC LIMIT 1)"
        )
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


def _record(plpy: Any, cache: dict, model_id: int | None, failures: dict[int, ScoringError]) -> None:
    failures, recorded = _not_yet_recorded(plpy, cache, model_id, failures)
    if not failures:
        return
    customer_ids = list(failures)
    messages = [failures[customer_id].message for customer_id in customer_ids]
    rows = plans.run(
        plpy, cache, RECORD_ERRORS_SQL, ["bigint", "bigint[]", "text[]", "text[]"],
        [model_id, customer_ids, [failures[c].sqlstate for c in customer_ids], messages],
    )
    recorded.update({(model_id, row["customer_id"]): row["error_id"] for row in rows})
    first = messages[0]
    more = f" (and {len(customer_ids) - 1} more customers)" if len(customer_ids) > 1 else ""
    plpy.warning(
        f"complaint saved but not scored for customer_id {customer_ids[0]}{more}: {first}",
        hint="see scoring.errors; SET scoring.on_error = 'raise' to make such inserts fail instead",
    )


def _not_yet_recorded(plpy: Any, cache: dict, model_id: int | None, failures: dict[int, ScoringError]
                      ) -> tuple[dict[int, ScoringError], dict[tuple[int | None, int], int]]:
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
    earlier = {c: recorded[(model_id, c)] for c in failures if (model_id, c) in recorded}
    if earlier:
        kept = set(plans.run(plpy, cache, STILL_RECORDED_SQL, ["bigint[]"], [list(earlier.values())])[0]["kept"])
        failures = {c: e for c, e in failures.items() if earlier.get(c) not in kept}
    return failures, recorded


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
    if model is not None and model.scoring_path in registry.COMPILED_PATHS:
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

$pgscore_source$);

-- The modules compiled by the server's Python for scoring._load_runtime(),
-- stamped with that interpreter's magic number (bytecode differs between
-- Python versions) and the code sha, checked here against the sources.
DO $compile$
import hashlib
import marshal
from importlib._bootstrap_external import MAGIC_NUMBER

rows = sorted(plpy.execute("SELECT module, source FROM scoring.runtime_modules"), key=lambda row: row["module"])
digest = hashlib.sha256()
for row in rows:  # as pgscore.render.code_sha
    digest.update(row["module"].encode() + b"\0" + row["source"].encode() + b"\0")
if digest.hexdigest() != "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1":
    plpy.error("scoring.runtime_modules does not hold the code this migration installs",
               hint="run the migration again")
stamp = MAGIC_NUMBER + b"66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1"
store = plpy.prepare("UPDATE scoring.runtime_modules SET bytecode = $2 WHERE module = $1", ["text", "bytea"])
for row in rows:
    code = compile(row["source"], "scoring.runtime_modules:" + row["module"], "exec")
    plpy.execute(store, [row["module"], stamp + marshal.dumps(code)])
$compile$ LANGUAGE plpython3u;

CREATE OR REPLACE FUNCTION scoring.runtime_info()
RETURNS jsonb
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
if GD.get("pgscore_server.code_sha") != "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1":
    plpy.execute("SELECT scoring._load_runtime()")
from pgscore_server import api
return api.runtime_info(plpy, GD)
$python$;
COMMENT ON FUNCTION scoring.runtime_info() IS 'Python and library versions of the server''s scoring runtime, and the schema revision';

CREATE OR REPLACE FUNCTION scoring.warmup(model_name text DEFAULT 'churn')
RETURNS void
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
if GD.get("pgscore_server.code_sha") != "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1":
    plpy.execute("SELECT scoring._load_runtime()")
from pgscore_server import api
api.warmup(plpy, GD, model_name)
$python$;
COMMENT ON FUNCTION scoring.warmup(text) IS 'loads the runtime and the active model into this backend (for a pool''s connect hook)';

-- sql/idempotent/020-models.sql
-- Model versions, deployments and the active model of each name.

CREATE OR REPLACE FUNCTION scoring._assign_model_version()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Serialise pushes of one name so that versions are 1, 2, 3... without gaps or races.
    PERFORM pg_advisory_xact_lock(hashtext('scoring.models'), hashtext(NEW.name));
    SELECT coalesce(max(m.version), 0) + 1 INTO NEW.version
      FROM scoring.models m WHERE m.name = NEW.name;
    NEW.created_at := now();
    NEW.created_by := current_user;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER assign_version
    BEFORE INSERT ON scoring.models
    FOR EACH ROW EXECUTE FUNCTION scoring._assign_model_version();

CREATE OR REPLACE VIEW scoring.active_models AS
SELECT DISTINCT ON (d.name)
       d.name, d.model_id, m.version, d.activated_at
  FROM scoring.deployments d
  JOIN scoring.models m USING (model_id)
 ORDER BY d.name, d.deployment_id DESC;
COMMENT ON VIEW scoring.active_models IS 'the active version of each model name: its latest deployment';

-- scoring.activate: make NAME's VERSION the active model; returns its model_id.
CREATE OR REPLACE FUNCTION scoring.activate(model_name text, version integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_id bigint;
BEGIN
    -- The same lock as rollback(), which replays this name's history.
    PERFORM pg_advisory_xact_lock(hashtext('scoring.deployments'), hashtext(model_name));
    SELECT m.model_id INTO found_id
      FROM scoring.models m WHERE m.name = model_name AND m.version = activate.version;
    IF found_id IS NULL THEN
        IF NOT EXISTS (SELECT FROM scoring.models m WHERE m.name = model_name) THEN
            RAISE EXCEPTION 'no model named % has been pushed', quote_literal(model_name)
                USING ERRCODE = 'undefined_object',
                      HINT = format('push one with: pgscore push FILE --name %s', model_name);
        END IF;
        RAISE EXCEPTION 'model % has no version %', quote_literal(model_name), version
            USING ERRCODE = 'undefined_object',
                  HINT = format('list the versions with: pgscore models --name %s', model_name);
    END IF;
    INSERT INTO scoring.deployments (name, model_id, action) VALUES (model_name, found_id, 'activate');
    RETURN found_id;
END
$$;
COMMENT ON FUNCTION scoring.activate(text, integer) IS 'activates a pushed model version; takes effect on the next scoring call in every backend';

-- scoring.rollback: undo the latest activation of NAME. Deployments are
-- replayed as a stack (activate pushes, rollback pops), so repeated
-- rollbacks walk back through history instead of flipping between two versions.
CREATE OR REPLACE FUNCTION scoring.rollback(model_name text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    stack bigint[] := '{}';
    d record;
    target bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('scoring.deployments'), hashtext(model_name));
    FOR d IN SELECT action, model_id FROM scoring.deployments
              WHERE name = model_name ORDER BY deployment_id LOOP
        IF d.action = 'activate' THEN
            stack := stack || d.model_id;
        ELSE
            stack := stack[1:cardinality(stack) - 1];
        END IF;
    END LOOP;
    IF cardinality(stack) < 2 THEN
        RAISE EXCEPTION 'model % has no earlier deployment to roll back to', quote_literal(model_name)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('see the history with: pgscore models --name %s; activate a version with: pgscore activate %s VERSION',
                                model_name, model_name);
    END IF;
    target := stack[cardinality(stack) - 1];
    INSERT INTO scoring.deployments (name, model_id, action) VALUES (model_name, target, 'rollback');
    RETURN target;
END
$$;
COMMENT ON FUNCTION scoring.rollback(text) IS 're-activates the deployment before the latest one of a model name';

-- scoring.set_scoring_path: force how a model version is evaluated in the
-- database: 'sql' (generated SQL in the complaint trigger and score(bigint),
-- the compiled arrays elsewhere), 'compiled' (numpy on the data-only arrays)
-- or 'sklearn' (unpickle the blob). Takes effect on the next scoring call
-- everywhere.
CREATE OR REPLACE FUNCTION scoring.set_scoring_path(model_name text, version integer, path text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_id bigint;
    has_compiled boolean;
BEGIN
    IF path IS NULL OR path NOT IN ('sql', 'compiled', 'sklearn') THEN
        RAISE EXCEPTION 'scoring path must be ''sql'', ''compiled'' or ''sklearn'', not %', coalesce(quote_literal(path), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT m.model_id, m.compiled IS NOT NULL INTO found_id, has_compiled
      FROM scoring.models m WHERE m.name = model_name AND m.version = set_scoring_path.version;
    IF found_id IS NULL THEN
        RAISE EXCEPTION 'model % has no version %', quote_literal(model_name), version
            USING ERRCODE = 'undefined_object',
                  HINT = format('list the versions with: pgscore models --name %s', model_name);
    END IF;
    IF path IN ('sql', 'compiled') AND NOT has_compiled THEN
        RAISE EXCEPTION 'model % v% has no compiled form', quote_literal(model_name), version
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'see path_note in pgscore models for why it could not be compiled';
    END IF;
    IF path = 'sql' THEN
        -- Raises, naming the reason, when plain SQL cannot express the model exactly.
        PERFORM scoring.sql_expression(found_id);
    END IF;
    UPDATE scoring.models m SET scoring_path = path,
           path_note = concat_ws('; ', m.path_note, format('set to %s by %s at %s', path, session_user, now()))
     WHERE m.model_id = found_id;
    RETURN found_id;
END
$$;
COMMENT ON FUNCTION scoring.set_scoring_path(text, integer, text) IS 'forces the sql, compiled or scikit-learn evaluation of a model version';

-- sql/idempotent/030-score.sql
-- What analysts call. Each runs as the schema owner (it reads model blobs
-- that analysts may not read) and only reads.

-- scoring.score(bigint) itself is written by scoring._install_scoring_functions()
-- (050-complaint-trigger.sql): generated SQL for a 'sql' model, else this.
CREATE OR REPLACE FUNCTION scoring._score_customer_py(customer_id bigint)
RETURNS double precision
LANGUAGE plpython3u
STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
if GD.get("pgscore_server.code_sha") != "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1":
    plpy.execute("SELECT scoring._load_runtime()")
from pgscore_server import api
return api.score_customer(plpy, GD, customer_id)
$python$;
COMMENT ON FUNCTION scoring._score_customer_py(bigint) IS 'internal: scoring.score(bigint) in Python, for models not on the sql path';

CREATE OR REPLACE FUNCTION scoring.score(model_name text, features jsonb)
RETURNS double precision
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
if GD.get("pgscore_server.code_sha") != "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1":
    plpy.execute("SELECT scoring._load_runtime()")
from pgscore_server import api
return api.score_features(plpy, GD, model_name, features)
$python$;
COMMENT ON FUNCTION scoring.score(text, jsonb) IS 'probability for an arbitrary feature record (what-if analysis) with the active model of a name';

-- A float8 from the bigint of its IEEE 754 bits (a non-negative number;
-- NULL stays NULL), exactly: the significand as an integer times a power
-- of two. Scores cross from PL/Python as these bits, because PL/Python
-- passes every float through its text form (printed in Python, parsed
-- here: ~1 us a score) and an integer costs a fraction of that. Plain SQL,
-- so that queries inline it.
CREATE OR REPLACE FUNCTION scoring._float8_from_bits(bits bigint)
RETURNS double precision
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$
SELECT CASE WHEN bits < 4503599627370496  -- exponent field 0: zero or subnormal, significand * 2^-1074
            THEN bits::float8 * 4.9406564584124654e-324::float8
            ELSE ((bits & 4503599627370495) + 4503599627370496)::float8
                 * pg_catalog.power(2::float8, ((bits >> 52) - 1075)::float8) END
$$;
COMMENT ON FUNCTION scoring._float8_from_bits(bigint) IS 'internal: a non-negative float8 from its IEEE 754 bits, as scores cross from Python';

-- scoring.score_many itself is written by scoring._install_scoring_functions()
-- too: plain SQL for the churn model on the sql path, else customer_ids
-- paired with scoring._score_bits_py below (so are other model names). The
-- scores cross from Python as one array of their float8 bits (see
-- scoring._float8_from_bits): a set-returning PL/Python function converts
-- every (id, score) row on its own (1M profiles: ~2.5 s more).
CREATE OR REPLACE FUNCTION scoring._score_bits_py(customer_ids bigint[], model_name text)
RETURNS bigint[]
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
if GD.get("pgscore_server.code_sha") != "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1":
    plpy.execute("SELECT scoring._load_runtime()")
from pgscore_server import api
return api.score_bits_in_order(plpy, GD, customer_ids, model_name)
$python$;
COMMENT ON FUNCTION scoring._score_bits_py(bigint[], text) IS 'internal: the scores of customer_ids in input order as float8 bits, in Python, one model call per batch';

-- Internal: score customers with one given model version, active or not.
-- `pgscore push` uses it to test a model in the database before activation.
CREATE OR REPLACE FUNCTION scoring.score_with_model(model_id bigint, customer_ids bigint[])
RETURNS TABLE (customer_id bigint, score double precision)
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
if GD.get("pgscore_server.code_sha") != "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1":
    plpy.execute("SELECT scoring._load_runtime()")
from pgscore_server import api
return api.score_with_model(plpy, GD, model_id, customer_ids)
$python$;
COMMENT ON FUNCTION scoring.score_with_model(bigint, bigint[]) IS 'scores customers with one model version, active or not (used by pgscore push)';

-- sql/idempotent/040-rescore.sql
-- Rescoring every profile after a new model: set-based batches, each
-- committed on its own so that a million profiles never make one huge
-- transaction. Runs with the caller's rights: a SECURITY DEFINER procedure
-- may not commit, and the caller (scoring_loader) is allowed to write scores.
-- No SET clause either (it would forbid COMMIT): the Python pins search_path
-- with SET LOCAL in every batch's transaction instead.
CREATE OR REPLACE PROCEDURE scoring.rescore(model_name text DEFAULT 'churn', batch_size integer DEFAULT 10000)
LANGUAGE plpython3u
AS $python$
if GD.get("pgscore_server.code_sha") != "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1":
    plpy.execute("SELECT scoring._load_runtime()")
from pgscore_server import api
api.rescore(plpy, GD, model_name, batch_size)
$python$;
COMMENT ON PROCEDURE scoring.rescore(text, integer) IS 'rescores every profile with the active model, committing per batch; call it outside a transaction block';

-- sql/idempotent/050-complaint-trigger.sql
-- The complaint trigger: once per INSERT or COPY statement, for every
-- customer with new complaints, grow complaint_count by the number of new
-- rows and rescore the profile with the active churn model, in the
-- inserting transaction. Runs as the owner: the application role may only
-- insert complaints.
--
-- Chosen by the active churn model's scoring_path:
--   'sql'       generated PL/pgSQL with the model's SQL expression written in
--               (pgscore_server.sqlpath), no Python in the inserting backend
--               (one customer with a long expression: scoring._score_profile);
--   'compiled'  generated PL/pgSQL: one customer is locked, counted and
--               updated in SQL, scored by scoring._score_profile (Python,
--               compiled numpy evaluator); several go to the Python path;
--   'sklearn'   the new rows' customer ids go to scoring._score_new_complaints
--               (Python: locks, reads, scores and writes).
-- scoring._install_scoring_functions() writes the trigger function,
-- scoring.score(bigint) and scoring.score_many for the active model; the triggers at the end of
-- this file run it whenever the active model or its path changes.

CREATE OR REPLACE FUNCTION scoring._score_new_complaints(customer_ids bigint[])
RETURNS void
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
if GD.get("pgscore_server.code_sha") != "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1":
    plpy.execute("SELECT scoring._load_runtime()")
from pgscore_server import api
api.on_complaints_inserted(plpy, GD, customer_ids or [])
$python$;
COMMENT ON FUNCTION scoring._score_new_complaints(bigint[]) IS 'internal: the complaint trigger''s Python path';

-- One profile's score for the generated trigger, which locks and updates
-- the profile itself: the features come as one array per kind (cheaper to
-- convert than a row), ``layout`` names the array of each feature in order
-- (f float8, i bigint, b boolean, t text). A failure follows
-- scoring.on_error: 'keep' records it and returns NULL, 'raise' raises.
-- Not a security definer: only the owner runs it, from the trigger.
CREATE OR REPLACE FUNCTION scoring._score_profile(model_id bigint, customer_id bigint, layout text,
                                                  floats double precision[], ints bigint[],
                                                  flags boolean[], texts text[])
RETURNS double precision
LANGUAGE plpython3u
AS $python$
if GD.get("pgscore_server.code_sha") != "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1":
    plpy.execute("SELECT scoring._load_runtime()")
from pgscore_server import api
return api.score_profile(plpy, GD, model_id, customer_id, layout, floats, ints, flags, texts)
$python$;
COMMENT ON FUNCTION scoring._score_profile(bigint, bigint, text, double precision[], bigint[], boolean[], text[])
    IS 'internal: one profile''s score for the generated complaint trigger';

-- A row the 'sql' path cannot score (the same rows the Python evaluator
-- rejects): with scoring.on_error = 'keep' (or mode NULL and no setting)
-- the complaint stays and the old score too, the failure goes to
-- scoring.errors and a WARNING; with 'raise' the statement fails.
CREATE OR REPLACE FUNCTION scoring._score_rejected(model_id bigint, customer_id bigint, message text, mode text)
RETURNS double precision
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    setting text := lower(btrim(coalesce(mode, nullif(current_setting('scoring.on_error', true), ''), 'keep')));
    label text;
    -- This failure in this client statement: when a concurrent insert for the
    -- same customer committed first, PostgreSQL evaluates the trigger's UPDATE
    -- again on the newer row version (EvalPlanQual) and calls this again.
    failure text := format('%s %s %s %s', pg_current_xact_id(), statement_timestamp(),
                           _score_rejected.model_id, _score_rejected.customer_id);
    previous text := current_setting('pgscore.recorded_rejection', true);
    recorded bigint;
BEGIN
    SELECT format('model %L v%s (model_id %s)', m.name, m.version, m.model_id) INTO label
      FROM scoring.models m WHERE m.model_id = _score_rejected.model_id;
    message := format('%s failed to score: %s', label, regexp_replace(message, '^pgscore: ', ''));
    IF setting NOT IN ('keep', 'raise') THEN
        RAISE EXCEPTION 'scoring.on_error is %; it must be ''keep'' or ''raise''', quote_literal(setting)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'SET scoring.on_error = ''keep''  -- or ''raise''';
    END IF;
    IF setting = 'raise' THEN
        RAISE EXCEPTION '%', message USING ERRCODE = 'external_routine_invocation_exception';
    END IF;
    IF split_part(previous, '|', 1) = failure
       AND EXISTS (SELECT FROM scoring.errors e WHERE e.error_id = split_part(previous, '|', 2)::bigint) THEN
        RETURN NULL;  -- recorded already (and not rolled back since)
    END IF;
    INSERT INTO scoring.errors (model_id, customer_id, sqlstate, message)
    VALUES (_score_rejected.model_id, _score_rejected.customer_id, '39000', message)
    RETURNING error_id INTO recorded;
    PERFORM set_config('pgscore.recorded_rejection', failure || '|' || recorded, true);
    RAISE WARNING 'complaint saved but not scored for customer_id %: %', customer_id, message
        USING HINT = 'see scoring.errors; SET scoring.on_error = ''raise'' to make such inserts fail instead';
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION scoring._score_rejected(bigint, bigint, text, text) IS 'internal: a profile the sql scoring path rejects';

CREATE OR REPLACE FUNCTION scoring.sql_expression(model_id bigint)
RETURNS text
LANGUAGE plpython3u
STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
if GD.get("pgscore_server.code_sha") != "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1":
    plpy.execute("SELECT scoring._load_runtime()")
from pgscore_server import api
return api.sql_expression(plpy, GD, model_id)
$python$;
COMMENT ON FUNCTION scoring.sql_expression(bigint) IS 'the model as one SQL expression over p (public.customer_profiles), NULL for rows it rejects; what the sql path runs';

CREATE OR REPLACE FUNCTION scoring._install_generated_scoring(model_id bigint)
RETURNS text
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
if GD.get("pgscore_server.code_sha") != "66e3b329b3966bd48ff0e4835b32e66c5c15d5efd8ecaf1329c2e1c512a4b5c1":
    plpy.execute("SELECT scoring._load_runtime()")
from pgscore_server import api
return api.install_generated_scoring(plpy, GD, model_id)
$python$;
COMMENT ON FUNCTION scoring._install_generated_scoring(bigint) IS 'internal: writes a model with a compiled form into the complaint trigger (and a sql-path model into score(bigint) and score_many)';

CREATE OR REPLACE FUNCTION scoring._install_scoring_functions()
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $install$
DECLARE
    active record;
BEGIN
    -- One writer at a time: CREATE OR REPLACE of one function in two
    -- transactions at once fails with "tuple concurrently updated".
    PERFORM pg_advisory_xact_lock(hashtext('scoring._install_scoring_functions'));
    SELECT d.model_id, m.scoring_path INTO active
      FROM scoring.deployments d JOIN scoring.models m USING (model_id)
     WHERE d.name = 'churn' ORDER BY d.deployment_id DESC LIMIT 1;
    -- The Python path first; a model with a compiled form then gets its own.
    CREATE OR REPLACE FUNCTION scoring._on_complaints_inserted()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $body$
    BEGIN
        PERFORM scoring._score_new_complaints(array_agg(customer_id)) FROM new_complaints;
        RETURN NULL;
    END
    $body$;
    CREATE OR REPLACE FUNCTION scoring.score(customer_id bigint)
    RETURNS double precision
    LANGUAGE plpgsql
    STABLE STRICT
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $body$
    BEGIN
        RETURN scoring._score_customer_py($1);
    END
    $body$;
    CREATE OR REPLACE FUNCTION scoring.score_many(customer_ids bigint[], model_name text DEFAULT 'churn')
    RETURNS TABLE (customer_id bigint, score double precision)
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $body$
    DECLARE
        -- Scored in a statement of its own: inside the RETURN QUERY the
        -- planner would run the (stable) function once more to estimate
        -- how many rows unnest returns.
        v_bits bigint[] := scoring._score_bits_py(customer_ids, model_name);
    BEGIN
        -- unnest in the select list: the arrays run in lockstep, as in
        -- unnest(a, b), without its tuplestore.
        RETURN QUERY SELECT unnest(customer_ids), scoring._float8_from_bits(unnest(v_bits));
    END
    $body$;
    IF active.scoring_path IN ('sql', 'compiled') THEN
        RETURN scoring._install_generated_scoring(active.model_id);
    END IF;
    RETURN 'scored in Python';
END
$install$;
COMMENT ON FUNCTION scoring._install_scoring_functions() IS 'internal: writes the complaint trigger and score(bigint) for the active churn model';

SELECT scoring._install_scoring_functions();
COMMENT ON FUNCTION scoring.score(bigint) IS 'fresh churn probability of one customer with the active churn model';
COMMENT ON FUNCTION scoring.score_many(bigint[], text) IS 'scores many customers, set-based; rows come back in input order';
COMMENT ON FUNCTION scoring._on_complaints_inserted() IS 'internal: the complaint trigger, written for the active churn model';

CREATE OR REPLACE TRIGGER complaints_rescore
    AFTER INSERT ON public.complaints
    REFERENCING NEW TABLE AS new_complaints
    FOR EACH STATEMENT EXECUTE FUNCTION scoring._on_complaints_inserted();

-- Whatever changes the active churn model or its path rewrites the two
-- functions in the same transaction (activate, rollback, set_scoring_path,
-- or a row written directly).
CREATE OR REPLACE FUNCTION scoring._reinstall_scoring_functions()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM scoring._install_scoring_functions();
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION scoring._reinstall_scoring_functions() IS 'internal: reinstalls the scoring functions after a deployment or a path change';

CREATE OR REPLACE TRIGGER churn_deployed
    AFTER INSERT ON scoring.deployments
    FOR EACH ROW WHEN (NEW.name = 'churn')
    EXECUTE FUNCTION scoring._reinstall_scoring_functions();

CREATE OR REPLACE TRIGGER churn_path_changed
    AFTER UPDATE OF scoring_path ON scoring.models
    FOR EACH ROW WHEN (NEW.name = 'churn' AND NEW.scoring_path IS DISTINCT FROM OLD.scoring_path)
    EXECUTE FUNCTION scoring._reinstall_scoring_functions();

-- The generated functions name the active model's columns and their types.
-- A change to public.customer_profiles (a column added, dropped, renamed or
-- retyped) rewrites them in the same transaction; one that leaves an active
-- 'sql' model without a column it reads is refused, naming the feature (a
-- 'compiled' or 'sklearn' model is then scored in Python, where a missing
-- feature is a scoring failure under scoring.on_error).
CREATE OR REPLACE FUNCTION scoring._profiles_altered()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT FROM pg_event_trigger_ddl_commands() c
                WHERE c.classid = 'pg_class'::regclass AND c.objid = to_regclass('public.customer_profiles')) THEN
        PERFORM scoring._install_scoring_functions();
    END IF;
END
$$;
COMMENT ON FUNCTION scoring._profiles_altered() IS 'internal: rewrites the scoring functions after an ALTER TABLE of the profiles';

DROP EVENT TRIGGER IF EXISTS scoring_profiles_altered;
CREATE EVENT TRIGGER scoring_profiles_altered ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION scoring._profiles_altered();

-- sql/idempotent/090-grants.sql
-- Least privilege for the three group roles (DESIGN.md "Roles").
-- Functions are executable by PUBLIC by default: take that back first.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA scoring FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA scoring FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA scoring FROM PUBLIC;

-- scoring_app: insert complaints, read profiles. The trigger does the rest as owner.
GRANT SELECT ON public.customer_profiles TO scoring_app;
GRANT SELECT, INSERT ON public.complaints TO scoring_app;

-- scoring_analyst: score, read profiles and model metadata, never the blob.
GRANT USAGE ON SCHEMA scoring TO scoring_analyst;
GRANT SELECT ON public.customer_profiles TO scoring_analyst;
GRANT SELECT (model_id, name, version, format, sha256, feature_names, runtime, scoring_path, path_note,
              metrics, note, created_at, created_by) ON scoring.models TO scoring_analyst;
GRANT SELECT ON scoring.deployments, scoring.active_models, scoring.errors TO scoring_analyst;
GRANT EXECUTE ON FUNCTION scoring.score(bigint), scoring.score(text, jsonb),
                          scoring.score_many(bigint[], text), scoring.runtime_info(),
                          scoring.warmup(text) TO scoring_analyst;

-- scoring_loader: push models, activate, roll back, rescore.
GRANT USAGE ON SCHEMA scoring TO scoring_loader;
GRANT SELECT, INSERT ON scoring.models TO scoring_loader;
-- push records the sql path after checking the server's SQL against the model.
GRANT UPDATE (scoring_path, path_note) ON scoring.models TO scoring_loader;
GRANT SELECT, INSERT ON scoring.deployments TO scoring_loader;
GRANT SELECT ON scoring.active_models, scoring.errors TO scoring_loader;
GRANT SELECT ON public.customer_profiles TO scoring_loader;
GRANT UPDATE (churn_score, churn_model_id, churn_scored_at) ON public.customer_profiles TO scoring_loader;
GRANT EXECUTE ON FUNCTION scoring.activate(text, integer), scoring.rollback(text),
                          scoring.set_scoring_path(text, integer, text),
                          scoring.score(bigint), scoring.score(text, jsonb),
                          scoring.score_many(bigint[], text), scoring.score_with_model(bigint, bigint[]),
                          scoring.runtime_info(), scoring.warmup(text),
                          scoring.sql_expression(bigint), scoring._load_runtime(),
                          scoring._float8_from_bits(bigint) TO scoring_loader;  -- rescore writes scores with it
GRANT EXECUTE ON PROCEDURE scoring.rescore(text, integer) TO scoring_loader;

-- sql/idempotent/095-ownership.sql
-- Ownership: the scoring schema's objects belong to scoring_owner, a
-- NOLOGIN role that is not a superuser, so every SECURITY DEFINER function
-- (the trigger, score(), ...) runs with only what scoring_owner is granted.
--
-- Only a superuser can create functions in plpython3u (an untrusted
-- language), so the migration itself runs as one; ownership is handed over
-- afterwards. scoring.runtime_modules stays with the migrating superuser:
-- its rows are Python that the functions execute, and whoever may write
-- them may run code in the server.
ALTER SCHEMA scoring OWNER TO scoring_owner;
DO $$
DECLARE
    object record;
BEGIN
    FOR object IN
        SELECT format('ALTER %s %s OWNER TO scoring_owner',
                      CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                      p.oid::regprocedure) AS statement
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'scoring'::regnamespace
        UNION ALL
        SELECT format('ALTER %s %s OWNER TO scoring_owner',
                      CASE c.relkind WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END, c.oid::regclass)
          FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'scoring'::regnamespace AND c.relkind IN ('r', 'v', 'p')
           AND c.oid <> 'scoring.runtime_modules'::regclass
    LOOP
        EXECUTE object.statement;
    END LOOP;
END
$$;

-- What the owner's functions need outside its own schema.
GRANT SELECT ON scoring.runtime_modules TO scoring_owner;
GRANT SELECT, UPDATE (complaint_count, churn_score, churn_model_id, churn_scored_at)
    ON public.customer_profiles TO scoring_owner;
DO $$
BEGIN
    -- scoring.runtime_info() reports the schema revision alembic recorded.
    IF to_regclass('public.alembic_version') IS NOT NULL THEN
        GRANT SELECT ON public.alembic_version TO scoring_owner;
    END IF;
END
$$;
