-- 0010: pgscore's in-database code is installed as a code set, identified by
-- the sha256 of its install SQL and kept here, rather than frozen into each
-- revision (docs/migrations.md). `alembic upgrade head` installs the
-- package's code set when it is not the installed one; a revision's
-- downgrade restores the code set that was installed at the revision below
-- it. Owned, like everything in scoring_trusted, by the migrating superuser:
-- what is stored here runs as the server's OS user.
CREATE TABLE scoring_trusted.code_sets (
    code_set_sha text PRIMARY KEY CHECK (code_set_sha ~ '^[0-9a-f]{64}$'),
    install_sql  text NOT NULL,
    -- The Python it installs, in code_modules; NULL for a released
    -- revision's code, which carries its modules in install_sql.
    runtime_sha  text CHECK (runtime_sha ~ '^[0-9a-f]{64}$'),
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (code_set_sha = pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(install_sql, 'UTF8')), 'hex'))
);
COMMENT ON TABLE scoring_trusted.code_sets IS
    'every version of pgscore''s in-database code installed in this database, by the sha256 of its install SQL';

CREATE TABLE scoring_trusted.code_modules (
    runtime_sha text NOT NULL CHECK (runtime_sha ~ '^[0-9a-f]{64}$'),
    module      text NOT NULL,
    source      text NOT NULL,
    PRIMARY KEY (runtime_sha, module)
);
COMMENT ON TABLE scoring_trusted.code_modules IS
    'the in-database Python of each code set, stored once per sha256 of its sources';

CREATE TABLE scoring_trusted.code_history (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    revision     text NOT NULL,
    code_set_sha text NOT NULL REFERENCES scoring_trusted.code_sets,
    installed_at timestamptz NOT NULL DEFAULT now(),
    installed_by text NOT NULL DEFAULT session_user
);
COMMENT ON TABLE scoring_trusted.code_history IS
    'which code set was installed when, at which schema revision: the last row is the installed code';
