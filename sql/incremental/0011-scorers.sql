-- 0011: scorers. A scorer binds a model name to an entity table (one row
-- per scored thing) of the user's own; event tables keep a counter column
-- of it exact and make its rows be rescored (docs/scorers.md). The
-- reference tables become the scorer 'churn', with no change of behaviour.

-- The registry. A row is written by scoring.attach, which runs as its
-- caller: row-level security lets only the entity's owner (or a member of
-- that role) write it, so a SECURITY DEFINER function that reads it can
-- trust that the owner asked for what it says. Superusers bypass RLS.
CREATE TABLE scoring.scorer_entities (
    scorer            text PRIMARY KEY CHECK (scorer ~ '^[a-z][a-z0-9_]{0,39}$'),
    model_name        text NOT NULL CHECK (model_name ~ '^[a-z][a-z0-9_]{0,62}$'),
    entity            regclass NOT NULL,
    key_column        text NOT NULL,
    key_type          text NOT NULL CHECK (key_type IN ('bigint', 'integer', 'text', 'uuid')),
    score_column      text,
    model_id_column   text,
    scored_at_column  text,
    -- Columns the owner let pgscore read: the features a model of this scorer may use.
    features          text[] NOT NULL,
    score_on_insert   boolean NOT NULL DEFAULT true,
    mode              text NOT NULL DEFAULT 'immediate' CHECK (mode IN ('immediate')),
    attached_at       timestamptz NOT NULL DEFAULT now(),
    attached_by       text NOT NULL DEFAULT current_user,
    CHECK (score_column IS NOT NULL OR (model_id_column IS NULL AND scored_at_column IS NULL))
);
COMMENT ON TABLE scoring.scorer_entities IS 'scorers: a model name bound to an entity table (scoring.attach); see the view scoring.scorers';

CREATE TABLE scoring.scorer_events (
    scorer          text NOT NULL REFERENCES scoring.scorer_entities ON DELETE CASCADE,
    events          regclass NOT NULL,
    key_column      text NOT NULL,
    counter_column  text,
    PRIMARY KEY (scorer, events)
);
COMMENT ON TABLE scoring.scorer_events IS 'event tables that drive a scorer (scoring.attach_events)';

ALTER TABLE scoring.scorer_entities ENABLE ROW LEVEL SECURITY;
ALTER TABLE scoring.scorer_events ENABLE ROW LEVEL SECURITY;
-- Anyone may read the registry; only a table's owner writes a scorer of it
-- (an event row: the owner of the events table and of the scorer's entity).
-- A row whose table was dropped is anyone's to remove or reuse.
CREATE POLICY registry_read ON scoring.scorer_entities FOR SELECT USING (true);
CREATE POLICY entity_owner ON scoring.scorer_entities
    USING (coalesce((SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_catalog.pg_class c
                      WHERE c.oid = entity), true))
    WITH CHECK ((SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_catalog.pg_class c
                  WHERE c.oid = entity));
CREATE POLICY registry_read ON scoring.scorer_events FOR SELECT USING (true);
CREATE POLICY events_owner ON scoring.scorer_events
    USING (coalesce((SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_catalog.pg_class c
                      WHERE c.oid = events), true))
    WITH CHECK ((SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_catalog.pg_class c
                  WHERE c.oid = events)
                AND EXISTS (SELECT FROM scoring.scorer_entities e JOIN pg_catalog.pg_class c ON c.oid = e.entity
                             WHERE e.scorer = scorer_events.scorer
                               AND pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')));

-- Narrow score tables, one per scorer that names no score column: owned by scoring_owner.
CREATE SCHEMA scoring_scores;
-- The functions through which scoring_owner's code writes a scorer's
-- tables, owned by the tables' owners (scoring._create_scorer_triggers):
-- any role may create its own here. Everything that calls them names them
-- in full, with their argument types.
CREATE SCHEMA scoring_hooks;
COMMENT ON SCHEMA scoring_hooks IS 'pgscore: per scorer, the lock and write functions its entity''s owner runs for it';
GRANT USAGE, CREATE ON SCHEMA scoring_hooks TO PUBLIC;
COMMENT ON SCHEMA scoring_scores IS 'pgscore: one score table per scorer that writes no column of its entity';

-- Failures of any scorer: which one, and the key as text.
ALTER TABLE scoring.errors ADD COLUMN scorer text, ADD COLUMN entity_key text;

INSERT INTO scoring.scorer_entities (scorer, model_name, entity, key_column, key_type, score_column,
                                     model_id_column, scored_at_column, features, score_on_insert, attached_by)
SELECT 'churn', 'churn', 'public.customer_profiles'::regclass, 'customer_id', 'bigint', 'churn_score',
       'churn_model_id', 'churn_scored_at',
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = 'public.customer_profiles'::regclass AND a.attnum > 0 AND NOT a.attisdropped
                AND a.attname NOT IN ('customer_id', 'churn_score', 'churn_model_id', 'churn_scored_at')
              ORDER BY a.attnum),
       false,  -- a new profile was never scored on insert
       'pgscore migration 0011';
INSERT INTO scoring.scorer_events (scorer, events, key_column, counter_column)
VALUES ('churn', 'public.complaints'::regclass, 'customer_id', 'complaint_count');
UPDATE scoring.errors SET scorer = 'churn', entity_key = customer_id::text WHERE customer_id IS NOT NULL;

-- Owned as the rest of schema scoring (sql/idempotent/095-ownership.sql): the
-- schema check that runs before the code is installed expects it.
ALTER TABLE scoring.scorer_entities OWNER TO scoring_owner;
ALTER TABLE scoring.scorer_events OWNER TO scoring_owner;
ALTER SCHEMA scoring_scores OWNER TO scoring_owner;
