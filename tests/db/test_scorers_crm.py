"""pgscore attached to a schema written like a real CRM, not its own:
``"CRM"."Subscribers"`` (text keys such as '7590-VHVEG', CamelCase quoted
columns) and ``support.tickets``, owned by a role of their own; two
scorers on that entity (score columns on the row, and pgscore's narrow
table); tickets inserted, copied, deleted, moved and truncated, entities
edited, by an application role with rights on its own tables only. After
every step each counter equals its tickets, and each stored score equals
the model's predict_proba of the row as it is now (1e-9), as do
scoring.score_key and scoring.score_keys; then both scorers are detached
and the user's tables and data are left as they were."""

from __future__ import annotations

import json
from typing import Iterator

import psycopg
import pytest

from tests.crm import ENTITY, EVENTS, KEYS, Crm, as_role, attach_both, check, crm_schema, subscriber_rows

@pytest.fixture
def crm(db) -> Iterator[Crm]:
    with crm_schema(db) as schema:
        yield schema


def scored_at(crm: Crm, key: str) -> tuple:
    with crm.db.connect() as admin:
        return admin.execute(
            'SELECT s."ChurnRisk", s."ScoredAt", n.score, n.scored_at FROM "CRM"."Subscribers" s'
            ' JOIN scoring_scores.crm_narrow n USING ("customerID") WHERE s."customerID" = %s', [key]).fetchone()


def ticket_ids(conn: psycopg.Connection, key: str) -> list[int]:
    return [row[0] for row in conn.execute(
        'SELECT id FROM support.tickets WHERE "customerID" = %s ORDER BY id', [key])]


def user_objects(admin: psycopg.Connection) -> dict[str, list]:
    """What the user's schemas hold, and which functions and tables exist outside pg_catalog."""
    return {
        "subscribers": admin.execute('SELECT * FROM "CRM"."Subscribers" ORDER BY "customerID"').fetchall(),
        "tickets": admin.execute("SELECT * FROM support.tickets ORDER BY id").fetchall(),
        "columns": admin.execute(
            "SELECT attrelid::regclass::text, attname::text, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid IN (%s::regclass, %s::regclass) AND attnum > 0 AND NOT attisdropped ORDER BY 1, 2",
            [ENTITY, EVENTS]).fetchall(),
    }


def pgscore_objects(admin: psycopg.Connection) -> dict[str, set]:
    """Functions, relations and triggers outside the system schemas, by identity."""
    return {
        "functions": set(admin.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')").fetchall()),
        "relations": set(admin.execute(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')").fetchall()),
        "triggers": set(admin.execute(
            "SELECT tgrelid::regclass::text, tgname::text FROM pg_trigger WHERE NOT tgisinternal").fetchall()),
    }


def test_crm_flow_keeps_counters_and_scores_exact_then_detaches(crm):
    with crm.db.connect() as admin:
        before_attach = pgscore_objects(admin)
    attach_both(crm)
    app = crm.app_connect()
    rows = subscriber_rows(KEYS, seed=5)

    # New subscribers, one statement: each is scored on insert by both scorers.
    with app.cursor() as cur:
        cur.executemany('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract",'
                        ' "Email") VALUES (%s, %s, %s, %s, %s)', rows[:6])
    app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract", "Email")'
                ' SELECT * FROM unnest(%s::text[], %s::int[], %s::numeric[], %s::text[], %s::text[])',
                [list(column) for column in zip(*rows[6:])])
    check(crm, "subscribers inserted")

    app.execute('INSERT INTO support.tickets ("customerID") VALUES (%s)', [KEYS[0]])
    check(crm, "one ticket")

    app.execute('INSERT INTO support.tickets ("customerID") VALUES (%s), (%s), (%s), (%s), (%s)',
                [KEYS[2], KEYS[1], KEYS[2], KEYS[0], KEYS[2]])
    check(crm, "multi-row insert, keys in random order")

    with app.cursor() as cur, cur.copy('COPY support.tickets ("customerID") FROM STDIN') as copy:
        for key in [KEYS[4], KEYS[3], KEYS[4], KEYS[1], KEYS[5], KEYS[4]]:
            copy.write_row((key,))
    check(crm, "COPY")

    app.execute("DELETE FROM support.tickets WHERE id = %s", [ticket_ids(app, KEYS[2])[0]])
    check(crm, "one ticket deleted")
    app.execute('DELETE FROM support.tickets WHERE "customerID" IN (%s, %s)', [KEYS[0], KEYS[4]])
    check(crm, "every ticket of two subscribers deleted")

    moved = ticket_ids(app, KEYS[2])[0]
    app.execute('UPDATE support.tickets SET "customerID" = %s WHERE id = %s', [KEYS[6], moved])
    check(crm, "a ticket moved to another subscriber")
    app.execute('UPDATE support.tickets SET "customerID" = CASE "customerID" WHEN %s THEN %s ELSE %s END'
                ' WHERE "customerID" IN (%s, %s)', [KEYS[1], KEYS[3], KEYS[1], KEYS[1], KEYS[3]])
    check(crm, "tickets of two subscribers swapped in one statement")
    app.execute("UPDATE support.tickets SET opened_at = opened_at - interval '1 day'")
    check(crm, "tickets edited without moving")

    # A feature the model reads: both scores change.
    key = KEYS[3]
    before = scored_at(crm, key)
    contract = app.execute('SELECT "Contract" FROM "CRM"."Subscribers" WHERE "customerID" = %s', [key]).fetchone()[0]
    other = "Two year" if contract == "Month-to-month" else "Month-to-month"
    app.execute('UPDATE "CRM"."Subscribers" SET "Contract" = %s WHERE "customerID" = %s', [other, key])
    after = scored_at(crm, key)
    check(crm, "Contract changed")
    assert after[0] != before[0] and after[2] != before[2], (before, after)
    assert after[1] > before[1] and after[3] > before[3]

    # Only columns the models do not read ("Email" is a feature pgscore may read, but no model does):
    # not rescored, scored_at unchanged.
    app.execute('UPDATE "CRM"."Subscribers" SET "Email" = %s, "SignedUp" = DATE %s WHERE "customerID" = %s',
                ["new@example.com", "2020-01-02", key])
    assert scored_at(crm, key) == after
    check(crm, "a column no model reads changed")

    # The score columns themselves: written as given, no rescore, no recursion.
    with crm.db.connect(autocommit=False) as owner:
        as_role(owner, crm.owner)
        owner.execute('UPDATE "CRM"."Subscribers" SET "ChurnRisk" = 0.5, "ScoredAt" = NULL WHERE "customerID" = %s',
                      [key])
        assert owner.execute('SELECT "ChurnRisk", "ScoredAt" FROM "CRM"."Subscribers" WHERE "customerID" = %s',
                             [key]).fetchone() == (0.5, None)
        owner.rollback()

    # TRUNCATE: the counters are recounted (to 0) and the rows rescored, or it is
    # refused with a message that says what to run instead.
    with crm.db.connect() as admin:
        counts_before = dict(admin.execute('SELECT "customerID", "TicketCount" FROM "CRM"."Subscribers"').fetchall())
    assert any(counts_before.values())
    try:
        app.execute("TRUNCATE support.tickets")
    except psycopg.Error as exc:
        text = " ".join(filter(None, [exc.diag.message_primary, exc.diag.message_detail, exc.diag.message_hint]))
        assert "tickets" in text and ("DELETE" in text or "scoring." in text), text
        app.execute("DELETE FROM support.tickets")  # what a refusal points to
    with crm.db.connect() as admin:
        assert set(dict(admin.execute(
            'SELECT "customerID", "TicketCount" FROM "CRM"."Subscribers"').fetchall()).values()) == {0}
    check(crm, "tickets truncated")

    app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])', [[KEYS[7], KEYS[7], KEYS[0]]])
    check(crm, "tickets again after the truncate")

    # scoring.scorers lists both, as attached.
    with crm.db.connect("loader") as loader:
        listed = {row[0]: row for row in loader.execute(
            "SELECT scorer, model_name, entity::text, key_column, key_type, score_target, score_column,"
            " model_id_column, scored_at_column, score_table::text, features, mode, events, active_model_id"
            " FROM scoring.scorers WHERE scorer LIKE 'crm%%'")}
    assert set(listed) == {"crm", "crm_narrow"}
    assert listed["crm"][1:10] == ("crm", ENTITY, "customerID", "text", "columns", "ChurnRisk", "ScoredBy", "ScoredAt",
                                  None)
    assert listed["crm_narrow"][1:10] == ("crm_narrow", ENTITY, "customerID", "text", "table", None, None, None,
                                         "scoring_scores.crm_narrow")
    for scorer, row in listed.items():
        features, mode, events, active = row[10:]
        assert set(crm.models[scorer].feature_names_in_) <= set(features) and "customerID" not in features
        assert mode == "immediate" and active == crm.model_ids[scorer]
        events = json.loads(events) if isinstance(events, str) else events
        assert [(e["events"], e["entity_key"], e.get("counter")) for e in events] == [
            (EVENTS, "customerID", "TicketCount" if scorer == "crm" else None)]
    assert "ChurnRisk" not in listed["crm"][10]

    # Detach both: triggers, generated functions and the narrow table go; the user's tables and data stay.
    with crm.db.connect() as admin:
        kept = user_objects(admin)
    with crm.owner_connect() as owner:
        for scorer in ("crm_narrow", "crm"):
            assert isinstance(owner.execute("SELECT scoring.detach(%s)", [scorer]).fetchone()[0], str)
    with crm.db.connect() as admin:
        assert user_objects(admin) == kept
        assert admin.execute("SELECT tgname::text FROM pg_trigger WHERE tgrelid IN (%s::regclass, %s::regclass)"
                             " AND NOT tgisinternal", [ENTITY, EVENTS]).fetchall() == []
        assert admin.execute("SELECT to_regclass('scoring_scores.crm_narrow')").fetchone()[0] is None
        assert admin.execute("SELECT count(*) FROM scoring.scorers WHERE scorer LIKE 'crm%%'").fetchone()[0] == 0
        after_detach = pgscore_objects(admin)
    assert after_detach == before_attach  # every function, table and trigger attach or activation made is gone
    with crm.db.connect() as admin:
        left = admin.execute("SELECT table_schema || '.' || table_name, column_name, privilege_type"
                             " FROM information_schema.column_privileges WHERE grantee = 'scoring_owner'"
                             " AND table_schema IN ('CRM', 'support')").fetchall()
    assert left == []  # and scoring_owner's rights on the user's tables
    # Nothing fires any more: a ticket leaves the counter and the score as they were.
    app.execute('INSERT INTO support.tickets ("customerID") VALUES (%s)', [KEYS[0]])
    with crm.db.connect() as admin:
        assert user_objects(admin)["subscribers"] == kept["subscribers"]
    app.close()


def test_rescore_by_the_loader_restores_every_score(crm):
    """Scores cleared behind pgscore's back (the owner nulls the column, a superuser
    empties the narrow table) are all written again by CALL scoring.rescore(scorer)."""
    attach_both(crm)
    with crm.app_connect() as app:
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract", "Email")'
                    ' SELECT * FROM unnest(%s::text[], %s::int[], %s::numeric[], %s::text[], %s::text[])',
                    [list(column) for column in zip(*subscriber_rows(KEYS, seed=9))])
        app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])', [list(KEYS[:5]) * 2])
    check(crm, "before")
    with crm.owner_connect() as owner:
        owner.execute('UPDATE "CRM"."Subscribers" SET "ChurnRisk" = NULL, "ScoredBy" = NULL, "ScoredAt" = NULL')
    with crm.db.connect() as admin:
        admin.execute("DELETE FROM scoring_scores.crm_narrow")
        assert admin.execute('SELECT count("ChurnRisk") FROM "CRM"."Subscribers"').fetchone()[0] == 0
    with crm.db.connect("loader") as loader:
        loader.execute("CALL scoring.rescore('crm', 3)")
        loader.execute("CALL scoring.rescore('crm_narrow', 3)")
    check(crm, "rescored")


def test_a_subscriber_inserted_with_tickets_in_one_transaction(crm):
    """A new subscriber and its first tickets in one transaction: the count and both scores
    are those of the committed row; a rolled-back ticket leaves nothing behind."""
    attach_both(crm)
    row = subscriber_rows(["0000-NEWCO"], seed=2)[0]
    with psycopg.connect(crm.app_dsn) as app:
        app.execute("SET scoring.on_error = 'raise'")
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract", "Email")'
                    " VALUES (%s, %s, %s, %s, %s)", row)
        app.execute('INSERT INTO support.tickets ("customerID") VALUES (%s), (%s)', [row[0], row[0]])
        app.commit()
        app.execute('INSERT INTO support.tickets ("customerID") VALUES (%s)', [row[0]])
        assert app.execute('SELECT "TicketCount" FROM "CRM"."Subscribers" WHERE "customerID" = %s',
                           [row[0]]).fetchone()[0] == 3
        app.rollback()
    stored = check(crm, "committed")
    with crm.db.connect() as admin:
        assert admin.execute('SELECT "TicketCount" FROM "CRM"."Subscribers"').fetchone()[0] == 2
    assert set(stored["crm"]) == {"0000-NEWCO"}
