"""`pgscore demo`: the whole flow, end to end, in about a minute.

Without a DSN it runs on the local throwaway PostgreSQL (`pgscore db`),
in a fresh database ``pgscore_demo``, and stops the server afterwards if it
started it. Every step prints what a user would type to do it by hand.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import psycopg

from .. import api
from ..connection import resolve_conninfo
from ..console import print_table, rescore_with_progress
from ..errors import DemoRefused
from . import localdb
from .demo_data import save_model, train_demo_model
from .seed import seed_profiles

DEMO_DATABASE = "pgscore_demo"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(dsn: str | None, profiles: int = 5000, keep: bool = False) -> None:
    """The whole flow, in a fresh database on the local server, or in the
    database of ``dsn`` (else ``DATABASE_URL``, else libpq's environment)
    when one is given. Raises DemoRefused, changing nothing, when that
    database already has pushed models or complaints: the demo pushes and
    activates models named 'churn' and inserts complaints."""
    target = resolve_conninfo(dsn)
    started_here = False
    local = None
    if target:
        refuse_a_database_in_use(target, "--dsn" if dsn else "DATABASE_URL")
    else:
        local = localdb.local_database()
        step("starting the local PostgreSQL (pgscore db start)")
        started_here = not local.is_running()
        admin = local.start()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DEMO_DATABASE}")
        target = local.dsn(DEMO_DATABASE)
        print(f"throwaway database: {target}")
    try:
        _flow(target, profiles)
    finally:
        if started_here and not keep and local is not None:
            local.stop()
            print("\nstopped the local PostgreSQL (run with --keep to explore it, then `pgscore db stop`)")


def refuse_a_database_in_use(dsn: str, source: str) -> None:
    """Raises DemoRefused when the database (given by ``source``) holds
    profiles, complaints or pushed models: the demo would change them."""
    tables = {"public.customer_profiles": "profile(s)", "public.complaints": "complaint(s)",
              "scoring.models": "pushed model(s)"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        held = []
        for table, what in tables.items():
            if conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()[0]:
                count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 (fixed names)
                if count:
                    held.append(f"{count} {what}")
    if held:
        raise DemoRefused(
            f"database {name!r} (from {source}) already holds {', '.join(held)}; the demo would add profiles "
            "and complaints and push and activate models named 'churn' there. Run it on a throwaway local "
            "server instead (`env -u DATABASE_URL pgscore demo`), or give --dsn of an empty database")


ATTACH_CHURN = (
    "SELECT scoring.attach('churn', 'public.customer_profiles', 'customer_id', score_column => 'churn_score',"
    " model_id_column => 'churn_model_id', scored_at_column => 'churn_scored_at', score_on_insert => false)"
)
ATTACH_COMPLAINTS = "SELECT scoring.attach_events('churn', 'public.complaints', 'customer_id', 'complaint_count')"


def _flow(dsn: str, profiles: int) -> None:
    step("migrating (pgscore migrate = alembic upgrade head)")
    api.migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT count(*) FROM public.customer_profiles").fetchone()[0] == 0:
            step(f"seeding {profiles} synthetic Telco-like customer profiles")
            seed_profiles(conn, profiles, seed=7)
        total = conn.execute("SELECT count(*) FROM public.customer_profiles").fetchone()[0]
        print(f"{total} profiles")
        # The reference tables are a scorer like any table of yours (docs/scorers.md); the
        # migration attached them already, and attaching again with the same binding changes nothing.
        step("attaching the scorer 'churn' to the profiles, with complaints as its events (scoring.attach)")
        print(conn.execute(ATTACH_CHURN).fetchone()[0])
        print(conn.execute(ATTACH_COMPLAINTS).fetchone()[0])

    workdir = Path(tempfile.mkdtemp(prefix="pgscore-demo-"))
    step("training a churn pipeline (pgscore train-demo)")
    pipeline, metrics = train_demo_model(rows=5000, seed=0, kind="logreg")
    print(f"logistic regression, holdout ROC AUC {metrics['roc_auc']:.3f}")
    v1_path = save_model(pipeline, workdir / "churn-logreg.joblib")

    step("pushing it (pgscore push churn-logreg.joblib --name churn --activate)")
    v1 = api.push_model(dsn, v1_path, name="churn", activate=True, note="demo logreg", metrics=metrics)
    print(f"churn v{v1.version} (model_id {v1.model_id}) active; test-scored {v1.sample_size} profiles in the "
          f"database, max difference from local predict_proba {v1.max_abs_diff:.1e}")
    print(f"scoring path: {v1.scoring_path} ({v1.path_note})")

    step("scoring every profile (pgscore rescore churn)")
    started = time.perf_counter()
    rescore_with_progress(dsn, "churn", 10000, quiet=True)
    print(f"rescored {profiles} profiles in {time.perf_counter() - started:.2f} s")

    with psycopg.connect(dsn, autocommit=True) as conn:
        customers = [row[0] for row in conn.execute(
            "SELECT customer_id FROM public.customer_profiles WHERE complaint_count = 0"
            " AND contract = 'Month-to-month' ORDER BY customer_id LIMIT 4")]
        step(f"the application inserts complaints for customers {customers} (as role scoring_app)")
        rng = random.Random(1)
        history = {customer_id: [_score(conn, customer_id)] for customer_id in customers}
        for _round in range(3):
            with conn.transaction():
                conn.execute("SET LOCAL ROLE scoring_app")
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO complaints (customer_id, channel, category, body) VALUES (%s, %s, %s, %s)",
                        [(c, rng.choice(["phone", "email", "chat"]), rng.choice(["billing", "network", "service"]),
                          "demo complaint") for c in customers],
                    )
            for customer_id in customers:
                history[customer_id].append(_score(conn, customer_id))
        print_table(
            ["customer_id", "complaints", "churn score: before", "after 1", "after 2", "after 3"],
            [[c, conn.execute("SELECT complaint_count FROM customer_profiles WHERE customer_id = %s", [c]).fetchone()[0],
              *(f"{s:.3f}" for s in history[c])] for c in customers],
        )

        step("an analyst scores in SQL (role scoring_analyst)")
        with conn.transaction():
            conn.execute("SET LOCAL ROLE scoring_analyst")
            many = conn.execute("SELECT customer_id, round(score::numeric, 3) FROM scoring.score_many(%s)",
                                [customers]).fetchall()
            print(f"scoring.score_many(ARRAY{customers}) -> {[(c, float(s)) for c, s in many]}")
            what_if = conn.execute(
                "SELECT scoring.score('churn', (to_jsonb(p) - 'customer_id') || '{\"contract\": \"Two year\"}')"
                " FROM customer_profiles p WHERE customer_id = %s", [customers[0]]).fetchone()[0]
            print(f"what if customer {customers[0]} had a two-year contract? "
                  f"scoring.score('churn', ...) -> {what_if:.3f}")

    step("a new model version: gradient boosting (pgscore push ... --activate)")
    gbm, gbm_metrics = train_demo_model(rows=5000, seed=0, kind="gbm")
    v2 = api.push_model(dsn, save_model(gbm, workdir / "churn-gbm.joblib"), name="churn", activate=True,
                        note="demo gbm", metrics=gbm_metrics)
    print(f"churn v{v2.version} active (ROC AUC {gbm_metrics['roc_auc']:.3f}); the next scoring call in every "
          "session uses it, no reconnect")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO complaints (customer_id, channel, category) VALUES (%s, 'store', 'service')",
                     [customers[0]])
        score, model_id = conn.execute(
            "SELECT churn_score, churn_model_id FROM customer_profiles WHERE customer_id = %s",
            [customers[0]]).fetchone()
        print(f"customer {customers[0]} after one more complaint: {score:.3f} (by model_id {model_id})")

    step("rolling back (pgscore rollback churn)")
    model_id, version = api.rollback(dsn, "churn")
    print(f"churn v{version} (model_id {model_id}) is active again")
    step("the model registry (pgscore models)")
    rows = api.list_models(dsn, "churn")
    print_table(["name", "version", "model_id", "active", "path", "format", "note", "roc_auc"],
                [[r["name"], r["version"], r["model_id"], "*" if r["active"] else "", r["scoring_path"], r["format"],
                  r["note"], f"{r['metrics'].get('roc_auc', float('nan')):.3f}"] for r in rows])
    print("\ndemo complete")


def _score(conn: psycopg.Connection, customer_id: int) -> float:
    return conn.execute("SELECT churn_score FROM customer_profiles WHERE customer_id = %s",
                        [customer_id]).fetchone()[0]
