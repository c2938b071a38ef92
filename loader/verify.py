"""Parity: whether a model scores the same in the database, in its compiled
form and in its own library (scikit-learn, XGBoost, ...), within the
model's bound (:func:`parity_bound`: PARITY_TOLERANCE, or FLOAT32_ULPS (two) float32 ulps
for a library that computes in float32).

pgscore push (pgscore.push) checks the compiled form on real rows of the
entity table of the model's scorer (public.customer_profiles for the
reference scorer 'churn'; pgscore.scorers.Entity) and on rows generated
from the model (pgscore.check_rows) before it may be used, and the
server's SQL on the same rows; ``export_sql`` checks the SQL it exports
against the database's scores. Feature rows are read here exactly as the
server reads them (pgscore_server.catalog). Keys of any scorer's type are
compared as text, as PostgreSQL prints them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pgscore_server import catalog, features

from . import check_rows
from .connection import connect
from .scorers import REFERENCE, Entity

PARITY_TOLERANCE = 1e-9
# Profiles the compiled form is checked on, locally, before it may be used.
COMPILE_CHECK_SIZE = 2000
# Generated rows also scored one at a time by scikit-learn, at most.
ROW_BY_ROW_MAX = 150


class ParityBound:
    """How far a score pgscore computes may be from the library's own
    ``predict_proba``: ``measure(expected, got)`` is the difference in the
    bound's unit, which must be at most ``limit``.

    A library that computes in float64 (scikit-learn, LightGBM) is matched to
    PARITY_TOLERANCE, absolutely. XGBoost computes in float32: its margin is
    reproduced bit for bit, and its probability (a float32) within
    FLOAT32_ULPS float32 ulps of that value: its Sigmoid calls the C
    library's expf, here exp rounded to float32 stands for it
    (pgscore_server.compiled.float32). The two differ by one ulp where exp
    lies next to the midpoint of two float32 (glibc's expf is within 0.502
    ulp, not correctly rounded: about 1 row in 1,000 here), and 1 / (1 + e)
    turns one ulp of e into up to two of the probability (seen: 2 rows in
    20,000 of a 100-tree model).
    """

    def __init__(self, unit: str, limit: float):
        self.unit = unit  # 'absolute' | 'float32 ulp'
        self.limit = limit

    def measure(self, expected: Any, got: Any) -> Any:
        """|got - expected| (arrays or floats) in the bound's unit; NaN where either is NaN."""
        import numpy as np

        difference = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(expected, dtype=np.float64))
        if self.unit == "absolute":
            return difference
        return difference / np.spacing(np.abs(np.asarray(expected, dtype=np.float32))).astype(np.float64)

    def holds(self, worst: float) -> bool:
        return worst <= self.limit  # False for NaN

    def describe(self, worst: float) -> str:
        """A measured difference, in words (push's path notes)."""
        return f"{worst:.1e}" if self.unit == "absolute" else f"{worst:g} float32 ulp"

    def __str__(self) -> str:
        return f"{self.limit}" if self.unit == "absolute" else f"{self.limit:g} float32 ulps"


# XGBoost's probability against pgscore's, in float32 ulps of XGBoost's (ParityBound).
FLOAT32_ULPS = 2.0
ABSOLUTE = ParityBound("absolute", PARITY_TOLERANCE)
FLOAT32_ULP = ParityBound("float32 ulp", FLOAT32_ULPS)


def parity_bound(compiled: Any) -> ParityBound:
    """The bound of a compiled model (a CompiledModel, Evaluator, IR or the
    archive's bytes; None: no compiled form): FLOAT32_ULPS float32 ulps where its
    library computes in float32 (the IR's ``float32`` tree rules: XGBoost),
    else PARITY_TOLERANCE. The one place that decides it."""
    from pgscore_server.compiled import ir

    from .compile import CompiledModel

    if compiled is None:
        return ABSOLUTE
    if isinstance(compiled, (bytes, bytearray, memoryview)):
        compiled = CompiledModel.from_bytes(bytes(compiled))
    return FLOAT32_ULP if getattr(ir.model_of(compiled).classifier, "float32", False) else ABSOLUTE


# Classifiers of these libraries take a pandas frame of numbers only: they refuse an
# object column, which pandas infers for a boolean column with a NULL, or for a
# one-row column that is NULL. pgscore scores a NULL as a missing value (NaN)
# there, so their reference scores are computed on such columns as float64.
NUMERIC_INPUT_LIBRARIES = ("xgboost", "lightgbm")


def library_frame(estimator: Any, rows: Sequence[dict], feature_names: Sequence[str]) -> Any:
    """The pandas frame of ``rows`` that ``estimator.predict_proba`` is given as the reference."""
    from .compile import lgbm

    frame = features.to_frame(rows, feature_names)
    if type(estimator).__module__.split(".", 1)[0] not in NUMERIC_INPUT_LIBRARIES:
        return frame  # scikit-learn (and a pipeline's own first step) takes the frame as it is
    if lgbm.accepts(estimator):
        frame = lgbm.category_columns(estimator, frame)  # its pandas category columns, as it was fitted
    for name in frame.columns[frame.dtypes == object]:
        try:
            frame[name] = frame[name].astype("float64")
        except (TypeError, ValueError):
            pass  # text: the library refuses it, and so does the compiled form
    return frame


def library_proba(estimator: Any, rows: Sequence[dict], feature_names: Sequence[str]) -> Any:
    """P(class 1) of ``rows`` by the estimator's own library (float64 array)."""
    import numpy as np

    return np.asarray(estimator.predict_proba(library_frame(estimator, rows, feature_names))[:, 1], dtype=np.float64)


class _Quoter:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def quote_ident(self, name: str) -> str:
        return sql.Identifier(name).as_string(self.conn)


# The columns of a table: name, type, type with its modifier (as
# pgscore_server.catalog.PROFILE_COLUMNS_SQL reads the profiles').
COLUMNS_SQL = (
    "SELECT attname::text AS name, format_type(atttypid, NULL) AS type,"
    " format_type(atttypid, atttypmod) AS declared"
    " FROM pg_catalog.pg_attribute"
    " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
    " ORDER BY attnum"
)


def _columns(conn: psycopg.Connection, entity: Entity) -> list[tuple[str, str, str]]:
    return conn.execute(COLUMNS_SQL, [entity.relation]).fetchall()


def entity_columns(conn: psycopg.Connection, entity: Entity = REFERENCE) -> dict[str, str]:
    """Column name -> type name of a scorer's entity table."""
    return {name: type_ for name, type_, _declared in _columns(conn, entity)}


def profile_columns(conn: psycopg.Connection) -> dict[str, str]:
    """Column name -> type name of public.customer_profiles."""
    return entity_columns(conn, REFERENCE)


def key_text(key: Any) -> str:
    """A key as PostgreSQL prints it: how keys of any type are compared here
    (str of an int or a uuid.UUID is exactly that)."""
    return str(key)


def fetch_feature_rows(conn: psycopg.Connection, feature_names: Sequence[str], keys: Sequence[Any],
                       entity: Entity = REFERENCE) -> list[dict]:
    """Feature rows read exactly as the server reads them, in ``keys`` order,
    each with its key under the key column's name (``customer_id`` for the
    reference profiles); keys without a row are left out."""
    columns = entity_columns(conn, entity)
    select_list = catalog.select_list(_Quoter(conn), feature_names, columns)
    query = sql.SQL("SELECT p.{key}, {features} FROM {table} p WHERE p.{key} = ANY({keys}::{array})").format(
        key=sql.Identifier(entity.key), features=sql.SQL(select_list), table=entity.identifier,
        keys=sql.Placeholder(), array=entity.key_array)
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(query, [list(keys)])
        by_key = {key_text(row[entity.key]): row for row in cur}
    return [by_key[key_text(key)] for key in keys if key_text(key) in by_key]


def sampled_in_database(conn: psycopg.Connection, model_id: int, sample_size: int, entity: Entity,
                        feature_names: list[str], origin: str) -> tuple[list[dict[str, Any]], list[float]]:
    """(feature rows, their scores in the database) of a random sample of
    ``entity``'s rows scored with ``model_id``: what push compares with the
    model here. Raises PushError when the database cannot score them."""
    from .errors import PushError

    ids = sample_ids(conn, sample_size, entity)
    try:
        in_db = database_scores(conn, model_id, ids, entity)
    except psycopg.Error as exc:
        raise PushError(f"the database could not score with {origin}: {exc.diag.message_primary}") from None
    rows = fetch_feature_rows(conn, feature_names, ids, entity) if ids else []
    return rows, [in_db[key_text(row[entity.key])] for row in rows]


def sample_ids(conn: psycopg.Connection, size: int, entity: Entity = REFERENCE) -> list[Any]:
    """The keys of up to ``size`` random rows of the entity table."""
    query = sql.SQL("SELECT {key} FROM {table} ORDER BY random() LIMIT %s").format(
        key=sql.Identifier(entity.key), table=entity.identifier)
    return [row[0] for row in conn.execute(query, [size])]


def database_scores(conn: psycopg.Connection, model_id: int, keys: Sequence[Any],
                    entity: Entity = REFERENCE) -> dict[str, float]:
    """Key (as text) -> the database's score of that row with ``model_id``, on
    the model's recorded path: scoring.score_with_model for the reference
    profiles, scoring.score_keys_with_model for any other scorer."""
    if entity.is_reference:
        rows = conn.execute("SELECT customer_id, score FROM scoring.score_with_model(%s, %s::bigint[])",
                            [model_id, list(keys)]).fetchall()
    else:
        rows = conn.execute("SELECT key, score FROM scoring.score_keys_with_model(%s::bigint, %s::text, %s::text[])",
                            [model_id, entity.scorer, [key_text(key) for key in keys]]).fetchall()
    return {key_text(key): score for key, score in rows}


def sql_scores(conn: psycopg.Connection, expression: str, keys: Sequence[Any],
               entity: Entity = REFERENCE) -> dict[str, float | None]:
    """Key (as text) -> ``expression`` (a model's SQL over p) of those rows."""
    query = sql.SQL("SELECT p.{key}::text, {expression} FROM {table} p WHERE p.{key} = ANY({keys}::{array})").format(
        key=sql.Identifier(entity.key), expression=sql.SQL(expression), table=entity.identifier,
        keys=sql.Placeholder(), array=entity.key_array)
    return dict(conn.execute(query, [list(keys)]).fetchall())


def check_rows_for(conn: psycopg.Connection, compiled: Any, feature_names: Sequence[str],
                   size: int = COMPILE_CHECK_SIZE, entity: Entity = REFERENCE) -> check_rows.CheckRows:
    """Up to ``size`` random real rows of the entity table (the profiles by
    default), and rows generated from the compiled model
    (``pgscore.check_rows``) on one of them, or on the model's own typical
    values when the table is empty."""
    profiles = fetch_feature_rows(conn, feature_names, sample_ids(conn, size, entity), entity)
    base = {name: profiles[0][name] for name in feature_names} if profiles else None
    declared = {name: declared for name, _type, declared in _columns(conn, entity)}
    generated = check_rows.rows_for(compiled.ir, declared, base)
    return check_rows.CheckRows(profiles, generated)


def one_by_one_sample(checks: check_rows.CheckRows) -> list[dict]:
    """Generated rows scored one at a time too (the trigger's case; pandas
    infers a lone row's dtypes differently): every kind but the thresholds,
    then thresholds sampled evenly up to ROW_BY_ROW_MAX rows in all (a row
    through a ColumnTransformer costs scikit-learn several ms)."""
    rows = [row for kind, generated in checks.generated.items() if kind != "thresholds" for row in generated]
    thresholds = checks.generated.get("thresholds", [])
    room = max(0, ROW_BY_ROW_MAX - len(rows))
    return rows + (thresholds[:: max(1, -(-len(thresholds) // room))] if room else [])


def check_parity(estimator: Any, compiled: Any, rows: Sequence[dict]) -> float:
    """The largest difference (:func:`parity_bound`'s measure) between the
    compiled form and the library over ``rows``, scored as one batch.

    Raises whatever either side raises on these rows.
    """
    import numpy as np

    if not rows:
        return 0.0
    expected = library_proba(estimator, rows, compiled.feature_names)
    got = compiled.evaluator().predict(rows)
    return float(np.max(parity_bound(compiled).measure(expected, got)))


def batch_parity(estimator: Any, compiled: Any, rows: list[dict]) -> float:
    """Parity over real profiles in batches. A batch one side refuses (a
    profile the pipeline rejects, e.g. infinity before a StandardScaler) is
    halved until the refused rows stand alone; each of those must be refused
    by both sides, the others must agree (a few calls per refused row)."""
    try:
        return check_parity(estimator, compiled, rows)
    except Exception:
        if len(rows) == 1:
            return row_by_row_parity(estimator, compiled, rows)
    middle = len(rows) // 2
    return max(batch_parity(estimator, compiled, rows[:middle]), batch_parity(estimator, compiled, rows[middle:]))


def row_by_row_parity(estimator: Any, compiled: Any, rows: list[dict]) -> float:
    """Parity one row at a time (the trigger's usual case): both agree to the
    returned difference, or both refuse the row; anything else raises
    UnsupportedModel naming the row."""
    from .compile import UnsupportedModel

    def outcome(score: Any, row: dict) -> float | Exception:
        try:
            return float(score(row))
        except Exception as exc:
            return exc

    worst = 0.0
    evaluator = compiled.evaluator()
    bound = parity_bound(compiled)
    for row in rows:
        expected = outcome(lambda r: library_proba(estimator, [r], compiled.feature_names)[0], row)
        got = outcome(lambda r: evaluator.predict([r])[0], row)
        refused = [isinstance(expected, Exception), isinstance(got, Exception)]
        if refused == [True, True]:
            continue
        if refused == [True, False]:
            raise UnsupportedModel(f"scikit-learn refuses a row the compiled form scores "
                                   f"({type(expected).__name__}: {expected}); row: {row}")
        if refused == [False, True]:
            raise UnsupportedModel(f"the compiled form refuses a row scikit-learn scores "
                                   f"({type(got).__name__}: {got}); row: {row}")
        difference = float(bound.measure(expected, got))
        worst = math.inf if math.isnan(difference) else max(worst, difference)
    return worst


def sql_scores_of_rows(conn: psycopg.Connection, expression: str, rows: list[dict],
                       entity: Entity = REFERENCE) -> list[tuple[Any, dict]]:
    """(the SQL's score, row) of rows that are no row of the entity table, each
    read as a record of its type; a batch the type refuses (a value out of a
    column's range) is halved until the refused rows stand alone, and those
    are left out: they are no input the SQL can meet."""
    if not rows:
        return []
    query = sql.SQL("SELECT p.ordinality, {expression}"
                    " FROM ROWS FROM (jsonb_populate_recordset(NULL::{table}, %s)) WITH ORDINALITY AS p"
                    " ORDER BY p.ordinality").format(expression=sql.SQL(expression), table=entity.identifier)
    try:
        with conn.transaction():
            scores = [score for _, score in conn.execute(query, [Jsonb(rows)]).fetchall()]
        return list(zip(scores, rows))
    except psycopg.errors.DataException:
        if len(rows) == 1:
            return []
    middle = len(rows) // 2
    return (sql_scores_of_rows(conn, expression, rows[:middle], entity)
            + sql_scores_of_rows(conn, expression, rows[middle:], entity))


def scores_one_by_one(estimator: Any, rows: list[dict], feature_names: list[str]) -> list[float | None]:
    """predict_proba of each row as if scored alone (the trigger's case),
    None where scikit-learn refuses it. Rows without a NULL give a frame
    of the same dtypes alone or together, so they go in one call (the demo
    GBM's check: ~25 s one by one, well under a second together); rows with
    one, and every row if that call fails, one by one."""
    scores: list[float | None] = [None] * len(rows)
    complete = [k for k, row in enumerate(rows) if all(row[name] is not None for name in feature_names)]
    alone = sorted(set(range(len(rows))) - set(complete))
    try:
        together = library_proba(estimator, [rows[k] for k in complete], feature_names)
        for k, score in zip(complete, together):
            scores[k] = float(score)
    except Exception:  # noqa: BLE001 - some row refused, whatever the error: one by one then
        alone = list(range(len(rows)))
    for k in alone:
        try:
            scores[k] = float(library_proba(estimator, [rows[k]], feature_names)[0])
        except Exception:
            scores[k] = None
    return scores


def export_sql(dsn: str | None, name: str, version: int, function_name: str | None = None,
               sample_size: int = 2000) -> str:
    """``CREATE FUNCTION scoring.<function_name>(p public.customer_profiles)``:
    NAME's VERSION as plain SQL, for servers without plpython3u.

    Checked first in this database: on a sample of profiles the SQL must
    equal the in-database score within the model's bound (:func:`parity_bound`). Raises PushError when
    the version has no compiled form, SQL cannot express it, or the check fails.
    """
    from .compile import CompiledModel
    from .push import PushError
    from pgscore_server.sqlgen import SqlUnsupported, sql_function, to_sql

    with connect(dsn) as conn:
        found = conn.execute("SELECT model_id, compiled, path_note FROM scoring.models WHERE name = %s AND version = %s",
                             [name, version]).fetchone()
        if found is None:
            raise PushError(f"model {name!r} has no version {version}; list them with: pgscore models --name {name}")
        model_id, data, note = found
        if data is None:
            raise PushError(f"model {name!r} v{version} has no compiled form ({note}); plain SQL needs one")
        compiled = CompiledModel.from_bytes(data)
        try:
            expression = to_sql(compiled, "p")
            statement = sql_function(compiled, function_name or f"{name}_v{version}_sql")
        except SqlUnsupported as exc:
            raise PushError(f"model {name!r} v{version} cannot be written as plain SQL: {exc}") from None
        ids = sample_ids(conn, sample_size)
        in_sql = sql_scores(conn, expression, ids)
        in_db = database_scores(conn, model_id, ids)
    bound = parity_bound(compiled)
    worst = max((float(bound.measure(in_db[key_text(c)], in_sql[key_text(c)])) for c in ids
                 if in_sql[key_text(c)] is not None), default=0.0)
    if not bound.holds(worst):
        raise PushError(f"the SQL form of {name!r} v{version} differs from its scores by {bound.describe(worst)} "
                        f"(> {bound}); not exported")
    return f"-- {name} v{version} (model_id {model_id}); checked on {len(ids)} profiles: " \
        f"max difference {bound.describe(worst)}\n" \
        + statement
