-- Ownership: the scoring schema's objects belong to scoring_owner, a
-- NOLOGIN role that is not a superuser, so every SECURITY DEFINER function
-- (the trigger, score(), ...) runs with only what scoring_owner is granted.
--
-- Only a superuser can create functions in plpython3u (an untrusted
-- language), so the migration itself runs as one; ownership is handed over
-- afterwards. Schema scoring_trusted and everything in it stay with the
-- migrating superuser: the in-database Python (runtime_modules), the
-- function that imports it (load_runtime) and the approved pickles. Whoever
-- may write those may run code as the server's OS user, and the owner of a
-- schema may drop and recreate anything in it.
ALTER SCHEMA scoring OWNER TO scoring_owner;
ALTER SCHEMA scoring_scores OWNER TO scoring_owner;
DO $$
DECLARE
    object record;
BEGIN
    FOR object IN
        SELECT format('ALTER %s %s OWNER TO scoring_owner',
                      CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                      p.oid::regprocedure) AS statement
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'scoring'::regnamespace
        UNION ALL
        SELECT format('ALTER %s %s OWNER TO scoring_owner',
                      CASE c.relkind WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END, c.oid::regclass)
          FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'scoring'::regnamespace AND c.relkind IN ('r', 'v', 'p')
    LOOP
        EXECUTE object.statement;
    END LOOP;
END
$$;

-- What the owner's functions need outside its own schema (scoring_trusted: 011-runtime-grants.sql).
GRANT SELECT, UPDATE (complaint_count, churn_score, churn_model_id, churn_scored_at)
    ON public.customer_profiles TO scoring_owner;
-- The reference scorer's events: a TRUNCATE or scoring._recount counts them by customer.
GRANT SELECT (customer_id) ON public.complaints TO scoring_owner;
DO $$
BEGIN
    -- scoring.runtime_info() reports the schema revision alembic recorded.
    IF to_regclass('public.alembic_version') IS NOT NULL THEN
        GRANT SELECT ON public.alembic_version TO scoring_owner;
    END IF;
END
$$;
