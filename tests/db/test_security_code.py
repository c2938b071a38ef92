"""No pgscore role can reach code (issue 18, item 2).

What becomes executed Python in the server (the stored modules, the
function that imports them, the list of approved pickles) lives in schema
scoring_trusted, owned by the migrating superuser. scoring_owner owns schema
scoring and may drop and recreate anything in it: it must not be able to
change, replace, shadow or drop any of that, and what it can do in its own
schema must not change which code the server runs. Generated Python (the
compiled evaluator's one-row functions) holds numbers only, never a
model's strings.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from sklearn.compose import make_column_transformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pgscore.compile import compile_model
from pgscore_server import compiled
from tests.conftest import ServerFile, denied, local_scores

# What scoring_owner (the definer of every SECURITY DEFINER function, so the
# role an SQL injection into one would act as) tries against the trusted code.
AS_OWNER_REFUSED = [
    # The stored modules.
    "DROP TABLE scoring_trusted.runtime_modules",
    "ALTER TABLE scoring_trusted.runtime_modules RENAME TO runtime_modules_old",
    "ALTER TABLE scoring_trusted.runtime_modules SET SCHEMA scoring",
    "ALTER TABLE scoring_trusted.runtime_modules ADD COLUMN extra text",
    "ALTER TABLE scoring_trusted.runtime_modules OWNER TO scoring_owner",
    "ALTER TABLE scoring_trusted.runtime_modules DISABLE ROW LEVEL SECURITY",
    "INSERT INTO scoring_trusted.runtime_modules (module, source) VALUES ('pgscore_server.evil', 'import os')",
    "UPDATE scoring_trusted.runtime_modules SET source = 'import os' WHERE module = 'pgscore_server.api'",
    "UPDATE scoring_trusted.runtime_modules SET bytecode = NULL",
    "DELETE FROM scoring_trusted.runtime_modules",
    "TRUNCATE scoring_trusted.runtime_modules",
    "CREATE TRIGGER evil BEFORE UPDATE ON scoring_trusted.runtime_modules"
    " FOR EACH ROW EXECUTE FUNCTION scoring._reinstall_scoring_functions()",
    # Its rows: the approved pickles.
    "INSERT INTO scoring_trusted.approved_pickles (sha256) VALUES (repeat('a', 64))",
    "UPDATE scoring_trusted.approved_pickles SET sha256 = repeat('b', 64)",
    "DELETE FROM scoring_trusted.approved_pickles",
    "TRUNCATE scoring_trusted.approved_pickles",
    "DROP TABLE scoring_trusted.approved_pickles",
    "ALTER TABLE scoring_trusted.approved_pickles RENAME TO approved",
    "ALTER TABLE scoring_trusted.approved_pickles DROP CONSTRAINT approved_pickles_sha256_check",
    # The loader function.
    "DROP FUNCTION scoring_trusted.load_runtime()",
    "ALTER FUNCTION scoring_trusted.load_runtime() RENAME TO load_runtime_old",
    "ALTER FUNCTION scoring_trusted.load_runtime() SET search_path = scoring, pg_catalog",
    "ALTER FUNCTION scoring_trusted.load_runtime() SECURITY DEFINER",
    "ALTER FUNCTION scoring_trusted.load_runtime() OWNER TO scoring_owner",
    "CREATE OR REPLACE FUNCTION scoring_trusted.load_runtime() RETURNS void LANGUAGE plpgsql AS $$BEGIN END$$",
    "CREATE OR REPLACE FUNCTION scoring_trusted.load_runtime() RETURNS void LANGUAGE plpython3u AS $$pass$$",
    "COMMENT ON FUNCTION scoring_trusted.load_runtime() IS 'mine'",
    # The schema.
    "DROP SCHEMA scoring_trusted CASCADE",
    "ALTER SCHEMA scoring_trusted RENAME TO elsewhere",
    "ALTER SCHEMA scoring_trusted OWNER TO scoring_owner",
    "CREATE TABLE scoring_trusted.approved_too (sha256 text)",
    "CREATE FUNCTION scoring_trusted.load_runtime(integer) RETURNS void LANGUAGE sql AS 'SELECT'",
    "CREATE VIEW scoring_trusted.shadow AS SELECT 1",
    # Python of its own, anywhere, and the server's shell.
    "CREATE FUNCTION scoring.evil() RETURNS void LANGUAGE plpython3u AS $$import os$$",
    "CREATE OR REPLACE FUNCTION scoring.score_with_model(model_id bigint, customer_ids bigint[])"
    " RETURNS TABLE (customer_id bigint, score double precision) LANGUAGE plpython3u AS $$import os$$",
    "DO $$import os$$ LANGUAGE plpython3u",
    "COPY scoring.errors (message) FROM PROGRAM 'id'",
    "ALTER ROLE scoring_owner SUPERUSER",
]


def trusted_state(conn: psycopg.Connection) -> tuple:
    return (
        conn.execute("SELECT md5(string_agg(module || source || coalesce(encode(bytecode, 'hex'), ''), ','"
                     " ORDER BY module)) FROM scoring_trusted.runtime_modules").fetchone()[0],
        conn.execute("SELECT count(*) FROM scoring_trusted.approved_pickles").fetchone()[0],
        conn.execute("SELECT md5(pg_get_functiondef('scoring_trusted.load_runtime()'::regprocedure))").fetchone()[0],
        conn.execute("SELECT r.rolname, r.rolsuper FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner"
                     " WHERE n.nspname = 'scoring_trusted'").fetchone(),
    )


def test_scoring_owner_cannot_touch_the_trusted_code(scored):
    with scored.connect() as admin:
        before = trusted_state(admin)
        outcomes = {statement: denied(admin, statement, role="scoring_owner") for statement in AS_OWNER_REFUSED}
        # A GRANT by a role without the grant option only warns ("no privileges were granted").
        with admin.transaction():
            admin.execute("SET LOCAL ROLE scoring_owner")
            admin.execute("GRANT ALL ON scoring_trusted.runtime_modules, scoring_trusted.approved_pickles"
                          " TO scoring_owner")
            admin.execute("GRANT ALL ON SCHEMA scoring_trusted TO scoring_owner")
        writable = admin.execute(
            "SELECT t.name, p.privilege FROM unnest(ARRAY['scoring_trusted.runtime_modules',"
            " 'scoring_trusted.approved_pickles']) t(name), unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',"
            " 'TRIGGER', 'REFERENCES']) p(privilege)"
            " WHERE has_table_privilege('scoring_owner', t.name, p.privilege)"
            " UNION ALL SELECT 'schema', 'CREATE' WHERE has_schema_privilege('scoring_owner', 'scoring_trusted',"
            " 'CREATE')").fetchall()
        after = trusted_state(admin)
        superusers = admin.execute("SELECT rolname FROM pg_roles WHERE rolsuper AND rolname LIKE 'scoring%'").fetchall()
    assert {k: v for k, v in outcomes.items() if v is not None} == {}
    assert writable == []
    assert after == before
    assert after[3][1] is True  # the schema belongs to a superuser
    assert superusers == []


def test_what_scoring_owner_does_in_its_own_schema_does_not_change_the_code_that_runs(scored, model_files):
    """Issue 18's probe, replayed: as scoring_owner, recreate a
    scoring.runtime_modules with other source and a scoring._load_runtime()
    of its own. The shims call scoring_trusted.load_runtime(): neither is
    ever used, and a new backend scores as before."""
    marker = ServerFile(Path(f"/tmp/pgscore-owner-{uuid.uuid4().hex}"), scored.admin)
    evil_source = f"open({str(marker)!r}, 'w').close()\n"
    expected = local_scores(model_files["logreg"], scored, [7])[7]
    with scored.connect() as admin:
        admin.execute("SET ROLE scoring_owner")
        # All of this is its own to do, in the schema it owns.
        admin.execute("CREATE TABLE scoring.runtime_modules (module text PRIMARY KEY, source text NOT NULL,"
                      " bytecode bytea)")
        admin.execute("INSERT INTO scoring.runtime_modules (module, source) VALUES ('pgscore_server', %s),"
                      " ('pgscore_server.api', %s)", [evil_source, evil_source])
        admin.execute("CREATE TABLE scoring.loader_calls (at timestamptz DEFAULT now())")
        admin.execute("CREATE FUNCTION scoring._load_runtime() RETURNS void LANGUAGE plpgsql"
                      " AS $$BEGIN INSERT INTO scoring.loader_calls DEFAULT VALUES; END$$")
        admin.execute("GRANT EXECUTE ON FUNCTION scoring._load_runtime() TO PUBLIC")
        # It may run the trusted loader: that imports the trusted code only.
        admin.execute("SELECT scoring_trusted.load_runtime()")
        admin.execute("RESET ROLE")
    with scored.connect("analyst") as analyst:
        score = analyst.execute("SELECT scoring.score(7::bigint)").fetchone()[0]
        code_sha = analyst.execute("SELECT scoring.runtime_info() ->> 'code_sha'").fetchone()[0]
    with scored.connect("app") as app:
        app.execute("INSERT INTO complaints (customer_id, channel) VALUES (7, 'phone')")
    with scored.connect("loader") as loader:
        loader.execute("CALL scoring.rescore('churn', 100)")
    with scored.connect() as admin:
        calls = admin.execute("SELECT count(*) FROM scoring.loader_calls").fetchone()[0]
        planted = admin.execute("SELECT count(*) FROM scoring_trusted.runtime_modules WHERE source LIKE %s",
                                [f"%{marker}%"]).fetchone()[0]
        errors = admin.execute("SELECT count(*) FROM scoring.errors").fetchone()[0]
    assert score == pytest.approx(expected, abs=1e-9)
    assert code_sha and len(code_sha) == 64
    assert calls == 0 and planted == 0 and errors == 0
    assert not marker.exists()


def test_every_shim_loads_the_code_from_the_trusted_schema(db):
    with db.connect() as conn:
        bodies = conn.execute(
            "SELECT p.oid::regprocedure::text, p.prosrc FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
            " WHERE l.lanname = 'plpython3u' AND p.pronamespace = 'scoring'::regnamespace").fetchall()
        old_loader = conn.execute("SELECT to_regprocedure('scoring._load_runtime()')").fetchone()[0]
    shims = {name: body for name, body in bodies if "pgscore_server" in body}
    assert len(shims) >= 8
    assert {name for name, body in shims.items() if "SELECT scoring_trusted.load_runtime()" not in body} == set()
    assert [name for name, body in bodies if "scoring._load_runtime" in body] == []
    assert old_loader is None


def test_a_shim_refuses_code_its_loader_did_not_install(db):
    """If the loader ran but did not install the code a function was
    rendered with, the function stops instead of importing a pgscore_server
    from elsewhere (sys.path)."""
    with db.connect() as admin:
        admin.execute("CREATE OR REPLACE FUNCTION scoring_trusted.load_runtime() RETURNS void"
                      " LANGUAGE plpython3u AS $$GD['pgscore_server.code_sha'] = 'another'$$")
    with db.connect("analyst") as analyst:
        with pytest.raises(psycopg.Error, match="not the code this function was installed with"):
            analyst.execute("SELECT scoring.runtime_info()")


# -- generated Python holds numbers, never a model's strings -------------------

HOSTILE = [
    '"); import os; os.system("touch {marker}"); ("',
    "'); import os; os.system('touch {marker}'); ('",
    "\nimport os\nos.system('touch {marker}')\n#",
    "x}}{{__import__('os').system('touch {marker}')}}",
]


def hostile_pipeline(kind: str, marker: Path):
    """A pipeline whose categories and one feature name are Python injections."""
    rng = np.random.default_rng(0)
    categories = [text.format(marker=marker) for text in HOSTILE] + ["Month-to-month"]
    feature = HOSTILE[0].format(marker=marker)
    n = 400
    frame = pd.DataFrame({
        "contract": rng.choice(categories, n),
        feature: rng.normal(50, 20, n),
        "tenure_months": rng.integers(0, 72, n).astype(float),
    })
    y = (frame["contract"].isin(categories[:2]) ^ (frame["tenure_months"] > 30)).astype(int)
    encoder = make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["contract"]),
                                      (StandardScaler(), [feature, "tenure_months"]))
    estimator = (GradientBoostingClassifier(n_estimators=5, max_depth=3, random_state=0) if kind == "trees"
                 else LogisticRegression())
    return make_pipeline(encoder, estimator).fit(frame, y), frame


@pytest.mark.parametrize("kind", ["trees", "linear"])
def test_model_strings_never_become_generated_source(kind):
    marker = Path(f"/tmp/pgscore-codegen-{uuid.uuid4().hex}")
    model, frame = hostile_pipeline(kind, marker)
    evaluator = compiled.load(compile_model(model).to_bytes())
    rows = frame.head(40).to_dict("records")
    names = list(frame.columns)
    one = [evaluator.predict_one([row[name] for name in names]) for row in rows]
    batch = evaluator.predict([[row[name] for name in names] for row in rows])
    expected = model.predict_proba(frame.head(40))[:, 1]
    assert np.max(np.abs(np.array(one) - expected)) <= 1e-9
    assert np.max(np.abs(batch - expected)) <= 1e-9
    if kind == "trees":
        assert evaluator.pipeline_code is not None  # the generated one-row function was used
        source = evaluator.pipeline_code.source()
        generated = source + evaluator.model.row_code.source()
        assert "import" not in generated and "system" not in generated
        assert all(text.format(marker=marker) not in generated for text in HOSTILE)
        assert str(marker) not in generated and json.dumps(str(marker)) not in generated
    assert not marker.exists()
