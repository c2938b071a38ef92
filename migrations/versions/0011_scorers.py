"""Scorers: a model bound to the user's own entity table, event tables that
keep its counters exact (sql/incremental/0011-scorers.sql). The reference
tables become the scorer 'churn'. Its downgrade drops every scorer's
triggers and restores the code recorded at 0010 (or, when none was, the
code 0010 released).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from pgscore import render
from pgscore.migrations import codesets
from pgscore.migrations.sqlops import run_sql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


SCHEMA_CHECK = ("idempotent", "005-schema-check.sql")

# Before the code of 0010 comes back: it does not know the scorers' triggers,
# and their functions could not be dropped under them.
DROP_SCORER_TRIGGERS = """
DROP EVENT TRIGGER IF EXISTS scoring_columns_in_use;
-- What attach and attach_events granted scoring_owner on the users' tables
-- (the reference scorer's grants belong to the code of 0010 and stay).
DO $$
DECLARE
    s record;
BEGIN
    FOR s IN SELECT e.entity, e.key_column, e.score_column, e.model_id_column, e.scored_at_column, e.features
               FROM scoring.scorer_entities e
              WHERE e.scorer <> 'churn' AND pg_catalog.to_regclass(e.entity::text) IS NOT NULL
                AND e.entity <> 'public.customer_profiles'::regclass
    LOOP
        EXECUTE format('REVOKE SELECT (%s) ON %s FROM scoring_owner',
                       (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ')
                          FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = s.entity AND a.attnum > 0 AND NOT a.attisdropped
                           AND a.attname = ANY (ARRAY[s.key_column, s.score_column, s.model_id_column,
                                                      s.scored_at_column] || s.features
                                                || ARRAY(SELECT v.counter_column FROM scoring.scorer_events v
                                                          WHERE v.counter_column IS NOT NULL
                                                            AND v.scorer IN (SELECT x.scorer FROM scoring.scorer_entities x
                                                                              WHERE x.entity = s.entity)))),
                       s.entity);
    END LOOP;
    FOR s IN SELECT v.events, v.key_column FROM scoring.scorer_events v
              WHERE v.scorer <> 'churn' AND v.events <> 'public.complaints'::regclass
                AND EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = v.events
                              AND a.attname = v.key_column AND NOT a.attisdropped)
    LOOP
        EXECUTE format('REVOKE SELECT (%I) ON %s FROM scoring_owner', s.key_column, s.events);
    END LOOP;
END
$$;
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tg.tgname, tg.tgrelid::regclass AS relation
               FROM pg_catalog.pg_trigger tg JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid
              WHERE NOT tg.tgisinternal AND p.pronamespace = 'scoring'::regnamespace AND tg.tgname LIKE 'pgscore\\_%'
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.relation);
    END LOOP;
END
$$;
"""


def upgrade() -> None:
    run_sql(render.sql_file(*SCHEMA_CHECK))
    run_sql(render.sql_file("incremental", "0011-scorers.sql"))


def downgrade() -> None:
    run_sql(render.sql_file(*SCHEMA_CHECK))
    run_sql(DROP_SCORER_TRIGGERS)
    run_sql(codesets.restore_recorded_or_released(down_revision))
    run_sql(render.sql_file("incremental", "0011-scorers.down.sql"))
