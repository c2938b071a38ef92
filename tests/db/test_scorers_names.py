"""Hostile or unusual names work or are refused cleanly, and nothing in them
is executed; keys of the four types work end to end; bad arguments to
attach and attach_events are refused with an error that names what is
wrong, and leave nothing behind."""

from __future__ import annotations

import json
import uuid
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.crm import (ENTITY, EVENTS, FEATURES, Crm, as_role, counter_differences, crm_pipeline, crm_schema,
                       expected_scores, let_loader_read, may_create_schemas, owned_roles, push, score_differences,
                       stored_scores, subscriber_rows, suffix)

# Each would drop the canary public.x if it reached SQL unquoted: as an
# identifier ("), as a literal ('), or inside a format string (%, $).
HOSTILE_SCHEMA = "crm'; drop table public.x; --"
HOSTILE_TABLE = 'a"; drop table x; --'
HOSTILE_KEY = "customer\"ID'; drop table public.x; --"
HOSTILE_FEATURE = 'a"; drop table x; --'  # the model's "MonthlyCharges"
HOSTILE_SCORE = "Risk'); drop table public.x; --"
HOSTILE_SCORED_AT = 'at"at %s $1'
HOSTILE_EVENTS = 'Tickets"; drop table public.x; --'
HOSTILE_EVENTS_KEY = "cust'ID"
HOSTILE_KEYS = ["7590-VHVEG", "o'brien", 'a"; drop table x; --', "x'); drop table public.x; --"]


def canary(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM public.x").fetchone()[0]


def qualified(conn: psycopg.Connection, schema: str, table: str) -> str:
    return sql.Identifier(schema, table).as_string(conn)


@pytest.fixture
def owner(db) -> Iterator[str]:
    name = f"names_owner_{suffix()}"
    with owned_roles(db.admin, name):
        with db.connect() as admin:
            may_create_schemas(admin, name)
        yield name


def test_hostile_identifiers_are_quoted_everywhere(db, owner):
    model = crm_pipeline(FEATURES, renamed=(("MonthlyCharges", HOSTILE_FEATURE),))
    with db.connect() as admin:
        admin.execute("CREATE TABLE public.x (id integer); INSERT INTO public.x VALUES (1)")
        as_role(admin, owner)
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(HOSTILE_SCHEMA)))
        entity = qualified(admin, HOSTILE_SCHEMA, HOSTILE_TABLE)
        events = qualified(admin, HOSTILE_SCHEMA, HOSTILE_EVENTS)
        admin.execute(sql.SQL(
            "CREATE TABLE {entity} ({key} text PRIMARY KEY, \"Tenure\" integer, {feature} numeric(10,2),"
            " \"Contract\" text, \"TicketCount\" integer NOT NULL DEFAULT 0, {score} double precision,"
            " \"ScoredBy\" bigint, {scored_at} timestamptz)").format(
            entity=sql.SQL(entity), key=sql.Identifier(HOSTILE_KEY), feature=sql.Identifier(HOSTILE_FEATURE),
            score=sql.Identifier(HOSTILE_SCORE), scored_at=sql.Identifier(HOSTILE_SCORED_AT)))
        admin.execute(sql.SQL(
            "CREATE TABLE {events} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " {events_key} text NOT NULL REFERENCES {entity})").format(
            events=sql.SQL(events), events_key=sql.Identifier(HOSTILE_EVENTS_KEY), entity=sql.SQL(entity)))
        let_loader_read(admin, HOSTILE_SCHEMA, entity)
        admin.execute("SELECT scoring.attach('hostile', %s, %s, score_column => %s, model_id_column => 'ScoredBy',"
                      " scored_at_column => %s)", [entity, HOSTILE_KEY, HOSTILE_SCORE, HOSTILE_SCORED_AT])
        admin.execute("SELECT scoring.attach_events('hostile', %s, %s, 'TicketCount')", [events, HOSTILE_EVENTS_KEY])
        admin.execute("SELECT scoring.attach('hostile_narrow', %s, %s, model_name => 'hostile')", [entity, HOSTILE_KEY])
        admin.execute("SELECT scoring.attach_events('hostile_narrow', %s, %s)", [events, HOSTILE_EVENTS_KEY])
        admin.execute("RESET ROLE")
        assert canary(admin) == 1
    model_id = push(db, model, "hostile")

    with db.connect() as admin:
        as_role(admin, owner)
        admin.execute("SET scoring.on_error = 'raise'")
        rows = subscriber_rows(HOSTILE_KEYS, seed=4)
        with admin.cursor() as cur:
            cur.executemany(sql.SQL("INSERT INTO {} ({}, \"Tenure\", {}, \"Contract\") VALUES (%s, %s, %s, %s)").format(
                sql.SQL(entity), sql.Identifier(HOSTILE_KEY), sql.Identifier(HOSTILE_FEATURE)),
                [row[:4] for row in rows])
        insert_events = sql.SQL("INSERT INTO {} ({}) SELECT unnest(%s::text[])").format(
            sql.SQL(events), sql.Identifier(HOSTILE_EVENTS_KEY))
        admin.execute(insert_events, [HOSTILE_KEYS[::-1] + HOSTILE_KEYS[1:3]])
        admin.execute(sql.SQL("DELETE FROM {} WHERE id = (SELECT min(id) FROM {} WHERE {} = %s)").format(
            sql.SQL(events), sql.SQL(events), sql.Identifier(HOSTILE_EVENTS_KEY)), [HOSTILE_KEYS[2]])
        admin.execute(sql.SQL("UPDATE {} SET {} = %s WHERE id = (SELECT max(id) FROM {})").format(
            sql.SQL(events), sql.Identifier(HOSTILE_EVENTS_KEY), sql.SQL(events)), [HOSTILE_KEYS[0]])
        admin.execute(sql.SQL("UPDATE {} SET {} = {} + 40 WHERE {} = %s").format(
            sql.SQL(entity), sql.Identifier(HOSTILE_FEATURE), sql.Identifier(HOSTILE_FEATURE),
            sql.Identifier(HOSTILE_KEY)), [HOSTILE_KEYS[3]])
        admin.execute("RESET ROLE")
        assert canary(admin) == 1
        assert counter_differences(admin, entity, HOSTILE_KEY, "TicketCount", events, HOSTILE_EVENTS_KEY) == {}
        counts = dict(admin.execute(sql.SQL('SELECT {}, "TicketCount" FROM {}').format(
            sql.Identifier(HOSTILE_KEY), sql.SQL(entity))).fetchall())
        assert counts == {HOSTILE_KEYS[0]: 2, HOSTILE_KEYS[1]: 2, HOSTILE_KEYS[2]: 0, HOSTILE_KEYS[3]: 1}
        expected = expected_scores(admin, model, entity, HOSTILE_KEY)
        assert set(expected) == set(HOSTILE_KEYS)
        for scorer in ("hostile", "hostile_narrow"):
            assert score_differences(expected, stored_scores(admin, scorer)) == {}, scorer
        assert set(admin.execute(sql.SQL("SELECT {} FROM {}").format(
            sql.Identifier(HOSTILE_SCORED_AT), sql.SQL(entity))).fetchall()) != {(None,)}
        assert {row[0] for row in admin.execute(sql.SQL("SELECT \"ScoredBy\" FROM {}").format(sql.SQL(entity)))} == {
            model_id}
        listed = admin.execute("SELECT key_column, score_column, scored_at_column, events, score_table::text"
                               " FROM scoring.scorers WHERE scorer LIKE 'hostile%%' ORDER BY scorer").fetchall()
        assert [row[:3] for row in listed] == [(HOSTILE_KEY, HOSTILE_SCORE, HOSTILE_SCORED_AT),
                                               (HOSTILE_KEY, None, None)]
        for row in listed:
            described = row[3] if not isinstance(row[3], str) else json.loads(row[3])
            assert [e["entity_key"] for e in described] == [HOSTILE_EVENTS_KEY]
        narrow_key = admin.execute("SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass"
                                   " AND attnum = 1", [listed[1][4]]).fetchone()[0]
        assert narrow_key == HOSTILE_KEY
    with db.connect("analyst") as analyst:
        for key in HOSTILE_KEYS:
            for scorer in ("hostile", "hostile_narrow"):
                score = analyst.execute("SELECT scoring.score_key(%s, %s)", [scorer, key]).fetchone()[0]
                assert abs(score - expected[key]) <= 1e-9
    with db.connect() as admin:
        as_role(admin, owner)
        admin.execute("SELECT scoring.detach('hostile_narrow')")
        admin.execute("SELECT scoring.detach('hostile')")
        admin.execute("RESET ROLE")
        assert canary(admin) == 1
        assert admin.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid IN (%s::regclass, %s::regclass)"
                             " AND NOT tgisinternal", [entity, events]).fetchone()[0] == 0


KEY_VALUES = {
    "bigint": [1, 2**40 + 7, -5],
    "integer": [1, 2**31 - 1, -7],
    "text": ["7590-VHVEG", "o'brien", 'ключ "ü" \\'],
    "uuid": [uuid.UUID("6f1c1e8a-46f3-4cc2-9a1b-4bb3f1b3c0de"), uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)],
}


@pytest.mark.parametrize("key_type", list(KEY_VALUES))
def test_every_key_type_works_end_to_end(db, owner, key_type):
    """Two scorers (score columns; narrow table typed like the key) sharing one model by
    model_name: entities scored on insert, an event counted and rescored, score_key by text."""
    keys = KEY_VALUES[key_type]
    model = crm_pipeline(FEATURES)
    with db.connect() as admin:
        as_role(admin, owner)
        admin.execute(sql.SQL(
            'CREATE SCHEMA "Keys"; CREATE TABLE "Keys"."Subscribers" ("customerID" {type} PRIMARY KEY,'
            ' "Tenure" integer, "MonthlyCharges" numeric(10,2), "Contract" text,'
            ' "TicketCount" integer NOT NULL DEFAULT 0, "ChurnRisk" double precision, "ScoredBy" bigint,'
            ' "ScoredAt" timestamptz);'
            ' CREATE TABLE "Keys"."Tickets" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,'
            ' "customerID" {type} NOT NULL REFERENCES "Keys"."Subscribers")').format(type=sql.SQL(key_type)))
        let_loader_read(admin, "Keys", '"Keys"."Subscribers"')
        admin.execute("""SELECT scoring.attach('keys_wide', '"Keys"."Subscribers"', 'customerID',"""
                      " model_name => 'keys', score_column => 'ChurnRisk', model_id_column => 'ScoredBy',"
                      " scored_at_column => 'ScoredAt')")
        admin.execute("""SELECT scoring.attach_events('keys_wide', '"Keys"."Tickets"', 'customerID', 'TicketCount')""")
        admin.execute("""SELECT scoring.attach('keys_narrow', '"Keys"."Subscribers"', 'customerID',"""
                      " model_name => 'keys')")
        admin.execute("""SELECT scoring.attach_events('keys_narrow', '"Keys"."Tickets"', 'customerID')""")
    push(db, model, "keys")
    entity, events = '"Keys"."Subscribers"', '"Keys"."Tickets"'
    with db.connect() as admin:
        as_role(admin, owner)
        admin.execute("SET scoring.on_error = 'raise'")
        rows = subscriber_rows([str(k) for k in keys], seed=6)
        with admin.cursor() as cur:
            cur.executemany('INSERT INTO "Keys"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract")'
                            " VALUES (%s, %s, %s, %s)", [(key, *row[1:4]) for key, row in zip(keys, rows)])
        admin.execute(sql.SQL('INSERT INTO "Keys"."Tickets" ("customerID") SELECT unnest(%s::{}[])').format(
            sql.SQL(key_type)), [[keys[2], keys[0], keys[2]]])
        admin.execute('DELETE FROM "Keys"."Tickets" WHERE id = (SELECT min(id) FROM "Keys"."Tickets")')
        admin.execute("RESET ROLE")
        counts = dict(admin.execute('SELECT "customerID", "TicketCount" FROM "Keys"."Subscribers"').fetchall())
        assert counts == {keys[0]: 1, keys[1]: 0, keys[2]: 1}
        assert counter_differences(admin, entity, "customerID", "TicketCount", events, "customerID") == {}
        expected = expected_scores(admin, model, entity, "customerID")
        for scorer in ("keys_wide", "keys_narrow"):
            assert score_differences(expected, stored_scores(admin, scorer)) == {}, scorer
        key_type_listed, narrow_type = admin.execute(
            "SELECT key_type, (SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            "                   WHERE attrelid = score_table AND attname = 'customerID')"
            " FROM scoring.scorers WHERE scorer = 'keys_narrow'").fetchone()
        assert key_type_listed == narrow_type == key_type
    with db.connect("analyst") as analyst:
        for key in keys:
            score = analyst.execute("SELECT scoring.score_key('keys_narrow', %s)", [str(key)]).fetchone()[0]
            assert abs(score - expected[key]) <= 1e-9
        many = analyst.execute("SELECT key, score FROM scoring.score_keys('keys_wide', %s)",
                               [[str(k) for k in keys[::-1]]]).fetchall()
        assert [k for k, _ in many] == [str(k) for k in keys[::-1]]
        assert all(abs(score - expected[key]) <= 1e-9 for key, (_, score) in zip(keys[::-1], many))
        missing = {"bigint": "77", "integer": "77", "text": "no such key", "uuid": str(uuid.UUID(int=77))}[key_type]
        with pytest.raises(psycopg.Error) as caught:
            analyst.execute("SELECT scoring.score_key('keys_wide', %s)", [missing])
        assert missing in str(caught.value.diag.message_primary), caught.value.diag.message_primary


# ---- refusals ----------------------------------------------------------------


@pytest.fixture
def crm(db) -> Iterator[Crm]:
    with crm_schema(db) as schema:
        yield schema


def refusal(conn: psycopg.Connection, statement: str, params=None) -> psycopg.Error:
    """The error ``statement`` raises (it must raise), the transaction rolled back."""
    with pytest.raises(psycopg.Error) as caught:
        with conn.transaction():
            conn.execute(statement, params)
    return caught.value


def text_of(error: psycopg.Error) -> str:
    diag = error.diag
    return " ".join(filter(None, [diag.message_primary, diag.message_detail, diag.message_hint]))


def nothing_attached(crm: Crm, allowed: tuple[str, ...] = ()) -> None:
    with crm.db.connect() as admin:
        scorers = [row[0] for row in admin.execute("SELECT scorer FROM scoring.scorers WHERE scorer <> 'churn'")]
        assert sorted(scorers) == sorted(allowed)
        triggers = admin.execute("SELECT tgrelid::regclass::text, tgname::text FROM pg_trigger"
                                 " WHERE tgrelid IN (%s::regclass, %s::regclass) AND NOT tgisinternal",
                                 [ENTITY, EVENTS]).fetchall()
        assert triggers == [] or allowed, triggers
        assert admin.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'scoring_scores'::regnamespace"
                             " AND relkind = 'r'").fetchone()[0] == 0


@pytest.mark.parametrize("arguments, named", [
    ("'customerid'", "customerid"),  # the key's name is case-sensitive, as in pg_attribute
    ("'customerID', score_column => 'Churnrisk'", "Churnrisk"),
    ("'customerID', score_column => 'ChurnRisk', model_id_column => 'ModelID'", "ModelID"),
    ("'customerID', score_column => 'ChurnRisk', scored_at_column => 'When'", "When"),
    ("'customerID', features => ARRAY['Tenure', 'Plan']", "Plan"),
], ids=["key", "score", "model-id", "scored-at", "feature"])
def test_an_unknown_column_is_refused_by_name(crm, arguments, named):
    with crm.owner_connect() as owner:
        error = refusal(owner, f"SELECT scoring.attach('crm', '{ENTITY}', {arguments})")
    assert named in text_of(error) and error.sqlstate in ("42703", "42704", "22023"), (error.sqlstate, text_of(error))
    nothing_attached(crm)


@pytest.mark.parametrize("table, key, words", [
    ('"CRM"."Accounts" ("AccountNo" numeric PRIMARY KEY, "Tenure" integer)', "AccountNo", ("numeric",)),
    ('"CRM"."Visits" ("customerID" text, "Tenure" integer)', "customerID", ("unique", "primary key")),
    ('"CRM"."Regions" ("customerID" text, region text, "Tenure" integer, PRIMARY KEY ("customerID", region))',
     "customerID", ("unique", "primary key")),
    ('"CRM"."Partial" ("customerID" text, "Tenure" integer);'
     ' CREATE UNIQUE INDEX ON "CRM"."Partial" ("customerID") WHERE "Tenure" > 0', "customerID",
     ("unique", "primary key")),
], ids=["numeric-key", "not-unique", "part-of-a-key", "partial-unique-index"])
def test_a_key_that_is_not_a_single_unique_column_of_the_four_types_is_refused(crm, table, key, words):
    name = table.split(" (")[0]
    with crm.owner_connect() as owner:
        owner.execute(f"CREATE TABLE {table}")
        error = refusal(owner, "SELECT scoring.attach('crm', %s, %s)", [name, key])
    message = text_of(error)
    assert key in message and any(word in message.lower() for word in words), message
    nothing_attached(crm)


def test_a_score_column_that_cannot_hold_a_probability_is_refused(crm):
    with crm.owner_connect() as owner:
        error = refusal(owner, f"SELECT scoring.attach('crm', '{ENTITY}', 'customerID', score_column => 'Contract')")
    assert "Contract" in text_of(error), text_of(error)
    nothing_attached(crm)


@pytest.mark.parametrize("name", ["CRM", "1crm", "crm-x", "crm x", "", "a" * 41, "crm\"; drop table x; --", "_crm",
                                  "crm\u00e9"])
def test_a_scorer_name_outside_the_pattern_is_refused(crm, name):
    with crm.db.connect() as admin:
        admin.execute("CREATE TABLE public.x (id integer)")
    with crm.owner_connect() as owner:
        error = refusal(owner, "SELECT scoring.attach(%s, %s, 'customerID')", [name, ENTITY])
    message = text_of(error)
    assert error.sqlstate in ("22023", "23514", "42602"), (error.sqlstate, message)
    assert "[a-z]" in message or "lowercase" in message.lower() or "lower-case" in message.lower(), message
    nothing_attached(crm)
    with crm.db.connect() as admin:
        assert admin.execute("SELECT to_regclass('public.x')").fetchone()[0] is not None


def test_a_name_of_forty_characters_is_the_longest(crm):
    name = "s" * 40
    with crm.owner_connect() as owner:
        owner.execute("SELECT scoring.attach(%s, %s, 'customerID')", [name, ENTITY])
        owner.execute("SELECT scoring.attach_events(%s, %s, 'customerID', 'TicketCount')", [name, EVENTS])
        triggers = owner.execute("SELECT tgrelid, tgname::text FROM pg_trigger"
                                 " WHERE tgrelid IN (%s::regclass, %s::regclass) AND NOT tgisinternal",
                                 [ENTITY, EVENTS]).fetchall()
        assert triggers and all(len(t.encode()) <= 63 and t.startswith("pgscore_" + name) for _, t in triggers)
        assert len(set(triggers)) == len(triggers)  # none cut to another's name
        owner.execute("SELECT scoring.detach(%s)", [name])
    nothing_attached(crm)


def test_only_the_owner_may_attach_or_detach(crm, db):
    """The application role (every right on the table but ownership) and the loader
    (rights in schema scoring) are refused with 42501."""
    with crm.app_connect() as app:
        error = refusal(app, "SELECT scoring.attach('crm', %s, 'customerID')", [ENTITY])
        assert error.sqlstate == "42501" and "owner" in text_of(error) and "Subscribers" in text_of(error), \
            text_of(error)
    with db.connect("loader") as loader:
        error = refusal(loader, "SELECT scoring.attach('crm', %s, 'customerID')", [ENTITY])
        assert error.sqlstate == "42501", text_of(error)
    nothing_attached(crm)
    with crm.owner_connect() as owner:
        owner.execute("SELECT scoring.attach('crm', %s, 'customerID', score_column => 'ChurnRisk')", [ENTITY])
    for who in ("app", "loader"):
        with (crm.app_connect() if who == "app" else db.connect("loader")) as other:
            for statement in ("SELECT scoring.detach('crm')",
                              f"SELECT scoring.attach_events('crm', '{EVENTS}', 'customerID', 'TicketCount')"):
                error = refusal(other, statement)
                assert error.sqlstate == "42501", (who, statement, text_of(error))
    nothing_attached(crm, allowed=("crm",))


def test_events_the_entity_owner_does_not_own_are_refused(crm):
    """Driving a scorer from another role's table would put triggers on it: 42501."""
    other = f"events_owner_{suffix()}"
    with owned_roles(crm.db.admin, other), crm.db.connect() as admin:
        may_create_schemas(admin, other)
        as_role(admin, other)
        admin.execute('CREATE SCHEMA calls; CREATE TABLE calls.calls ("customerID" text)')
        admin.execute("RESET ROLE")
        with crm.owner_connect() as owner:
            owner.execute("SELECT scoring.attach('crm', %s, 'customerID')", [ENTITY])
            error = refusal(owner, "SELECT scoring.attach_events('crm', 'calls.calls', 'customerID')")
        assert error.sqlstate == "42501", text_of(error)
        triggers = admin.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'calls.calls'::regclass")
        assert triggers.fetchone()[0] == 0


@pytest.mark.parametrize("arguments, named", [
    ("'customerID', 'TicketCounts'", "TicketCounts"),
    ("'customerID', 'ticketcount'", "ticketcount"),
    ("'customerID', 'Contract'", "Contract"),  # a counter must be a whole number
    ("'CustomerID', 'TicketCount'", "CustomerID"),
    ("'opened_at', 'TicketCount'", "opened_at"),  # a key column of another type than the entity's key
], ids=["no-such-counter", "counter-case", "text-counter", "no-such-key", "key-of-another-type"])
def test_attach_events_refuses_bad_columns_by_name(crm, arguments, named):
    with crm.owner_connect() as owner:
        owner.execute("SELECT scoring.attach('crm', %s, 'customerID')", [ENTITY])
        error = refusal(owner, f"SELECT scoring.attach_events('crm', '{EVENTS}', {arguments})")
    assert named in text_of(error), text_of(error)
    with crm.db.connect() as admin:
        assert admin.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                             [EVENTS]).fetchone()[0] == 0
        assert admin.execute("SELECT events FROM scoring.scorers WHERE scorer = 'crm'").fetchone()[0] in ([], None)


def test_unknown_scorers_and_a_name_taken_by_another_table_are_refused(crm):
    """attach_events and detach name the unknown scorer (42704); attaching a scorer's name to
    another table is refused (42710), to the same table it replaces the binding."""
    with crm.owner_connect() as owner:
        error = refusal(owner, "SELECT scoring.attach_events('nope', %s, 'customerID')", [EVENTS])
        assert "nope" in text_of(error) and error.sqlstate == "42704", text_of(error)
        error = refusal(owner, "SELECT scoring.detach('nope')")
        assert "nope" in text_of(error) and error.sqlstate == "42704", text_of(error)
        owner.execute("SELECT scoring.attach('crm', %s, 'customerID')", [ENTITY])
        owner.execute('CREATE TABLE "CRM"."Prospects" ("customerID" text PRIMARY KEY, "Tenure" integer)')
        error = refusal(owner, """SELECT scoring.attach('crm', '"CRM"."Prospects"', 'customerID')""")
        assert "crm" in text_of(error) and "Subscribers" in text_of(error) and error.sqlstate == "42710", text_of(error)
        owner.execute("SELECT scoring.attach('crm', %s, 'customerID', score_column => 'ChurnRisk')", [ENTITY])
        assert owner.execute("SELECT score_column FROM scoring.scorers WHERE scorer = 'crm'").fetchall() == [
            ("ChurnRisk",)]
    nothing_attached(crm, allowed=("crm",))


@pytest.mark.parametrize("key", ["model_id", "score", "scored_at", "k", "pgscore_key"])
def test_a_key_named_like_a_column_of_pgscores_own(db, owner, key):
    """The narrow score table has columns score, model_id and scored_at beside the key, and
    pgscore's statements name their own columns k, n, pgscore_key: a key column of any of
    these names works (or is refused by attach, naming it), for both score targets."""
    model = crm_pipeline(FEATURES)
    entity, events = '"Names"."Things"', '"Names"."Events"'
    with db.connect() as admin:
        as_role(admin, owner)
        admin.execute(sql.SQL(
            'CREATE SCHEMA "Names"; CREATE TABLE "Names"."Things" ({key} bigint PRIMARY KEY, "Tenure" integer,'
            ' "MonthlyCharges" numeric(10,2), "Contract" text, "TicketCount" integer NOT NULL DEFAULT 0,'
            ' "ChurnRisk" double precision);'
            ' CREATE TABLE "Names"."Events" (id bigint GENERATED ALWAYS AS IDENTITY, {key} bigint NOT NULL'
            ' REFERENCES "Names"."Things")').format(key=sql.Identifier(key)))
        let_loader_read(admin, "Names", entity)
        try:
            with admin.transaction():
                admin.execute("SELECT scoring.attach('things_narrow', %s, %s, model_name => 'things')", [entity, key])
        except psycopg.Error as exc:  # a clean refusal names the key and says what to do
            assert key in text_of(exc) and exc.diag.message_hint, (exc.sqlstate, text_of(exc))
            narrow = False
        else:
            narrow = True
            admin.execute("SELECT scoring.attach_events('things_narrow', %s, %s)", [events, key])
        admin.execute("SELECT scoring.attach('things_wide', %s, %s, model_name => 'things',"
                      " score_column => 'ChurnRisk')", [entity, key])
        admin.execute("SELECT scoring.attach_events('things_wide', %s, %s, 'TicketCount')", [events, key])
    push(db, model, "things")
    with db.connect() as admin:
        as_role(admin, owner)
        admin.execute("SET scoring.on_error = 'raise'")
        admin.execute(sql.SQL('INSERT INTO "Names"."Things" ({}, "Tenure", "MonthlyCharges", "Contract")'
                              " VALUES (1, 5, 70, 'One year'), (2, 40, 30, 'Two year'), (3, 1, 99, %s)").format(
            sql.Identifier(key)), ["Month-to-month"])
        admin.execute(sql.SQL('INSERT INTO "Names"."Events" ({}) VALUES (3), (1), (3)').format(sql.Identifier(key)))
        admin.execute('DELETE FROM "Names"."Events" WHERE id = (SELECT min(id) FROM "Names"."Events")')
        admin.execute(sql.SQL('UPDATE "Names"."Things" SET "Tenure" = 50 WHERE {} = 2').format(sql.Identifier(key)))
        admin.execute("RESET ROLE")
        assert counter_differences(admin, entity, key, "TicketCount", events, key) == {}
        expected = expected_scores(admin, model, entity, key)
        for scorer in ("things_wide", "things_narrow") if narrow else ("things_wide",):
            assert score_differences(expected, stored_scores(admin, scorer)) == {}, scorer


def test_a_percent_sign_in_column_names(db, owner):
    """Names such as "Churn %" (a score column) and "Discount%" (a feature) are ordinary names:
    no format string of pgscore's may read them as one."""
    model = crm_pipeline(FEATURES, renamed=(("MonthlyCharges", "Discount%"),))
    entity, events = '"Pct"."Subscribers"', '"Pct"."Tickets"'
    with db.connect() as admin:
        as_role(admin, owner)
        admin.execute('CREATE SCHEMA "Pct"; CREATE TABLE "Pct"."Subscribers" ("customerID" text PRIMARY KEY,'
                      ' "Tenure" integer, "Discount%" numeric(10,2), "Contract" text,'
                      ' "TicketCount" integer NOT NULL DEFAULT 0, "Churn %" double precision);'
                      ' CREATE TABLE "Pct"."Tickets" ("customerID" text NOT NULL REFERENCES "Pct"."Subscribers")')
        let_loader_read(admin, "Pct", entity)
        admin.execute("SELECT scoring.attach('pct', %s, 'customerID', score_column => 'Churn %%')", [entity])
        admin.execute("SELECT scoring.attach_events('pct', %s, 'customerID', 'TicketCount')", [events])
        admin.execute("SELECT scoring.attach('pct_narrow', %s, 'customerID', model_name => 'pct')", [entity])
    push(db, model, "pct")
    with db.connect() as admin:
        as_role(admin, owner)
        admin.execute("SET scoring.on_error = 'raise'")
        admin.execute('INSERT INTO "Pct"."Subscribers" ("customerID", "Tenure", "Discount%", "Contract")'
                      " VALUES ('a', 5, 70, 'One year'), ('b', 40, 30, 'Two year')")  # no parameters: % as it is
        admin.execute("""INSERT INTO "Pct"."Tickets" VALUES ('a'), ('b'), ('a')""")
        admin.execute('UPDATE "Pct"."Subscribers" SET "Discount%%" = 12 WHERE "customerID" = %s', ["b"])
        admin.execute("RESET ROLE")
        assert counter_differences(admin, entity, "customerID", "TicketCount", events, "customerID") == {}
        expected = expected_scores(admin, model, entity, "customerID")
        for scorer in ("pct", "pct_narrow"):
            assert score_differences(expected, stored_scores(admin, scorer)) == {}, scorer
