-- 0006: the in-database Python is stored compiled as well. A backend that
-- compiled every module from source on its first score spent ~30 ms and
-- ~4 MiB of private memory on it; unmarshalling the code objects costs
-- ~1 ms and ~0.7 MiB. Filled by the migration with the server's own Python
-- (sql/idempotent/010-runtime.sql); a NULL or foreign value is ignored and
-- the module compiled from source as before.
ALTER TABLE scoring.runtime_modules ADD COLUMN bytecode bytea;
COMMENT ON COLUMN scoring.runtime_modules.bytecode IS
    'source compiled by the server''s Python at migration: magic number, code sha, marshal data';
