"""Security: search_path hijacking and least privilege, as the three roles.

(a) A superuser-made schema ``evil`` shadows built-ins that pgscore's SQL
uses unqualified (now, set_config, current_setting, unnest, array_agg,
count, format_type, to_regclass, =, +, > ...). Every evil object records
that it ran. The roles then put ``evil`` before pg_catalog in their
search_path and use pgscore as usual: nothing of ``evil`` may run, and the
results must be right.

(b) Each role, logged in, can do what docs/contract.md gives it and gets
psycopg.errors.InsufficientPrivilege for everything else.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

from pgscore import push_model
from tests.conftest import denied, hijacked, local_scores

HIJACK_PATH = "SET search_path = evil, public, pg_catalog"

EVIL_SQL = r"""
CREATE SCHEMA evil;
CREATE TABLE evil.hits (what text NOT NULL, who text NOT NULL DEFAULT session_user,
                        at timestamptz NOT NULL DEFAULT clock_timestamp());
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT INSERT, SELECT ON evil.hits TO PUBLIC;

CREATE FUNCTION evil.hit(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE WARNING 'evil hit: %', what;
    INSERT INTO evil.hits (what) VALUES (what);
END $$;

CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('now()'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('clock_timestamp()'); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION evil.set_config(text, text, boolean) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('set_config(' || $1 || ')'); RETURN pg_catalog.set_config($1, $2, $3); END $$;
CREATE FUNCTION evil.current_setting(text, boolean) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('current_setting(' || $1 || ', bool)'); RETURN pg_catalog.current_setting($1, $2); END $$;
CREATE FUNCTION evil.current_setting(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('current_setting(' || $1 || ')'); RETURN pg_catalog.current_setting($1); END $$;
CREATE FUNCTION evil.unnest(anyarray) RETURNS SETOF anyelement LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('unnest'); RETURN QUERY SELECT * FROM pg_catalog.unnest($1); END $$;
CREATE FUNCTION evil.format_type(oid, integer) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('format_type'); RETURN pg_catalog.format_type($1, $2); END $$;
CREATE FUNCTION evil.to_regclass(text) RETURNS regclass LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('to_regclass'); RETURN pg_catalog.to_regclass($1); END $$;
CREATE FUNCTION evil.hashtext(text) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('hashtext'); RETURN pg_catalog.hashtext($1); END $$;
CREATE FUNCTION evil.pg_advisory_xact_lock(integer, integer) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('pg_advisory_xact_lock'); PERFORM pg_catalog.pg_advisory_xact_lock($1, $2); END $$;
CREATE FUNCTION evil.cardinality(anyarray) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('cardinality'); RETURN pg_catalog.cardinality($1); END $$;
CREATE FUNCTION evil.quote_literal(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('quote_literal'); RETURN pg_catalog.quote_literal($1); END $$;
CREATE FUNCTION evil.random() RETURNS double precision LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('random'); RETURN pg_catalog.random(); END $$;
CREATE FUNCTION evil.encode(bytea, text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('encode'); RETURN pg_catalog.encode($1, $2); END $$;
CREATE FUNCTION evil.sha256(bytea) RETURNS bytea LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('sha256'); RETURN pg_catalog.sha256($1); END $$;

-- Aggregates: count(*), array_agg, string_agg, max.
CREATE FUNCTION evil.count_step(bigint) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('count(*)'); RETURN $1 + 1; END $$;
CREATE AGGREGATE evil.count(*) (sfunc = evil.count_step, stype = bigint, initcond = '0');
CREATE FUNCTION evil.count_any_step(bigint, anyelement) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('count(x)'); RETURN $1 + 1; END $$;
CREATE AGGREGATE evil.count(anyelement) (sfunc = evil.count_any_step, stype = bigint, initcond = '0');
CREATE FUNCTION evil.agg_step(anyarray, anynonarray) RETURNS anyarray LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('array_agg'); RETURN pg_catalog.array_append($1, $2); END $$;
CREATE AGGREGATE evil.array_agg(anynonarray) (sfunc = evil.agg_step, stype = anyarray);
CREATE FUNCTION evil.string_step(text, text, text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('string_agg'); RETURN pg_catalog.concat_ws($3, $1, $2); END $$;
CREATE AGGREGATE evil.string_agg(text, text) (sfunc = evil.string_step, stype = text);
CREATE FUNCTION evil.max_step(integer, integer) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('max(integer)'); RETURN pg_catalog.int4larger($1, $2); END $$;
CREATE AGGREGATE evil.max(integer) (sfunc = evil.max_step, stype = integer);

-- Operators that would win over pg_catalog's for exact argument types.
CREATE FUNCTION evil.int8eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('bigint = bigint'); RETURN pg_catalog.int8eq($1, $2); END $$;
CREATE OPERATOR evil.= (leftarg = bigint, rightarg = bigint, function = evil.int8eq);
CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('text = text'); RETURN pg_catalog.texteq($1, $2); END $$;
CREATE OPERATOR evil.= (leftarg = text, rightarg = text, function = evil.texteq);
CREATE FUNCTION evil.int8gt(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('bigint > bigint'); RETURN pg_catalog.int8gt($1, $2); END $$;
CREATE OPERATOR evil.> (leftarg = bigint, rightarg = bigint, function = evil.int8gt);
CREATE FUNCTION evil.int4pl(integer, integer) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('integer + integer'); RETURN pg_catalog.int4pl($1, $2); END $$;
CREATE OPERATOR evil.+ (leftarg = integer, rightarg = integer, function = evil.int4pl);
CREATE FUNCTION evil.int8pl(bigint, bigint) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.hit('bigint + bigint'); RETURN pg_catalog.int8pl($1, $2); END $$;
CREATE OPERATOR evil.+ (leftarg = bigint, rightarg = bigint, function = evil.int8pl);
"""


@pytest.fixture
def evil(scored):
    with scored.connect() as admin:
        admin.execute(EVIL_SQL)
        # The trap works: an unqualified call under this search_path is caught.
        with admin.transaction():
            admin.execute(HIJACK_PATH)
            admin.execute("SELECT count(*), now() FROM (VALUES (1::bigint)) v(x) WHERE x = 1::bigint")
            assert admin.execute("SELECT pg_catalog.count(*) FROM evil.hits").fetchone()[0] >= 3
            admin.execute("RESET search_path")
    for who in ("app", "analyst", "loader"):  # and it catches every role
        conn, warnings = hijacked(scored, who, HIJACK_PATH)
        with conn:
            conn.execute("SELECT now()")
        assert any("evil hit: now()" in w for w in warnings), (who, warnings)
    with scored.connect() as admin:
        assert admin.execute("SELECT pg_catalog.count(*) FROM evil.hits WHERE what = 'now()'").fetchone()[0] >= 4
        admin.execute("TRUNCATE evil.hits")
    return scored


def hits(db) -> list[tuple]:
    with db.connect() as admin:
        return admin.execute("SELECT what, who FROM evil.hits ORDER BY at").fetchall()


def test_search_path_hijack_never_runs_evil_code(evil, model_files):
    db = evil
    ids = [3, 1, 4, 15, 9, 26]
    with db.connect() as admin:
        features = admin.execute("SELECT to_jsonb(p) - 'customer_id' FROM customer_profiles p WHERE customer_id = 5"
                                 ).fetchone()[0]
        counts_before = dict(admin.execute(
            "SELECT customer_id, complaint_count FROM customer_profiles WHERE customer_id = ANY(%s)", [ids]).fetchall())
    expected = local_scores(model_files["logreg"], db, range(1, 301))

    analyst, analyst_warnings = hijacked(db, "analyst", HIJACK_PATH)
    with analyst:
        one = analyst.execute("SELECT scoring.score(7::bigint)").fetchone()[0]
        many = analyst.execute("SELECT customer_id, score FROM scoring.score_many(%s::bigint[])", [ids]).fetchall()
        many_named = analyst.execute("SELECT customer_id, score FROM scoring.score_many(%s::bigint[], 'churn')",
                                     [ids]).fetchall()
        what_if = analyst.execute("SELECT scoring.score('churn', %s::jsonb)", [json.dumps(features)]).fetchone()[0]
        analyst.execute("SELECT scoring.warmup('churn')")
        info = analyst.execute("SELECT scoring.runtime_info()").fetchone()[0]
        with pytest.raises(psycopg.errors.NoDataFound):
            analyst.execute("SELECT scoring.score(987654::bigint)")
        with pytest.raises(psycopg.errors.DatatypeMismatch):
            analyst.execute("SELECT scoring.score('churn', %s::jsonb)", [json.dumps(dict(features, tenure_months="x"))])
    assert one == pytest.approx(expected[7], abs=1e-9)
    assert [c for c, _ in many] == ids and [c for c, _ in many_named] == ids
    assert all(score == pytest.approx(expected[c], abs=1e-9) for c, score in many + many_named)
    assert what_if == pytest.approx(expected[5], abs=1e-9)
    assert info["schema_revision"]

    app, app_warnings = hijacked(db, "app", HIJACK_PATH)
    with app:
        app.execute("SET scoring.on_error = 'raise'")
        app.execute("INSERT INTO complaints (customer_id, channel) VALUES (3, 'phone')")
        app.execute("INSERT INTO complaints (customer_id, channel) VALUES (4, 'chat'), (1, 'chat'), (4, 'chat')")
        with app.cursor().copy("COPY complaints (customer_id, channel) FROM STDIN") as copy:
            for customer_id in (15, 9, 15):
                copy.write_row((customer_id, "email"))
        app.execute("RESET scoring.on_error")  # the default policy reads the setting too
        app.execute("INSERT INTO complaints (customer_id, channel) VALUES (26, 'store')")
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            app.execute("INSERT INTO complaints (customer_id) VALUES (987654)")

    loader, loader_warnings = hijacked(db, "loader", HIJACK_PATH)
    with loader:
        second = loader.execute("SELECT scoring.activate('churn', 1)").fetchone()[0]
        back = loader.execute("SELECT scoring.rollback('churn')").fetchone()[0]
        loader.execute("CALL scoring.rescore('churn', 37)")
        loader.execute("CALL scoring.rescore()")
        again = loader.execute("SELECT customer_id, score FROM scoring.score_with_model(%s, %s::bigint[])",
                               [back, ids]).fetchall()
    assert second == back
    assert all(score == pytest.approx(expected_after, abs=1e-9)
               for (_, score), expected_after in zip(again, local_scores(model_files["logreg"], db, ids).values()))

    assert hits(db) == []
    assert [w for w in analyst_warnings + app_warnings + loader_warnings if "evil" in w] == []
    with db.connect() as admin:
        profiles = {row[0]: row[1:] for row in admin.execute(
            "SELECT customer_id, complaint_count, churn_score, churn_model_id, churn_scored_at"
            " FROM customer_profiles").fetchall()}
        errors = admin.execute("SELECT count(*) FROM scoring.errors").fetchone()[0]
        model_id = admin.execute("SELECT model_id FROM scoring.active_models WHERE name = 'churn'").fetchone()[0]
    assert errors == 0
    added = {3: 1, 4: 2, 1: 1, 15: 2, 9: 1, 26: 1}
    assert {c: profiles[c][0] - counts_before[c] for c in ids} == added
    final = local_scores(model_files["logreg"], db, list(profiles))
    assert len(profiles) == 300
    assert all(p[2] == model_id and p[3] is not None for p in profiles.values())  # rescore reached every profile
    assert max(abs(profiles[c][1] - final[c]) for c in profiles) <= 1e-9


def test_temporary_tables_do_not_shadow_the_profiles(scored, model_files):
    """pg_temp is on every pinned search_path (last): a session's temporary
    table named like a pgscore table must not be read instead of it."""
    expected = local_scores(model_files["logreg"], scored, [7, 8])
    with scored.connect("analyst") as analyst:
        analyst.execute("CREATE TEMP TABLE customer_profiles AS SELECT * FROM public.customer_profiles")
        analyst.execute("UPDATE pg_temp.customer_profiles SET tenure_months = 0, contract = 'Two year',"
                        " complaint_count = 40")
        analyst.execute("CREATE TEMP TABLE models AS SELECT 1 AS model_id")
        analyst.execute("CREATE TEMP TABLE deployments AS SELECT 1 AS model_id")
        analyst.execute("SET search_path = pg_temp, public, pg_catalog")
        one = analyst.execute("SELECT scoring.score(7::bigint)").fetchone()[0]
        many = dict(analyst.execute("SELECT * FROM scoring.score_many(ARRAY[7, 8]::bigint[])").fetchall())
    assert one == pytest.approx(expected[7], abs=1e-9)
    assert many == pytest.approx(expected, abs=1e-9)


# -- (b) least privilege, as logged-in members of each role -------------------

def assert_all_denied(conn: psycopg.Connection, statements: list) -> None:
    outcomes = {}
    for statement in statements:
        outcome = denied(conn, statement)
        if outcome is not None:
            outcomes[statement if isinstance(statement, str) else statement.as_string(conn)] = outcome
    assert outcomes == {}, "not refused with InsufficientPrivilege:\n" + "\n".join(
        f"  {k}: {v}" for k, v in outcomes.items())


MODEL_INSERT = ("INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names)"
                " VALUES ('churn', 9, 'joblib', '\\x00', encode(sha256('\\x00'::bytea), 'hex'), ARRAY['tenure_months'])")


def test_application_role_cannot_touch_scoring(scored):
    users = scored.users
    with scored.connect("app") as app:
        # What it may do.
        app.execute("INSERT INTO complaints (customer_id, channel) VALUES (2, 'phone')")
        assert app.execute("SELECT complaint_count FROM customer_profiles WHERE customer_id = 2").fetchone()[0] >= 1
        app.execute("SET scoring.on_error = 'raise'")  # its own session only
        assert_all_denied(app, [
            "SELECT * FROM scoring.models",
            "SELECT model_id FROM scoring.models",
            MODEL_INSERT,
            "UPDATE scoring.models SET note = 'x'",
            "DELETE FROM scoring.models",
            "INSERT INTO scoring.deployments (name, model_id) VALUES ('churn', 1)",
            "SELECT * FROM scoring.deployments",
            "SELECT * FROM scoring_trusted.runtime_modules",
            "SELECT * FROM scoring_trusted.approved_pickles",
            "SELECT scoring.activate('churn', 1)",
            "SELECT scoring.rollback('churn')",
            "SELECT scoring.score(1::bigint)",
            "SELECT scoring.score('churn', '{}'::jsonb)",
            "SELECT * FROM scoring.score_many(ARRAY[1]::bigint[])",
            "SELECT * FROM scoring.score_with_model(1, ARRAY[1]::bigint[])",
            "SELECT scoring_trusted.load_runtime()",
            "CALL scoring.rescore()",
            "CALL scoring.rescore('churn', 10)",
            "UPDATE customer_profiles SET complaint_count = 0 WHERE customer_id = 2",
            "UPDATE customer_profiles SET churn_score = 0 WHERE customer_id = 2",
            "DELETE FROM complaints",
            "UPDATE complaints SET customer_id = 3",
            sql.SQL("ALTER ROLE {} SET scoring.on_error = 'keep'").format(sql.Identifier(users["analyst"])),
            sql.SQL("ALTER ROLE {} SET scoring.on_error = 'raise'").format(sql.Identifier(users["loader"])),
            "ALTER ROLE scoring_analyst SET scoring.on_error = 'raise'",
            sql.SQL("ALTER DATABASE {} SET scoring.on_error = 'raise'").format(sql.Identifier(scored.name)),
            sql.SQL("ALTER DATABASE {} SET scoring.on_error = 'keep'").format(sql.Identifier(scored.name)),
        ])
    with scored.connect() as admin:
        settings = admin.execute("SELECT count(*) FROM pg_db_role_setting WHERE array_to_string(setconfig, ',')"
                                 " LIKE '%%scoring.on_error%%'").fetchone()[0]
        models = admin.execute("SELECT count(*) FROM scoring.models").fetchone()[0]
    assert settings == 0 and models == 1


def test_analyst_scores_and_reads_metadata_only(scored):
    with scored.connect("analyst") as analyst:
        assert 0.0 <= analyst.execute("SELECT scoring.score(4::bigint)").fetchone()[0] <= 1.0
        assert len(analyst.execute("SELECT * FROM scoring.score_many(ARRAY[4, 5]::bigint[])").fetchall()) == 2
        document = analyst.execute("SELECT to_jsonb(p) - 'customer_id' FROM customer_profiles p"
                                   " WHERE customer_id = 4").fetchone()[0]
        assert 0.0 <= analyst.execute("SELECT scoring.score('churn', %s::jsonb)",
                                      [json.dumps(document)]).fetchone()[0] <= 1.0
        metadata = analyst.execute(
            "SELECT model_id, name, version, format, sha256, feature_names, runtime, metrics, note, created_at,"
            " created_by FROM scoring.models").fetchall()
        assert [row[1:3] for row in metadata] == [("churn", 1)]
        assert analyst.execute("SELECT name, version FROM scoring.active_models").fetchall() == [("churn", 1)]
        analyst.execute("SELECT * FROM scoring.deployments").fetchall()
        analyst.execute("SELECT * FROM scoring.errors").fetchall()
        assert_all_denied(analyst, [
            "SELECT blob FROM scoring.models",
            "SELECT * FROM scoring.models",
            "SELECT length(blob) FROM scoring.models",
            "SELECT model_id FROM scoring.models WHERE blob IS NOT NULL",
            MODEL_INSERT,
            "UPDATE scoring.models SET note = 'x'",
            "INSERT INTO scoring.deployments (name, model_id) VALUES ('churn', 1)",
            "SELECT scoring.activate('churn', 1)",
            "SELECT scoring.rollback('churn')",
            "SELECT * FROM scoring.score_with_model(1, ARRAY[1]::bigint[])",
            "SELECT scoring_trusted.load_runtime()",
            "CALL scoring.rescore()",
            "CALL scoring.rescore('churn', 10)",
            "UPDATE customer_profiles SET churn_score = 0",
            "UPDATE customer_profiles SET complaint_count = 0",
            "INSERT INTO complaints (customer_id) VALUES (1)",
            "DELETE FROM complaints",
            "SELECT * FROM scoring_trusted.runtime_modules",
            "SELECT * FROM scoring_trusted.approved_pickles",
            "INSERT INTO scoring.errors (sqlstate, message) VALUES ('x', 'y')",
        ])


def test_loader_pushes_activates_rescores_but_nothing_else(scored, model_files):
    loader_dsn = scored.dsn("loader")
    pushed = push_model(loader_dsn, model_files["gbm"], name="churn", activate=True)
    assert pushed.version == 2
    with scored.connect("loader") as loader:
        assert loader.execute("SELECT scoring.activate('churn', 2)").fetchone()[0] == pushed.model_id
        loader.execute("SELECT scoring.rollback('churn')")
        assert loader.execute("SELECT model_id FROM scoring.active_models WHERE name = 'churn'").fetchone()[0] \
            == pushed.model_id
        loader.execute("CALL scoring.rescore('churn', 100)")
        assert loader.execute("SELECT count(*) FROM customer_profiles WHERE churn_model_id = %s",
                              [pushed.model_id]).fetchone()[0] == 300
        assert_all_denied(loader, [
            "UPDATE customer_profiles SET complaint_count = 0",
            "UPDATE customer_profiles SET complaint_count = complaint_count + 1 WHERE customer_id = 1",
            "UPDATE customer_profiles SET tenure_months = 0 WHERE customer_id = 1",
            "INSERT INTO customer_profiles (customer_id) VALUES (999999)",
            "DELETE FROM customer_profiles WHERE customer_id = 1",
            "DELETE FROM complaints",
            "UPDATE complaints SET body = 'x'",
            # It may read the in-database Python (its rescore imports it; the package ships it), not write it.
            "UPDATE scoring_trusted.runtime_modules SET source = ''",
            "DELETE FROM scoring_trusted.runtime_modules",
            "INSERT INTO scoring_trusted.approved_pickles (sha256) VALUES (repeat('0', 64))",
            "DELETE FROM scoring_trusted.approved_pickles",
            "UPDATE scoring.models SET blob = '\\x00'",
            "UPDATE scoring.models SET note = 'x'",
            "DELETE FROM scoring.models",
            "UPDATE scoring.deployments SET model_id = 1",  # the history is append-only
            "DELETE FROM scoring.deployments",
            "DELETE FROM scoring.errors",
            sql.SQL("ALTER DATABASE {} SET scoring.on_error = 'keep'").format(sql.Identifier(scored.name)),
        ])
    with scored.connect() as admin:
        deployments = admin.execute("SELECT count(*) FROM scoring.deployments").fetchone()[0]
        counts = admin.execute("SELECT sum(complaint_count) FROM customer_profiles").fetchone()[0]
    assert deployments == 4  # v1 (scored), v2 (push), v2 (activate), rollback
    assert counts is not None
