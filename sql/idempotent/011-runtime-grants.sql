-- scoring_trusted (owned by the migrating superuser): read-only for pgscore's
-- roles. scoring_owner's functions and the loader's rescore (a procedure,
-- which runs as its caller) import the in-database Python with
-- load_runtime() (from code_modules when a module's compiled code is not
-- this backend's code set's); reading the modules reveals nothing the
-- pgscore package does not ship. The approvals are read by the scoring
-- functions' gate and by pgscore push; only a superuser writes them
-- (pgscore approve).
-- Granted before the scoring functions are written: the first one a
-- migration runs, scoring._install_scoring_functions() (050), imports the
-- Python as scoring_owner when it existed before the migration.
REVOKE ALL ON ALL TABLES IN SCHEMA scoring_trusted FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA scoring_trusted FROM PUBLIC;
GRANT USAGE ON SCHEMA scoring_trusted TO scoring_owner, scoring_loader;
GRANT SELECT ON scoring_trusted.runtime_modules, scoring_trusted.code_modules, scoring_trusted.approved_pickles
    TO scoring_owner, scoring_loader;
GRANT EXECUTE ON FUNCTION scoring_trusted.load_runtime() TO scoring_owner, scoring_loader;
