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

-- Not approved automatically: a joblib model already in use stops loading
-- until a superuser approves it (or it is pushed again as skops). Say which.
DO $$
DECLARE
    m record;
BEGIN
    FOR m IN SELECT a.name, a.version, s.format, s.sha256
               FROM scoring.active_models a JOIN scoring.models s USING (model_id)
              WHERE s.format <> 'skops' AND s.scoring_path NOT IN ('compiled', 'sql')
              ORDER BY a.name
    LOOP
        RAISE WARNING 'active model % v% is a % pickle: the server no longer loads it until a superuser approves it',
                      quote_literal(m.name), m.version, m.format
            USING HINT = format('if you trust it: pgscore approve %s; or push it again as skops (the default)', m.sha256);
    END LOOP;
END
$$;
