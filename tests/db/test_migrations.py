"""Migrations: round trip, offline SQL, idempotence, and what they install."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgscore import render
from pgscore.migrate import alembic_config, downgrade, head_revision, migrate
from pgscore.migrations import codesets

REPO = Path(__file__).resolve().parents[2]


def schema_objects(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname IN ('scoring', 'scoring_trusted')"
            " UNION ALL SELECT schemaname || '.' || tablename FROM pg_tables"
            " WHERE schemaname IN ('scoring', 'scoring_trusted')"
            " OR tablename IN ('customer_profiles', 'complaints') ORDER BY 1").fetchall()


def test_upgrade_downgrade_upgrade(empty_db):
    migrate(empty_db)
    installed = schema_objects(empty_db)
    assert ("scoring.score(customer_id bigint)",) in installed
    assert ("scoring_trusted.load_runtime()",) in installed
    downgrade(empty_db, "base")
    assert schema_objects(empty_db) == []
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regnamespace('scoring_trusted')").fetchone()[0] is None
    migrate(empty_db)
    assert schema_objects(empty_db) == installed
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT scoring.runtime_info() ->> 'schema_revision'").fetchone()[0] == head_revision()


def function_definitions(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p"
            " WHERE p.pronamespace = 'scoring'::regnamespace ORDER BY 1").fetchall()


def runtime_modules(dsn):
    """The stored in-database Python: in scoring_trusted from 0009, in scoring before."""
    with psycopg.connect(dsn) as conn:
        table = conn.execute("SELECT coalesce(to_regclass('scoring_trusted.runtime_modules'),"
                             " to_regclass('scoring.runtime_modules'))::text").fetchone()[0]
        return conn.execute(f"SELECT module, source FROM {table} ORDER BY 1").fetchall()  # noqa: S608


@pytest.mark.parametrize("revision, later_function", [
    ("0001", "scoring.sql_expression(model_id bigint)"),
    ("0002", "scoring._score_profile(model_id bigint, customer_id bigint, layout text, floats double precision[],"
             " ints bigint[], flags boolean[], texts text[])"),
    ("0003", None),  # 0004 changes only in-database code
    ("0004", None),  # 0005 added scoring._scores_py, which 0008 replaced
    ("0005", None),  # 0006 adds a column (test below) and in-database code
    ("0006", None),  # 0007 changes only in-database code
    ("0007", "scoring._score_bits_py(customer_ids bigint[], model_name text)"),
    ("0008", "scoring_trusted.load_runtime()"),  # 0009 moves the runtime out of scoring
])
def test_downgrading_to_a_revision_restores_it_exactly(empty_db, revision, later_function):
    migrate(empty_db, revision)
    objects, definitions = schema_objects(empty_db), function_definitions(empty_db)
    modules = runtime_modules(empty_db)
    with psycopg.connect(empty_db) as conn:
        checks = conn.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                              " WHERE conrelid = 'scoring.models'::regclass ORDER BY 1").fetchall()
    assert (later_function,) not in objects
    migrate(empty_db)
    if later_function:
        assert (later_function,) in schema_objects(empty_db)
    # Upgrading a database that is at an older revision installs today's Python.
    assert runtime_modules(empty_db) != modules
    downgrade(empty_db, revision)
    assert schema_objects(empty_db) == objects
    assert function_definitions(empty_db) == definitions
    assert runtime_modules(empty_db) == modules
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                            " WHERE conrelid = 'scoring.models'::regclass ORDER BY 1").fetchall() == checks


def runtime_info(dsn):
    with psycopg.connect(dsn) as conn:  # a new backend, which imports the runtime anew
        return conn.execute("SELECT scoring.runtime_info()").fetchone()[0]


def test_backends_import_the_code_the_migration_compiled(empty_db):
    migrate(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM scoring_trusted.runtime_modules WHERE bytecode IS NULL"
                            ).fetchone()[0] == 0
        assert runtime_info(empty_db)["code_from"] == "bytecode"
        # Code stamped for another interpreter (or code sha) is not run: the sources are compiled.
        conn.execute("UPDATE scoring_trusted.runtime_modules SET bytecode = 'other'::bytea || bytecode"
                     " WHERE module = 'pgscore_server.plans'")
        info = runtime_info(empty_db)
        assert info["code_from"] == "source"
        assert info["schema_revision"] == head_revision()
        conn.execute("UPDATE scoring_trusted.runtime_modules SET bytecode = NULL"
                     " WHERE module = 'pgscore_server.plans'")
        assert runtime_info(empty_db)["code_from"] == "source"
    downgrade(empty_db, "0005")
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'scoring.runtime_modules'::regclass"
                            " AND attname = 'bytecode'").fetchone()[0] == 0
    assert runtime_info(empty_db)["schema_revision"] == "0005"


def test_running_migrations_twice_is_harmless(empty_db):
    migrate(empty_db)
    migrate(empty_db)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]


def installed_code(dsn):
    """What a code set decides, as the catalog and the stored code show it: functions (whole
    definition, owner, grants, comment), pgscore's triggers and views, the grants on pgscore's
    tables, and the stored modules with their server-compiled code."""
    with psycopg.connect(dsn) as conn:
        def rows(sql):
            return conn.execute(sql).fetchall()
        return {
            "functions": rows(
                "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proowner::regrole::text,"
                " p.proacl::text, obj_description(p.oid, 'pg_proc') FROM pg_proc p"
                " WHERE p.pronamespace IN ('scoring'::regnamespace, 'scoring_trusted'::regnamespace) ORDER BY 1"),
            "triggers": rows(
                "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
                " WHERE p.pronamespace = 'scoring'::regnamespace AND NOT t.tgisinternal ORDER BY 1"),
            "relations": rows(
                "SELECT c.oid::regclass::text, c.relkind, c.relowner::regrole::text, c.relacl::text,"
                " CASE c.relkind WHEN 'v' THEN pg_get_viewdef(c.oid) END, obj_description(c.oid, 'pg_class')"
                " FROM pg_class c WHERE c.relnamespace IN ('scoring'::regnamespace, 'scoring_trusted'::regnamespace)"
                " OR c.oid IN ('public.customer_profiles'::regclass, 'public.complaints'::regclass) ORDER BY 1"),
            "schemas": rows("SELECT nspname, nspacl::text FROM pg_namespace WHERE nspname LIKE 'scoring%' ORDER BY 1"),
            "modules": rows("SELECT module, source, bytecode FROM scoring_trusted.runtime_modules ORDER BY 1"),
            "code_sets": rows("SELECT code_set_sha, runtime_sha FROM scoring_trusted.code_sets ORDER BY 1"),
            "last_code_set": rows(codesets.LAST_INSTALLED_SQL),
        }


def stamp(dsn, revision):
    from alembic import command

    command.stamp(alembic_config(dsn), revision)


def test_a_fresh_install_equals_an_upgraded_one(empty_db, second_empty_db):
    migrate(empty_db)
    fresh = installed_code(empty_db)
    migrate(second_empty_db, "0008")  # with the code 0008 released
    migrate(second_empty_db)
    upgraded = installed_code(second_empty_db)
    assert [row[0] for row in fresh["functions"]] == [row[0] for row in upgraded["functions"]]
    assert fresh == upgraded
    assert fresh["last_code_set"] == [(head_revision(), render.current_code_set().sha)]


def code_change(module, function_name, returns="int", value="1", recreate=False):
    """The package's code set with one module edited and one function added: a code change
    that needs no revision. ``recreate``: the function is dropped and created anew (as a
    change of its return type needs)."""
    current = render.current_code_set()
    sources = dict(current.modules)
    sources[module] += "\n# a change\n"
    sql_files = {name: render.sql_file("idempotent", name) for name in render.idempotent_files()}
    sql_files["060-probe.sql"] = (
        (f"DROP FUNCTION IF EXISTS scoring.{function_name}();\n" if recreate else "")
        + f"CREATE OR REPLACE FUNCTION scoring.{function_name}() RETURNS {returns} LANGUAGE sql"
        f" SET search_path = pg_catalog, pg_temp AS $$ SELECT {value} $$;\n"
        f"REVOKE ALL ON FUNCTION scoring.{function_name}() FROM PUBLIC;\n"
        f"ALTER FUNCTION scoring.{function_name}() OWNER TO scoring_owner;\n")
    return render.current_code_set(sources, sql_files)


def test_a_function_the_new_code_drops_and_creates_again_stays(empty_db, monkeypatch):
    migrate(empty_db)
    first = code_change("pgscore_server.plans", "code_set_probe")
    # Its return type changes: DROP and CREATE, a new object under the old name.
    changed = code_change("pgscore_server.api", "code_set_probe", returns="text", value="'two'", recreate=True)
    with monkeypatch.context() as patched:
        patched.setattr(render, "current_code_set", lambda: first)
        migrate(empty_db)
        patched.setattr(render, "current_code_set", lambda: changed)
        migrate(empty_db)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT scoring.code_set_probe()").fetchone()[0] == "two"
    assert installed_code(empty_db)["last_code_set"] == [(head_revision(), changed.sha)]


def test_a_stamp_installs_no_code(empty_db):
    migrate(empty_db, "0009")
    before = runtime_modules(empty_db)
    stamp(empty_db, "head")  # 0010's tables are not there: installing would fail
    assert runtime_modules(empty_db) == before


def test_a_code_change_needs_no_revision_and_goes_back_exactly(empty_db, monkeypatch):
    migrate(empty_db)
    original = installed_code(empty_db)
    changed = code_change("pgscore_server.plans", "code_set_probe")
    with monkeypatch.context() as patched:
        patched.setattr(render, "current_code_set", lambda: changed)
        migrate(empty_db)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
        assert conn.execute("SELECT scoring.code_set_probe()").fetchone()[0] == 1
        stored = dict(conn.execute("SELECT module, source FROM scoring_trusted.runtime_modules").fetchall())
    assert stored == changed.modules
    assert runtime_info(empty_db)["code_sha"] == changed.runtime_sha  # a new backend imports the change
    assert installed_code(empty_db)["last_code_set"] == [(head_revision(), changed.sha)]

    migrate(empty_db)  # the package's own code again: the probe goes, the rest is as it was
    back = installed_code(empty_db)
    assert back["functions"] == original["functions"]
    assert {k: v for k, v in back.items() if k != "code_sets"} == {
        k: v for k, v in original.items() if k != "code_sets"}
    assert len(back["code_sets"]) == 2  # both versions stay recorded


def test_a_later_revisions_downgrade_restores_the_code_recorded_at_its_parent(empty_db):
    """What a revision after 0010 does on downgrade (codesets.restore_recorded): here the
    install of a later revision is simulated by installing changed code at the revision after head."""
    migrate(empty_db)
    original = installed_code(empty_db)
    changed = code_change("pgscore_server.api", "later_probe")
    with psycopg.connect(empty_db, autocommit=False) as conn:
        conn.execute(codesets.install_sql(changed, f"{int(head_revision()) + 1:04d}"))
        conn.execute(codesets.restore_recorded(head_revision()))
        conn.commit()
    restored = installed_code(empty_db)
    assert restored["functions"] == original["functions"]  # scoring.later_probe() was dropped
    assert restored["modules"] == original["modules"]
    assert restored["last_code_set"] == original["last_code_set"]
    with psycopg.connect(empty_db) as conn, pytest.raises(psycopg.errors.UndefinedObject) as missing:
        conn.execute(codesets.restore_recorded("0005"))
    assert "no code set (none) is recorded" in missing.value.diag.message_primary
    assert "pgscore migrate" in missing.value.diag.message_hint


def test_released_code_is_verified(monkeypatch):
    assert "CREATE OR REPLACE FUNCTION scoring.score(" in render.released_code("0008")
    archive = dict(render._released_archive())
    archive["0008-idempotent.sql"] = archive["0008-idempotent.sql"].replace(b"pg_temp", b"public")
    monkeypatch.setattr(render, "_released_archive", lambda: archive)
    with pytest.raises(RuntimeError, match="released code of revision 0008 is missing from or altered"):
        render.released_code("0008")


def test_offline_sql_is_reviewable_without_a_database():
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head", "--sql"],
        cwd=REPO, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PGHOST": "/nonexistent"},
    )
    assert result.returncode == 0, result.stderr
    sql = result.stdout
    assert "CREATE OR REPLACE FUNCTION scoring.score(customer_id bigint)" in sql
    assert "INSERT INTO scoring_trusted.runtime_modules" in sql
    assert "#pgscore:runtime" not in sql  # every marker was rendered
    # (in the install SQL: the modules' sources may name a marker)
    assert re.findall(r"\{\{[A-Z_]+\}\}", render.current_code_set().install_sql) == []
    assert sql.count("SET search_path = pg_catalog, pg_temp") >= 8


def test_every_security_definer_function_pins_search_path(db):
    with db.connect() as conn:
        unpinned = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'scoring' AND p.prosecdef"
            " AND NOT coalesce(p.proconfig, '{}') @> ARRAY['search_path=pg_catalog, pg_temp']").fetchall()
        definers = conn.execute(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'scoring' AND p.prosecdef").fetchone()[0]
    assert unpinned == []
    assert definers >= 6


# What any role may run: attaching scorers to tables it owns (each checks the
# caller owns them, sql/idempotent/060-scorers.sql) and what those run as it.
PUBLIC_SCORER_FUNCTIONS = {
    "attach", "attach_events", "detach", "_require_owner", "_grant_schema_usage", "_column_type",
    "_create_scorer_triggers", "_score_table", "_recount", "_scorer_trigger"}


def test_public_cannot_execute_scoring_functions(db):
    with db.connect() as conn:
        public_exec = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'scoring' AND has_function_privilege('public', p.oid, 'EXECUTE')").fetchall()
    assert {name for (name,) in public_exec} == PUBLIC_SCORER_FUNCTIONS


def test_scoring_objects_belong_to_a_role_that_is_not_superuser(db):
    with db.connect() as conn:
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(p.proowner) FROM pg_proc p WHERE p.pronamespace = 'scoring'::regnamespace"
            " UNION SELECT pg_get_userbyid(c.relowner) FROM pg_class c"
            " WHERE c.relnamespace = 'scoring'::regnamespace AND c.relkind IN ('r', 'v')").fetchall()
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'scoring_owner'").fetchone()[0]
        trusted_owners = conn.execute(
            "SELECT DISTINCT r.rolsuper FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner"
            " WHERE n.nspname = 'scoring_trusted'"
            " UNION SELECT r.rolsuper FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
            " WHERE c.relnamespace = 'scoring_trusted'::regnamespace"
            " UNION SELECT r.rolsuper FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner"
            " WHERE p.pronamespace = 'scoring_trusted'::regnamespace").fetchall()
        code_writers = conn.execute(
            "SELECT r.rolname, t.name FROM pg_roles r,"
            " unnest(ARRAY['scoring_trusted.runtime_modules', 'scoring_trusted.approved_pickles',"
            " 'scoring_trusted.code_sets', 'scoring_trusted.code_modules', 'scoring_trusted.code_history']) t(name)"
            " WHERE NOT r.rolsuper AND r.rolname LIKE 'scoring%'"
            " AND (has_table_privilege(r.oid, t.name, 'INSERT') OR has_table_privilege(r.oid, t.name, 'UPDATE')"
            " OR has_table_privilege(r.oid, t.name, 'DELETE') OR has_table_privilege(r.oid, t.name, 'TRUNCATE')"
            " OR has_schema_privilege(r.oid, 'scoring_trusted', 'CREATE'))").fetchall()
    assert owners == [("scoring_owner",)]
    assert superuser is False
    assert trusted_owners == [(True,)]  # schema, tables and loader: the migrating superuser's
    assert code_writers == []  # the in-database Python and the approvals are writable by superusers only


def test_0012_downgrade_stops_at_a_model_0011_cannot_score_then_restores_0011s_code(empty_db):
    """Format 'compiled' and path 'onnx' are 0012's: the downgrade names the model using
    them and changes nothing; once it is gone, 0011's released code set is what is installed
    (the database went past 0011 in one upgrade, so none was recorded there)."""
    migrate(empty_db)
    archive = b"PK\x03\x04 not read by this test"
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names, compiled,"
                     " scoring_path) VALUES ('xgb_churn', 1, 'compiled', %s, encode(sha256(%s), 'hex'),"
                     " ARRAY['tenure_months'], %s, 'compiled')", [archive, archive, archive])
        with pytest.raises(psycopg.errors.CheckViolation):  # the blob path never reads a 'compiled' blob
            conn.execute("UPDATE scoring.models SET scoring_path = 'sklearn' WHERE name = 'xgb_churn'")
    with pytest.raises(Exception, match=r"cannot downgrade below 0012: revision 0011 cannot score xgb_churn v1"):
        downgrade(empty_db, "0011")
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT scoring.runtime_info() ->> 'schema_revision'").fetchone()[0] == head_revision()
        conn.execute("DELETE FROM scoring.models WHERE name = 'xgb_churn'")
    downgrade(empty_db, "0011")
    with psycopg.connect(empty_db) as conn:
        checks = dict(conn.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                                   " WHERE conrelid = 'scoring.models'::regclass").fetchall())
        assert "'compiled'" not in checks["models_format_check"]
        assert "models_path_reads_format" not in checks
    assert installed_code(empty_db)["last_code_set"] == [("0011", render.released_code_set("0011").sha)]
    migrate(empty_db)
