-- 0003: the generated complaint trigger scores one customer through
-- scoring._score_profile (Python, no SPI round trips) for 'compiled' models
-- and long 'sql' expressions, and is rewritten after an ALTER TABLE of the
-- profiles (event trigger scoring_profiles_altered); the installer that
-- writes it is renamed for what it now does. The functions and the event
-- trigger are in sql/idempotent/050-complaint-trigger.sql.
DROP FUNCTION IF EXISTS scoring._install_sql_scoring(bigint);
