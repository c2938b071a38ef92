-- 0012 down: 0011 knows neither format 'compiled' nor path 'onnx'. Models
-- that use them are not deleted here: the downgrade stops, naming them.
DO $$
DECLARE
    found text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.format('%s v%s (format %s, path %s)', name, version, format, scoring_path),
                                 ', ' ORDER BY model_id)
      INTO found
      FROM scoring.models WHERE format = 'compiled' OR scoring_path = 'onnx';
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'cannot downgrade below 0012: revision 0011 cannot score %', found
            USING HINT = 'delete those model versions (and their deployments) first, or stay at 0012',
                  ERRCODE = 'object_in_use';
    END IF;
END
$$;
ALTER TABLE scoring.models DROP CONSTRAINT models_path_reads_format;
ALTER TABLE scoring.models DROP CONSTRAINT models_scoring_path_check;
ALTER TABLE scoring.models ADD CONSTRAINT models_scoring_path_check
    CHECK (scoring_path IN ('sql', 'compiled', 'sklearn'));
ALTER TABLE scoring.models DROP CONSTRAINT models_format_check;
ALTER TABLE scoring.models ADD CONSTRAINT models_format_check
    CHECK (format IN ('joblib', 'skops', 'onnx'));
