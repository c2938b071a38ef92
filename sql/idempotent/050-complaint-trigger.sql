-- The complaint trigger: once per INSERT or COPY statement, for every
-- customer with new complaints, grow complaint_count by the number of new
-- rows and rescore the profile with the active churn model, in the
-- inserting transaction. Runs as the owner: the application role may only
-- insert complaints.
--
-- Chosen by the active churn model's scoring_path:
--   'sql'       generated PL/pgSQL with the model's SQL expression written in
--               (pgscore_server.sqlpath), no Python in the inserting backend
--               (one customer with a long expression: scoring._score_profile;
--               a rejected row: scoring._score_rejected);
--   'compiled'  generated PL/pgSQL: one customer is locked, counted and
--               updated in SQL, scored by scoring._score_profile (Python,
--               compiled numpy evaluator); several go to the Python path;
--   'sklearn'   the new rows' customer ids go to scoring._score_new_complaints
--               (Python: locks, reads, scores and writes).
-- scoring._install_scoring_functions() (pgscore_server.paths.install) writes
-- the trigger function, scoring.score(bigint) and scoring.score_many for the
-- active model; the triggers at the end of this file run it whenever the
-- active model or its path changes.

CREATE OR REPLACE FUNCTION scoring._score_new_complaints(customer_ids bigint[])
RETURNS void
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
api.on_complaints_inserted(plpy, GD, customer_ids or [])
$python$;
COMMENT ON FUNCTION scoring._score_new_complaints(bigint[]) IS 'internal: the complaint trigger''s Python path';

-- One profile's score for the generated trigger, which locks and updates
-- the profile itself: the features come as one array per kind (cheaper to
-- convert than a row), ``layout`` names the array of each feature in order
-- (f float8, i bigint, b boolean, t text). A failure follows
-- scoring.on_error: 'keep' records it and returns NULL, 'raise' raises.
-- Not a security definer: only the owner runs it, from the trigger.
CREATE OR REPLACE FUNCTION scoring._score_profile(model_id bigint, customer_id bigint, layout text,
                                                  floats double precision[], ints bigint[],
                                                  flags boolean[], texts text[])
RETURNS double precision
LANGUAGE plpython3u
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.score_profile(plpy, GD, model_id, customer_id, layout, floats, ints, flags, texts)
$python$;
COMMENT ON FUNCTION scoring._score_profile(bigint, bigint, text, double precision[], bigint[], boolean[], text[])
    IS 'internal: one profile''s score for the generated complaint trigger';

-- A row the 'sql' path cannot score (the same rows the Python evaluator
-- rejects): with scoring.on_error = 'keep' (or mode NULL and no setting)
-- the complaint stays and the old score too, the failure goes to
-- scoring.errors and a WARNING, once per client statement; with 'raise'
-- (or mode 'raise') the statement fails. The same rule as the Python path
-- (pgscore_server.trigger), which keeps what it recorded in this backend's
-- memory: no setting a caller could forge decides that a failure was
-- recorded already.
-- Not a security definer: the loader's rescore raises through it (it needs
-- only to read the model's name), and only the owner, whose trigger calls it
-- with mode NULL, may write scoring.errors.
CREATE OR REPLACE FUNCTION scoring._score_rejected(model_id bigint, customer_id bigint, message text, mode text)
RETURNS double precision
LANGUAGE plpython3u
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.score_rejected(plpy, GD, model_id, customer_id, message, mode)
$python$;
COMMENT ON FUNCTION scoring._score_rejected(bigint, bigint, text, text) IS 'internal: a profile the sql scoring path rejects';

CREATE OR REPLACE FUNCTION scoring.sql_expression(model_id bigint)
RETURNS text
LANGUAGE plpython3u
STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.sql_expression(plpy, GD, model_id)
$python$;
COMMENT ON FUNCTION scoring.sql_expression(bigint) IS 'the model as one SQL expression over p (public.customer_profiles), NULL for rows it rejects; what the sql path runs';

-- Which functions each path gets is decided in one place
-- (pgscore_server.paths.install); the bodies it writes are the templates of
-- pgscore_server.plpgsql.
CREATE OR REPLACE FUNCTION scoring._install_scoring_functions()
RETURNS text
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.install_scoring_functions(plpy, GD)
$python$;
COMMENT ON FUNCTION scoring._install_scoring_functions() IS 'internal: writes the complaint trigger and score(bigint) for the active churn model';

SELECT scoring._install_scoring_functions();
COMMENT ON FUNCTION scoring.score(bigint) IS 'fresh churn probability of one customer with the active churn model';
COMMENT ON FUNCTION scoring.score_many(bigint[], text) IS 'scores many customers, set-based; rows come back in input order';
COMMENT ON FUNCTION scoring._on_complaints_inserted() IS 'internal: the complaint trigger, written for the active churn model';

-- While the reference scorer 'churn' is attached (scoring.detach('churn') drops the trigger).
DO $$
BEGIN
    IF EXISTS (SELECT FROM scoring.scorer_entities e WHERE e.scorer = 'churn') THEN
        CREATE OR REPLACE TRIGGER complaints_rescore
            AFTER INSERT ON public.complaints
            REFERENCING NEW TABLE AS new_complaints
            FOR EACH STATEMENT EXECUTE FUNCTION scoring._on_complaints_inserted();
    END IF;
END
$$;

-- Whatever changes the active churn model or its path rewrites the two
-- functions in the same transaction (activate, rollback, set_scoring_path,
-- or a row written directly).
CREATE OR REPLACE FUNCTION scoring._reinstall_scoring_functions()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Not on a server that dropped PL/Python (it scores with exported SQL
    -- only): there is no generated code to rewrite.
    IF pg_catalog.to_regprocedure('scoring._install_scoring_functions()') IS NOT NULL THEN
        PERFORM scoring._install_scoring_functions();
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION scoring._reinstall_scoring_functions() IS 'internal: reinstalls the scoring functions after a deployment or a path change';

CREATE OR REPLACE TRIGGER churn_deployed
    AFTER INSERT ON scoring.deployments
    FOR EACH ROW WHEN (NEW.name = 'churn')
    EXECUTE FUNCTION scoring._reinstall_scoring_functions();

CREATE OR REPLACE TRIGGER churn_path_changed
    AFTER UPDATE OF scoring_path ON scoring.models
    FOR EACH ROW WHEN (NEW.name = 'churn' AND NEW.scoring_path IS DISTINCT FROM OLD.scoring_path)
    EXECUTE FUNCTION scoring._reinstall_scoring_functions();

-- The generated functions name the active model's columns and their types.
-- A change to public.customer_profiles (a column added, dropped, renamed or
-- retyped) rewrites them in the same transaction; one that leaves an active
-- 'sql' model without a column it reads is refused, naming the feature (a
-- 'compiled' or 'sklearn' model is then scored in Python, where a missing
-- feature is a scoring failure under scoring.on_error).
CREATE OR REPLACE FUNCTION scoring._profiles_altered()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT FROM pg_event_trigger_ddl_commands() c
                WHERE c.classid = 'pg_class'::regclass AND c.objid = to_regclass('public.customer_profiles'))
       AND pg_catalog.to_regprocedure('scoring._install_scoring_functions()') IS NOT NULL THEN  -- PL/Python not dropped, as in _reinstall_scoring_functions
        PERFORM scoring._install_scoring_functions();
    END IF;
END
$$;
COMMENT ON FUNCTION scoring._profiles_altered() IS 'internal: rewrites the scoring functions after an ALTER TABLE of the profiles';

DROP EVENT TRIGGER IF EXISTS scoring_profiles_altered;
CREATE EVENT TRIGGER scoring_profiles_altered ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION scoring._profiles_altered();
