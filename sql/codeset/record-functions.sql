-- What pgscore installed in schema scoring, for the check that runs before
-- a superuser next touches it (005-schema-check.sql): every function, how
-- it runs, and its whole definition. Those that run as their caller
-- scoring_owner could rewrite into code that runs as a superuser caller;
-- a SECURITY DEFINER one runs as scoring_owner, but inside its caller's
-- transaction, where it can leave objects (a deferred trigger, a pg_temp
-- table) that run later as the caller. Not recorded: the bodies of the
-- functions a model's activation writes (pgscore_server.plpgsql.GENERATED_FUNCTIONS).
DELETE FROM scoring_trusted.installed_functions;
INSERT INTO scoring_trusted.installed_functions (signature, prokind, security_definer, language, definition_md5)
SELECT p.oid::regprocedure::text, p.prokind, p.prosecdef, l.lanname,
       CASE WHEN p.oid::regprocedure::text IN ({{GENERATED_FUNCTIONS}}) THEN NULL
            ELSE pg_catalog.md5(pg_catalog.pg_get_functiondef(p.oid)) END
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'scoring'::regnamespace;
