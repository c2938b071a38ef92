-- What analysts call. Each runs as the schema owner (it reads model blobs
-- that analysts may not read) and only reads.

-- Errors from the in-database Python, without PL/Python's traceback.
-- PL/Python reports any exception that leaves a function, plpy.error()
-- included, with a Python traceback in CONTEXT and the exception's class
-- before the message ("plpy.Error: no model named 'chrun' has been
-- pushed"). So a function that users call and that runs Python is PL/pgSQL
-- around a PL/Python function (named *_plpython, or _score_customer_py), and
-- hands what it catches to this: pgscore's own errors (plpy.Error, a
-- ScoringError with its SQLSTATE, detail and hint) and PostgreSQL's errors
-- that passed through Python (spiexceptions.*) are raised again as they
-- were, without the traceback. Anything else (a Python exception pgscore did
-- not expect: a bug) comes back (its message), and the caller's RAISE passes
-- it on with its traceback. Callers assign the result (v := ...), which
-- spares CONTEXT a "SQL statement" line that PERFORM would add. The
-- EXCEPTION block costs a subtransaction, ~0.3 us a call (these functions
-- only read, so it takes no transaction id).
CREATE OR REPLACE FUNCTION scoring._raise_python_error(sqlstate text, message text, detail text, hint text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF message !~ '^(plpy\.Error|plpy\.SPIError|spiexceptions\.\w+): ' THEN
        RETURN message;
    END IF;
    message := regexp_replace(message, '^[^:]+: ', '');
    detail := nullif(detail, '');
    hint := nullif(hint, '');
    -- RAISE refuses a NULL option.
    IF detail IS NULL AND hint IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = message;
    ELSIF detail IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = message, HINT = hint;
    ELSIF hint IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = message, DETAIL = detail;
    ELSE
        RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = message, DETAIL = detail, HINT = hint;
    END IF;
END
$$;
COMMENT ON FUNCTION scoring._raise_python_error(text, text, text, text) IS 'internal: raises an error caught from PL/Python again without its traceback';

-- scoring.score(bigint) itself is written by scoring._install_scoring_functions()
-- (pgscore_server.paths.install, from the templates of pgscore_server.plpgsql):
-- generated SQL for a 'sql' model, else a call of this.
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

CREATE OR REPLACE FUNCTION scoring._score_features_plpython(model_name text, features jsonb)
RETURNS double precision
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.score_features(plpy, GD, model_name, features)
$python$;
COMMENT ON FUNCTION scoring._score_features_plpython(text, jsonb) IS 'internal: scoring.score(text, jsonb) in Python';

CREATE OR REPLACE FUNCTION scoring.score(model_name text, features jsonb)
RETURNS double precision
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- {{WITH_PYTHON_ERRORS}} RETURN scoring._score_features_plpython(model_name, features);
$$;
COMMENT ON FUNCTION scoring.score(text, jsonb) IS 'probability for an arbitrary feature record (what-if analysis) with the active model of a name';

-- A float8 from the bigint of its IEEE 754 bits (a non-negative number;
-- NULL stays NULL), exactly: the significand as an integer times a power
-- of two. Scores cross from PL/Python as these bits, because PL/Python
-- passes every float through its text form (printed in Python, parsed
-- here: ~1 us a score) and an integer costs a fraction of that. Plain SQL,
-- so that queries inline it.
-- No SET search_path: a SET clause stops the planner inlining a SQL function. Its body is
-- parsed under the caller's search_path instead, so every operator, type and function in it
-- is schema-qualified (OPERATOR(pg_catalog.&), pg_catalog.float8, ...): none can resolve to a
-- look-alike in a schema the caller puts first (OPERATOR() syntax has one precedence: hence
-- the parentheses).
CREATE OR REPLACE FUNCTION scoring._float8_from_bits(bits bigint)
RETURNS double precision
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$
SELECT CASE WHEN bits OPERATOR(pg_catalog.<) 4503599627370496  -- exponent field 0: zero or subnormal, significand * 2^-1074
            THEN bits::pg_catalog.float8 OPERATOR(pg_catalog.*) 4.9406564584124654e-324::pg_catalog.float8
            ELSE ((bits OPERATOR(pg_catalog.&) 4503599627370495) OPERATOR(pg_catalog.+) 4503599627370496)::pg_catalog.float8
                 OPERATOR(pg_catalog.*) pg_catalog.power(2::pg_catalog.float8,
                                                         ((bits OPERATOR(pg_catalog.>>) 52) OPERATOR(pg_catalog.-) 1075)::pg_catalog.float8) END
$$;
COMMENT ON FUNCTION scoring._float8_from_bits(bigint) IS 'internal: a non-negative float8 from its IEEE 754 bits, as scores cross from Python';

-- scoring.score_many itself is written by scoring._install_scoring_functions()
-- too: plain SQL for the churn model on the sql path, else customer_ids
-- paired with scoring._score_bits_py below (so are other model names). The
-- scores cross from Python as one array of their float8 bits (see
-- scoring._float8_from_bits): a set-returning PL/Python function converts
-- every (id, score) row on its own (1M profiles: ~2.5 s more).
CREATE OR REPLACE FUNCTION scoring._score_bits_plpython(customer_ids bigint[], model_name text)
RETURNS bigint[]
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.score_bits_in_order(plpy, GD, customer_ids, model_name)
$python$;
COMMENT ON FUNCTION scoring._score_bits_plpython(bigint[], text) IS 'internal: scoring._score_bits_py in Python';

-- The score_many functions call this one (sqlpath's too): PL/pgSQL, so that
-- an unknown model name or customer id is reported without a traceback.
CREATE OR REPLACE FUNCTION scoring._score_bits_py(customer_ids bigint[], model_name text)
RETURNS bigint[]
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- {{WITH_PYTHON_ERRORS}} RETURN scoring._score_bits_plpython(customer_ids, model_name);
$$;
COMMENT ON FUNCTION scoring._score_bits_py(bigint[], text) IS 'internal: the scores of customer_ids in input order as float8 bits, in Python, one model call per batch';

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
