"""Fixtures: a real PostgreSQL with plpython3u, a migrated template database,
a fresh copy of it per test, and login users for the three roles.

The server is the local one of ``pgscore db`` (started if needed), or the
superuser DSN in PGSCORE_TEST_DSN. Tests marked ``docker`` run the same
SQL-level tests against the Docker image (see tests/docker/).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgscore.dev.demo_data import save_model
from pgscore.dev.seed import seed_profiles
from pgscore.migrate import migrate
from tests.factories import demo_model

TEMPLATE = "pgscore_test_template"
PASSWORD = secrets.token_urlsafe(12)
ROLE_USERS = {"app": "scoring_app", "analyst": "scoring_analyst", "loader": "scoring_loader"}


@dataclass(frozen=True)
class Database:
    """One throwaway migrated database, reachable as its owner and as each role."""

    admin: str  # superuser DSN of this database
    name: str
    users: dict

    def dsn(self, who: str = "admin") -> str:
        if who == "admin":
            return self.admin
        return make_conninfo(self.admin, user=self.users[who], password=PASSWORD)

    def connect(self, who: str = "admin", **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.dsn(who), autocommit=kwargs.pop("autocommit", True), **kwargs)


@contextlib.contextmanager
def _server_dsn(target: str) -> Iterator[str]:
    if target == "docker":
        from tests.docker.target import docker_postgres, docker_unavailable_reason

        reason = docker_unavailable_reason()
        if reason:
            pytest.skip(f"docker target unavailable: {reason}")
        with docker_postgres() as dsn:
            yield dsn
        return
    given = os.environ.get("PGSCORE_TEST_DSN")
    if given:
        yield given
        return
    from pgscore.dev import runtime
    from pgscore.dev.localdb import local_database

    local = local_database(os.environ.get("PGSCORE_TEST_HOME"))
    # The shared server scores ONNX models (tests/db/test_onnx.py): the onnx server extra.
    runtime.add(local.dir / runtime.EXTRAS_FILE, ["onnx"])
    was_running = local.is_running()
    try:
        yield local.start()
    finally:
        if not was_running:
            local.stop()  # leave the machine as the tests found it


def own_server_folder(prefix: str) -> Path:
    """A new folder for a server of a test's own (``pgscore db`` layout), which
    the postgres OS user can reach, with the shared server's runtime folder
    linked in (no pip install); without its extras (no onnxruntime)."""
    from pgscore.dev.localdb import local_database

    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(0o755)
    shared = local_database(os.environ.get("PGSCORE_TEST_HOME")).state().get("runtime")
    if shared and (Path(shared) / ".complete").exists():
        (folder / "runtime").mkdir()
        (folder / "runtime" / Path(shared).name).symlink_to(shared, target_is_directory=True)
    return folder


@pytest.fixture(scope="session", params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def server(request) -> Iterator[dict]:
    """Superuser DSN of a server with a migrated template database and role users."""
    with _server_dsn(request.param) as dsn:
        suffix = uuid.uuid4().hex[:6]
        users = {who: f"{role}_{suffix}" for who, role in ROLE_USERS.items()}
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        template_dsn = make_conninfo(dsn, dbname=TEMPLATE)
        migrate(template_dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for who, user in users.items():
                conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{PASSWORD}' IN ROLE {ROLE_USERS[who]}")
        try:
            yield {"dsn": dsn, "users": users, "target": request.param}
        finally:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for datname, in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pgscore_t_%'"):
                    conn.execute(f"DROP DATABASE IF EXISTS {datname} WITH (FORCE)")
                for user in users.values():
                    conn.execute(f"DROP ROLE IF EXISTS {user}")


_counter = itertools.count()


@pytest.fixture
def db(server) -> Iterator[Database]:
    """A fresh migrated database (a copy of the template), dropped afterwards."""
    name = f"pgscore_t_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server["dsn"], autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    database = Database(admin=make_conninfo(server["dsn"], dbname=name), name=name, users=server["users"])
    try:
        yield database
    finally:
        with psycopg.connect(server["dsn"], autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """Demo pipelines saved with joblib: 'logreg' and 'gbm'."""
    folder = tmp_path_factory.mktemp("models")
    files = {}
    for kind in ("logreg", "gbm"):
        files[kind] = Path(save_model(demo_model(kind), folder / f"{kind}.joblib"))
    return files


@pytest.fixture
def seeded(db) -> Database:
    """``db`` with 300 profiles (ids 1..300)."""
    with db.connect() as conn:
        seed_profiles(conn, 300, seed=3)
    return db


@pytest.fixture
def scored(seeded, model_files) -> Database:
    """``seeded`` with the logreg demo model pushed and active (as the loader role)."""
    from pgscore import push_model

    push_model(seeded.dsn("loader"), model_files["logreg"], name="churn", activate=True)
    return seeded


def local_scores(model, db: Database | psycopg.Connection, customer_ids) -> dict[int, float]:
    """The model's predict_proba here, on profiles read as the server reads them.

    ``model`` is a fitted estimator or the path of a joblib file; ``db`` a
    Database (read as its owner) or an open connection.
    """
    import joblib

    from pgscore.models import fetch_feature_rows
    from pgscore_server.features import to_frame

    if isinstance(model, (str, os.PathLike)):
        model = joblib.load(model)
    names = list(model.feature_names_in_)
    if isinstance(db, psycopg.Connection):
        rows = fetch_feature_rows(db, names, list(customer_ids))
    else:
        with db.connect() as conn:
            rows = fetch_feature_rows(conn, names, list(customer_ids))
    proba = model.predict_proba(to_frame(rows, names))[:, 1]
    return {row["customer_id"]: float(p) for row, p in zip(rows, proba)}


class ProfileState(NamedTuple):
    """What a complaint and its scoring change on one customer's profile."""

    complaint_count: int
    churn_score: float | None
    churn_model_id: int | None
    churn_scored_at: object
    complaints: int  # rows in complaints for the customer


def profile_state(db: Database, customer_id: int) -> ProfileState:
    with db.connect() as conn:
        return ProfileState(*conn.execute(
            "SELECT complaint_count, churn_score, churn_model_id, churn_scored_at,"
            " (SELECT count(*) FROM complaints c WHERE c.customer_id = p.customer_id)"
            " FROM customer_profiles p WHERE customer_id = %s", [customer_id]).fetchone())


def denied(conn: psycopg.Connection, statement, *, role: str | None = None) -> str | None:
    """None when ``statement`` (run as ``role``, when given, by SET LOCAL ROLE) fails
    with InsufficientPrivilege, else what happened instead."""
    try:
        with conn.transaction():
            if role:
                conn.execute(f"SET LOCAL ROLE {role}")
            conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return None
    except psycopg.Error as exc:
        return f"{type(exc).__name__} ({exc.sqlstate}): {exc.diag.message_primary}"
    return "succeeded"


def drop_category_checks(conn: psycopg.Connection) -> None:
    """Drop customer_profiles' CHECKs on category values, so that a test can store
    categories no model has seen (in a throwaway database)."""
    names = conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'public.customer_profiles'::regclass AND contype = 'c'"
        " AND pg_get_constraintdef(oid) LIKE '%%ANY%%'").fetchall()
    for name, in names:
        conn.execute(f'ALTER TABLE public.customer_profiles DROP CONSTRAINT "{name}"')


def hijacked(db: Database, who: str, set_search_path: str) -> tuple[psycopg.Connection, list[str]]:
    """A connection as ``who`` whose search_path ``set_search_path`` (a SET
    statement) put a hostile schema first, and the warnings it receives."""
    conn = db.connect(who)
    warnings: list[str] = []
    conn.add_notice_handler(lambda diag: warnings.append(diag.message_primary or ""))
    conn.execute(set_search_path)
    assert set_search_path.endswith(" = " + conn.execute("SHOW search_path").fetchone()[0])
    return conn, warnings


def postmaster_started(db: Database):
    """When the server last started: a test compares it before and after to prove no crash restarted it."""
    with db.connect() as admin:
        return admin.execute("SELECT pg_postmaster_start_time()").fetchone()[0]


def conninfo_user(dsn: str) -> str:
    return conninfo_to_dict(dsn).get("user", "")


@dataclass(frozen=True)
class ServerFile:
    """A path as the database server's OS user sees it: the same /tmp for the
    local server, the container's own for the Docker target. Security tests
    ask the server whether a payload wrote it, so that their "nothing was
    written" is never true merely because the file went to another machine."""

    path: Path
    dsn: str  # a superuser's, which pg_stat_file needs

    def exists(self) -> bool:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute("SELECT (pg_catalog.pg_stat_file(%s, true)).size IS NOT NULL",
                                [str(self.path)]).fetchone()[0]

    def __str__(self) -> str:
        return str(self.path)

