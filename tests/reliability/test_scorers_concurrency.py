"""Two scorers under load: 'wide' writes score columns of "CRM"."Subscribers"
(text keys), 'narrow' writes pgscore's own table for billing."Accounts"
(bigint keys); one events table, support.interactions, feeds both (each
row belongs to a subscriber and an account, and each entity counts its
rows). Eight application clients on 10 hot keys of each mix single and
multi-row inserts in random key order, deletes, moves of events to other
entities and feature updates, beside a session that rescores both scorers
over and over. Afterwards every counter equals its event rows, every
stored score is the model's predict_proba of the row as it is (1e-9), and
nothing deadlocked or failed."""

from __future__ import annotations

import collections
import random
import threading
import time

import psycopg
import pytest

from tests.crm import (CONTRACTS, FEATURES, as_role, counter_differences, crm_pipeline, crm_schema, expected_scores,
                       grant_app, let_loader_read, push, score_differences, stored_scores, subscriber_rows)

CLIENTS = 8
LOAD_SECONDS = 15.0  # the load stops by itself
STATEMENTS_PER_CLIENT = 3000
HOT_SUBSCRIBERS = [f"{n:04d}-HOT{chr(65 + n)}" for n in range(10)]
HOT_ACCOUNTS = list(range(1, 11))
SUBSCRIBERS, ACCOUNTS, EVENTS = '"CRM"."Subscribers"', 'billing."Accounts"', "support.interactions"

SCHEMA = """
CREATE SCHEMA billing;
CREATE TABLE billing."Accounts" (
    "AccountID"      bigint PRIMARY KEY,
    "Tenure"         integer,
    "MonthlyCharges" numeric(10,2),
    "Contract"       text,
    "TicketCount"    integer NOT NULL DEFAULT 0
);
CREATE TABLE support.interactions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "customerID" text NOT NULL REFERENCES "CRM"."Subscribers",
    "AccountID"  bigint NOT NULL REFERENCES billing."Accounts",
    at           timestamptz NOT NULL DEFAULT now()
);
"""


def set_up(db, crm, path: str) -> dict:
    """Tables, scorers, models (pushed on scoring ``path``), hot entities; returns scorer -> fitted model."""
    with db.connect() as admin:
        as_role(admin, crm.owner)
        admin.execute(SCHEMA)
        grant_app(admin, crm.app, ["billing"], [ACCOUNTS, EVENTS])
        let_loader_read(admin, "billing", ACCOUNTS)
        admin.execute("SELECT scoring.attach('wide', %s, 'customerID', score_column => 'ChurnRisk',"
                      " model_id_column => 'ScoredBy', scored_at_column => 'ScoredAt')", [SUBSCRIBERS])
        admin.execute("SELECT scoring.attach_events('wide', %s, 'customerID', 'TicketCount')", [EVENTS])
        admin.execute("SELECT scoring.attach('narrow', %s, 'AccountID')", [ACCOUNTS])
        admin.execute("SELECT scoring.attach_events('narrow', %s, 'AccountID', 'TicketCount')", [EVENTS])
    models = {"wide": crm_pipeline(FEATURES), "narrow": crm_pipeline(FEATURES, seed=2, c=0.2)}
    for name, model in models.items():
        push(db, model, name, path)
    with crm.app_connect() as app:
        rows = subscriber_rows(HOT_SUBSCRIBERS, seed=8)
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract")'
                    " SELECT * FROM unnest(%s::text[], %s::int[], %s::numeric[], %s::text[])",
                    [list(column) for column in zip(*(row[:4] for row in rows))])
        rows = subscriber_rows([str(n) for n in HOT_ACCOUNTS], seed=9)
        app.execute('INSERT INTO billing."Accounts" ("AccountID", "Tenure", "MonthlyCharges", "Contract")'
                    " SELECT * FROM unnest(%s::bigint[], %s::int[], %s::numeric[], %s::text[])",
                    [HOT_ACCOUNTS, *[list(column) for column in zip(*(row[1:4] for row in rows))]])
    return models


@pytest.mark.parametrize("path", ["auto", "sklearn"])
def test_two_scorers_under_concurrent_events_edits_and_rescore(db, path):
    with crm_schema(db) as crm:
        models = set_up(db, crm, path)
        done: list[collections.Counter] = [collections.Counter() for _ in range(CLIENTS + 1)]
        errors: list[BaseException] = []
        start = threading.Barrier(CLIENTS + 1)
        deadline = [0.0]

        def client(index: int) -> None:
            rng = random.Random(index)
            mine: list[int] = []  # event ids this client inserted and has not deleted: no two clients delete one row
            try:
                with crm.app_connect() as conn:
                    conn.execute("SET statement_timeout = '30s'")
                    start.wait()
                    for _ in range(STATEMENTS_PER_CLIENT):
                        if time.monotonic() > deadline[0]:
                            break
                        kind = rng.choices(["insert", "insert-many", "delete", "move", "edit"], [3, 3, 2, 2, 2])[0]
                        if kind in ("delete", "move") and not mine:
                            kind = "insert"
                        if kind == "insert":
                            mine += [row[0] for row in conn.execute(
                                'INSERT INTO support.interactions ("customerID", "AccountID") VALUES (%s, %s)'
                                " RETURNING id", [rng.choice(HOT_SUBSCRIBERS), rng.choice(HOT_ACCOUNTS)])]
                        elif kind == "insert-many":  # 5 of each, in random order
                            mine += [row[0] for row in conn.execute(
                                'INSERT INTO support.interactions ("customerID", "AccountID")'
                                " SELECT * FROM unnest(%s::text[], %s::bigint[]) RETURNING id",
                                [rng.sample(HOT_SUBSCRIBERS, 5), rng.sample(HOT_ACCOUNTS, 5)])]
                        elif kind == "delete":
                            gone = rng.sample(mine, min(len(mine), rng.choice([1, 1, 3])))
                            conn.execute("DELETE FROM support.interactions WHERE id = ANY(%s)", [gone])
                            mine = [i for i in mine if i not in gone]
                        elif kind == "move":
                            target = rng.choice(["customer", "account", "both"])
                            conn.execute(
                                'UPDATE support.interactions SET "customerID" = CASE WHEN %s THEN %s ELSE "customerID"'
                                ' END, "AccountID" = CASE WHEN %s THEN %s ELSE "AccountID" END WHERE id = %s',
                                [target != "account", rng.choice(HOT_SUBSCRIBERS), target != "customer",
                                 rng.choice(HOT_ACCOUNTS), rng.choice(mine)])
                        elif rng.random() < 0.5:
                            conn.execute('UPDATE "CRM"."Subscribers" SET "Tenure" = %s, "Contract" = %s'
                                         ' WHERE "customerID" = %s',
                                         [rng.randint(0, 72), rng.choice(CONTRACTS), rng.choice(HOT_SUBSCRIBERS)])
                        else:
                            conn.execute('UPDATE billing."Accounts" SET "MonthlyCharges" = %s WHERE "AccountID" = %s',
                                         [round(rng.uniform(18, 120), 2), rng.choice(HOT_ACCOUNTS)])
                        done[index][kind] += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        def rescorer() -> None:
            try:
                with psycopg.connect(db.dsn("loader"), autocommit=True) as conn:
                    conn.execute("SET scoring.on_error = 'raise'")
                    conn.execute("SET statement_timeout = '60s'")
                    start.wait()
                    while time.monotonic() < deadline[0]:
                        for scorer in ("wide", "narrow"):
                            conn.execute("CALL scoring.rescore(%s, 4)", [scorer])
                            done[CLIENTS][f"rescore {scorer}"] += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        deadline[0] = time.monotonic() + LOAD_SECONDS + 5  # the barrier waits for every connection first
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        threads.append(threading.Thread(target=rescorer))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(LOAD_SECONDS + 90)
        assert not any(thread.is_alive() for thread in threads)
        deadlocks = [e for e in errors if isinstance(e, psycopg.Error) and e.sqlstate == "40P01"]
        assert deadlocks == [] and errors == [], errors[:3]
        total = sum(done, collections.Counter())
        assert all(total[kind] > 0 for kind in ("insert", "insert-many", "delete", "move", "edit", "rescore wide",
                                                "rescore narrow")), total

        with db.connect() as admin:
            assert admin.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
                                 ).fetchone()[0] == 0
            assert counter_differences(admin, SUBSCRIBERS, "customerID", "TicketCount", EVENTS, "customerID") == {}
            assert counter_differences(admin, ACCOUNTS, "AccountID", "TicketCount", EVENTS, "AccountID") == {}
            events = admin.execute("SELECT count(*) FROM support.interactions").fetchone()[0]
            assert events > 0 and admin.execute(
                'SELECT sum("TicketCount") FROM "CRM"."Subscribers"').fetchone()[0] == events
            for scorer, entity, key in (("wide", SUBSCRIBERS, "customerID"), ("narrow", ACCOUNTS, "AccountID")):
                expected = expected_scores(admin, models[scorer], entity, key)
                assert len(expected) == 10
                assert score_differences(expected, stored_scores(admin, scorer)) == {}, scorer
            assert admin.execute("SELECT count(*) FROM scoring.errors").fetchone()[0] == 0
