"""Errors a user can cause name the problem and the next step (issue 17, part 4).

In SQL: a proper SQLSTATE, the message without PL/Python's "plpy.Error: "
prefix, a HINT, and no Python traceback in CONTEXT. In the CLI: one line
(plus PostgreSQL's hint) and exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import psycopg
import pytest

from pgscore import activate, list_models, push_model, rollback
from pgscore.connection import SchemaMissing
from pgscore.models import ModelNotFound, PushError

REPO = Path(__file__).resolve().parents[2]
PGSCORE = str(Path(sys.executable).with_name("pgscore"))
SCHEMA_MISSING = "has no pgscore schema: run `pgscore migrate` on it first"


def pgscore(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([PGSCORE, *args], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, **(env or {})))
    assert "Traceback" not in result.stderr, result.stderr
    return result


def sql_error(conn: psycopg.Connection, statement: str, params=None) -> psycopg.errors.Diagnostic:
    """The diagnostics of the error ``statement`` raises; it must carry no Python traceback."""
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(statement, params)
    diag = raised.value.diag
    assert "Traceback" not in (diag.context or ""), diag.context
    assert not (diag.message_primary or "").startswith(("plpy.", "spiexceptions.")), diag.message_primary
    return diag


# -- no schema yet: `pgscore migrate` first

def test_commands_before_migrate_say_to_migrate(empty_db, model_files):
    for args in (["push", str(model_files["logreg"]), "--name", "churn"], ["models"], ["rollback", "churn"],
                 ["activate", "churn", "1"], ["rescore"]):
        result = pgscore(*args, "--dsn", empty_db)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and SCHEMA_MISSING in result.stderr, (args, result.stderr)
    with pytest.raises(SchemaMissing, match="has no pgscore schema"):
        list_models(empty_db)
    with pytest.raises(SchemaMissing, match="has no pgscore schema"):
        push_model(empty_db, model_files["logreg"], name="churn")


# -- a typo in a model name: the closest name, never "push it"

def test_typo_in_a_model_name_names_the_closest_one(scored):
    loader = scored.dsn("loader")
    for args in (["activate", "chrun", "1"], ["rollback", "chrun"], ["models", "--name", "chrun"]):
        result = pgscore(*args, "--dsn", loader)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "no model named 'chrun' has been pushed" in result.stderr, (args, result.stderr)
        assert "did you mean 'churn'?" in result.stderr and "Models pushed: churn" in result.stderr, result.stderr
        assert "--name chrun" not in result.stderr, result.stderr  # never a suggestion to push the typo
    listed = pgscore("models", "--name", "churn", "--dsn", loader)
    assert listed.returncode == 0 and "churn" in listed.stdout

    with pytest.raises(psycopg.errors.UndefinedObject, match="no model named 'chrun'") as raised:
        activate(loader, "chrun", 1)
    assert raised.value.diag.message_hint == "did you mean 'churn'? Models pushed: churn"
    with pytest.raises(psycopg.errors.UndefinedObject, match="no model named 'chrun'"):
        rollback(loader, "chrun")
    with pytest.raises(ModelNotFound, match="no model named 'chrun' has been pushed: did you mean 'churn'?"):
        list_models(scored.dsn("analyst"), "chrun")


def test_an_unknown_name_far_from_any_lists_the_names_pushed(scored):
    with scored.connect("loader") as loader:
        diag = sql_error(loader, "SELECT scoring.activate('fraud', 1)")
    assert diag.sqlstate == "42704"
    assert diag.message_hint == ("models pushed: churn; to push one under this name: "
                                 "pgscore push FILE --name fraud --activate")


# -- in psql: unknown names and other user errors raise without a traceback

def test_unknown_model_in_sql_has_no_traceback(scored):
    hint = "did you mean 'churn'? Models pushed: churn"
    with scored.connect("analyst") as analyst:
        for statement in ("SELECT scoring.score('chrun', '{}'::jsonb)",
                          "SELECT scoring.warmup('chrun')",
                          "SELECT * FROM scoring.score_many(ARRAY[1, 2]::bigint[], 'chrun')"):
            diag = sql_error(analyst, statement)
            assert (diag.sqlstate, diag.message_primary, diag.message_hint) == (
                "42704", "no model named 'chrun' has been pushed", hint), statement
            assert diag.context.startswith("PL/pgSQL function scoring._raise_python_error("), diag.context
    with scored.connect("loader") as loader:
        for statement in ("SELECT scoring.activate('chrun', 1)", "SELECT scoring.rollback('chrun')",
                          "CALL scoring.rescore('chrun')"):
            diag = sql_error(loader, statement)
            assert (diag.sqlstate, diag.message_primary, diag.message_hint) == (
                "42704", "no model named 'chrun' has been pushed", hint), statement


def test_other_user_errors_in_sql_have_no_traceback(seeded, model_files):
    with seeded.connect("analyst") as analyst:  # nothing pushed yet
        diag = sql_error(analyst, "SELECT scoring.score(1::bigint)")
        assert (diag.sqlstate, diag.message_hint) == (
            "42704", "push one with: pgscore push FILE --name churn --activate")
        diag = sql_error(analyst, "SELECT scoring.score(NULL::text, '{}'::jsonb)")
        assert (diag.sqlstate, diag.message_primary) == ("22023", "model name is NULL")
    # The compiled path scores score(bigint) and score_many in Python.
    push_model(seeded.dsn("loader"), model_files["gbm"], name="churn", activate=True, scoring_path="compiled")
    with seeded.connect("analyst") as analyst:
        diag = sql_error(analyst, "SELECT scoring.score(4242::bigint)")
        assert (diag.sqlstate, diag.message_primary) == ("P0002", "no customer profile with customer_id 4242")
        assert diag.message_hint == "check the id against public.customer_profiles"
        diag = sql_error(analyst, "SELECT * FROM scoring.score_many(ARRAY[1, 4242, 4343]::bigint[])")
        assert (diag.sqlstate, diag.message_primary) == ("P0002", "no customer profile with customer_ids 4242, 4343")
        diag = sql_error(analyst, "SELECT scoring.score('churn', %s::jsonb)", [json.dumps({"tenure_months": 3})])
        assert diag.sqlstate in ("22023", "42804") and "feature" in diag.message_primary, diag.message_primary
    with seeded.connect("loader") as loader:
        diag = sql_error(loader, "CALL scoring.rescore('churn', 0)")
        assert (diag.sqlstate, diag.message_primary) == (
            "22023", "batch_size must be a positive number of profiles, not 0")
        loader.execute("CALL scoring.rescore('churn', 100)")  # and a good call still rescores


def test_a_bug_keeps_its_traceback(db):
    """An exception pgscore did not expect is no user error: its traceback stays, for the bug report."""
    with db.connect() as admin:
        admin.execute("CREATE FUNCTION scoring._boom_plpython() RETURNS text LANGUAGE plpython3u AS $$\n"
                      "return {}['missing']\n$$")
        admin.execute("CREATE FUNCTION scoring.boom() RETURNS text LANGUAGE plpgsql AS $$"
                      " DECLARE v_sqlstate text; v_message text; v_detail text; v_hint text;"
                      " BEGIN RETURN scoring._boom_plpython();"
                      " EXCEPTION WHEN OTHERS THEN"
                      " GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,"
                      " v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;"
                      " v_message := scoring._raise_python_error(v_sqlstate, v_message, v_detail, v_hint);"
                      " RAISE; END $$")
        with pytest.raises(psycopg.errors.ExternalRoutineException, match="KeyError") as raised:
            admin.execute("SELECT scoring.boom()")
    assert "Traceback (most recent call last)" in raised.value.diag.context


# -- a name the models table refuses: the rule, before connecting

def test_a_name_the_table_refuses_says_the_rule_before_connecting(model_files):
    nowhere = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2"
    result = pgscore("push", str(model_files["logreg"]), "--name", "Churn-V2", "--dsn", nowhere)
    assert result.returncode == 1
    assert result.stderr == ("pgscore: 'Churn-V2' cannot name a model: a model name is a lowercase letter followed "
                             "by up to 62 lowercase letters, digits or underscores (e.g. --name churn_v2)\n")
    with pytest.raises(PushError, match="cannot name a model"):
        push_model(nowhere, model_files["logreg"], name="9lives")


def test_the_constraint_stays(db):
    with db.connect() as admin:
        with pytest.raises(psycopg.errors.CheckViolation):
            admin.execute("INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names)"
                          " VALUES ('Churn-V2', 1, 'joblib', '\\x00', repeat('0', 64), '{}')")


# -- migrate: who may

def test_migrate_as_a_role_that_may_not_says_who_may(db):
    result = pgscore("migrate", "--dsn", db.dsn("loader"))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"role '{db.users['loader']}' may not migrate this database (permission denied" in lines[0]
    assert "run `pgscore migrate` as a superuser" in lines[0] and "plpython3u" in lines[0]


# -- the CLI: every error one line, never a traceback

def test_connection_failure_is_one_line_and_a_hint():
    result = pgscore("models", "--dsn", "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2")
    assert result.returncode == 1
    first, hint = result.stderr.splitlines()
    assert first.startswith("pgscore: cannot connect to PostgreSQL: ") and "127.0.0.1" in first
    assert hint.startswith("hint: pass --dsn, set DATABASE_URL, or start a local server")


def test_cli_turns_any_error_into_a_line():
    from pgscore.cli import error_lines
    from pgscore.dev.localdb import LocalDatabaseError
    from pgscore.dev.runtime import RuntimeInstallError

    install = RuntimeInstallError("pip could not install the server runtime:\nCollecting numpy\n"
                                  "ERROR: No matching distribution found for numpy==9.9")
    assert error_lines(install) == ["pgscore: pip could not install the server runtime: ... "
                                    "ERROR: No matching distribution found for numpy==9.9"]
    assert error_lines(LocalDatabaseError("pg_ctl failed:\nfirst\nsecond\nlast words")) == [
        "pgscore: pg_ctl failed: ... last words"]
    assert error_lines(FileNotFoundError(2, "No such file or directory", "out/model.joblib")) == [
        "pgscore: out/model.joblib: No such file or directory"]
    assert error_lines(KeyError("x")) == [
        "pgscore: unexpected error: KeyError: 'x' (PGSCORE_DEBUG=1 shows the traceback)"]


def test_a_file_the_cli_cannot_write_is_one_line(tmp_path):
    result = pgscore("train-demo", "--rows", "200", "--out", str(tmp_path / "missing" / "model.joblib"))
    assert result.returncode == 1
    assert result.stderr.startswith("pgscore: ") and result.stderr.count("\n") == 1, result.stderr


# -- installing: no setuptools warnings, and the SQL ships

def test_the_package_builds_without_warnings_and_ships_its_sql(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    # Every folder a package is built from (pyproject's package-dir: loader, plpython, benchmarks, ...).
    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for folder in sorted({path.split("/")[0] for path in package_dirs.values()}):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, env=env, timeout=600)
    assert built.returncode == 0, built.stderr
    warnings = [line for line in (built.stdout + built.stderr).splitlines() if "warn" in line.lower()]
    assert warnings == []
    wheel = next((tmp_path / "dist").glob("pgscore-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for folder, source_folder in (("pgscore/sql/idempotent", "sql/idempotent"),
                                  ("pgscore/sql/incremental", "sql/incremental"),
                                  ("pgscore/sql/codeset", "sql/codeset")):
        expected = {f"{folder}/{path.name}" for path in (REPO / source_folder).glob("*.sql")}
        assert expected and expected <= set(names), folder
    assert "pgscore/migrations/released-code.tar.xz" in names


# -- one base class, one home: pgscore.errors

def test_every_client_error_is_a_pgscore_error_defined_in_pgscore_errors():
    import ast
    import importlib
    import inspect

    import pgscore
    from pgscore import approvals, connection, errors
    from pgscore.dev import demo, localdb, runtime

    migrate = importlib.import_module("pgscore.migrate")  # the module: pgscore.migrate is the function

    defined_elsewhere = []
    for path in sorted([*(REPO / "loader").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(base, "id", "").endswith(("Error", "Exception")) for base in node.bases):
                if path.name != "errors.py":
                    defined_elsewhere.append(f"{path.relative_to(REPO)}: {node.name}")
    assert defined_elsewhere == []

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 11 and all(issubclass(c, pgscore.PgscoreError) for c in classes)
    for c in classes:
        assert c.sqlstate is None or (len(c.sqlstate) == 5 and c.sqlstate.isalnum()), c
        assert c.exit_status == 1, c
    # Re-exported where they are raised: the same classes.
    for module, name in ((connection, "SchemaMissing"), (connection, "SchemaTampered"), (migrate, "MigrationError"),
                         (approvals, "NotASha256"), (localdb, "LocalDatabaseError"),
                         (runtime, "RuntimeInstallError"), (demo, "DemoRefused"), (pgscore, "SchemaMissing"),
                         (pgscore, "MigrationError")):
        assert getattr(module, name) is getattr(errors, name), (module.__name__, name)
    assert errors.ModelNotFound.sqlstate == "42704"  # what the server raises for an unknown name
    assert issubclass(errors.ModelNotFound, LookupError) and issubclass(errors.NotASha256, ValueError)


def test_any_pgscore_error_is_one_line_and_its_exit_status():
    from pgscore import cli, errors

    nowhere = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2"
    for error in (errors.PushError("model.skops is not a model file:\nsave it with skops.io.dump"),
                  errors.DemoRefused("database 'x' already holds 3 profile(s)"),
                  errors.UnsupportedModel("the pipeline has no steps")):
        lines = cli.error_lines(error)
        assert len(lines) == 1 and lines[0].startswith("pgscore: "), lines
    result = pgscore("approve", "not-a-sha", "--dsn", nowhere)  # refused before connecting
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "pgscore: 'not-a-sha' is not a sha256 (64 hex digits): copy it from the refusal\n"
    assert cli.main(["approve", "--dsn", nowhere]) == cli.EXIT_USAGE == 2


def test_help_lists_the_exit_status():
    result = pgscore("--help")
    assert result.returncode == 0
    assert "exit status:" in result.stdout
    for status in ("0", "1", "2", "3", "130"):
        assert any(line.split()[:1] == [status] for line in result.stdout.splitlines()), status
