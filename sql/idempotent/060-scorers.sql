-- Scorers (docs/scorers.md): a model name bound to an entity table of the
-- user's own, with event tables that keep a counter of it exact. Every
-- trigger of every scorer runs one static function, scoring._scorer_trigger
-- (pgscore_server.freshness), with the scorer's name as its argument; the
-- reference scorer 'churn' keeps its generated complaint trigger for INSERTs
-- (050-complaint-trigger.sql).
--
-- Who may do what. scoring.attach, attach_events and detach run as their
-- caller: only the owner of a table (a member of its owning role) or a
-- superuser may create triggers on it and grant on it. They grant
-- scoring_owner the least it needs (reading the key, the features and the
-- counters; writing the score columns and counters) and write the registry,
-- whose row-level security (0011) admits only the tables' owners. The
-- SECURITY DEFINER functions below read the registry and trust it for that
-- reason.

CREATE OR REPLACE FUNCTION scoring._scorer_trigger()
RETURNS trigger
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.scorer_trigger(plpy, GD, TD)
$python$;
COMMENT ON FUNCTION scoring._scorer_trigger() IS 'internal: every trigger of every scorer (its name is the argument)';

-- The registry as a scorer's columns (the view) and the checks attach makes.
CREATE OR REPLACE VIEW scoring.scorers AS
SELECT e.scorer, e.model_name, e.entity, e.key_column, e.key_type,
       CASE WHEN e.score_column IS NULL THEN 'table' ELSE 'columns' END AS score_target,
       e.score_column, e.model_id_column, e.scored_at_column,
       CASE WHEN e.score_column IS NULL
            THEN pg_catalog.to_regclass('scoring_scores.' || pg_catalog.quote_ident(e.scorer)) END AS score_table,
       e.features, e.score_on_insert, e.mode,
       coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                        'events', v.events::text, 'entity_key', v.key_column, 'counter', v.counter_column)
                        ORDER BY v.events::text)
                   FROM scoring.scorer_events v WHERE v.scorer = e.scorer), '[]') AS events,
       a.model_id AS active_model_id, a.version AS active_version, m.scoring_path,
       e.attached_at, e.attached_by
  FROM scoring.scorer_entities e
  LEFT JOIN scoring.active_models a ON a.name = e.model_name
  LEFT JOIN scoring.models m ON m.model_id = a.model_id;
COMMENT ON VIEW scoring.scorers IS 'every scorer: its entity, key, where its scores go, its event tables, mode and active model';

-- The owner (or a superuser) check of attach, attach_events and detach.
CREATE OR REPLACE FUNCTION scoring._require_owner(relation regclass, action text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_owner oid := (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = relation);
BEGIN
    IF NOT pg_catalog.pg_has_role(current_user, v_owner, 'USAGE')
       AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'only the owner of % (role %) or a superuser may %', relation, v_owner::regrole, action
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('run it as %s, or ask its owner to', v_owner::regrole);
    END IF;
END
$$;
COMMENT ON FUNCTION scoring._require_owner(regclass, text) IS 'internal: refuses a caller that does not own the table';

-- scoring_owner reaches a table only through its schema: USAGE, granted by
-- the caller where it may, else an error that says who must grant it.
CREATE OR REPLACE FUNCTION scoring._grant_schema_usage(relation regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_oid oid := (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = relation);
    v_schema text := (SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_namespace n WHERE n.oid = v_oid);
BEGIN
    IF NOT pg_catalog.has_schema_privilege('scoring_owner', v_oid, 'USAGE') THEN
        SET LOCAL client_min_messages = error;  -- a GRANT the caller may not give only warns
        EXECUTE format('GRANT USAGE ON SCHEMA %s TO scoring_owner', v_schema);
        RESET client_min_messages;
    END IF;
    IF NOT pg_catalog.has_schema_privilege('scoring_owner', v_oid, 'USAGE') THEN
        RAISE EXCEPTION 'scoring_owner may not use schema %, which holds %', v_schema, relation
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('its owner can grant it: GRANT USAGE ON SCHEMA %s TO scoring_owner', v_schema);
    END IF;
END
$$;
COMMENT ON FUNCTION scoring._grant_schema_usage(regclass) IS 'internal: lets scoring_owner reach a table''s schema';

-- The type of a column by name, or an error naming the table and the column.
CREATE OR REPLACE FUNCTION scoring._column_type(relation regclass, column_name text, what text)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_type text;
BEGIN
    SELECT pg_catalog.format_type(a.atttypid, NULL) INTO v_type
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = relation AND a.attname = column_name AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_type IS NULL THEN
        RAISE EXCEPTION '% % is not a column of %', what, pg_catalog.quote_ident(column_name), relation
            USING ERRCODE = 'undefined_column',
                  HINT = 'column names are case-sensitive and given unquoted, as in pg_attribute: ''customerID''';
    END IF;
    RETURN v_type;
END
$$;
COMMENT ON FUNCTION scoring._column_type(regclass, text, text) IS 'internal: a column''s type, or an error naming it';

-- The narrow score table of a scorer that names no score column, created
-- (or dropped, once its scorer is gone) as scoring_owner.
CREATE OR REPLACE FUNCTION scoring._score_table(scorer text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    s record;
    v_table text := 'scoring_scores.' || pg_catalog.quote_ident(scorer);
    v_existing text;
BEGIN
    SELECT e.*, (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = e.entity)::regrole AS owner
      INTO s FROM scoring.scorer_entities e WHERE e.scorer = _score_table.scorer;
    IF s.scorer IS NULL OR s.score_column IS NOT NULL THEN
        EXECUTE format('DROP TABLE IF EXISTS %s', v_table);
        RETURN;
    END IF;
    SELECT pg_catalog.format_type(a.atttypid, NULL) || '/' || a.attname INTO v_existing
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = pg_catalog.to_regclass(v_table) AND a.attnum = 1;
    IF v_existing IS DISTINCT FROM s.key_type || '/' || s.key_column THEN
        EXECUTE format('DROP TABLE IF EXISTS %s', v_table);
        EXECUTE format('CREATE TABLE %s (%I %s PRIMARY KEY, score double precision CHECK (score BETWEEN 0 AND 1),'
                       ' model_id bigint, scored_at timestamptz)', v_table, s.key_column, s.key_type);
        EXECUTE format('COMMENT ON TABLE %s IS %L', v_table,
                       format('scores of scorer %s (entity %s), written by pgscore only', s.scorer, s.entity));
    END IF;
    EXECUTE format('GRANT SELECT ON %s TO scoring_analyst, scoring_loader, %I', v_table, s.owner);
END
$$;
COMMENT ON FUNCTION scoring._score_table(text) IS 'internal: creates or drops a scorer''s narrow score table';

-- A scorer's triggers, as the registry says; run by its tables' owner
-- (attach, attach_events) or the migrating superuser (every install, at the
-- end of this file). Existing ones are dropped first.
CREATE OR REPLACE FUNCTION scoring._create_scorer_triggers(scorer text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    s record;
    v record;
    t record;
    v_prefix text := 'pgscore_' || scorer || '_';
    v_update_of text;
    v_function text := 'scoring._scorer_trigger(' || pg_catalog.quote_literal(scorer) || ')';
    v_hooks text[] := ARRAY['scoring_hooks.' || pg_catalog.quote_ident(scorer || '_lock'),
                            'scoring_hooks.' || pg_catalog.quote_ident(scorer || '_write')];
    v_owner regrole;
    r record;
    v_run text;
    v_counters text;
    v_sets text;
BEGIN
    SELECT * INTO s FROM scoring.scorer_entities e WHERE e.scorer = _create_scorer_triggers.scorer;
    -- This scorer's triggers: those whose one argument is its name.
    FOR t IN SELECT tg.tgname, tg.tgrelid::regclass AS relation FROM pg_catalog.pg_trigger tg
              WHERE NOT tg.tgisinternal AND tg.tgfoid = 'scoring._scorer_trigger()'::regprocedure
                AND tg.tgnargs = 1 AND tg.tgargs = pg_catalog.convert_to(scorer, 'UTF8') || '\x00'::bytea
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.relation);
    END LOOP;
    IF s.scorer IS NULL OR NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = s.entity) THEN
        -- Gone (detach), or its table is: its hooks go too (those of roles the caller acts for).
        FOR t IN SELECT p.oid::regprocedure AS hook FROM pg_catalog.pg_proc p
                  WHERE p.pronamespace = 'scoring_hooks'::regnamespace
                    AND p.proname IN (scorer || '_lock', scorer || '_write')
                    AND pg_catalog.pg_has_role(current_user, p.proowner, 'USAGE')
        LOOP
            EXECUTE format('DROP FUNCTION %s', t.hook);
        END LOOP;
        RETURN;
    END IF;

    -- The hooks: what scoring_owner's code may do to the entity, run as the
    -- entity's owner, so that nothing of the table (its own triggers, checks,
    -- generated columns) ever runs as scoring_owner. Lock rows in key order;
    -- write counters and scores (a NULL score keeps the old one). The table
    -- is named by its oid when they run (a renamed table keeps its hooks);
    -- parameters go by number (a column may have any name), and unnest of
    -- several arrays is FROM-clause syntax, which takes no schema.
    v_owner := (SELECT c.relowner::regrole FROM pg_catalog.pg_class c WHERE c.oid = s.entity);
    -- A statement on the entity, named by its oid when it runs, with the
    -- hook's arguments: '<verb> <table> p <rest>' (the parts as literals).
    v_run := 'EXECUTE %L || (' || s.entity::oid || '::pg_catalog.oid::pg_catalog.regclass)::pg_catalog.text || %L'
             ' USING $1, $2, $3, $4;';
    EXECUTE format($f$CREATE OR REPLACE FUNCTION %s(keys %s[]) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
                      SET search_path = pg_catalog, pg_temp AS %L$f$, v_hooks[1], s.key_type,
                   'BEGIN ' || format(pg_catalog.replace(v_run, ' USING $1, $2, $3, $4', ' USING $1'), 'SELECT FROM ',
                                      format(' p WHERE p.%I = ANY ($1) ORDER BY p.%I FOR NO KEY UPDATE OF p',
                                             s.key_column, s.key_column)) || ' END');
    IF s.score_column IS NOT NULL THEN
        v_sets := format('%1$I = coalesce(u.score, p.%1$I)', s.score_column);
        IF s.model_id_column IS NOT NULL THEN
            v_sets := v_sets || format(', %1$I = CASE WHEN u.score IS NULL THEN p.%1$I ELSE $4 END', s.model_id_column);
        END IF;
        IF s.scored_at_column IS NOT NULL THEN
            v_sets := v_sets || format(', %1$I = CASE WHEN u.score IS NULL THEN p.%1$I ELSE pg_catalog.now() END',
                                       s.scored_at_column);
        END IF;
    END IF;
    SELECT pg_catalog.string_agg(format(' ELSIF $5 = %L THEN ', c.counter_column)
                                 || format(v_run, 'UPDATE ', format(' p SET %I = p.%I + u.n%s FROM unnest($1, $2, $3)'
                                                                   ' AS u(k, n, score) WHERE p.%I = u.k',
                                                                   c.counter_column, c.counter_column,
                                                                   coalesce(', ' || v_sets, ''), s.key_column)),
                                 '' ORDER BY c.counter_column)
      INTO v_counters
      FROM scoring.scorer_events c WHERE c.scorer = s.scorer AND c.counter_column IS NOT NULL;
    EXECUTE format($f$CREATE OR REPLACE FUNCTION %s(keys %s[], deltas integer[], scores double precision[],
                      model_id bigint, counter text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
                      SET search_path = pg_catalog, pg_temp AS %L$f$, v_hooks[2], s.key_type,
                   format('BEGIN IF $5 IS NULL THEN %s%s ELSE RAISE EXCEPTION ''no counter %%'', $5; END IF; END',
                          CASE WHEN v_sets IS NULL THEN 'NULL;'
                               ELSE format(v_run, 'UPDATE ', format(' p SET %s FROM unnest($1, $2, $3)'
                                                                   ' AS u(k, n, score) WHERE p.%I = u.k',
                                                                   v_sets, s.key_column)) END,
                          coalesce(v_counters, '')));
    FOR t IN SELECT pg_catalog.unnest(ARRAY[format('%s(%s[])', v_hooks[1], s.key_type),
                                            format('%s(%s[], integer[], double precision[], bigint, text)',
                                                   v_hooks[2], s.key_type)]) AS hook
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO %s', t.hook, v_owner);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', t.hook);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO scoring_owner', t.hook);
    END LOOP;
    -- The entity: an UPDATE of a column a model may read (not a counter
    -- this scorer keeps: its events rescore that; the key too, for the narrow table).
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(f), ', ') INTO v_update_of
      FROM pg_catalog.unnest(s.features || CASE WHEN s.score_column IS NULL THEN ARRAY[s.key_column] ELSE '{}' END) f
     WHERE f NOT IN (SELECT c.counter_column FROM scoring.scorer_events c
                      WHERE c.scorer = s.scorer AND c.counter_column IS NOT NULL);
    IF v_update_of IS NOT NULL THEN
        -- Each changed row's key noted (after every BEFORE trigger of the
        -- table and its generated columns), then all of them rescored in key
        -- order at the end of the statement. The scores' own UPDATE names
        -- none of these columns: it fires neither. (Row triggers of a
        -- partitioned table are its partitions' too; statement triggers are
        -- created on each partition as well, for statements run on one directly.)
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE OF %s ON %s FOR EACH ROW EXECUTE FUNCTION %s',
                       v_prefix || 'features', v_update_of, s.entity, v_function);
    END IF;
    FOR r IN SELECT s.entity AS relid UNION SELECT pt.relid FROM pg_catalog.pg_partition_tree(s.entity) pt WHERE pt.isleaf LOOP
        IF v_update_of IS NOT NULL THEN
            EXECUTE format('CREATE TRIGGER %I AFTER UPDATE OF %s ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s',
                           v_prefix || 'features_done', v_update_of, r.relid, v_function);
        END IF;
        IF s.score_on_insert THEN
            EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS pgscore_new'
                           ' FOR EACH STATEMENT EXECUTE FUNCTION %s', v_prefix || 'inserted', r.relid, v_function);
        END IF;
        IF s.score_column IS NULL THEN
            EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS pgscore_old'
                           ' FOR EACH STATEMENT EXECUTE FUNCTION %s', v_prefix || 'deleted', r.relid, v_function);
            EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s',
                           v_prefix || 'truncated', r.relid, v_function);
        END IF;
    END LOOP;
    FOR v IN SELECT * FROM scoring.scorer_events c WHERE c.scorer = s.scorer LOOP
        FOR r IN SELECT v.events AS relid UNION SELECT pt.relid FROM pg_catalog.pg_partition_tree(v.events) pt WHERE pt.isleaf LOOP
            -- The reference scorer's inserted complaints: its generated trigger (complaints_rescore).
            IF NOT (s.scorer = 'churn' AND v.events = pg_catalog.to_regclass('public.complaints')) THEN
                EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS pgscore_new'
                               ' FOR EACH STATEMENT EXECUTE FUNCTION %s', v_prefix || 'inserted', r.relid, v_function);
            END IF;
            EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS pgscore_old'
                           ' FOR EACH STATEMENT EXECUTE FUNCTION %s', v_prefix || 'deleted', r.relid, v_function);
            EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS pgscore_old'
                           ' NEW TABLE AS pgscore_new FOR EACH STATEMENT EXECUTE FUNCTION %s',
                           v_prefix || 'updated', r.relid, v_function);
            EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s',
                           v_prefix || 'truncated', r.relid, v_function);
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION scoring._create_scorer_triggers(text) IS 'internal: (re)creates a scorer''s triggers; run as its tables'' owner';

CREATE OR REPLACE FUNCTION scoring.attach(scorer text, entity regclass, key text, score_column text DEFAULT NULL,
                                          model_id_column text DEFAULT NULL, scored_at_column text DEFAULT NULL,
                                          model_name text DEFAULT NULL, features text[] DEFAULT NULL,
                                          score_on_insert boolean DEFAULT true)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    v_key_type text;
    v_keynum smallint;
    v_existing regclass;
    v_type text;
    v_readable text[];
    v_scores text[] := ARRAY[score_column, model_id_column, scored_at_column];
    v_what constant text[] := ARRAY['score_column', 'model_id_column', 'scored_at_column'];
    v_types constant text[] := ARRAY['double precision', 'bigint', 'timestamp with time zone'];
    v_i integer;
    v_name text;
BEGIN
    IF scorer IS NULL OR scorer !~ '^[a-z][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'scorer name % is not valid', coalesce(pg_catalog.quote_literal(scorer), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'a scorer name is a lowercase letter followed by up to 39 lowercase letters, digits or underscores';
    END IF;
    model_name := coalesce(model_name, scorer);
    IF model_name !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'model name % is not valid', pg_catalog.quote_literal(model_name)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'a model name is a lowercase letter followed by up to 62 lowercase letters, digits or underscores';
    END IF;
    IF entity IS NULL OR key IS NULL THEN
        RAISE EXCEPTION 'entity and key must be given' USING ERRCODE = 'null_value_not_allowed',
              HINT = 'SELECT scoring.attach(''name'', ''schema.table'', ''key_column'')';
    END IF;
    IF (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = entity) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', entity USING ERRCODE = 'wrong_object_type',
              HINT = 'a scorer''s entity is a table with one row per scored thing';
    END IF;
    PERFORM scoring._require_owner(entity, 'attach a scorer to it');
    PERFORM scoring._grant_schema_usage(entity);
    SELECT e.entity INTO v_existing FROM scoring.scorer_entities e WHERE e.scorer = attach.scorer;
    IF v_existing IS NOT NULL AND v_existing <> entity THEN
        RAISE EXCEPTION 'scorer % is attached to %, not %', scorer, v_existing, entity
            USING ERRCODE = 'duplicate_object', HINT = format('detach it first: SELECT scoring.detach(%L)', scorer);
    END IF;

    v_key_type := scoring._column_type(entity, key, 'key');
    IF v_key_type NOT IN ('bigint', 'integer', 'text', 'uuid') THEN
        RAISE EXCEPTION 'key % of % is of type %; a scorer''s key is bigint, integer, text or uuid',
                        pg_catalog.quote_ident(key), entity, v_key_type
            USING ERRCODE = 'datatype_mismatch', HINT = 'use a key column of one of those types';
    END IF;
    SELECT a.attnum INTO v_keynum FROM pg_catalog.pg_attribute a WHERE a.attrelid = entity AND a.attname = key;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i
                    WHERE i.indrelid = entity AND i.indisunique AND i.indnkeyatts = 1 AND i.indkey[0] = v_keynum
                      AND i.indpred IS NULL AND i.indimmediate) THEN
        RAISE EXCEPTION 'key % of % is not unique', pg_catalog.quote_ident(key), entity
            USING ERRCODE = 'invalid_table_definition',
                  HINT = format('a scorer scores one row per key: ALTER TABLE %s ADD PRIMARY KEY (%I)', entity, key);
    END IF;
    IF score_column IS NULL AND (model_id_column IS NOT NULL OR scored_at_column IS NOT NULL) THEN
        RAISE EXCEPTION 'model_id_column and scored_at_column need a score_column'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'name the score column too, or none of them';
    END IF;
    -- Each named score column, of the type pgscore writes into it.
    FOR v_i IN 1..3 LOOP
        CONTINUE WHEN v_scores[v_i] IS NULL;
        v_type := scoring._column_type(entity, v_scores[v_i], v_what[v_i]);
        IF v_type <> v_types[v_i] THEN
            RAISE EXCEPTION '% % of % is of type %, not %', v_what[v_i], pg_catalog.quote_ident(v_scores[v_i]),
                            entity, v_type, v_types[v_i]
                USING ERRCODE = 'datatype_mismatch',
                      HINT = 'a score column is double precision, a model_id column bigint, a scored_at column timestamptz';
        END IF;
    END LOOP;
    IF score_column IS NULL AND key IN ('score', 'model_id', 'scored_at') THEN
        RAISE EXCEPTION 'key % is also a column of pgscore''s narrow score table', pg_catalog.quote_ident(key)
            USING ERRCODE = 'duplicate_column',
                  HINT = 'name a score_column to keep the scores in the entity, or use another key column';
    END IF;
    IF key = ANY (v_scores) THEN
        RAISE EXCEPTION 'the key % cannot hold scores', pg_catalog.quote_ident(key) USING ERRCODE = 'invalid_parameter_value',
              HINT = 'name other columns for the score';
    END IF;

    -- The columns a model of this scorer may read: those given, or every
    -- column of a type pgscore reads (not the key or the score columns).
    IF features IS NULL THEN
        features := ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                           WHERE a.attrelid = entity AND a.attnum > 0 AND NOT a.attisdropped
                             AND a.attname <> key AND NOT a.attname = ANY (pg_catalog.array_remove(v_scores, NULL))
                             AND pg_catalog.format_type(a.atttypid, NULL) IN (
                                 'smallint', 'integer', 'bigint', 'numeric', 'real', 'double precision', 'boolean',
                                 'text', 'character varying', 'character')
                           ORDER BY a.attnum);
    ELSE
        FOREACH v_name IN ARRAY features LOOP
            PERFORM scoring._column_type(entity, v_name, 'feature');
            IF v_name = key OR v_name = ANY (pg_catalog.array_remove(v_scores, NULL)) THEN
                RAISE EXCEPTION 'feature % is the key or a score column', pg_catalog.quote_ident(v_name)
                    USING ERRCODE = 'invalid_parameter_value', HINT = 'leave it out of features';
            END IF;
        END LOOP;
    END IF;

    INSERT INTO scoring.scorer_entities AS e (scorer, model_name, entity, key_column, key_type, score_column,
                                              model_id_column, scored_at_column, features, score_on_insert)
    VALUES (scorer, model_name, entity, key, v_key_type, score_column, model_id_column, scored_at_column,
            features, score_on_insert)
    ON CONFLICT ON CONSTRAINT scorer_entities_pkey DO UPDATE
       SET model_name = excluded.model_name, key_column = excluded.key_column, key_type = excluded.key_type,
           score_column = excluded.score_column, model_id_column = excluded.model_id_column,
           scored_at_column = excluded.scored_at_column, features = excluded.features,
           score_on_insert = excluded.score_on_insert, attached_at = now(), attached_by = current_user;

    -- scoring_owner: read the key, the features and the scores (it writes
    -- them only through the hooks, as the owner).
    v_readable := ARRAY[key] || features || pg_catalog.array_remove(v_scores, NULL);
    EXECUTE format('GRANT SELECT (%s) ON %s TO scoring_owner',
                   (SELECT pg_catalog.string_agg(DISTINCT pg_catalog.quote_ident(c), ', ') FROM pg_catalog.unnest(v_readable) c),
                   entity);
    PERFORM scoring._score_table(scorer);
    PERFORM scoring._create_scorer_triggers(scorer);
    RETURN format('scorer %s attached to %s (key %I, %s); it scores with the active model %L',
                  scorer, entity, key,
                  CASE WHEN score_column IS NULL THEN 'scores in scoring_scores.' || pg_catalog.quote_ident(scorer)
                       ELSE 'scores in column ' || pg_catalog.quote_ident(score_column) END, model_name);
END
$$;
COMMENT ON FUNCTION scoring.attach(text, regclass, text, text, text, text, text, text[], boolean)
    IS 'binds a scorer to an entity table (its owner or a superuser); see docs/scorers.md';

CREATE OR REPLACE FUNCTION scoring.attach_events(scorer text, events regclass, entity_key text, counter text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    s record;
    v_type text;
    v_other text;
    v_moved bigint;
BEGIN
    SELECT * INTO s FROM scoring.scorer_entities e WHERE e.scorer = attach_events.scorer;
    IF s.scorer IS NULL THEN
        RAISE EXCEPTION 'no scorer named %', coalesce(pg_catalog.quote_literal(scorer), 'NULL')
            USING ERRCODE = 'undefined_object', HINT = 'attach it first: SELECT scoring.attach(...); list them: SELECT * FROM scoring.scorers';
    END IF;
    IF events IS NULL OR entity_key IS NULL THEN
        RAISE EXCEPTION 'events and entity_key must be given' USING ERRCODE = 'null_value_not_allowed',
              HINT = 'SELECT scoring.attach_events(''scorer'', ''schema.events'', ''entity_key_column'', ''counter_column'')';
    END IF;
    IF events = s.entity THEN
        RAISE EXCEPTION '% is the entity table of scorer %; its events come from another table', events, scorer
            USING ERRCODE = 'invalid_parameter_value', HINT = 'name the table whose rows are the events';
    END IF;
    IF (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = events) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', events USING ERRCODE = 'wrong_object_type', HINT = 'name a table of events';
    END IF;
    PERFORM scoring._require_owner(s.entity, 'attach events to its scorers');
    PERFORM scoring._require_owner(events, 'make it drive a scorer');
    PERFORM scoring._grant_schema_usage(events);
    v_type := scoring._column_type(events, entity_key, 'entity key');
    IF v_type <> s.key_type THEN
        RAISE EXCEPTION 'entity key % of % is of type %, the key of % is %', pg_catalog.quote_ident(entity_key), events,
                        v_type, s.entity, s.key_type
            USING ERRCODE = 'datatype_mismatch', HINT = 'use a column of the key''s type';
    END IF;
    IF counter IS NOT NULL THEN
        v_type := scoring._column_type(s.entity, counter, 'counter');
        IF v_type NOT IN ('integer', 'bigint') THEN
            RAISE EXCEPTION 'counter % of % is of type %', pg_catalog.quote_ident(counter), s.entity, v_type
                USING ERRCODE = 'datatype_mismatch', HINT = 'a counter is an integer or bigint column';
        END IF;
        IF counter = s.key_column OR counter IN (s.score_column, s.model_id_column, s.scored_at_column) THEN
            RAISE EXCEPTION 'counter % is the key or a score column of scorer %', pg_catalog.quote_ident(counter), scorer
                USING ERRCODE = 'invalid_parameter_value', HINT = 'name a column of its own for the counter';
        END IF;
        -- One keeper per counter: two would each count every event.
        SELECT format('%s (events %s)', c.scorer, c.events) INTO v_other
          FROM scoring.scorer_events c JOIN scoring.scorer_entities e ON e.scorer = c.scorer
         WHERE e.entity = s.entity AND c.counter_column = counter AND (c.scorer, c.events) <> (scorer, events);
        IF v_other IS NOT NULL THEN
            RAISE EXCEPTION 'counter % of % is kept already by scorer %', pg_catalog.quote_ident(counter), s.entity, v_other
                USING ERRCODE = 'duplicate_object',
                      HINT = 'attach these events without a counter (it is rescored when the counter moves)';
        END IF;
    END IF;
    INSERT INTO scoring.scorer_events AS v (scorer, events, key_column, counter_column)
    VALUES (scorer, events, entity_key, counter)
    ON CONFLICT ON CONSTRAINT scorer_events_pkey DO UPDATE
       SET key_column = excluded.key_column, counter_column = excluded.counter_column;
    EXECUTE format('GRANT SELECT (%I) ON %s TO scoring_owner', entity_key, events);
    IF counter IS NOT NULL THEN
        EXECUTE format('GRANT SELECT (%I) ON %s TO scoring_owner', counter, s.entity);
    END IF;
    PERFORM scoring._create_scorer_triggers(scorer);
    -- Counters of the rows that are there already, and their scores.
    v_moved := CASE WHEN counter IS NULL THEN 0 ELSE scoring._recount(scorer, events::oid) END;
    RETURN format('scorer %s: events from %s (%I)%s', scorer, events, entity_key,
                  CASE WHEN counter IS NULL THEN ', no counter'
                       ELSE format(' counted in %I (%s rows recounted)', counter, v_moved) END);
END
$$;
COMMENT ON FUNCTION scoring.attach_events(text, regclass, text, text)
    IS 'makes an event table drive a scorer, keeping a counter of its entity exact; see docs/scorers.md';

CREATE OR REPLACE FUNCTION scoring._recount(scorer text, events oid)
RETURNS bigint
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.recount(plpy, GD, scorer, events)
$python$;
COMMENT ON FUNCTION scoring._recount(text, oid) IS 'internal: sets a scorer''s counter to its number of events, rescoring what moved';

CREATE OR REPLACE FUNCTION scoring.detach(scorer text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    s record;
    v record;
    v_still text[];
    v_gone text[];
    v_events scoring.scorer_events[];
BEGIN
    SELECT * INTO s FROM scoring.scorer_entities e WHERE e.scorer = detach.scorer;
    IF s.scorer IS NULL THEN
        RAISE EXCEPTION 'no scorer named %', coalesce(pg_catalog.quote_literal(scorer), 'NULL')
            USING ERRCODE = 'undefined_object', HINT = 'list them: SELECT * FROM scoring.scorers';
    END IF;
    PERFORM scoring._require_owner(s.entity, 'detach its scorers');
    FOR v IN SELECT * FROM scoring.scorer_events c WHERE c.scorer = s.scorer LOOP
        PERFORM scoring._require_owner(v.events, 'detach the scorers it drives');
    END LOOP;
    v_events := ARRAY(SELECT c FROM scoring.scorer_events c WHERE c.scorer = s.scorer);
    DELETE FROM scoring.scorer_entities e WHERE e.scorer = s.scorer;  -- and its events (ON DELETE CASCADE)
    PERFORM scoring._create_scorer_triggers(scorer);  -- drops them all: the scorer is gone
    IF scorer = 'churn' THEN
        DROP TRIGGER IF EXISTS complaints_rescore ON public.complaints;
    END IF;
    PERFORM scoring._score_table(scorer);
    -- Take back what no other scorer of the entity needs.
    v_still := ARRAY(SELECT c FROM scoring.scorer_entities e,
                            pg_catalog.unnest(ARRAY[e.key_column, e.score_column, e.model_id_column, e.scored_at_column]
                                              || e.features) c
                      WHERE e.entity = s.entity AND c IS NOT NULL
                     UNION SELECT c.counter_column FROM scoring.scorer_events c JOIN scoring.scorer_entities e USING (scorer)
                      WHERE e.entity = s.entity AND c.counter_column IS NOT NULL);
    v_gone := ARRAY(SELECT DISTINCT c FROM pg_catalog.unnest(ARRAY[s.key_column, s.score_column, s.model_id_column,
                                                                   s.scored_at_column] || s.features) c
                     WHERE c IS NOT NULL AND NOT c = ANY (v_still)
                       AND EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = s.entity AND a.attname = c
                                     AND NOT a.attisdropped));
    IF pg_catalog.cardinality(v_gone) > 0 THEN
        EXECUTE format('REVOKE SELECT (%1$s) ON %2$s FROM scoring_owner',
                       (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ') FROM pg_catalog.unnest(v_gone) c),
                       s.entity);
    END IF;
    -- ... and the events' keys no other scorer reads.
    FOR v IN SELECT c.events, c.key_column FROM pg_catalog.unnest(v_events) c
              WHERE NOT EXISTS (SELECT FROM scoring.scorer_events o WHERE o.events = c.events AND o.key_column = c.key_column)
                AND EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.events AND a.attname = c.key_column
                              AND NOT a.attisdropped)
    LOOP
        EXECUTE format('REVOKE SELECT (%I) ON %s FROM scoring_owner', v.key_column, v.events);
    END LOOP;
    RETURN format('scorer %s detached from %s; its tables and their data are unchanged', scorer, s.entity);
END
$$;
COMMENT ON FUNCTION scoring.detach(text) IS 'removes a scorer''s triggers, score table and registry rows; leaves the user''s data';

-- Fresh scores of any scorer's keys, given as text (any key type). Run as
-- the owner, like scoring.score(bigint): analysts score, they do not read blobs.
CREATE OR REPLACE FUNCTION scoring._score_key_py(scorer text, key text)
RETURNS double precision
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.score_key(plpy, GD, scorer, key)
$python$;
COMMENT ON FUNCTION scoring._score_key_py(text, text) IS 'internal: scoring.score_key in Python';

CREATE OR REPLACE FUNCTION scoring.score_key(scorer text, key text)
RETURNS double precision
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- {{WITH_PYTHON_ERRORS}} RETURN scoring._score_key_py(scorer, key);
$$;
COMMENT ON FUNCTION scoring.score_key(text, text) IS 'fresh score of one key of a scorer''s entity with its active model';

CREATE OR REPLACE FUNCTION scoring._score_keys_py(scorer text, keys text[])
RETURNS TABLE (key text, score double precision)
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.score_keys(plpy, GD, scorer, keys)
$python$;
COMMENT ON FUNCTION scoring._score_keys_py(text, text[]) IS 'internal: scoring.score_keys in Python';

CREATE OR REPLACE FUNCTION scoring.score_keys(scorer text, keys text[])
RETURNS TABLE (key text, score double precision)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- {{WITH_PYTHON_ERRORS}} RETURN QUERY SELECT k.key, k.score FROM scoring._score_keys_py(scorer, keys) k;
$$;
COMMENT ON FUNCTION scoring.score_keys(text, text[]) IS 'fresh scores of many keys of a scorer, in input order';

-- push's parity check on a scorer's rows, with the model it pushed (not yet active).
CREATE OR REPLACE FUNCTION scoring.score_keys_with_model(model_id bigint, scorer text, keys text[])
RETURNS TABLE (key text, score double precision)
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.score_keys_with_model(plpy, GD, model_id, scorer, keys)
$python$;
COMMENT ON FUNCTION scoring.score_keys_with_model(bigint, text, text[]) IS 'scores a scorer''s rows with a given model version (push''s parity check)';

-- scoring.rescore of an attached scorer commits between these batches (api.rescore).
CREATE OR REPLACE FUNCTION scoring._rescore_batch(scorer text, after text, batch_size integer)
RETURNS text
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.rescore_batch(plpy, GD, scorer, after, batch_size)
$python$;
COMMENT ON FUNCTION scoring._rescore_batch(text, text, integer) IS 'internal: one batch of scoring.rescore for a scorer';

CREATE OR REPLACE FUNCTION scoring._scorer_rows(scorer text)
RETURNS bigint
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.scorer_rows(plpy, GD, scorer)
$python$;
COMMENT ON FUNCTION scoring._scorer_rows(text) IS 'internal: how many rows a scorer''s entity has (rescore''s progress)';

-- Schema changes. A column that a scorer uses (its key, score columns,
-- counters, events' keys, the active model's features) may not be dropped
-- or renamed: the statement is refused, naming the scorer and the column.
-- The event trigger fires on everyone's DDL, a superuser's too: its
-- function belongs to the migrating superuser (schema scoring_trusted) and
-- only reads plain tables of schema scoring, which runs no role's code (a
-- superuser bypasses row-level security; a SELECT fires no trigger), so
-- nothing of scoring_owner's ever runs inside it. A dropped table's scorers
-- stay in the registry, unused (scoring.detach removes them).
CREATE OR REPLACE FUNCTION scoring_trusted.columns_in_use()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found record;
BEGIN
    -- Only while pgscore's tables are what they should be (not during a
    -- migration that moves them, nor once scoring_owner replaced one).
    IF (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class c
         WHERE c.relnamespace = pg_catalog.to_regnamespace('scoring') AND c.relkind = 'r'
           AND c.relname IN ('scorer_entities', 'scorer_events', 'models', 'deployments')) < 4 THEN
        RETURN;
    END IF;
    FOR found IN
        WITH altered AS (SELECT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() c
                          WHERE c.classid = 'pg_catalog.pg_class'::regclass),
        needed AS (
            SELECT e.scorer, e.entity AS relation, n.col
              FROM scoring.scorer_entities e
              LEFT JOIN LATERAL (SELECT d.model_id FROM scoring.deployments d WHERE d.name = e.model_name
                                  ORDER BY d.deployment_id DESC LIMIT 1) a ON true
              LEFT JOIN scoring.models m ON m.model_id = a.model_id
             CROSS JOIN LATERAL pg_catalog.unnest(ARRAY[e.key_column, e.score_column, e.model_id_column, e.scored_at_column]
                                                  || coalesce(m.feature_names, '{}')) AS n(col)
             WHERE n.col IS NOT NULL
            UNION ALL
            SELECT v.scorer, v.events, v.key_column FROM scoring.scorer_events v
            UNION ALL
            SELECT v.scorer, e.entity, v.counter_column FROM scoring.scorer_events v JOIN scoring.scorer_entities e USING (scorer)
             WHERE v.counter_column IS NOT NULL)
        SELECT d.scorer, d.relation, d.col FROM needed d
         WHERE d.relation::oid IN (SELECT objid FROM altered)
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                            WHERE a.attrelid = d.relation AND a.attname = d.col AND a.attnum > 0 AND NOT a.attisdropped)
         ORDER BY 1, 3
         LIMIT 1
    LOOP
        RAISE EXCEPTION 'scorer % uses column % of %: it cannot be dropped or renamed', found.scorer,
                        pg_catalog.quote_ident(found.col), found.relation
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = format('detach the scorer first (SELECT scoring.detach(%L)), or push and activate a model that does not use it',
                                found.scorer);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION scoring_trusted.columns_in_use() FROM PUBLIC;  -- an event trigger needs no grant
COMMENT ON FUNCTION scoring_trusted.columns_in_use() IS 'internal: refuses dropping or renaming a column a scorer uses';

-- Named to fire before scoring_profiles_altered (event triggers fire in name
-- order): a refusal names the scorer before the reference code is rewritten.
DROP EVENT TRIGGER IF EXISTS scoring_columns_in_use;
CREATE EVENT TRIGGER scoring_columns_in_use ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION scoring_trusted.columns_in_use();

-- Every scorer's triggers, as this code writes them.
SELECT scoring._create_scorer_triggers(e.scorer) FROM scoring.scorer_entities e;
