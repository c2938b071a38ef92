-- 0009: what becomes code in the server lives where no pgscore role can
-- write, drop or replace it. scoring_owner owns schema scoring, and the
-- owner of a schema may drop any object in it: it dropped
-- scoring.runtime_modules, recreated it with other source and had
-- scoring._load_runtime() run that source as the server's OS user.
-- Schema scoring_trusted belongs to the migrating superuser (this
-- revision's current_user), as does everything in it: the in-database
-- Python, its loader (sql/idempotent/010-runtime.sql) and the sha256 of
-- every pickle a superuser approved for unpickling.
CREATE SCHEMA scoring_trusted;
COMMENT ON SCHEMA scoring_trusted IS
    'pgscore: what only a superuser may change: the in-database Python, its loader, approved pickles';

ALTER TABLE scoring.runtime_modules SET SCHEMA scoring_trusted;
-- The shims call scoring_trusted.load_runtime() from now on.
DROP FUNCTION scoring._load_runtime();

CREATE TABLE scoring_trusted.approved_pickles (
    sha256       text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    approved_at  timestamptz NOT NULL DEFAULT now(),
    approved_by  text NOT NULL DEFAULT session_user,
    note         text
);
COMMENT ON TABLE scoring_trusted.approved_pickles IS
    'blobs (by sha256) that a superuser approved for unpickling in the server: pgscore approve SHA256';

-- What the migration installed in schema scoring, recorded after every
-- migration (sql/idempotent/099-record-functions.sql) and compared before a
-- superuser next touches the schema (sql/idempotent/005-schema-check.sql).
CREATE TABLE scoring_trusted.installed_functions (
    signature        text PRIMARY KEY,
    prokind          "char" NOT NULL,
    security_definer boolean NOT NULL,
    language         text NOT NULL,
    definition_md5   text
);
COMMENT ON TABLE scoring_trusted.installed_functions IS
    'the functions of schema scoring as the last migration left them (the definitions of those that run as their caller)';

-- Not approved automatically: a joblib model already in use stops loading
-- until a superuser approves it (or it is pushed again as skops). Say which.
DO $$
DECLARE
    m record;
BEGIN
    -- The tables, not the view active_models: the schema check that ran
    -- before this file (005-schema-check.sql) made sure they are plain tables.
    FOR m IN SELECT a.name, a.version, a.format, a.sha256
               FROM (SELECT DISTINCT ON (d.name) d.name, s.version, s.format, s.sha256, s.scoring_path
                       FROM scoring.deployments d JOIN scoring.models s ON s.model_id = d.model_id
                      ORDER BY d.name, d.deployment_id DESC) a
              WHERE a.format <> 'skops' AND a.scoring_path NOT IN ('compiled', 'sql')
              ORDER BY a.name
    LOOP
        RAISE WARNING 'active model % v% is a % pickle: the server no longer loads it until a superuser approves it',
                      quote_literal(m.name), m.version, m.format
            USING HINT = format('if you trust it: pgscore approve %s; or push it again as skops (the default)', m.sha256);
    END LOOP;
END
$$;
