-- What pgscore installed in schema scoring, for the check that runs before
-- a superuser next touches it (005-schema-check.sql): every function, how
-- it runs, and the whole definition of those that run as their caller
-- (scoring_owner could rewrite those into code that runs as a superuser
-- caller). The bodies of SECURITY DEFINER functions are not recorded:
-- pgscore regenerates some of them when a model is activated, and they run
-- as scoring_owner whoever calls them.
DELETE FROM scoring_trusted.installed_functions;
INSERT INTO scoring_trusted.installed_functions (signature, prokind, security_definer, language, definition_md5)
SELECT p.oid::regprocedure::text, p.prokind, p.prosecdef, l.lanname,
       CASE WHEN p.prosecdef THEN NULL ELSE pg_catalog.md5(pg_catalog.pg_get_functiondef(p.oid)) END
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'scoring'::regnamespace;
