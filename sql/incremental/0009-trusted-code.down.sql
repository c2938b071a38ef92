-- Back to 0008: the in-database Python in schema scoring again, no
-- approvals (0008 unpickles any joblib blob; the approvals are dropped).
-- 0008's rendering recreates scoring._load_runtime() and its grants.
DROP FUNCTION scoring_trusted.load_runtime();
ALTER TABLE scoring_trusted.runtime_modules SET SCHEMA scoring;
DROP TABLE scoring_trusted.approved_pickles;
DROP TABLE scoring_trusted.installed_functions;
DROP SCHEMA scoring_trusted;

-- Every function the code at head added to schema scoring goes: 0008's
-- rendering (CREATE OR REPLACE) restores exactly the functions below.
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT p.oid::regprocedure AS signature, p.prokind
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'scoring'::regnamespace
                AND p.oid::regprocedure::text <> ALL (ARRAY[
                    'scoring._assign_model_version()', 'scoring._float8_from_bits(bigint)',
                    'scoring._install_generated_scoring(bigint)', 'scoring._install_scoring_functions()',
                    'scoring._on_complaints_inserted()', 'scoring._profiles_altered()',
                    'scoring._reinstall_scoring_functions()', 'scoring._score_bits_py(bigint[],text)',
                    'scoring._score_customer_py(bigint)', 'scoring._score_new_complaints(bigint[])',
                    'scoring._score_profile(bigint,bigint,text,double precision[],bigint[],boolean[],text[])',
                    'scoring._score_rejected(bigint,bigint,text,text)', 'scoring.activate(text,integer)',
                    'scoring.rescore(text,integer)', 'scoring.rollback(text)', 'scoring.runtime_info()',
                    'scoring.score(bigint)', 'scoring.score(text,jsonb)', 'scoring.score_many(bigint[],text)',
                    'scoring.score_with_model(bigint,bigint[])', 'scoring.set_scoring_path(text,integer,text)',
                    'scoring.sql_expression(bigint)', 'scoring.warmup(text)'])
    LOOP
        EXECUTE format('DROP %s %s', CASE f.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, f.signature);
    END LOOP;
END
$$;
