"""Plain-SQL scoring (pgscore.sqlgen) against scikit-learn's predict_proba.

The SQL functions run in a real PostgreSQL from which plpython3u has been
dropped; the reference is ``pipeline.predict_proba(to_frame(rows))[:, 1]``
on the same profiles read as the server reads them. Tolerance 1e-9.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import numpy as np
import psycopg
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from pgscore_server import sqlgen
from pgscore.compile import compile_model
from pgscore.dev.demo_data import BOOLEAN_COLUMNS, PROFILE_COLUMNS, TEXT_COLUMNS, synthetic_profiles, train_demo_model
from pgscore.models import fetch_feature_rows
from pgscore.dev.seed import seed_profiles
from pgscore_server.sqlgen import SqlUnsupported, sql_function, to_sql
from pgscore_server.features import to_frame
from tests import families
from tests.conftest import drop_category_checks, local_scores

TOLERANCE = 1e-9
N_PROFILES = 3000
EDGE_START = 1_000_000
BOUNDARY_START = 2_000_000

pytestmark = [
    pytest.mark.filterwarnings("ignore:Found unknown categories:UserWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]


@pytest.fixture(scope="module")
def demo_models() -> dict[str, Any]:
    return {kind: train_demo_model(rows=3000, seed=0, kind=kind)[0] for kind in families.demo_kinds("sql")}


# -- helpers -----------------------------------------------------------------------

def _insert(conn: psycopg.Connection, rows: list[dict]) -> None:
    columns = ["customer_id", *PROFILE_COLUMNS]
    placeholders = ", ".join(
        "%s::numeric" if c in ("monthly_charges", "total_charges") else "%s" for c in columns
    )
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO public.customer_profiles ({', '.join(columns)}) VALUES ({placeholders})",
            [[r.get(c) for c in columns] for r in rows],
        )


def _edge_rows() -> list[dict]:
    """Profiles at the edges: NULLs, NaN, tenure 0, extreme charges, unknown categories."""
    base = {k: v for k, v in synthetic_profiles(1, seed=99)[0].items() if k != "churned"}
    edits: list[dict] = [
        {"tenure_months": 0, "total_charges": None},
        {"tenure_months": 0, "total_charges": "0"},
        {"monthly_charges": "99999999.99", "total_charges": "9999999999.99",
         "tenure_months": 2147483647, "complaint_count": 2147483647},
        {"monthly_charges": "-99999999.99", "total_charges": "-9999999999.99"},
        {"monthly_charges": "0.00", "total_charges": "0.01", "tenure_months": 1},
        {"monthly_charges": "NaN", "total_charges": "NaN"},
        {"monthly_charges": None, "total_charges": None, "tenure_months": None},
        {c: None for c in BOOLEAN_COLUMNS},
        {c: None for c in TEXT_COLUMNS},
        {c: None for c in PROFILE_COLUMNS if c != "complaint_count"},
        {"gender": "Other", "contract": "Weekly", "payment_method": "Cash"},
        {"internet_service": "Satellite", "complaint_count": 40},
    ]
    rows = []
    for i, edit in enumerate(edits):
        row = dict(base, **edit)
        row["customer_id"] = EDGE_START + i
        rows.append(row)
    return rows


def _boundary_rows(conn: psycopg.Connection, sql_text: str) -> list[dict]:
    """Profiles whose numeric features sit on and next to every cut the SQL makes."""
    cuts: dict[str, set] = {}
    for column, _, literal in re.findall(r"\bp\.(\w+) (<=|>) (-?\d+(?:\.\d+)?)\b", sql_text):
        cuts.setdefault(column, set()).add(literal)
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            f"SELECT customer_id, {', '.join(PROFILE_COLUMNS)} FROM public.customer_profiles"
            " WHERE customer_id <= %s ORDER BY customer_id",
            [N_PROFILES],
        )
        bases = cur.fetchall()
    rows = []
    k = 0
    for column in sorted(cuts):
        for literal in sorted(cuts[column]):
            if column in ("monthly_charges", "total_charges"):
                from decimal import Decimal

                values = [str(Decimal(literal) + d) for d in (Decimal("-0.01"), Decimal(0), Decimal("0.01"))]
            else:
                values = [v for v in (int(literal) - 1, int(literal), int(literal) + 1) if v >= 0]
            for value in values:
                row = dict(bases[k % len(bases)])
                row[column] = value
                row["customer_id"] = BOUNDARY_START + k
                rows.append(row)
                k += 1
    return rows


def _create(conn: psycopg.Connection, statement: str) -> None:
    # The body is bound when CREATE runs: run it with pg_catalog first.
    conn.execute("SET search_path = pg_catalog, pg_temp")
    try:
        conn.execute(statement)
    finally:
        conn.execute("RESET search_path")


def _sql_scores(conn: psycopg.Connection, function: str) -> dict[int, float | None]:
    rows = conn.execute(f"SELECT p.customer_id, scoring.{function}(p) FROM public.customer_profiles p").fetchall()
    return dict(rows)


def _max_diff(sql: dict, local: dict) -> tuple[float, int]:
    assert sql and sql.keys() == local.keys()
    assert all(v is not None for v in sql.values())
    diffs = [abs(sql[k] - local[k]) for k in local]
    return max(diffs), sum(d == 0.0 for d in diffs)


# -- parity on the demo pipelines, without plpython3u ---------------------------------

@pytest.mark.parametrize("kind", families.demo_kinds("sql"))
def test_demo_pipeline_parity_without_plpython(db, demo_models, kind):
    model = demo_models[kind]
    compiled = compile_model(model)
    with db.connect() as conn:
        # What a managed PostgreSQL looks like: no plpython3u at all.
        conn.execute("DROP EXTENSION IF EXISTS plpython3u CASCADE")
        assert conn.execute("SELECT count(*) FROM pg_language WHERE lanname LIKE 'plpython%%'").fetchone() == (0,)
        seed_profiles(conn, N_PROFILES, seed=5)
        drop_category_checks(conn)
        _insert(conn, _edge_rows())

        pinned = sql_function(compiled, f"churn_{kind}", pin_search_path=True)
        inlined = sql_function(compiled, f"churn_{kind}_inline", pin_search_path=False)
        _insert(conn, _boundary_rows(conn, pinned))
        _create(conn, pinned)
        _create(conn, inlined)

        lang = conn.execute(
            "SELECT l.lanname, p.provolatile, p.proparallel, p.proconfig FROM pg_proc p"
            " JOIN pg_language l ON l.oid = p.prolang"
            " WHERE p.oid = %s::regprocedure",
            [f"scoring.churn_{kind}(public.customer_profiles)"],
        ).fetchone()
        assert lang == ("sql", "i", "s", ["search_path=pg_catalog, pg_temp"])

        ids = [r[0] for r in conn.execute("SELECT customer_id FROM public.customer_profiles ORDER BY 1")]
        assert len(ids) >= N_PROFILES + len(_edge_rows())
        local = local_scores(model, conn, ids)
        conn.execute("SET jit = off")
        # Same body twice. The pinned one is not inlined and PostgreSQL sets up
        # its whole expression again on every call (about 10 ms for the 100-tree
        # forest), so it runs on the edge rows and a sample, the inlined one on all.
        sample = "p.customer_id <= 500 OR p.customer_id BETWEEN %s AND %s"
        for function, where in ((f"churn_{kind}", sample), (f"churn_{kind}_inline", "true")):
            got = dict(conn.execute(
                f"SELECT p.customer_id, scoring.{function}(p) FROM public.customer_profiles p WHERE {where}",
                [EDGE_START, BOUNDARY_START - 1] if where == sample else [],
            ).fetchall())
            diff, exact = _max_diff(got, {k: local[k] for k in got})
            print(f"\n{function}: {len(got)} rows, max |diff| {diff:.3g}, bit-exact {exact}/{len(got)}")
            assert diff <= TOLERANCE, (function, diff)


def test_body_is_bound_at_creation(db, demo_models):
    """A SQL-standard body is resolved by CREATE: a hostile search_path later changes nothing."""
    compiled = compile_model(demo_models["gbm"])
    with db.connect() as conn:
        seed_profiles(conn, 300, seed=2)
        _create(conn, sql_function(compiled, "bound_inline", pin_search_path=False))
        before = _sql_scores(conn, "bound_inline")
        conn.execute("CREATE SCHEMA evil")
        conn.execute("CREATE FUNCTION evil.yes(numeric, numeric) RETURNS boolean LANGUAGE sql AS 'SELECT true'")
        conn.execute("CREATE OPERATOR evil.<= (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = evil.yes)")
        conn.execute("CREATE FUNCTION evil.no(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT false'")
        conn.execute("CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.no)")
        conn.execute("CREATE FUNCTION evil.exp(float8) RETURNS float8 LANGUAGE sql AS 'SELECT 0::float8'")
        conn.execute("SET search_path = evil, pg_catalog, public")
        assert conn.execute("SELECT 2::numeric <= 1::numeric").fetchone() == (True,)  # the trap works
        assert _sql_scores(conn, "bound_inline") == before


# -- rejected rows, missing-value routing, other estimators ----------------------------

TEXT3 = ["gender", "contract", "internet_service"]
NUMS3 = ["tenure_months", "monthly_charges", "total_charges", "senior_citizen"]


def _train_frame(n: int = 2000, seed: int = 11) -> tuple[Any, np.ndarray]:
    rows = synthetic_profiles(n, seed=seed)
    X = to_frame(rows, TEXT3 + NUMS3)
    y = np.array([r["churned"] for r in rows], dtype=int)
    return X, y


def _pipeline(classifier: Any, handle_unknown: str = "ignore", impute: bool = True) -> Pipeline:
    numeric = make_pipeline(SimpleImputer(strategy="median"), StandardScaler()) if impute else StandardScaler()
    return Pipeline([
        ("pre", ColumnTransformer([
            ("text", OneHotEncoder(handle_unknown=handle_unknown), TEXT3),
            ("num", numeric, NUMS3),
        ])),
        ("clf", classifier),
    ])


def _per_row_reference(model: Any, conn: psycopg.Connection, ids: list[int]) -> dict[int, float | None]:
    """predict_proba row by row; None where scikit-learn refuses the row."""
    names = list(model.feature_names_in_)
    rows = fetch_feature_rows(conn, names, ids)
    batch_ok = {}
    good = []
    for row in rows:
        suspect = row["customer_id"] >= EDGE_START or any(
            v is None or (isinstance(v, float) and not math.isfinite(v)) for v in row.values()
        )
        try:
            if suspect:  # only these can be refused (one predict_proba per row is slow)
                model.predict_proba(to_frame([row], names))
        except ValueError:
            batch_ok[row["customer_id"]] = None
        else:
            good.append(row)
    # The good rows together, as one batch (as score_many does).
    proba = model.predict_proba(to_frame(good, names))[:, 1] if good else []
    batch_ok.update({row["customer_id"]: float(p) for row, p in zip(good, proba)})
    return batch_ok


CASES = {
    "lr_error_no_impute": lambda: _pipeline(LogisticRegression(max_iter=2000), "error", impute=False),
    "sgd_huber": lambda: _pipeline(SGDClassifier(loss="modified_huber", random_state=0)),
    "gbm_error_no_impute": lambda: _pipeline(
        GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0), "error", impute=False),
    "rf_routes_missing": lambda: _pipeline(
        RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0), impute=False),
    "extra_trees": lambda: _pipeline(ExtraTreesClassifier(n_estimators=30, max_depth=10, random_state=0)),
    "tree": lambda: _pipeline(DecisionTreeClassifier(min_samples_leaf=2, random_state=0)),
    "hgb_routes_missing": lambda: _pipeline(HistGradientBoostingClassifier(max_iter=40, random_state=0), impute=False),
}


@pytest.fixture(scope="module")
def case_models() -> dict[str, Any]:
    X, y = _train_frame()
    # Some missing values in training, so missing-value routing is learned.
    X = X.copy()
    X.loc[X.index[::17], "total_charges"] = np.nan
    models = {}
    for name, make in CASES.items():
        model = make()
        models[name] = model.fit(X if "routes" in name else X.dropna(), y if "routes" in name else y[X.notna().all(axis=1).to_numpy()])
    return models


def test_other_estimators_and_rejected_rows(db, case_models):
    with db.connect() as conn:
        conn.execute("DROP EXTENSION IF EXISTS plpython3u CASCADE")
        seed_profiles(conn, 1000, seed=8)
        drop_category_checks(conn)
        _insert(conn, _edge_rows())
        ids = [r[0] for r in conn.execute("SELECT customer_id FROM public.customer_profiles ORDER BY 1")]
        for name, model in case_models.items():
            compiled = compile_model(model)
            _create(conn, sql_function(compiled, f"case_{name}", pin_search_path=False))
            reference = _per_row_reference(model, conn, ids)
            got = _sql_scores(conn, f"case_{name}")
            rejected = sorted(k for k, v in reference.items() if v is None)
            assert sorted(k for k, v in got.items() if v is None) == rejected, name
            diffs = [abs(got[k] - v) for k, v in reference.items() if v is not None]
            print(f"\n{name}: {len(diffs)} scored, {len(rejected)} rejected, max |diff| {max(diffs):.3g}")
            assert max(diffs) <= TOLERANCE, name
            if "error" in name:
                assert rejected, name  # NULL totals / unknown categories are refused
                # invalid='raise': the first rejected row raises, naming the feature.
                _create(conn, sql_function(compiled, f"case_{name}_raise", invalid="raise", pin_search_path=False))
                with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="pgscore: feature"):
                    conn.execute(
                        f"SELECT scoring.case_{name}_raise(p) FROM public.customer_profiles p WHERE customer_id = %s",
                        [rejected[0]],
                    )
                assert conn.execute(
                    f"SELECT scoring.case_{name}_raise(p) FROM public.customer_profiles p WHERE customer_id = %s",
                    [ids[0]],
                ).fetchone()[0] == pytest.approx(reference[ids[0]], abs=TOLERANCE)


def test_float_columns_with_infinities(db):
    """Unbounded columns (double precision): NaN, +-inf, 1e300 rejected or routed as in Python."""
    rng = np.random.default_rng(3)
    n = 600
    X = to_frame(
        [{"x": float(v), "c": str(c)} for v, c in zip(rng.normal(50, 20, n), rng.choice(["a", "b", "c"], n))],
        ["x", "c"],
    )
    y = (X["x"].to_numpy() + rng.normal(0, 15, n) > 55).astype(int)
    types = {"x": "double precision", "c": "text"}
    values = [None, math.nan, math.inf, -math.inf, 1e300, -1e300, 3.4e38, 1e38, 0.0, -0.0, 49.999999, 50.0, 1e-300]
    rows = [{"x": v, "c": c} for v in values for c in ("a", "z", None)]
    rows += [{"x": float(v), "c": "b"} for v in rng.normal(50, 20, 200)]
    pre = ColumnTransformer([("c", OneHotEncoder(handle_unknown="ignore"), ["c"]), ("x", StandardScaler(), ["x"])])
    pre_imputed = ColumnTransformer([
        ("c", OneHotEncoder(handle_unknown="ignore"), ["c"]),
        ("x", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), ["x"]),
    ])
    models = {
        "lr": Pipeline([("pre", pre_imputed), ("clf", LogisticRegression())]),
        "rf": Pipeline([("pre", pre), ("clf", RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0))]),
        "gbm": Pipeline([("pre", pre_imputed), ("clf", GradientBoostingClassifier(n_estimators=10, random_state=0))]),
        "hgb": Pipeline([("pre", pre), ("clf", HistGradientBoostingClassifier(max_iter=10, random_state=0))]),
    }
    values_sql = ", ".join(
        "(%s::float8, %s::text)" for _ in rows
    )
    params = [v for r in rows for v in (r["x"], r["c"])]
    with db.connect() as conn:
        for name, model in models.items():
            model.fit(X, y)
            expr = to_sql(compile_model(model), "p", column_types=types)
            got = [r[0] for r in conn.execute(f"SELECT {expr} FROM (VALUES {values_sql}) AS p(x, c)", params)]
            batch = model.predict_proba(to_frame(rows[len(values) * 3:], ["x", "c"]))[:, 1].tolist()
            for i, (row, value) in enumerate(zip(rows, got)):
                if i >= len(values) * 3:
                    expected = batch[i - len(values) * 3]
                else:
                    try:
                        expected = float(model.predict_proba(to_frame([row], ["x", "c"]))[:, 1][0])
                    except ValueError:
                        expected = None
                if expected is None:
                    assert value is None, (name, row, value)
                else:
                    assert value is not None and abs(value - expected) <= TOLERANCE, (name, row, value, expected)


# -- what cannot be expressed ------------------------------------------------------------

def test_unsupported_models_say_why():
    X, y = _train_frame(500)
    most_frequent = Pipeline([
        ("pre", ColumnTransformer([
            ("text", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder()), TEXT3),
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMS3),
        ])),
        ("clf", LogisticRegression()),
    ]).fit(X, y)
    with pytest.raises(SqlUnsupported, match="depending on the whole batch"):
        to_sql(compile_model(most_frequent))

    onehot_numbers = Pipeline([
        ("pre", ColumnTransformer([("num", OneHotEncoder(handle_unknown="ignore"), ["monthly_charges"])])),
        ("clf", LogisticRegression()),
    ]).fit(X, y)
    with pytest.raises(SqlUnsupported, match="one-hot encoding a num column"):
        to_sql(compile_model(onehot_numbers))

    model = _pipeline(LogisticRegression()).fit(X, y)
    with pytest.raises(SqlUnsupported, match="not a column"):
        to_sql(compile_model(model), column_types={"gender": "text"})
    with pytest.raises(SqlUnsupported, match="type jsonb"):
        to_sql(compile_model(model), column_types=dict(sqlgen.PROFILE_COLUMN_TYPES, tenure_months="jsonb"))


# -- the exact inversion of transform + float32 rounding (no database) --------------------

def test_threshold_inversion_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        m, s = float(rng.normal(100, 300)), float(abs(rng.normal(0, 50)) + 1e-3)
        feature = sqlgen.columns.NumFeature(None, [("sub", m), ("div", s)])  # type: ignore[arg-type]
        t = rng.normal(0, 3, 50)

        def seen(x: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore"):
                return feature.transform(x).astype(np.float32).astype(np.float64)

        xs = sqlgen.thresholds.largest_true(lambda x: seen(x) <= t, len(t))
        assert (seen(xs) <= t).all()
        above = np.nextafter(xs, np.inf)
        assert (seen(above) > t).all()


def test_decimal_cut_matches_float8_rounding():
    from decimal import Decimal

    rng = np.random.default_rng(1)
    for x in rng.normal(0, 1000, 2000).tolist() + [0.0, -0.0, 0.005, 0.015, 1e-9, -1e-9, 2.675]:
        for scale in (0, 2, 3):
            d = Decimal(sqlgen.thresholds._decimal_cut(x, scale))
            step = Decimal(10) ** -scale
            assert float(d) <= x < float(d + step), (x, scale, d)


# -- timings (reported, not asserted) ------------------------------------------------------

def _best_of(conn: psycopg.Connection, query: str, params: list | None = None, runs: int = 3) -> float:
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        conn.execute(query, params or []).fetchall()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.slow
def test_timings_against_score_many(db, demo_models):
    """Scoring every profile in one SELECT: plain SQL (inlined / pinned) vs scoring.score_many."""
    from pgscore import push_model

    lines = []
    with db.connect() as conn:
        seed_profiles(conn, N_PROFILES, seed=5)
        conn.execute("SET jit = off")
        everyone = "SELECT customer_id FROM public.customer_profiles"
        for kind, model in demo_models.items():
            compiled = compile_model(model)
            # A model name is pushed for a scorer: one on the profiles that writes only its own score table.
            conn.execute("SELECT scoring.attach(%s, 'public.customer_profiles', 'customer_id', score_on_insert => false)",
                         [f"bench_{kind}"])
            result = push_model(db.dsn("loader"), model, name=f"bench_{kind}", activate=True)
            assert result.scoring_path in ("compiled", "sql"), result.path_note
            _create(conn, sql_function(compiled, f"bench_{kind}", pin_search_path=True))
            _create(conn, sql_function(compiled, f"bench_{kind}_inline", pin_search_path=False))
            conn.execute("SELECT scoring.warmup(%s)", [f"bench_{kind}"])
            many = _best_of(
                conn, f"SELECT sum(s.score) FROM scoring.score_many(ARRAY({everyone}), %s) s", [f"bench_{kind}"]
            )
            inline = _best_of(conn, f"SELECT sum(scoring.bench_{kind}_inline(p)) FROM public.customer_profiles p")
            # The pinned function is slow for big models: time it on 300 rows and scale.
            pinned_300 = _best_of(
                conn,
                f"SELECT sum(scoring.bench_{kind}(p)) FROM public.customer_profiles p WHERE p.customer_id <= 300",
                runs=1,
            )
            plan = _best_of(conn, f"EXPLAIN SELECT scoring.bench_{kind}_inline(p) FROM public.customer_profiles p")
            lines.append(
                f"{kind:7s} score_many {many * 1000:8.1f} ms | sql inlined {inline * 1000:8.1f} ms "
                f"(planning {plan * 1000:.1f} ms) | sql pinned search_path ~{pinned_300 * 10 * 1000:8.1f} ms "
                f"(x10 from 300 rows)"
            )
    print(f"\nscoring {N_PROFILES} profiles in one SELECT, jit off, best of 3:\n" + "\n".join(lines))


def test_export_sql_checks_parity_in_the_database_and_runs_without_plpython(scored):
    from pgscore.models import export_sql

    statement = export_sql(scored.dsn("loader"), "churn", 1)
    assert "LANGUAGE sql" in statement and "plpython" not in statement
    with scored.connect() as admin:
        admin.execute(statement)
        via_sql = dict(admin.execute("SELECT customer_id, scoring.churn_v1_sql(p) FROM customer_profiles p").fetchall())
        via_py = dict(admin.execute("SELECT customer_id, score FROM scoring.score_many("
                                    "(SELECT array_agg(customer_id) FROM customer_profiles))").fetchall())
    assert max(abs(via_sql[c] - via_py[c]) for c in via_py) <= 1e-9
