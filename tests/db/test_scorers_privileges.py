"""Scorers as the roles: the application needs no right beyond its own
tables; scoring_owner gets only the columns it reads and writes; every
function keeps search_path pinned; a column an active model reads cannot be
dropped or renamed, and renaming the tables keeps the scorers working."""

from __future__ import annotations

from typing import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.crm import (ENTITY, EVENTS, FEATURES, KEYS, NARROW_FEATURES, Crm, as_role, attach_both, check, crm_schema,
                       may_create_schemas, owned_roles, subscriber_rows, suffix)

SCHEMAS = ("scoring", "scoring_scores", "scoring_trusted")
SCORE_COLUMNS = ("ChurnRisk", "ScoredBy", "ScoredAt")


@pytest.fixture
def crm(db) -> Iterator[Crm]:
    with crm_schema(db) as schema:
        yield schema


def add_subscribers(crm: Crm, keys=KEYS, seed: int = 11) -> None:
    with crm.app_connect() as app:
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract", "Email")'
                    " SELECT * FROM unnest(%s::text[], %s::int[], %s::numeric[], %s::text[], %s::text[])",
                    [list(column) for column in zip(*subscriber_rows(keys, seed=seed))])


TABLE_RIGHTS = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
COLUMN_RIGHTS = ("SELECT", "INSERT", "UPDATE", "REFERENCES")  # may also be granted on single columns


def rights_in_pgscore_schemas(conn: psycopg.Connection, role: str) -> set[tuple[str, str]]:
    """(object, privilege) of everything ``role`` may use in pgscore's schemas (directly, by
    membership or through PUBLIC)."""
    rights = {(schema, privilege) for schema in SCHEMAS for privilege in ("USAGE", "CREATE")
              if conn.execute("SELECT has_schema_privilege(%s, %s, %s)", [role, schema, privilege]).fetchone()[0]}
    rights |= set(conn.execute(
        "SELECT p.oid::regprocedure::text, 'EXECUTE' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = ANY(%s) AND has_function_privilege(%s, p.oid, 'EXECUTE')",
        [list(SCHEMAS), role]).fetchall())
    for privilege in TABLE_RIGHTS:
        held = "has_table_privilege({role}, c.oid, {privilege})"
        if privilege in COLUMN_RIGHTS:
            held += " OR has_any_column_privilege({role}, c.oid, {privilege})"
        rights |= set(conn.execute(sql.SQL(
            "SELECT c.oid::regclass::text, {privilege} FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'v', 'm', 'p', 'S') AND (" + held + ")").format(
            role=sql.Literal(role), privilege=sql.Literal(privilege)), [list(SCHEMAS)]).fetchall())
    return rights


def test_the_application_needs_no_right_beyond_its_own_tables(crm):
    """An application role with SELECT, INSERT, UPDATE, DELETE (and TRUNCATE) on its
    two tables, and nothing in pgscore's schemas beyond what scoring_app has, writes
    events and entities; every count and score is kept."""
    attach_both(crm)
    with crm.db.connect() as admin:
        extra = rights_in_pgscore_schemas(admin, crm.app) - rights_in_pgscore_schemas(admin, "scoring_app")
        memberships = admin.execute("SELECT count(*) FROM pg_auth_members WHERE member = %s::regrole",
                                    [crm.app]).fetchone()[0]
    assert extra == set() and memberships == 0
    add_subscribers(crm)
    with crm.app_connect() as app:
        assert app.execute("SELECT current_user").fetchone()[0] == crm.app
        app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])', [list(KEYS) * 2])
        with app.cursor() as cur, cur.copy('COPY support.tickets ("customerID") FROM STDIN') as copy:
            copy.write_row((KEYS[0],))
        app.execute('DELETE FROM support.tickets WHERE "customerID" = %s', [KEYS[1]])
        app.execute('UPDATE support.tickets SET "customerID" = %s WHERE id = (SELECT max(id) FROM support.tickets)',
                    [KEYS[1]])
        app.execute('UPDATE "CRM"."Subscribers" SET "Tenure" = "Tenure" + 12, "Contract" = %s WHERE "customerID" = %s',
                    ["One year", KEYS[2]])
        app.execute('INSERT INTO "CRM"."Subscribers" ("customerID", "Tenure", "MonthlyCharges", "Contract")'
                    " VALUES ('0001-APPNW', 3, 99.5, 'Month-to-month')")
    check(crm, "written by the application")


def column_rights(conn: psycopg.Connection, role: str, table: str) -> set[tuple[str, str]]:
    """(column, privilege) ``role`` holds on ``table``, from information_schema and has_column_privilege."""
    schema, name = conn.execute("SELECT n.nspname::text, c.relname::text FROM pg_class c"
                                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::regclass",
                                [table]).fetchone()
    listed = set(conn.execute(
        "SELECT column_name::text, privilege_type::text FROM information_schema.column_privileges"
        " WHERE grantee = %s AND table_schema = %s AND table_name = %s", [role, schema, name]).fetchall())
    columns = [row[0] for row in conn.execute(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        [table])]
    effective = {(column, privilege) for column in columns for privilege in ("SELECT", "INSERT", "UPDATE", "REFERENCES")
                 if conn.execute("SELECT has_column_privilege(%s, %s::regclass, %s, %s)",
                                 [role, table, column, privilege]).fetchone()[0]}
    assert listed <= effective, (listed, effective)
    return effective


def test_scoring_owner_gets_only_the_columns_it_reads_and_writes(crm):
    """With each scorer's features named: SELECT on the key, the features, the counter and
    the score columns, and no write (the entity's owner writes, through hooks it owns that
    only scoring_owner may run); nothing on "Email" or "SignedUp"; no table-wide right; on
    the events table at most SELECT of its key column. Detaching both takes it all back."""
    attach_both(crm, features=True)
    with crm.db.connect() as admin:
        on_entity = column_rights(admin, "scoring_owner", ENTITY)
        on_events = column_rights(admin, "scoring_owner", EVENTS)
        table_wide = {privilege for table in (ENTITY, EVENTS)
                      for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
                      if admin.execute("SELECT has_table_privilege('scoring_owner', %s::regclass, %s)",
                                       [table, privilege]).fetchone()[0]}
        features = {row[0]: set(row[1]) for row in admin.execute(
            "SELECT scorer, features FROM scoring.scorers WHERE scorer LIKE 'crm%%'")}
    assert features == {"crm": set(FEATURES), "crm_narrow": set(NARROW_FEATURES)}
    reads = {(column, "SELECT") for column in ("customerID", *FEATURES, *SCORE_COLUMNS)}
    assert on_entity == reads, (on_entity - reads, reads - on_entity)
    assert on_events <= {("customerID", "SELECT")}, on_events
    assert table_wide == set()
    with crm.db.connect() as admin:
        hooks = admin.execute(
            "SELECT p.oid::regprocedure::text, p.proowner::regrole::text, p.prosecdef, p.proconfig,"
            " array(SELECT r.rolname::text FROM pg_roles r WHERE has_function_privilege(r.oid, p.oid, 'EXECUTE')"
            "       AND NOT r.rolsuper ORDER BY 1)"
            " FROM pg_proc p WHERE p.pronamespace = 'scoring_hooks'::regnamespace AND p.proname LIKE 'crm%%'"
            " ORDER BY 1").fetchall()
    assert [hook[0].split("(")[0] for hook in hooks] == [
        "scoring_hooks.crm_lock", "scoring_hooks.crm_narrow_lock", "scoring_hooks.crm_narrow_write",
        "scoring_hooks.crm_write"], hooks
    for name, owner, definer, config, runners in hooks:
        assert owner == crm.owner and definer and config == ["search_path=pg_catalog, pg_temp"], (name, owner, config)
        assert set(runners) == {crm.owner, "scoring_owner"}, (name, runners)
    add_subscribers(crm)
    with crm.app_connect() as app:
        app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])', [list(KEYS[:3])])
    check(crm, "scored with column rights only")
    with crm.owner_connect() as owner:
        owner.execute("SELECT scoring.detach('crm_narrow')")
        owner.execute("SELECT scoring.detach('crm')")
    with crm.db.connect() as admin:
        assert column_rights(admin, "scoring_owner", ENTITY) == set()
        assert column_rights(admin, "scoring_owner", EVENTS) == set()


def test_with_no_features_named_pgscore_reads_the_supported_columns_only(crm):
    """features => NULL: every column of a supported type but the key and score columns
    ("SignedUp", a date, is not one); still nothing table-wide."""
    attach_both(crm)
    with crm.db.connect() as admin:
        on_entity = column_rights(admin, "scoring_owner", ENTITY)
        features = dict(admin.execute("SELECT scorer, features FROM scoring.scorers WHERE scorer = 'crm'").fetchall())
    assert set(features["crm"]) == {*FEATURES, "Email"}
    assert ("SignedUp", "SELECT") not in on_entity
    assert {(column, "SELECT") for column in ("customerID", *FEATURES, "Email", *SCORE_COLUMNS)} == on_entity


# Functions that cannot pin search_path, all SECURITY INVOKER (so they run
# with the caller's own rights and path): a procedure that commits between
# batches (a SET clause forbids transaction control), what it calls, and an
# SQL function that must stay inlinable.
UNPINNED = {
    "scoring.rescore(text,integer)",
    "scoring._rescore_plpython(text,integer,text[])",
    "scoring._float8_from_bits(bigint)",
}


def test_every_function_keeps_search_path_pinned(crm):
    """Every function of pgscore's schemas, and every function a trigger on the
    user's tables calls, after both scorers are attached and their models active."""
    attach_both(crm)
    with crm.db.connect() as admin:
        functions = admin.execute(
            "SELECT p.oid::regprocedure::text, p.proconfig, p.prosecdef FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ANY(%s)"
            " UNION SELECT p.oid::regprocedure::text, p.proconfig, p.prosecdef FROM pg_trigger t"
            " JOIN pg_proc p ON p.oid = t.tgfoid"
            " WHERE t.tgrelid IN (%s::regclass, %s::regclass) AND NOT t.tgisinternal",
            [list(SCHEMAS), ENTITY, EVENTS]).fetchall()
        triggers = admin.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid IN (%s::regclass, %s::regclass)"
                                 " AND NOT tgisinternal", [ENTITY, EVENTS]).fetchone()[0]
    assert triggers >= 2 and len(functions) > 20
    unpinned, loose = [], []
    for name, config, definer in functions:
        paths = [item.split("=", 1)[1] for item in config or [] if item.startswith("search_path=")]
        if not paths:
            unpinned.append((name, definer))
            continue
        entries = [entry.strip() for entry in paths[0].split(",")]
        if entries[-1] != "pg_temp" or {"public", "$user", '"$user"'} & set(entries):
            loose.append((name, paths[0]))
    assert {name for name, _ in unpinned} <= UNPINNED, unpinned
    assert not any(definer for _, definer in unpinned), unpinned
    assert loose == []


@pytest.fixture
def attached(crm) -> Crm:
    attach_both(crm)
    add_subscribers(crm)
    with crm.app_connect() as app:
        app.execute('INSERT INTO support.tickets ("customerID") SELECT unnest(%s::text[])', [list(KEYS[:4])])
    return crm


@pytest.mark.parametrize("column, scorers", [
    ("Tenure", ("crm", "crm_narrow")),
    ("MonthlyCharges", ("crm",)),
    ("TicketCount", ("crm", "crm_narrow")),  # a counter and a feature
])
@pytest.mark.parametrize("change", ["drop", "rename"])
def test_a_column_an_active_model_reads_cannot_be_dropped_or_renamed(attached, column, scorers, change):
    crm = attached
    statement = sql.SQL("ALTER TABLE {} DROP COLUMN {}" if change == "drop" else
                        "ALTER TABLE {} RENAME COLUMN {} TO \"Renamed\"").format(sql.SQL(ENTITY),
                                                                                 sql.Identifier(column))
    with crm.owner_connect() as owner:
        with pytest.raises(psycopg.Error) as caught:
            owner.execute(statement)
    diag = caught.value.diag
    message = " ".join(filter(None, [diag.message_primary, diag.message_detail, diag.message_hint]))
    assert column in message and any(scorer in message for scorer in scorers), message
    with crm.db.connect() as admin:
        assert admin.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s"
                             " AND NOT attisdropped", [ENTITY, column]).fetchone()[0] == 1
    check(crm, f"{change} of {column} refused")


def test_columns_no_model_reads_can_be_dropped_and_renamed(attached):
    crm = attached
    with crm.owner_connect() as owner:
        owner.execute('ALTER TABLE "CRM"."Subscribers" DROP COLUMN "SignedUp"')
        owner.execute('ALTER TABLE "CRM"."Subscribers" ADD COLUMN "Region" text')
        owner.execute('ALTER TABLE support.tickets ADD COLUMN channel text')
    with crm.app_connect() as app:
        app.execute('UPDATE "CRM"."Subscribers" SET "Region" = %s, "Tenure" = "Tenure" + 1 WHERE "customerID" = %s',
                    ["north", KEYS[0]])
        app.execute("INSERT INTO support.tickets (\"customerID\", channel) VALUES (%s, 'chat')", [KEYS[5]])
    check(crm, "unrelated columns changed")


def test_renaming_the_tables_and_their_schemas_keeps_the_scorers_working(attached):
    crm = attached
    with crm.owner_connect() as owner:
        owner.execute('ALTER TABLE "CRM"."Subscribers" RENAME TO "Members"')
        owner.execute('ALTER TABLE support.tickets RENAME TO "Tickets"')
        owner.execute('ALTER SCHEMA support RENAME TO "Support Desk"')
    crm.entity, crm.events = '"CRM"."Members"', '"Support Desk"."Tickets"'
    with crm.app_connect() as app:
        app.execute('INSERT INTO "Support Desk"."Tickets" ("customerID") VALUES (%s), (%s), (%s)',
                    [KEYS[6], KEYS[7], KEYS[6]])
        app.execute('DELETE FROM "Support Desk"."Tickets" WHERE id = (SELECT min(id) FROM "Support Desk"."Tickets")')
        app.execute('UPDATE "CRM"."Members" SET "Contract" = %s WHERE "customerID" = %s', ["Two year", KEYS[7]])
    check(crm, "tables renamed")
    with crm.db.connect() as admin:
        listed = admin.execute("SELECT entity::text, events FROM scoring.scorers WHERE scorer = 'crm'").fetchone()
        counts = dict(admin.execute('SELECT "customerID", "TicketCount" FROM "CRM"."Members"').fetchall())
    assert listed[0] == crm.entity and crm.events in str(listed[1])
    assert counts[KEYS[6]] == 2 and counts[KEYS[7]] == 1


@pytest.mark.parametrize("via", ["trigger-score-columns", "trigger-counter", "policy", "hooks-made-invoker"])
def test_a_table_owner_cannot_run_code_as_scoring_owner(crm, via):
    """Any role that owns a table may attach a scorer to it, and pgscore's code then acts on
    that table for scoring_owner, which owns schema scoring. Nothing of the table may run as
    scoring_owner: its triggers (with score columns, or a counter), a row-level security
    policy (such a table is refused), nor the hooks its owner owns, made SECURITY INVOKER
    after attach with UPDATE granted to scoring_owner. Mallory attaches her table (scored
    with crm's model) and plants code that notes current_user and, as scoring_owner,
    rewrites the model registry and zeroes crm's scores."""
    attach_both(crm)
    add_subscribers(crm)
    mallory = f"mallory_{suffix()}"
    refused = []
    with owned_roles(crm.db.admin, mallory), crm.db.connect() as admin:
        may_create_schemas(admin, mallory)
        as_role(admin, mallory)
        admin.execute("""
            CREATE SCHEMA mallory;
            CREATE TABLE mallory.loot (who text, what text);
            GRANT USAGE ON SCHEMA mallory TO PUBLIC;
            GRANT INSERT ON mallory.loot TO PUBLIC;
            CREATE FUNCTION mallory.grab() RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO mallory.loot VALUES (current_user::text, 'ran');
                IF current_user::text = 'scoring_owner' THEN  -- each attempt on its own: a refusal hides nothing
                    BEGIN UPDATE scoring.models SET note = 'rewritten by mallory';
                    EXCEPTION WHEN OTHERS THEN NULL; END;
                    BEGIN UPDATE "CRM"."Subscribers" SET "ChurnRisk" = 0;
                    EXCEPTION WHEN OTHERS THEN NULL; END;
                END IF;
                RETURN true;
            END $$;
            CREATE FUNCTION mallory.grab_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM mallory.grab(); RETURN NEW; END $$;
            CREATE TABLE mallory.accounts ("customerID" text PRIMARY KEY, "Tenure" integer,
                "MonthlyCharges" numeric(10,2), "Contract" text, "TicketCount" integer NOT NULL DEFAULT 0,
                "ChurnRisk" double precision);
            CREATE TABLE mallory.events ("customerID" text);
            CREATE TRIGGER a_grab BEFORE UPDATE ON mallory.accounts
                FOR EACH ROW EXECUTE FUNCTION mallory.grab_trigger();
        """)
        statements = []
        if via == "policy":
            statements.append("ALTER TABLE mallory.accounts ENABLE ROW LEVEL SECURITY;"
                              " ALTER TABLE mallory.accounts FORCE ROW LEVEL SECURITY;"
                              " CREATE POLICY grab ON mallory.accounts USING (mallory.grab())")
        if via == "trigger-counter":
            statements += ["SELECT scoring.attach('mallory', 'mallory.accounts', 'customerID', model_name => 'crm')",
                           "SELECT scoring.attach_events('mallory', 'mallory.events', 'customerID', 'TicketCount')"]
        else:
            statements.append("SELECT scoring.attach('mallory', 'mallory.accounts', 'customerID',"
                              " model_name => 'crm', score_column => 'ChurnRisk')")
        if via == "hooks-made-invoker":
            statements += ["GRANT SELECT, UPDATE ON mallory.accounts TO scoring_owner",
                           "ALTER FUNCTION scoring_hooks.mallory_lock(text[]) SECURITY INVOKER",
                           "ALTER FUNCTION scoring_hooks.mallory_write(text[], integer[], double precision[], bigint,"
                           " text) SECURITY INVOKER"]
        statements += ["INSERT INTO mallory.accounts (\"customerID\", \"Tenure\", \"MonthlyCharges\", \"Contract\")"
                       " VALUES ('m1', 3, 50, 'One year')",
                       "INSERT INTO mallory.events VALUES ('m1')",
                       "UPDATE mallory.accounts SET \"Tenure\" = 9"]
        for statement in statements:
            try:
                with admin.transaction():
                    admin.execute(statement)
            except psycopg.Error as exc:  # refusing is fine; running her code as scoring_owner is not
                refused.append((statement, exc.diag.message_primary))
        admin.execute("RESET ROLE")
        who = {row[0] for row in admin.execute("SELECT who FROM mallory.loot")}
        notes = {row[0] for row in admin.execute("SELECT note FROM scoring.models")}
        zeroed = admin.execute('SELECT count(*) FROM "CRM"."Subscribers" WHERE "ChurnRisk" = 0').fetchone()[0]
    assert ("scoring_owner" in who, "rewritten by mallory" in notes, zeroed) == (False, False, 0), refused
    if via == "policy":
        assert refused, "a table with row-level security is refused"
    elif via.startswith("trigger"):
        assert refused == [] and who == {mallory}, refused  # her trigger ran, as her
    check(crm, "after mallory")
