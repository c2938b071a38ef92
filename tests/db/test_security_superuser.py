"""A superuser's pgscore commands never run scoring_owner's code as a superuser.

scoring_owner owns schema scoring; an SQL injection into one of its
SECURITY DEFINER functions acts as it. PostgreSQL runs the functions of a
view, rule or trigger (and a function that runs as its caller) with the
rights of whoever queries or writes, so each test plants such an object as
scoring_owner (``SET ROLE scoring_owner`` from a superuser connection) with
code that writes a marker file when it runs as a superuser, even after
trying ``RESET ROLE``, then runs pgscore's commands as a superuser.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from pgscore import approvals, models
from pgscore.cli import main
from pgscore.connection import SchemaTampered, connect
from pgscore.console import rescore_with_progress
from pgscore.migrate import downgrade, head_revision, migrate
from tests.conftest import ServerFile

SHA = "ab" * 32


@pytest.fixture
def marker(server):
    """Where the planted code writes when it runs as a superuser, as the server sees it."""
    path = Path(f"/tmp/pgscore-owner-as-superuser-{uuid.uuid4().hex}.marker")
    yield ServerFile(path, server["dsn"])
    path.unlink(missing_ok=True)  # the local server's /tmp is this machine's


def pwn_sql(marker: ServerFile) -> str:
    """scoring.pwn(): writes MARKER when it runs as a superuser, first trying
    to become one again with RESET ROLE (SET ROLE is no barrier for code
    that runs in a superuser's session)."""
    return f"""
CREATE FUNCTION scoring.pwn() RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN
  BEGIN EXECUTE 'RESET ROLE'; EXCEPTION WHEN OTHERS THEN NULL; END;
  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
    EXECUTE 'COPY (SELECT current_user, now()) TO ''{marker}''';
  END IF; RETURN true; END $f$;
"""


def as_scoring_owner(db, sql: str) -> None:
    with db.connect() as conn:
        conn.execute("SET ROLE scoring_owner")
        conn.execute(sql)


def plant_view(db, marker: ServerFile) -> None:
    """The review's repro: scoring.models becomes a view that calls pwn()."""
    as_scoring_owner(db, "ALTER TABLE scoring.models RENAME TO models_data;" + pwn_sql(marker) + """
CREATE VIEW scoring.models AS SELECT * FROM scoring.models_data WHERE (SELECT scoring.pwn());
GRANT SELECT, INSERT ON scoring.models TO scoring_loader;""")


def test_set_role_alone_is_no_barrier(db, marker):
    # Why pgscore checks the schema first: code run under SET ROLE in a
    # superuser's session gets the superuser back with RESET ROLE.
    as_scoring_owner(db, pwn_sql(marker) + "GRANT EXECUTE ON FUNCTION scoring.pwn() TO scoring_loader;")
    with db.connect() as conn:
        conn.execute("SET ROLE scoring_loader")
        conn.execute("SELECT scoring.pwn()")
    assert marker.exists()


def test_a_superusers_session_runs_as_scoring_loader(seeded, model_files):
    with connect(seeded.dsn()) as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == ("scoring_loader", "postgres")
    result = models.push_model(seeded.dsn(), model_files["logreg"], name="churn", activate=True)
    rows = models.list_models(seeded.dsn(), "churn")
    # created_by is the login that pushed (session_user), not the role pgscore switched to.
    assert [(r["version"], r["active"], r["created_by"]) for r in rows] == [(result.version, True, "postgres")]


def test_approve_list_and_revoke_after_the_repro_run_no_code_of_scoring_owner(db, marker, capsys):
    plant_view(db, marker)
    assert main(["approve", SHA, "--note", "trusted", "--dsn", db.dsn()]) == 0
    out = capsys.readouterr().out
    assert f"approved {SHA}" in out and "not listed: schema scoring holds objects" in out
    assert "view scoring.models" in out
    assert main(["approve", "--list", "--dsn", db.dsn()]) == 0
    out = capsys.readouterr().out
    assert SHA in out and "not listed" in out
    with db.connect() as conn:
        assert conn.execute("SELECT sha256, note FROM scoring_trusted.approved_pickles").fetchall() == [(SHA, "trusted")]
    assert main(["approve", "--revoke", SHA, "--dsn", db.dsn()]) == 0
    assert f"revoked {SHA}" in capsys.readouterr().out
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM scoring_trusted.approved_pickles").fetchone()[0] == 0
    assert not marker.exists()


def test_approve_names_the_models_read_as_scoring_owner(scored):
    with scored.connect() as conn:
        sha = conn.execute("SELECT sha256 FROM scoring.models").fetchone()[0]
    assert approvals.approve(scored.dsn(), sha) == ["churn v1 (skops)"]
    assert [(r["sha256"], r["models"]) for r in approvals.list_approvals(scored.dsn())] == [(sha, "churn v1 (skops)")]
    assert approvals.revoke(scored.dsn(), sha)


def tampered(db, kind: str, marker: ServerFile) -> str:
    """Plants one route as scoring_owner; returns what the refusal must name."""
    if kind == "view":
        plant_view(db, marker)
        return "view scoring.models"
    if kind == "trigger":
        as_scoring_owner(db, pwn_sql(marker).replace("RETURNS boolean", "RETURNS trigger")
                         .replace("RETURN true", "RETURN NEW")
                         + "CREATE TRIGGER t BEFORE INSERT ON scoring.deployments"
                           " FOR EACH ROW EXECUTE FUNCTION scoring.pwn();")
        return "trigger t on scoring.deployments"
    if kind == "rule":
        as_scoring_owner(db, pwn_sql(marker) + "CREATE RULE r AS ON INSERT TO scoring.models"
                                               " DO ALSO SELECT scoring.pwn();")
        return "rule r on scoring.models"
    if kind == "function":
        # activate runs as its caller: rewritten in plpgsql, it would run as the superuser.
        as_scoring_owner(db, pwn_sql(marker) + """
CREATE OR REPLACE FUNCTION scoring.activate(model_name text, version integer) RETURNS bigint
LANGUAGE plpgsql AS $f$ BEGIN PERFORM scoring.pwn(); RETURN 0; END $f$;""")
        return "function scoring.activate(text,integer) (changed since pgscore installed it)"
    if kind == "definer":
        # Runs as scoring_owner, but in the superuser's transaction, where it could leave a
        # deferred trigger or a pg_temp table that runs as the superuser later.
        as_scoring_owner(db, pwn_sql(marker) + """
CREATE OR REPLACE FUNCTION scoring.warmup(model_name text DEFAULT 'churn') RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $f$ BEGIN PERFORM scoring.pwn(); END $f$;""")
        return "function scoring.warmup(text) (changed since pgscore installed it)"
    if kind == "default":
        as_scoring_owner(db, pwn_sql(marker) + "ALTER TABLE scoring.errors ADD COLUMN x boolean DEFAULT scoring.pwn();")
        return "default value for column x of table scoring.errors (uses scoring.pwn())"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["view", "trigger", "rule", "function", "definer", "default"])
def test_a_superusers_commands_refuse_what_scoring_owner_planted(seeded, model_files, marker, capsys, kind):
    named = tampered(seeded, kind, marker)
    dsn = seeded.dsn()
    for command in (lambda: models.list_models(dsn), lambda: models.activate(dsn, "churn", 1),
                    lambda: models.rollback(dsn, "churn"), lambda: rescore_with_progress(dsn, "churn", 100, quiet=True),
                    lambda: models.export_sql(dsn, "churn", 1),
                    lambda: models.push_model(dsn, model_files["logreg"], name="churn", activate=True)):
        with pytest.raises(SchemaTampered) as refused:
            command()
        assert named in str(refused.value) and "scoring_owner" in str(refused.value)
    assert main(["models", "--dsn", dsn]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pgscore: schema scoring holds objects pgscore did not create") and named in err
    assert not marker.exists()


def test_the_loader_login_is_not_refused(seeded, model_files, marker):
    # The check guards superusers' sessions only: the planted trigger's code
    # runs as the loader who pushes, which it could anyway.
    tampered(seeded, "trigger", marker)
    models.push_model(seeded.dsn("loader"), model_files["logreg"], name="churn", activate=True)
    assert not marker.exists()


def test_migrate_refuses_after_the_repro(db, marker, capsys):
    plant_view(db, marker)
    # At head: alembic has nothing to run, and pgscore migrate then refuses to read the schema.
    assert main(["migrate", "--dsn", db.dsn()]) == 1
    err = capsys.readouterr().err
    assert "view scoring.models (pgscore's scoring.models is a table)" in err
    assert "function scoring.pwn()" in err and "table scoring.models_data" in err
    assert not marker.exists()


def test_the_migration_refuses_before_it_touches_the_schema(db, marker):
    downgrade(db.dsn(), "0008")
    plant_view(db, marker)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as refused:
        migrate(db.dsn())
    assert "view scoring.models (pgscore's scoring.models is a table)" in refused.value.diag.message_primary
    assert "scoring_owner" in refused.value.diag.message_hint
    with db.connect() as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0008"
    assert not marker.exists()
    # Dropped, and pgscore's table restored: the migration passes.
    as_scoring_owner(db, "DROP VIEW scoring.models; DROP FUNCTION scoring.pwn();"
                         " ALTER TABLE scoring.models_data RENAME TO models;")
    migrate(db.dsn())
    with connect(db.dsn()) as conn:
        assert conn.execute("SELECT scoring.runtime_info() ->> 'schema_revision'").fetchone()[0] == head_revision()
    assert not marker.exists()


def test_a_clean_database_passes_the_check(db):
    with db.connect() as conn:
        conn.execute(Path(__file__).resolve().parents[2].joinpath("sql/idempotent/005-schema-check.sql").read_text())
    assert main(["migrate", "--dsn", db.dsn()]) == 0
