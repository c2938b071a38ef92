-- Back to 0001: 'sql' models are scored by the compiled path they came from,
-- and the functions 0001 did not have go (0001's own are restored after this).
DROP TRIGGER IF EXISTS churn_deployed ON scoring.deployments;
DROP TRIGGER IF EXISTS churn_path_changed ON scoring.models;
UPDATE scoring.models SET scoring_path = 'compiled' WHERE scoring_path = 'sql';
ALTER TABLE scoring.models DROP CONSTRAINT models_check1;
ALTER TABLE scoring.models ADD CONSTRAINT models_check1
    CHECK (scoring_path <> 'compiled' OR compiled IS NOT NULL);
ALTER TABLE scoring.models DROP CONSTRAINT models_scoring_path_check;
ALTER TABLE scoring.models ADD CONSTRAINT models_scoring_path_check
    CHECK (scoring_path IN ('compiled', 'sklearn'));
DROP FUNCTION scoring._reinstall_scoring_functions();
DROP FUNCTION scoring._install_scoring_functions();
DROP FUNCTION scoring._install_sql_scoring(bigint);
DROP FUNCTION scoring.sql_expression(bigint);
DROP FUNCTION scoring._score_rejected(bigint, bigint, text, text);
DROP FUNCTION scoring._score_new_complaints(bigint[]);
DROP FUNCTION scoring._score_customer_py(bigint);
DROP FUNCTION scoring._score_many_py(bigint[], text);
