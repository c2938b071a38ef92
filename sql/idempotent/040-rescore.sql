-- Rescoring every profile after a new model: set-based batches, each
-- committed on its own so that a million profiles never make one huge
-- transaction. Runs with the caller's rights: a SECURITY DEFINER procedure
-- may not commit, and the caller (scoring_loader) is allowed to write scores.
-- No SET clause either (it would forbid COMMIT): the Python pins search_path
-- with SET LOCAL in every batch's transaction instead.
--
-- An error a user can cause (an unknown model, a bad batch size, a model
-- that fails) comes back from the Python as (sqlstate, message, detail,
-- hint) and is raised here, without PL/Python's traceback: a procedure that
-- commits cannot catch errors (a block with EXCEPTION may not commit).
CREATE OR REPLACE PROCEDURE scoring._rescore_plpython(model_name text, batch_size integer, INOUT failure text[])
LANGUAGE plpython3u
AS $python$
#pgscore:runtime
return [api.rescore(plpy, GD, model_name, batch_size)]
$python$;
COMMENT ON PROCEDURE scoring._rescore_plpython(text, integer, text[]) IS 'internal: scoring.rescore in Python; returns its failure';

CREATE OR REPLACE PROCEDURE scoring.rescore(model_name text DEFAULT 'churn', batch_size integer DEFAULT 10000)
LANGUAGE plpgsql
AS $$
-- Every type and name qualified: with no SET clause, the caller's search_path applies.
DECLARE
    v_failure pg_catalog.text[];
BEGIN
    CALL scoring._rescore_plpython(model_name, batch_size, v_failure);
    IF v_failure IS NULL THEN
        RETURN;
    END IF;
    -- RAISE refuses a NULL option. (Not scoring._raise_python_error: the
    -- loader, which runs this, may not execute it.)
    IF v_failure[3] IS NULL AND v_failure[4] IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = v_failure[1], MESSAGE = v_failure[2];
    ELSIF v_failure[3] IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = v_failure[1], MESSAGE = v_failure[2], HINT = v_failure[4];
    ELSIF v_failure[4] IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = v_failure[1], MESSAGE = v_failure[2], DETAIL = v_failure[3];
    ELSE
        RAISE EXCEPTION USING ERRCODE = v_failure[1], MESSAGE = v_failure[2], DETAIL = v_failure[3],
                              HINT = v_failure[4];
    END IF;
END
$$;
COMMENT ON PROCEDURE scoring.rescore(text, integer) IS 'rescores every profile with the active model, committing per batch; call it outside a transaction block';
