-- Before a superuser touches schema scoring: refuse when it holds objects
-- pgscore did not create (docs/security.md, "Superusers and the objects of
-- scoring_owner"). PostgreSQL runs the functions of a view, a rule, a
-- trigger, a column default or an index expression with the rights of the
-- role that queries or writes the table, and scoring_owner (whose
-- SECURITY DEFINER functions an SQL injection would act as) owns schema
-- scoring and may put any of these there: a superuser who reads
-- scoring.models through such a view runs scoring_owner's code as a
-- superuser. SET ROLE does not contain that code (it may RESET ROLE).
--
-- This block reads pg_catalog and scoring_trusted (the migrating
-- superuser's) only, which runs no code of any role. It runs first in
-- every migration that touches scoring: revision 0009 runs it before its
-- own SQL, later revisions must too (render.sql_file("idempotent",
-- "005-schema-check.sql")); once it passed in a transaction, it is not
-- repeated there (the rendered head runs it again otherwise). The pgscore
-- client runs it too, before any superuser session of it touches
-- scoring (pgscore.connection).
--
-- What pgscore created: the relations, triggers and rules below, and the
-- functions scoring_trusted.installed_functions recorded at the end of
-- the last migration (sql/idempotent/099-record-functions.sql), the bodies
-- of those that run as their caller included. Before that record exists
-- (upgrading from 0008) only the functions' names are known.
DO $pgscore_schema_check$
DECLARE
    scoring_ns oid := (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = 'scoring');
    owner_oid oid := (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = 'scoring_owner');
    tables constant text[] := ARRAY['models', 'deployments', 'errors', 'runtime_modules', 'scorer_entities',
                                    'scorer_events'];
    views constant text[] := ARRAY['active_models', 'scorers'];
    indexes constant text[] := ARRAY['models_pkey', 'models_name_version_key', 'deployments_pkey',
                                     'deployments_name_latest_idx', 'errors_pkey', 'runtime_modules_pkey',
                                     'scorer_entities_pkey', 'scorer_events_pkey'];
    -- The narrow score tables of scorers (scoring.attach), owned by scoring_owner.
    scores_ns oid := (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = 'scoring_scores');
    -- (relation, trigger, function) of every trigger pgscore creates on scoring's tables or with its functions.
    triggers constant text[] := ARRAY[
        'scoring.models|assign_version|scoring._assign_model_version()',
        'scoring.models|churn_path_changed|scoring._reinstall_scoring_functions()',
        'scoring.deployments|churn_deployed|scoring._reinstall_scoring_functions()',
        'complaints|complaints_rescore|scoring._on_complaints_inserted()',
        'public.complaints|complaints_rescore|scoring._on_complaints_inserted()'];
    -- Every function name pgscore used in schema scoring, at any revision.
    function_names constant text[] := ARRAY[
        '_assign_model_version', '_float8_from_bits', '_install_generated_scoring', '_install_scoring_functions',
        '_install_sql_scoring', '_load_runtime', '_on_complaints_inserted', '_profiles_altered',
        '_raise_python_error', '_reinstall_scoring_functions', '_require_loadable', '_rescore_plpython',
        '_score_bits_plpython', '_score_bits_py', '_score_customer_py', '_score_features_plpython',
        '_score_many_py', '_score_new_complaints', '_score_profile', '_score_rejected', '_scores_py',
        '_unknown_model_hint', '_warmup_plpython', 'activate', 'rollback', 'runtime_info', 'score',
        'score_many', 'score_with_model', 'set_scoring_path', 'sql_expression', 'warmup', 'rescore',
        '_scorer_trigger', '_require_owner', '_grant_schema_usage', '_column_type', '_score_table', '_create_scorer_triggers', 'attach',
        'attach_events', '_recount', 'detach', '_score_key_py', 'score_key', '_score_keys_py', 'score_keys',
        '_rescore_batch', '_scorer_rows', 'score_keys_with_model', '_scorer_tables_altered', '_scorer_tables_dropped'];
    recorded boolean := false;
    problems text[] := '{}';
    found record;
BEGIN
    IF scoring_ns IS NULL
       OR pg_catalog.current_setting('pgscore.schema_checked', true) = pg_catalog.txid_current()::text THEN
        RETURN;
    END IF;
    IF pg_catalog.to_regclass('scoring_trusted.installed_functions') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM scoring_trusted.installed_functions)' INTO recorded;
    END IF;

    -- Relations: known names, of the known kind, owned by scoring_owner.
    FOR found IN
        SELECT c.oid::regclass::text AS name, c.relname, c.relkind, c.relowner, c.relnamespace,
               CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                    WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table'
                    WHEN 'p' THEN 'partitioned table' WHEN 'c' THEN 'composite type' ELSE 'relation' END AS kind,
               (SELECT t.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class t ON t.oid = i.indrelid
                 WHERE i.indexrelid = c.oid) AS index_of,
               (SELECT t.relname FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
                 WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                   AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')
                   AND t.relnamespace = scoring_ns LIMIT 1) AS sequence_of
          FROM pg_catalog.pg_class c
         WHERE c.relnamespace = scoring_ns
            OR c.relowner = owner_oid AND c.relnamespace <> 'pg_toast'::regnamespace
         ORDER BY 1
    LOOP
        IF found.relkind = 'r' AND found.relname = ANY (tables)
           OR found.relkind = 'v' AND found.relname = ANY (views)
           OR found.relkind = 'i' AND found.relname = ANY (indexes) AND found.index_of = ANY (tables)
           OR found.relkind = 'S' AND found.sequence_of = ANY (tables)
           OR found.relnamespace = scores_ns AND found.relkind IN ('r', 'i') THEN
            -- runtime_modules (before 0009) may belong to the superuser who migrated.
            IF found.relowner IS DISTINCT FROM owner_oid AND found.relkind <> 'i'
               AND found.relname <> 'runtime_modules' THEN
                problems := problems || format('%s %s belongs to %s, not scoring_owner',
                                               found.kind, found.name, found.relowner::regrole);
            END IF;
        ELSIF found.relname = ANY (tables || views) THEN
            problems := problems || format('%s %s (pgscore''s %s is a %s)', found.kind, found.name, found.name,
                                           CASE WHEN found.relname = ANY (views) THEN 'view' ELSE 'table' END);
        ELSE
            problems := problems || format('%s %s', found.kind, found.name);
        END IF;
    END LOOP;

    -- Rules: none but the definitions of pgscore's views.
    FOR found IN
        SELECT format('rule %s on %s', r.rulename, r.ev_class::regclass) AS name
          FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
         WHERE (c.relnamespace = scoring_ns OR c.relowner = owner_oid)
           AND NOT (r.rulename = '_RETURN' AND c.relkind = 'v' AND c.relname = ANY (views))
         ORDER BY 1
    LOOP
        problems := problems || found.name;
    END LOOP;

    -- Triggers on scoring's tables, or that call scoring's functions: pgscore's only.
    FOR found IN
        SELECT format('trigger %s on %s', t.tgname, t.tgrelid::regclass) AS name,
               format('%s|%s|%s', t.tgrelid::regclass, t.tgname, t.tgfoid::regprocedure) AS what
          FROM pg_catalog.pg_trigger t
          JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
          JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
         WHERE NOT t.tgisinternal
           AND (c.relnamespace = scoring_ns OR c.relowner = owner_oid OR p.pronamespace = scoring_ns
                OR p.proowner = owner_oid)
         ORDER BY 1
    LOOP
        IF NOT found.what = ANY (triggers)
           -- A scorer's triggers (scoring._create_scorer_triggers): pgscore_<scorer>_<event>.
           AND NOT (found.what LIKE '%|pgscore\_%|scoring._scorer_trigger()') THEN
            problems := problems || found.name;
        END IF;
    END LOOP;

    -- Functions (and procedures) in scoring or owned by scoring_owner.
    FOR found IN
        SELECT p.oid, p.oid::regprocedure::text AS signature, p.proname, p.prokind, p.prosecdef, p.proowner,
               l.lanname, p.pronamespace,
               CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'window function'
                    ELSE 'function' END AS kind
          FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = scoring_ns OR p.proowner = owner_oid
         ORDER BY 2
    LOOP
        IF found.pronamespace IS DISTINCT FROM scoring_ns THEN
            problems := problems || format('%s %s', found.kind, found.signature);
        ELSIF NOT recorded THEN
            IF NOT found.proname = ANY (function_names) OR found.prokind NOT IN ('f', 'p') THEN
                problems := problems || format('%s %s', found.kind, found.signature);
            END IF;
        ELSE
            DECLARE
                installed record;
                definition_md5 text;
            BEGIN
                EXECUTE 'SELECT i.prokind, i.security_definer, i.language, i.definition_md5'
                        ' FROM scoring_trusted.installed_functions i WHERE i.signature = $1'
                   INTO installed USING found.signature;
                -- Every recorded definition (record-functions.sql says which are).
                definition_md5 := NULL;
                IF installed.definition_md5 IS NOT NULL THEN
                    definition_md5 := pg_catalog.md5(pg_catalog.pg_get_functiondef(found.oid));
                END IF;
                IF installed IS NULL THEN
                    problems := problems || format('%s %s', found.kind, found.signature);
                ELSIF (found.prokind, found.prosecdef, found.lanname, definition_md5) IS DISTINCT FROM
                      (installed.prokind, installed.security_definer, installed.language, installed.definition_md5) THEN
                    problems := problems || format('%s %s (changed since pgscore installed it)',
                                                   found.kind, found.signature);
                END IF;
            END;
        END IF;
        IF found.proowner IS DISTINCT FROM owner_oid AND found.pronamespace = scoring_ns THEN
            problems := problems || format('%s %s belongs to %s, not scoring_owner',
                                           found.kind, found.signature, found.proowner::regrole);
        END IF;
    END LOOP;

    -- Whatever else uses scoring's functions (a column default, a check
    -- constraint, an index expression, a policy, a view, a trigger's WHEN)
    -- runs them as whoever writes or reads the table.
    FOR found IN
        SELECT DISTINCT format('%s (uses %s)', pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid),
                               p.oid::regprocedure) AS name
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid
         WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass
           AND (p.pronamespace = scoring_ns OR p.proowner = owner_oid)
           AND d.deptype = 'n'
           AND d.classid <> 'pg_catalog.pg_proc'::regclass
           AND NOT (d.classid = 'pg_catalog.pg_trigger'::regclass
                    AND EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.oid = d.objid AND t.tgfoid = p.oid))
           -- pgscore's event trigger (only a superuser creates one) fires on
           -- everyone's DDL, the migration's too: its function must run as scoring_owner.
           AND NOT (d.classid = 'pg_catalog.pg_event_trigger'::regclass AND p.prosecdef
                    AND EXISTS (SELECT FROM pg_catalog.pg_event_trigger e
                                 WHERE e.oid = d.objid AND e.evtfoid = p.oid
                                   AND e.evtname = 'scoring_profiles_altered'))
         ORDER BY 1
    LOOP
        problems := problems || found.name;
    END LOOP;

    -- Any other object in schema scoring (types, domains, operators, ...)
    -- but the row types of its relations and their arrays.
    FOR found IN
        SELECT pg_catalog.pg_describe_object(d.classid, d.objid, 0) AS name
          FROM pg_catalog.pg_depend d
         WHERE d.refclassid = 'pg_catalog.pg_namespace'::regclass AND d.refobjid = scoring_ns
           AND d.classid NOT IN ('pg_catalog.pg_class'::regclass, 'pg_catalog.pg_proc'::regclass)
           AND NOT (d.classid = 'pg_catalog.pg_type'::regclass AND EXISTS (
                    SELECT FROM pg_catalog.pg_type ty
                      LEFT JOIN pg_catalog.pg_type elem ON elem.oid = ty.typelem
                     WHERE ty.oid = d.objid AND (ty.typrelid <> 0 OR elem.typrelid <> 0)))
        UNION
        SELECT pg_catalog.pg_describe_object(s.classid, s.objid, 0)
          FROM pg_catalog.pg_shdepend s
         WHERE s.refclassid = 'pg_catalog.pg_authid'::regclass AND s.refobjid = owner_oid AND s.deptype = 'o'
           AND s.dbid = (SELECT db.oid FROM pg_catalog.pg_database db WHERE db.datname = pg_catalog.current_database())
           AND s.classid NOT IN ('pg_catalog.pg_class'::regclass, 'pg_catalog.pg_proc'::regclass,
                                 'pg_catalog.pg_namespace'::regclass, 'pg_catalog.pg_type'::regclass)
        ORDER BY 1
    LOOP
        problems := problems || found.name;
    END LOOP;

    IF pg_catalog.cardinality(problems) > 0 THEN
        RAISE EXCEPTION 'schema scoring holds objects pgscore did not create: %', pg_catalog.array_to_string(problems, '; ')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'pgscore will not read or write schema scoring as a superuser while they are there: '
                         'PostgreSQL runs their code with the rights of whoever queries them. Review how they got '
                         'there (scoring_owner, which owns schema scoring, may have been compromised), drop them and '
                         'restore pgscore''s own objects (from a backup, or pgscore migrate after dropping them), '
                         'then run the command again; see docs/security.md, "Superusers and the objects of '
                         'scoring_owner"';
    END IF;
    PERFORM pg_catalog.set_config('pgscore.schema_checked', pg_catalog.txid_current()::text, true);
END
$pgscore_schema_check$;
