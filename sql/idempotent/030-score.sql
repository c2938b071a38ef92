-- What analysts call. Each runs as the schema owner (it reads model blobs
-- that analysts may not read) and only reads.

-- scoring.score(bigint) itself is written by scoring._install_scoring_functions()
-- (050-complaint-trigger.sql): generated SQL for a 'sql' model, else this.
CREATE OR REPLACE FUNCTION scoring._score_customer_py(customer_id bigint)
RETURNS double precision
LANGUAGE plpython3u
STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.score_customer(plpy, GD, customer_id)
$python$;
COMMENT ON FUNCTION scoring._score_customer_py(bigint) IS 'internal: scoring.score(bigint) in Python, for models not on the sql path';

CREATE OR REPLACE FUNCTION scoring.score(model_name text, features jsonb)
RETURNS double precision
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.score_features(plpy, GD, model_name, features)
$python$;
COMMENT ON FUNCTION scoring.score(text, jsonb) IS 'probability for an arbitrary feature record (what-if analysis) with the active model of a name';

-- scoring.score_many itself is written by scoring._install_scoring_functions()
-- too: plain SQL for the churn model on the sql path, else customer_ids
-- paired with scoring._scores_py below (so are other model names). The
-- scores cross from Python as one array: a set-returning PL/Python function
-- converts every (id, score) row on its own (1M profiles: ~2.5 s more).
CREATE OR REPLACE FUNCTION scoring._scores_py(customer_ids bigint[], model_name text)
RETURNS double precision[]
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.scores_in_order(plpy, GD, customer_ids, model_name)
$python$;
COMMENT ON FUNCTION scoring._scores_py(bigint[], text) IS 'internal: the scores of customer_ids in input order, in Python, one model call per batch';

-- Internal: score customers with one given model version, active or not.
-- `pgscore push` uses it to test a model in the database before activation.
CREATE OR REPLACE FUNCTION scoring.score_with_model(model_id bigint, customer_ids bigint[])
RETURNS TABLE (customer_id bigint, score double precision)
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.score_with_model(plpy, GD, model_id, customer_ids)
$python$;
COMMENT ON FUNCTION scoring.score_with_model(bigint, bigint[]) IS 'scores customers with one model version, active or not (used by pgscore push)';
