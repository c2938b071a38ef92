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
from psycopg import sql

from tests.crm import (CRM_SCHEMA, ENTITY, EVENTS, FEATURES, KEYS, Crm, as_role, attach_both, check,
                       counter_differences, crm_pipeline, crm_schema, expected_scores, let_loader_read, push,
                       score_differences, stored_scores, subscriber_rows)

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


@pytest.mark.parametrize("path", ["auto", "sklearn"])
def test_crm_flow_keeps_counters_and_scores_exact_then_detaches(crm, path):
    with crm.db.connect() as admin:
        before_attach = pgscore_objects(admin)
    attach_both(crm, path=path)
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
    app.execute('UPDATE "CRM"."Subscribers" SET "Email" = %s, "SignedUp" = %s::date WHERE "customerID" = %s',
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
        truncated = True  # pgscore_server.freshness recounts (to 0) and rescores
    except psycopg.Error as exc:
        truncated = False
        text = " ".join(filter(None, [exc.diag.message_primary, exc.diag.message_detail, exc.diag.message_hint]))
        assert "tickets" in text and ("DELETE" in text or "scoring." in text), text
        app.execute("DELETE FROM support.tickets")  # what a refusal points to
    with crm.db.connect() as admin:
        assert admin.execute("SELECT count(*) FROM support.tickets").fetchone()[0] == 0
    if not truncated:  # refused: nothing was truncated, the DELETE it points to did the work
        assert app.execute("SELECT count(*) FROM support.tickets").fetchone()[0] == 0
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
    # Nothing fires any more: a ticket leaves the counter and the score as they were.
    app.execute('INSERT INTO support.tickets ("customerID") VALUES (%s)', [KEYS[0]])
    with crm.db.connect() as admin:
        assert user_objects(admin)["subscribers"] == kept["subscribers"]
    app.close()
    # scoring_owner's rights after detach: test_scorers_privileges.py::test_scoring_owner_gets_only_...


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


def test_subscribers_deleted_or_rekeyed_take_their_narrow_scores_along(crm):
    attach_both(crm)
    rows = subscriber_rows(KEYS, seed=12)
    with crm.app_connect() as app:
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract", "Email")'
                    ' SELECT * FROM unnest(%s::text[], %s::int[], %s::numeric[], %s::text[], %s::text[])',
                    [list(column) for column in zip(*rows)])
        app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])', [list(KEYS[:4])])
        app.execute('DELETE FROM support.tickets WHERE "customerID" = %s', [KEYS[0]])
        app.execute('DELETE FROM "CRM"."Subscribers" WHERE "customerID" IN (%s, %s)', [KEYS[0], KEYS[7]])
        check(crm, "two subscribers deleted")
        app.execute('UPDATE "CRM"."Subscribers" SET "customerID" = %s WHERE "customerID" = %s', ["9999-REKEY", KEYS[6]])
        check(crm, "a subscriber's key changed")
        app.execute('UPDATE "CRM"."Subscribers" SET "customerID" = "customerID" || %s WHERE "customerID" IN (%s, %s)',
                    ["-X", KEYS[4], KEYS[5]])
        check(crm, "two keys changed in one statement")
    with crm.db.connect() as admin:
        narrow = {row[0] for row in admin.execute("SELECT \"customerID\" FROM scoring_scores.crm_narrow")}
    assert narrow == {KEYS[1], KEYS[2], KEYS[3], "9999-REKEY", KEYS[4] + "-X", KEYS[5] + "-X"}


def test_counters_are_kept_before_any_model_is_active(crm):
    """Attached, no model pushed yet: under on_error = 'keep' (the default) the events and
    counters commit; pushing the models and rescoring then scores every row."""
    with crm.owner_connect() as owner:
        owner.execute("SELECT scoring.attach('crm', %s, 'customerID', score_column => 'ChurnRisk',"
                      " model_id_column => 'ScoredBy', scored_at_column => 'ScoredAt')", [ENTITY])
        owner.execute("SELECT scoring.attach_events('crm', %s, 'customerID', 'TicketCount')", [EVENTS])
    with psycopg.connect(crm.app_dsn, autocommit=True) as app:
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract", "Email")'
                    ' SELECT * FROM unnest(%s::text[], %s::int[], %s::numeric[], %s::text[], %s::text[])',
                    [list(column) for column in zip(*subscriber_rows(KEYS, seed=13))])
        app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])',
                    [[KEYS[0], KEYS[1], KEYS[0]]])
        app.execute('DELETE FROM support.tickets WHERE id = (SELECT min(id) FROM support.tickets)')
    with crm.db.connect() as admin:
        assert counter_differences(admin, ENTITY, "customerID", "TicketCount", EVENTS, "customerID") == {}
        assert admin.execute('SELECT count("ChurnRisk") FROM "CRM"."Subscribers"').fetchone()[0] == 0
    crm.models = {"crm": crm_pipeline(FEATURES)}
    crm.model_ids["crm"] = push(crm.db, crm.models["crm"], "crm")
    with crm.db.connect("loader") as loader:
        loader.execute("CALL scoring.rescore('crm')")
    with crm.db.connect() as admin:
        expected = expected_scores(admin, crm.models["crm"], ENTITY, "customerID")
        assert score_differences(expected, stored_scores(admin, "crm")) == {}


def test_a_row_the_model_cannot_score_keeps_its_events_under_keep_and_fails_under_raise(crm):
    """A subscriber with no "Tenure" (the pipeline has no imputer): under on_error = 'keep'
    the row, its tickets and its counter commit and each failure is recorded with the
    scorer's name and the key; under 'raise' the statement fails and nothing is written."""
    attach_both(crm)
    bad = "0000-NOTEN"
    with psycopg.connect(crm.app_dsn, autocommit=True) as app:
        app.execute("SET scoring.on_error = 'keep'")
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "MonthlyCharges", "Contract") VALUES (%s, 50, %s)',
                    [bad, "One year"])
        app.execute('INSERT INTO support.tickets ("customerID") VALUES (%s), (%s)', [bad, bad])
        app.execute('DELETE FROM support.tickets WHERE id = (SELECT min(id) FROM support.tickets)')
        app.execute("SET scoring.on_error = 'raise'")
        with pytest.raises(psycopg.Error) as caught:
            app.execute('INSERT INTO support.tickets ("customerID") VALUES (%s)', [bad])
    with crm.db.connect() as admin:
        assert counter_differences(admin, ENTITY, "customerID", "TicketCount", EVENTS, "customerID") == {}
        assert admin.execute('SELECT "TicketCount" FROM "CRM"."Subscribers" WHERE "customerID" = %s',
                             [bad]).fetchone()[0] == 1
        recorded = admin.execute("SELECT scorer, entity_key, count(*) FROM scoring.errors GROUP BY 1, 2"
                                 " ORDER BY 1").fetchall()
    assert [(scorer, key) for scorer, key, _ in recorded] == [("crm", bad), ("crm_narrow", bad)], recorded
    assert all(count >= 3 for _, _, count in recorded), recorded  # the insert and both ticket statements
    assert "crm" in str(caught.value), str(caught.value)


# Not here: a BEFORE trigger of the application's that sets a feature when
# the UPDATE names none (docs/scorers.md, "What does not rescore": pgscore's
# trigger fires on UPDATE OF the features only, so that other updates cost nothing).
@pytest.mark.parametrize("how", ["generated-column", "later-before-trigger"])
def test_features_the_database_computes_are_scored_as_stored(crm, how):
    """A feature the database itself writes: a stored generated column ("TotalCharges");
    a BEFORE trigger of the application's that fires after pgscore's (zz_ sorts after
    pgscore_) and caps "Tenure". The stored scores are those of the rows as stored."""
    features = FEATURES + (("TotalCharges",) if how == "generated-column" else ())
    with crm.owner_connect() as owner:
        if how == "generated-column":
            owner.execute('ALTER TABLE "CRM"."Subscribers" ADD COLUMN "TotalCharges" numeric(12,2)'
                          ' GENERATED ALWAYS AS ("Tenure" * "MonthlyCharges") STORED')
        else:
            owner.execute("""
                CREATE FUNCTION "CRM".normalize() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    NEW."Tenure" := least(NEW."Tenure", 72);
                    IF NEW."SignedUp" IS NULL THEN NEW."Contract" := 'Month-to-month'; END IF;
                    RETURN NEW;
                END $$;
            """)
            owner.execute(sql.SQL("CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW"
                                  ' EXECUTE FUNCTION "CRM".normalize()').format(
                sql.Identifier("zz_normalize" if how == "later-before-trigger" else "a_normalize"), sql.SQL(ENTITY)))
        owner.execute("SELECT scoring.attach('crm', %s, 'customerID', score_column => 'ChurnRisk',"
                      " model_id_column => 'ScoredBy', scored_at_column => 'ScoredAt')", [ENTITY])
        owner.execute("SELECT scoring.attach_events('crm', %s, 'customerID', 'TicketCount')", [EVENTS])
        owner.execute("SELECT scoring.attach('crm_narrow', %s, 'customerID', model_name => 'crm')", [ENTITY])
    crm.models = {"crm": crm_pipeline(features), "crm_narrow": crm_pipeline(features)}
    crm.model_ids["crm"] = crm.model_ids["crm_narrow"] = push(crm.db, crm.models["crm"], "crm")
    with crm.app_connect() as app:
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract", "Email")'
                    ' SELECT * FROM unnest(%s::text[], %s::int[], %s::numeric[], %s::text[], %s::text[])',
                    [list(column) for column in zip(*subscriber_rows(KEYS, seed=14))])
        check(crm, "inserted")
        app.execute('INSERT INTO support.tickets ("customerID") VALUES (%s), (%s)', [KEYS[0], KEYS[1]])
        check(crm, "tickets")
        if how == "trigger-outside-the-set-list":
            app.execute('UPDATE "CRM"."Subscribers" SET "SignedUp" = NULL WHERE "Contract" <> %s', ["Month-to-month"])
        else:
            app.execute('UPDATE "CRM"."Subscribers" SET "Tenure" = "Tenure" + 30')
        check(crm, "updated")


def test_counters_of_events_with_no_foreign_key(crm):
    """Events may come before their entity (no foreign key, e.g. loaded from a stream), and an
    application may insert an entity with a counter of its own: the counter still equals the
    entity's event rows once the row exists."""
    with crm.owner_connect() as owner:
        owner.execute('ALTER TABLE "CRM"."Subscribers" ADD COLUMN "CallCount" integer NOT NULL DEFAULT 0')
        owner.execute('CREATE TABLE support.calls (id bigint GENERATED ALWAYS AS IDENTITY, "customerID" text)')
        owner.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON support.calls TO {crm.app}")
    attach_both(crm)
    with crm.owner_connect() as owner:
        owner.execute("SELECT scoring.attach_events('crm', 'support.calls', 'customerID', 'CallCount')")
    with crm.app_connect() as app:
        app.execute('INSERT INTO support.calls ("customerID") VALUES (%s), (%s), (NULL)', [KEYS[0], KEYS[0]])
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract")'
                    " VALUES (%s, 5, 70, 'One year')", [KEYS[0]])
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract",'
                    ' "TicketCount", "CallCount") VALUES (%s, 5, 70, %s, 4, 3)', [KEYS[1], "One year"])
        app.execute('INSERT INTO support.calls ("customerID") VALUES (%s)', [KEYS[1]])
    with crm.db.connect() as admin:
        calls = counter_differences(admin, ENTITY, "customerID", "CallCount", "support.calls", "customerID")
        tickets = counter_differences(admin, ENTITY, "customerID", "TicketCount", EVENTS, "customerID")
    assert calls == {} and tickets == {}, (calls, tickets)
    check(crm, "events before their entity")


def test_a_partitioned_ticket_table(crm):
    """Tickets partitioned by month: inserts through the parent and into a partition,
    a ticket moved to another month (another partition) and to another subscriber, deletes."""
    with crm.owner_connect() as owner:
        owner.execute("""
            CREATE TABLE support.monthly ("customerID" text NOT NULL REFERENCES "CRM"."Subscribers",
                opened_at date NOT NULL) PARTITION BY RANGE (opened_at);
            CREATE TABLE support.monthly_01 PARTITION OF support.monthly
                FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
            CREATE TABLE support.monthly_02 PARTITION OF support.monthly
                FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
        """)
        owner.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON support.monthly, support.monthly_01,"
                      f" support.monthly_02 TO {crm.app}")
        owner.execute("SELECT scoring.attach('crm', %s, 'customerID', score_column => 'ChurnRisk',"
                      " model_id_column => 'ScoredBy', scored_at_column => 'ScoredAt')", [ENTITY])
        owner.execute("SELECT scoring.attach_events('crm', 'support.monthly', 'customerID', 'TicketCount')")
    crm.models = {"crm": crm_pipeline(FEATURES)}
    crm.model_ids["crm"] = push(crm.db, crm.models["crm"], "crm")
    crm.events = "support.monthly"
    with crm.app_connect() as app:
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract", "Email")'
                    ' SELECT * FROM unnest(%s::text[], %s::int[], %s::numeric[], %s::text[], %s::text[])',
                    [list(column) for column in zip(*subscriber_rows(KEYS, seed=15))])
        app.execute('INSERT INTO support.monthly ("customerID", opened_at) VALUES (%s, %s), (%s, %s), (%s, %s)',
                    [KEYS[0], "2026-01-05", KEYS[1], "2026-02-05", KEYS[0], "2026-02-07"])
        app.execute('UPDATE support.monthly SET opened_at = %s WHERE opened_at = %s', ["2026-02-09", "2026-01-05"])
        app.execute('UPDATE support.monthly SET "customerID" = %s, opened_at = %s WHERE opened_at = %s',
                    [KEYS[2], "2026-01-20", "2026-02-07"])
        app.execute("DELETE FROM support.monthly WHERE opened_at = %s", ["2026-02-05"])
        check(crm, "through the parent")
        app.execute('INSERT INTO support.monthly_01 ("customerID", opened_at) VALUES (%s, %s)', [KEYS[3], "2026-01-02"])
        app.execute("DELETE FROM support.monthly_02")
        check(crm, "into and from a partition directly")


def insert_subscribers(crm: Crm, keys=KEYS, seed: int = 16) -> None:
    with crm.app_connect() as app:
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract", "Email")'
                    ' SELECT * FROM unnest(%s::text[], %s::int[], %s::numeric[], %s::text[], %s::text[])',
                    [list(column) for column in zip(*subscriber_rows(keys, seed=seed))])


def test_detached_then_attached_again_recounts_and_rescores(crm):
    """Tickets that arrive while no scorer is attached are counted when the events are
    attached again, and those rows rescored (attach_events on a table with rows)."""
    attach_both(crm)
    insert_subscribers(crm)
    with crm.app_connect() as app:
        app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])', [list(KEYS[:3])])
    with crm.owner_connect() as owner:
        owner.execute("SELECT scoring.detach('crm')")
        owner.execute("SELECT scoring.detach('crm_narrow')")
    with crm.app_connect() as app:
        app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])', [list(KEYS[2:6]) * 2])
        app.execute('DELETE FROM support.tickets WHERE "customerID" = %s', [KEYS[0]])
        app.execute('UPDATE "CRM"."Subscribers" SET "Contract" = %s', ["Two year"])
    with crm.db.connect() as admin:
        assert counter_differences(admin, ENTITY, "customerID", "TicketCount", EVENTS, "customerID") != {}
    with crm.owner_connect() as owner:
        owner.execute("SELECT scoring.attach('crm', %s, 'customerID', score_column => 'ChurnRisk',"
                      " model_id_column => 'ScoredBy', scored_at_column => 'ScoredAt')", [ENTITY])
        summary = owner.execute("SELECT scoring.attach_events('crm', %s, 'customerID', 'TicketCount')",
                                [EVENTS]).fetchone()[0]
        owner.execute("SELECT scoring.attach('crm_narrow', %s, 'customerID')", [ENTITY])
        owner.execute("SELECT scoring.attach_events('crm_narrow', %s, 'customerID')", [EVENTS])
    assert "recounted" in summary, summary
    with crm.db.connect("loader") as loader:  # the Contract change reached no scorer: rescore says so
        loader.execute("CALL scoring.rescore('crm')")
        loader.execute("CALL scoring.rescore('crm_narrow')")
    check(crm, "attached again")


def test_a_dropped_entity_leaves_its_scorers_unusable_until_detached(crm):
    """DROP TABLE of the entity (and its tickets): the scorers stay in scoring.scorers, unusable
    (score_key says so), until detach, which removes them, their hooks and the narrow table;
    the same names attached to a new table of the same shape start with no score."""
    attach_both(crm)
    insert_subscribers(crm)
    with crm.owner_connect() as owner:
        owner.execute('DROP TABLE support.tickets, "CRM"."Subscribers"')
    with crm.db.connect() as admin:
        assert [row[0] for row in admin.execute("SELECT scorer FROM scoring.scorers WHERE scorer LIKE 'crm%%'"
                                                " ORDER BY 1")] == ["crm", "crm_narrow"]
    with crm.db.connect("analyst") as analyst:
        with pytest.raises(psycopg.Error) as caught:
            analyst.execute("SELECT scoring.score_key('crm_narrow', %s)", [KEYS[0]])
    assert "crm_narrow" in caught.value.diag.message_primary and caught.value.diag.message_hint, \
        caught.value.diag.message_primary
    with crm.owner_connect() as owner:
        owner.execute("SELECT scoring.detach('crm')")
        owner.execute("SELECT scoring.detach('crm_narrow')")
    with crm.db.connect() as admin:
        assert admin.execute("SELECT count(*) FROM scoring.scorers WHERE scorer LIKE 'crm%%'").fetchone()[0] == 0
        assert admin.execute("SELECT to_regclass('scoring_scores.crm_narrow')").fetchone()[0] is None
        assert admin.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = 'scoring_hooks'::regnamespace"
                             " AND proname LIKE 'crm%%'").fetchone()[0] == 0
    with crm.owner_connect() as owner:
        owner.execute(CRM_SCHEMA.replace('CREATE SCHEMA "CRM";', "").replace("CREATE SCHEMA support;", ""))
        owner.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {ENTITY}, {EVENTS} TO {crm.app}')
        let_loader_read(owner, "CRM", ENTITY)
    attach_both(crm)
    insert_subscribers(crm, KEYS[:3], seed=17)
    check(crm, "a new table under the old names")


def test_rows_inserted_unscored_when_the_scorer_says_so(crm):
    """score_on_insert => false: a new row has no score until one of its features or events
    changes (or rescore runs)."""
    with crm.owner_connect() as owner:
        owner.execute("SELECT scoring.attach('crm', %s, 'customerID', score_column => 'ChurnRisk',"
                      " model_id_column => 'ScoredBy', scored_at_column => 'ScoredAt', score_on_insert => false)",
                      [ENTITY])
        owner.execute("SELECT scoring.attach_events('crm', %s, 'customerID', 'TicketCount')", [EVENTS])
    crm.models = {"crm": crm_pipeline(FEATURES)}
    crm.model_ids["crm"] = push(crm.db, crm.models["crm"], "crm")
    insert_subscribers(crm)
    with crm.db.connect() as admin:
        assert admin.execute('SELECT count("ChurnRisk") FROM "CRM"."Subscribers"').fetchone()[0] == 0
    with crm.app_connect() as app:
        app.execute('INSERT INTO support.tickets ("customerID") VALUES (%s)', [KEYS[0]])
        app.execute('UPDATE "CRM"."Subscribers" SET "Tenure" = "Tenure" + 1 WHERE "customerID" = %s', [KEYS[1]])
    with crm.db.connect() as admin:
        scored = [row[0] for row in admin.execute(
            'SELECT "customerID" FROM "CRM"."Subscribers" WHERE "ChurnRisk" IS NOT NULL ORDER BY 1')]
    assert scored == sorted([KEYS[0], KEYS[1]])
    with crm.db.connect("loader") as loader:
        loader.execute("CALL scoring.rescore('crm')")
    check(crm, "rescored")


def test_migrations_with_scorers_attached(crm):
    """A superuser's commands run the schema check, which accepts what attach made (narrow
    tables, grants, triggers on the user's tables); migrate at head again keeps the scorers;
    a downgrade to 0010 leaves the CRM's tables and data with no pgscore trigger and no
    grant to scoring_owner, and an upgrade after it can attach them again."""
    from pgscore import list_models
    from pgscore.migrate import downgrade, migrate

    attach_both(crm)
    insert_subscribers(crm)
    with crm.app_connect() as app:
        app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])', [list(KEYS[:4])])
    assert {model["name"] for model in list_models(crm.db.admin)} >= {"crm", "crm_narrow"}
    migrate(crm.db.admin)
    with crm.app_connect() as app:
        app.execute('INSERT INTO support.tickets ("customerID") VALUES (%s)', [KEYS[5]])
    check(crm, "migrated at head again")
    with crm.db.connect() as admin:
        kept = user_objects(admin)
    downgrade(crm.db.admin, "0010")
    with crm.db.connect() as admin:
        assert user_objects(admin) == kept
        assert admin.execute("SELECT tgname::text FROM pg_trigger WHERE tgrelid IN (%s::regclass, %s::regclass)"
                             " AND NOT tgisinternal", [ENTITY, EVENTS]).fetchall() == []
        left = admin.execute("SELECT table_schema || '.' || table_name, column_name, privilege_type"
                             " FROM information_schema.column_privileges WHERE grantee = 'scoring_owner'"
                             " AND table_schema IN ('CRM', 'support')").fetchall()
    migrate(crm.db.admin)
    with crm.db.connect() as admin:
        assert [row[0] for row in admin.execute("SELECT scorer FROM scoring.scorers")] == ["churn"]
    with crm.owner_connect() as owner:
        owner.execute("SELECT scoring.attach('crm', %s, 'customerID', score_column => 'ChurnRisk',"
                      " model_id_column => 'ScoredBy', scored_at_column => 'ScoredAt')", [ENTITY])
        owner.execute("SELECT scoring.attach_events('crm', %s, 'customerID', 'TicketCount')", [EVENTS])
        owner.execute("SELECT scoring.attach('crm_narrow', %s, 'customerID')", [ENTITY])
        owner.execute("SELECT scoring.attach_events('crm_narrow', %s, 'customerID')", [EVENTS])
    with crm.db.connect("loader") as loader:
        loader.execute("CALL scoring.rescore('crm')")
        loader.execute("CALL scoring.rescore('crm_narrow')")
    check(crm, "attached again after a downgrade and an upgrade")
    assert left == []  # the downgrade took scoring_owner's rights on the CRM's tables back


def test_push_checks_a_model_against_its_scorers_entity(crm):
    """push --name X: features are checked against scorer X's entity table (not the reference
    profiles), a feature the entity lacks is refused by name, and a name with no scorer whose
    features are not profile columns is refused with what to do (attach)."""
    from pgscore import PushError, push_model

    with crm.owner_connect() as owner:
        owner.execute("SELECT scoring.attach('crm', %s, 'customerID', score_column => 'ChurnRisk')", [ENTITY])
    insert_subscribers(crm)
    pushed = push_model(crm.db.dsn("loader"), crm_pipeline(FEATURES), name="crm", activate=True)
    assert pushed.activated and pushed.sample_size > 0 and pushed.max_abs_diff <= 1e-9
    with pytest.raises(PushError) as unknown:
        push_model(crm.db.dsn("loader"), crm_pipeline(FEATURES + ("TotalCharges",)), name="crm")
    assert "TotalCharges" in str(unknown.value) and "Subscribers" in str(unknown.value), str(unknown.value)
    with pytest.raises(PushError) as unattached:
        push_model(crm.db.dsn("loader"), crm_pipeline(FEATURES), name="prospects")
    assert "attach" in str(unattached.value), str(unattached.value)


def test_upserts_and_merge_keep_counts_and_scores(crm):
    """What a CRM sync runs: INSERT ... ON CONFLICT DO UPDATE and MERGE on the subscribers
    (some rows new, some changed), MERGE on the tickets (insert some, delete others)."""
    attach_both(crm)
    insert_subscribers(crm, KEYS[:5], seed=18)
    new_rows = subscriber_rows(KEYS[3:], seed=19)  # 3, 4 exist; 5, 6, 7 are new
    with crm.app_connect() as app:
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract", "Email")'
                    ' SELECT * FROM unnest(%s::text[], %s::int[], %s::numeric[], %s::text[], %s::text[])'
                    ' ON CONFLICT ("customerID") DO UPDATE SET "Tenure" = excluded."Tenure",'
                    ' "Contract" = excluded."Contract"', [list(column) for column in zip(*new_rows)])
        check(crm, "upsert")
        app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])', [list(KEYS[:6])])
        app.execute("""
            MERGE INTO support.tickets t
            USING (SELECT unnest(%s::text[]) AS k) s ON t."customerID" = s.k
            WHEN MATCHED THEN DELETE
            WHEN NOT MATCHED THEN INSERT ("customerID") VALUES (s.k)""", [[KEYS[0], KEYS[1], KEYS[6]]])
        check(crm, "MERGE on the tickets")
        app.execute("""
            MERGE INTO "CRM"."Subscribers" p
            USING (SELECT * FROM unnest(%s::text[], %s::int[], %s::numeric[], %s::text[], %s::text[]))
                  AS s(k, tenure, charges, contract, email) ON p."customerID" = s.k
            WHEN MATCHED THEN UPDATE SET "MonthlyCharges" = s.charges, "Contract" = s.contract
            WHEN NOT MATCHED THEN INSERT ("customerID", "Tenure", "MonthlyCharges", "Contract", "Email")
                VALUES (s.k, s.tenure, s.charges, s.contract, s.email)""",
                    [list(column) for column in zip(*subscriber_rows([KEYS[2], "0000-MERGE"], seed=20))])
        check(crm, "MERGE on the subscribers")


def test_truncating_the_subscribers_and_their_tickets(crm):
    attach_both(crm)
    insert_subscribers(crm)
    with crm.app_connect() as app:
        app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])', [list(KEYS[:4])])
        app.execute('TRUNCATE "CRM"."Subscribers", support.tickets')
        check(crm, "both truncated")
    insert_subscribers(crm, KEYS[:2], seed=21)
    check(crm, "subscribers again")


def test_subscribers_deleted_with_their_tickets_by_cascade(crm):
    """ON DELETE CASCADE: deleting subscribers deletes their tickets in the same statement;
    the other subscribers' counts and scores are untouched, the deleted ones' scores go."""
    with crm.owner_connect() as owner:
        owner.execute('ALTER TABLE support.tickets DROP CONSTRAINT "tickets_customerID_fkey",'
                      ' ADD FOREIGN KEY ("customerID") REFERENCES "CRM"."Subscribers" ON DELETE CASCADE'
                      ' ON UPDATE CASCADE')
    attach_both(crm)
    insert_subscribers(crm)
    with crm.app_connect() as app:
        app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])', [list(KEYS) * 2])
        app.execute('DELETE FROM "CRM"."Subscribers" WHERE "customerID" IN (%s, %s)', [KEYS[0], KEYS[5]])
        check(crm, "deleted by cascade")
        app.execute('UPDATE "CRM"."Subscribers" SET "customerID" = %s WHERE "customerID" = %s', ["0000-MOVED", KEYS[1]])
        check(crm, "a key changed by cascade")
