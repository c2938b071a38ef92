-- The three group roles (docs/contract.md), and scoring_owner, which owns the
-- scoring schema and runs its SECURITY DEFINER functions, so that nothing
-- runs as a superuser after the migration. Roles are cluster-wide: create
-- them only when absent, so a second database on the same cluster can
-- migrate too.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['scoring_app', 'scoring_analyst', 'scoring_loader', 'scoring_owner'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;
