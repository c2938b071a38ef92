-- Drop the group roles unless something else on the cluster still uses them
-- (another database, or members who were granted them): then keep them.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['scoring_app', 'scoring_analyst', 'scoring_loader', 'scoring_owner'] LOOP
        BEGIN
            EXECUTE format('DROP ROLE IF EXISTS %I', r);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'role % is still in use elsewhere on this cluster; kept', r;
        END;
    END LOOP;
END
$$;
