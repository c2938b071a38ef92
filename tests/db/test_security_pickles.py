"""The pickle boundary (issue 18, item 1), probed as the roles that tried it.

A malicious joblib file whose unpickling writes a marker file in /tmp (the
server runs as another OS user; the marker's name says where it ran) is
pushed, planted and switched to the scikit-learn path by the loader, and
scored by the app and the analyst. The server must never unpickle it: every
attempt fails with SQLSTATE 42501 and a hint naming `pgscore approve`. Only
after a superuser approved its sha256 does a (benign) joblib model load.
On the loader's side a joblib file is unpickled in a child process without
database credentials, or in-process only with --i-trust-this-pickle.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import uuid
from pathlib import Path

import joblib
import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgscore import PushError, push_model
from pgscore import cli, models, push
from pgscore.dev.demo_data import train_demo_model
from pgscore_server import formats
from pgscore_server import runtime as server_runtime
from pgscore_server.features import to_frame
from tests.conftest import ServerFile, local_scores

# The payload: writes MARKER-server (inside PostgreSQL, where the plpy module
# exists) or MARKER-client, holding the database variables it could see,
# then returns the real model so that everything else about it looks right.
PAYLOAD = (
    "(lambda os, sys: (open({marker!r} + ('-server' if 'plpy' in sys.modules else '-client'), 'w').write("
    "__import__('json').dumps(sorted(k for k in os.environ if k.startswith('PG') or k == 'DATABASE_URL'))),"
    " __import__('pickle').loads({model!r}))[1])(__import__('os'), __import__('sys'))"
)


class Malicious:
    def __init__(self, marker: str, model) -> None:
        self.expression = PAYLOAD.format(marker=marker, model=pickle.dumps(model))

    def __reduce__(self):
        return (eval, (self.expression,))


@pytest.fixture(scope="module")
def logreg():
    model, _ = train_demo_model(rows=2000, seed=1, kind="logreg")
    return model


@pytest.fixture
def marker(server) -> Path:
    """A unique /tmp path prefix; the test fails if the server wrote MARKER-server
    (asked of the server: a container's /tmp is not this machine's)."""
    prefix = Path(f"/tmp/pgscore-pickle-{uuid.uuid4().hex}")
    yield prefix
    written, client = ServerFile(Path(f"{prefix}-server"), server["dsn"]), Path(f"{prefix}-client")
    try:
        assert not written.exists(), "the server unpickled the malicious blob"
    finally:
        for path in (written.path, client):
            path.unlink(missing_ok=True)


def evil_file(tmp_path: Path, marker: Path, model) -> Path:
    path = tmp_path / "evil.joblib"
    joblib.dump(Malicious(str(marker), model), path)
    return path


def joblib_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


def no_role_gained_anything(db) -> None:
    with db.connect() as admin:
        gained = admin.execute("SELECT rolname FROM pg_roles WHERE (rolsuper OR rolcreaterole OR rolbypassrls)"
                               " AND (rolname LIKE 'scoring%%' OR rolname = ANY(%s))",
                               [list(db.users.values())]).fetchall()
    assert gained == []


def refused(exc_info, sha256: str, subject: str) -> None:
    """The refusal says what was refused, why, and what a superuser runs."""
    diag = exc_info.value.diag
    assert exc_info.value.sqlstate == "42501"
    assert f"{subject} is a pickle (format joblib, sha256 {sha256}) that no superuser has approved" \
        in diag.message_primary
    assert "loading a pickle runs code as the server's OS user" in diag.message_hint
    assert f"a superuser who trusts {subject} runs: pgscore approve {sha256}" in diag.message_hint


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# -- the loader's probes -------------------------------------------------------------

def test_cli_push_of_a_malicious_joblib_is_refused_before_the_server_sees_it(seeded, tmp_path, marker, logreg,
                                                                              capsys, monkeypatch):
    path = evil_file(tmp_path, marker, logreg)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    # Credentials in this process's environment, as a data scientist's shell may have them.
    monkeypatch.setenv("DATABASE_URL", seeded.dsn("loader"))
    monkeypatch.setenv("PGPASSWORD", "secret")
    status, _, err = run_cli(capsys, "push", str(path), "--name", "churn", "--format", "joblib",
                             "--path", "sklearn", "--dsn", seeded.dsn("loader"))
    assert status == 1
    assert f"is a pickle (format joblib, sha256 {sha256}) that no superuser has approved" in err
    assert f"runs: pgscore approve {sha256}" in err and "then push it again" in err
    # Unpickled on this side in the child process only, which saw no credentials.
    seen = json.loads(Path(f"{marker}-client").read_text())
    assert "DATABASE_URL" not in seen and "PGPASSWORD" not in seen
    assert set(seen) <= {"PGPASSFILE", "PGSERVICEFILE", "PGSYSCONFDIR"}
    # The same with --i-trust-this-pickle (unpickled in this process): the server still refuses it.
    Path(f"{marker}-client").unlink()
    status, _, err = run_cli(capsys, "push", str(path), "--name", "churn", "--format", "joblib",
                             "--path", "sklearn", "--i-trust-this-pickle", "--dsn", seeded.dsn("loader"))
    assert status == 1 and f"pgscore approve {sha256}" in err
    assert Path(f"{marker}-client").exists()
    with seeded.connect() as admin:
        assert admin.execute("SELECT count(*) FROM scoring.models").fetchone()[0] == 0
    no_role_gained_anything(seeded)


def plant(conn: psycopg.Connection, blob: bytes, path: str = "sklearn") -> tuple[int, int]:
    """As issue 18 did: a joblib row with the right sha256 and an empty runtime (passes the version check)."""
    return conn.execute(
        "INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names, runtime, scoring_path)"
        " VALUES ('churn', 1, 'joblib', %b, %s, %s, '{}', %s) RETURNING model_id, version",
        [blob, hashlib.sha256(blob).hexdigest(), ["tenure_months", "contract", "monthly_charges"], path],
    ).fetchone()


def test_planted_joblib_row_is_never_unpickled_by_any_role(seeded, marker, logreg):
    blob = joblib_bytes(Malicious(str(marker), logreg))
    sha256 = hashlib.sha256(blob).hexdigest()
    features = {"tenure_months": 3, "contract": "Month-to-month", "monthly_charges": 80.0}
    with seeded.connect("loader") as loader:
        model_id, version = plant(loader, blob)
        subject = f"model 'churn' v{version}"
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as push_test_score:
            loader.execute("SELECT * FROM scoring.score_with_model(%s, ARRAY[1, 2]::bigint[])", [model_id])
        refused(push_test_score, sha256, subject)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as activation:
            loader.execute("SELECT scoring.activate('churn', %s)", [version])
        refused(activation, sha256, subject)
        # Past activate's check: a deployment row written directly.
        loader.execute("INSERT INTO scoring.deployments (name, model_id) VALUES ('churn', %s)", [model_id])
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as rescore:
            loader.execute("CALL scoring.rescore('churn', 100)")
        refused(rescore, sha256, subject)
    with seeded.connect("app") as app:
        warnings: list[str] = []
        app.add_notice_handler(lambda diag: warnings.append(diag.message_primary or ""))
        app.execute("INSERT INTO complaints (customer_id, channel) VALUES (5, 'phone')")  # kept, not scored
        app.execute("SET scoring.on_error = 'raise'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as insert:
            app.execute("INSERT INTO complaints (customer_id, channel) VALUES (6, 'phone')")
        refused(insert, sha256, subject)
    assert any("no superuser has approved" in warning for warning in warnings)
    with seeded.connect("analyst") as analyst:
        for statement, args in (("SELECT scoring.score(5::bigint)", []),
                                ("SELECT scoring.score('churn', %s)", [Jsonb(features)]),
                                ("SELECT * FROM scoring.score_many(ARRAY[5, 6]::bigint[])", []),
                                ("SELECT scoring.warmup('churn')", [])):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as analyst_call:
                analyst.execute(statement, args)
            refused(analyst_call, sha256, subject)
    with seeded.connect() as admin:
        counts = admin.execute("SELECT complaint_count, churn_score FROM customer_profiles"
                               " WHERE customer_id = 5").fetchone()
        recorded = admin.execute("SELECT sqlstate, message FROM scoring.errors WHERE customer_id = 5").fetchall()
    assert counts[0] >= 1 and counts[1] is None
    assert [state for state, _ in recorded] == ["42501"]
    assert f"sha256 {sha256}" in recorded[0][1]
    no_role_gained_anything(seeded)


def test_a_joblib_model_on_the_sql_path_cannot_be_switched_to_unpickling(seeded, tmp_path, marker, logreg):
    """Pushed as joblib, it lands on the sql path (scored from the compiled
    arrays, nothing unpickled); set_scoring_path(..., 'sklearn') and the
    column written directly are both refused where it would be unpickled."""
    path = evil_file(tmp_path, marker, logreg)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    result = push_model(seeded.dsn("loader"), path, name="churn", format="joblib", activate=True)
    assert result.scoring_path == "sql"
    Path(f"{marker}-client").unlink()  # the loader's child process unpickled it; the server never does
    with seeded.connect("analyst") as analyst:
        document = analyst.execute("SELECT to_jsonb(p) - 'customer_id' FROM customer_profiles p"
                                   " WHERE customer_id = 8").fetchone()[0]
        before = analyst.execute("SELECT scoring.score('churn', %s)", [Jsonb(document)]).fetchone()[0]
    with seeded.connect("loader") as loader:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as switch:
            loader.execute("SELECT scoring.set_scoring_path('churn', 1, 'sklearn')")
        refused(switch, sha256, "model 'churn' v1")
        loader.execute("SELECT scoring.set_scoring_path('churn', 1, 'compiled')")  # no pickle: allowed
        loader.execute("UPDATE scoring.models SET scoring_path = 'sklearn' WHERE model_id = %s", [result.model_id])
    with seeded.connect("analyst") as analyst:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as what_if:
            analyst.execute("SELECT scoring.score('churn', %s)", [Jsonb(document)])
        refused(what_if, sha256, "model 'churn' v1")
    names = list(logreg.feature_names_in_)
    assert before == pytest.approx(float(logreg.predict_proba(to_frame([document], names))[0, 1]), abs=1e-9)
    no_role_gained_anything(seeded)


def test_compiled_and_sql_paths_never_unpickle(seeded, tmp_path, marker, logreg):
    """The malicious blob stored as joblib, scored on the compiled path by every entry point."""
    path = evil_file(tmp_path, marker, logreg)
    result = push_model(seeded.dsn("loader"), path, name="churn", format="joblib", scoring_path="compiled",
                        activate=True)
    assert result.scoring_path == "compiled" and result.sample_size > 0
    with seeded.connect("app") as app:
        app.execute("SET scoring.on_error = 'raise'")
        app.execute("INSERT INTO complaints (customer_id, channel) VALUES (4, 'phone'), (9, 'chat')")
    with seeded.connect("analyst") as analyst:
        analyst.execute("SELECT scoring.warmup('churn')")
        one = analyst.execute("SELECT scoring.score(4::bigint)").fetchone()[0]
        many = dict(analyst.execute("SELECT * FROM scoring.score_many(ARRAY[4, 9]::bigint[])").fetchall())
    with seeded.connect("loader") as loader:
        loader.execute("CALL scoring.rescore('churn', 100)")
        loader.execute("SELECT scoring.set_scoring_path('churn', 1, 'sql')")
    with seeded.connect("app") as app:
        app.execute("SET scoring.on_error = 'raise'")
        app.execute("INSERT INTO complaints (customer_id, channel) VALUES (4, 'phone')")
    with seeded.connect("analyst") as analyst:
        now = dict(analyst.execute("SELECT * FROM scoring.score_many(ARRAY[4, 9]::bigint[])").fetchall())
    with seeded.connect() as admin:
        stored = dict(admin.execute("SELECT customer_id, churn_score FROM customer_profiles"
                                    " WHERE customer_id IN (4, 9)").fetchall())
        errors = admin.execute("SELECT count(*) FROM scoring.errors").fetchone()[0]
    assert one == pytest.approx(many[4], abs=1e-9)
    assert stored == pytest.approx(now, abs=1e-9) and now[9] == pytest.approx(many[9], abs=1e-9)
    assert errors == 0
    assert now == pytest.approx(local_scores(logreg, seeded, [4, 9]), abs=1e-9)


# -- approval ------------------------------------------------------------------------

def test_after_a_superusers_approval_a_joblib_model_loads_and_scores(seeded, model_files, capsys):
    path = model_files["logreg"]
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    loader_dsn = seeded.dsn("loader")
    with pytest.raises(PushError, match=f"pgscore approve {sha256}"):
        push_model(loader_dsn, path, name="churn", format="joblib", scoring_path="sklearn")
    # Only a superuser approves.
    status, _, err = run_cli(capsys, "approve", sha256, "--dsn", loader_dsn)
    assert status == 1 and "only a superuser can approve a pickle" in err
    status, _, err = run_cli(capsys, "approve", "abc", "--dsn", seeded.dsn())
    assert status == 1 and "is not a sha256" in err
    status, out, _ = run_cli(capsys, "approve", sha256.upper(), "--note", "our demo model", "--dsn", seeded.dsn())
    assert status == 0 and f"approved {sha256}" in out and "no pushed model has this blob yet" in out
    result = push_model(loader_dsn, path, name="churn", format="joblib", scoring_path="sklearn", activate=True)
    assert (result.scoring_path, result.sample_size) == ("sklearn", 200)
    with seeded.connect("analyst") as analyst:
        score = analyst.execute("SELECT scoring.score(11::bigint)").fetchone()[0]
    assert score == pytest.approx(local_scores(path, seeded, [11])[11], abs=1e-9)
    status, out, _ = run_cli(capsys, "approve", "--list", "--dsn", seeded.dsn())
    assert status == 0 and sha256 in out and "churn v1 (joblib)" in out and "our demo model" in out
    # Revoked: the next load in any backend is refused again.
    status, out, _ = run_cli(capsys, "approve", "--revoke", sha256, "--dsn", seeded.dsn())
    assert status == 0 and f"revoked {sha256}" in out
    with seeded.connect("analyst") as analyst:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as again:
            analyst.execute("SELECT scoring.score(11::bigint)")
    refused(again, sha256, "model 'churn' v1")
    no_role_gained_anything(seeded)


def test_upgrading_to_0009_approves_nothing(server, logreg):
    """A joblib model scored with scikit-learn before 0009 stops loading
    until a superuser approves it (CHANGELOG's upgrade note)."""
    from psycopg.conninfo import make_conninfo

    from pgscore.migrate import migrate
    from pgscore.dev.seed import seed_profiles

    name = f"pgscore_t_upgrade_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server["dsn"], autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = make_conninfo(server["dsn"], dbname=name)
    blob = joblib_bytes(logreg)
    sha256 = hashlib.sha256(blob).hexdigest()
    try:
        migrate(dsn, "0008")
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed_profiles(conn, 20, seed=2)
            conn.execute("INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names, runtime)"
                         " VALUES ('churn', 1, 'joblib', %b, %s, %s, %s)",
                         [blob, sha256, list(logreg.feature_names_in_), Jsonb(dict(server_runtime.versions()))])
            conn.execute("SELECT scoring.activate('churn', 1)")
            before = conn.execute("SELECT scoring.score(3::bigint)").fetchone()[0]
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"sha256 {sha256}"):
                conn.execute("SELECT scoring.score(3::bigint)")
            conn.execute("INSERT INTO scoring_trusted.approved_pickles (sha256) VALUES (%s)", [sha256])
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT scoring.score(3::bigint)").fetchone()[0] == pytest.approx(before, abs=1e-12)
    finally:
        with psycopg.connect(server["dsn"], autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- the loader's side -------------------------------------------------------------

@pytest.mark.parametrize("name, content", [
    ("README.md", b"# pgscore\n\nScore customers inside PostgreSQL.\n"),
    ("train.py", b"import sys, numpy as np\nprint('hello')\n"),
    ("empty.joblib", b""),
])
def test_a_file_that_is_not_a_model_says_what_is_expected(tmp_path, capsys, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    status, _, err = run_cli(capsys, "push", str(path), "--name", "churn", "--dsn", "host=/nonexistent")
    assert status == 1
    assert err.strip() == (f"pgscore: {path} is not a model file: pgscore push expects a fitted scikit-learn "
                           "estimator saved with joblib.dump (.joblib) or skops.io.dump (.skops)")


def test_a_pickle_that_does_not_load_says_what_is_expected(tmp_path):
    path = tmp_path / "broken.joblib"
    path.write_bytes(pickle.dumps({"a": 1})[:-3])  # a pickle, cut short
    with pytest.raises(PushError, match=r"broken.joblib could not be loaded as a joblib model \(.*\): pgscore "
                                        r"push expects a fitted scikit-learn estimator saved with joblib.dump"):
        models.load_model_file(path)


def test_a_skops_file_is_pushed_without_unpickling(seeded, tmp_path, logreg, monkeypatch):
    import skops.io

    path = tmp_path / "churn.skops"
    skops.io.dump(logreg, path)

    def no_pickles(*args, **kwargs):
        raise AssertionError("a skops file was unpickled")

    monkeypatch.setattr(push, "_unpickle_in_child", no_pickles)
    monkeypatch.setattr(push, "_load_blob", no_pickles)
    result = push_model(seeded.dsn("loader"), path, name="churn", activate=True, scoring_path="sklearn")
    with seeded.connect("analyst") as analyst:
        score = analyst.execute("SELECT scoring.score(12::bigint)").fetchone()[0]
    with seeded.connect() as admin:
        fmt = admin.execute("SELECT format FROM scoring.models WHERE model_id = %s", [result.model_id]).fetchone()[0]
        from pgscore.models import fetch_feature_rows
        from pgscore_server.features import to_frame

        names = list(logreg.feature_names_in_)
        expected = float(logreg.predict_proba(to_frame(fetch_feature_rows(admin, names, [12]), names))[0, 1])
    assert fmt == "skops"
    assert score == pytest.approx(expected, abs=1e-9)


def test_a_pipeline_skops_cannot_rebuild_needs_i_trust_this_pickle(tmp_path):
    from tests.factories import untrusted_function_pipeline

    path = tmp_path / "custom.joblib"
    joblib.dump(untrusted_function_pipeline(), path)
    with pytest.raises(PushError, match=r"cannot rebuild without unpickling it .*_operator.neg.*"
                                        r"--i-trust-this-pickle and --format joblib"):
        models.load_model_file(path)
    estimator, data, _ = models.load_model_file(path, trust_pickle=True)
    assert hasattr(estimator, "predict_proba") and data == path.read_bytes()


def test_formats_loads_unpickles_only_the_approved_digest(marker, logreg):
    blob = joblib_bytes(Malicious(str(marker), logreg))
    for approved in (None, "0" * 64, hashlib.sha256(b"another blob").hexdigest()):
        with pytest.raises(formats.PickleNotApproved):
            formats.loads(blob, "joblib", approved)
    assert not Path(f"{marker}-client").exists()
    benign = joblib_bytes(logreg)
    assert hasattr(formats.loads(benign, "joblib", hashlib.sha256(benign).hexdigest()), "predict_proba")
    assert [formats.unpickles(fmt) for fmt in ("skops", "joblib", "onnx", None)] == [False, True, True, True]
