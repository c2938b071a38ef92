-- 0012: models from other tools (issue 21).
-- format 'compiled': the blob IS the compiled archive (XGBoost, LightGBM and
--   other models converted at push); nothing in it is ever deserialised as
--   an object, so it is scored on the 'compiled' or 'sql' path only.
-- format 'onnx' with scoring path 'onnx': the blob is an ONNX graph, scored
--   by onnxruntime in the server (when the server's runtime has it).
ALTER TABLE scoring.models DROP CONSTRAINT models_format_check;
ALTER TABLE scoring.models ADD CONSTRAINT models_format_check
    CHECK (format IN ('joblib', 'skops', 'onnx', 'compiled'));
ALTER TABLE scoring.models DROP CONSTRAINT models_scoring_path_check;
ALTER TABLE scoring.models ADD CONSTRAINT models_scoring_path_check
    CHECK (scoring_path IN ('sql', 'compiled', 'sklearn', 'onnx'));
-- Which paths can read which blob: scikit-learn reads skops and joblib,
-- onnxruntime reads onnx; the compiled arrays serve every format.
ALTER TABLE scoring.models ADD CONSTRAINT models_path_reads_format
    CHECK (CASE scoring_path WHEN 'sklearn' THEN format IN ('joblib', 'skops')
                             WHEN 'onnx' THEN format = 'onnx'
                             ELSE true END);
