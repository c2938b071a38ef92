-- 0003: the generated complaint trigger scores one customer through
-- scoring._score_profile (Python, no SPI round trips) for 'compiled' models
-- and long 'sql' expressions; the installer that writes it is renamed for
-- what it now does (sql/idempotent/050-complaint-trigger.sql has both).
DROP FUNCTION IF EXISTS scoring._install_sql_scoring(bigint);
