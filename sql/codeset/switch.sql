-- Makes a code set recorded in scoring_trusted.code_sets the installed one
-- (pgscore.migrations.codesets): runs its install SQL, then drops the
-- functions, triggers and views of the code it replaces that it did not
-- create itself, records what schema scoring now holds for the schema check
-- (005-schema-check.sql) and which code set is installed at which revision.
--
-- What the install creates is noted by an event trigger that lives only
-- while it runs, in this transaction: CREATE OR REPLACE of an object the
-- old code had counts as creating it; a blanket GRANT or ALTER does not.
-- An object the install dropped and created again (to change a function's
-- return type, a view's columns) is a new object: only what still has its
-- old oid is stale. Nothing is dropped with CASCADE: an object of the
-- user's that depends on a stale function stops the switch, and the
-- transaction with it. The functions of scoring_trusted are the code set's
-- too (load_runtime): a revision creates none there.
-- {{CODE_SET}}: an expression giving the code set's sha; {{REVISION}}: the
-- schema revision it is installed at.
CREATE TEMP TABLE pgscore_code_created (classid oid, objid oid) ON COMMIT DROP;
-- SECURITY DEFINER: part of the code is created as scoring_owner (the
-- functions a model's activation writes), which may not write this table.
CREATE FUNCTION pg_temp.pgscore_note_created() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO pg_temp.pgscore_code_created
    SELECT c.classid, c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() c
     WHERE c.command_tag IN ('CREATE FUNCTION', 'CREATE PROCEDURE', 'CREATE TRIGGER', 'CREATE VIEW');
END
$$;
REVOKE ALL ON FUNCTION pg_temp.pgscore_note_created() FROM PUBLIC;
DO $switch$
DECLARE
    chosen text := {{CODE_SET}};
    install text;
    stale record;
    saved_path text;
BEGIN
    SELECT c.install_sql INTO install FROM scoring_trusted.code_sets c WHERE c.code_set_sha = chosen;
    IF install IS NULL THEN
        RAISE EXCEPTION 'no code set % is recorded in scoring_trusted.code_sets', coalesce(chosen, '(none)')
            USING ERRCODE = 'undefined_object',
                  HINT = 'run the migrations of the pgscore release that installed it, or upgrade to head (pgscore migrate)';
    END IF;

    CREATE TEMP TABLE pgscore_code_before ON COMMIT DROP AS
    SELECT 'pg_catalog.pg_proc'::regclass::oid AS classid, p.oid AS objid, 3 AS drop_order
      FROM pg_catalog.pg_proc p
     WHERE p.pronamespace IN ('scoring'::regnamespace, 'scoring_trusted'::regnamespace)
    UNION ALL
    SELECT 'pg_catalog.pg_trigger'::regclass::oid, t.oid, 1
      FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
     WHERE p.pronamespace = 'scoring'::regnamespace AND NOT t.tgisinternal
    UNION ALL
    SELECT 'pg_catalog.pg_class'::regclass::oid, c.oid, 2
      FROM pg_catalog.pg_class c
     WHERE c.relnamespace = 'scoring'::regnamespace AND c.relkind = 'v';

    CREATE EVENT TRIGGER pgscore_code_set_switch ON ddl_command_end EXECUTE FUNCTION pg_temp.pgscore_note_created();
    -- Also under session_replication_role = replica: unnoted, the old code would all look stale.
    ALTER EVENT TRIGGER pgscore_code_set_switch ENABLE ALWAYS;
    EXECUTE install;
    DROP EVENT TRIGGER pgscore_code_set_switch;
    IF NOT EXISTS (SELECT FROM pg_temp.pgscore_code_created) THEN
        RAISE EXCEPTION 'installing code set % created nothing that could be noted', chosen
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'an event trigger must see the install; check that event triggers are not disabled';
    END IF;

    -- Names from the oids as they are now, read under a search_path of the catalog alone.
    saved_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    FOR stale IN
        WITH gone AS (
            SELECT b.classid, b.objid, b.drop_order FROM pg_temp.pgscore_code_before b
             WHERE NOT EXISTS (SELECT FROM pg_temp.pgscore_code_created c
                                WHERE c.classid = b.classid AND c.objid = b.objid))
        SELECT g.drop_order, pg_catalog.format('DROP TRIGGER %I ON %s', t.tgname, t.tgrelid::regclass) AS statement
          FROM gone g JOIN pg_catalog.pg_trigger t ON t.oid = g.objid
         WHERE g.classid = 'pg_catalog.pg_trigger'::regclass
        UNION ALL
        SELECT g.drop_order, pg_catalog.format('DROP VIEW %s', c.oid::regclass)
          FROM gone g JOIN pg_catalog.pg_class c ON c.oid = g.objid
         WHERE g.classid = 'pg_catalog.pg_class'::regclass
        UNION ALL
        SELECT g.drop_order, pg_catalog.format('DROP %s %s', CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                                               p.oid::regprocedure)
          FROM gone g JOIN pg_catalog.pg_proc p ON p.oid = g.objid
         WHERE g.classid = 'pg_catalog.pg_proc'::regclass
        ORDER BY 1, 2
    LOOP
        EXECUTE stale.statement;
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
    DROP TABLE pg_temp.pgscore_code_before;

    INSERT INTO scoring_trusted.code_history (revision, code_set_sha) VALUES ({{REVISION}}, chosen);
END
$switch$;
DROP TABLE pg_temp.pgscore_code_created;
DROP FUNCTION pg_temp.pgscore_note_created();
