-- 0002: the 'sql' scoring path (generated SQL in the complaint trigger and
-- scoring.score(bigint)); like 'compiled' it is written from the compiled arrays.
ALTER TABLE scoring.models DROP CONSTRAINT models_scoring_path_check;
ALTER TABLE scoring.models ADD CONSTRAINT models_scoring_path_check
    CHECK (scoring_path IN ('sql', 'compiled', 'sklearn'));
ALTER TABLE scoring.models DROP CONSTRAINT models_check1;
ALTER TABLE scoring.models ADD CONSTRAINT models_check1
    CHECK (scoring_path NOT IN ('sql', 'compiled') OR compiled IS NOT NULL);
