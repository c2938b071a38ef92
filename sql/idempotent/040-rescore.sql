-- Rescoring every profile after a new model: set-based batches, each
-- committed on its own so that a million profiles never make one huge
-- transaction. Runs with the caller's rights: a SECURITY DEFINER procedure
-- may not commit, and the caller (scoring_loader) is allowed to write scores.
-- No SET clause either (it would forbid COMMIT): the Python pins search_path
-- with SET LOCAL in every batch's transaction instead.
CREATE OR REPLACE PROCEDURE scoring.rescore(model_name text DEFAULT 'churn', batch_size integer DEFAULT 10000)
LANGUAGE plpython3u
AS $python$
#pgscore:runtime
api.rescore(plpy, GD, model_name, batch_size)
$python$;
COMMENT ON PROCEDURE scoring.rescore(text, integer) IS 'rescores every profile with the active model, committing per batch; call it outside a transaction block';
